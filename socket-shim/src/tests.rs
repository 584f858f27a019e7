//! End-to-end tests of the client against a tiny fake sald living in the test:
//! framing, descriptor passing, error mapping.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recv, send, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use sal::proto::{DatagramPeer, FlowCounters, FlowInfo, FlowState, Role};
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId};
use sal_control::{
    decode_body, encode_frame, frame_len, DatagramFrame, ErrorKind, FlowNotice, Request, Response,
    ACCEPT_EXHAUSTED, PROTOCOL_VERSION,
};

use crate::{ControlClient, Error, ServiceDatagram, ServiceListener, ServiceStream};

/// What the fake server does with one request.
enum Action {
    Reply(Response),
    /// Reply and pass a descriptor with the first byte of the frame.
    ReplyWithFd(Response, OwnedFd),
    /// Like `ReplyWithFd`, but dribble the frame out a few bytes at a time.
    Dribble(Response, OwnedFd),
    /// Close the connection without answering.
    Close,
}

type Handler = dyn Fn(&Request) -> Action + Send + Sync;

/// A fake sald: accepts on a temporary socket path, one thread per client.
struct FakeSald {
    path: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Number of client connections that ended (EOF seen).
    closed: Arc<Mutex<usize>>,
    _dir: tempfile::TempDir,
}

impl FakeSald {
    fn start(handler: impl Fn(&Request) -> Action + Send + Sync + 'static) -> FakeSald {
        FakeSald::start_with_hello(Some(PROTOCOL_VERSION), handler)
    }

    /// `hello`: the version to answer `Hello` with, or `None` to hang up on it.
    fn start_with_hello(
        hello: Option<u32>,
        handler: impl Fn(&Request) -> Action + Send + Sync + 'static,
    ) -> FakeSald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(0));
        let (reqs, clos) = (requests.clone(), closed.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (handler, reqs, clos) = (handler.clone(), reqs.clone(), clos.clone());
                thread::spawn(move || serve(conn, hello, &*handler, &reqs, &clos));
            }
        });
        FakeSald {
            path,
            requests,
            closed,
            _dir: dir,
        }
    }

    fn client(&self) -> ControlClient {
        ControlClient::connect_as(&self.path, "test").unwrap()
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn closed(&self) -> usize {
        *self.closed.lock().unwrap()
    }
}

fn serve(
    mut conn: UnixStream,
    hello: Option<u32>,
    handler: &Handler,
    reqs: &Mutex<Vec<Request>>,
    closed: &Mutex<usize>,
) {
    loop {
        let mut prefix = [0u8; 4];
        if conn.read_exact(&mut prefix).is_err() {
            *closed.lock().unwrap() += 1;
            return;
        }
        let mut body = vec![0u8; frame_len(prefix).unwrap()];
        conn.read_exact(&mut body).unwrap();
        let request: Request = decode_body(&body).unwrap();
        reqs.lock().unwrap().push(request.clone());
        let action = match (&request, hello) {
            (Request::Hello { .. }, Some(version)) => Action::Reply(Response::Hello {
                version,
                server: "fake-sald".into(),
            }),
            (Request::Hello { .. }, None) => Action::Close,
            _ => handler(&request),
        };
        match action {
            Action::Reply(response) => conn.write_all(&encode_frame(&response).unwrap()).unwrap(),
            Action::ReplyWithFd(response, fd) => {
                let frame = encode_frame(&response).unwrap();
                send_with_fd(&conn, &frame, &fd);
            }
            Action::Dribble(response, fd) => {
                let frame = encode_frame(&response).unwrap();
                send_with_fd(&conn, &frame[..1], &fd);
                for piece in frame[1..].chunks(3) {
                    thread::sleep(Duration::from_millis(1));
                    conn.write_all(piece).unwrap();
                }
            }
            Action::Close => return,
        }
    }
}

