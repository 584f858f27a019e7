//! Two engines on 127.0.0.1 (each its own UDP port: the host sends a flow
//! to another port of its own address out, as stage 2 made it), the client
//! routing its SYNs straight to the server's locator: no sald, no root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use sal::{Locator, ServiceId, ServicePrefix};
use sal_inproc::{
    Config, DriverStats, Ends, EndsSignal, Error, Interruptible, Listener, Mode, Runtime, Stream,
    WaitStats,
};

mod common;

use common::{loopback, pattern};

fn service() -> ServiceId {
    "c0ec7001".parse().unwrap()
}

/// A server engine listening on [`service`] (its own SYNs would go to the
/// discard port: it makes none).
fn server(tune: impl FnOnce(&mut Config)) -> (Runtime, Listener) {
    let mut config = Config::new(
        loopback(),
        Locator::Udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)),
    );
    tune(&mut config);
    let runtime = Runtime::bind(config).expect("server bind");
    let listener = (runtime.listen(ServicePrefix::exact(service()), 1024)).expect("listen");
    (runtime, listener)
}

/// A client engine whose SYNs go to `server`.
fn client(server: &Runtime, tune: impl FnOnce(&mut Config)) -> Runtime {
    let mut config = Config::new(loopback(), server.local());
    tune(&mut config);
    Runtime::bind(config).expect("client bind")
}

/// Whether `fd` is readable within `ms` milliseconds.
fn ready(fd: BorrowedFd<'_>, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).expect("poll") == 1
}

/// Reads until end of stream.
fn read_to_end(stream: &Stream, mode: Mode) -> Result<Vec<u8>, Error> {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = stream.read(&mut buf, mode)?;
        if n == 0 {
            return Ok(got);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn the_runtime_and_its_objects_are_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Runtime>();
    shared::<Stream>();
    shared::<Listener>();
}

#[test]
fn a_mebibyte_each_way_arrives_byte_exact_with_blocking_threads() {
    const LEN: usize = 1 << 20;
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let served = thread::spawn(move || {
        let stream = Arc::new(listener.accept(Mode::Blocking).expect("accept"));
        let writer = {
            let stream = Arc::clone(&stream);
            thread::spawn(move || {
                let sent = stream
                    .write(&pattern(LEN, 2), Mode::Blocking)
                    .expect("server write");
                stream.shutdown_write().expect("server shutdown");
                sent
            })
        };
        let got = read_to_end(&stream, Mode::Blocking).expect("server read");
        (got, writer.join().unwrap())
    });
    let stream = Arc::new(client.connect(service(), Mode::Blocking).expect("connect"));
    let writer = {
        let stream = Arc::clone(&stream);
        thread::spawn(move || {
            let sent = stream
                .write(&pattern(LEN, 1), Mode::Blocking)
                .expect("client write");
            stream.shutdown_write().expect("client shutdown");
            sent
        })
    };
    let got = read_to_end(&stream, Mode::Blocking).expect("client read");
    assert_eq!(writer.join().unwrap(), LEN);
    let (server_got, server_sent) = served.join().unwrap();
    assert_eq!(server_sent, LEN);
    assert!(
        got == pattern(LEN, 2),
        "client got {} bytes, not the server's",
        got.len()
    );
    assert!(
        server_got == pattern(LEN, 1),
        "server got {} bytes, not the client's",
        server_got.len()
    );
}

#[test]
fn readiness_descriptors_tell_the_truth() {
    const BUFFER: usize = 64 * 1024;
    let (server, listener) = server(|c| c.max_recv_buffer = BUFFER);
    let client = client(&server, |c| c.max_send_buffer = BUFFER);
    assert!(
        !ready(listener.readable_fd().unwrap(), 50),
        "no flow to accept yet"
    );
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    assert!(
        ready(listener.readable_fd().unwrap(), 2000),
        "a flow to accept"
    );
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    assert!(
        !ready(listener.readable_fd().unwrap(), 0),
        "the queue is empty again"
    );

    assert!(
        !ready(accepted.readable_fd().unwrap(), 100),
        "nothing to read before data"
    );
    assert!(
        ready(stream.writable_fd().unwrap(), 0),
        "a fresh flow is writable"
    );
    assert_eq!(stream.write(b"hello", Mode::Blocking).unwrap(), 5);
    assert!(
        ready(accepted.readable_fd().unwrap(), 2000),
        "readable once data came"
    );
    let mut buf = [0u8; 16];
    assert_eq!(accepted.read(&mut buf, Mode::NonBlocking).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    assert!(
        !ready(accepted.readable_fd().unwrap(), 0),
        "not readable once drained"
    );

    // Fill the client's send buffer and the server's window: then the
    // client is not writable, until the server reads.
    let chunk = pattern(16 * 1024, 3);
    let mut written = 0;
    let limit = Instant::now() + Duration::from_secs(5);
    loop {
        match stream.write(&chunk, Mode::NonBlocking) {
            Ok(n) => written += n,
            Err(Error::WouldBlock) if !ready(stream.writable_fd().unwrap(), 200) => break,
            Err(Error::WouldBlock) => {}
            Err(error) => panic!("write: {error}"),
        }
        assert!(Instant::now() < limit, "the send buffer never filled");
    }
    assert!(written >= BUFFER, "{written} bytes fit");
    assert!(
        !ready(stream.writable_fd().unwrap(), 300),
        "not writable while full"
    );
    let mut sink = vec![0u8; 256 * 1024];
    let mut drained = 0;
    while drained < written {
        drained += accepted.read(&mut sink, Mode::Blocking).expect("drain");
    }
    assert!(
        ready(stream.writable_fd().unwrap(), 2000),
        "writable once the peer read"
    );

    stream.shutdown_write().unwrap();
    assert!(
        ready(accepted.readable_fd().unwrap(), 2000),
        "readable at end of stream"
    );
    assert_eq!(accepted.read(&mut buf, Mode::NonBlocking).unwrap(), 0);
    assert!(
        ready(stream.writable_fd().unwrap(), 0),
        "shut for writing: writes fail at once"
    );
    assert!(matches!(
        stream.write(b"x", Mode::NonBlocking),
        Err(Error::SendClosed)
    ));
}

/// The client writes 4 send buffers' worth, well under the server's window,
/// while the server's only application thread sleeps outside the engine:
/// the write completes only if the server's host acknowledges meanwhile.
/// Returns how much the write took before its deadline and whether the
/// bytes then arrived whole.
fn write_while_the_reader_sleeps(driver_thread: bool) -> (usize, bool) {
    const SEND_BUFFER: usize = 64 * 1024;
    const LEN: usize = 4 * SEND_BUFFER;
    let (server, listener) = server(|c| {
        c.driver_thread = driver_thread;
        c.min_buffer = 1 << 20;
    });
    let client = client(&server, |c| c.max_send_buffer = SEND_BUFFER);
    let barrier = Arc::new(Barrier::new(2));
    let served = {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            let stream = listener.accept(Mode::Blocking).expect("accept");
            barrier.wait();
            thread::sleep(Duration::from_secs(1));
            read_to_end(&stream, Mode::Blocking).expect("read")
        })
    };
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    barrier.wait();
    let deadline = Instant::now() + Duration::from_millis(800);
    let written = match stream.write(&pattern(LEN, 4), Mode::Until(deadline)) {
        Ok(n) => n,
        Err(Error::WouldBlock) => 0,
        Err(error) => panic!("write: {error}"),
    };
    if written < LEN {
        let rest = stream.write(&pattern(LEN, 4)[written..], Mode::Blocking);
        assert_eq!(rest.expect("rest"), LEN - written);
    }
    stream.shutdown_write().unwrap();
    let got = served.join().unwrap();
    (written, got == pattern(LEN, 4))
}

