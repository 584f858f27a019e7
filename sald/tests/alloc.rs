//! sald's packet path allocates nothing per packet: two daemons in this
//! process (UDP encapsulation on loopback, no privileges needed) carry a
//! bulk transfer while a global allocator counts what their threads
//! allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ServiceListener, ServiceStream};

mod common;
use common::{InProcess, Sald, Scratch};

/// Counts allocations made on daemon threads while counting is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread runs a daemon.
    static DAEMON: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) && DAEMON.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn daemon_thread() {
    DAEMON.with(|d| d.set(true));
}

/// Packets both daemons' links carried so far.
fn packets(daemons: [&InProcess; 2]) -> u64 {
    daemons
        .iter()
        .map(|d| match d.request(Request::Stats) {
            Response::Stats { stats } => stats.link_rx + stats.link_tx,
            other => panic!("no stats: {other:?}"),
        })
        .sum()
}

#[test]
fn a_bulk_transfer_allocates_nothing_per_packet_in_sald() {
    let dir = Scratch::new("alloc");
    let server = InProcess::start_with(
        common::udp_config(&dir, "server", [127, 0, 0, 2].into()),
        daemon_thread,
    );
    let client = InProcess::start_with(
        common::udp_config(&dir, "client", [127, 0, 0, 1].into()),
        daemon_thread,
    );
    client.forward_to("0/0", server.locator(), 1);
    let service: ServiceId = "a110c01".parse().unwrap();
    let listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(service), 4).unwrap();
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream =
            ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5)))
                .unwrap();
        let stop = stop.clone();
        thread::spawn(move || {
            let chunk = vec![0x5a_u8; 256 << 10];
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&chunk).unwrap();
            }
        })
    };
    // Warm up: buffers grow to what the transfer needs.
    thread::sleep(Duration::from_secs(2));
    let before = packets([&client, &server]);
    COUNTING.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(2));
    COUNTING.store(false, Ordering::Relaxed);
    let carried = packets([&client, &server]) - before;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let received = reader.join().unwrap();
    eprintln!(
        "{allocations} allocations in sald over {carried} packets ({received} bytes received)"
    );
    assert!(carried > 5_000, "only {carried} packets carried");
    // Every packet of the window was carried without an allocation; a
    // buffer that grew or shrank at a trim point may allocate, rarely.
    assert!(
        allocations * 1000 <= carried,
        "{allocations} allocations over {carried} packets"
    );
}
