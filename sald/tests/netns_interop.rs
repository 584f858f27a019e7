//! The real sald in the forms the original Serval expects, on hosts built
//! from network namespaces (root only; skips loudly otherwise):
//!
//! - a `sald --forward` service router between two subnets, with strict
//!   reverse-path filtering: streams, connected datagram flows and
//!   unconnected datagrams in both directions; the SYN leaves the router
//!   with the client's address as source and one TTL less, packets a host
//!   originates leave it with TTL 64 (nftables counters on the wire); the
//!   fence still refuses non-SAL transit traffic;
//! - a broadcast SYN, the reference client's bytes from
//!   `reference-broadcast-syn.pcap` sent through a raw socket, answered;
//! - broadcast discovery: a host without rules finds a service by
//!   broadcasting its SYN (and datagrams), unless `--no-broadcast`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::Duration;

use sal::wire::{ipv4_payload, ControlFlags, SalPacket, SalRepr};
use sal::{FlowId, ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use socket_shim::{Error, ServiceDatagram, ServiceDatagramFlow, ServiceListener, ServiceStream};
use testnet::{require_root, Netns, TopologyBuilder};

mod common;
use common::{Daemon, Sald, Scratch};

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// What a daemon logged so far.
fn log(daemon: &Daemon) -> String {
    std::fs::read_to_string(&daemon.log).unwrap_or_default()
}

/// The counter of the nftables rule commented `name` in table `ip wire`.
fn counter(ns: &Netns, name: &str) -> u64 {
    let table = ns
        .exec_ok("nft", ["list", "table", "ip", "wire"])
        .expect("nft list");
    let line = table
        .lines()
        .find(|l| l.contains(&format!("comment \"{name}\"")))
        .unwrap_or_else(|| panic!("no rule {name}:\n{table}"));
    line.split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {line}"))
}

/// Counts, as they arrive on `ns`'s wire (before any forwarding), the SAL
/// packets from `from`: those with TTL `ttl`, those without, and the SYNs
/// (CONTROL flags byte 0x80 after a 20-byte IPv4 header) with TTL `ttl`.
fn count_ttls(ns: &Netns, from: Ipv4Addr, ttl: u8) {
    let script = format!(
        "table ip wire {{\n\
         \tchain pre {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tip protocol 144 ip saddr {from} ip ttl {ttl} counter comment \"ttl\"\n\
         \t\tip protocol 144 ip saddr {from} ip ttl != {ttl} counter comment \"other\"\n\
         \t\tip protocol 144 ip saddr {from} ip ttl {ttl} @nh,272,8 0x80 counter comment \"syn\"\n\
         \t}}\n\
         }}\n"
    );
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("nft");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft counters");
}

/// Whether a UDP datagram (not SAL) from `from`'s namespace reaches `to`.
fn udp_crosses(from: &Netns, to: &Netns, to_addr: Ipv4Addr) -> bool {
    let receiver = to
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 40_444)).expect("bind"))
        .expect("enter");
    receiver
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let sender = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"))
        .expect("enter");
    sender
        .send_to(b"transit", SocketAddrV4::new(to_addr, 40_444))
        .expect("send");
    let mut buf = [0u8; 16];
    receiver.recv_from(&mut buf).is_ok()
}