#[test]
fn the_driver_thread_acknowledges_while_the_application_is_away() {
    let (written, whole) = write_while_the_reader_sleeps(true);
    assert_eq!(
        written,
        4 * 64 * 1024,
        "the sender's write completed meanwhile"
    );
    assert!(whole);
}

#[test]
fn without_the_driver_thread_nobody_acknowledges_while_the_application_is_away() {
    // The control for the test above: the same exchange stalls.
    let (written, whole) = write_while_the_reader_sleeps(false);
    assert!(
        written < 2 * 64 * 1024,
        "{written} bytes taken with nobody driving the receiver"
    );
    assert!(whole);
}

#[test]
fn eight_threads_share_a_runtime_for_many_short_connections() {
    const THREADS: usize = 8;
    const CONNECTIONS: usize = 200;
    const WORKERS: usize = 4;
    let (server, listener) = server(|_| {});
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            thread::spawn(move || {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let until = Mode::Until(Instant::now() + Duration::from_millis(100));
                    let stream = match listener.accept(until) {
                        Ok(stream) => stream,
                        Err(Error::WouldBlock) => continue,
                        Err(error) => panic!("accept: {error}"),
                    };
                    let got = read_to_end(&stream, Mode::Blocking).expect("server read");
                    stream.write(&got, Mode::Blocking).expect("echo");
                    stream.close().expect("server close");
                    served += 1;
                }
                served
            })
        })
        .collect();
    let client = client(&server, |_| {});
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in 0..CONNECTIONS {
                    let message = pattern(100 + i, (t * CONNECTIONS + i) as u32);
                    let stream = client.connect(service(), Mode::Blocking).expect("connect");
                    assert_eq!(
                        stream.write(&message, Mode::Blocking).unwrap(),
                        message.len()
                    );
                    stream.shutdown_write().unwrap();
                    let got = read_to_end(&stream, Mode::Blocking).expect("client read");
                    assert!(got == message, "thread {t} connection {i}: echo differs");
                }
            })
        })
        .collect();
    for handle in clients {
        handle.join().expect("client thread");
    }
    stop.store(true, Ordering::Relaxed);
    let served: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(served, THREADS * CONNECTIONS);
    let limit = Instant::now() + Duration::from_secs(10);
    while server.flow_count() > 0 && Instant::now() < limit {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.flow_count(),
        0,
        "the server holds flows after every close"
    );
}

