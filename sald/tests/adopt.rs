//! `Adopt` (`docs/in-process-sal.md`, stage 2): a program that drives its
//! own SAL host over UDP hands an established stream flow to its sald in
//! the middle of a transfer, as it will before `fork` or `exec`, and goes
//! on through the socketpair end sald answers with, as if it had connected
//! through sald; and sald refuses exports that are not the caller's, that
//! are malformed, or that its limits do not admit.
//!
//! ```text
//!  client program (its own host, udp:IP:p) ══ flow ══ server program (its own host)
//!      │ export, Adopt + its UDP socket                  ║
//!      ▼                                                 ║
//!  sald (udp:IP:q) ═══════ the same flow, moved by an RSYN ═╝
//!      │ socketpair end
//!      ▼
//!  client program (reads and writes the rest through the descriptor)
//! ```
//!
//! The programs are threads of this test, each with its own
//! `sal::proto::Host` on its own UDP socket (`common::program::Node`).
//! One hand-over runs on two hosts (network namespaces, the sald binary
//! on the client's); the others run sald in this process, in UDP mode on
//! a loopback address of its own. The namespaces, and the test of
//! per-user limits (a control connection as another user), need root;
//! they skip loudly otherwise.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sal::proto::{Event, FlowExport, HostError, NotExportable};
use sal::table::Target;
use sal::wire::TransportProtocol;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::{encode_frame, frame_len, ErrorKind, Request, Response, PROTOCOL_VERSION};
use sald::config::Config;
use socket_shim::ControlClient;
use testnet::{require_root, Netns, TopologyBuilder};

mod common;
use common::program::Node;
use common::{pattern, InProcess, Sald, Scratch};

/// How long a program's exchange may take.
const LIMIT: Duration = Duration::from_secs(20);
/// Bytes each way.
const BYTES: usize = 160_000;

fn prefix() -> ServicePrefix {
    "ad0b70/24".parse().unwrap()
}

fn service() -> ServiceId {
    "ad0b7001".parse().unwrap()
}

/// A sald in UDP mode in this process on `ip`, with relays (and so
/// adoption) on; `configure` changes its config first.
fn start_sald(dir: &Path, ip: Ipv4Addr, configure: impl FnOnce(&mut Config)) -> InProcess {
    let mut config = common::udp_config(dir, "sald", ip);
    config.udp = Some(SocketAddrV4::new(ip, 0));
    config.relays = true;
    configure(&mut config);
    InProcess::start(config)
}

/// A serving program on `ip`: listens for [`prefix`] in its own host, says
/// where on `ready`, and serves every flow it accepts: sends it `out` and
/// takes what the client sends until its end of stream, then closes it. Runs until `flows` flows are done or `stop`.
/// Returns what each flow received, in the order they ended.
fn serve(
    ip: Ipv4Addr,
    ready: mpsc::Sender<Locator>,
    out: &[u8],
    flows: usize,
    stop: &AtomicBool,
) -> Vec<Vec<u8>> {
    let mut node = Node::bind(SocketAddrV4::new(ip, 0)).expect("UDP bind");
    let listener = (node.host)
        .listen(prefix(), TransportProtocol::Stream, 16)
        .expect("listen");
    ready.send(node.local()).expect("test alive");
    struct Served {
        flow: FlowId,
        sent: usize,
        eof: bool,
        got: Vec<u8>,
    }
    let mut serving: Vec<Served> = Vec::new();
    let mut done = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let limit = Instant::now() + 3 * LIMIT;
    while done.len() < flows && !stop.load(Ordering::Relaxed) && Instant::now() < limit {
        while let Ok(flow) = node.host.accept(listener) {
            serving.push(Served {
                flow,
                sent: 0,
                eof: false,
                got: Vec::new(),
            });
        }
        let mut ended = Vec::new();
        for (i, s) in serving.iter_mut().enumerate() {
            while s.sent < out.len() {
                match node.host.send(s.flow, &out[s.sent..]) {
                    Ok(0) | Err(HostError::WouldBlock) => break,
                    Ok(n) => s.sent += n,
                    Err(_) => break,
                }
            }
            while !s.eof {
                match node.host.recv(s.flow, &mut buf) {
                    Ok(0) => s.eof = true,
                    Ok(n) => s.got.extend_from_slice(&buf[..n]),
                    Err(HostError::WouldBlock) => break,
                    Err(_) => s.eof = true,
                }
            }
            // Its end of stream only once the client's came: until then
            // the client may still hand the flow over (a closing flow
            // does not move).
            if s.eof && s.sent == out.len() {
                ended.push(i);
            }
        }
        for i in ended.into_iter().rev() {
            let s = serving.remove(i);
            let _ = node.host.close(s.flow);
            done.push(s.got);
        }
        node.flush().expect("flush");
        node.turn(Instant::now() + Duration::from_millis(50))
            .expect("event loop");
    }
    // The teardowns.
    let limit = Instant::now() + Duration::from_secs(3);
    while node.host.flow_count() > 0 && Instant::now() < limit {
        let _ = node.turn(limit);
    }
    done
}

