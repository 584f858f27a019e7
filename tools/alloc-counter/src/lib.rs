//! Counting heap allocations in tests: "no allocation per packet" is a
//! claim a test can check by installing [`Counting`] as the binary's global
//! allocator and counting what the threads that matter allocate while the
//! work runs.
//!
//! Only *marked* threads count (a test's own thread, or the threads a
//! daemon runs on), and only while counting is *on*: the test harness's
//! threads, reporting results meanwhile, never do.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;
//!
//! fn main() {
//!     alloc_counter::mark_this_thread();
//!     let (allocations, bytes) = alloc_counter::count(|| vec![7u8; 64]);
//!     assert_eq!((allocations, bytes.len()), (1, 64));
//!     let (allocations, sum) = alloc_counter::count(|| bytes.iter().map(|&b| u32::from(b)).sum::<u32>());
//!     assert_eq!((allocations, sum), (0, 448));
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The system allocator, counting allocations and reallocations of marked
/// threads while counting is on.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MARKED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: a thread being torn down has no thread-locals left.
    if ON.load(Ordering::Relaxed) && MARKED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Makes the calling thread's allocations count (while counting is on).
pub fn mark_this_thread() {
    MARKED.with(|marked| marked.set(true));
}

/// Turns counting on or off, for every marked thread.
pub fn set_counting(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Allocations counted so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Allocations the marked threads made while `f` ran (counting on), and
/// what `f` returned. Calls must not overlap: tests that use it take a
/// lock of their own.
pub fn count<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = allocations();
    set_counting(true);
    let result = f();
    set_counting(false);
    (allocations() - before, result)
}