#[test]
fn non_blocking_calls_would_block_then_complete_after_driving() {
    // Nobody drives the server but this test's calls.
    let (server, listener) = server(|c| c.driver_thread = false);
    let client = client(&server, |_| {});
    assert!(matches!(
        listener.accept(Mode::NonBlocking),
        Err(Error::WouldBlock)
    ));
    let stream = client
        .connect(service(), Mode::NonBlocking)
        .expect("connect");
    assert!(matches!(
        stream.finish_connect(Mode::NonBlocking),
        Err(Error::WouldBlock)
    ));
    assert!(
        !ready(stream.writable_fd().unwrap(), 50),
        "not writable while connecting"
    );
    // The server answers the SYN (on this call's drive); its flow is not
    // established until the client's ACK.
    assert!(matches!(
        listener.accept(Mode::NonBlocking),
        Err(Error::WouldBlock)
    ));
    assert!(
        ready(stream.writable_fd().unwrap(), 2000),
        "writable once connected"
    );
    stream.finish_connect(Mode::NonBlocking).expect("connected");
    let mut buf = [0u8; 8];
    assert!(matches!(
        stream.read(&mut buf, Mode::NonBlocking),
        Err(Error::WouldBlock)
    ));

    let limit = Instant::now() + Duration::from_secs(2);
    while !ready(listener.readable_fd().unwrap(), 10) {
        assert!(
            Instant::now() < limit,
            "the ACK never made the flow acceptable"
        );
        server.drive().unwrap();
    }
    let accepted = listener.accept(Mode::NonBlocking).expect("accept");
    assert!(matches!(
        accepted.read(&mut buf, Mode::NonBlocking),
        Err(Error::WouldBlock)
    ));
    assert_eq!(stream.write(b"ping", Mode::NonBlocking).unwrap(), 4);
    while !ready(accepted.readable_fd().unwrap(), 10) {
        assert!(
            Instant::now() < limit,
            "the data never made the flow readable"
        );
        server.drive().unwrap();
    }
    assert_eq!(accepted.read(&mut buf, Mode::NonBlocking).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
}

#[test]
fn a_connect_to_a_service_nobody_serves_is_unreachable() {
    let (server, listener) = server(|_| {});
    drop(listener);
    let client = client(&server, |_| {});
    let refused = client.connect(service(), Mode::Blocking).map(|_| ());
    let errno = refused.as_ref().map_err(Error::errno);
    // The server's host answers RST|NACK: no route to the service there.
    assert_eq!(errno, Err(libc::ENETUNREACH), "{refused:?}");
}

#[test]
fn dropping_the_runtime_and_its_objects_releases_the_socket() {
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    let Locator::Udp(addr) = client.local() else {
        panic!("a UDP locator");
    };
    stream.close().expect("close");
    drop(accepted);
    drop(client);
    // The last handle gone, the driver thread ends and the socket (and
    // every duplicate of it) is closed: the port is free again. (If the
    // driver thread was in a turn, holding the runtime, the runtime goes
    // when the turn ends.)
    let limit = Instant::now() + Duration::from_secs(1);
    while let Err(error) = std::net::UdpSocket::bind(addr) {
        assert!(
            Instant::now() < limit,
            "the client's port is still bound: {error}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_driver_thread_sleeps_while_a_thread_waits_inside() {
    const ROUND_TRIPS: usize = 200;
    let (server, listener) = server(|_| {});
    let listener = Arc::new(listener);
    let client = client(&server, |_| {});
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    // A thread parked in accept for the whole exchange: inside the engine.
    let parked = {
        let listener = Arc::clone(&listener);
        thread::spawn(move || {
            let until = Mode::Until(Instant::now() + Duration::from_secs(3));
            matches!(listener.accept(until), Err(Error::WouldBlock))
        })
    };
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut echoed = 0;
        loop {
            let n = accepted
                .read(&mut buf, Mode::Blocking)
                .expect("server read");
            if n == 0 {
                return echoed;
            }
            accepted.write(&buf[..n], Mode::Blocking).expect("echo");
            echoed += n;
        }
    });
    let mut buf = [0u8; 8];
    let mut round_trip = |i: usize| {
        let message = (i as u64).to_be_bytes();
        stream.write(&message, Mode::Blocking).expect("write");
        let mut got = 0;
        while got < 8 {
            got += stream.read(&mut buf[got..], Mode::Blocking).expect("read");
        }
        assert_eq!(buf, message);
    };
    // Warm-up: the driver thread learns that a thread is inside (at its
    // first wake-up after the parked thread came in: the first packet, if
    // it was watching the socket, then the end of a grace period), and
    // parks.
    for i in 0..5 {
        round_trip(i);
    }
    thread::sleep(Duration::from_millis(50));
    let before = server.driver_stats();
    for i in 0..ROUND_TRIPS {
        round_trip(i);
    }
    let after = server.driver_stats();
    stream.shutdown_write().unwrap();
    assert_eq!(echo.join().unwrap(), 8 * (ROUND_TRIPS + 5));
    assert!(parked.join().unwrap(), "nothing to accept");
    assert_eq!(
        after.wakeups - before.wakeups,
        0,
        "the server's driver thread woke during {ROUND_TRIPS} round trips ({before:?} -> {after:?})"
    );
}

#[test]
fn a_failed_connect_shows_on_both_descriptors_and_leaves_other_flows_alone() {
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let nobody: ServiceId = "c0ec7002".parse().unwrap();
    let failed = client.connect(nobody, Mode::NonBlocking).expect("connect");
    assert!(
        ready(failed.readable_fd().unwrap(), 2000),
        "the error is readable"
    );
    // (Raised one after the other, in one turn.)
    assert!(ready(failed.writable_fd().unwrap(), 2000), "and writable");
    let error = failed.finish_connect(Mode::NonBlocking).unwrap_err();
    assert_eq!(error.errno(), libc::ENETUNREACH, "{error:?}");
    assert!(failed.ends().hung_up && failed.ends().error);
    assert_eq!(
        failed
            .read(&mut [0; 4], Mode::Blocking)
            .unwrap_err()
            .errno(),
        libc::ENETUNREACH
    );
    // Reported once, as TCP's: then end of stream, and `EPIPE`.
    assert!(!failed.ends().error && failed.ends().hung_up);
    assert_eq!(failed.read(&mut [0; 4], Mode::Blocking).unwrap(), 0);
    let error = failed.write(b"x", Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::EPIPE, "{error:?}");
    // The host forgot the failed flow's ID and may reuse it: closing the
    // failed stream afterwards must not touch the new flows.
    let streams: Vec<_> = (0..8)
        .map(|_| client.connect(service(), Mode::Blocking).expect("connect"))
        .collect();
    let accepted: Vec<_> = (0..8)
        .map(|_| listener.accept(Mode::Blocking).expect("accept"))
        .collect();
    drop(failed);
    for (i, stream) in streams.iter().enumerate() {
        assert_eq!(stream.write(&[i as u8], Mode::Blocking).unwrap(), 1);
    }
    let mut seen: Vec<u8> = accepted
        .iter()
        .map(|stream| {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte, Mode::Blocking).unwrap(), 1);
            byte[0]
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<u8>>());
}

/// A flow the server resets (it closes with a request unread) after its
/// reply, and the peer's end of stream before the reset if `fin_first`:
/// the client's stream once the reset is in.
fn reset_after_reply(fin_first: bool) -> (Runtime, Runtime, Stream) {
    let (server, listener) = server(|_| {});
    let (client, stream, accepted) = connected(&server, &listener, |_| {});
    assert_eq!(accepted.write(b"reply", Mode::Blocking).unwrap(), 5);
    if fin_first {
        accepted.shutdown_write().expect("FIN");
        let closed = stream.ends_fd(EndsSignal::ReadClosed).expect("fd");
        assert!(ready(closed, 2000), "the FIN shows");
        assert_eq!(
            stream.ends(),
            Ends {
                read_closed: true,
                ..Ends::default()
            }
        );
    }
    assert_eq!(stream.write(b"unread", Mode::Blocking).unwrap(), 6);
    assert!(ready(accepted.readable_fd().unwrap(), 2000));
    // Closed with unread bytes: the flow is reset, as a kernel socket's.
    accepted.close().expect("close");
    let hung_up = stream.ends_fd(EndsSignal::HungUp).expect("fd");
    assert!(ready(hung_up, 2000), "the reset hangs the stream up");
    (server, client, stream)
}

/// After a reset, as TCP's (`tcp_poll`, `tcp_recvmsg`): hung up with an
/// error; reads give the bytes that came before it (a peek leaves them),
/// then `ECONNRESET` once, then end of stream; a write then `EPIPE`.
#[test]
fn a_reset_reads_its_bytes_then_econnreset_once_then_end_of_stream() {
    let (_server, _client, stream) = reset_after_reply(false);
    let all = Ends {
        read_closed: true,
        hung_up: true,
        error: true,
    };
    assert_eq!(stream.ends(), all);
    assert!(ready(stream.readable_fd().unwrap(), 0) && ready(stream.writable_fd().unwrap(), 0));
    let mut buf = [0; 16];
    for _ in 0..2 {
        assert_eq!(stream.peek(&mut buf, Mode::NonBlocking).unwrap(), 5);
        assert_eq!(&buf[..5], b"reply", "a peek leaves the bytes");
    }
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 5);
    // Within a call that read bytes already, the error is not taken.
    let error = stream.read_more(&mut buf, Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::ECONNRESET, "{error:?}");
    let error = stream.write_more(b"more", Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::ECONNRESET, "{error:?}");
    assert_eq!(stream.ends(), all, "left for the next call");
    let error = stream.read(&mut buf, Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::ECONNRESET, "{error:?}");
    assert_eq!(
        stream.ends(),
        Ends {
            error: false,
            ..all
        },
        "told once"
    );
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 0);
    let error = stream.write(b"more", Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::EPIPE, "{error:?}");
    assert!(stream.take_error().is_none());
}

