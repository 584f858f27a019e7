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
use sal::proto::FlowInfo;
use sal::proto::{UNACCEPTED_BUFFER, UNACCEPTED_LISTENER_BUFFER};
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

/// A blocking `Accept` on `listener` (a flow waiting in its backlog):
/// the flow's description and the application's end of it.
fn accept_from_backlog(owner: &mut ControlClient, listener: ListenerId) -> (FlowInfo, UnixStream) {
    let reply = owner
        .request(&Request::Accept {
            listener,
            nonblocking: false,
        })
        .expect("accept");
    let Response::Accepted { flow } = reply.response else {
        panic!("not accepted: {:?}", reply.response);
    };
    (flow, UnixStream::from(reply.fd.expect("fd")))
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
    let (flow, theirs) = accept_from_backlog(&mut owner, listener);
    assert_eq!(flow.service, service);
    echo_once(stream, theirs, 7);
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

/// `StopListening` (a socket shim's `connect(AF_UNSPEC)` on a listener,
/// as TCP's `tcp_disconnect`): the listener stays bound (another `Listen`
/// of its prefix is `AddressInUse`) and refuses connects; the flows in its
/// backlog are reset; its accept queue ends (what was in it stays to be
/// taken, then end of file); `SetBacklog` makes it listen again, and a
/// new `Deliver` gives it a new queue. sald had no such request: a
/// listener could only be closed, which unbinds it.
#[test]
fn a_stopped_listener_stays_bound_and_listens_again() {
    let net = InProcessPair::new("deliver-stop");
    let (mut owner, listener) = listen(&net.server, "de1a/16");
    let service: ServiceId = "de1a01".parse().unwrap();
    let stop = |owner: &mut ControlClient| {
        let reply = owner
            .request(&Request::StopListening { listener })
            .expect("stop listening");
        assert_eq!(reply.response, Response::Ok);
    };
    let listen_again = |owner: &mut ControlClient| {
        let reply = owner
            .request(&Request::SetBacklog {
                listener,
                backlog: 16,
            })
            .expect("listen again");
        assert_eq!(reply.response, Response::Ok);
    };
    let reset = |mut stream: ServiceStream| {
        stream
            .as_unix_stream()
            .set_read_timeout(Some(WITHIN))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte).map_err(|e| e.kind());
        assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
    };

    // A flow in the backlog (no queue yet) is reset.
    let waiting = connect(&net.client, service);
    stop(&mut owner);
    reset(waiting);
    let control = ControlClient::connect_to(&net.client.control).expect("control");
    let refused = ServiceStream::connect_via(control, service, Some(WITHIN))
        .expect_err("a stopped listener refuses");
    assert!(
        matches!(refused, socket_shim::Error::Refused(_)),
        "{refused:?}"
    );
    let mut rival = ControlClient::connect_to(&net.server.control).expect("control");
    let bound = rival.request(&Request::Listen {
        prefix: "de1a/16".parse().unwrap(),
        protocol: TransportProtocol::Stream,
        backlog: 4,
    });
    assert_eq!(
        bound.expect_err("bound still").kind(),
        Some(ErrorKind::AddressInUse)
    );
    stop(&mut owner);

    // Listening again, with a queue: a flow taken, another left in it.
    listen_again(&mut owner);
    let queue = deliver(&mut owner, listener);
    let (stream, _, flow) = connect_and_take(&net.client, &queue, service);
    echo_once(stream, flow, 5);
    let _left = connect(&net.client, service);
    assert!(readable(&queue, WITHIN));
    stop(&mut owner);
    assert!(
        matches!(take(&queue), Taken::Flow(..)),
        "what was in the queue stays"
    );
    assert!(matches!(take(&queue), Taken::EndOfFile), "then it ends");

    listen_again(&mut owner);
    let queue = deliver(&mut owner, listener);
    let (stream, _, flow) = connect_and_take(&net.client, &queue, service);
    echo_once(stream, flow, 6);
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
    let (flow, theirs) = accept_from_backlog(&mut owner, listener);
    assert_eq!(flow.service, service);
    echo_once(stream, theirs, 1);
    // And the listener may have a queue again.
    let queue = deliver(&mut owner, listener);
    let (stream, _, flow) = connect_and_take(&net.client, &queue, "de1602".parse().unwrap());
    echo_once(stream, flow, 2);
}

