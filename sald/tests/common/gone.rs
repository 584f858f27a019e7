//! A peer sald gone: what a client's sald makes of the refusals that come
//! back (ICMP "port unreachable" over UDP, "protocol unreachable" in native
//! carriage), the same checks for both carriages.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};

use super::{Daemon, Sald};

/// Connects through `client` to `service`, served behind `server`, kills
/// `server` outright and checks that the client's flow is reset within
/// seconds (the refusal's grace is 1 s; the peer timeout it replaces, 30
/// s), and that `client` counts one peer gone.
pub fn a_flow_is_reset_when_its_peer_sald_is_killed(
    client: &Daemon,
    server: &mut Daemon,
    service: ServiceId,
) {
    let listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(service), 4).unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let mut stream =
        ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5))).unwrap();
    let mut accepted = accept.join().unwrap();
    stream.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    server.child.signal(Signal::SIGKILL).unwrap();
    server.child.wait_timeout(Duration::from_secs(5)).unwrap();
    let killed = Instant::now();
    // The client keeps writing, as an application that does not know yet,
    // and reads (through the library, which tells a reset from an end of
    // stream) how the flow ends.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut raw = stream.as_unix_stream().try_clone().unwrap();
        let done = Arc::clone(&done);
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) && raw.write_all(b"more").is_ok() {
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let outcome = stream.read(&mut [0u8; 16]).map_err(|e| e.kind());
    let took = killed.elapsed();
    done.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "after {took:?}");
    assert!(took < Duration::from_secs(8), "reset after {took:?}");
    let host = client.stats().host;
    assert_eq!(host.peers_gone, 1, "{host:?}");
    drop((stream, accepted));
}

/// A connect through `client`, whose rule forwards `service` where no sald
/// listens (gone, or never started), is refused at once: before its SYN's
/// first retransmission (due after 500 ms), not timed out after all of
/// them.
pub fn a_connect_to_a_sald_gone_is_refused_at_once(client: &Daemon, service: ServiceId) {
    let start = Instant::now();
    let result =
        ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(20)));
    let took = start.elapsed();
    let Err(error) = result else {
        panic!("connected, though nobody could answer");
    };
    assert_eq!(
        error.kind(),
        Some(sal_control::ErrorKind::Refused),
        "{error} after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
    let host = client.stats().host;
    assert_eq!(host.unreachable_hops, 1, "{host:?}");
    // Read as it came, not at the retransmission's send.
    assert_eq!(host.retransmits, 0, "{host:?}");
    // Nowhere else to go: the same hop, so no second way.
    assert_eq!(host.rerouted_syns, 0, "{host:?}");
}
