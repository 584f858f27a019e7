//! sald's SYN relay to programs that drive their own SAL host over UDP
//! (`docs/in-process-sal.md`, stage 2): a program binds its service with
//! `Relay`, handing sald its UDP socket; sald forwards the service's SYNs
//! there, and routes its own programs' SYNs by its rules though it is no
//! router. Only the SYN passes the daemons: the two programs' hosts talk
//! directly after it, which the daemons' packet counters show.
//!
//! ```text
//!  client host 10.x.0.1                          server host 10.x.0.2
//!  client program ──SYN──> sald :7077 ──SYN──> sald :7077 ──SYN──> server program
//!  (0/0 to its sald)      (0/0 to the server's)  (relay: c0ec70/24)   (its own host)
//!        <════════════ SYN-ACK, data both ways, teardown: direct ════════════>
//! ```
//!
//! The programs are threads of this test, each with its own
//! `sal::proto::Host` on its own UDP socket (`common::program::Node`), in
//! the namespace of its host. Needs root for the namespaces and for
//! control connections as other users; skips loudly otherwise.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sal::proto::{ConnectError, Event, HostError};
use sal::table::{ListenerId, RuleOrigin, Target};
use sal::wire::TransportProtocol;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::{ControlEvent, ErrorKind, Request, Response};
use socket_shim::ControlClient;
use testnet::{require_root, Netns, TopologyBuilder};

mod common;
use common::program::Node;
use common::{pattern, InProcess, Sald, Scratch};

/// sald's UDP port on every host of these tests.
const PORT: u16 = 7077;
/// How long a program's exchange may take.
const LIMIT: Duration = Duration::from_secs(20);
/// Bytes each way: well over a hundred full-size segments.
const BYTES: usize = 200_000;

fn prefix() -> ServicePrefix {
    "c0ec70/24".parse().unwrap()
}

fn service() -> ServiceId {
    "c0ec7001".parse().unwrap()
}

fn udp(ip: Ipv4Addr, port: u16) -> Locator {
    Locator::Udp(SocketAddrV4::new(ip, port))
}

/// What a serving program does: binds its own host at `ip` (any port),
/// listens for `prefix` there, registers the prefix with the sald at
/// `control` as a relay to its socket (`Relay`), says where it is on
/// `ready`, accepts one flow and exchanges `out` for what the client sends
/// (see [`exchange`]). Returns what it received, and its control
/// connection, whose end unbinds the relay.
fn serve_one(
    ip: Ipv4Addr,
    control: &Path,
    ready: mpsc::Sender<Locator>,
    out: &[u8],
) -> (Vec<u8>, ControlClient) {
    let mut node = Node::bind(SocketAddrV4::new(ip, 0)).expect("UDP bind");
    let listener = (node.host)
        .listen(prefix(), TransportProtocol::Stream, 16)
        .expect("listen");
    let mut sald = ControlClient::connect_to(control).expect("control socket");
    let request = Request::Relay {
        prefix: prefix(),
        locator: None,
    };
    let reply = sald
        .request_with_fd(&request, node.socket())
        .expect("relay");
    let Response::Relaying { locator, .. } = reply.response else {
        panic!("not relaying: {:?}", reply.response);
    };
    assert_eq!(locator, node.local(), "sald relays to the program's socket");
    ready.send(locator).expect("test alive");
    let limit = Instant::now() + LIMIT;
    let flow = loop {
        if let Ok(flow) = node.host.accept(listener) {
            break flow;
        }
        assert!(Instant::now() < limit, "no connection came");
        node.turn(limit).expect("event loop");
    };
    let got = exchange(&mut node, flow, out, limit).expect("server's exchange");
    finish(&mut node, flow);
    (got, sald)
}