fn send_with_fd(conn: &UnixStream, bytes: &[u8], fd: &OwnedFd) {
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

fn flow_info(service: ServiceId, role: Role) -> FlowInfo {
    FlowInfo {
        flow: FlowId::new(7).unwrap(),
        peer_flow: FlowId::new(9),
        service,
        protocol: TransportProtocol::Stream,
        role,
        state: FlowState::Established,
        local: "10.0.0.1".parse().unwrap(),
        remote: Some("10.0.0.2".parse().unwrap()),
        interface: Some("eth0".into()),
        counters: FlowCounters::default(),
        migrations: 0,
        peer_moves: 0,
        last_migration_us_ago: None,
    }
}

/// A stream socketpair whose far end echoes everything and then half-closes.
fn echo_flow() -> OwnedFd {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    thread::spawn(move || {
        let mut socket = UnixStream::from(ours);
        let mut buf = [0u8; 8192];
        loop {
            match socket.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if socket.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = socket.shutdown(std::net::Shutdown::Write);
    });
    theirs
}

fn echo_server() -> FakeSald {
    FakeSald::start(|request| match request {
        Request::Connect { service, .. } => Action::ReplyWithFd(
            Response::Connected {
                flow: flow_info(*service, Role::Client),
            },
            echo_flow(),
        ),
        _ => Action::Reply(Response::Ok),
    })
}

/// Waits up to a second for `condition`.
fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn beef() -> ServiceId {
    "beef".parse().unwrap()
}

#[test]
fn connect_writes_reads_back_and_sees_eof() {
    let sald = echo_server();
    let mut stream = ServiceStream::connect_via(sald.client(), beef(), None).unwrap();
    assert_eq!(stream.flow_info().service, beef());
    // The flow lives on its own socket: the control connection is done.
    wait_until(|| sald.closed() == 1);
    assert_eq!(sald.closed(), 1);
    assert_eq!(stream.flow_id(), FlowId::new(7).unwrap());
    stream.write_all(b"hello, service").unwrap();
    stream.shutdown_write().unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"hello, service");
    let requests = sald.requests();
    assert!(matches!(&requests[0], Request::Hello { version, client }
        if *version == PROTOCOL_VERSION && client == "test"));
    assert_eq!(
        requests[1],
        Request::Connect {
            service: beef(),
            protocol: TransportProtocol::Stream,
            timeout_ms: None
        }
    );
}

#[test]
fn large_transfer_in_both_directions_at_once() {
    let sald = echo_server();
    let stream =
        ServiceStream::connect_via(sald.client(), beef(), Some(Duration::from_secs(3))).unwrap();
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let echoed = thread::scope(|s| {
        s.spawn(|| {
            (&stream).write_all(&data).unwrap();
            stream.shutdown_write().unwrap();
        });
        let mut echoed = Vec::new();
        (&stream).read_to_end(&mut echoed).unwrap();
        echoed
    });
    assert!(echoed == data, "echoed data differs");
    assert!(matches!(
        sald.requests()[1],
        Request::Connect {
            timeout_ms: Some(3000),
            ..
        }
    ));
}

#[test]
fn a_frame_arriving_in_pieces_keeps_its_descriptor() {
    let sald = FakeSald::start(|request| match request {
        Request::Connect { service, .. } => Action::Dribble(
            Response::Connected {
                flow: flow_info(*service, Role::Client),
            },
            echo_flow(),
        ),
        _ => Action::Reply(Response::Ok),
    });
    let mut stream = ServiceStream::connect_via(sald.client(), beef(), None).unwrap();
    stream.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x");
}

#[test]
fn error_responses_become_typed_errors_with_errnos() {
    let cases = [
        (ErrorKind::NoRoute, Errno::EHOSTUNREACH),
        (ErrorKind::Refused, Errno::ECONNREFUSED),
        (ErrorKind::TimedOut, Errno::ETIMEDOUT),
        (ErrorKind::PermissionDenied, Errno::EACCES),
        (ErrorKind::AddressInUse, Errno::EADDRINUSE),
        (ErrorKind::NotFound, Errno::ENOENT),
    ];
    for (kind, errno) in cases {
        let sald = FakeSald::start(move |_| {
            Action::Reply(Response::error(kind, format!("{kind:?} for beef")))
        });
        let error = ServiceStream::connect_via(sald.client(), beef(), None).unwrap_err();
        assert_eq!(error.kind(), Some(kind));
        assert_eq!(error.errno(), errno as i32);
        assert_eq!(error.to_string(), format!("{kind:?} for beef"));
    }
    let sald = FakeSald::start(|_| Action::Reply(Response::error(ErrorKind::NoRoute, "none")));
    assert!(matches!(
        ServiceStream::connect_via(sald.client(), beef(), None),
        Err(Error::NoRoute(m)) if m == "none"
    ));
    assert!(matches!(
        ServiceListener::bind_via(sald.client(), beef(), 4),
        Err(Error::NoRoute(_))
    ));
}

#[test]
fn missing_or_dead_control_socket_means_daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sock");
    let error = ControlClient::connect_to(&missing).unwrap_err();
    assert!(matches!(&error, Error::DaemonNotRunning { path } if path == &missing));
    assert_eq!(
        error.to_string(),
        format!(
            "sald is not running (no control socket at {})",
            missing.display()
        )
    );
    // A socket file left behind by a dead daemon: ECONNREFUSED.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(matches!(
        ControlClient::connect_to(&stale),
        Err(Error::DaemonNotRunning { .. })
    ));
}