/// A client program's host on `ip` whose one rule sends everything to the
/// server program at `server`, and a flow to [`service`] through it, once
/// established.
fn client(ip: Ipv4Addr, server: Locator) -> (Node, FlowId) {
    let mut node = Node::bind(SocketAddrV4::new(ip, 0)).expect("UDP bind");
    node.host.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: server,
            weight: 1,
        },
        0,
    );
    let now = node.now();
    node.host.advance_clock(now);
    let flow = (node.host)
        .connect(service(), TransportProtocol::Stream)
        .expect("connect");
    node.flush().expect("flush");
    let limit = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < limit, "connect timed out");
        node.turn(limit).expect("event loop");
        for event in &node.events {
            match *event {
                Event::Connected(f) if f == flow => return (node, flow),
                Event::ConnectFailed(f, error) if f == flow => panic!("connect: {error}"),
                _ => {}
            }
        }
    }
}

/// Exports `flow` from `node`, driving the host while the flow is busy
/// (its handshake's last ACK still repeated until the server speaks).
fn export(node: &mut Node, flow: FlowId) -> FlowExport {
    let limit = Instant::now() + LIMIT;
    loop {
        match node.host.export_flow(flow) {
            Ok(export) => return export,
            Err(HostError::NotExportable(NotExportable::Busy)) => {}
            Err(error) => panic!("export: {error}"),
        }
        assert!(Instant::now() < limit, "the flow stayed busy");
        node.turn(limit).expect("event loop");
    }
}

fn adopt(export: &FlowExport) -> Request {
    Request::Adopt {
        export: Box::new(export.clone()),
    }
}

/// The error kind of a failed request.
fn kind_of(result: socket_shim::Result<socket_shim::Reply>) -> ErrorKind {
    match result {
        Err(error) => error
            .kind()
            .unwrap_or_else(|| panic!("not refused by sald: {error}")),
        Ok(reply) => panic!("not refused: {:?}", reply.response),
    }
}

/// The flow sald adopted, and the application's end of it.
fn adopted(reply: socket_shim::Result<socket_shim::Reply>) -> (FlowId, UnixStream) {
    let reply = reply.expect("adopted");
    let Response::Adopted { flow } = reply.response else {
        panic!("not adopted: {:?}", reply.response);
    };
    (
        flow.flow,
        UnixStream::from(reply.fd.expect("the flow's descriptor")),
    )
}

/// Runs `f` in `ns`, or here.
fn in_ns<R: Send>(ns: Option<&Netns>, f: impl FnOnce() -> R + Send) -> R {
    match ns {
        Some(ns) => ns.run(f).expect("namespace"),
        None => f(),
    }
}