/// `SO_ERROR` takes a reset's error as a read would (`ECONNRESET`; the
/// reads then give the bytes and end of stream), `EPIPE` for a reset after
/// the peer's end of stream (TCP's in `CLOSE_WAIT`), whose reads end at
/// the FIN; a batch that met the error after reading leaves it.
#[test]
fn a_reset_s_error_is_taken_once_by_whichever_call_comes_first() {
    let (_server, _client, stream) = reset_after_reply(false);
    assert_eq!(
        stream.take_error().map(|e| e.errno()),
        Some(libc::ECONNRESET)
    );
    assert!(stream.take_error().is_none(), "once");
    let mut buf = [0; 16];
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 5);
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 0, "taken");
    stream.report_again();
    let error = stream.read(&mut buf, Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::ECONNRESET, "left for the next call");

    let (_server, _client, stream) = reset_after_reply(true);
    assert!(stream.ends().hung_up && stream.ends().error);
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 5);
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 0, "the FIN");
    assert_eq!(
        stream.read(&mut buf, Mode::Blocking).unwrap(),
        0,
        "for good"
    );
    assert_eq!(stream.take_error().map(|e| e.errno()), Some(libc::EPIPE));
    let error = stream.write(b"more", Mode::Blocking).unwrap_err();
    assert_eq!(error.errno(), libc::EPIPE, "{error:?}");
}

/// The hang-up eventfd is readable only once both directions are over
/// (unread bytes and the peer's end of stream raise the readable one, not
/// it), as `poll` with no events asked reports `POLLHUP`.
#[test]
fn a_stream_hangs_up_once_both_directions_are_over() {
    let (server, listener) = server(|_| {});
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    let hung_up = stream.ends_fd(EndsSignal::HungUp).expect("fd");
    assert_eq!(accepted.write(b"bytes", Mode::Blocking).unwrap(), 5);
    accepted.shutdown_write().expect("FIN");
    assert!(ready(stream.ends_fd(EndsSignal::ReadClosed).unwrap(), 2000));
    // Raised in the same section, but each eventfd is written in turn
    // after it (by whichever thread lets the core go): a moment apart.
    assert!(ready(stream.readable_fd().unwrap(), 1000));
    assert!(!ready(hung_up, 100), "half closed: no hang-up");
    stream.shutdown_write().expect("our FIN");
    assert!(ready(hung_up, 2000), "both directions over");
    let ends = stream.ends();
    assert!(ends.hung_up && ends.read_closed && !ends.error, "{ends:?}");
    assert_eq!(read_to_end(&stream, Mode::Blocking).unwrap(), b"bytes");
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// A blocking read ends with `EINTR` when a signal's handler runs while
/// it waits inside an [`Interruptible`], its handler run before it
/// returns; without one the read rides the signals out, as a restarted
/// system call, and returns the bytes that come.
#[test]
fn a_signal_ends_a_blocking_read_only_inside_an_interruptible() {
    let handler = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only touches an atomic.
    unsafe { sigaction(Signal::SIGUSR1, &handler) }.expect("sigaction");
    let (server, listener) = server(|_| {});
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    let stream = Arc::new(stream);
    let read_in = |interruptible: bool| {
        let stream = Arc::clone(&stream);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let _guard = interruptible.then(|| Interruptible::new().expect("block"));
            // SAFETY: no arguments.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let limit = Mode::Until(Instant::now() + Duration::from_secs(20));
            let read = stream.read(&mut [0; 8], limit);
            (read, SIGNALS.load(Ordering::SeqCst))
        });
        (rx.recv().unwrap(), reader)
    };
    // Signals every 20 ms, 2 s at most, until the reader is done (a signal
    // that comes before its read waits is handled at once); how many.
    let signal_until_done = |thread, reader: &thread::JoinHandle<_>, limit: usize| {
        let mut sent = 0;
        while !reader.is_finished() && sent < limit {
            // SAFETY: no pointers; the reader thread, alive until joined.
            assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
            sent += 1;
            thread::sleep(Duration::from_millis(20));
        }
        sent
    };
    let before = SIGNALS.load(Ordering::SeqCst);
    let (thread, reader) = read_in(true);
    let sent = signal_until_done(thread, &reader, 100);
    let (result, first) = reader.join().unwrap();
    assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
    assert!(
        first > before && first <= before + sent,
        "a handler ran before the read returned ({first} after {before}, {sent} sent)"
    );

    let (thread, reader) = read_in(false);
    assert_eq!(
        signal_until_done(thread, &reader, 10),
        10,
        "the read goes on"
    );
    assert_eq!(accepted.write(b"late", Mode::Blocking).unwrap(), 4);
    let (result, seen) = reader.join().unwrap();
    assert_eq!(result.unwrap(), 4);
    assert!(seen > first, "the handlers ran meanwhile");
}

/// Server threads in accept and serving, one client making `CONNECTIONS`
/// connections one after the other: the server's application wake-ups
/// (every wake-up of a thread waiting in the engine) and poller hand-overs
/// per connection.
fn server_wakeups_per_connection(threads: usize) -> (f64, f64) {
    const CONNECTIONS: usize = 100;
    // No spin: what is counted is who wakes, not how soon.
    let (server, listener) = server(|c| c.spin = Duration::ZERO);
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let until = Mode::Until(Instant::now() + Duration::from_millis(300));
                    let Ok(stream) = listener.accept(until) else {
                        continue;
                    };
                    let got = read_to_end(&stream, Mode::Blocking).expect("server read");
                    stream.write(&got, Mode::Blocking).expect("echo");
                }
            })
        })
        .collect();
    let client = client(&server, |_| {});
    // Every server thread waiting in accept before the count starts.
    thread::sleep(Duration::from_millis(50));
    let before = server.wait_stats();
    for i in 0..CONNECTIONS {
        let message = pattern(64, i as u32);
        let stream = client.connect(service(), Mode::Blocking).expect("connect");
        assert_eq!(stream.write(&message, Mode::Blocking).unwrap(), 64);
        stream.shutdown_write().unwrap();
        let got = read_to_end(&stream, Mode::Blocking).expect("client read");
        assert!(got == message, "connection {i}: echo differs");
    }
    let after = server.wait_stats();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("server thread");
    }
    let per = |n: u64| n as f64 / CONNECTIONS as f64;
    (
        per(after.wakeups - before.wakeups),
        per(after.handoffs - before.handoffs),
    )
}