#[test]
fn a_service_router_between_two_subnets_carries_every_kind_of_flow() {
    require_root!();
    // client 10.1.0.1 — 10.1.0.2 router 10.1.1.1 — 10.1.1.2 server
    let net = TopologyBuilder::new("router", 3)
        .link(0, 1)
        .link(1, 2)
        .build()
        .unwrap();
    let (c, r, s) = (net.host(0), net.host(1), net.host(2));
    c.ns.ip(["route", "add", "10.1.1.0/24", "via", "10.1.0.2"])
        .unwrap();
    s.ns.ip(["route", "add", "10.1.0.0/24", "via", "10.1.1.1"])
        .unwrap();
    // Not an IP router; and strict reverse-path filtering, which drops a
    // relay with the client's source written into the TUN.
    r.ns.set_sysctl("net.ipv4.ip_forward", "0").unwrap();
    r.ns.set_sysctl("net.ipv4.conf.all.rp_filter", "2").unwrap();
    let (client_ip, server_ip) = (c.ifaces[0].addr, s.ifaces[0].addr);
    let dir = Scratch::new("interop-router");
    let client = common::start_sald(&c.ns, &["eth0"], &dir, "client", &[]);
    let router = common::start_sald(&r.ns, &["eth0", "eth1"], &dir, "router", &["--forward"]);
    let server = common::start_sald(&s.ns, &["eth0"], &dir, "server", &[]);
    client.forward("0/0", r.ifaces[0].addr, 1);
    router.forward("be/8", server_ip, 1);
    count_ttls(&r.ns, client_ip, 64);
    count_ttls(&s.ns, client_ip, 63);

    // A stream, both ways.
    let listener = ServiceListener::bind_via(server.client(), prefix("beef/16"), 8).unwrap();
    let echo = thread::spawn(move || {
        let (stream, info) = listener.accept().unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut &stream, &mut got).unwrap();
        std::io::Write::write_all(&mut &stream, b"world").unwrap();
        (info, got)
    });
    let stream = ServiceStream::connect_via(client.client(), svc("beef01"), WAIT)
        .unwrap_or_else(|e| panic!("connect through the router: {e}\n{}", log(&router)));
    std::io::Write::write_all(&mut &stream, b"hello").unwrap();
    let mut back = [0u8; 5];
    std::io::Read::read_exact(&mut &stream, &mut back).unwrap();
    let (info, got) = echo.join().unwrap();
    assert_eq!((&got, &back), (b"hello", b"world"));
    assert_eq!(info.remote, Some(sal::Locator::Ipv4(client_ip)));

    // A connected datagram flow, both ways.
    let bound = ServiceDatagram::bind_via(server.client(), prefix("be00/16")).unwrap();
    let accepted = thread::spawn(move || {
        let flow = bound.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = flow.recv(&mut buf).unwrap();
        flow.send(&buf[..n].to_ascii_uppercase()).unwrap();
        // The peer's FIN is end of file; then ours goes with the drop.
        flow.set_read_timeout(WAIT).unwrap();
        let eof = flow.recv(&mut buf).unwrap();
        (bound, eof)
    });
    let flow = ServiceDatagramFlow::connect_via(client.client(), svc("be0001"), WAIT).unwrap();
    flow.send(b"hello serval").unwrap();
    flow.set_read_timeout(WAIT).unwrap();
    let mut buf = [0u8; 64];
    let n = flow.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HELLO SERVAL");
    drop(flow);
    let (bound, eof) = accepted.join().unwrap();
    assert_eq!(eof, 0);

    // Unconnected datagrams: through the router, the answer straight back
    // to the sender's own service ID.
    let socket = ServiceDatagram::open_via(client.client()).unwrap();
    socket.send_to(svc("be0001"), b"ping").unwrap();
    bound.set_read_timeout(WAIT).unwrap();
    let (n, peer, to) = bound.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], to), (&b"ping"[..], Some(svc("be0001"))));
    assert_eq!(peer.locator, sal::Locator::Ipv4(client_ip));
    assert!(peer.service.is_some(), "the sender's own service ID");
    bound.send_reply(peer, b"pong").unwrap();
    socket.set_read_timeout(WAIT).unwrap();
    let (n, from, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from.service, Some(svc("be00")), "the bound prefix's ID");

    // On the wire: what the client sends leaves it with TTL 64; at the
    // server, one router later, everything has 63, the relayed SYNs too.
    assert!(
        counter(&r.ns, "ttl") >= 4,
        "{}",
        r.ns.exec_ok("nft", ["list", "ruleset"]).unwrap()
    );
    assert_eq!(counter(&r.ns, "other"), 0);
    assert!(counter(&s.ns, "ttl") >= 4);
    assert_eq!(counter(&s.ns, "other"), 0);
    assert_eq!(counter(&s.ns, "syn"), 2, "the stream's and the flow's SYN");
    let stats = match router.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats.host.forwarded, 3, "two SYNs and a datagram");

    // The fence still refuses non-SAL transit, both ways.
    assert!(!udp_crosses(&c.ns, &s.ns, server_ip));
    assert!(!udp_crosses(&s.ns, &c.ns, client_ip));
    drop((client, router, server));
}

/// The reference's broadcast SYN (`reference-broadcast-syn.pcap` #1), as
/// IPv4 bytes, 10.77.1.1 -> 10.77.1.255.
fn reference_broadcast_syn() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/reference-broadcast-syn.pcap");
    let file = std::fs::File::open(&path).expect("the capture");
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let frame = reader.next_packet().unwrap().unwrap().data;
    frame[14..].to_vec()
}

