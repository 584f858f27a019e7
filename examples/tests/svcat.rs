//! svcat end to end: two svcat processes joined by a fake sald that pairs
//! each `Connect` with a pending `Accept` through a socketpair.

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{
    recv, send, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use sal::proto::{DatagramPeer, FlowCounters, FlowInfo, FlowState, Role};
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId};
use sal_control::{
    decode_body, encode_frame, frame_len, DatagramFrame, ErrorKind, FlowNotice, Request, Response,
    PROTOCOL_VERSION,
};

struct FakeSald {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Flows waiting to be accepted: the server end of each connected pair.
type Pending = Arc<Mutex<Receiver<(ServiceId, OwnedFd)>>>;

impl FakeSald {
    /// Connects to services under `bound` succeed once something listens;
    /// others fail with NoRoute.
    fn start() -> FakeSald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = channel();
        let pending: Pending = Arc::new(Mutex::new(rx));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (tx, pending) = (tx.clone(), pending.clone());
                thread::spawn(move || serve(conn, tx, pending));
            }
        });
        FakeSald { path, _dir: dir }
    }
}

fn flow(id: u32, service: ServiceId, role: Role) -> FlowInfo {
    FlowInfo {
        flow: FlowId::new(id).unwrap(),
        peer_flow: None,
        service,
        protocol: TransportProtocol::Stream,
        role,
        state: FlowState::Established,
        local: "10.0.0.1".parse().unwrap(),
        remote: Some("10.0.0.2".parse().unwrap()),
        interface: None,
        counters: FlowCounters::default(),
        migrations: 0,
        peer_moves: 0,
        last_migration_us_ago: None,
    }
}

fn serve(mut conn: UnixStream, connected: Sender<(ServiceId, OwnedFd)>, pending: Pending) {
    loop {
        let mut prefix = [0u8; 4];
        if conn.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut body = vec![0u8; frame_len(prefix).unwrap()];
        conn.read_exact(&mut body).unwrap();
        let request: Request = decode_body(&body).unwrap();
        let (response, fd) = match request {
            Request::Hello { .. } => (
                Response::Hello {
                    version: PROTOCOL_VERSION,
                    server: "fake".into(),
                },
                None,
            ),
            Request::Listen {
                protocol: TransportProtocol::Datagram,
                ..
            } => (
                Response::Listening {
                    listener: ListenerId(2),
                    socket: FlowId::new(6),
                },
                Some(datagram_listener()),
            ),
            Request::Listen { .. } => (
                Response::Listening {
                    listener: ListenerId(1),
                    socket: None,
                },
                None,
            ),
            Request::Connect {
                service,
                protocol: TransportProtocol::Datagram,
                ..
            } if service.as_bytes()[0] == 0xbe => (
                Response::Connected {
                    flow: flow(3, service, Role::Client),
                },
                Some(datagram_flow_echo()),
            ),
            Request::Connect {
                protocol: TransportProtocol::Datagram,
                ..
            } => (
                Response::error(ErrorKind::Refused, "connection refused"),
                None,
            ),
            Request::Connect { service, .. } if service.as_bytes()[0] == 0xbe => {
                let (client, server) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .unwrap();
                connected.send((service, server)).unwrap();
                (
                    Response::Connected {
                        flow: flow(1, service, Role::Client),
                    },
                    Some(client),
                )
            }
            Request::Connect { service, .. } => (
                Response::error(ErrorKind::NoRoute, format!("no rule resolves {service}")),
                None,
            ),
            Request::OpenDatagram => (
                Response::DatagramOpened {
                    socket: FlowId::new(5).unwrap(),
                },
                Some(datagram_echo()),
            ),
            Request::Accept {
                listener: ListenerId(2),
                ..
            } if !DATAGRAM_FLOW_TAKEN.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                let (client, server) = seqpacket_pair();
                // The client says one thing and closes the flow.
                send(client.as_raw_fd(), b"over a flow\n", MsgFlags::empty()).unwrap();
                drop(client);
                (
                    Response::Accepted {
                        flow: flow(4, "be01".parse().unwrap(), Role::Server),
                    },
                    Some(server),
                )
            }
            Request::Accept {
                listener: ListenerId(2),
                ..
            } => (
                Response::error(ErrorKind::NotFound, "listener closed"),
                None,
            ),
            Request::Deliver { listener, .. } => {
                // Stream flows go into the listener's accept queue as
                // sald delivers them.
                let (queue, app) = seqpacket_pair();
                let pending = pending.clone();
                thread::spawn(move || {
                    while let Ok((service, server)) = pending.lock().unwrap().recv() {
                        let notice = FlowNotice {
                            info: flow(2, service, Role::Server),
                        }
                        .encode();
                        let fds = [server.as_raw_fd()];
                        let sent = sendmsg::<()>(
                            queue.as_raw_fd(),
                            &[IoSlice::new(&notice)],
                            &[ControlMessage::ScmRights(&fds)],
                            MsgFlags::empty(),
                            None,
                        );
                        if sent.is_err() {
                            return;
                        }
                    }
                });
                (Response::Delivering { listener }, Some(app))
            }
            _ => (Response::Ok, None),
        };
        let frame = encode_frame(&response).unwrap();
        match fd {
            None => conn.write_all(&frame).unwrap(),
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                sendmsg::<()>(
                    conn.as_raw_fd(),
                    &[IoSlice::new(&frame)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .unwrap();
            }
        }
    }
}

