//! The client library's listeners take their flows from sald's `Deliver`
//! accept queue: threads accept at once without queueing on the control
//! connection, `drain` answers while a thread waits in `accept` and counts
//! the flows waiting in the queue (the async listener's too), sald's
//! waiting drain answers only once the program took them all out, a given-up
//! async accept loses nothing, and what `accept` returns is what sald
//! lists for the flow; a flow sald handed to an `Accept` request whose
//! client had just left ends rather than stays. Two daemons in this
//! process (UDP mode on loopback), real flows between them.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::ServiceId;
use socket_shim::{
    AsyncControlClient, AsyncServiceListener, ControlClient, Error, FlowInfo, ServiceListener,
    ServiceStream,
};

mod common;
use common::{InProcess, InProcessPair, Sald};

/// How long anything here may take.
const WITHIN: Duration = Duration::from_secs(10);

fn bind(sald: &InProcess, prefix: &str) -> ServiceListener {
    let control = ControlClient::connect_to(&sald.control).expect("control");
    ServiceListener::bind_via(control, prefix.parse::<sal::ServicePrefix>().unwrap(), 64)
        .expect("bind")
}

fn connect(sald: &InProcess, service: ServiceId) -> ServiceStream {
    let control = ControlClient::connect_to(&sald.control).expect("control");
    let stream = ServiceStream::connect_via(control, service, Some(WITHIN)).expect("connect");
    stream.set_read_timeout(Some(WITHIN)).expect("read timeout");
    stream
}

/// A runtime for the async listener's tests.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An async listener for `prefix` on `sald`, bound on `runtime`.
fn bind_async(
    runtime: &tokio::runtime::Runtime,
    sald: &InProcess,
    prefix: &str,
) -> AsyncServiceListener {
    let prefix: sal::ServicePrefix = prefix.parse().unwrap();
    runtime.block_on(async {
        let control = AsyncControlClient::connect_to(&sald.control)
            .await
            .expect("control");
        AsyncServiceListener::bind_via(control, prefix, 64)
            .await
            .expect("bind")
    })
}

fn service(prefix: &str, n: usize) -> ServiceId {
    format!("{prefix}{n:04x}").parse().unwrap()
}

/// Runs `f` on a thread of its own; its result if it returns within
/// `limit`, else `None` (the thread is left behind).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(f());
    });
    result.recv_timeout(limit).ok()
}

#[test]
fn two_threads_accepting_at_once_get_distinct_flows_intact() {
    const FLOWS: usize = 16;
    let mut net = InProcessPair::new("shim-accept-threads");
    let listener = Arc::new(bind(&net.server, "ac01/16"));
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let listener = listener.clone();
            thread::spawn(move || {
                let mut served = Vec::new();
                loop {
                    let (mut stream, info) = match listener.accept() {
                        Ok(accepted) => accepted,
                        Err(Error::Closed) => return served,
                        Err(error) => panic!("accept: {error}"),
                    };
                    stream.set_read_timeout(Some(WITHIN)).unwrap();
                    // The client's message names its service; echo it back.
                    let mut message = vec![0u8; 64];
                    stream.read_exact(&mut message).unwrap();
                    assert_eq!(&message[..32], info.service.as_bytes());
                    stream.write_all(&message).unwrap();
                    served.push(info);
                }
            })
        })
        .collect();

    let clients: Vec<_> = (0..FLOWS)
        .map(|n| {
            let service = service("ac01", n);
            let mut stream = connect(&net.client, service);
            let mut message = service.as_bytes().to_vec();
            message.extend(common::pattern(32, n as u32));
            stream.write_all(&message).unwrap();
            (stream, message)
        })
        .collect();
    for (mut stream, message) in clients {
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message, "bytes intact");
    }

    // Both threads wait in accept again: sald going away ends the queue,
    // which ends them (an error, not a hang).
    let stopping = Instant::now();
    net.server.stop().expect("server sald stops");
    let mut flows = Vec::new();
    let mut counts = Vec::new();
    for server in servers {
        let served = server.join().expect("server thread");
        counts.push(served.len());
        flows.extend(served);
    }
    assert!(stopping.elapsed() < WITHIN);
    drop(listener);
    let ids: HashSet<_> = flows.iter().map(|info| info.flow).collect();
    assert_eq!(ids.len(), FLOWS, "each flow accepted once: {counts:?}");
    let services: HashSet<_> = flows.iter().map(|info| info.service).collect();
    assert_eq!(services.len(), FLOWS);
}

