//! Elastic byte ring buffers: memory that follows what a flow actually holds.
//!
//! smoltcp's `SocketBuffer` is a ring over storage fixed at creation, so every
//! flow pays for its largest possible window up front. An [`ElasticBuffer`]
//! behaves like that ring (same operations, same offsets, same results) but its
//! storage is separate from its *capacity*:
//!
//! - **capacity** ([`capacity`](ElasticBuffer::capacity)) is the configured
//!   maximum. Every promise the socket makes (the advertised receive window,
//!   how much the application may queue) is computed from it, never from the
//!   memory currently held, so growing is never visible on the wire;
//! - **storage** ([`allocated`](ElasticBuffer::allocated)) starts empty, is
//!   allocated on the first byte at `min` bytes, and doubles (capped at the
//!   capacity) whenever a write reaches past its end. Growing copies what the
//!   old storage held, so out-of-order data written ahead of the queue
//!   survives. Doubling bounds the number of allocations per flow to
//!   `log2(max / min) + 1` per growth episode; none happen in steady state;
//! - **out-of-order data** is written ahead of the queue, at its offset, so
//!   covering it costs memory by its *offset*, not by its size. The owner
//!   decides how far that may go ([`write_ahead`](ElasticBuffer::write_ahead)
//!   takes a limit): storage already held is always used, but it grows for
//!   such data only up to the limit (the TCP socket derives it from the bytes
//!   actually received, see [`Socket::out_of_order_dropped`]);
//! - **release** happens at *trim points* the socket runs once per
//!   `trim_interval` ([`trim`](ElasticBuffer::trim)): a buffer that is empty,
//!   holds nothing ahead and received no data since the previous trim point
//!   is freed; otherwise, if its storage is at least twice the power of two
//!   covering the interval's high-water mark and the bytes ahead it must keep
//!   (and at least `min`), it is reallocated at that size. So an idle flow
//!   holds no buffer memory one to two intervals after its last byte, and a
//!   flow that was bulk and now trickles shrinks to what it uses.
//!
//! The allocation is a plain `Box<[u8]>`: freeing it returns it to the
//! allocator, which returns large blocks to the system.
//!
//! [`Socket::out_of_order_dropped`]: crate::Socket::out_of_order_dropped

use core::cmp;

use crate::config::MAX_BUFFER;

/// A byte ring buffer whose storage grows on demand up to a fixed capacity and
/// is released when the flow no longer needs it. See the [module docs](self).
///
/// Offsets in the "random access" operations are relative to the first
/// queued byte (`get_allocated`, `read_allocated`) or to the first free byte
/// after the queue (`write_unallocated`), as in smoltcp's `RingBuffer`.
#[derive(Debug, Default)]
pub struct ElasticBuffer {
    storage: Box<[u8]>,
    read_at: u32,
    len: u32,
    min: u32,
    max: u32,
    /// Largest extent (queued bytes plus anything written ahead of them)
    /// needed since the last trim point.
    high_water: u32,
    /// Whether bytes were added since the last trim point.
    active: bool,
}

impl ElasticBuffer {
    /// A buffer that may hold up to `max` bytes (clamped to 1..=[`MAX_BUFFER`])
    /// and allocates `min` bytes (clamped to 1..=max) first. Holds no memory.
    pub fn new(min: usize, max: usize) -> ElasticBuffer {
        let max = max.clamp(1, MAX_BUFFER);
        let min = min.clamp(1, max);
        ElasticBuffer {
            storage: Box::default(),
            read_at: 0,
            len: 0,
            min: min as u32,
            max: max as u32,
            high_water: 0,
            active: false,
        }
    }