/// The one connected flow of the datagram listener went out (later accepts
/// fail).
static DATAGRAM_FLOW_TAKEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A datagram listener's socket: one unconnected datagram arrives.
fn datagram_listener() -> OwnedFd {
    let (ours, theirs) = seqpacket_pair();
    let frame = DatagramFrame::Received {
        peer: DatagramPeer {
            locator: "10.0.0.2".parse().unwrap(),
            flow: FlowId::new(9).unwrap(),
            service: Some("0006".parse().unwrap()),
        },
        service: Some("be01".parse().unwrap()),
        data: b"unconnected\n".to_vec(),
    };
    send(ours.as_raw_fd(), &frame.encode(), MsgFlags::empty()).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(1..) = recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {}
    });
    theirs
}

/// A connected datagram flow whose far end answers each datagram with it
/// reversed, and closes (its FIN) when the client finished sending.
fn datagram_flow_echo() -> OwnedFd {
    let (ours, theirs) = seqpacket_pair();
    thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            buf[..n].reverse();
            send(ours.as_raw_fd(), &buf[..n], MsgFlags::empty()).unwrap();
        }
    });
    theirs
}

/// A datagram socket whose far end answers each `SendTo` with a `Received`
/// frame carrying the payload reversed (a refusal for service `dead`).
fn datagram_echo() -> OwnedFd {
    let (ours, theirs) = seqpacket_pair();
    thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let DatagramFrame::SendTo {
                service, mut data, ..
            } = DatagramFrame::decode(&buf[..n]).unwrap()
            else {
                panic!("expected SendTo");
            };
            if service == "dead".parse().unwrap() {
                let refused = DatagramFrame::Refused.encode();
                send(ours.as_raw_fd(), &refused, MsgFlags::empty()).unwrap();
                continue;
            }
            data.reverse();
            let frame = DatagramFrame::Received {
                peer: DatagramPeer {
                    locator: "10.0.0.2".parse().unwrap(),
                    flow: FlowId::new(9).unwrap(),
                    service: None,
                },
                service: Some(service),
                data,
            };
            send(ours.as_raw_fd(), &frame.encode(), MsgFlags::empty()).unwrap();
        }
    });
    theirs
}