#[test]
fn drain_answers_while_a_thread_waits_in_accept() {
    let mut net = InProcessPair::new("shim-accept-drain");
    let listener = Arc::new(bind(&net.server, "ac02/16"));
    let waiting = listener.clone();
    let accepting = thread::spawn(move || waiting.accept().map(|(_, info)| info));
    // Give the thread time to be inside accept.
    thread::sleep(Duration::from_millis(200));
    let draining = listener.clone();
    let drained = within(WITHIN, move || draining.drain());
    assert_eq!(
        drained
            .expect("drain waited for the accepting thread")
            .expect("drain"),
        0
    );
    assert!(!accepting.is_finished());
    net.server.stop().expect("server sald stops");
    let ended = within(WITHIN, move || accepting.join().expect("accept thread"));
    assert!(
        matches!(ended, Some(Err(Error::Closed))),
        "accept after sald went: {ended:?}"
    );
}

#[test]
fn drain_counts_flows_waiting_in_the_accept_queue() {
    let net = InProcessPair::new("shim-accept-queued");
    let listener = bind(&net.server, "ac03/16");
    assert!(listener.try_accept().expect("try_accept").is_none());
    let service = service("ac03", 1);
    let mut stream = connect(&net.client, service);
    // Draining the drained listener again only reports on it.
    let deadline = Instant::now() + WITHIN;
    while listener.drain().expect("drain") != 1 {
        assert!(Instant::now() < deadline, "the flow was never counted");
        thread::sleep(Duration::from_millis(20));
    }
    // By now sald has handed the flow over: it is in the queue alone.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(listener.drain().expect("drain"), 1);
    let (mut server, info) = listener
        .try_accept()
        .expect("try_accept")
        .expect("the queued flow");
    assert_eq!(info.service, service);
    assert_eq!(listener.drain().expect("drain"), 0);
    assert!(listener.try_accept().expect("try_accept").is_none());
    listener.close().expect("close");
    // Closing once nothing was pending reset nobody.
    stream.write_all(b"after close").unwrap();
    let mut got = [0u8; 11];
    server.set_read_timeout(Some(WITHIN)).unwrap();
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after close");
    server.write_all(b"ok").unwrap();
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
}

#[test]
fn accepted_flow_info_is_what_sald_lists() {
    let net = InProcessPair::new("shim-accept-info");
    let listener = bind(&net.server, "ac04/16");
    let service = service("ac04", 7);
    let stream = connect(&net.client, service);
    let (accepted, info) = listener.accept().expect("accept");
    assert_eq!(accepted.flow_info(), &info);
    let listed = net.server.flow(info.flow).expect("sald lists the flow");
    let check = |info: &FlowInfo| {
        assert_eq!(info.flow, listed.flow);
        assert_eq!(info.peer_flow, listed.peer_flow);
        assert_eq!(info.service, listed.service);
        assert_eq!(info.remote, listed.remote);
        assert_eq!(info.local, listed.local);
        assert_eq!(info.protocol, listed.protocol);
        assert_eq!(info.role, listed.role);
        assert_eq!(info.interface, listed.interface);
    };
    check(&info);
    assert_eq!(info.role, sal::proto::Role::Server);
    assert_eq!(info.peer_flow, Some(stream.flow_id()));
    assert_eq!(info.remote, Some(net.client.locator()));
    assert_eq!(info.service, service);
}