#[test]
fn one_poller_among_eight_accepting_threads_wakes_for_each_datagram() {
    // A datagram wakes the poller (and the thread whose object it makes
    // ready), not every thread waiting: eight threads cost about what one
    // does, where eight threads all watching the socket cost eight times.
    let (one, _) = server_wakeups_per_connection(1);
    let (eight, handoffs) = server_wakeups_per_connection(8);
    eprintln!("server wake-ups per connection: 1 thread {one:.2}, 8 threads {eight:.2} ({handoffs:.2} hand-overs)");
    assert!(one > 0.0, "the waits were counted");
    assert!(
        eight < 2.0 * one + 2.0,
        "8 threads woke {eight:.2} times per connection, 1 thread {one:.2}"
    );
    assert!(
        handoffs > 0.5,
        "the poller role moved between the threads ({handoffs:.2} per connection)"
    );
}

#[test]
fn a_request_response_loop_costs_the_driver_thread_little() {
    // The server's one thread leaves the engine between its read and its
    // write at every round trip; the driver thread, given a grace period
    // instead of a signal from the last thread out, wakes about twice per
    // period at most (bounded here with slack), not at every round trip
    // (which, at a fraction of a period each, is several times more).
    const ROUND_TRIPS: usize = 500;
    let (server, client, stream, echo) = echo_pair(|_| {});
    let before = server.driver_stats();
    let elapsed = round_trips(&stream, ROUND_TRIPS);
    let after = server.driver_stats();
    stream.shutdown_write().unwrap();
    echo.join().unwrap();
    drop(client);
    let wakeups = after.wakeups - before.wakeups;
    let periods = (elapsed.as_micros() / 2_000) as u64 + 1;
    eprintln!("driver wake-ups: {wakeups} in {ROUND_TRIPS} round trips, {elapsed:?}");
    assert!(
        wakeups <= 3 * periods + 8,
        "the server's driver thread woke {wakeups} times in {ROUND_TRIPS} round trips ({elapsed:?})"
    );
}

/// A UDP socket that takes the SYNs of an engine routed to it and answers
/// none: the engine retransmits each on its timer (the host's control RTO,
/// 500 ms), and only on its timer.
fn black_hole() -> (std::net::UdpSocket, Config) {
    let hole = std::net::UdpSocket::bind(loopback()).expect("bind the black hole");
    let std::net::SocketAddr::V4(addr) = hole.local_addr().expect("its address") else {
        panic!("an IPv4 address");
    };
    (hole, Config::new(loopback(), Locator::Udp(addr)))
}

/// How long after the first datagram `hole` has had `count`, if it has by
/// `limit` after the first (which must come within a second).
fn datagrams_within(hole: &std::net::UdpSocket, count: usize, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 2048];
    hole.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    hole.recv(&mut buf).expect("the first SYN");
    let first = Instant::now();
    for _ in 1..count {
        let left = limit.checked_sub(first.elapsed())?;
        hole.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        hole.recv(&mut buf).ok()?;
    }
    Some(first.elapsed())
}

/// A service nobody serves (its SYNs go to a black hole).
fn unserved() -> ServiceId {
    "c0ec7003".parse().unwrap()
}

/// A non-blocking connect on `runtime` to [`unserved`], whose SYN goes to
/// `hole`: the stream, how long `hole` took to get the SYN twice more
/// (within 4 s), and the driver thread's counts before and after.
fn connect_into(
    hole: &std::net::UdpSocket,
    runtime: &Runtime,
) -> (Stream, Option<Duration>, DriverStats, DriverStats) {
    let before = runtime.driver_stats();
    let stream = runtime
        .connect(unserved(), Mode::NonBlocking)
        .expect("connect");
    let took = datagrams_within(hole, 3, Duration::from_secs(4));
    (stream, took, before, runtime.driver_stats())
}

/// A locked section's datagrams go out after the lock is let go. An error
/// the kernel reports on such a send (the ICMP "port unreachable" of an
/// earlier SYN, which it reports on the socket's next call) still reaches
/// the host at once: the first connect is refused by the time the second
/// connect's call returns, with nobody reading the socket in between.
#[test]
fn a_report_read_by_a_send_after_the_lock_reaches_the_host_at_once() {
    let gone = std::net::UdpSocket::bind(loopback()).expect("bind");
    let std::net::SocketAddr::V4(gone_addr) = gone.local_addr().expect("its address") else {
        panic!("an IPv4 address");
    };
    drop(gone);
    let mut config = Config::new(loopback(), Locator::Udp(gone_addr));
    config.driver_thread = false;
    let runtime = Runtime::bind(config).expect("bind");
    let first = (runtime.connect(unserved(), Mode::NonBlocking)).expect("connect");
    // On loopback the ICMP error is back at once.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        runtime.host_stats().unreachable_hops,
        0,
        "nobody has read the socket yet"
    );
    let second = (runtime.connect(unserved(), Mode::NonBlocking)).expect("connect");
    assert_eq!(
        runtime.host_stats().unreachable_hops,
        1,
        "the second SYN's send read the report of the first"
    );
    let refused = first.finish_connect(Mode::NonBlocking);
    assert_eq!(
        refused.as_ref().map_err(Error::errno),
        Err(libc::ECONNREFUSED),
        "{refused:?}"
    );
    drop(second);
}

#[test]
fn a_deadline_another_thread_sets_wakes_the_poller_sleeping_without_one() {
    // The poller (a thread blocked in accept, the host without a timer
    // running: it sleeps with no timeout) must wake for a deadline a
    // non-blocking call on another thread sets: the SYN's retransmission.
    // Nobody else can run it: the driver thread is parked while a thread
    // stays inside, and the connecting thread leaves at once.
    let (hole, config) = black_hole();
    let runtime = Runtime::bind(config).expect("bind");
    let listener = Arc::new(runtime.listen(ServicePrefix::exact(service()), 16).unwrap());
    let accepting = {
        let listener = Arc::clone(&listener);
        thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(10);
            listener.accept(Mode::Until(until)).map(drop)
        })
    };
    // The accepting thread sleeps as the poller, the driver thread parks.
    thread::sleep(Duration::from_millis(100));
    let (stream, took, before, after) = connect_into(&hole, &runtime);
    assert!(
        took.is_some(),
        "the SYN was not retransmitted twice within 4 s: the poller slept past the host's deadline"
    );
    assert_eq!(
        after.turns, before.turns,
        "the poller drove, not the driver thread"
    );
    // A peer's connection ends the accept.
    let peer = client(&runtime, |_| {});
    let _flow = peer
        .connect(service(), Mode::Blocking)
        .expect("peer connect");
    accepting.join().unwrap().expect("accept");
    drop(stream);
}