/// A client program on `ip` (in `client_ns`, sald's) connects to a server
/// program on `server_ip` (in `server_ns`), sends half its bytes and takes
/// a quarter of the server's, lets more pile up unread and leaves some
/// unsent, exports the flow and hands it to `sald`; then sends and takes
/// the rest through the descriptor sald answered with. Checks every byte
/// both ways, and that the export held bytes both ways.
fn hand_over_in_mid_transfer(
    sald: &impl Sald,
    (ip, client_ns): (Ipv4Addr, Option<&Netns>),
    (server_ip, server_ns): (Ipv4Addr, Option<&Netns>),
) {
    let control = sald.control_path().to_owned();
    let (to_server, to_client) = (pattern(BYTES, 5), pattern(BYTES, 6));
    let (ready, server_at) = mpsc::channel();
    let stop = AtomicBool::new(false);
    let (server_got, (client_got, sent_before, unread)) = thread::scope(|s| {
        let server = s.spawn(|| in_ns(server_ns, || serve(server_ip, ready, &to_client, 1, &stop)));
        let server_at = server_at.recv_timeout(Duration::from_secs(10)).unwrap();
        let client = in_ns(client_ns, || {
            let (mut node, flow) = client(ip, server_at);
            // Half the transfer both ways through the program's own host.
            let (mut sent, mut got) = (0, Vec::new());
            let mut buf = vec![0u8; 64 * 1024];
            let limit = Instant::now() + LIMIT;
            while sent < BYTES / 2 || got.len() < BYTES / 4 {
                assert!(Instant::now() < limit, "first half timed out");
                while sent < BYTES / 2 {
                    match node.host.send(flow, &to_server[sent..BYTES / 2]) {
                        Ok(0) | Err(HostError::WouldBlock) => break,
                        Ok(n) => sent += n,
                        Err(error) => panic!("send: {error}"),
                    }
                }
                while got.len() < BYTES / 4 {
                    match node.host.recv(flow, &mut buf) {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        Ok(_) => panic!("early end of stream"),
                        Err(HostError::WouldBlock) => break,
                        Err(error) => panic!("recv: {error}"),
                    }
                }
                node.flush().unwrap();
                node.turn(limit).unwrap();
            }
            // The server's bytes pile up unread for a while; then bytes
            // the host takes and has not sent yet (no flush before the
            // export).
            let pause = Instant::now() + Duration::from_millis(100);
            while Instant::now() < pause {
                node.turn(pause).unwrap();
            }
            let more = node
                .host
                .send(flow, &to_server[sent..sent + 20_000])
                .unwrap();
            sent += more;
            let export = export(&mut node, flow);
            let unread = export.socket.recv_buffer.len();
            assert!(unread > 0, "nothing unread at the export");
            assert!(
                export.socket.send_buffer.len() >= more,
                "the unsent bytes are in the export"
            );
            // The hand-over.
            let mut control = ControlClient::connect_to(&control).expect("control socket");
            let (id, mut stream) = adopted(control.request_with_fd(&adopt(&export), node.socket()));
            assert_eq!(id, flow, "sald keeps the flow's ID");
            drop(node);
            // The rest through the descriptor, as a forked child would.
            let rest = to_server[sent..].to_vec();
            let mut writer = stream.try_clone().unwrap();
            let writing = thread::spawn(move || {
                writer.write_all(&rest).unwrap();
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
            stream.read_to_end(&mut got).expect("the rest");
            writing.join().unwrap();
            (got, sent, unread)
        });
        (server.join().unwrap(), client)
    });
    assert_eq!(server_got.len(), 1, "the server's flow ended");
    assert!(server_got[0] == to_server, "server: bytes differ");
    assert!(
        client_got.len() == to_client.len() && client_got == to_client,
        "client: {} bytes of {}, or they differ",
        client_got.len(),
        to_client.len()
    );
    let stats = sald.stats();
    assert_eq!(stats.host.flows_imported, 1, "{:?}", stats.host);
    assert!(sent_before > BYTES / 2 && unread > 0);
}

#[test]
fn a_flow_handed_to_sald_in_mid_transfer_goes_on_byte_exact_both_ways() {
    let dir = Scratch::new("adopt-mid");
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    let sald = start_sald(&dir, ip, |_| {});
    hand_over_in_mid_transfer(&sald, (ip, None), (Ipv4Addr::new(127, 0, 0, 22), None));
}

/// The same across two hosts (network namespaces): the client program
/// and its sald on one, the server program on the other; sald is the
/// sald binary.
#[test]
fn a_flow_handed_to_sald_goes_on_to_a_program_on_another_host() {
    require_root!();
    let net = TopologyBuilder::new("adopt2h", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let dir = Scratch::new("adopt2h");
    let (client_host, server_host) = (net.host(0), net.host(1));
    let client_ip = client_host.addr().expect("address");
    let server_ip = server_host.addr().expect("address");
    let bind = format!("{client_ip}:7077");
    let sald = common::start_sald(
        &client_host.ns,
        &[],
        &dir,
        "sald",
        &["--udp", bind.as_str(), "--relays"],
    );
    hand_over_in_mid_transfer(
        &sald,
        (client_ip, Some(&client_host.ns)),
        (server_ip, Some(&server_host.ns)),
    );
    drop((sald, dir, net));
}

/// Sends raw bytes as one frame on `stream` and reads the one answer.
fn raw_exchange(stream: &mut UnixStream, body: &[u8]) -> Response {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(body).unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).unwrap();
    let mut answer = vec![0; frame_len(prefix).unwrap()];
    stream.read_exact(&mut answer).unwrap();
    sal_control::decode_body(&answer).unwrap()
}

#[test]
fn adopt_refuses_what_is_not_the_callers_or_malformed_and_sald_goes_on() {
    let dir = Scratch::new("adopt-refuse");
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    let server_ip = Ipv4Addr::new(127, 0, 0, 24);
    let sald = start_sald(&dir, ip, |_| {});
    let (ready, server_at) = mpsc::channel();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let server = s.spawn(|| serve(server_ip, ready, b"hello", 1, &stop));
        let server_at = server_at.recv_timeout(Duration::from_secs(10)).unwrap();
        let (mut node, flow) = client(ip, server_at);
        let export = export(&mut node, flow);
        let mut control = ControlClient::connect_to(&sald.control).expect("control socket");
        // No socket.
        assert_eq!(
            kind_of(control.request(&adopt(&export))),
            ErrorKind::PermissionDenied
        );
        // Another program's socket (the flow is not its own), on the
        // same address; and something that is no UDP socket.
        let other = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap();
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&export), other.as_fd())),
            ErrorKind::PermissionDenied
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&export), file.as_fd())),
            ErrorKind::PermissionDenied
        );
        // With the right socket, exports that do not hold together: a
        // version this sald does not read, sequence numbers outside the
        // send buffer, a peer no flow can have.
        let mut bad = export.clone();
        bad.version = 999;
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&bad), node.socket())),
            ErrorKind::InvalidRequest
        );
        let mut bad = export.clone();
        bad.socket.recv_buffer = vec![0; 200_000];
        bad.socket.send_max = bad.socket.send_unacked.wrapping_sub(5);
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&bad), node.socket())),
            ErrorKind::InvalidRequest
        );
        let mut bad = export.clone();
        bad.peer = Locator::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 9));
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&bad), node.socket())),
            ErrorKind::InvalidRequest
        );
        // A frame that is no export at all: refused, and the connection
        // and sald go on.
        let mut raw = UnixStream::connect(&sald.control).unwrap();
        let hello = encode_frame(&Request::Hello {
            version: PROTOCOL_VERSION,
            client: "adopt-test".into(),
        })
        .unwrap();
        assert!(matches!(
            raw_exchange(&mut raw, &hello[4..]),
            Response::Hello { .. }
        ));
        let forged = br#"{"op":"adopt","export":{"version":2,"flow":"0","socket":[1,2]}}"#;
        assert!(matches!(
            raw_exchange(&mut raw, forged),
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                ..
            }
        ));
        assert!(matches!(
            raw_exchange(&mut raw, br#"{"op":"list_interfaces"}"#),
            Response::Interfaces { .. }
        ));
        // The real thing, with its own socket.
        let (id, stream) = adopted(control.request_with_fd(&adopt(&export), node.socket()));
        assert_eq!(id, flow);
        // Again: sald has a flow of that ID now.
        assert_eq!(
            kind_of(control.request_with_fd(&adopt(&export), node.socket())),
            ErrorKind::AddressInUse
        );
        assert!(sald.flow(id).is_some(), "sald serves the flow");
        drop(stream);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    });
    assert_eq!(sald.stats().host.flows_imported, 1);
}

