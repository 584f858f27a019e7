//! Resets through sald, as TCP has them: an application that closes a
//! flow with bytes of its peer unread in its socket resets the flow (RFC
//! 1122, 4.2.2.13), and the reader at the other end gets what had arrived,
//! then `ECONNRESET`, then end of file. A socketpair carries no error, so
//! sald shuts a reset flow's socket down both ways and the shim reads the
//! hang-up that makes (`socket_shim::reset`). Both used to be an orderly
//! end: a cut transfer read like a whole one. An application that shut
//! its sending down before such a close resets the flow at the close too.
//!
//! Two daemons in this process (UDP mode on loopback), no root needed.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sal::proto::FlowState;
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

/// Whether `stream`'s socket becomes ready for `events` (a hang-up is
/// always reported) within `wait`.
fn ready(stream: &ServiceStream, events: PollFlags, wait: Duration) -> Option<PollFlags> {
    let mut polled = [PollFd::new(stream.as_fd(), events)];
    let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let ready = poll(&mut polled, PollTimeout::from(millis)).expect("poll") == 1;
    polled[0].revents().filter(|_| ready)
}

/// Whether `stream`'s socket hangs up within `wait`: sald hangs a flow's
/// socket up when the flow is reset (or once it is over both ways).
fn hangs_up(stream: &ServiceStream, wait: Duration) -> bool {
    ready(stream, PollFlags::empty(), wait).is_some_and(|e| e.contains(PollFlags::POLLHUP))
}

/// A server that answers, shuts its sending down, and closes once the
/// client has read the answer and its end of stream, having read the
/// client's request first or not (`server_reads_request`). Returns the
/// daemons and the client's stream, the server gone.
fn half_closed_exchange(label: &str, server_reads_request: bool) -> (InProcessPair, ServiceStream) {
    let daemons = InProcessPair::new(label);
    let prefix: ServicePrefix = "4e5f/16".parse().unwrap();
    let listener = ServiceListener::bind_via(daemons.server.client(), prefix, 8).unwrap();
    let (read_all, go) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"the answer").unwrap();
        stream.shutdown_write().unwrap();
        if server_reads_request {
            stream.read_exact(&mut [0u8; 10]).unwrap();
        } else {
            let request = ready(&stream, PollFlags::POLLIN, Duration::from_secs(10));
            assert!(request.is_some(), "the request arrives");
        }
        go.recv().unwrap();
    });
    let mut client = ServiceStream::connect_via(
        daemons.client.client(),
        "4e5f01".parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    client.write_all(b"0123456789").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"the answer");
    read_all.send(()).unwrap();
    server.join().unwrap();
    (daemons, client)
}

/// A server that shut its sending down, then closed with the request
/// unread, resets the flow at its close, as Linux's TCP does: the
/// client's socket hangs up, its reads stay end of file (the FIN came
/// first), its writes fail. sald used to stop watching the server's socket
/// at its end of file, and learned of the close only when the client sent
/// more.
#[test]
fn a_flow_closed_after_its_half_close_with_the_request_unread_is_reset_at_once() {
    let (_daemons, mut client) = half_closed_exchange("reset-half-closed", false);
    assert!(
        hangs_up(&client, Duration::from_secs(5)),
        "the reset reaches the client"
    );
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "end of file");
    let write = client.write(b"more");
    assert_eq!(write.map_err(|e| e.kind()), Err(ErrorKind::BrokenPipe));
}

/// The same close after reading the request is no reset: the client's
/// flow goes on, half-closed, until the client finishes it.
#[test]
fn a_flow_closed_after_its_half_close_with_everything_read_is_not_reset() {
    let (daemons, client) = half_closed_exchange("clean-half-closed", true);
    assert!(!hangs_up(&client, Duration::from_millis(500)), "no reset");
    let state = daemons.client.flow(client.flow_id()).map(|f| f.state);
    assert_eq!(state, Some(FlowState::Established));
    client.shutdown_write().unwrap();
    assert!(
        hangs_up(&client, Duration::from_secs(5)),
        "over both ways once the client finished"
    );
}

/// Whether the peer's end of stream reaches `stream` within `wait`: sald
/// shuts the socket for writing then (`POLLRDHUP`, which nix's poll flags
/// do not know).
fn end_of_stream_in(stream: &ServiceStream, wait: Duration) -> bool {
    use nix::libc::{poll, pollfd, POLLRDHUP};
    let mut polled = pollfd {
        fd: stream.as_raw_fd(),
        events: POLLRDHUP,
        revents: 0,
    };
    let millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one `pollfd`, a local that outlives the call; `stream` keeps
    // the descriptor open.
    let ready = unsafe { poll(&mut polled, 1, millis) };
    ready == 1 && polled.revents & POLLRDHUP != 0
}

/// A server that answers and closes (a FIN), and a client whose socket
/// has the answer and the FIN in, unread. Returns the daemons and the
/// client's stream, the server gone.
fn answered_and_finished(label: &str, service: &str) -> (InProcessPair, ServiceStream) {
    let daemons = InProcessPair::new(label);
    let prefix: ServicePrefix = format!("{service}/16").parse().unwrap();
    let listener = ServiceListener::bind_via(daemons.server.client(), prefix, 8).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"the answer").unwrap();
        // Closed with nothing unread: a FIN.
    });
    let client = ServiceStream::connect_via(
        daemons.client.client(),
        format!("{service}01").parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    server.join().unwrap();
    assert!(
        end_of_stream_in(&client, Duration::from_secs(10)),
        "the server's FIN"
    );
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (daemons, client)
}

/// Reads `client` to its end, as from a TCP socket whose FIN came before
/// whatever hung it up (its reset in `CLOSE_WAIT` leaves what was received
/// and the FIN to be read): the answer, then end of file (not
/// `ECONNRESET`), for good; a write then fails with `EPIPE`.
fn reads_the_answer_then_end_of_file(client: &mut ServiceStream) {
    assert!(
        hangs_up(client, Duration::from_secs(10)),
        "the hang-up reaches the client"
    );
    let mut answer = Vec::new();
    let end = client.read_to_end(&mut answer);
    assert_eq!(answer, b"the answer");
    assert_eq!(end.map_err(|e| e.kind()), Ok(answer.len()), "end of file");
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "end of file again");
    let write = client.write(b"more");
    assert_eq!(write.map_err(|e| e.kind()), Err(ErrorKind::BrokenPipe));
}

/// The peer's FIN and then a reset, both in before the client reads
/// anything, read as from TCP: the answer, then end of file. Such a reset
/// used to look like one alone to the client (`socket_shim::reset`).
#[test]
fn a_fin_and_a_reset_both_unread_read_as_the_answer_then_end_of_file() {
    let (_daemons, mut client) = answered_and_finished("fin-reset-unread", "4e60");
    // To a flow nobody reads any more: its sald resets it.
    client.write_all(b"0123456789").unwrap();
    reads_the_answer_then_end_of_file(&mut client);
}

/// The same after the FIN when the client's daemon stops (which hangs
/// every flow's socket up), as from a TCP socket whose FIN came before its
/// connection was lost.
#[test]
fn a_fin_unread_when_the_daemon_stops_reads_as_the_answer_then_end_of_file() {
    let (mut daemons, mut client) = answered_and_finished("fin-stop-unread", "4e61");
    daemons.client.stop().unwrap();
    reads_the_answer_then_end_of_file(&mut client);
}