#[test]
fn a_given_up_async_accept_loses_no_flow() {
    const FLOWS: usize = 12;
    let net = InProcessPair::new("shim-accept-async");
    let runtime = runtime();
    let listener = bind_async(&runtime, &net.server, "ac05/16");
    // Nothing queued yet: an accept given up takes nothing.
    let early = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
    });
    assert!(early.is_err(), "an accept returned with nothing connected");

    // Flows arrive while accepts are started and given up again and again
    // (each after a few hundred microseconds, so many are dropped with a
    // flow on the way): every flow is accepted once all the same.
    let client = net.client.control.clone();
    let connecting = thread::spawn(move || {
        (0..FLOWS)
            .map(|n| {
                let control = ControlClient::connect_to(&client).expect("control");
                ServiceStream::connect_via(control, service("ac05", n), Some(WITHIN))
                    .expect("connect")
            })
            .collect::<Vec<_>>()
    });
    let accepted = runtime.block_on(async {
        let deadline = Instant::now() + WITHIN;
        let mut accepted = Vec::new();
        let mut given_up = 0u32;
        while accepted.len() < FLOWS && Instant::now() < deadline {
            let wait = Duration::from_micros(100 + u64::from(given_up % 7) * 100);
            match tokio::time::timeout(wait, listener.accept()).await {
                Ok(Ok((_, info))) => accepted.push(info),
                Ok(Err(error)) => panic!("accept: {error}"),
                Err(_) => given_up += 1,
            }
        }
        accepted
    });
    let clients = connecting.join().expect("connecting thread");
    let mut services: Vec<_> = accepted.iter().map(|info| info.service).collect();
    services.sort();
    services.dedup();
    assert_eq!(services.len(), FLOWS, "flows lost or repeated");
    let peers: HashSet<_> = accepted.iter().filter_map(|info| info.peer_flow).collect();
    let ours: HashSet<_> = clients.iter().map(|stream| stream.flow_id()).collect();
    assert_eq!(peers, ours);
    drop(listener);
}

#[test]
fn the_async_listener_drains_while_a_task_accepts_and_counts_its_queue() {
    let net = InProcessPair::new("shim-accept-async-drain");
    let runtime = runtime();
    let bind = |prefix| bind_async(&runtime, &net.server, prefix);

    // Drain answers while a task waits in accept.
    let idle = bind("ac06/16");
    let drained = runtime.block_on(async {
        tokio::time::timeout(WITHIN, async {
            tokio::select! {
                biased;
                accepted = idle.accept() => panic!("accepted with nothing connected: {accepted:?}"),
                drained = idle.drain() => drained,
            }
        })
        .await
    });
    assert_eq!(drained.expect("drain waited for accept").expect("drain"), 0);

    // A flow is counted while sald holds it and once it waits in the queue.
    let listener = bind("ac07/16");
    assert!(listener.try_accept().expect("try_accept").is_none());
    let service = service("ac07", 1);
    let mut stream = connect(&net.client, service);
    let deadline = Instant::now() + WITHIN;
    while runtime.block_on(listener.drain()).expect("drain") != 1 {
        assert!(Instant::now() < deadline, "the flow was never counted");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(runtime.block_on(listener.drain()).expect("drain"), 1);
    let (mut server, info) = runtime.block_on(async {
        listener
            .try_accept()
            .expect("try_accept")
            .expect("the queued flow")
    });
    assert_eq!(info.service, service);
    assert_eq!(runtime.block_on(listener.drain()).expect("drain"), 0);
    assert!(listener.try_accept().expect("try_accept").is_none());
    runtime.block_on(listener.close()).expect("close");

    // Closing once nothing was pending reset nobody.
    stream.write_all(b"after close").unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = [0u8; 11];
        tokio::time::timeout(WITHIN, server.read_exact(&mut got))
            .await
            .expect("read in time")
            .expect("read");
        assert_eq!(&got, b"after close");
        server.write_all(b"ok").await.unwrap();
    });
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
}