#[test]
fn a_user_over_its_flow_limit_cannot_adopt() {
    require_root!();
    const USER: u32 = 65_531;
    let dir = Scratch::new("adopt-limit");
    let ip = Ipv4Addr::new(127, 0, 0, 25);
    let server_ip = Ipv4Addr::new(127, 0, 0, 26);
    let sald = start_sald(&dir, ip, |config| config.limits.flows_per_uid = 1);
    let (ready, server_at) = mpsc::channel();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let server = s.spawn(|| serve(server_ip, ready, b"hello", 2, &stop));
        let server_at = server_at.recv_timeout(Duration::from_secs(10)).unwrap();
        let (mut first, one) = client(ip, server_at);
        let (mut second, two) = client(ip, server_at);
        let (one, two) = (export(&mut first, one), export(&mut second, two));
        let mut user = common::client_as(&sald.control, USER).expect("control socket");
        let (_, held) = adopted(user.request_with_fd(&adopt(&one), first.socket()));
        assert_eq!(
            kind_of(user.request_with_fd(&adopt(&two), second.socket())),
            ErrorKind::Exhausted,
            "flows_per_uid = 1"
        );
        assert!(sald.flow(two.flow).is_none(), "nothing was imported");
        // Once the first is gone, the second fits.
        drop(held);
        let limit = Instant::now() + Duration::from_secs(10);
        let taken = loop {
            match user.request_with_fd(&adopt(&two), second.socket()) {
                Ok(reply) => break adopted(Ok(reply)),
                Err(error) if error.kind() == Some(ErrorKind::Exhausted) => {}
                Err(error) => panic!("{error}"),
            }
            assert!(
                Instant::now() < limit,
                "the first flow was never given back"
            );
            thread::sleep(Duration::from_millis(50));
        };
        drop(taken);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    });
}

