//! The elastic buffer against a `VecDeque` model: same bytes in and out,
//! storage never above the capacity, memory released when drained and quiet,
//! out-of-order bytes kept across growth and across trims that must keep
//! them, growth for them only within the limit given.

use std::collections::VecDeque;

use proptest::prelude::*;
use sal_tcp::buffer::ElasticBuffer;

#[derive(Debug, Clone)]
enum Op {
    /// `enqueue_slice` of `len` bytes.
    Enqueue(usize),
    /// `enqueue_many_with`, taking up to `len` bytes of the slice offered.
    EnqueueWith(usize),
    /// `dequeue_slice` into a `len`-byte buffer.
    Dequeue(usize),
    /// `dequeue_many_with`, taking up to `len` bytes.
    DequeueWith(usize),
    /// `dequeue_allocated(min(len, queued))`.
    Drop(usize),
    /// `read_allocated` and `get_allocated` at `offset`, `len` bytes.
    Peek(usize, usize),
    /// `write_unallocated(offset, len bytes)`.
    WriteAhead(usize, usize),
    /// `write_ahead(offset, len bytes, limit)`.
    WriteAheadWithin(usize, usize, usize),
    /// `enqueue_unallocated` of as many bytes as were written right after
    /// the queue (up to `len`), as the TCP assembler would.
    Commit(usize),
    /// A trim point keeping this many bytes past the queue.
    Trim(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3000usize).prop_map(Op::Enqueue),
        (0..3000usize).prop_map(Op::EnqueueWith),
        (0..3000usize).prop_map(Op::Dequeue),
        (0..3000usize).prop_map(Op::DequeueWith),
        (0..3000usize).prop_map(Op::Drop),
        (0..3000usize, 0..500usize).prop_map(|(o, l)| Op::Peek(o, l)),
        (0..3000usize, 0..1500usize).prop_map(|(o, l)| Op::WriteAhead(o, l)),
        (0..3000usize, 0..1500usize, 0..6000usize)
            .prop_map(|(o, l, limit)| Op::WriteAheadWithin(o, l, limit)),
        (0..3000usize).prop_map(Op::Commit),
        prop_oneof![Just(0usize), 0..4500usize].prop_map(Op::Trim),
    ]
}

/// The model: queued bytes, and what was written past them.
struct Model {
    queue: VecDeque<u8>,
    /// Slot `i`: the byte written `i` past the end of the queue, if any.
    ahead: VecDeque<Option<u8>>,
    capacity: usize,
    next_byte: u8,
    added_since_trim: bool,
}

impl Model {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.next_byte = self.next_byte.wrapping_mul(31).wrapping_add(7);
                self.next_byte
            })
            .collect()
    }

    /// `n` bytes joined the queue: the ahead slots they covered are gone.
    fn queued(&mut self, n: usize) {
        self.ahead.drain(..n);
        self.added_since_trim |= n > 0;
    }

    /// `n` bytes left the queue: as much new free space beyond.
    fn dequeued(&mut self, n: usize) {
        self.ahead.extend(std::iter::repeat_n(None, n));
    }
}

