//! Batches of datagrams, on plain byte buffers: what the UDP link sends in
//! one system call and what one system call received.
//!
//! [`TxBatch`] lays the datagrams the host produced back to back and groups
//! them into messages: consecutive datagrams between the same two
//! addresses, all of one size but the last (which may be shorter), become
//! one message that the kernel cuts into segments (UDP GSO). A bulk stream
//! produces runs of full-size segments to one peer, so one `sendmmsg` moves
//! up to 64 messages of up to 64 datagrams each. Without GSO every datagram
//! is its own message, still sent 64 at a time.
//!
//! [`RxBatch`] holds what one `recvmmsg` returned: up to 32 messages, each
//! either one datagram or, with UDP GRO, several datagrams of one sender
//! coalesced by the kernel, which [`RxBatch::datagrams`] cuts apart again.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::sys::{RecvMeta, SendMessage, MAX_PAYLOAD, RECV_BATCH, SEND_BATCH};

/// One message of a [`TxBatch`]: `segments` datagrams of `segment` bytes
/// (the last may be shorter) at `bytes[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    src: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    start: usize,
    len: usize,
    segment: usize,
    segments: usize,
}

impl Message {
    /// Whether `len` more bytes from `src` to `dst` may join this message
    /// as one more segment, with at most `max_segments` in a message.
    fn takes(
        &self,
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        len: usize,
        max_segments: usize,
    ) -> bool {
        self.src == src
            && self.dst == dst
            && self.segments < max_segments
            // Every segment so far is full size: only the last may be short.
            && self.len == self.segment * self.segments
            && len > 0
            && len <= self.segment
            && self.len + len <= MAX_PAYLOAD
    }
}

/// Datagrams waiting to be sent, coalesced for GSO. See the module docs.
#[derive(Debug)]
pub struct TxBatch {
    /// The datagrams' bytes: the first `used` are taken, the rest is room
    /// kept from earlier batches.
    bytes: Vec<u8>,
    used: usize,
    messages: Vec<Message>,
    /// Messages at the front already sent.
    sent: usize,
    /// Segments per message at most: 1 without GSO.
    max_segments: usize,
    /// Bytes kept at most while the socket cannot take them.
    limit: usize,
}

impl TxBatch {
    /// An empty batch coalescing up to `max_segments` datagrams per message
    /// (1: no GSO) and holding at most `limit` bytes.
    pub fn new(max_segments: usize, limit: usize) -> TxBatch {
        TxBatch {
            bytes: Vec::new(),
            used: 0,
            messages: Vec::new(),
            sent: 0,
            max_segments: max_segments.max(1),
            limit,
        }
    }

    /// Adds a datagram from `src` (`None`: the socket's own address) to
    /// `dst`. Returns false, adding nothing, if the batch is full or the
    /// datagram is empty or too large for UDP.
    pub fn push(&mut self, src: Option<Ipv4Addr>, dst: SocketAddrV4, payload: &[u8]) -> bool {
        self.push_with(payload.len(), |room| {
            room.copy_from_slice(payload);
            Some((src, dst, payload.len()))
        })
    }

    /// Whether a datagram of `len` bytes may join the batch.
    fn fits(&self, len: usize) -> bool {
        len > 0 && len <= MAX_PAYLOAD && self.used + len <= self.limit
    }

    /// Adds a datagram that `write` puts straight into the batch's buffer
    /// (the host writes a packet where the system call will take it): it
    /// gets `max_len` bytes and returns the datagram's source, destination
    /// and length, or `None` to add nothing. Returns false, without calling
    /// `write`, if `max_len` more bytes do not fit; false too if `write`
    /// added nothing.
    pub fn push_with(
        &mut self,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> Option<(Option<Ipv4Addr>, SocketAddrV4, usize)>,
    ) -> bool {
        if !self.fits(max_len) {
            return false;
        }
        let start = self.used;
        if self.bytes.len() < start + max_len {
            // Grows to the batch's high-water mark once; never zeroed again.
            self.bytes.resize(start + max_len, 0);
        }
        match write(&mut self.bytes[start..start + max_len]) {
            Some((src, dst, len)) if len > 0 && len <= max_len => {
                self.used += len;
                self.add(src, dst, start, len);
                true
            }
            _ => false,
        }
    }