#[test]
fn hello_version_mismatch_and_early_close_are_reported() {
    let sald = FakeSald::start(|_| Action::Reply(Response::Ok));
    assert_eq!(sald.client().server(), "fake-sald");

    let future =
        FakeSald::start_with_hello(Some(PROTOCOL_VERSION + 1), |_| Action::Reply(Response::Ok));
    let error = ControlClient::connect_to(&future.path).unwrap_err();
    assert!(matches!(error, Error::VersionMismatch(_)), "{error}");
    assert_eq!(error.errno(), Errno::EPROTO as i32);

    let refusing = FakeSald::start_with_hello(None, |_| Action::Close);
    assert!(matches!(
        ControlClient::connect_to(&refusing.path),
        Err(Error::Closed)
    ));

    let closing = FakeSald::start(|_| Action::Close);
    assert!(matches!(
        ServiceStream::connect_via(closing.client(), beef(), None),
        Err(Error::Closed)
    ));
}

#[test]
fn a_connected_answer_without_descriptor_is_a_protocol_error() {
    let sald = FakeSald::start(|request| match request {
        Request::Connect { service, .. } => Action::Reply(Response::Connected {
            flow: flow_info(*service, Role::Client),
        }),
        _ => Action::Reply(Response::Ok),
    });
    let error = ServiceStream::connect_via(sald.client(), beef(), None).unwrap_err();
    assert!(matches!(error, Error::Protocol(_)), "{error}");
}

/// The fake sald's end of the accept queue its listener asked for.
type QueueEnd = Arc<Mutex<Option<OwnedFd>>>;

/// A fake sald whose listener (`ListenerId(3)`) gets an accept queue:
/// the test puts flows into it with [`queue_flow`]. `Drain` answers that
/// `sald_pending` flows are not accepted yet.
fn listener_server(sald_pending: u32) -> (FakeSald, QueueEnd) {
    let queue: QueueEnd = Arc::default();
    let ours = queue.clone();
    let sald = FakeSald::start(move |request| match request {
        Request::Listen { .. } => Action::Reply(Response::Listening {
            listener: ListenerId(3),
            socket: None,
        }),
        Request::Deliver { listener, .. } => {
            let (sald_end, app_end) = seqpacket_pair();
            *ours.lock().unwrap() = Some(sald_end);
            Action::ReplyWithFd(
                Response::Delivering {
                    listener: *listener,
                },
                app_end,
            )
        }
        Request::Drain { .. } => Action::Reply(Response::Drained {
            pending: sald_pending,
        }),
        _ => Action::Reply(Response::Ok),
    });
    (sald, queue)
}