/// A connected pair of `SOCK_SEQPACKET` sockets (datagram sockets and flows
/// are handed over as one end of such a pair).
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fn svcat(control: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_svcat"));
    command
        .arg("--control")
        .arg(control)
        .args(args)
        .env_remove("SERVAL_CONTROL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Feeds `input` to the child's stdin (then closes it) and collects its output.
fn finish(mut child: Child, input: Vec<u8>) -> Output {
    let mut stdin = child.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    output
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn listen_and_connect_exchange_files_both_ways() {
    let sald = FakeSald::start();
    let listener = svcat(&sald.path, &["listen", "beef"]).spawn().unwrap();
    thread::sleep(Duration::from_millis(100));
    let client = svcat(&sald.path, &["connect", "beef"]).spawn().unwrap();
    let to_server = data(3 << 20, 1);
    let to_client = data(2 << 20, 2);
    let (a, b) = (to_client.clone(), to_server.clone());
    let server_thread = thread::spawn(move || finish(listener, a));
    let client_out = finish(client, b);
    let server_out = server_thread.join().unwrap();
    assert!(client_out.status.success(), "{client_out:?}");
    assert!(server_out.status.success(), "{server_out:?}");
    assert!(server_out.stdout == to_server, "server got wrong bytes");
    assert!(client_out.stdout == to_client, "client got wrong bytes");
}

#[test]
fn listen_k_serves_connections_one_after_another() {
    let sald = FakeSald::start();
    let mut listener = svcat(&sald.path, &["-v", "listen", "-k", "be/8"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Follow the listener's reports to know when each connection is over.
    let stderr = BufReader::new(listener.stderr.take().unwrap());
    let (closed_tx, closed_rx) = channel();
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.ends_with(" closed") {
                let _ = closed_tx.send(line);
            }
        }
    });
    for i in 0..3u8 {
        let client = svcat(&sald.path, &["connect", "beef"]).spawn().unwrap();
        let output = finish(client, vec![b'a' + i; 10]);
        assert!(output.status.success(), "{output:?}");
        closed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the listener did not finish the connection");
    }
    assert!(listener.try_wait().unwrap().is_none(), "-k listener exited");
    listener.kill().unwrap();
    let output = listener.wait_with_output().unwrap();
    assert_eq!(output.stdout, b"aaaaaaaaaabbbbbbbbbbcccccccccc");
}

#[test]
fn errors_are_one_line() {
    let sald = FakeSald::start();
    let output = finish(
        svcat(&sald.path, &["connect", "4001"]).spawn().unwrap(),
        vec![],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "svcat: cannot connect to 4001: no rule resolves 4001\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let output = finish(
        svcat(&missing, &["listen", "beef"]).spawn().unwrap(),
        vec![],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "svcat: sald is not running (no control socket at {})\n",
            missing.display()
        )
    );

    let output = finish(
        svcat(&missing, &["connect", "xyz"]).spawn().unwrap(),
        vec![],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("svcat: invalid value 'xyz'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
}

/// The listener says hello and is killed while the client's stdin stays
/// open. The fake sald hands the two a direct socketpair, so the client's
/// end hangs up with its end of file, as when sald shuts down a flow that
/// was reset (see `socket_shim::reset`): the client reports the reset and
/// exits, rather than taking it for an orderly end or waiting for stdin.
#[test]
fn connect_exits_when_the_flow_is_reset_even_if_stdin_stays_open() {
    let sald = FakeSald::start();
    let mut listener = svcat(&sald.path, &["listen", "beef"]).spawn().unwrap();
    thread::sleep(Duration::from_millis(100));
    let mut client = svcat(&sald.path, &["connect", "beef"]).spawn().unwrap();
    let mut to_client = listener.stdin.take().unwrap();
    to_client.write_all(b"bye\n").unwrap();
    let mut line = [0u8; 4];
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"bye\n");
    listener.kill().unwrap();
    listener.wait().unwrap();
    for _ in 0..50 {
        if let Some(status) = client.try_wait().unwrap() {
            assert_eq!(status.code(), Some(1), "{status:?}");
            let mut stderr = String::new();
            client
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(stderr.contains("reset"), "{stderr}");
            drop(to_client);
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    client.kill().unwrap();
    panic!("svcat connect kept running after its flow was reset");
}

#[test]
fn udp_connect_opens_a_datagram_flow() {
    let sald = FakeSald::start();
    let client = svcat(&sald.path, &["-u", "connect", "beef"])
        .spawn()
        .unwrap();
    let output = finish(client, b"abc".to_vec());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"cba");
    // A service that refuses the flow.
    let output = finish(
        svcat(&sald.path, &["-u", "connect", "d00d"])
            .spawn()
            .unwrap(),
        vec![],
    );
    fails_with(
        output,
        "svcat: cannot connect to d00d: connection refused\n",
    );
}

/// A one-line error and status 1.
fn fails_with(output: Output, message: &str) {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(String::from_utf8(output.stderr).unwrap(), message);
}

#[test]
fn udp_connect_unconnected_sends_datagrams_and_prints_replies() {
    let sald = FakeSald::start();
    let client = svcat(
        &sald.path,
        &["-u", "connect", "--unconnected", "-w", "1", "beef"],
    )
    .spawn()
    .unwrap();
    let output = finish(client, b"abc".to_vec());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"cba");
    // A refusal ends it: one line, status 1.
    let output = finish(
        svcat(&sald.path, &["connect", "--unconnected", "dead"])
            .spawn()
            .unwrap(),
        b"x".to_vec(),
    );
    fails_with(output, "svcat: dead: connection refused\n");
}

#[test]
fn udp_listen_takes_flows_and_unconnected_datagrams() {
    let sald = FakeSald::start();
    let mut listener = svcat(&sald.path, &["-u", "listen", "be01"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = listener.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "svcat stopped early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    listener.kill().unwrap();
    listener.wait().unwrap();
    let mut lines: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
    lines.sort();
    assert_eq!(lines, [&b"over a flow\n"[..], b"unconnected\n"]);
}
