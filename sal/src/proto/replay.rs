//! Resending, right after a migration, the stream segments the old path may
//! have swallowed.
//!
//! When a link dies mid-transfer, every segment in flight on it is lost. The
//! transport would resend them only after its retransmission timeout, which
//! smoltcp never lets fall below one second (RFC 6298). A multi-homed host
//! therefore keeps a copy of each stream segment it sends until the peer's
//! transport acknowledges it; once a migration completes, the SAL resends
//! the copies on the new path at once. The receiving transport drops any
//! duplicates, so this costs a little bandwidth and saves a timeout.
//!
//! While a move is unconfirmed, new segments go only into this buffer (on
//! any host, multi-homed or renumbered): they could not be delivered before
//! the lost ones anyway, and sending them would flood the peer with
//! out-of-order data whose duplicate ACKs queue ahead of the RSYN-ACK. The
//! peer's current ACK arrives just before its RSYN-ACK, so the replay then
//! sends exactly what the peer lacks, oldest first.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use crate::wire::{fill_transport_checksum, readdress_transport_checksum, TransportProtocol};

/// Bytes of copies kept per flow at most (about the largest useful window).
const LIMIT: usize = 4 << 20;

/// A sent segment: the sequence space it occupies, the addresses its
/// checksum covers, and the wire bytes.
#[derive(Debug)]
struct Sent {
    seq: u32,
    seq_end: u32,
    addresses: (Ipv4Addr, Ipv4Addr),
    segment: Vec<u8>,
}

/// Selectively acknowledged ranges remembered at most (smoltcp reports one
/// per ACK; a few cover the holes its reassembly allows).
const SACKED_LIMIT: usize = 8;

/// Copies of a flow's unacknowledged stream segments. See the module docs.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    sent: VecDeque<Sent>,
    bytes: usize,
    /// Ranges `[left, right)` past the cumulative ACK that the peer reported
    /// holding (SACK blocks): the replay skips the segments inside them.
    sacked: Vec<(u32, u32)>,
    /// The TCP header of the last segment sent, its sequence number moved
    /// past its payload: a ready-made pure ACK carrying our latest receive
    /// state, kept on every host (the peer of a mobile host is often
    /// single-homed).
    last_header: Vec<u8>,
}

/// `a <= b` in TCP sequence space.
fn seq_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// `a < b` in TCP sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// Sequence space a segment occupies: its payload, plus one for FIN.
fn sequence_length(segment: &[u8]) -> u32 {
    let header = usize::from(segment[12] >> 4) * 4;
    let fin = u32::from(segment[13] & 0x01);
    segment.len().saturating_sub(header) as u32 + fin
}

/// The SACK blocks (RFC 2018, option kind 5) of a TCP segment. Malformed
/// options end the walk; they never panic.
fn sack_blocks(segment: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    let header = (usize::from(segment[12] >> 4) * 4).clamp(20, segment.len());
    let mut options = &segment[20..header];
    let mut blocks: &[u8] = &[];
    while let [kind, rest @ ..] = options {
        match kind {
            0 => break,
            1 => options = rest,
            _ => {
                let Some(&len) = rest.first() else { break };
                let len = usize::from(len);
                if len < 2 || len > options.len() {
                    break;
                }
                if *kind == 5 {
                    blocks = &options[2..len];
                }
                options = &options[len..];
            }
        }
    }
    blocks.chunks_exact(8).map(|b| {
        (
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        )
    })
}

impl ReplayBuffer {
    /// Keeps a copy of a segment (wire form, ports 0) sent from `src` to
    /// `dst`, if it occupies sequence space; returns whether a copy is kept
    /// (a retransmission of kept data is not stored twice).
    pub fn record(&mut self, segment: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if segment.len() < 20 {
            return false;
        }
        let length = sequence_length(segment);
        if length == 0 {
            return false;
        }
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        let seq_end = seq.wrapping_add(length);
        if self
            .sent
            .back()
            .is_some_and(|last| seq_le(seq_end, last.seq_end))
        {
            // A retransmission of what is already kept (smoltcp goes back
            // after its RTO): one copy is enough.
            return true;
        }
        self.bytes += segment.len();
        self.sent.push_back(Sent {
            seq,
            seq_end,
            addresses: (src, dst),
            segment: segment.to_vec(),
        });
        while self.bytes > LIMIT {
            match self.sent.pop_front() {
                Some(old) => self.bytes -= old.segment.len(),
                None => break,
            }
        }
        true
    }