/// Puts an echoing flow numbered `flow` into the accept queue, as sald
/// does: a flow notice with the flow's socket attached.
fn queue_flow(queue: &QueueEnd, flow: u32) {
    let mut info = flow_info(beef(), Role::Server);
    info.flow = FlowId::new(flow).unwrap();
    let notice = FlowNotice { info }.encode();
    let queue = queue.lock().unwrap();
    let fds = [echo_flow()];
    let raw = [fds[0].as_raw_fd()];
    sendmsg::<()>(
        queue.as_ref().expect("no accept queue").as_raw_fd(),
        &[IoSlice::new(&notice)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

fn bind_beef(sald: &FakeSald) -> ServiceListener {
    ServiceListener::bind_via(
        sald.client(),
        "beef/16".parse::<sal::ServicePrefix>().unwrap(),
        8,
    )
    .unwrap()
}

#[test]
fn listener_accepts_flows_and_unbinds_on_drop() {
    let (sald, queue) = listener_server(0);
    let listener = bind_beef(&sald);
    assert_eq!(listener.listener_id(), ListenerId(3));
    assert_eq!(listener.prefix().to_string(), "beef/16");
    assert!(listener.try_accept().unwrap().is_none(), "empty queue");
    for flow in [7, 8, 9] {
        queue_flow(&queue, flow);
    }
    for flow in [7, 8] {
        let (mut stream, info) = listener.accept().unwrap();
        assert_eq!(info.role, Role::Server);
        assert_eq!(info.flow.get(), flow);
        assert_eq!(stream.flow_info(), &info);
        let flags = nix::fcntl::fcntl(stream.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "close-on-exec");
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
    let stream = listener.incoming().next().unwrap().unwrap();
    assert_eq!(stream.service(), beef());
    assert!(listener.try_accept().unwrap().is_none());
    let requests = sald.requests();
    assert_eq!(
        requests[1..],
        [
            Request::Listen {
                prefix: "beef/16".parse().unwrap(),
                protocol: TransportProtocol::Stream,
                backlog: 8
            },
            Request::Deliver {
                listener: ListenerId(3),
                flow_info: true
            }
        ],
        "accepting asks sald nothing"
    );
    drop(listener);
    wait_until(|| sald.closed() == 1);
    assert_eq!(
        sald.closed(),
        1,
        "dropping the listener closes its control connection"
    );
    // The accepted flow outlives its listener.
    (&stream).write_all(b"still here").unwrap();
}

#[test]
fn accept_reports_exhaustion_and_the_end_of_the_queue() {
    let (sald, queue) = listener_server(0);
    let listener = Arc::new(bind_beef(&sald));
    send(
        queue.lock().unwrap().as_ref().unwrap().as_raw_fd(),
        &ACCEPT_EXHAUSTED,
        MsgFlags::empty(),
    )
    .unwrap();
    let exhausted = listener.accept().unwrap_err();
    assert!(matches!(exhausted, Error::Exhausted(_)), "{exhausted}");
    assert_eq!(exhausted.errno(), Errno::ENOBUFS as i32);
    queue_flow(&queue, 11);
    assert_eq!(listener.accept().unwrap().1.flow.get(), 11);
    // A thread waiting when sald closes the queue gets an error.
    let waiting = listener.clone();
    let (done, ended) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(waiting.accept().map(|(_, info)| info));
    });
    thread::sleep(Duration::from_millis(50));
    queue.lock().unwrap().take();
    let ended = ended
        .recv_timeout(Duration::from_secs(5))
        .expect("accept hung");
    assert!(matches!(ended, Err(Error::Closed)), "{ended:?}");
    assert!(matches!(listener.try_accept(), Err(Error::Closed)));
}

/// sald counts the flows waiting in the accept queue itself: the
/// listener's drain is its answer, with nothing added for the queue.
#[test]
fn drain_is_what_sald_counts() {
    let (sald, queue) = listener_server(2);
    let listener = bind_beef(&sald);
    assert_eq!(listener.drain().unwrap(), 2);
    for flow in [20, 21, 22] {
        queue_flow(&queue, flow);
    }
    assert_eq!(listener.drain().unwrap(), 2);
    listener.accept().unwrap();
    assert_eq!(listener.drain().unwrap(), 2);
}

/// A connected pair of `SOCK_SEQPACKET` sockets (datagram sockets and flows
/// are handed over as one end of such a pair).
pub(crate) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fn peer() -> DatagramPeer {
    DatagramPeer {
        locator: "udp:10.0.0.2:54325".parse().unwrap(),
        flow: FlowId::new(0x42).unwrap(),
        service: Some("0006".parse().unwrap()),
    }
}

/// A datagram socket whose far end answers each `SendTo` or `Reply` with a
/// `Received` frame carrying the same payload, and a `SendTo` with an
/// address (`via`) with a refusal.
fn datagram_echo() -> OwnedFd {
    let (ours, theirs) = seqpacket_pair();
    thread::spawn(move || {
        let mut buf = vec![0u8; 70000];
        loop {
            let n = match recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let frame = match DatagramFrame::decode(&buf[..n]).unwrap() {
                DatagramFrame::SendTo { via: Some(_), .. } => DatagramFrame::Refused,
                DatagramFrame::SendTo { service, data, .. } => DatagramFrame::Received {
                    peer: peer(),
                    service: Some(service),
                    data,
                },
                DatagramFrame::Reply { data, .. } => DatagramFrame::Received {
                    peer: peer(),
                    service: None,
                    data,
                },
                other => panic!("app sent {other:?}"),
            };
            send(ours.as_raw_fd(), &frame.encode(), MsgFlags::empty()).unwrap();
        }
    });
    theirs
}

#[test]
fn datagrams_are_framed_both_ways() {
    let sald = FakeSald::start(|request| match request {
        Request::OpenDatagram => Action::ReplyWithFd(
            Response::DatagramOpened {
                socket: FlowId::new(5).unwrap(),
            },
            datagram_echo(),
        ),
        Request::Listen { .. } => Action::ReplyWithFd(
            Response::Listening {
                listener: ListenerId(1),
                socket: FlowId::new(6),
            },
            datagram_echo(),
        ),
        _ => Action::Reply(Response::Ok),
    });
    let socket = ServiceDatagram::open_via(sald.client()).unwrap();
    assert_eq!(socket.socket_id(), FlowId::new(5).unwrap());
    assert_eq!(socket.send_to(beef(), b"question").unwrap(), 8);
    let mut buf = [0u8; 64];
    let (len, from, service) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"question");
    assert_eq!(from, peer());
    assert_eq!(service, Some(beef()));
    // Too small a buffer truncates, as UDP does.
    socket.send_reply(peer(), b"answer").unwrap();
    let mut small = [0u8; 3];
    let (len, _, service) = socket.recv_from(&mut small).unwrap();
    assert_eq!((len, &small, service), (3, b"ans", None));
    // A refusal is an error of the next receive: ECONNREFUSED.
    let via = "10.0.0.2".parse().unwrap();
    socket.send_to_via(beef(), via, b"no").unwrap();
    let refused = socket.recv_from(&mut buf).unwrap_err();
    assert!(matches!(refused, Error::Refused(_)), "{refused:?}");
    assert_eq!(refused.errno(), Errno::ECONNREFUSED as i32);

    let error = socket
        .send_to(beef(), &[0; crate::MAX_DATAGRAM + 1])
        .unwrap_err();
    assert!(error.to_string().contains("1360-byte limit"), "{error}");

    let bound = ServiceDatagram::bind_via(sald.client(), beef()).unwrap();
    assert_eq!(bound.prefix(), Some(beef().into()));
    assert_eq!(bound.socket_id(), FlowId::new(6).unwrap());
    assert!(matches!(
        sald.requests().last(),
        Some(Request::Listen {
            protocol: TransportProtocol::Datagram,
            ..
        })
    ));
    assert!(
        socket.accept().is_err(),
        "an unbound socket accepts nothing"
    );
}

/// A datagram socketpair whose far end echoes each message, then closes.
fn datagram_flow_echo() -> OwnedFd {
    let (ours, theirs) = seqpacket_pair();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        if let Ok(n @ 1..) = recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            let _ = send(ours.as_raw_fd(), &buf[..n], MsgFlags::empty());
        }
    });
    theirs
}