#[test]
fn a_deadline_a_passing_call_sets_wakes_the_driver_thread_sleeping_without_one() {
    // Nobody inside: the driver thread watches, with no timeout (the host
    // has no timer running) until a non-blocking call sets a deadline.
    let (hole, config) = black_hole();
    let runtime = Runtime::bind(config).expect("bind");
    thread::sleep(Duration::from_millis(50));
    let (stream, took, before, after) = connect_into(&hole, &runtime);
    assert!(
        took.is_some(),
        "the SYN was not retransmitted twice within 4 s: the driver thread slept past the host's deadline"
    );
    assert!(after.turns > before.turns, "the driver thread drove");
    drop(stream);
}

#[test]
fn once_lent_the_timerfd_fires_at_the_hosts_deadline() {
    // A caller that waits on `wait_fds` itself (a `poll` interposer) finds
    // every deadline armed there, the one set before it asked included.
    let (hole, mut config) = black_hole();
    config.driver_thread = false;
    let runtime = Runtime::bind(config).expect("bind");
    let stream = runtime
        .connect(unserved(), Mode::NonBlocking)
        .expect("connect");
    let [_, timer] = runtime.wait_fds();
    let mut syns = 1;
    let started = Instant::now();
    while syns < 3 && started.elapsed() < Duration::from_secs(4) {
        if ready(timer, 2000) {
            runtime.drive().unwrap();
        }
        let mut buf = [0u8; 2048];
        hole.set_nonblocking(true).unwrap();
        while hole.recv(&mut buf).is_ok() {
            syns += 1;
        }
    }
    assert!(syns >= 3, "{syns} SYNs in 4 s: the timerfd was not armed");
    drop(stream);
}

/// `shutdown(SHUT_RD)`: bytes already queued are still read, then end of
/// stream at once; a thread blocked in a read wakes with it, as Linux's.
#[test]
fn shutting_the_read_side_wakes_a_blocked_reader_with_end_of_stream() {
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    assert_eq!(stream.write(b"queued", Mode::Blocking).unwrap(), 6);
    assert!(ready(accepted.readable_fd().unwrap(), 2000));
    accepted.shutdown_read().expect("shutdown");
    let mut buf = [0; 16];
    let n = accepted
        .read(&mut buf, Mode::Blocking)
        .expect("queued bytes");
    assert_eq!(&buf[..n], b"queued", "what was queued comes first");
    assert_eq!(accepted.read(&mut buf, Mode::Blocking).unwrap(), 0);
    // A reader blocked on a flow with nothing to read.
    let stream2 = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted2 = listener.accept(Mode::Blocking).expect("accept");
    let shut = AtomicBool::new(false);
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let n = accepted2.read(&mut [0; 8], Mode::Blocking);
            (n, shut.load(Ordering::SeqCst))
        });
        thread::sleep(Duration::from_millis(100));
        shut.store(true, Ordering::SeqCst);
        accepted2.shutdown_read().expect("shutdown");
        let (n, after) = reader.join().expect("reader");
        assert_eq!(n.expect("end of stream"), 0);
        assert!(after, "the read returned before the shutdown");
    });
    assert!(
        ready(accepted2.readable_fd().unwrap(), 0),
        "readable: reads end at once"
    );
    // The other direction still works.
    assert_eq!(accepted2.write(b"still", Mode::Blocking).unwrap(), 5);
    let mut got = [0; 5];
    let mut have = 0;
    while have < got.len() {
        have += stream2.read(&mut got[have..], Mode::Blocking).unwrap();
    }
    assert_eq!(&got, b"still");
    drop(stream);
}

/// `shutdown` of a listening socket: a thread blocked in accept wakes with
/// `EINVAL`, later accepts fail at once, and the prefix is unbound (a
/// connect to it finds nobody serving it, as for any unserved service).
#[test]
fn stopping_a_listener_wakes_a_blocked_accept_and_unbinds_it() {
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let stopped = AtomicBool::new(false);
    thread::scope(|s| {
        let accepter = s.spawn(|| {
            let accepted = listener.accept(Mode::Blocking).map(drop);
            (accepted, stopped.load(Ordering::SeqCst))
        });
        thread::sleep(Duration::from_millis(100));
        stopped.store(true, Ordering::SeqCst);
        listener.stop();
        let (accepted, after) = accepter.join().expect("accepter");
        let error = accepted.expect_err("stopped");
        assert_eq!(error.errno(), libc::EINVAL, "{error:?}");
        assert!(after, "the accept returned before the stop");
    });
    assert!(
        ready(listener.readable_fd().unwrap(), 0),
        "readable: accepts fail at once"
    );
    let error = listener.accept(Mode::Blocking).map(drop).unwrap_err();
    assert_eq!(error.errno(), libc::EINVAL, "{error:?}");
    let error = client
        .connect(service(), Mode::Blocking)
        .map(drop)
        .unwrap_err();
    assert_eq!(error.errno(), libc::ENETUNREACH, "{error:?}");
}

/// `Runtime::unfinished_streams` counts a flow until both ends are done
/// with it: while it is open, and on the closing side until the peer's
/// end of stream has come too; 0 once both sides closed. And
/// `Runtime::descriptors` names open descriptors of the engine's (the
/// UDP socket it hands sald among them).
#[test]
fn unfinished_streams_and_the_engine_s_descriptors() {
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    assert_eq!(client.unfinished_streams(), 0, "nothing open yet");
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    assert_eq!(client.unfinished_streams(), 1, "an open flow");
    stream.write(b"last words", Mode::Blocking).expect("write");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = read_to_end(&accepted, Mode::Until(deadline)).expect("read");
    assert_eq!(got, b"last words");
    // The peer's end is still open: the closed side is not finished.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(client.unfinished_streams(), 1, "the peer's end is open");
    drop(accepted);
    while client.unfinished_streams() > 0 || server.unfinished_streams() > 0 {
        assert!(Instant::now() < deadline, "never finished");
        thread::sleep(Duration::from_millis(10));
    }
    for runtime in [&server, &client] {
        let owned = runtime.descriptors();
        assert!(owned.len() >= 4, "{owned:?}");
        for &fd in owned {
            // SAFETY: no pointers; whether the descriptor is open.
            assert!(
                unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0,
                "{fd} not open"
            );
        }
        let udp = std::os::fd::AsRawFd::as_raw_fd(&runtime.udp_fd());
        assert!(owned.contains(&udp), "the UDP socket's copy is not listed");
    }
}