/// What a client program does: binds its own host at `ip` (any port) with
/// one rule, everything to its sald at `sald`, connects to [`service`] and
/// exchanges `out` for what the server sends. Returns what it received and
/// where the flow's peer was.
fn connect_one(ip: Ipv4Addr, sald: Locator, out: &[u8]) -> Result<(Vec<u8>, Locator), String> {
    let mut node = Node::bind(SocketAddrV4::new(ip, 0)).expect("UDP bind");
    node.host.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: sald,
            weight: 1,
        },
        0,
    );
    let limit = Instant::now() + LIMIT;
    let flow = connect(&mut node, limit)?;
    let peer = node.host.flow(flow).and_then(|f| f.remote);
    let got = exchange(&mut node, flow, out, limit)?;
    finish(&mut node, flow);
    Ok((got, peer.ok_or("no peer")?))
}

/// Connects `node` to [`service`]: the flow, once established.
fn connect(node: &mut Node, limit: Instant) -> Result<FlowId, String> {
    let now = node.now();
    node.host.advance_clock(now);
    let flow = (node.host)
        .connect(service(), TransportProtocol::Stream)
        .map_err(|e| e.to_string())?;
    node.flush().map_err(|e| e.to_string())?;
    loop {
        if Instant::now() >= limit {
            return Err("connect timed out".into());
        }
        node.turn(limit).map_err(|e| e.to_string())?;
        for event in &node.events {
            match *event {
                Event::Connected(f) if f == flow => return Ok(flow),
                Event::ConnectFailed(f, error) if f == flow => return Err(error.to_string()),
                _ => {}
            }
        }
    }
}

/// Sends `out` on `flow`, then shuts its sending down, while taking what
/// the peer sends until its end of stream; returns that.
fn exchange(node: &mut Node, flow: FlowId, out: &[u8], limit: Instant) -> Result<Vec<u8>, String> {
    let (mut sent, mut shut, mut eof) = (0, false, false);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while sent < out.len() {
            match node.host.send(flow, &out[sent..]) {
                Ok(0) | Err(HostError::WouldBlock) => break,
                Ok(n) => sent += n,
                Err(error) => return Err(format!("send: {error}")),
            }
        }
        if sent == out.len() && !shut {
            node.host.shutdown(flow).map_err(|e| e.to_string())?;
            shut = true;
        }
        while !eof {
            match node.host.recv(flow, &mut buf) {
                Ok(0) => eof = true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(HostError::WouldBlock) => break,
                Err(error) => return Err(format!("recv: {error}")),
            }
        }
        node.flush().map_err(|e| e.to_string())?;
        if shut && eof {
            return Ok(got);
        }
        if Instant::now() >= limit {
            return Err(format!(
                "exchange timed out: sent {sent}, got {}",
                got.len()
            ));
        }
        node.turn(limit).map_err(|e| e.to_string())?;
    }
}

/// Closes `flow` and runs `node` until the teardown is over (5 s at most).
fn finish(node: &mut Node, flow: FlowId) {
    let _ = node.host.close(flow);
    let limit = Instant::now() + Duration::from_secs(5);
    while node.host.flow_count() > 0 && Instant::now() < limit {
        if node.turn(limit).is_err() {
            break;
        }
    }
}

/// The rule of exactly `prefix` in the sald at `control`, if any.
fn rule_of(daemon: &impl Sald, prefix: ServicePrefix) -> Option<sal::table::Rule> {
    match daemon.request(Request::ListRules) {
        Response::Rules { rules, .. } => rules.into_iter().find(|r| r.prefix == prefix),
        other => panic!("no rules: {other:?}"),
    }
}

/// Events of the sald at `control`, as they come (a subscriber thread,
/// which ends with the daemon).
fn events(control: &Path) -> mpsc::Receiver<ControlEvent> {
    let mut events = ControlClient::connect_to(control)
        .expect("control socket")
        .subscribe()
        .expect("subscribe");
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(event) = events.next_event() {
            if send.send(event).is_err() {
                return;
            }
        }
    });
    receive
}

