//! `Deliver` (issue 11 §3): sald puts a listener's established flows
//! straight into the application's accept queue, each as an
//! `AcceptNotice` with the flow's descriptor attached, in place of one
//! `Accept` round trip per flow. Two daemons in this process (UDP mode on
//! loopback), real flows between them.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::ServiceId;
use sal_control::{AcceptNotice, ErrorKind, Request, Response, ACCEPT_EXHAUSTED};
use socket_shim::{ControlClient, ServiceStream};

mod common;
use common::{InProcess, InProcessPair, Sald, SaldProcess, Scratch};

/// How long anything here may take.
const WITHIN: Duration = Duration::from_secs(10);

/// Binds `prefix` on a fresh control connection of `sald`.
fn listen(sald: &InProcess, prefix: &str) -> (ControlClient, ListenerId) {
    let mut owner = ControlClient::connect_to(&sald.control).expect("control");
    let reply = owner
        .request(&Request::Listen {
            prefix: prefix.parse().unwrap(),
            protocol: TransportProtocol::Stream,
            backlog: 16,
        })
        .expect("listen");
    match reply.response {
        Response::Listening { listener, .. } => (owner, listener),
        other => panic!("not listening: {other:?}"),
    }
}

fn deliver(owner: &mut ControlClient, listener: ListenerId) -> OwnedFd {
    let reply = owner
        .request(&Request::Deliver {
            listener,
            flow_info: false,
        })
        .expect("deliver");
    assert_eq!(reply.response, Response::Delivering { listener });
    reply.fd.expect("the accept queue")
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    poll(&mut fds, PollTimeout::from(millis)).expect("poll") == 1
}

/// What one read of the accept queue gave.
enum Taken {
    Flow(AcceptNotice, UnixStream),
    /// sald had no descriptor for a flow.
    Exhausted,
    EndOfFile,
}