    /// Files the `len` bytes at `start` as a datagram: one more segment of
    /// the last message if it takes it, else a message of its own.
    fn add(&mut self, src: Option<Ipv4Addr>, dst: SocketAddrV4, start: usize, len: usize) {
        let max_segments = self.max_segments;
        match self.messages[self.sent..].last_mut() {
            Some(last) if last.takes(src, dst, len, max_segments) => {
                last.len += len;
                last.segments += 1;
            }
            _ => self.messages.push(Message {
                src,
                dst,
                start,
                len,
                segment: len,
                segments: 1,
            }),
        }
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.sent == self.messages.len()
    }

    /// Datagrams waiting to be sent.
    pub fn datagrams(&self) -> usize {
        self.pending().iter().map(|m| m.segments).sum()
    }

    /// Messages waiting, as the system call takes them (at most one call's
    /// worth), with the source address only if `with_src`.
    pub(super) fn next_call(
        &self,
        with_src: bool,
    ) -> arrayvec::ArrayVec<SendMessage<'_>, SEND_BATCH> {
        self.pending()
            .iter()
            .take(SEND_BATCH)
            .map(|m| SendMessage {
                payload: &self.bytes[m.start..m.start + m.len],
                dst: m.dst,
                src: m.src.filter(|_| with_src),
                segment: (m.segments > 1).then_some(m.segment as u16),
            })
            .collect()
    }

    fn pending(&self) -> &[Message] {
        &self.messages[self.sent..]
    }

    /// The first `count` waiting messages went out; returns how many
    /// datagrams they held.
    pub(super) fn consume(&mut self, count: usize) -> usize {
        let count = count.min(self.pending().len());
        let datagrams = self.pending()[..count].iter().map(|m| m.segments).sum();
        self.sent += count;
        if self.is_empty() {
            self.used = 0;
            self.messages.clear();
            self.sent = 0;
        }
        datagrams
    }

    /// Gives up on the first waiting message; returns how many datagrams
    /// it held.
    pub(super) fn drop_first(&mut self) -> usize {
        self.consume(1)
    }

    /// Whether the first waiting message is a GSO one (several segments).
    pub(super) fn first_is_segmented(&self) -> bool {
        self.pending().first().is_some_and(|m| m.segments > 1)
    }

    /// Cuts the first waiting message into one message per datagram (the
    /// kernel refused to segment it).
    pub(super) fn split_first(&mut self) {
        let Some(&first) = self.pending().first() else {
            return;
        };
        let pieces = (0..first.segments).map(|i| {
            let start = first.start + i * first.segment;
            let len = first.segment.min(first.start + first.len - start);
            Message {
                start,
                len,
                segment: len,
                segments: 1,
                ..first
            }
        });
        let at = self.sent;
        self.messages.splice(at..=at, pieces.collect::<Vec<_>>());
    }

    /// Stops coalescing (GSO turned out not to work here): every waiting
    /// message is cut into single datagrams, and so are later ones.
    pub(super) fn stop_coalescing(&mut self) {
        self.max_segments = 1;
        let pending: Vec<Message> = self.pending().to_vec();
        self.messages.truncate(self.sent);
        for message in pending {
            for i in 0..message.segments {
                let start = message.start + i * message.segment;
                let len = message.segment.min(message.start + message.len - start);
                self.messages.push(Message {
                    start,
                    len,
                    segment: len,
                    segments: 1,
                    ..message
                });
            }
        }
    }
}

/// One datagram of an [`RxBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedDatagram<'a> {
    /// Where it came from: the address and port as the network delivered
    /// them (behind a NAT, the NAT's).
    pub src: SocketAddrV4,
    /// The address it was sent to, when the socket reports it.
    pub dst: Option<Ipv4Addr>,
    /// The datagram's bytes (one GRO segment), borrowed from the batch.
    pub payload: &'a [u8],
}