fn check(buffer: &ElasticBuffer, model: &Model) {
    assert_eq!(buffer.len(), model.queue.len());
    assert_eq!(buffer.window(), model.capacity - model.queue.len());
    assert_eq!(buffer.capacity(), model.capacity);
    assert!(buffer.allocated() <= model.capacity);
    assert!(buffer.allocated() >= model.queue.len());
    let mut all = vec![0; model.queue.len()];
    assert_eq!(buffer.read_allocated(0, &mut all), model.queue.len());
    assert!(all.iter().eq(model.queue.iter()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn behaves_like_a_vecdeque(
        capacity in 1..6000usize,
        min in 1..3000usize,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut buffer = ElasticBuffer::new(min, capacity);
        let mut model = Model {
            queue: VecDeque::new(),
            ahead: std::iter::repeat_n(None, capacity).collect(),
            capacity,
            next_byte: 1,
            added_since_trim: false,
        };
        for op in ops {
            match op {
                Op::Enqueue(len) => {
                    let data = model.bytes(len);
                    let n = buffer.enqueue_slice(&data);
                    assert_eq!(n, len.min(model.capacity - model.queue.len()));
                    model.queue.extend(&data[..n]);
                    model.queued(n);
                }
                Op::EnqueueWith(len) => {
                    let data = model.bytes(len);
                    let (n, ()) = buffer.enqueue_many_with(|slice| {
                        let n = slice.len().min(len);
                        slice[..n].copy_from_slice(&data[..n]);
                        (n, ())
                    });
                    // Something is offered whenever there is room.
                    if len > 0 && model.queue.len() < model.capacity {
                        assert!(n > 0);
                    }
                    model.queue.extend(&data[..n]);
                    model.queued(n);
                }
                Op::Dequeue(len) => {
                    let mut out = vec![0; len];
                    let n = buffer.dequeue_slice(&mut out);
                    assert_eq!(n, len.min(model.queue.len()));
                    assert!(out[..n].iter().eq(model.queue.drain(..n).collect::<Vec<_>>().iter()));
                    model.dequeued(n);
                }
                Op::DequeueWith(len) => {
                    let (n, got) = buffer.dequeue_many_with(|slice| {
                        let n = slice.len().min(len);
                        (n, slice[..n].to_vec())
                    });
                    if len > 0 && !model.queue.is_empty() {
                        assert!(n > 0);
                    }
                    assert!(got.iter().eq(model.queue.drain(..n).collect::<Vec<_>>().iter()));
                    model.dequeued(n);
                }
                Op::Drop(len) => {
                    let n = len.min(model.queue.len());
                    buffer.dequeue_allocated(n);
                    model.queue.drain(..n);
                    model.dequeued(n);
                }
                Op::Peek(offset, len) => {
                    let mut out = vec![0; len];
                    let n = buffer.read_allocated(offset, &mut out);
                    let want: Vec<u8> = model.queue.iter().skip(offset).take(len).copied().collect();
                    assert_eq!(&out[..n], &want[..]);
                    let slice = buffer.get_allocated(offset, len);
                    assert_eq!(slice, &want[..slice.len()]);
                    if !want.is_empty() {
                        assert!(!slice.is_empty());
                    }
                }
                Op::WriteAhead(offset, len) => {
                    let data = model.bytes(len);
                    let n = buffer.write_unallocated(offset, &data);
                    let room = model.ahead.len();
                    assert_eq!(n, if offset >= room { 0 } else { len.min(room - offset) });
                    for (i, &byte) in data[..n].iter().enumerate() {
                        model.ahead[offset + i] = Some(byte);
                    }
                    model.added_since_trim |= n > 0;
                }
                Op::WriteAheadWithin(offset, len, limit) => {
                    let data = model.bytes(len);
                    let held = buffer.allocated();
                    let n = buffer.write_ahead(offset, &data, limit);
                    let room = model.ahead.len();
                    let fits = if offset >= room { 0 } else { len.min(room - offset) };
                    let extent = model.queue.len() + offset + fits;
                    let want = if extent <= limit.max(held) { fits } else { 0 };
                    assert_eq!(n, want);
                    assert!(buffer.allocated() == held || extent <= limit);
                    for (i, &byte) in data[..n].iter().enumerate() {
                        model.ahead[offset + i] = Some(byte);
                    }
                    model.added_since_trim |= n > 0;
                }
                Op::Commit(len) => {
                    let n = model.ahead.iter().take(len).take_while(|b| b.is_some()).count();
                    buffer.enqueue_unallocated(n);
                    let bytes: Vec<u8> = model.ahead.iter().take(n).map(|b| b.unwrap()).collect();
                    model.queue.extend(bytes);
                    model.queued(n);
                }
                Op::Trim(ahead) => {
                    let before = buffer.allocated();
                    buffer.trim(ahead);
                    // Bytes past the ones kept may be gone.
                    model.ahead.iter_mut().skip(ahead).for_each(|b| *b = None);
                    // Memory is released once drained and quiet for an interval.
                    if model.queue.is_empty() && !model.added_since_trim && ahead == 0 {
                        assert_eq!(buffer.allocated(), 0);
                    }
                    // Never grows; never drops below what it must keep.
                    assert!(buffer.allocated() <= before);
                    assert!(buffer.allocated() >= (model.queue.len() + ahead).min(before));
                    model.added_since_trim = false;
                }
            }
            check(&buffer, &model);
        }
    }
}

#[test]
fn release_frees_everything() {
    let mut buffer = ElasticBuffer::new(16, 1 << 20);
    assert_eq!(buffer.enqueue_slice(&[1; 100_000]), 100_000);
    assert_eq!(buffer.allocated(), 131_072);
    buffer.release();
    assert_eq!((buffer.len(), buffer.allocated()), (0, 0));
}
