//! A peer program killed outright (`SIGKILL`: no FIN, no RST, its UDP port
//! simply closed) is noticed by the first write after it died: the write's
//! packet comes back as port unreachable, and the flow is reset a second
//! later (`peers_gone`), not after the 30 s peer timeout.

use std::time::{Duration, Instant};

use sal::Locator;
use sal_inproc::{Config, Error, Mode};

mod common;

use common::{loopback, server, service, ServerProcess};

/// The server: run by [`a_write_to_a_peer_killed_outright_is_reset_within_seconds`]
/// in a child process. Prints its locator, echoes one stream, then waits
/// to be killed.
#[test]
#[ignore = "the server process of a_write_to_a_peer_killed_outright_is_reset_within_seconds"]
fn child_echoes_then_waits_to_be_killed() {
    if std::env::var_os("SAL_INPROC_CHILD").is_none() {
        return;
    }
    let (server, listener) = server(4);
    println!("SERVER {}", server.local());
    let stream = listener.accept(Mode::Blocking).expect("accept");
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf, Mode::Blocking).expect("read");
    stream.write(&buf[..n], Mode::Blocking).expect("echo");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_write_to_a_peer_killed_outright_is_reset_within_seconds() {
    let (mut server, locator, _lines) =
        ServerProcess::spawn("child_echoes_then_waits_to_be_killed", &[], false);
    let client = sal_inproc::Runtime::bind(Config::new(loopback(), Locator::Udp(locator)))
        .expect("client bind");
    let deadline = |secs| Mode::Until(Instant::now() + Duration::from_secs(secs));
    let stream = client.connect(service(), deadline(5)).expect("connect");
    stream.write(b"ping", deadline(5)).expect("write");
    let mut buf = [0u8; 4];
    let n = stream.read(&mut buf, deadline(5)).expect("echo");
    assert_eq!(&buf[..n], b"ping");

    server.0.kill().expect("kill the server");
    server.0.wait().expect("reap the server");
    let killed = Instant::now();
    // The first write goes out; its packet comes back as port unreachable.
    let mut outcome = stream.write(b"anyone there?", deadline(5)).map(drop);
    while outcome.is_ok() && killed.elapsed() < Duration::from_secs(10) {
        outcome = match stream.read(
            &mut buf,
            Mode::Until(Instant::now() + Duration::from_millis(200)),
        ) {
            Err(Error::WouldBlock) => Ok(()),
            other => other.map(drop),
        };
    }
    let took = killed.elapsed();
    assert!(
        matches!(outcome, Err(Error::Reset)),
        "{outcome:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "reset after {took:?}");
    let stats = client.host_stats();
    assert_eq!((stats.peers_gone, stats.peer_timeouts), (1, 0));
}