#[test]
fn drain_counts_the_flow_on_its_way_into_a_full_accept_queue() {
    // More flows than an accept queue's socket buffer holds (about 280
    // notices): sald's feeder waits for room with one flow in hand, which
    // is in neither the host's backlog nor the queue.
    const FLOWS: usize = 500;
    common::raise_fd_limit(8 * FLOWS as u64 + 1024);
    let net = InProcessPair::new("shim-accept-full");
    let control = ControlClient::connect_to(&net.server.control).expect("control");
    let listener = ServiceListener::bind_via(
        control,
        "ac08/16".parse::<sal::ServicePrefix>().unwrap(),
        1024,
    )
    .expect("bind");
    let clients = common::open_flows(&net.client.control, service("ac08", 1), FLOWS, 8);
    let deadline = Instant::now() + WITHIN;
    while listener.drain().expect("drain") != FLOWS as u32 {
        assert!(Instant::now() < deadline, "some flows were never counted");
        thread::sleep(Duration::from_millis(50));
    }
    // Settled: every flow counted once.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(listener.drain().expect("drain"), FLOWS as u32);
    // A waiting drain sleeps while sald holds flows, then while the queue
    // holds the rest, and answers once the program took the last one: a
    // few looks, not one per flow.
    let looks = net.server.stats().drain_looks;
    let mut operator = ControlClient::connect_to(&net.server.control).expect("control");
    let (answered, answer) = mpsc::channel();
    thread::spawn(move || {
        let reply = operator.request(&sal_control::Request::Drain {
            prefix: "ac08/16".parse().unwrap(),
            wait_ms: Some(2 * WITHIN.as_millis() as u64),
        });
        let _ = answered.send(reply.map(|reply| reply.response));
    });
    thread::sleep(Duration::from_millis(100));
    let mut accepted = 0;
    while accepted < FLOWS {
        let (stream, _) = listener.accept().expect("accept");
        drop(stream);
        accepted += 1;
        if accepted == FLOWS - 1 {
            thread::sleep(Duration::from_millis(100));
            let early = answer.try_recv();
            assert!(early.is_err(), "answered with a flow queued: {early:?}");
        }
    }
    let drained = answer
        .recv_timeout(WITHIN)
        .expect("answered")
        .expect("drain");
    assert_eq!(drained, sal_control::Response::Drained { pending: 0 });
    let looked = net.server.stats().drain_looks - looks;
    assert!(looked <= 4, "{looked} looks for {FLOWS} flows taken");
    assert!(listener.try_accept().expect("try_accept").is_none());
    assert_eq!(listener.drain().expect("drain"), 0);
    drop(clients);
}

#[test]
fn a_flow_handed_to_an_accept_whose_client_left_is_ended_not_kept() {
    // The flow waits in sald's backlog (a bare `Listen`, no accept queue);
    // the client sends a blocking `Accept` and closes at once, so that
    // sald finds the flow and the client's departure ready together.
    // Whichever it takes first, the flow must end: handed over to nobody
    // (its socket closed with the connection), or reset. It used to stay
    // established for ever when the departure won.
    const ROUNDS: usize = 16;
    let net = InProcessPair::new("shim-accept-gone");
    let mut clients = Vec::new();
    for round in 0..ROUNDS {
        let prefix = format!("ac{:02x}/16", 0x10 + round);
        let mut control = ControlClient::connect_to(&net.server.control).expect("control");
        let reply = control
            .request(&sal_control::Request::Listen {
                prefix: prefix.parse().unwrap(),
                protocol: sal::wire::TransportProtocol::Stream,
                backlog: 4,
            })
            .expect("listen");
        let sal_control::Response::Listening { listener, .. } = reply.response else {
            panic!("listen: {:?}", reply.response);
        };
        let service = service(&format!("ac{:02x}", 0x10 + round), 1);
        clients.push(connect(&net.client, service));
        // The flow is established at the server once the client's ACK
        // arrives, right after the client's connect returned.
        thread::sleep(Duration::from_millis(20));
        control
            .send(&sal_control::Request::Accept {
                listener,
                nonblocking: false,
            })
            .expect("accept request");
        drop(control);
    }
    for (round, mut stream) in clients.into_iter().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("flow {round} still open after its accept's client left: {other:?}"),
        }
    }
}

