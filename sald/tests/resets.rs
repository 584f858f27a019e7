//! Resets through sald, as TCP has them: an application that closes a
//! flow with bytes of its peer unread in its socket resets the flow (RFC
//! 1122, 4.2.2.13), and the reader at the other end gets what had arrived,
//! then `ECONNRESET`, then end of file. A socketpair carries no error, so
//! sald shuts a reset flow's socket down both ways and the shim reads the
//! hang-up that makes (`socket_shim::reset`). Both used to be an orderly
//! end: a cut transfer read like a whole one.
//!
//! Two daemons in this process (UDP mode on loopback), no root needed.

use std::io::{ErrorKind, Read, Write};
use std::thread;
use std::time::Duration;

use sal::ServicePrefix;
use socket_shim::{ServiceListener, ServiceStream};

mod common;
use common::{pattern, InProcessPair, Sald};

/// The server's answer, all of which must reach the client either way.
const ANSWER: usize = 100_000;

/// A client that sends a request the server may leave unread, and reads
/// the server's whole answer: what it read, and how its reading ended.
fn exchange(label: &str, server_reads_request: bool) -> (Vec<u8>, std::io::Result<usize>, usize) {
    let daemons = InProcessPair::new(label);
    let prefix: ServicePrefix = "4e5e/16".parse().unwrap();
    let listener = ServiceListener::bind_via(daemons.server.client(), prefix, 8).unwrap();
    let answer = pattern(ANSWER, 7);
    let server = {
        let answer = answer.clone();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(&answer).unwrap();
            if server_reads_request {
                let mut request = [0u8; 10];
                stream.read_exact(&mut request).unwrap();
            } else {
                // Let the request arrive, then close without reading it.
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut client = ServiceStream::connect_via(
        daemons.client.client(),
        "4e5e01".parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    client.write_all(b"0123456789").unwrap();
    server.join().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let end = client.read_to_end(&mut got);
    let after = client.read(&mut [0u8; 8]).unwrap();
    assert!(got == answer, "read {} of {ANSWER} bytes", got.len());
    (got, end, after)
}

#[test]
fn a_flow_closed_with_its_request_unread_reads_as_reset_after_the_answer() {
    let (_, end, after) = exchange("reset-unread", false);
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "a reset, not an end of file"
    );
    assert_eq!(after, 0, "then end of file");
}

#[test]
fn a_flow_closed_after_reading_everything_ends_cleanly() {
    let (got, end, after) = exchange("reset-clean", true);
    assert_eq!(end.unwrap(), got.len());
    assert_eq!(after, 0);
}