#[test]
fn the_first_write_after_a_connect_reaches_the_server_with_the_connection() {
    // The handshake's ACK waits for the connect's caller to write, and the
    // request crosses with it: the server's accept finds it there, ready
    // to read without a wait. (Without the hold, the ACK crosses alone
    // and the request some tens of microseconds behind it.) A client
    // thread kept off the CPU past the delayed-ACK time (1 ms) loses the
    // ride, hence the margin.
    const CONNECTIONS: usize = 20;
    let (server, listener) = server(|_| {});
    let client = client(&server, |_| {});
    let served = thread::spawn(move || {
        let mut at_accept = 0;
        for i in 0..CONNECTIONS {
            let stream = listener.accept(Mode::Blocking).expect("accept");
            let mut buf = [0u8; 64];
            match stream.read(&mut buf, Mode::NonBlocking) {
                Ok(64) => at_accept += 1,
                Ok(n) => panic!("connection {i}: {n} bytes"),
                Err(Error::WouldBlock) => {}
                Err(error) => panic!("connection {i}: {error}"),
            }
        }
        (listener, at_accept)
    });
    let mut streams = Vec::new();
    for i in 0..CONNECTIONS {
        let stream = client.connect(service(), Mode::Blocking).expect("connect");
        let request = pattern(64, i as u32);
        assert_eq!(stream.write(&request, Mode::Blocking).unwrap(), 64);
        streams.push(stream);
    }
    let (_listener, at_accept) = served.join().expect("server thread");
    assert!(
        at_accept >= CONNECTIONS / 2,
        "the request was there at accept {at_accept} times in {CONNECTIONS}"
    );
}

/// A thread that echoes what it reads on `accepted` until end of stream.
fn echo_thread(accepted: Stream) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match accepted
                .read(&mut buf, Mode::Blocking)
                .expect("server read")
            {
                0 => return,
                n => {
                    accepted.write(&buf[..n], Mode::Blocking).expect("echo");
                }
            }
        }
    })
}

/// A client engine whose SYNs go to `server` (tuned by `tune`), with one
/// stream connected to `listener`: the client, its stream, and the
/// server's end.
fn connected(
    server: &Runtime,
    listener: &Listener,
    tune: impl FnOnce(&mut Config),
) -> (Runtime, Stream, Stream) {
    let client = client(server, tune);
    let stream = client.connect(service(), Mode::Blocking).expect("connect");
    let accepted = listener.accept(Mode::Blocking).expect("accept");
    (client, stream, accepted)
}

/// A client connected to a server whose thread echoes what it reads until
/// end of stream, both engines tuned by `tune`: the server, the client,
/// the client's stream and the echoing thread.
fn echo_pair(tune: impl Fn(&mut Config)) -> (Runtime, Runtime, Stream, thread::JoinHandle<()>) {
    let (server, listener) = server(&tune);
    let (client, stream, accepted) = connected(&server, &listener, &tune);
    let echo = echo_thread(accepted);
    (server, client, stream, echo)
}

/// `count` 8-byte round trips on `stream`, each answer checked: how long
/// they took.
fn round_trips(stream: &Stream, count: usize) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 8];
    for i in 0..count {
        let message = (i as u64).to_be_bytes();
        stream.write(&message, Mode::Blocking).expect("write");
        let mut got = 0;
        while got < 8 {
            got += stream.read(&mut buf[got..], Mode::Blocking).expect("read");
        }
        assert_eq!(buf, message, "round trip {i}");
    }
    start.elapsed()
}

/// 300 round trips through [`echo_pair`], both engines spinning at most
/// `spin`: the client's and the server's wait statistics over them.
fn round_trip_waits(spin: Duration) -> (WaitStats, WaitStats) {
    let (server, client, stream, echo) = echo_pair(|c| c.spin = spin);
    let (client_before, server_before) = (client.wait_stats(), server.wait_stats());
    round_trips(&stream, 300);
    let (client_after, server_after) = (client.wait_stats(), server.wait_stats());
    stream.shutdown_write().unwrap();
    echo.join().unwrap();
    let since = |after: WaitStats, before: WaitStats| WaitStats {
        wakeups: after.wakeups - before.wakeups,
        handoffs: after.handoffs - before.handoffs,
        spins: after.spins - before.spins,
        caught: after.caught - before.caught,
    };
    (
        since(client_after, client_before),
        since(server_after, server_before),
    )
}

/// Whether the engine spins here (not on one CPU).
fn spins_here() -> bool {
    let two = thread::available_parallelism().map_or(1, usize::from) >= 2;
    if !two {
        eprintln!("one CPU: the engine never spins");
    }
    two
}

#[test]
fn a_quick_answer_is_caught_spinning_and_without_spin_every_wait_sleeps() {
    if !spins_here() {
        return;
    }
    let (client, server) = round_trip_waits(Duration::from_micros(200));
    eprintln!("spinning: client {client:?}, server {server:?}");
    assert!(
        client.caught + server.caught > 0,
        "no wait was caught spinning: client {client:?}, server {server:?}"
    );
    assert!(client.caught <= client.spins && server.caught <= server.spins);
    let (client, server) = round_trip_waits(Duration::ZERO);
    assert_eq!(
        (client.spins, server.spins),
        (0, 0),
        "spinning off: client {client:?}, server {server:?}"
    );
}

#[test]
fn a_thread_watching_its_stream_spins_on_its_level_and_misses_nothing() {
    if !spins_here() {
        return;
    }
    // A thread parked in accept holds the server's poller role: the echo
    // thread waits as a follower watching its stream's eventfd, whose
    // level it looks at while it spins. Every answer arrives, in order.
    const ROUND_TRIPS: usize = 300;
    let (server, listener) = server(|_| {});
    let parked = {
        let prefix = ServicePrefix::exact("c0ec7002".parse().unwrap());
        let idle = server.listen(prefix, 8).expect("listen");
        thread::spawn(move || {
            let until = Mode::Until(Instant::now() + Duration::from_secs(5));
            matches!(idle.accept(until), Err(Error::WouldBlock))
        })
    };
    thread::sleep(Duration::from_millis(50));
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    let echo = echo_thread(accepted);
    let before = server.wait_stats();
    round_trips(&stream, ROUND_TRIPS);
    let after = server.wait_stats();
    stream.shutdown_write().unwrap();
    echo.join().unwrap();
    let caught = after.caught - before.caught;
    eprintln!("server: {caught} waits caught spinning in {ROUND_TRIPS} round trips");
    assert!(caught > 0, "no wait caught spinning");
    assert!(
        parked.join().unwrap(),
        "the parked accept ended by its deadline"
    );
}