/// sald's drain (as `servalctl service drain --wait` asks it) waits until
/// the program has taken every flow sald delivered into its accept
/// queue, and one that does not wait counts those flows: a program that
/// closes its listener as the drain answers resets nobody. It used to
/// count a flow only until sald had put it into the queue, and answered 0
/// while the queue still held every one of them.
#[test]
fn a_drain_waits_for_the_program_to_take_what_its_queue_holds() {
    const FLOWS: usize = 3;
    let net = InProcessPair::new("shim-accept-drain-taken");
    let listener = bind(&net.server, "ac09/16");
    let mut clients: Vec<_> = (0..FLOWS)
        .map(|n| connect(&net.client, service("ac09", n)))
        .collect();
    for client in &mut clients {
        client.write_all(b"request").unwrap();
    }
    let drain = |wait_ms| sal_control::Request::Drain {
        prefix: "ac09/16".parse().unwrap(),
        wait_ms,
    };
    let drained = |reply: socket_shim::Reply| match reply.response {
        sal_control::Response::Drained { pending } => pending,
        other => panic!("drain: {other:?}"),
    };
    // Every flow established and delivered: the program has taken none.
    let mut operator = ControlClient::connect_to(&net.server.control).expect("control");
    let deadline = Instant::now() + WITHIN;
    while drained(operator.request(&drain(None)).expect("drain")) != FLOWS as u32 {
        assert!(Instant::now() < deadline, "the flows were never counted");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        drained(operator.request(&drain(None)).expect("drain")),
        FLOWS as u32,
        "flows in the accept queue are not taken yet"
    );

    // A waiting drain answers only once the program took the last one.
    let (answered, answer) = mpsc::channel();
    thread::spawn(move || {
        let reply = operator.request(&drain(Some(WITHIN.as_millis() as u64 * 2)));
        let _ = answered.send(reply.map(drained));
    });
    let mut servers = Vec::new();
    for _ in 0..FLOWS {
        let early = answer.recv_timeout(Duration::from_millis(300));
        assert!(
            early.is_err(),
            "answered with flows in the queue: {early:?}"
        );
        let (server, _) = listener
            .try_accept()
            .expect("try_accept")
            .expect("a queued flow");
        servers.push(server);
    }
    let pending = answer
        .recv_timeout(WITHIN)
        .expect("answered once all were taken");
    assert_eq!(pending.expect("drain"), 0);

    // The program closes its listener at once: every client gets its answer.
    listener.close().expect("close");
    for mut server in servers {
        server.set_read_timeout(Some(WITHIN)).unwrap();
        let mut request = [0u8; 7];
        server.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"request");
        server.write_all(b"answer").unwrap();
    }
    for mut client in clients {
        let mut answer = [0u8; 6];
        client
            .read_exact(&mut answer)
            .expect("the answer, no reset");
        assert_eq!(&answer, b"answer");
    }
}

/// A program that takes a flow and then waits, with `MSG_PEEK`, for a
/// whole request before it reads any of it sees the whole request, as
/// with TCP (whose receive buffer shows 64 KiB or more): sald's socket of
/// a flow nobody is seen to take stays small, so the pump watches the
/// accept queue for the flow's notice to be taken once that socket fills.
/// It used to show about 29 KB, and the program waited for good.
#[test]
fn a_program_that_peeks_for_a_whole_request_sees_all_of_it() {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recv, MsgFlags};

    const REQUEST: usize = 64 * 1024;
    let net = InProcessPair::new("shim-accept-peek");
    let listener = bind(&net.server, "ac07/16");
    let request = common::pattern(REQUEST, 7);
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut seen = vec![0u8; REQUEST];
        let deadline = Instant::now() + WITHIN;
        let mut most = 0;
        while Instant::now() < deadline {
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            match recv(stream.as_raw_fd(), &mut seen, flags) {
                Ok(n) if n == REQUEST => break,
                Ok(n) => most = most.max(n),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(error) => panic!("peek: {error}"),
            }
            thread::sleep(Duration::from_millis(5));
        }
        let mut request = vec![0u8; REQUEST];
        stream.set_read_timeout(Some(WITHIN)).unwrap();
        let whole = recv(stream.as_raw_fd(), &mut seen, MsgFlags::MSG_PEEK).ok() == Some(REQUEST);
        stream.read_exact(&mut request).unwrap();
        stream.write_all(b"done").unwrap();
        (whole, most, request)
    });
    let mut client = connect(&net.client, service("ac07", 1));
    client.write_all(&request).unwrap();
    let (whole, most, received) = server.join().expect("server");
    assert!(
        whole,
        "the whole request seen with MSG_PEEK (at most {most} bytes)"
    );
    assert_eq!(received, request, "bytes intact");
    let mut done = [0u8; 4];
    client.read_exact(&mut done).unwrap();
    assert_eq!(&done, b"done");
}