/// Buffers for one `recvmmsg` and what it returned. See the module docs.
#[derive(Debug)]
pub struct RxBatch {
    buffer: Vec<u8>,
    slot: usize,
    pub(super) meta: [RecvMeta; RECV_BATCH],
    pub(super) count: usize,
}

impl RxBatch {
    /// Buffers for [`RECV_BATCH`] messages of up to `slot` bytes each (64
    /// KiB with GRO: the kernel coalesces up to that much).
    pub fn new(slot: usize) -> RxBatch {
        RxBatch {
            buffer: vec![0; slot * RECV_BATCH],
            slot,
            meta: [RecvMeta::EMPTY; RECV_BATCH],
            count: 0,
        }
    }

    /// The buffer and slot size, for the system call.
    pub(super) fn buffers(&mut self) -> (&mut [u8], usize, &mut [RecvMeta]) {
        (&mut self.buffer, self.slot, &mut self.meta)
    }

    /// Messages received that had to be dropped (cut by a short buffer, or
    /// not from an IPv4 sender).
    pub fn unusable(&self) -> usize {
        self.meta[..self.count]
            .iter()
            .filter(|m| m.truncated || m.src.is_none())
            .count()
    }

    /// Every datagram received, GRO batches cut apart, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = ReceivedDatagram<'_>> + '_ {
        self.meta[..self.count]
            .iter()
            .enumerate()
            .filter(|(_, meta)| !meta.truncated)
            .filter_map(|(i, meta)| Some((i, meta, meta.src?)))
            .flat_map(move |(i, meta, src)| {
                let start = i * self.slot;
                let message = &self.buffer[start..start + meta.len.min(self.slot)];
                message
                    .chunks(meta.stride.max(1))
                    .map(move |payload| ReceivedDatagram {
                        src,
                        dst: meta.dst,
                        payload,
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn shape(batch: &TxBatch) -> Vec<(usize, Option<u16>)> {
        batch
            .next_call(true)
            .iter()
            .map(|m| (m.payload.len(), m.segment))
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_peer_share_a_message_the_last_may_be_shorter() {
        let (a, b) = (addr("10.0.0.2:54325"), addr("10.0.0.3:54325"));
        let mut batch = TxBatch::new(64, 1 << 20);
        for _ in 0..3 {
            assert!(batch.push(None, a, &[1; 1000]));
        }
        assert!(batch.push(None, a, &[2; 400])); // shorter: closes the message
        assert!(batch.push(None, a, &[3; 400])); // cannot follow a short one
        assert!(batch.push(None, a, &[4; 1200])); // longer: a new message
        assert!(batch.push(None, b, &[5; 1200])); // another peer
        assert!(batch.push(Some(Ipv4Addr::new(10, 0, 0, 9)), b, &[6; 1200])); // another source
        assert_eq!(
            shape(&batch),
            [
                (3400, Some(1000)),
                (400, None),
                (1200, None),
                (1200, None),
                (1200, None)
            ]
        );
        assert_eq!(batch.datagrams(), 8);
        let first = batch.next_call(true)[0].payload.to_vec();
        assert_eq!(&first[2999..3001], &[1, 2]);
    }

    #[test]
    fn a_message_holds_at_most_64_segments_and_64_kib() {
        let dst = addr("10.0.0.2:1");
        let mut batch = TxBatch::new(64, 1 << 24);
        for _ in 0..100 {
            batch.push(None, dst, &[0; 100]);
        }
        assert_eq!(shape(&batch), [(6400, Some(100)), (3600, Some(100))]);
        let mut big = TxBatch::new(64, 1 << 24);
        for _ in 0..50 {
            big.push(None, dst, &[0; 1472]);
        }
        // 44 * 1472 = 64768 fits in 65507, 45 would not.
        assert_eq!(
            shape(&big),
            [(44 * 1472, Some(1472)), (6 * 1472, Some(1472))]
        );
    }

    #[test]
    fn without_gso_every_datagram_is_a_message_and_the_limit_holds() {
        let dst = addr("10.0.0.2:1");
        let mut batch = TxBatch::new(1, 2500);
        assert!(batch.push(None, dst, &[0; 1000]));
        assert!(batch.push(None, dst, &[0; 1000]));
        assert!(!batch.push(None, dst, &[0; 1000]), "over the limit");
        assert!(!batch.push(None, dst, &[]), "empty");
        assert!(
            !batch.push(None, dst, &vec![0; MAX_PAYLOAD + 1]),
            "too large"
        );
        assert_eq!(shape(&batch), [(1000, None), (1000, None)]);
    }

    #[test]
    fn consuming_splitting_and_dropping_keep_the_order() {
        let dst = addr("10.0.0.2:1");
        let mut batch = TxBatch::new(64, 1 << 20);
        for i in 0..3u8 {
            batch.push(None, dst, &[i; 10]);
        }
        batch.push(None, dst, &[9; 20]);
        assert!(batch.first_is_segmented());
        batch.split_first();
        assert_eq!(
            shape(&batch),
            [(10, None), (10, None), (10, None), (20, None)]
        );
        assert_eq!(batch.consume(1), 1);
        assert_eq!(batch.next_call(false)[0].payload, &[1; 10]);
        assert_eq!(batch.drop_first(), 1);
        assert_eq!(batch.consume(5), 2);
        assert!(batch.is_empty());
        // Reused from the start once empty.
        batch.push(None, dst, &[7; 5]);
        assert_eq!(batch.next_call(false)[0].payload, &[7; 5]);
    }

    #[test]
    fn stopping_coalescing_cuts_what_waits_and_what_comes() {
        let dst = addr("10.0.0.2:1");
        let mut batch = TxBatch::new(64, 1 << 20);
        for _ in 0..3 {
            batch.push(None, dst, &[0; 10]);
        }
        batch.push(None, dst, &[0; 4]);
        batch.stop_coalescing();
        batch.push(None, dst, &[0; 4]);
        assert_eq!(
            shape(&batch),
            [(10, None), (10, None), (10, None), (4, None), (4, None)]
        );
    }

    #[test]
    fn push_with_writes_in_place() {
        let dst = addr("10.0.0.2:1");
        let mut batch = TxBatch::new(64, 1 << 20);
        assert!(batch.push_with(100, |buf| {
            buf[..3].copy_from_slice(b"sal");
            Some((None, dst, 3))
        }));
        assert!(!batch.push_with(100, |_| None), "nothing written");
        assert!(!batch.push_with(100, |_| Some((None, dst, 0))), "empty");
        assert!(batch.push_with(100, |buf| {
            buf[..2].copy_from_slice(b"rs");
            Some((None, dst, 2))
        }));
        assert_eq!(batch.next_call(false)[0].payload, b"salrs");
        assert!(!batch.push_with(1 << 21, |_| unreachable!()), "too big");
    }

    #[test]
    fn received_gro_messages_are_cut_into_datagrams() {
        let mut batch = RxBatch::new(64);
        let src = addr("10.0.0.2:7");
        batch.buffer[..10].copy_from_slice(b"aaaabbbbcc");
        batch.meta[0] = RecvMeta {
            len: 10,
            src: Some(src),
            dst: Some(Ipv4Addr::new(10, 0, 0, 1)),
            stride: 4,
            truncated: false,
        };
        batch.meta[1] = RecvMeta {
            len: 64,
            truncated: true,
            ..batch.meta[0]
        };
        batch.buffer[128..131].copy_from_slice(b"xyz");
        batch.meta[2] = RecvMeta {
            len: 3,
            stride: 3,
            ..batch.meta[0]
        };
        batch.count = 3;
        let payloads: Vec<&[u8]> = batch.datagrams().map(|d| d.payload).collect();
        assert_eq!(payloads, [&b"aaaa"[..], b"bbbb", b"cc", b"xyz"]);
        assert_eq!(batch.unusable(), 1);
        assert!(batch.datagrams().all(|d| d.src == src));
    }
}