fn take(queue: &OwnedFd) -> Taken {
    assert!(readable(queue, WITHIN), "nothing on the accept queue");
    let mut message = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut message)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let received = recvmsg::<()>(
        queue.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for cmsg in received.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(rights) = cmsg {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(
                rights
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = received.bytes;
    if len == 0 {
        assert!(fds.is_empty());
        return Taken::EndOfFile;
    }
    if message[..len] == ACCEPT_EXHAUSTED {
        assert!(fds.is_empty());
        return Taken::Exhausted;
    }
    let notice = AcceptNotice::decode(&message[..len]).expect("an accept notice");
    assert_eq!(fds.len(), 1, "one descriptor per notice");
    Taken::Flow(notice, UnixStream::from(fds.remove(0)))
}

fn connect(sald: &InProcess, service: ServiceId) -> ServiceStream {
    let control = ControlClient::connect_to(&sald.control).expect("control");
    ServiceStream::connect_via(control, service, Some(WITHIN)).expect("connect")
}

/// Connects `client` to `service` and takes the flow from `queue`, which
/// must be that connection's.
fn connect_and_take(
    client: &InProcess,
    queue: &OwnedFd,
    service: ServiceId,
) -> (ServiceStream, AcceptNotice, UnixStream) {
    let stream = connect(client, service);
    let Taken::Flow(notice, flow) = take(queue) else {
        panic!("the accept queue ended");
    };
    assert_eq!(notice.service, service);
    (stream, notice, flow)
}

/// Descriptors open in this process (the in-process daemons' included).
fn fds_open(sald: &InProcess) -> u64 {
    match sald.request(Request::Stats) {
        Response::Stats { stats } => stats.fds_open,
        other => panic!("no stats: {other:?}"),
    }
}

/// A client's message arrives on the delivered flow and the answer makes
/// it back, byte for byte.
fn echo_once(mut stream: ServiceStream, mut flow: UnixStream, tag: u8) {
    let message: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(tag)).collect();
    stream.write_all(&message).unwrap();
    flow.set_read_timeout(Some(WITHIN)).unwrap();
    let mut got = vec![0u8; message.len()];
    flow.read_exact(&mut got).unwrap();
    assert_eq!(got, message);
    flow.write_all(&got).unwrap();
    stream
        .as_unix_stream()
        .set_read_timeout(Some(WITHIN))
        .unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

#[test]
fn flows_arrive_on_the_accept_queue_with_their_descriptor() {
    let net = InProcessPair::new("deliver");
    let (mut owner, listener) = listen(&net.server, "de11/16");
    let queue = deliver(&mut owner, listener);
    let client_locator = net.client.locator();

    for tag in 1..=3u8 {
        let service: ServiceId = format!("de11{tag:02x}").parse().unwrap();
        let (stream, notice, flow) = connect_and_take(&net.client, &queue, service);
        assert_eq!(notice.remote, Some(client_locator));
        echo_once(stream, flow, tag);
    }
    assert_eq!(net.server.flows().len(), 3);
}

#[test]
fn only_the_owner_may_take_a_listeners_flows() {
    let net = InProcessPair::new("deliver-owner");
    let (_owner, listener) = listen(&net.server, "de12/16");
    let mut other = ControlClient::connect_to(&net.server.control).expect("control");
    match other.request(&Request::Deliver {
        listener,
        flow_info: false,
    }) {
        Err(error) => assert_eq!(error.kind(), Some(ErrorKind::NotFound)),
        Ok(reply) => panic!("another connection took the listener: {reply:?}"),
    }
}

/// Each queue holds a descriptor and a task in sald that no limit counts:
/// one per listener, or a user could spend sald's descriptors at will.
/// Once the application closes it, it may ask again.
#[test]
fn a_listener_has_one_accept_queue_at_a_time() {
    let net = InProcessPair::new("deliver-once");
    let (mut owner, listener) = listen(&net.server, "de14/16");
    let queue = deliver(&mut owner, listener);
    for _ in 0..3 {
        match owner.request(&Request::Deliver {
            listener,
            flow_info: false,
        }) {
            Err(error) => assert_eq!(error.kind(), Some(ErrorKind::InvalidRequest), "{error}"),
            Ok(reply) => panic!("a second queue: {reply:?}"),
        }
    }
    drop(queue);
    let deadline = Instant::now() + WITHIN;
    loop {
        match owner.request(&Request::Deliver {
            listener,
            flow_info: false,
        }) {
            Ok(reply) => {
                assert_eq!(reply.response, Response::Delivering { listener });
                break;
            }
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.kind(), Some(ErrorKind::InvalidRequest), "{error}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("no new queue after the first closed: {error}"),
        }
    }
}

#[test]
fn a_closed_queue_leaves_flows_in_the_backlog() {
    let net = InProcessPair::new("deliver-closed");
    let (mut owner, listener) = listen(&net.server, "de13/16");
    drop(deliver(&mut owner, listener));
    // sald notices the queue closed; the flow that comes next waits in the
    // listener's backlog instead of being lost on the way.
    let service: ServiceId = "de1301".parse().unwrap();
    let stream = connect(&net.client, service);
    let reply = owner
        .request(&Request::Accept {
            listener,
            nonblocking: false,
        })
        .expect("accept");
    let Response::Accepted { flow } = reply.response else {
        panic!("not accepted: {:?}", reply.response);
    };
    assert_eq!(flow.service, service);
    echo_once(stream, UnixStream::from(reply.fd.expect("fd")), 7);
}

#[test]
fn the_queue_ends_when_the_listener_goes() {
    let net = InProcessPair::new("deliver-end");
    let (mut owner, listener) = listen(&net.server, "de14/16");
    let queue = deliver(&mut owner, listener);
    drop(owner);
    assert!(matches!(take(&queue), Taken::EndOfFile));
    let mut probe = ControlClient::connect_to(&net.client.control).expect("control");
    let refused = probe.request(&Request::Connect {
        service: "de1401".parse().unwrap(),
        protocol: TransportProtocol::Stream,
        timeout_ms: Some(5_000),
    });
    assert!(refused.is_err(), "a closed listener still took a flow");
}

/// A sald process (UDP mode on loopback) whose descriptor limit, hard and
/// soft, is `fds`.
fn starved(dir: &Path, fds: u64) -> SaldProcess {
    SaldProcess::start(dir, "starved", "127.0.0.3:0", |cmd| {
        // SAFETY: between fork and exec only setrlimit, which is
        // async-signal-safe, runs.
        unsafe {
            cmd.pre_exec(move || {
                let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
                nix::sys::resource::setrlimit(nofile, fds, fds).map_err(std::io::Error::from)
            });
        }
    })
}

#[test]
fn a_sald_out_of_descriptors_says_so_on_the_accept_queue() {
    let dir = Scratch::new("deliver-starved");
    let server = starved(&dir, 48);
    let client = InProcess::start(common::udp_config(&dir, "client", [127, 0, 0, 1].into()));
    client.forward_to("0/0", server.locator(), 1);
    let mut owner = ControlClient::connect_to(&server.control).expect("control");
    let reply = owner
        .request(&Request::Listen {
            prefix: "de15/16".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            backlog: 64,
        })
        .expect("listen");
    let Response::Listening { listener, .. } = reply.response else {
        panic!("not listening: {:?}", reply.response);
    };
    let queue = deliver(&mut owner, listener);

    // Every delivered flow holds one of sald's descriptors (its end of the
    // flow's socketpair) for as long as both ends stay open.
    let mut held = Vec::new();
    let service: ServiceId = "de1501".parse().unwrap();
    let exhausted_after = loop {
        assert!(held.len() < 64, "sald never ran out of descriptors");
        let stream = connect(&client, service);
        match take(&queue) {
            Taken::Flow(_, flow) => held.push((stream, flow)),
            Taken::Exhausted => break held.len(),
            Taken::EndOfFile => panic!("the accept queue ended"),
        }
    };
    assert!(exhausted_after > 0, "no flow was delivered at all");

    // Once flows close, their descriptors come back and delivery goes on.
    held.drain(..held.len() / 2);
    let deadline = Instant::now() + WITHIN;
    loop {
        assert!(Instant::now() < deadline, "delivery did not resume");
        let stream = connect(&client, service);
        if let Taken::Flow(_, flow) = take(&queue) {
            echo_once(stream, flow, 9);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program that writes into its accept queue misbehaves (the shims only
/// read from it): sald reads one message, takes the program as gone from
/// that queue and ends it, as when the program closes it. It used to read
/// and drop whatever came, a read per message on its one thread, for as
/// long as the program wrote. The listener's flows wait in its backlog
/// meanwhile, for an `Accept` or a new queue.
#[test]
fn junk_in_an_accept_queue_ends_it_after_one_read() {
    let net = InProcessPair::new("deliver-junk");
    let (mut owner, listener) = listen(&net.server, "de16/16");
    let queue = deliver(&mut owner, listener);
    let fds_before = fds_open(&net.server);
    // Junk, some of it carrying descriptors, the wrong way up the queue,
    // until a send fails: 2 MB, far more than a socket buffer holds, would
    // all go through only if sald read on (a send that waits 10 s fails).
    let sndtimeo = nix::sys::time::TimeVal::new(10, 0);
    nix::sys::socket::setsockopt(&queue, nix::sys::socket::sockopt::SendTimeout, &sndtimeo)
        .unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let junk = [0x5au8; 1000];
    let refused = (0..2000).find_map(|i| {
        let fds = [a.as_raw_fd(), b.as_raw_fd()];
        let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let cmsgs: &[_] = if i % 10 == 0 { &rights } else { &[] };
        nix::sys::socket::sendmsg::<()>(
            queue.as_raw_fd(),
            &[std::io::IoSlice::new(&junk)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .err()
    });
    // Closed with junk unread: a reset, or a broken pipe once that is told.
    use nix::errno::Errno;
    assert!(
        matches!(refused, Some(Errno::ECONNRESET | Errno::EPIPE)),
        "sald read on: {refused:?}"
    );
    // The program reads the queue's end (the reset first, if not told yet).
    assert!(readable(&queue, WITHIN), "the queue did not end");
    let mut byte = [0u8; 1];
    let end = nix::sys::socket::recv(queue.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT);
    assert!(matches!(end, Ok(0) | Err(Errno::ECONNRESET)), "{end:?}");
    // sald kept none of the descriptors it was sent (it reads without room
    // for them, so the kernel closes them).
    let fds_after = fds_open(&net.server);
    assert!(
        fds_after <= fds_before + 4,
        "sald holds {fds_before} -> {fds_after} descriptors"
    );
    // A flow that comes now waits in the backlog, for an `Accept`.
    let service: ServiceId = "de1601".parse().unwrap();
    let stream = connect(&net.client, service);
    let reply = owner
        .request(&Request::Accept {
            listener,
            nonblocking: false,
        })
        .expect("accept");
    let Response::Accepted { flow } = reply.response else {
        panic!("not accepted: {:?}", reply.response);
    };
    assert_eq!(flow.service, service);
    echo_once(stream, UnixStream::from(reply.fd.expect("fd")), 1);
    // And the listener may have a queue again.
    let queue = deliver(&mut owner, listener);
    let (stream, _, flow) = connect_and_take(&net.client, &queue, "de1602".parse().unwrap());
    echo_once(stream, flow, 2);
}

/// Descriptors this process has open (both daemons of an `InProcessPair`
/// and the test's own).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// A listener closed with flows still in its accept queue: the kernel
/// closes their sockets with the queue, and sald must then end those flows
/// (their pumps, their sockets) even though the peers stay silent. Reading
/// end of file alone cannot tell a closed socket from one only shut down
/// for sending; waiting to write into it would wait for ever, since the
/// peers send nothing.
#[test]
fn flows_left_in_a_closed_accept_queue_end_though_their_peers_say_nothing() {
    const FLOWS: usize = 50;
    let pair = InProcessPair::new("deliver-closed-queue");
    let listener = socket_shim::ServiceListener::bind_via(
        pair.server.client(),
        "c0/8".parse::<sal::ServicePrefix>().unwrap(),
        1024,
    )
    .unwrap();
    let ends = common::open_flows(&pair.client.control, "c001".parse().unwrap(), FLOWS, 1);
    // All of them handed over into the queue (one socket each in sald).
    assert!(testnet::wait_until(Duration::from_secs(5), || {
        pair.server.flows().len() == FLOWS
    }));
    std::thread::sleep(Duration::from_millis(300));
    let before = open_descriptors();
    drop(listener);
    // Each flow's end in sald goes: its pump saw the application gone.
    let ended = testnet::wait_until(Duration::from_secs(5), || {
        open_descriptors() + FLOWS <= before
    });
    assert!(
        ended,
        "{} descriptors before, {} after",
        before,
        open_descriptors()
    );
    // And the clients hear the end of each flow.
    for mut end in ends {
        end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(end.read(&mut byte).unwrap(), 0, "end of the flow");
    }
}