/// Waits (10 s at most) for `wanted` among `events`.
fn wait_event(events: &mpsc::Receiver<ControlEvent>, wanted: &ControlEvent) -> bool {
    let limit = Instant::now() + Duration::from_secs(10);
    while let Some(left) = limit.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if event == *wanted => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn programs_on_two_hosts_talk_directly_after_a_syn_both_salds_relayed() {
    require_root!();
    let net = TopologyBuilder::new("relay2h", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let dir = Scratch::new("relay2h");
    let (client_host, server_host) = (net.host(0), net.host(1));
    let client_ip = client_host.addr().expect("address");
    let server_ip = server_host.addr().expect("address");
    let start = |ns: &Netns, name: &str, ip: Ipv4Addr| {
        let bind = format!("{ip}:{PORT}");
        common::start_sald(ns, &[], &dir, name, &["--udp", bind.as_str(), "--relays"])
    };
    let client_sald = start(&client_host.ns, "client", client_ip);
    let server_sald = start(&server_host.ns, "server", server_ip);
    // The client's sald is no router: it forwards its programs' SYNs all
    // the same.
    client_sald.forward_to("0/0", udp(server_ip, PORT), 1);
    let registered = events(&server_sald.control);
    let (to_server, to_client) = (pattern(BYTES, 1), pattern(BYTES, 2));
    let (ready, server_at) = mpsc::channel();
    let control = server_sald.control.clone();
    let (server_got, server_control, client_result) = thread::scope(|s| {
        let server = s.spawn(|| {
            server_host
                .ns
                .run(|| serve_one(server_ip, &control, ready, &to_client))
                .expect("server namespace")
        });
        let server_locator = server_at
            .recv_timeout(Duration::from_secs(10))
            .expect("server registered");
        let client = client_host
            .ns
            .run(|| connect_one(client_ip, udp(client_ip, PORT), &to_server))
            .expect("client namespace");
        let (got, control) = server.join().expect("server program");
        (
            got,
            control,
            client.map(|(g, peer)| (g, peer, server_locator)),
        )
    });
    let (client_got, peer, server_locator) = client_result.expect("client program");
    assert!(client_got == to_client, "client: bytes differ");
    assert!(server_got == to_server, "server: bytes differ");
    assert_eq!(peer, server_locator, "the client's peer is the program");
    assert!(wait_event(
        &registered,
        &ControlEvent::Registered { prefix: prefix() }
    ));
    // The SYN went through both daemons, nothing much else: some 300 data
    // segments went by.
    for (name, daemon) in [("client", &client_sald), ("server", &server_sald)] {
        let stats = daemon.stats();
        assert_eq!(stats.host.forwarded, 1, "{name}'s sald: {:?}", stats.host);
        assert!(
            stats.link_rx <= 4 && stats.link_tx <= 4,
            "{name}'s sald carried more than the SYN: {} in, {} out",
            stats.link_rx,
            stats.link_tx
        );
    }
    let rule = rule_of(&server_sald, prefix()).expect("the relay's rule");
    let [entry] = rule.targets() else {
        panic!("{rule:?}");
    };
    assert!(matches!(entry.target, Target::Demux { .. }), "{rule:?}");
    assert_eq!(
        entry.origin,
        RuleOrigin::Relay {
            locator: server_locator
        }
    );
    // The relay lives as long as the program's control connection.
    drop(server_control);
    assert!(wait_event(
        &registered,
        &ControlEvent::Unregistered { prefix: prefix() }
    ));
    assert!(rule_of(&server_sald, prefix()).is_none());
    let refused = client_host
        .ns
        .run(|| connect_one(client_ip, udp(client_ip, PORT), b"late"))
        .expect("client namespace");
    assert_eq!(refused, Err(ConnectError::NoRoute.to_string()));
    drop((client_sald, server_sald, dir, net));
}

/// A sald in UDP mode in this process on `ip`, port [`PORT`].
fn in_process(dir: &Path, name: &str, ip: Ipv4Addr) -> (InProcess, PathBuf) {
    let mut config = common::udp_config(dir, name, ip);
    config.udp = Some(SocketAddrV4::new(ip, 0));
    config.relays = true;
    let daemon = InProcess::start(config);
    let control = daemon.control.clone();
    (daemon, control)
}

#[test]
fn a_program_reaches_one_beside_it_through_their_sald() {
    let dir = Scratch::new("relay1h");
    let ip = Ipv4Addr::new(127, 0, 0, 7);
    let (sald, control) = in_process(&dir, "sald", ip);
    let sald_at = sald.locator();
    // What a program asks before it drives its own host (the preload's
    // in-process mode): where sald is, and whether it relays.
    let reply = ControlClient::connect_to(&control)
        .and_then(|mut c| c.request(&Request::ListInterfaces))
        .expect("interfaces");
    let Response::Interfaces { interfaces, relays } = reply.response else {
        panic!("no interface list: {:?}", reply.response);
    };
    assert!(relays, "started with --relays");
    assert_eq!(interfaces[0].locator, sald_at);
    let (to_server, to_client) = (pattern(BYTES, 3), pattern(BYTES, 4));
    let (ready, server_at) = mpsc::channel();
    let (server_got, client_result, server_locator) = thread::scope(|s| {
        let server = s.spawn(|| serve_one(ip, &control, ready, &to_client));
        let server_locator = server_at
            .recv_timeout(Duration::from_secs(10))
            .expect("server registered");
        let client = connect_one(ip, sald_at, &to_server);
        let (got, _control) = server.join().expect("server program");
        (got, client, server_locator)
    });
    let (client_got, peer) = client_result.expect("client program");
    assert!(client_got == to_client, "client: bytes differ");
    assert!(server_got == to_server, "server: bytes differ");
    // The server answered the client's own port, not sald's, though both
    // are on one address.
    assert_eq!(peer, server_locator);
    let stats = sald.stats();
    assert_eq!(stats.host.forwarded, 1, "{:?}", stats.host);
    assert!(
        stats.link_rx <= 2 && stats.link_tx <= 2,
        "sald carried more than the SYN: {} in, {} out",
        stats.link_rx,
        stats.link_tx
    );
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

#[test]
fn a_relay_to_a_port_that_is_not_the_callers_is_refused() {
    require_root!();
    let dir = Scratch::new("relayown");
    let ip = Ipv4Addr::new(127, 0, 0, 8);
    let (sald, control) = in_process(&dir, "sald", ip);
    const USER: u32 = 65_533;
    // Another user's program, on a port of its own.
    let victim = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap();
    let victim_at = match victim.local_addr().unwrap() {
        std::net::SocketAddr::V4(addr) => Locator::Udp(addr),
        other => panic!("{other}"),
    };
    let own = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap();
    let own_at = match own.local_addr().unwrap() {
        std::net::SocketAddr::V4(addr) => Locator::Udp(addr),
        other => panic!("{other}"),
    };
    let relay = |locator| Request::Relay {
        prefix: prefix(),
        locator,
    };
    let mut user = common::client_as(&control, USER).expect("control socket");
    // Naming the victim's port with one's own socket, or with none.
    let named = user.request_with_fd(&relay(Some(victim_at)), own.as_fd());
    assert_eq!(kind_of(named), ErrorKind::PermissionDenied);
    assert_eq!(
        kind_of(user.request(&relay(Some(victim_at)))),
        ErrorKind::InvalidRequest
    );
    // An address that is not the host's (the socket listens on all).
    let any = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = any.local_addr().unwrap().port();
    let elsewhere = relay(Some(udp(Ipv4Addr::new(192, 0, 2, 1), port)));
    assert_eq!(
        kind_of(user.request_with_fd(&elsewhere, any.as_fd())),
        ErrorKind::PermissionDenied
    );
    // The victim's address and port, bound in a network namespace of
    // one's own (as an unprivileged user namespace allows): the socket's
    // name passes every check but the namespace's.
    let Locator::Udp(victim_addr) = victim_at else {
        unreachable!()
    };
    let foreign = std::thread::spawn(move || {
        use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a namespace");
        let udp = socket(
            AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("a socket");
        setsockopt(&udp, sockopt::IpFreebind, &true).expect("IP_FREEBIND");
        bind(
            udp.as_raw_fd(),
            &nix::sys::socket::SockaddrIn::from(victim_addr),
        )
        .expect("bind");
        udp
    })
    .join()
    .unwrap();
    assert_eq!(
        kind_of(user.request_with_fd(&relay(Some(victim_at)), foreign.as_fd())),
        ErrorKind::InvalidRequest
    );
    // Something that is no UDP socket.
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(
        kind_of(user.request_with_fd(&relay(None), file.as_fd())),
        ErrorKind::InvalidRequest
    );
    // The bind policy holds as for `Listen`: no prefix shorter than /16.
    let broad = Request::Relay {
        prefix: "c0/8".parse().unwrap(),
        locator: None,
    };
    assert_eq!(
        kind_of(user.request_with_fd(&broad, own.as_fd())),
        ErrorKind::PermissionDenied
    );
    assert!(rule_of(&sald, prefix()).is_none(), "nothing was bound");
    // Its own socket: relayed, and the relay has no accept queue.
    let reply = user
        .request_with_fd(&relay(None), own.as_fd())
        .expect("relay");
    let Response::Relaying { listener, locator } = reply.response else {
        panic!("{:?}", reply.response);
    };
    assert_eq!(locator, own_at);
    let accept = Request::Accept {
        listener,
        nonblocking: true,
    };
    assert_eq!(kind_of(user.request(&accept)), ErrorKind::InvalidRequest);
    // Bound: another user's bind of the prefix is refused.
    let mut other = common::client_as(&control, USER - 1).expect("control socket");
    let listen = Request::Listen {
        prefix: prefix(),
        protocol: TransportProtocol::Stream,
        backlog: 4,
    };
    assert_eq!(kind_of(other.request(&listen)), ErrorKind::AddressInUse);
    // Closed like any listener.
    close(&mut user, listener);
    assert!(rule_of(&sald, prefix()).is_none());
    drop(victim);
}

/// Closes one of `client`'s listeners.
fn close(client: &mut ControlClient, listener: ListenerId) {
    let closed = client.request(&Request::CloseListener { listener });
    assert!(matches!(closed.map(|r| r.response), Ok(Response::Ok)));
}

/// A UDP socket created as user `uid` (its owner: `setfsuid` on a thread
/// of its own, which changes no other thread's), with `SO_REUSEADDR` and
/// `SO_REUSEPORT` as asked, bound to `at`; the bind's error if it failed.
fn udp_as(
    uid: u32,
    at: SocketAddrV4,
    reuse_address: bool,
    reuse_port: bool,
) -> std::io::Result<UdpSocket> {
    thread::spawn(move || {
        use socket2::{Domain, Socket, Type};
        let before = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None);
        nix::unistd::setfsuid(before);
        let socket = socket?;
        socket.set_reuse_address(reuse_address)?;
        socket.set_reuse_port(reuse_port)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        socket.bind(&at.into())?;
        Ok(socket.into())
    })
    .join()
    .expect("socket thread")
}

fn port_of(socket: &UdpSocket) -> u16 {
    socket.local_addr().expect("bound").port()
}

/// Which of `sockets` got a datagram sent to `to` (the index).
fn receiver(sockets: &[&UdpSocket], to: SocketAddrV4) -> Option<usize> {
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"which", to).unwrap();
    let mut buf = [0u8; 8];
    (sockets.iter()).position(|s| s.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"which"))
}

/// What Linux allows across users on one UDP port (the relay's "whose
/// port" rests on it; `sald::udp_ports` documents it): another user may
/// bind a port in use only if both sockets set `SO_REUSEADDR` (checked on
/// the socket already bound at the moment of the bind), never through
/// `SO_REUSEPORT` (same user only); once co-bound, the more specific and
/// then the newer socket takes the port's datagrams.
#[test]
fn linux_lets_any_user_share_a_udp_port_only_through_so_reuseaddr() {
    require_root!();
    let (victim, other) = (65_530, 65_531);
    let ip = Ipv4Addr::new(127, 0, 0, 10);
    let at = |port| SocketAddrV4::new(ip, port);
    let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let in_use = |result: std::io::Result<UdpSocket>| {
        result.is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    };
    // No flags: nobody shares.
    let plain = udp_as(victim, at(0), false, false).unwrap();
    assert!(in_use(udp_as(other, at(port_of(&plain)), true, false)));
    // SO_REUSEPORT: the same user only.
    let grouped = udp_as(victim, at(0), false, true).unwrap();
    let port = port_of(&grouped);
    assert!(in_use(udp_as(other, at(port), false, true)));
    assert!(udp_as(victim, at(port), false, true).is_ok());
    // SO_REUSEADDR on both: any user, at the same address or a more
    // specific one, and the newcomer takes the datagrams.
    let shared = udp_as(victim, any(0), true, false).unwrap();
    let port = port_of(&shared);
    let thief = udp_as(other, at(port), true, false).expect("co-bound");
    assert_eq!(receiver(&[&shared, &thief], at(port)), Some(1));
    let same = udp_as(victim, at(0), true, false).unwrap();
    let port = port_of(&same);
    let thief = udp_as(other, at(port), true, false).expect("co-bound");
    assert_eq!(receiver(&[&same, &thief], at(port)), Some(1));
    // Only when both set it, at the time of the later bind.
    let only_victim = udp_as(victim, at(0), true, false).unwrap();
    assert!(in_use(udp_as(
        other,
        at(port_of(&only_victim)),
        false,
        false
    )));
    let cleared = udp_as(victim, at(0), true, false).unwrap();
    nix::sys::socket::setsockopt(&cleared, nix::sys::socket::sockopt::ReuseAddr, &false).unwrap();
    assert!(in_use(udp_as(other, at(port_of(&cleared)), true, false)));
    // Clearing it after the co-bind undoes nothing.
    let early = udp_as(victim, at(0), true, false).unwrap();
    let port = port_of(&early);
    let thief = udp_as(other, at(port), true, false).expect("co-bound");
    nix::sys::socket::setsockopt(&thief, nix::sys::socket::sockopt::ReuseAddr, &false).unwrap();
    nix::sys::socket::setsockopt(&early, nix::sys::socket::sockopt::ReuseAddr, &false).unwrap();
    assert_eq!(receiver(&[&early, &thief], at(port)), Some(1));
}

/// The relay's answer to the above: a socket with `SO_REUSEADDR` set is
/// refused (any user could share its port later), and so is one whose
/// port another user's socket already shares, whichever of the two users
/// asks: the one whose port the other co-bound (its relayed SYNs would go
/// to the other), or the one that co-bound (it would point its service at
/// the other's program). Once the port is its owner's alone, the relay
/// is taken, and nobody else can bind the port while sald keeps it.
#[test]
fn a_relay_to_a_port_another_user_shares_is_refused() {
    require_root!();
    let dir = Scratch::new("relayshare");
    let ip = Ipv4Addr::new(127, 0, 0, 9);
    let (_sald, control) = in_process(&dir, "sald", ip);
    let (owner, other) = (65_528u32, 65_529u32);
    let at = |port| SocketAddrV4::new(ip, port);
    let relay = Request::Relay {
        prefix: prefix(),
        locator: None,
    };
    let mut owner_client = common::client_as(&control, owner).expect("control socket");
    let mut other_client = common::client_as(&control, other).expect("control socket");
    let clear = |socket: &UdpSocket| {
        let option = nix::sys::socket::sockopt::ReuseAddr;
        nix::sys::socket::setsockopt(socket, option, &false).unwrap();
    };
    // SO_REUSEADDR set: refused, whoever else is there.
    let reusable = udp_as(owner, at(0), true, false).unwrap();
    assert_eq!(
        kind_of(owner_client.request_with_fd(&relay, reusable.as_fd())),
        ErrorKind::InvalidRequest
    );
    // Co-bound by another user, both flags cleared since: refused to
    // either of them.
    let port = port_of(&reusable);
    let thief = udp_as(other, at(port), true, false).expect("co-bound");
    clear(&reusable);
    clear(&thief);
    assert_eq!(
        kind_of(owner_client.request_with_fd(&relay, reusable.as_fd())),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind_of(other_client.request_with_fd(&relay, thief.as_fd())),
        ErrorKind::PermissionDenied
    );
    // Its owner's alone once the other's socket is gone; taken then.
    drop(thief);
    let reply = owner_client
        .request_with_fd(&relay, reusable.as_fd())
        .expect("relay");
    assert!(matches!(reply.response, Response::Relaying { .. }));
    let kept_out = udp_as(other, at(port), true, false);
    assert!(kept_out.is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse));
}