    /// Remembers the header of a segment just sent (any segment).
    pub fn note_sent(&mut self, segment: &[u8]) {
        if segment.len() < 20 {
            return;
        }
        let header = (usize::from(segment[12] >> 4) * 4).clamp(20, segment.len());
        let payload = (segment.len() - header) as u32;
        let fin = u32::from(segment[13] & 0x01);
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        self.last_header.clear();
        self.last_header.extend_from_slice(&segment[..header]);
        self.last_header[4..8].copy_from_slice(&seq.wrapping_add(payload + fin).to_be_bytes());
    }

    /// A pure ACK with our latest acknowledgement number, checksummed for
    /// `src` -> `dst`. Sent first after a move, it tells the peer at once
    /// what we hold, so that the peer resends only what is really missing.
    pub fn current_ack(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<Vec<u8>> {
        if self.last_header.is_empty() {
            return None;
        }
        let mut ack = self.last_header.clone();
        ack[13] = 0x10;
        fill_transport_checksum(TransportProtocol::Stream, src, dst, &mut ack).ok()?;
        Some(ack)
    }

    /// Takes in what a segment from the peer's transport (with its ACK flag
    /// set) says it holds: forgets the copies its ACK number covers, and
    /// remembers its SACK blocks.
    pub fn acknowledge(&mut self, segment: &[u8]) {
        if segment.len() < 20 {
            return;
        }
        let ack = u32::from_be_bytes([segment[8], segment[9], segment[10], segment[11]]);
        while self.sent.front().is_some_and(|s| seq_le(s.seq_end, ack)) {
            if let Some(old) = self.sent.pop_front() {
                self.bytes -= old.segment.len();
            }
        }
        self.sacked.retain(|&(_, right)| !seq_le(right, ack));
        for block in sack_blocks(segment) {
            self.note_sacked(block);
        }
    }

    /// Adds a SACK block, merged with those it overlaps or touches.
    fn note_sacked(&mut self, (mut left, mut right): (u32, u32)) {
        if seq_le(right, left) {
            return;
        }
        self.sacked.retain(|&(l, r)| {
            let apart = seq_lt(r, left) || seq_lt(right, l);
            if !apart {
                left = if seq_le(l, left) { l } else { left };
                right = if seq_le(right, r) { r } else { right };
            }
            apart
        });
        if self.sacked.len() == SACKED_LIMIT {
            self.sacked.remove(0);
        }
        self.sacked.push((left, right));
    }

    /// Whether the peer reported holding all of `[start, end)`.
    fn is_sacked(&self, start: u32, end: u32) -> bool {
        self.sacked
            .iter()
            .any(|&(left, right)| seq_le(left, start) && seq_le(end, right))
    }

    /// The kept segments the peer has not reported holding, oldest first,
    /// their checksums moved to `src` -> `dst`. All of them, not only the
    /// oldest few: the transport (no SACK on its sending side) would
    /// recover each later hole only by timeout.
    pub fn replay(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Vec<u8>> {
        self.sent
            .iter()
            .filter(|s| !self.is_sacked(s.seq, s.seq_end))
            .map(|s| {
                let mut segment = s.segment.clone();
                readdress_transport_checksum(
                    TransportProtocol::Stream,
                    &mut segment,
                    s.addresses,
                    (src, dst),
                );
                segment
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fill_transport_checksum, verify_transport_checksum};

    fn segment(seq: u32, payload: usize, a: Ipv4Addr, b: Ipv4Addr) -> Vec<u8> {
        let mut s = vec![0u8; 20 + payload];
        s[4..8].copy_from_slice(&seq.to_be_bytes());
        s[12] = 5 << 4;
        s[13] = 0x10;
        fill_transport_checksum(TransportProtocol::Stream, a, b, &mut s).unwrap();
        s
    }

    /// A pure ACK from the peer acknowledging `ack`, with SACK `blocks`.
    fn ack(ack: u32, blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut options = vec![1u8, 1, 5, (2 + 8 * blocks.len()) as u8];
        for (left, right) in blocks {
            options.extend_from_slice(&left.to_be_bytes());
            options.extend_from_slice(&right.to_be_bytes());
        }
        if blocks.is_empty() {
            options.clear();
        }
        let mut s = vec![0u8; 20];
        s[8..12].copy_from_slice(&ack.to_be_bytes());
        s[12] = (((20 + options.len()) / 4) << 4) as u8;
        s[13] = 0x10;
        s.extend_from_slice(&options);
        s
    }

    #[test]
    fn replay_skips_what_the_peer_reported_holding() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut buffer = ReplayBuffer::default();
        // Ten segments of 100 bytes from u32::MAX - 299 (across the wrap).
        let first = u32::MAX - 299;
        for i in 0..10u32 {
            buffer.record(&segment(first.wrapping_add(i * 100), 100, a, b), a, b);
        }
        let seqs = |buffer: &ReplayBuffer| -> Vec<u32> {
            buffer
                .replay(a, b)
                .iter()
                .map(|s| u32::from_be_bytes(s[4..8].try_into().unwrap()))
                .collect()
        };
        // The peer holds the first segment, lacks the next two, holds the
        // following five (one block), and lacks the last two.
        let held = (first.wrapping_add(300), first.wrapping_add(800));
        buffer.acknowledge(&ack(first.wrapping_add(100), &[held]));
        assert_eq!(
            seqs(&buffer),
            [100, 200, 800, 900].map(|o| first.wrapping_add(o))
        );
        // A block that only partly covers a segment does not skip it; two
        // touching blocks merge into one that does.
        buffer.acknowledge(&ack(
            first.wrapping_add(100),
            &[(first.wrapping_add(850), first.wrapping_add(900))],
        ));
        assert_eq!(seqs(&buffer).len(), 4);
        buffer.acknowledge(&ack(
            first.wrapping_add(100),
            &[(first.wrapping_add(800), first.wrapping_add(850))],
        ));
        assert_eq!(
            seqs(&buffer),
            [100, 200, 900].map(|o| first.wrapping_add(o))
        );
        // The cumulative ACK passing a block retires it.
        buffer.acknowledge(&ack(first.wrapping_add(900), &[]));
        assert_eq!(seqs(&buffer), [first.wrapping_add(900)]);
        assert!(buffer.sacked.is_empty());
    }

    #[test]
    fn malformed_options_are_ignored() {
        let mut truncated = ack(0, &[(10, 20)]);
        truncated[23] = 40; // SACK length past the header
        assert_eq!(sack_blocks(&truncated).count(), 0);
        let mut zero = ack(0, &[(10, 20)]);
        zero[23] = 0;
        assert_eq!(sack_blocks(&zero).count(), 0);
        let mut short_offset = ack(0, &[(10, 20)]);
        short_offset[12] = 2 << 4; // data offset below 20 bytes
        assert_eq!(sack_blocks(&short_offset).count(), 0);
        assert_eq!(
            sack_blocks(&ack(0, &[(10, 20)])).collect::<Vec<_>>(),
            [(10, 20)]
        );
    }

    #[test]
    fn keeps_unacked_segments_and_readdresses_them() {
        let (a, b, c) = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 1, 0, 1),
        );
        let mut buffer = ReplayBuffer::default();
        assert!(buffer.record(&segment(u32::MAX - 99, 100, a, b), a, b));
        assert!(buffer.record(&segment(0, 100, a, b), a, b));
        assert!(
            !buffer.record(&segment(100, 0, a, b), a, b),
            "a bare ACK: nothing to keep"
        );
        assert!(
            buffer.record(&segment(0, 100, a, b), a, b),
            "a retransmission"
        );
        assert_eq!(buffer.sent.len(), 2, "kept once");
        assert_eq!(buffer.sent.len(), 2);
        buffer.acknowledge(&ack(0, &[]));
        assert_eq!(
            buffer.sent.len(),
            1,
            "the segment ending at 0 (wrapped) is acknowledged"
        );
        let replayed = buffer.replay(c, b);
        assert_eq!(replayed.len(), 1);
        assert!(verify_transport_checksum(
            TransportProtocol::Stream,
            c,
            b,
            &replayed[0]
        ));
        buffer.acknowledge(&ack(100, &[]));
        assert!(buffer.is_empty());
    }

    #[test]
    fn current_ack_points_past_the_last_segment() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut buffer = ReplayBuffer::default();
        assert!(buffer.current_ack(a, b).is_none());
        let mut data = segment(1000, 300, a, b);
        data[8..12].copy_from_slice(&77u32.to_be_bytes());
        data[13] = 0x18;
        buffer.note_sent(&data);
        let ack = buffer.current_ack(b, a).unwrap();
        assert_eq!(ack.len(), 20);
        assert_eq!(u32::from_be_bytes(ack[4..8].try_into().unwrap()), 1300);
        assert_eq!(u32::from_be_bytes(ack[8..12].try_into().unwrap()), 77);
        assert_eq!(ack[13], 0x10);
        assert!(verify_transport_checksum(
            TransportProtocol::Stream,
            b,
            a,
            &ack
        ));
    }
}