#[test]
fn a_broadcast_syn_of_the_reference_client_is_answered() {
    require_root!();
    let (a, b) = (
        Netns::new("bcast-ref").unwrap(),
        Netns::new("bcast-srv").unwrap(),
    );
    testnet::veth(&a, "eth0", "10.77.1.1/24", &b, "eth0", "10.77.1.2/24").unwrap();
    let dir = Scratch::new("interop-bcast");
    let server = common::start_sald(&b, &["eth0"], &dir, "server", &[]);
    let _listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(svc("00004001")), 8)
            .unwrap();
    count_ttls(&a, Ipv4Addr::new(10, 77, 1, 2), 64);

    let answer = a
        .run(|| {
            let listen = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(144))).unwrap();
            listen
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let send = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
            send.set_broadcast(true).unwrap();
            let to = SockAddr::from(SocketAddrV4::new(Ipv4Addr::new(10, 77, 1, 255), 0));
            send.send_to(&reference_broadcast_syn(), &to).unwrap();
            let mut buf = [0u8; 2048];
            loop {
                let n = std::io::Read::read(&mut &listen, &mut buf).ok()?;
                let (carriage, sal) = ipv4_payload(&buf[..n]).ok()?;
                if carriage.src == Ipv4Addr::new(10, 77, 1, 2) {
                    return Some(sal.to_vec());
                }
            }
        })
        .unwrap()
        .unwrap_or_else(|| panic!("no SYN-ACK\n{}", log(&server)));
    let repr = SalRepr::parse(&SalPacket::new_checked(&answer[..]).unwrap()).unwrap();
    assert_eq!(repr.dst_flow, FlowId::new(2));
    let control = repr.control.unwrap();
    assert_eq!(control.flags, ControlFlags::SYN | ControlFlags::ACK);
    assert_eq!(control.ackno, 0xd84cfffe);
    assert_eq!(counter(&a, "syn"), 0, "(a SYN-ACK is not a SYN)");
    assert!(counter(&a, "ttl") >= 1, "originated with TTL 64");
    assert_eq!(counter(&a, "other"), 0);
    drop(server);
}

#[test]
fn a_host_without_rules_finds_a_service_by_broadcast() {
    require_root!();
    let net = TopologyBuilder::new("discover", 3)
        .lan(&[0, 1, 2])
        .build()
        .unwrap();
    let dir = Scratch::new("interop-discover");
    let start = |i: usize, name: &str, extra: &[&str]| {
        common::start_sald(&net.host(i).ns, &["eth0"], &dir, name, extra)
    };
    let (client, server, other) = (
        start(0, "client", &[]),
        start(1, "server", &[]),
        start(2, "other", &[]),
    );
    let listener = ServiceListener::bind_via(server.client(), prefix("beef/16"), 8).unwrap();
    let accepted = thread::spawn(move || listener.accept().map(|(_, info)| info));
    let stream = ServiceStream::connect_via(client.client(), svc("beef01"), WAIT)
        .unwrap_or_else(|e| panic!("discovery: {e}\n{}", log(&client)));
    let server_ip = net.host(1).addr().unwrap();
    assert_eq!(
        stream.flow_info().remote,
        Some(sal::Locator::Ipv4(server_ip))
    );
    accepted.join().unwrap().unwrap();
    // The host without the service heard the SYN and kept quiet.
    let stats = match other.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats.host.refused, 0);

    // A datagram for a service no rule knows, by broadcast; the answer
    // comes back to the sender's own service ID.
    let bound = ServiceDatagram::bind_via(server.client(), prefix("d00d/16")).unwrap();
    let socket = ServiceDatagram::open_via(client.client()).unwrap();
    socket.send_to(svc("d00d01"), b"anyone?").unwrap();
    bound.set_read_timeout(WAIT).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer, _) = bound.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"anyone?");
    bound.send_reply(peer, b"here").unwrap();
    socket.set_read_timeout(WAIT).unwrap();
    let (n, from, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.locator),
        (&b"here"[..], sal::Locator::Ipv4(server_ip))
    );

    // The rules listing says discovery is on; --no-broadcast turns it off.
    assert!(matches!(
        client.request(Request::ListRules),
        Response::Rules {
            broadcast_discovery: true,
            ..
        }
    ));
    drop(other);
    let quiet = start(2, "quiet", &["--no-broadcast"]);
    assert!(matches!(
        quiet.request(Request::ListRules),
        Response::Rules {
            broadcast_discovery: false,
            ..
        }
    ));
    match ServiceStream::connect_via(quiet.client(), svc("beef01"), WAIT) {
        Err(Error::NoRoute(_)) => {}
        other => panic!("expected no route, got {other:?}"),
    }
    drop((client, server, quiet));
}
