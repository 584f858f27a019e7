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

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use crate::wire::{fill_transport_checksum, readdress_transport_checksum, TransportProtocol};

/// Bytes of copies kept per flow at most (about the largest useful window).
const LIMIT: usize = 4 << 20;

/// A sent segment: where its sequence space ends, the addresses its
/// checksum covers, and the wire bytes.
#[derive(Debug)]
struct Sent {
    seq_end: u32,
    addresses: (Ipv4Addr, Ipv4Addr),
    segment: Vec<u8>,
}

/// Copies of a flow's unacknowledged stream segments. See the module docs.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    sent: VecDeque<Sent>,
    bytes: usize,
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

impl ReplayBuffer {
    /// Keeps a copy of a segment (wire form, ports 0) sent from `src` to
    /// `dst`, if it occupies sequence space.
    pub fn record(&mut self, segment: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
        if segment.len() < 20 {
            return;
        }
        let header = usize::from(segment[12] >> 4) * 4;
        let fin = u32::from(segment[13] & 0x01);
        let payload = segment.len().saturating_sub(header) as u32;
        if payload + fin == 0 {
            return;
        }
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        self.bytes += segment.len();
        self.sent.push_back(Sent {
            seq_end: seq.wrapping_add(payload + fin),
            addresses: (src, dst),
            segment: segment.to_vec(),
        });
        while self.bytes > LIMIT {
            match self.sent.pop_front() {
                Some(old) => self.bytes -= old.segment.len(),
                None => break,
            }
        }
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

    /// Forgets the copies the peer's transport acknowledged (`ack` is the
    /// ACK number of a segment it sent).
    pub fn acknowledge(&mut self, ack: u32) {
        while self.sent.front().is_some_and(|s| seq_le(s.seq_end, ack)) {
            if let Some(old) = self.sent.pop_front() {
                self.bytes -= old.segment.len();
            }
        }
    }

    /// The kept segments, their checksums moved to `src` -> `dst`. All of
    /// them: resending only the oldest few was measured to be much worse
    /// (the transport, without SACK, then recovers each later hole slowly).
    pub fn replay(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Vec<u8>> {
        self.sent
            .iter()
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

    #[test]
    fn keeps_unacked_segments_and_readdresses_them() {
        let (a, b, c) = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 1, 0, 1),
        );
        let mut buffer = ReplayBuffer::default();
        buffer.record(&segment(u32::MAX - 99, 100, a, b), a, b);
        buffer.record(&segment(0, 100, a, b), a, b);
        buffer.record(&segment(100, 0, a, b), a, b); // a bare ACK: nothing to keep
        assert_eq!(buffer.sent.len(), 2);
        buffer.acknowledge(0);
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
        buffer.acknowledge(100);
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