    /// The most bytes this buffer can hold: its configured maximum.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.max as usize
    }

    /// The size of the buffer's first allocation (`min`).
    #[inline]
    pub fn first_allocation(&self) -> usize {
        self.min as usize
    }

    /// Bytes of storage held right now (0 when released).
    #[inline]
    pub fn allocated(&self) -> usize {
        self.storage.len()
    }

    /// The most bytes this buffer may span while the host's memory is
    /// under pressure: the storage it holds, or if it holds none, its first
    /// allocation (`min`), so that a flow can always make progress (Linux
    /// likewise grants every socket `tcp_rmem[0]`/`tcp_wmem[0]` under
    /// pressure).
    #[inline]
    pub fn pressure_capacity(&self) -> usize {
        if self.storage.is_empty() {
            self.min as usize
        } else {
            self.storage.len()
        }
    }

    /// Number of queued bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no byte is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the queue is at capacity.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == self.max
    }

    /// Bytes that can still be queued: capacity minus length.
    #[inline]
    pub fn window(&self) -> usize {
        (self.max - self.len) as usize
    }

    /// Forget every queued byte; keeps the storage.
    pub fn clear(&mut self) {
        self.read_at = 0;
        self.len = 0;
    }

    /// Forget every queued byte and free the storage.
    pub fn release(&mut self) {
        self.clear();
        self.storage = Box::default();
        self.high_water = 0;
        self.active = false;
    }

    /// Offers `storage` (another buffer's, from [`take_storage`]) as this
    /// buffer's first allocation: taken, zeroed, if the buffer holds none
    /// and it is exactly `min` bytes; otherwise handed back. A host that
    /// opens and closes many short flows so reuses their first
    /// allocations instead of asking the allocator, which grows and trims
    /// its heap for each.
    ///
    /// [`take_storage`]: ElasticBuffer::take_storage
    pub fn seed(&mut self, mut storage: Box<[u8]>) -> Option<Box<[u8]>> {
        if !self.storage.is_empty() || storage.len() != self.min as usize {
            return Some(storage);
        }
        // What another flow held is never visible to this one.
        storage.fill(0);
        self.storage = storage;
        self.read_at = 0;
        None
    }

    /// Takes the storage, for another buffer's [`seed`]; the buffer is
    /// released ([`release`]).
    ///
    /// [`seed`]: ElasticBuffer::seed
    /// [`release`]: ElasticBuffer::release
    pub fn take_storage(&mut self) -> Box<[u8]> {
        let storage = std::mem::take(&mut self.storage);
        self.release();
        storage
    }

    /// Index in `storage` of the byte `offset` bytes after the first queued one.
    #[inline]
    fn index(&self, offset: usize) -> usize {
        let cap = self.storage.len();
        if cap == 0 {
            return 0;
        }
        (self.read_at as usize + offset) % cap
    }

    /// Make the storage cover `extent` bytes from the first queued byte
    /// (`extent <= capacity`). Returns whether it does.
    fn reserve(&mut self, extent: usize) -> bool {
        debug_assert!(extent <= self.capacity());
        self.high_water = self.high_water.max(extent as u32);
        let old_cap = self.storage.len();
        if extent <= old_cap {
            return true;
        }
        let mut new_cap = old_cap.max(self.min as usize);
        while new_cap < extent {
            new_cap = new_cap.saturating_mul(2);
        }
        let new_cap = new_cap.min(self.capacity());
        // Copy the whole old storage, starting at the first queued byte, so
        // that bytes written ahead of the queue keep their offsets.
        let read_at = self.read_at as usize;
        self.replace_storage(new_cap, |new, old| {
            let (front, back) = old.split_at(read_at);
            new[..back.len()].copy_from_slice(back);
            new[back.len()..old_cap].copy_from_slice(front);
        })
    }

    /// Swap in a zeroed allocation of `cap` bytes filled by `fill` from the old
    /// one; the first queued byte moves to index 0. Returns false, changing
    /// nothing, if the allocator refuses.
    fn replace_storage(&mut self, cap: usize, fill: impl FnOnce(&mut [u8], &[u8])) -> bool {
        let mut new = Vec::new();
        if new.try_reserve_exact(cap).is_err() {
            return false;
        }
        new.resize(cap, 0);
        fill(&mut new, &self.storage);
        self.storage = new.into_boxed_slice();
        self.read_at = 0;
        true
    }

    /// A trim point (see the [module docs](self)): free the storage if the
    /// buffer is empty, nothing was added since the previous trim point and
    /// nothing is kept ahead, or shrink it to the high-water mark of the
    /// interval. `ahead` says how many bytes past the queue (out-of-order
    /// data and the holes between it) must survive; anything written further
    /// may be lost. Returns the change in allocated bytes (negative:
    /// released).
    pub fn trim(&mut self, ahead: usize) -> isize {
        let before = self.storage.len();
        let active = core::mem::take(&mut self.active);
        let high_water = cmp::max(self.high_water, self.len) as usize;
        let keep = cmp::min(self.len() + ahead, before);
        self.high_water = self.len;
        if before == 0 {
            return 0;
        }
        if keep == 0 && !active {
            self.release();
            return -(before as isize);
        }
        let target = high_water
            .max(keep)
            .next_power_of_two()
            .clamp(self.min as usize, self.capacity());
        if target.saturating_mul(2) > before {
            return 0;
        }
        let read_at = self.read_at as usize;
        self.replace_storage(target, |new, old| {
            let first = cmp::min(keep, old.len() - read_at);
            new[..first].copy_from_slice(&old[read_at..read_at + first]);
            new[first..keep].copy_from_slice(&old[..keep - first]);
        });
        self.storage.len() as isize - before as isize
    }

    /// Call `f` with the largest contiguous free slice (growing the storage
    /// first if it has no free byte and the capacity allows), and queue the
    /// number of bytes `f` returns.
    ///
    /// # Panics
    /// If `f` returns more than the length of the slice it was given.
    pub fn enqueue_many_with<'b, R, F>(&'b mut self, f: F) -> (usize, R)
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        // Unlike smoltcp's ring, an empty buffer does not restart at the
        // front: bytes written ahead of the queue must keep their place.
        if self.len() == self.storage.len() && !self.is_full() {
            self.reserve(self.len() + 1);
        }
        let cap = self.storage.len();
        let write_at = self.index(self.len());
        let free = cap - self.len();
        let size = cmp::min(free, cap - write_at);
        let (written, result) = f(&mut self.storage[write_at..write_at + size]);
        assert!(
            written <= size,
            "enqueue_many_with: closure overran its slice"
        );
        self.len += written as u32;
        self.active |= written > 0;
        (written, result)
    }

    /// Queue as much of `data` as the capacity allows, growing the storage as
    /// needed; returns how many bytes were queued.
    pub fn enqueue_slice(&mut self, data: &[u8]) -> usize {
        let mut size = cmp::min(data.len(), self.window());
        if size == 0 {
            return 0;
        }
        if !self.reserve(self.len() + size) {
            size = cmp::min(size, self.storage.len() - self.len());
        }
        let written = self.write_at(self.len(), &data[..size]);
        self.len += written as u32;
        self.active |= written > 0;
        written
    }

    /// Copy `data` into storage starting `offset` bytes after the first queued
    /// byte, wrapping around; the caller made sure the storage covers it.
    fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let cap = self.storage.len();
        let size = cmp::min(data.len(), cap.saturating_sub(offset));
        if size == 0 {
            return 0;
        }
        let start = self.index(offset);
        let first = cmp::min(size, cap - start);
        self.storage[start..start + first].copy_from_slice(&data[..first]);
        self.storage[..size - first].copy_from_slice(&data[first..size]);
        size
    }

    /// Call `f` with the largest contiguous slice of queued bytes, and dequeue
    /// the number of bytes `f` returns.
    ///
    /// # Panics
    /// If `f` returns more than the length of the slice it was given.
    pub fn dequeue_many_with<'b, R, F>(&'b mut self, f: F) -> (usize, R)
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        let cap = self.storage.len();
        let read_at = self.read_at as usize;
        let size = cmp::min(self.len(), cap - read_at);
        let (read, result) = f(&mut self.storage[read_at..read_at + size]);
        assert!(read <= size, "dequeue_many_with: closure overran its slice");
        // Fields, not `dequeue_allocated`: `storage` stays borrowed for `'b`.
        self.read_at = if cap > 0 {
            ((read_at + read) % cap) as u32
        } else {
            0
        };
        self.len -= read as u32;
        (read, result)
    }

    /// Dequeue as many bytes as fit into `data`; returns how many.
    pub fn dequeue_slice(&mut self, data: &mut [u8]) -> usize {
        let read = self.read_allocated(0, data);
        self.dequeue_allocated(read);
        read
    }

    /// Dequeue `count` bytes without reading them.
    ///
    /// # Panics
    /// If `count` is more than the number of queued bytes.
    pub fn dequeue_allocated(&mut self, count: usize) {
        assert!(
            count <= self.len(),
            "dequeue_allocated: not that many bytes"
        );
        self.read_at = self.index(count) as u32;
        self.len -= count as u32;
    }

    /// The largest contiguous slice of queued bytes starting `offset` bytes
    /// after the first, at most `size` long.
    pub fn get_allocated(&self, offset: usize, size: usize) -> &[u8] {
        if offset >= self.len() {
            return &[];
        }
        let start = self.index(offset);
        let size = cmp::min(size, self.len() - offset);
        let size = cmp::min(size, self.storage.len() - start);
        &self.storage[start..start + size]
    }

    /// Copy queued bytes starting `offset` bytes after the first into `data`
    /// (across the wrap point); returns how many were copied.
    pub fn read_allocated(&self, offset: usize, data: &mut [u8]) -> usize {
        if offset >= self.len() {
            return 0;
        }
        let size = cmp::min(data.len(), self.len() - offset);
        let start = self.index(offset);
        let cap = self.storage.len();
        let first = cmp::min(size, cap - start);
        data[..first].copy_from_slice(&self.storage[start..start + first]);
        data[first..size].copy_from_slice(&self.storage[..size - first]);
        size
    }

    /// Write `data` `offset` bytes past the end of the queue without queueing
    /// it (out-of-order data), growing the storage as needed. Writes what
    /// fits within the capacity; returns how many bytes were written.
    pub fn write_unallocated(&mut self, offset: usize, data: &[u8]) -> usize {
        self.write_ahead(offset, data, usize::MAX)
    }

    /// [`write_unallocated`](Self::write_unallocated), except that the
    /// storage grows only if, after the write, it needs to reach at most
    /// `limit` bytes past the first queued byte. Beyond that, the bytes are
    /// written only if the storage already held covers them (and then do not
    /// count toward the high-water mark, so that the next trim point may
    /// still shrink the storage below them), else nothing is written (0).
    pub fn write_ahead(&mut self, offset: usize, data: &[u8], limit: usize) -> usize {
        let start = self.len() + offset;
        if start >= self.capacity() || data.is_empty() {
            return 0;
        }
        let size = cmp::min(data.len(), self.capacity() - start);
        let extent = start + size;
        if extent <= limit {
            if !self.reserve(extent) {
                return 0;
            }
        } else if extent > self.storage.len() {
            return 0;
        }
        self.active = true;
        self.write_at(start, &data[..size])
    }

    /// Queue `count` bytes previously written with `write_unallocated`.
    ///
    /// # Panics
    /// If that would exceed the capacity or the storage.
    pub fn enqueue_unallocated(&mut self, count: usize) {
        assert!(
            self.len() + count <= cmp::min(self.capacity(), self.storage.len()),
            "enqueue_unallocated: more than was written"
        );
        self.len += count as u32;
        self.active |= count > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nothing_until_written() {
        let buffer = ElasticBuffer::new(64, 1024);
        assert_eq!(buffer.allocated(), 0);
        assert_eq!(buffer.capacity(), 1024);
        assert_eq!(buffer.window(), 1024);
    }

    #[test]
    fn grows_by_doubling_up_to_capacity() {
        let mut buffer = ElasticBuffer::new(64, 1000);
        assert_eq!(buffer.enqueue_slice(&[1; 10]), 10);
        assert_eq!(buffer.allocated(), 64);
        assert_eq!(buffer.enqueue_slice(&[2; 100]), 100);
        assert_eq!(buffer.allocated(), 128);
        assert_eq!(buffer.enqueue_slice(&[3; 2000]), 890);
        assert_eq!(buffer.allocated(), 1000);
        assert!(buffer.is_full());
    }

    #[test]
    fn growth_keeps_bytes_across_the_wrap_and_ahead_of_the_queue() {
        let mut buffer = ElasticBuffer::new(8, 64);
        assert_eq!(buffer.enqueue_slice(b"abcdefgh"), 8);
        buffer.dequeue_allocated(6);
        assert_eq!(buffer.enqueue_slice(b"ijkl"), 4); // wraps in 8 bytes
        assert_eq!(buffer.allocated(), 8);
        // Out-of-order bytes 2 past the end force growth.
        assert_eq!(buffer.write_unallocated(2, b"op"), 2);
        assert_eq!(buffer.allocated(), 16);
        assert_eq!(buffer.write_unallocated(0, b"mn"), 2);
        buffer.enqueue_unallocated(4);
        let mut out = [0; 10];
        assert_eq!(buffer.dequeue_slice(&mut out), 10);
        assert_eq!(&out, b"ghijklmnop");
    }

    #[test]
    fn write_unallocated_stops_at_capacity() {
        let mut buffer = ElasticBuffer::new(4, 16);
        assert_eq!(buffer.write_unallocated(10, &[7; 10]), 6);
        assert_eq!(buffer.write_unallocated(16, &[7; 1]), 0);
        assert_eq!(buffer.allocated(), 16);
    }

    #[test]
    fn trim_frees_an_idle_empty_buffer_after_one_quiet_interval() {
        let mut buffer = ElasticBuffer::new(64, 4096);
        assert_eq!(buffer.enqueue_slice(&[0; 1000]), 1000);
        buffer.dequeue_allocated(1000);
        // Data arrived during this interval: keep (shrink at most).
        assert_eq!(buffer.trim(0), 0);
        assert_eq!(buffer.allocated(), 1024);
        // A whole interval without data: free.
        assert_eq!(buffer.trim(0), -1024);
        assert_eq!(buffer.allocated(), 0);
        assert_eq!(buffer.trim(0), 0);
    }

    #[test]
    fn trim_shrinks_to_the_high_water_mark() {
        let mut buffer = ElasticBuffer::new(64, 1 << 16);
        assert_eq!(buffer.enqueue_slice(&[0; 40_000]), 40_000);
        assert_eq!(buffer.allocated(), 1 << 16);
        buffer.dequeue_allocated(39_990);
        buffer.trim(0); // the interval's high-water mark was 40,000
        assert_eq!(buffer.allocated(), 1 << 16);
        assert_eq!(buffer.enqueue_slice(&[1; 100]), 100);
        buffer.trim(0); // high-water mark 110: shrink to 128
        assert_eq!(buffer.allocated(), 128);
        let mut out = [9; 110];
        assert_eq!(buffer.dequeue_slice(&mut out), 110);
        assert_eq!(&out[..10], &[0; 10]);
        assert_eq!(&out[10..], &[1; 100]);
    }

    #[test]
    fn trim_keeps_out_of_order_data() {
        let mut buffer = ElasticBuffer::new(64, 1 << 16);
        assert_eq!(buffer.write_unallocated(30_000, &[5; 10]), 10);
        buffer.trim(30_010);
        buffer.trim(30_010);
        assert_eq!(buffer.allocated(), 32_768);
        // Once the data ahead is given up, the storage goes.
        buffer.trim(0);
        assert_eq!(buffer.allocated(), 0);
    }

    #[test]
    fn trim_shrinks_under_out_of_order_data_and_keeps_it() {
        let mut buffer = ElasticBuffer::new(64, 1 << 20);
        assert_eq!(buffer.enqueue_slice(&[1; 300_000]), 300_000);
        assert_eq!(buffer.allocated(), 1 << 19);
        buffer.dequeue_allocated(299_990); // read_at far from 0
        assert_eq!(buffer.write_unallocated(90, b"ahead"), 5);
        buffer.trim(95); // the interval's high-water mark: 300,000
        assert_eq!(buffer.allocated(), 1 << 19);
        buffer.trim(95); // 10 queued, 95 ahead: 128
        assert_eq!(buffer.allocated(), 128);
        assert_eq!(buffer.write_unallocated(0, &[2; 90]), 90);
        buffer.enqueue_unallocated(95);
        let mut out = [0; 105];
        assert_eq!(buffer.dequeue_slice(&mut out), 105);
        assert_eq!(&out[..10], &[1; 10]);
        assert_eq!(&out[10..100], &[2; 90]);
        assert_eq!(&out[100..], b"ahead");
    }

    #[test]
    fn seeded_storage_is_zeroed_and_taken_only_at_the_first_allocation_size() {
        let mut used = ElasticBuffer::new(16, 64);
        assert_eq!(used.enqueue_slice(&[7; 10]), 10);
        let storage = used.take_storage();
        assert_eq!((storage.len(), used.allocated(), used.len()), (16, 0, 0));
        let mut other = ElasticBuffer::new(32, 64);
        let storage = other
            .seed(storage)
            .expect("not its first allocation's size");
        let mut fresh = ElasticBuffer::new(16, 64);
        assert!(fresh.seed(storage).is_none(), "taken");
        assert_eq!(fresh.allocated(), 16);
        assert!(
            fresh.seed(vec![0; 16].into_boxed_slice()).is_some(),
            "holds one"
        );
        // Nothing of the old flow's bytes shows through.
        assert_eq!(fresh.get_allocated(0, 16), &[] as &[u8]);
        fresh.enqueue_unallocated(16);
        assert_eq!(fresh.get_allocated(0, 16), &[0; 16]);
    }

    #[test]
    fn write_ahead_grows_only_up_to_the_limit() {
        let mut buffer = ElasticBuffer::new(64, 1 << 20);
        // Far past the limit: nothing written, nothing allocated.
        assert_eq!(buffer.write_ahead(1_000_000, b"x", 4096), 0);
        assert_eq!(buffer.allocated(), 0);
        // Within it: grows by doubling as usual.
        assert_eq!(buffer.write_ahead(3000, b"x", 4096), 1);
        assert_eq!(buffer.allocated(), 4096);
        // Past the limit but within what is held: written, and not a reason
        // to keep the storage at the next trim point.
        assert_eq!(buffer.write_ahead(4000, b"y", 100), 1);
        assert_eq!(buffer.write_ahead(5000, b"z", 100), 0);
        assert_eq!(buffer.allocated(), 4096);
        buffer.trim(0);
        buffer.trim(0);
        assert_eq!(buffer.allocated(), 0);
    }
}
