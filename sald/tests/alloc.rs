//! sald's packet path allocates nothing per packet: two daemons in this
//! process (UDP encapsulation on loopback, no privileges needed) carry a
//! bulk transfer while a global allocator counts what their threads
//! allocate.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ServiceListener, ServiceStream};

mod common;
use common::{InProcess, Sald, Scratch};

/// Counts allocations made on the daemons' threads while counting is on.
#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

fn daemon_thread() {
    alloc_counter::mark_this_thread();
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
    let (allocations, ()) = alloc_counter::count(|| thread::sleep(Duration::from_secs(2)));
    let carried = packets([&client, &server]) - before;
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