/// The sockets this process has open (both daemons of an
/// `InProcessPair`, the test's own, and those of the tests that run beside
/// it), by inode.
fn open_sockets() -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let inode = target.to_str()?.strip_prefix("socket:[")?;
            inode.strip_suffix(']')?.parse().ok()
        })
        .collect()
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
    let before = open_sockets();
    drop(listener);
    // Each flow's end in sald goes: its pump saw the application gone.
    // Counted as sockets open before that are gone, which the sockets of
    // tests running beside this one do not disturb (the count of
    // descriptors did, as those opened theirs).
    let gone = || before.difference(&open_sockets()).count();
    let ended = testnet::wait_until(Duration::from_secs(5), || gone() >= FLOWS);
    assert!(ended, "{} of {} sockets gone", gone(), before.len());
    // And the clients hear the end of each flow.
    for mut end in ends {
        end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(end.read(&mut byte).unwrap(), 0, "end of the flow");
    }
}

/// An ordinary user (`nobody`): only ordinary users' flows have a buffer
/// budget of their own (`[tcp] buffer_memory_per_uid`).
const NOBODY: u32 = 65534;

/// Flows waiting in accept queue `queue`: `FIONREAD` on a
/// `SOCK_SEQPACKET` socket sums the lengths of the queued messages, and
/// the notices are all [`AcceptNotice::LEN`] bytes long.
fn queued(queue: &OwnedFd) -> usize {
    let mut bytes: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a local that outlives the call; `queue` is open.
    let rc = unsafe { nix::libc::ioctl(queue.as_raw_fd(), nix::libc::FIONREAD, &mut bytes) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(bytes).unwrap_or(0) / AcceptNotice::LEN
}

/// Bytes waiting for the program in its end of a flow (`FIONREAD`).
fn unread(flow: &UnixStream) -> usize {
    let mut bytes: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a local that outlives the call; `flow` is open.
    let rc = unsafe { nix::libc::ioctl(flow.as_raw_fd(), nix::libc::FIONREAD, &mut bytes) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(bytes).unwrap_or(0)
}

/// Most of what sald's end of a delivered flow nobody has been seen to
/// take may hold: what the remote peer sent into it, in kernel memory no
/// budget counts (twice as much memory at most, room for each write's
/// bookkeeping). Far less than the 208 KiB a unix socket holds at
/// Linux's default (`net.core.wmem_default`).
const UNTAKEN_SOCKET_BYTES: usize = 48 << 10;

/// The kernel memory that what sald wrote into the flows waiting in
/// accept queues holds: the send memory in use (`ss -x -m`'s `skmem` `t`,
/// what `SIOCOUTQ` reads) of every unix socket whose peer is in no
/// descriptor of this process, as the program's ends of flows in an
/// accept queue are not (sald runs in this process too, and every other
/// socket of these tests is held here); `None` without `ss`.
fn memory_toward_queued() -> Option<u64> {
    let held: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let out = std::process::Command::new("ss")
        .args(["-x", "-m", "-H"])
        .output()
        .ok()?;
    let mut sum = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| w.starts_with("skmem:(")) else {
            continue;
        };
        let peer = if at == 0 { "0" } else { words[at - 1] };
        if matches!(peer, "0" | "*") || held.contains(peer) {
            continue;
        }
        let fields = words[at]
            .trim_start_matches("skmem:(")
            .trim_end_matches(')');
        sum += fields
            .split(',')
            .find_map(|f| f.strip_prefix('t')?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(sum)
}

/// What [`flows_parked_in_an_accept_queue`] saw on the server.
#[derive(Debug)]
struct Parked {
    /// Flows sald moved into the accept queue (the rest waited in the
    /// listener's backlog).
    delivered: usize,
    /// Bytes the peer got into all the flows together.
    written: usize,
    /// The most all the server's TCP buffers held at once (the parked
    /// flows' alone: nothing else runs on the server).
    peak: u64,
    /// Times the user's flows came under pressure of their own.
    group_pressures: u64,
    /// Times the listener's flows nobody accepted did.
    listener_pressures: u64,
    /// Whether the server as a whole did.
    host_pressure: bool,
    /// Bytes of what the peer sent that the delivered flows' sockets held
    /// for the program (beyond the TCP buffers, in kernel memory).
    socket_bytes: usize,
    /// The kernel memory those bytes held ([`memory_toward_queued`]).
    socket_memory: Option<u64>,
}

/// A remote peer opens `flows` flows to an ordinary user's listener whose
/// program asked for its flows to be delivered (as every program under
/// the shim does) but never takes one from its accept queue, and writes
/// up to `per_flow` bytes into each, until they take no more; `tune`
/// sets the server's buffer bounds.
fn flows_parked_in_an_accept_queue(
    label: &str,
    flows: usize,
    per_flow: usize,
    tune: impl FnOnce(&mut sald::config::Config),
) -> Parked {
    common::raise_fd_limit(4 * flows as u64 + 1024);
    let dir = Scratch::new(label);
    let mut config = common::udp_config(&dir, "server", [127, 0, 0, 2].into());
    tune(&mut config);
    let mut server = InProcess::start(config);
    let client = InProcess::start(common::udp_config(&dir, "client", [127, 0, 0, 1].into()));
    client.forward_to("0/0", server.locator(), 1);
    let mut owner = common::client_as(&server.control, NOBODY).expect("nobody's control");
    let reply = owner
        .request(&Request::Listen {
            prefix: "de17/16".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            backlog: u32::try_from(flows).unwrap(),
        })
        .expect("listen");
    let Response::Listening { listener, .. } = reply.response else {
        panic!("not listening: {:?}", reply.response);
    };
    let queue = deliver(&mut owner, listener);
    let mut ends = common::open_flows(&client.control, "de1701".parse().unwrap(), flows, 4);
    for end in &ends {
        end.set_nonblocking(true).unwrap();
    }
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = vec![0usize; flows];
    let mut peak = 0;
    let mut last_progress = Instant::now();
    let mut last_look = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(120);
    // Round and round without waiting, until every flow took `per_flow`
    // or none took a byte for two seconds.
    while last_progress.elapsed() < Duration::from_secs(2) && Instant::now() < give_up {
        let mut progress = false;
        for (end, written) in ends.iter_mut().zip(&mut written) {
            let want = (per_flow - *written).min(chunk.len());
            if want == 0 {
                continue;
            }
            match end.write(&chunk[..want]) {
                Ok(n) => {
                    *written += n;
                    progress |= n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("a parked flow failed: {e}"),
            }
        }
        if progress {
            last_progress = Instant::now();
        }
        if last_look.elapsed() >= Duration::from_millis(50) || !progress {
            peak = peak.max(server.stats().host.buffer_bytes);
            last_look = Instant::now();
        }
        if written.iter().all(|&w| w == per_flow) {
            break;
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // What the flows hold once it all came to rest.
    std::thread::sleep(Duration::from_millis(500));
    let stats = server.stats();
    let delivered = queued(&queue);
    let socket_memory = memory_toward_queued();
    // Taken from the queue, a flow whose socket is full counts as the
    // program's (a program that peeks waits for more, see `sald::pump`):
    // what they held untaken is read once the server's sald is gone, when
    // nothing more comes into them.
    server.stop().expect("the server's sald stops");
    let taken: Vec<UnixStream> = (0..delivered)
        .map(|_| match take(&queue) {
            Taken::Flow(_, flow) => flow,
            _ => panic!("a delivered flow is missing"),
        })
        .collect();
    Parked {
        delivered,
        socket_bytes: taken.iter().map(unread).sum(),
        socket_memory,
        written: written.iter().sum(),
        peak: peak.max(stats.host.buffer_bytes),
        group_pressures: stats.host.group_buffer_pressures,
        listener_pressures: stats.host.unaccepted_buffer_pressures,
        host_pressure: stats.host.buffer_pressures > 0,
    }
}

/// A server program under the shim has every flow moved into its accept
/// queue while the queue has room (a few hundred). A remote peer that
/// opens flows to it and fills them, while the program does not take
/// them (busy, or slow to accept), must not put the program's user under
/// pressure, as it cannot with the flows still in sald's backlog: flows
/// in the queue count against their listener until the program takes
/// them. They used to count as accepted once delivered, each growing to
/// its maximum (1 MiB) in the user's group.
#[test]
fn flows_in_an_accept_queue_nobody_took_do_not_press_their_user_s_flows() {
    testnet::require_root!();
    const BUDGET: usize = 8 << 20;
    const FLOWS: usize = 192;
    let parked = flows_parked_in_an_accept_queue("deliver-parked", FLOWS, 512 << 10, |config| {
        config.tcp.buffer_memory_per_uid = Some(BUDGET);
    });
    eprintln!("{FLOWS} flows parked, budget {BUDGET}: {parked:?}");
    // A queue holds about 70 (a quarter of its socket buffer: see
    // `sald::accept_queue`); the rest wait in the listener's backlog.
    assert!(parked.delivered >= 64, "{parked:?}");
    assert!(
        parked.written > 2 * BUDGET,
        "the peer got little in: {parked:?}"
    );
    assert_eq!(
        parked.group_pressures, 0,
        "the user was pressed: {parked:?}"
    );
    assert!(!parked.host_pressure, "{parked:?}");
    // They held what their listener may, and not much more: each flow
    // direction's first allocation, and the growth step that crossed it.
    assert!(parked.listener_pressures >= 1, "{parked:?}");
    let min_buffer = sald::config::TcpBuffers::default().min_buffer;
    let slack = UNACCEPTED_BUFFER + FLOWS * 2 * min_buffer;
    assert!(
        parked.peak <= (UNACCEPTED_LISTENER_BUFFER + slack) as u64,
        "{parked:?}"
    );
    // Nor did their sockets hold much more of what the peer sent, in
    // kernel memory no budget counts (at a unix socket's default 208 KiB,
    // 31 MB of data in 41 MB of memory here, before).
    assert!(
        parked.socket_bytes <= parked.delivered * UNTAKEN_SOCKET_BYTES,
        "{parked:?}"
    );
    let memory_bound = (parked.delivered * 2 * UNTAKEN_SOCKET_BYTES) as u64;
    assert!(
        parked
            .socket_memory
            .is_none_or(|memory| memory <= memory_bound),
        "{parked:?}"
    );
}

/// [`flows_in_an_accept_queue_nobody_took_do_not_press_their_user_s_flows`]
/// at the documented defaults (`buffer_memory` 1 GiB, a quarter of it
/// per user) and as many flows as a queue takes, each sent more than its
/// window: a measurement (`--ignored --nocapture`), slow in a debug build.
#[test]
#[ignore]
fn flows_parked_in_an_accept_queue_at_the_default_budgets() {
    testnet::require_root!();
    const FLOWS: usize = 400;
    let started = Instant::now();
    let parked =
        flows_parked_in_an_accept_queue("deliver-parked-default", FLOWS, 1_310_720, |config| {
            config.tcp.buffer_memory = Some(1 << 30);
        });
    eprintln!(
        "{FLOWS} flows parked at the default budgets, {:?}: {parked:?}",
        started.elapsed()
    );
}

/// A client uploads 8 MiB on a flow delivered into a program's accept
/// queue; the program takes it once it holds what a flow nobody took
/// may, then writes a greeting (if `greet`) or reads a mebibyte, and
/// reads nothing more until the flow is counted as accepted and its
/// buffers grew past what a flow nobody took may hold; then all the
/// rest, which must arrive whole.
fn upload_to_a_delivered_flow(label: &str, greet: bool) {
    let net = InProcessPair::new(label);
    let listener = socket_shim::ServiceListener::bind_via(
        net.server.client(),
        "de18/16".parse::<sal::ServicePrefix>().unwrap(),
        16,
    )
    .unwrap();
    let upload = common::pattern(8 << 20, 18);
    let mut stream = connect(&net.client, "de1801".parse().unwrap());
    let writer = {
        let upload = upload.clone();
        std::thread::spawn(move || {
            stream.write_all(&upload).unwrap();
            stream.shutdown_write().unwrap();
            stream
        })
    };
    let host = || net.server.stats().host;
    // In the queue, not taken: what it holds is its listener's, and little.
    assert!(
        testnet::wait_until(WITHIN, || host().unaccepted_buffer_bytes > 0),
        "{:?}",
        host()
    );
    let held = host().unaccepted_buffer_bytes;
    assert!(held <= 2 * UNACCEPTED_BUFFER as u64 + 8192, "{held} held");

    let (mut flow, _) = listener.accept().expect("accept");
    let mut got = Vec::new();
    if greet {
        flow.write_all(b"hello").unwrap();
    } else {
        got.resize(1 << 20, 0);
        flow.read_exact(&mut got).unwrap();
    }
    let grown = testnet::wait_until(WITHIN, || {
        let host = host();
        host.unaccepted_buffer_bytes == 0 && host.buffer_bytes > 4 * UNACCEPTED_BUFFER as u64
    });
    assert!(grown, "not counted as accepted: {:?}", host());
    assert_eq!(host().unaccepted_buffer_pressures, 0);

    flow.set_read_timeout(Some(WITHIN)).unwrap();
    flow.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), upload.len());
    assert!(got == upload, "the upload arrived changed");
    drop(flow);
    let mut stream = writer.join().unwrap();
    if greet {
        let mut greeting = Vec::new();
        stream.read_to_end(&mut greeting).unwrap();
        assert_eq!(greeting, b"hello");
    }
}

/// A program that takes a delivered flow and only reads from it (an
/// upload sink) is seen to have taken it by its reading alone: the flow
/// then counts as accepted, nothing of it its listener's any more, and
/// its buffers grow past what a flow nobody took may hold (else a long
/// path's upload would run on a 64 KiB window for the flow's life). Every
/// byte arrives.
#[test]
fn a_delivered_flow_its_program_only_reads_counts_as_accepted() {
    upload_to_a_delivered_flow("deliver-sink", false);
}

/// A program that writes into a delivered flow took it: it counts as
/// accepted from then on, though the program has not read yet.
#[test]
fn a_delivered_flow_its_program_writes_into_counts_as_accepted() {
    upload_to_a_delivered_flow("deliver-greet", true);
}

/// Stops (`true`) or resumes process `pid`.
fn pause(pid: u32, stop: bool) {
    let signal = if stop {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, signal).expect("kill");
}

/// A program that takes a delivered flow, writes its answer and closes
/// it (as an HTTP/1.0 server does), before sald's pump reads a byte of
/// it: only a program that took the flow can have written, so it counts
/// as accepted, though the program's end is closed by the time sald
/// looks. (sald is stopped while the program writes, so that it looks
/// late; the client's sald, so that the answer stays in the server
/// flow's send buffer, where the charge shows.)
#[test]
fn a_delivered_flow_its_program_answers_and_closes_counts_as_accepted() {
    let dir = Scratch::new("deliver-answer-close");
    let server = SaldProcess::start(&dir, "server", "127.0.0.3:0", |_| {});
    let client = SaldProcess::start(&dir, "client", "127.0.0.4:0", |_| {});
    client.forward_to("0/0", server.locator(), 1);
    let mut owner = ControlClient::connect_to(&server.control).expect("control");
    let reply = owner
        .request(&Request::Listen {
            prefix: "de19/16".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            backlog: 16,
        })
        .expect("listen");
    let Response::Listening { listener, .. } = reply.response else {
        panic!("not listening: {:?}", reply.response);
    };
    let queue = deliver(&mut owner, listener);
    let service: ServiceId = "de1901".parse().unwrap();
    let mut stream = ServiceStream::connect_via(client.client(), service, Some(WITHIN)).unwrap();
    let Taken::Flow(_, mut flow) = take(&queue) else {
        panic!("the accept queue ended");
    };
    let answer = common::pattern(96 << 10, 19);
    pause(server.id(), true);
    flow.write_all(&answer).unwrap();
    drop(flow);
    pause(client.id(), true);
    pause(server.id(), false);
    let host = || server.stats().host;
    assert!(
        testnet::wait_until(WITHIN, || host().buffer_bytes > 0),
        "{:?}",
        host()
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen = host();
    pause(client.id(), false);
    assert_eq!(
        seen.unaccepted_buffer_bytes, 0,
        "the answer's flow counts as nobody's: {seen:?}"
    );
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert!(got == answer, "the answer arrived changed");
}

/// [`unread`] once it stopped changing (the same for 300 ms) with
/// something in it, which must happen within [`WITHIN`].
fn unread_at_rest(flow: &UnixStream) -> usize {
    let deadline = Instant::now() + WITHIN;
    let mut last = unread(flow);
    let mut still = 0;
    while still < 3 {
        assert!(Instant::now() < deadline, "still moving: {last} bytes");
        std::thread::sleep(Duration::from_millis(100));
        let now = unread(flow);
        still = if now == last && now > 0 { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// An upload into a delivered flow (see [`upload_unread`]).
struct Upload {
    /// The listener's control connection, which keeps it.
    _owner: ControlClient,
    /// The client's writer: its stream once all is written.
    writer: std::thread::JoinHandle<ServiceStream>,
    /// The program's end of the flow.
    flow: UnixStream,
    /// What the client sends.
    data: Vec<u8>,
}

/// A client uploads a mebibyte on a flow that waits in the accept queue
/// of `net`'s server program, which then takes it but reads nothing yet.
fn upload_unread(net: &InProcessPair, prefix: &str) -> Upload {
    let (owner, queue, writer, data) = upload_queued(net, prefix);
    let Taken::Flow(_, flow) = take(&queue) else {
        panic!("the accept queue ended");
    };
    Upload {
        _owner: owner,
        writer,
        flow,
        data,
    }
}

/// A client uploads a mebibyte on a flow that waits in the accept queue
/// of `net`'s server program: the listener's control connection, its
/// accept queue, the client's writer and what it sends.
fn upload_queued(
    net: &InProcessPair,
    prefix: &str,
) -> (
    ControlClient,
    OwnedFd,
    std::thread::JoinHandle<ServiceStream>,
    Vec<u8>,
) {
    let (mut owner, listener) = listen(&net.server, &format!("{prefix}/16"));
    let queue = deliver(&mut owner, listener);
    let upload = common::pattern(1 << 20, 26);
    let mut stream = connect(&net.client, format!("{prefix}01").parse().unwrap());
    let writer = {
        let upload = upload.clone();
        std::thread::spawn(move || {
            stream.write_all(&upload).unwrap();
            stream.shutdown_write().unwrap();
            stream
        })
    };
    let host = || net.server.stats().host;
    assert!(
        testnet::wait_until(WITHIN, || host().unaccepted_buffer_bytes > 0),
        "{:?}",
        host()
    );
    (owner, queue, writer, upload)
}

/// Reads the rest of `flow` (after `got`), which must be `upload` whole.
fn read_whole(mut flow: UnixStream, mut got: Vec<u8>, upload: &[u8]) {
    flow.set_read_timeout(Some(WITHIN)).unwrap();
    flow.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), upload.len());
    assert!(got == upload, "the upload arrived changed");
}

/// What a remote peer sends into a flow delivered into a program's accept
/// queue, before the program takes it, waits in the flow's receive
/// buffer, which the host counts against the listener, all but a first
/// request's worth in sald's end of the flow's socket. That end held
/// 208 KiB of it (the default send buffer of a unix socket), in kernel
/// memory no budget counts, in each of the few hundred flows a queue
/// holds. (What arrives once the program reads: the other tests here.)
#[test]
fn a_delivered_flow_nobody_takes_holds_little_in_its_socket() {
    let mut net = InProcessPair::new("deliver-small-socket");
    let (_owner, queue, _writer, _) = upload_queued(&net, "de1a");
    // At rest: what sald wrote into the queued flow's socket stops
    // growing (a second without `ss`).
    let mut memory = memory_toward_queued();
    if memory.is_some() {
        let mut still = 0;
        let deadline = Instant::now() + WITHIN;
        while still < 3 {
            assert!(Instant::now() < deadline, "still moving: {memory:?}");
            std::thread::sleep(Duration::from_millis(100));
            let now = memory_toward_queued();
            still = if now == memory && now > Some(0) {
                still + 1
            } else {
                0
            };
            memory = now;
        }
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    // Taken, a full socket is the program's (see `sald::pump`): it is
    // taken once nothing more can come into it.
    net.server.stop().expect("the server's sald stops");
    let Taken::Flow(_, flow) = take(&queue) else {
        panic!("the accept queue ended");
    };
    let held = unread(&flow);
    assert!(held <= UNTAKEN_SOCKET_BYTES, "{held} bytes in the socket");
    assert!(held >= 16 << 10, "a first request waits: {held} bytes");
    let bound = 2 * UNTAKEN_SOCKET_BYTES as u64;
    assert!(memory.is_none_or(|memory| memory <= bound), "{memory:?}");
}

/// A program that takes a delivered flow and lets its socket fill without
/// reading (it waits with `MSG_PEEK` for a whole request, say) gets it
/// all, as from TCP: sald counts a taken flow whose socket is full as the
/// program's, and gives the socket its send buffer back. It got about
/// 29 KB, and the program waited for good.
#[test]
fn a_taken_flow_whose_socket_fills_gets_its_socket_buffer_back() {
    let net = InProcessPair::new("deliver-taken-full");
    let Upload {
        _owner,
        writer,
        flow,
        data,
    } = upload_unread(&net, "de1c");
    let grown = testnet::wait_until(WITHIN, || unread(&flow) > 2 * UNTAKEN_SOCKET_BYTES);
    assert!(grown, "{} bytes in the socket", unread(&flow));
    assert!(
        testnet::wait_until(WITHIN, || net.server.stats().host.unaccepted_buffer_bytes
            == 0),
        "still counted as nobody's: {:?}",
        net.server.stats().host
    );
    read_whole(flow, Vec::new(), &data);
    drop(writer.join().unwrap());
}

/// A program that takes a delivered flow and then leaves it alone (reads
/// nothing, writes nothing, its socket not full) leaves it counted as
/// not accepted, but charging its listener nothing: what the peer sent
/// went down into the flow's socket, and the flow's buffers, empty, are
/// given back at the next trim. Only what does not fit the socket would
/// stay in them, and a full socket has the pump look at the accept queue
/// and count the flow as the program's (the test above).
#[test]
fn a_taken_flow_left_alone_charges_its_listener_nothing() {
    let net = InProcessPair::new("deliver-taken-idle");
    let (mut owner, listener) = listen(&net.server, "de1e/16");
    let queue = deliver(&mut owner, listener);
    let mut stream = connect(&net.client, "de1e01".parse().unwrap());
    stream.write_all(&common::pattern(8 << 10, 5)).unwrap();
    let host = || net.server.stats().host;
    assert!(
        testnet::wait_until(WITHIN, || host().unaccepted_buffer_bytes > 0),
        "the request was never held: {:?}",
        host()
    );
    let Taken::Flow(_, flow) = take(&queue) else {
        panic!("the accept queue ended");
    };
    assert!(
        testnet::wait_until(WITHIN, || host().unaccepted_buffer_bytes == 0),
        "still charged to the listener: {:?}",
        host()
    );
    assert_eq!(host().buffer_bytes, 0, "the flow holds nothing");
    assert_eq!(unread(&flow), 8 << 10, "the request waits in the socket");
}

/// Once the program is seen to take a delivered flow (here by reading
/// from it), sald's end gets its usual send buffer back: a bulk flow does
/// not run through a socket sized for flows nobody took.
#[test]
fn a_delivered_flow_its_program_reads_gets_its_socket_buffer_back() {
    let net = InProcessPair::new("deliver-socket-back");
    let Upload {
        _owner,
        writer,
        mut flow,
        data,
    } = upload_unread(&net, "de1b");
    let small = unread_at_rest(&flow);
    let mut got = vec![0u8; 64 << 10];
    flow.set_read_timeout(Some(WITHIN)).unwrap();
    flow.read_exact(&mut got).unwrap();
    // The client's retransmissions fill it, past what it held before.
    let grown = testnet::wait_until(WITHIN, || unread(&flow) > 2 * UNTAKEN_SOCKET_BYTES);
    assert!(grown, "{small} bytes in the socket, then {}", unread(&flow));
    read_whole(flow, got, &data);
    drop(writer.join().unwrap());
}