/// A relay whose program makes its port shareable afterwards, on its own
/// copy of the socket sald keeps (`SO_REUSEADDR` set again, or the socket
/// bound to a device), is ended within a look or two of sald's watch
/// (`sald::control::RELAY_WATCH_INTERVAL`): another user's socket could
/// otherwise share the port and take the service's first packets. A
/// relay whose socket stays as it was goes on. A connection whose only
/// listener was such a relay is an idle one again (closed after
/// `idle_secs` of silence, as an ordinary user's that holds nothing).
#[test]
fn a_relay_whose_program_makes_its_port_shareable_ends() {
    require_root!();
    let dir = Scratch::new("relaywatch");
    let ip = Ipv4Addr::new(127, 0, 0, 11);
    let mut config = common::udp_config(&dir, "sald", ip);
    config.udp = Some(SocketAddrV4::new(ip, 0));
    config.limits.idle_secs = 1;
    let sald = InProcess::start(config);
    let control = sald.control.clone();
    let user = 65_527u32;
    let relayed = |client: &mut ControlClient, name: &str| {
        let prefix: ServicePrefix = name.parse().unwrap();
        let socket = udp_as(user, SocketAddrV4::new(ip, 0), false, false).unwrap();
        let relay = Request::Relay {
            prefix,
            locator: None,
        };
        let reply = client
            .request_with_fd(&relay, socket.as_fd())
            .expect("relay");
        assert!(
            matches!(reply.response, Response::Relaying { .. }),
            "{name}"
        );
        (prefix, socket)
    };
    let mut client = common::client_as(&control, user).expect("control socket");
    let mut lone = common::client_as(&control, user).expect("control socket");
    let (reusable, reusable_socket) = relayed(&mut client, "c0ec71/24");
    let (on_device, on_device_socket) = relayed(&mut client, "c0ec72/24");
    let (kept, _kept_socket) = relayed(&mut client, "c0ec73/24");
    let (alone, alone_socket) = relayed(&mut lone, "c0ec74/24");
    for prefix in [reusable, on_device, kept, alone] {
        assert!(rule_of(&sald, prefix).is_some(), "{prefix} relayed");
    }
    for socket in [&reusable_socket, &alone_socket] {
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReuseAddr, &true).unwrap();
    }
    socket2::SockRef::from(&on_device_socket)
        .bind_device(Some(b"lo"))
        .expect("SO_BINDTODEVICE");
    let set = Instant::now();
    let bound = sald::control::RELAY_WATCH_INTERVAL * 2 + Duration::from_millis(500);
    let ended = |prefix| rule_of(&sald, prefix).is_none();
    while !(ended(reusable) && ended(on_device) && ended(alone)) && set.elapsed() < bound * 4 {
        thread::sleep(Duration::from_millis(50));
    }
    let took = set.elapsed();
    assert!(ended(reusable), "SO_REUSEADDR: relay still there");
    assert!(ended(on_device), "a device: relay still there");
    assert!(ended(alone), "SO_REUSEADDR: the lone relay still there");
    assert!(took <= bound, "ended after {took:?}, more than two looks");
    assert!(!ended(kept), "an unchanged relay goes on");
    assert_eq!(sald.stats().relays_ended, 3, "counted in the stats");
    // The connection that made them lives on, and may bind again.
    let (again, _again_socket) = relayed(&mut client, "c0ec71/24");
    assert!(!ended(again));
    // The lone relay's connection holds nothing now: after one more
    // request, its silence closes it.
    assert!(lone.request(&Request::ListRules).is_ok());
    thread::sleep(Duration::from_millis(2500));
    assert!(
        lone.request(&Request::ListRules).is_err(),
        "an idle connection that holds nothing stays open"
    );
    assert!(
        client.request(&Request::ListRules).is_ok(),
        "one with a relay is kept"
    );
}