#[test]
fn connected_datagram_flows_are_opened_and_accepted() {
    let sald = FakeSald::start(|request| match request {
        Request::Listen { .. } => Action::ReplyWithFd(
            Response::Listening {
                listener: ListenerId(2),
                socket: FlowId::new(6),
            },
            datagram_echo(),
        ),
        Request::Accept { .. } | Request::Connect { .. } => {
            let mut flow = flow_info(beef(), Role::Server);
            flow.protocol = TransportProtocol::Datagram;
            Action::ReplyWithFd(Response::Accepted { flow }, datagram_flow_echo())
        }
        _ => Action::Reply(Response::Ok),
    });
    let bound = ServiceDatagram::bind_via(sald.client(), beef()).unwrap();
    let flow = bound.accept().unwrap();
    assert_eq!(flow.flow_info().protocol, TransportProtocol::Datagram);
    assert!(matches!(
        sald.requests().last(),
        Some(Request::Accept {
            listener: ListenerId(2),
            nonblocking: false
        })
    ));
    assert_eq!(flow.send(b"hello serval").unwrap(), 12);
    let mut buf = [0u8; 64];
    assert_eq!(flow.recv(&mut buf).unwrap(), 12);
    assert_eq!(&buf[..12], b"hello serval");
    assert_eq!(flow.recv(&mut buf).unwrap(), 0, "the peer closed the flow");

    let flow = crate::ServiceDatagramFlow::connect_via(sald.client(), beef(), None).unwrap();
    assert!(matches!(
        sald.requests().last(),
        Some(Request::Connect {
            protocol: TransportProtocol::Datagram,
            ..
        })
    ));
    assert!(flow.send(&[0; crate::MAX_DATAGRAM + 1]).is_err());
}