/// An adopted flow's buffers are charged to its user's buffer budget
/// group as a connected flow's are, and an export whose buffers would
/// take the group past its budget is refused (`Exhausted`) before sald
/// takes anything. The flows here move toward a peer that never answers,
/// so that what they hold stays put: their unsent bytes wait for the
/// move's answer.
#[test]
fn adopt_is_held_to_the_callers_buffer_budget() {
    const KIB: usize = 1024;
    let dir = Scratch::new("adopt-budget");
    let ip = Ipv4Addr::new(127, 0, 0, 27);
    let server_ip = Ipv4Addr::new(127, 0, 0, 28);
    let sald = start_sald(&dir, ip, |config| {
        config.tcp.max_send_buffer = 128 * KIB;
        config.tcp.max_recv_buffer = 128 * KIB;
        config.tcp.buffer_memory_per_uid = Some(256 * KIB);
    });
    let (ready, server_at) = mpsc::channel();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let server = s.spawn(|| serve(server_ip, ready, b"hello", 1, &stop));
        let server_at = server_at.recv_timeout(Duration::from_secs(10)).unwrap();
        let (mut node, flow) = client(ip, server_at);
        let real = export(&mut node, flow);
        let mut control = ControlClient::connect_to(&sald.control).expect("control socket");
        let mut n = 0;
        let mut forged = |send: usize, recv: usize| {
            n += 1;
            let mut export = real.clone();
            export.flow = FlowId::new(real.flow.get() ^ n).unwrap();
            // Silent, not unbound: a port nobody holds would refuse the
            // move, and the flow would be reset a second later.
            export.peer = Locator::Udp(testnet::silent_hole());
            export.peer_locators.clear();
            export.socket.send_buffer = vec![1; send];
            export.socket.send_max = export.socket.send_unacked;
            export.socket.recv_buffer = vec![2; recv];
            adopt(&export)
        };
        // 128 KiB of the group's 256.
        let (_, first) = adopted(control.request_with_fd(&forged(120 * KIB, 0), node.socket()));
        // 256 more would not fit.
        let big = forged(120 * KIB, 120 * KIB);
        assert_eq!(
            kind_of(control.request_with_fd(&big, node.socket())),
            ErrorKind::Exhausted
        );
        assert_eq!(sald.stats().host.flows_imported, 1, "nothing taken");
        // A small one does.
        let (_, second) = adopted(control.request_with_fd(&forged(100, 0), node.socket()));
        drop((first, second));
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    });
}