#[test]
fn a_reader_whose_bytes_come_slowly_stops_spinning() {
    if !spins_here() {
        return;
    }
    // 8 bytes every 2 ms, nothing back: the reader's spins miss, and once
    // its engine's score has run out (48 misses at most) only one wait in
    // 16 spins (about 48 + waits / 16 in all; a third of the waits leaves
    // room for the catches a loaded machine's timing makes, and is still
    // far below every wait, which is what spinning without a score does).
    const MESSAGES: u64 = 300;
    let (server, listener) = server(|c| c.spin = Duration::from_micros(50));
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    let before = server.wait_stats();
    let reader = thread::spawn(move || read_to_end(&accepted, Mode::Blocking).expect("read"));
    for i in 0..MESSAGES {
        thread::sleep(Duration::from_millis(2));
        stream
            .write(&i.to_be_bytes(), Mode::Blocking)
            .expect("write");
    }
    stream.shutdown_write().unwrap();
    let got = reader.join().unwrap();
    let sent: Vec<u8> = (0..MESSAGES).flat_map(u64::to_be_bytes).collect();
    assert!(got == sent, "the bytes differ");
    let after = server.wait_stats();
    let (spins, waits) = (after.spins - before.spins, after.wakeups - before.wakeups);
    eprintln!("the reader's engine: {spins} spins in {waits} waits");
    assert!(waits >= MESSAGES, "{waits} waits");
    assert!(
        spins <= waits / 3,
        "the reader spun {spins} times in {waits} waits"
    );
}

/// An exported stream (the hand-over to sald before a `fork`) leaves the
/// engine without a word to the peer: the export holds the bytes not read
/// yet, the stream reads as reset from then on, and dropping it sends
/// nothing (the peer's stream stays open). A client whose server has not
/// spoken yet is exported once a probe confirmed its handshake; one the
/// peer finished is exported too. A flow whose own end finished is not
/// exported, and stays usable.
#[test]
fn an_exported_stream_carries_its_unread_bytes_and_leaves_the_peer_alone() {
    use sal::proto::{HostError, NotExportable};
    let (server, listener) = server(|_| {});
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    assert_eq!(accepted.write(b"reply", Mode::Blocking).unwrap(), 5);
    assert!(ready(stream.readable_fd().unwrap(), 2000));
    match stream.export(4, Duration::from_secs(2)) {
        Err(Error::Host(HostError::NotExportable(NotExportable::Buffered {
            buffered: 5,
            most: 4,
        }))) => {}
        other => panic!("more than asked for exported: {other:?}"),
    }
    let export = stream.export(5, Duration::from_secs(2)).expect("export");
    assert_eq!(export.service, service());
    assert_eq!(
        export.socket.recv_buffer, b"reply",
        "the unread bytes go along"
    );
    let error = stream.read(&mut [0; 8], Mode::NonBlocking).unwrap_err();
    assert_eq!(error.errno(), libc::ECONNRESET, "{error:?}");
    assert!(stream.export(5, Duration::ZERO).is_err(), "exported once");
    drop(stream);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(accepted.ends(), Ends::default(), "the peer heard nothing");
    assert_eq!(accepted.write(b"more", Mode::NonBlocking).unwrap(), 4);

    // A client whose server never spoke: its handshake is confirmed by a
    // probe's answer, then it exports.
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    let export = stream.export(usize::MAX, Duration::from_secs(2));
    assert!(export.is_ok(), "hurried: {export:?}");
    assert_eq!(accepted.ends(), Ends::default(), "the peer heard nothing");

    // An export nobody took comes back: the stream goes on, both ways.
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    assert_eq!(accepted.write(b"before", Mode::Blocking).unwrap(), 6);
    assert!(ready(stream.readable_fd().unwrap(), 2000));
    let export = stream
        .export(usize::MAX, Duration::from_secs(2))
        .expect("export");
    stream.restore(export).expect("restored");
    let mut buf = [0; 16];
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 6);
    assert_eq!(&buf[..6], b"before");
    assert_eq!(stream.write(b"after", Mode::Blocking).unwrap(), 5);
    assert_eq!(accepted.read(&mut buf, Mode::Blocking).unwrap(), 5);
    assert_eq!(accepted.write(b"again", Mode::Blocking).unwrap(), 5);
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 5);

    // One the peer finished (CLOSE-WAIT) exports, saying so.
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    accepted.shutdown_write().expect("FIN");
    assert!(ready(
        stream.ends_fd(EndsSignal::ReadClosed).expect("fd"),
        2000
    ));
    let export = stream.export(usize::MAX, Duration::from_secs(2));
    assert!(export.is_ok_and(|export| export.socket.peer_finished));

    // One this end finished does not, and stays usable.
    let (_client, stream, accepted) = connected(&server, &listener, |_| {});
    stream.shutdown_write().expect("FIN");
    match stream.export(usize::MAX, Duration::from_millis(100)) {
        Err(Error::Host(HostError::NotExportable(NotExportable::Closing))) => {}
        other => panic!("a closing flow exported: {other:?}"),
    }
    assert_eq!(accepted.write(b"still", Mode::Blocking).unwrap(), 5);
    let mut buf = [0; 8];
    assert_eq!(stream.read(&mut buf, Mode::Blocking).unwrap(), 5);
}

/// A connect nobody answers (the SYNs go to a socket that never reads),
/// aborted by another thread (`connect(AF_UNSPEC)` in the shim) while a
/// thread waits for its outcome: the wait ends with a reset, and the
/// writable descriptor shows it. The host's abort of an unestablished
/// flow gives no event, and the waiter used to wait for good.
#[test]
fn aborting_a_connect_in_flight_ends_the_wait_for_it() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent socket");
    let Ok(std::net::SocketAddr::V4(silent_addr)) = silent.local_addr() else {
        panic!("not IPv4");
    };
    let runtime = Runtime::bind(Config::new(loopback(), Locator::Udp(silent_addr))).expect("bind");
    let stream = runtime
        .connect(service(), Mode::NonBlocking)
        .expect("connect");
    thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let start = Instant::now();
            // Bounded, so that the test fails rather than hangs.
            let until = Mode::Until(start + Duration::from_secs(5));
            (stream.finish_connect(until), start.elapsed())
        });
        thread::sleep(Duration::from_millis(200));
        stream.abort().expect("abort");
        let (outcome, waited) = waiter.join().expect("waiter");
        assert!(matches!(outcome, Err(Error::Reset)), "{outcome:?}");
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    });
    assert!(ready(stream.writable_fd().expect("fd"), 0), "not writable");
}