#[cfg(feature = "tokio")]
mod async_api {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tokio::{
        AsyncControlClient, AsyncServiceDatagram, AsyncServiceListener, AsyncServiceStream,
    };

    async fn client(path: &Path) -> AsyncControlClient {
        AsyncControlClient::connect_as(path, "test").await.unwrap()
    }

    #[tokio::test]
    async fn async_stream_round_trip() {
        let sald = echo_server();
        let mut stream = AsyncServiceStream::connect_via(client(&sald.path).await, beef(), None)
            .await
            .unwrap();
        stream.write_all(b"async hello").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"async hello");

        let error = AsyncControlClient::connect_to(sald.path.with_extension("missing"))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::DaemonNotRunning { .. }));
    }

    #[tokio::test]
    async fn async_accept_survives_cancellation() {
        let (sald, queue) = listener_server(0);
        let listener = AsyncServiceListener::bind_via(client(&sald.path).await, beef(), 4)
            .await
            .unwrap();
        let early = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
        assert!(early.is_err(), "the first accept should time out");
        queue_flow(&queue, 31);
        queue_flow(&queue, 32);
        // Accepts given up at their first poll, taken or not: whatever
        // they did not return is still there for the next ones.
        let mut taken = Vec::new();
        for _ in 0..4 {
            if let Ok(accepted) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
                taken.push(accepted.unwrap().1.flow.get());
            }
        }
        while taken.len() < 2 {
            let (mut stream, info) =
                tokio::time::timeout(Duration::from_secs(5), listener.accept())
                    .await
                    .expect("a flow was lost")
                    .unwrap();
            assert_eq!(info.service, beef());
            stream.write_all(b"z").await.unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            assert_eq!(&byte, b"z");
            taken.push(info.flow.get());
        }
        assert_eq!(taken, [31, 32]);
        let after = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
        assert!(after.is_err(), "a flow accepted twice");
        assert!(!sald
            .requests()
            .iter()
            .any(|r| matches!(r, Request::Accept { .. })));
    }

    #[tokio::test]
    async fn async_datagrams() {
        let sald = FakeSald::start(|request| match request {
            Request::OpenDatagram => Action::ReplyWithFd(
                Response::DatagramOpened {
                    socket: FlowId::new(5).unwrap(),
                },
                datagram_echo(),
            ),
            _ => Action::Reply(Response::Ok),
        });
        let socket = AsyncServiceDatagram::open_via(client(&sald.path).await)
            .await
            .unwrap();
        socket.send_to(beef(), b"q").await.unwrap();
        let mut buf = [0u8; 16];
        let (len, from, service) = socket.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..len], from, service),
            (&b"q"[..], peer(), Some(beef()))
        );
    }
}