/// The same with many flows queued behind the one the program takes: a
/// take from an accept queue is heard (as the write space it frees) only
/// once the queue holds less than a quarter of its socket buffer (Linux's
/// `unix_writable`), about 69 notices at the default buffer. A take with
/// more behind it was never heard, and a program that serves one flow at
/// a time, peeking for the whole request, waited for good.
#[test]
fn a_program_that_peeks_sees_all_of_a_request_with_many_flows_behind() {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recv, MsgFlags};

    const REQUEST: usize = 64 * 1024;
    const BEHIND: usize = 150;
    common::raise_fd_limit(8 * BEHIND as u64 + 1024);
    let net = InProcessPair::new("shim-accept-peek-behind");
    let control = ControlClient::connect_to(&net.server.control).expect("control");
    let listener = ServiceListener::bind_via(
        control,
        "ac0a/16".parse::<sal::ServicePrefix>().unwrap(),
        1024,
    )
    .expect("bind");
    let request = common::pattern(REQUEST, 9);
    let mut client = connect(&net.client, service("ac0a", 1));
    client.write_all(&request).unwrap();
    // The first flow's notice is first in the queue; more wait behind it
    // (a drain would stop the listener admitting them: it comes last).
    thread::sleep(Duration::from_millis(200));
    let behind = common::open_flows(&net.client.control, service("ac0a", 2), BEHIND, 8);
    let deadline = Instant::now() + WITHIN;
    while listener.drain().expect("drain") != 1 + BEHIND as u32 {
        assert!(Instant::now() < deadline, "some flows were never queued");
        thread::sleep(Duration::from_millis(20));
    }
    let (stream, _) = listener.accept().expect("accept");
    let mut seen = vec![0u8; REQUEST];
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match recv(stream.as_raw_fd(), &mut seen, flags) {
            Ok(n) => most = most.max(n),
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(error) => panic!("peek: {error}"),
        }
        if most == REQUEST {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        most, REQUEST,
        "the whole request seen with MSG_PEEK, {BEHIND} flows behind it"
    );
    assert_eq!(seen, request, "bytes intact");
    drop(behind);
}

/// A program that shuts its accept queue down (`shutdown(SHUT_RDWR)` of
/// its listening descriptor under the preload shim: the usual way to wake
/// an accept loop) while a flow it has not taken waits there with its
/// socket full leaves sald serving everyone else. The hang-up makes the
/// queue's write watch ready for good, and the flow's pump, waiting for
/// the notice to be taken, looked again and again without yielding: sald
/// stopped for as long as the program kept the descriptor open.
#[test]
fn a_queue_shut_down_with_a_full_flow_in_it_stops_nothing() {
    use std::os::fd::AsRawFd;

    const REQUEST: usize = 64 * 1024;
    let net = InProcessPair::new("shim-accept-shut");
    let mut control = ControlClient::connect_to(&net.server.control).expect("control");
    let reply = control
        .request(&sal_control::Request::Listen {
            prefix: "ac0b/16".parse().unwrap(),
            protocol: sal::wire::TransportProtocol::Stream,
            backlog: 16,
        })
        .expect("listen");
    let sal_control::Response::Listening { listener, .. } = reply.response else {
        panic!("listen: {:?}", reply.response);
    };
    let reply = control
        .request(&sal_control::Request::Deliver {
            listener,
            flow_info: false,
        })
        .expect("deliver");
    let queue = reply.fd.expect("the accept queue");
    let mut client = connect(&net.client, service("ac0b", 1));
    client.write_all(&common::pattern(REQUEST, 3)).unwrap();
    // The flow's small socket fills: its pump waits for the notice's take.
    thread::sleep(Duration::from_millis(500));
    nix::sys::socket::shutdown(queue.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
    let server = net.server.control.clone();
    let answered = within(Duration::from_secs(5), move || {
        let mut other = ControlClient::connect_to(&server).expect("control");
        other
            .request(&sal_control::Request::Listen {
                prefix: "ac0c/16".parse().unwrap(),
                protocol: sal::wire::TransportProtocol::Stream,
                backlog: 16,
            })
            .map(|reply| reply.response)
    });
    // Closing the queue throws the notice away, which ends any wait.
    drop(queue);
    let answered = answered.expect("sald answers while the queue is shut");
    assert!(
        matches!(answered, Ok(sal_control::Response::Listening { .. })),
        "{answered:?}"
    );
    // And once it is closed, the flow's socket with it.
    let server = net.server.control.clone();
    let answered = within(Duration::from_secs(5), move || {
        let mut other = ControlClient::connect_to(&server).expect("control");
        other
            .request(&sal_control::Request::Listen {
                prefix: "ac0d/16".parse().unwrap(),
                protocol: sal::wire::TransportProtocol::Stream,
                backlog: 16,
            })
            .map(|reply| reply.response)
    });
    let answered = answered.expect("sald answers once the queue is closed");
    assert!(
        matches!(answered, Ok(sal_control::Response::Listening { .. })),
        "{answered:?}"
    );
}
