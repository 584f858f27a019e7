//! UDP encapsulation through real namespaces: a client behind a NAPT
//! (nftables masquerade in a middle namespace) reaching a server, both
//! ways; an idle flow outliving a short NAT timeout thanks to keepalives;
//! the NAT rebinding to another public address mid-transfer; a forged
//! packet from a third namespace; several UDP hosts sharing one address
//! behind a service router; a UDP-mode server run as an unprivileged
//! user; and a peer sald gone (killed, or never there): its port refuses,
//! and the flows and connects that depended on it end within seconds.
//! Every transfer is checked byte for byte. Needs root; skips loudly
//! otherwise.
//!
//! ```text
//!  client 10.1.0.1 ── eth0 10.1.0.2 [nat] eth1 10.2.0.1 ──┬── server   10.2.0.2
//!   (default via 10.1.0.2)   masquerade out of eth1     ├── attacker 10.2.0.3
//!                                                        (LAN)
//! ```
//!
//! The server has no route to 10.1.0.0/24: it can only answer the NAT.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr};
use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{Request, Response, StatsReport};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{require_root, wait_until, Netns, Topology, TopologyBuilder};

mod common;
use common::{pattern, Daemon, Sald, Scratch};

const SERVER: &str = "10.2.0.2";
const PORT: u16 = 54325;

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn udp(ip: &str, port: u16) -> Locator {
    Locator::Udp(SocketAddrV4::new(ip.parse().unwrap(), port))
}

/// sald in UDP mode on `ns` at `addr`:`port`, with more `flags`.
fn start_udp(ns: &Netns, dir: &Path, name: &str, addr: &str, port: u16, flags: &[&str]) -> Daemon {
    let bind = format!("{addr}:{port}");
    let mut args = vec!["--udp", bind.as_str()];
    args.extend_from_slice(flags);
    common::start_sald(ns, &[], dir, name, &args)
}

fn stats(daemon: &Daemon) -> StatsReport {
    match daemon.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("no stats: {other:?}"),
    }
}

/// The NAT topology of the module docs, with sald on the client and the
/// server. Fields drop in order: daemons, scratch directory, namespaces.
struct Natted {
    client: Daemon,
    server: Daemon,
    _dir: Scratch,
    net: Topology,
}

fn natted(label: &str, client_flags: &[&str]) -> Natted {
    let net = TopologyBuilder::new(label, 4)
        .link(0, 1)
        .lan(&[1, 2, 3])
        .build()
        .unwrap();
    net.host(0)
        .ns
        .ip(["route", "add", "default", "via", "10.1.0.2"])
        .unwrap();
    let nat = &net.host(1).ns;
    nat.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    nft(
        nat,
        "add table ip nat; \
         add chain ip nat post { type nat hook postrouting priority 100; }; \
         add rule ip nat post oifname eth1 masquerade",
    );
    let dir = Scratch::new(label);
    let server = start_udp(&net.host(2).ns, &dir, "server", SERVER, PORT, &[]);
    let client = start_udp(
        &net.host(0).ns,
        &dir,
        "client",
        "10.1.0.1",
        PORT,
        client_flags,
    );
    client.forward_to("0/0", udp(SERVER, PORT), 1);
    Natted {
        client,
        server,
        _dir: dir,
        net,
    }
}

/// Runs an nft script (statements separated by `;`) in `ns`.
fn nft(ns: &Netns, script: &str) {
    let path = std::env::temp_dir().join(format!("nft-{}-{}", std::process::id(), ns.name()));
    std::fs::write(&path, script.replace("; ", "\n")).unwrap();
    ns.exec_ok("nft", ["-f", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
}

/// A listener on the server for `service` and a connected client stream;
/// returns (client's stream, server's stream).
fn connect(n: &Natted, service: &str) -> (ServiceStream, ServiceStream) {
    let listener =
        ServiceListener::bind_via(n.server.client(), ServicePrefix::exact(svc(service)), 4)
            .unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let stream = ServiceStream::connect_via(
        n.client.client(),
        svc(service),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    (stream, accept.join().unwrap())
}

/// The flow the server has with the client: where it sends to.
fn server_peer(n: &Natted) -> Locator {
    let flows = n.server.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    flows[0].remote.expect("connected")
}

/// Writes `data` on `from` (then half-closes) while reading `to` to the
/// end, calling `progress` with the bytes read so far after every read;
/// returns what was read and the longest pause between two reads.
fn transfer(
    from: &ServiceStream,
    to: &ServiceStream,
    data: &[u8],
    mut progress: impl FnMut(usize),
) -> (Vec<u8>, Duration) {
    let writer = {
        let mut stream = from.as_unix_stream().try_clone().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            stream.write_all(&data).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut reader = to.as_unix_stream().try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    loop {
        let n = match reader.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            result => result.expect("the transfer went on"),
        };
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        progress(received.len());
    }
    writer.join().unwrap();
    (received, longest)
}

#[test]
fn a_client_behind_a_nat_streams_both_ways_and_is_answered_at_the_nats_address() {
    require_root!();
    let n = natted("udpnat", &[]);
    let (client, server) = connect(&n, "c1");
    // The server answers where the packets came from: the NAT's address
    // and port, not the client's 10.1.0.1.
    let peer = server_peer(&n);
    assert_eq!(peer.ip(), Ipv4Addr::new(10, 2, 0, 1), "{peer}");
    let up = pattern(8 << 20, 1);
    let (got, _) = transfer(&client, &server, &up, |_| {});
    assert!(
        got == up,
        "upload differs ({} of {} bytes)",
        got.len(),
        up.len()
    );
    let down = pattern(8 << 20, 2);
    let (got, _) = transfer(&server, &client, &down, |_| {});
    assert!(
        got == down,
        "download differs ({} of {} bytes)",
        got.len(),
        down.len()
    );
    assert_eq!(stats(&n.server).host.bad_checksum, 0);
    drop((client, server));
    drop(n);
}

/// Sets the NAT namespace's UDP conntrack timeouts to `seconds`.
fn short_nat_timeouts(n: &Natted, seconds: u32) {
    let nat = &n.net.host(1).ns;
    for key in [
        "net.netfilter.nf_conntrack_udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
    ] {
        nat.set_sysctl(key, &seconds.to_string()).unwrap();
    }
}

/// With the NAT forgetting idle UDP mappings after 2 s, lets a flow sit
/// idle for 6 s, then has the server speak first; returns the bytes of
/// 256 KiB the client got within 4 s.
fn idle_then_server_first(label: &str, keepalive_ms: &str) -> usize {
    let n = natted(label, &["--keepalive-ms", keepalive_ms]);
    short_nat_timeouts(&n, 2);
    let (client, server) = connect(&n, "c2");
    thread::sleep(Duration::from_secs(6));
    let data = pattern(256 << 10, 3);
    let mut writer = server.as_unix_stream().try_clone().unwrap();
    // Without keepalives the server may learn that its peer is unreachable
    // while it writes (its flow then ends): that is the control's outcome
    // too, so only what the client receives is asserted.
    let _ = writer.write_all(&data);
    let mut reader = client.as_unix_stream().try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < data.len() && Instant::now() < deadline {
        if let Ok(k) = reader.read(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
    }
    assert!(data.starts_with(&got), "bytes differ");
    got.len()
}

#[test]
fn keepalives_hold_an_idle_flows_nat_mapping_so_the_server_can_speak_first() {
    require_root!();
    assert_eq!(idle_then_server_first("udpka", "1000"), 256 << 10);
    // The control: without keepalives the mapping expires and the server's
    // data cannot reach the client.
    assert_eq!(idle_then_server_first("udpnoka", "0"), 0);
}

/// Moves the NAT to public address 10.2.0.9 and flushes its mappings, as a
/// NAT that restarts or is renumbered does.
fn rebind(n: &Natted) {
    let nat = &n.net.host(1).ns;
    nft(
        nat,
        "flush chain ip nat post; add rule ip nat post oifname eth1 snat to 10.2.0.9",
    );
    testnet::conntrack::flush(nat).unwrap();
}

/// A 48 MiB transfer (`upload` or not) during which the NAT rebinds once a
/// quarter has arrived: every byte arrives, the server follows the NAT to
/// its new address, and the receiver stalls well under a second.
fn rebinding_mid_transfer(label: &str, upload: bool) {
    let n = natted(label, &[]);
    let nat = &n.net.host(1).ns;
    nat.add_addr("eth1", "10.2.0.9/24").unwrap();
    let (client, server) = connect(&n, "c3");
    let before = server_peer(&n);
    let data = pattern(48 << 20, 4);
    let rebound_at = Mutex::new(None);
    let (from, to) = if upload {
        (&client, &server)
    } else {
        (&server, &client)
    };
    let (got, longest) = transfer(from, to, &data, |received| {
        let mut at = rebound_at.lock().unwrap();
        if at.is_none() && received >= data.len() / 4 {
            rebind(&n);
            *at = Some(Instant::now());
        }
    });
    assert!(rebound_at.lock().unwrap().is_some(), "the NAT rebound");
    assert!(
        got == data,
        "bytes differ ({} of {})",
        got.len(),
        data.len()
    );
    let after = server_peer(&n);
    assert_eq!(before.ip(), Ipv4Addr::new(10, 2, 0, 1));
    assert_eq!(after.ip(), Ipv4Addr::new(10, 2, 0, 9), "followed the NAT");
    let server_stats = stats(&n.server).host;
    assert_eq!(server_stats.rebindings, 1, "{server_stats:?}");
    let client_stats = stats(&n.client).host;
    eprintln!(
        "longest pause while the NAT rebound: {longest:?} (client: {} nudges; server: {} path challenges)",
        client_stats.nudges, server_stats.path_challenges
    );
    // Typically 30-200 ms here; the bound leaves room for a loaded machine.
    assert!(longest < Duration::from_secs(1), "stalled {longest:?}");
}

#[test]
fn a_nat_rebinding_mid_upload_keeps_every_byte() {
    require_root!();
    rebinding_mid_transfer("udprbu", true);
}

#[test]
fn a_nat_rebinding_mid_download_keeps_every_byte() {
    require_root!();
    rebinding_mid_transfer("udprbd", false);
}

#[test]
fn a_forged_packet_from_a_third_namespace_redirects_nothing() {
    require_root!();
    let n = natted("udpspoof", &[]);
    let (client, server) = connect(&n, "c4");
    let peer = server_peer(&n);
    // The attacker knows both flow IDs (it guessed them, or read a log) but
    // not the client's nonce. It sends from its own address: a data packet,
    // and control messages with a made-up nonce.
    let (cflow, sflow) = (client.flow_id(), server.flow_id());
    let attacker = n.net.host(3).ns.run(move || {
        let socket = UdpSocket::bind(("10.2.0.3", PORT)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for control in [None, Some(ControlFlags::ACK), Some(ControlFlags::RSYN)] {
            let mut repr = SalRepr::data(cflow, Some(sflow), 6);
            repr.control = control.map(|flags| ControlRepr {
                flags,
                nonce: [0x66; 8],
                ..ControlRepr::default()
            });
            let mut packet = vec![0u8; repr.header_len()];
            repr.emit(&mut packet).unwrap();
            socket.send_to(&packet, (SERVER, PORT)).unwrap();
        }
        // What comes back: at most a path challenge.
        let mut answers = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((len, _)) = socket.recv_from(&mut buf) {
            answers.push(buf[..len].to_vec());
        }
        answers
    });
    let answers = attacker.unwrap();
    // The flow did not move, and still carries every byte.
    assert_eq!(server_peer(&n), peer);
    let data = pattern(4 << 20, 5);
    let (got, _) = transfer(&client, &server, &data, |_| {});
    assert!(got == data, "bytes differ");
    let host = stats(&n.server).host;
    assert_eq!(host.rebindings, 0, "{host:?}");
    assert!(host.bad_nonce >= 2, "{host:?}");
    assert_eq!(host.path_challenges, 1, "{host:?}");
    // The attacker got one challenge: CONTROL(RSYN|NACK) on the flow, no data.
    assert_eq!(answers.len(), 1, "{answers:?}");
    let packet = SalPacket::new_checked(&answers[0][..]).unwrap();
    let repr = SalRepr::parse(&packet).unwrap();
    assert_eq!(repr.dst_flow, Some(cflow));
    assert_eq!(
        repr.control.map(|c| c.flags),
        Some(ControlFlags::RSYN | ControlFlags::NACK)
    );
    assert!(packet.payload().is_empty());
    drop((client, server));
}

#[test]
fn several_udp_hosts_sharing_one_address_behind_a_router_are_answered_apart() {
    require_root!();
    // client host 10.2.0.1 (two sald on ports 41000 and 42000), router
    // 10.2.0.2, server 10.2.0.3.
    let net = TopologyBuilder::new("udpports", 3)
        .lan(&[0, 1, 2])
        .build()
        .unwrap();
    let dir = Scratch::new("udpports");
    let router = start_udp(
        &net.host(1).ns,
        &dir,
        "router",
        "10.2.0.2",
        PORT,
        &["--forward"],
    );
    let server = start_udp(&net.host(2).ns, &dir, "server", "10.2.0.3", PORT, &[]);
    router.forward_to("0/0", udp("10.2.0.3", PORT), 1);
    let clients: Vec<Daemon> = [41000, 42000]
        .iter()
        .map(|&port| {
            let name = format!("client{port}");
            let daemon = start_udp(&net.host(0).ns, &dir, &name, "10.2.0.1", port, &[]);
            daemon.forward_to("0/0", udp("10.2.0.2", PORT), 1);
            daemon
        })
        .collect();
    let listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(svc("c5")), 4).unwrap();
    let echo = {
        thread::spawn(move || {
            let mut peers = Vec::new();
            while peers.len() < 2 {
                let (mut stream, info) = listener.accept().unwrap();
                peers.push(info.remote);
                let mut data = Vec::new();
                stream.read_to_end(&mut data).unwrap();
                stream.write_all(&data).unwrap();
                stream.shutdown_write().unwrap();
            }
            peers
        })
    };
    for (i, client) in clients.iter().enumerate() {
        let stream =
            ServiceStream::connect_via(client.client(), svc("c5"), Some(Duration::from_secs(5)))
                .unwrap();
        let data = pattern(1 << 20, 10 + i as u32);
        let (back, _) = transfer(&stream, &stream, &data, |_| {});
        assert!(back == data, "client {i}: bytes differ");
    }
    let peers = echo.join().unwrap();
    assert_eq!(
        peers,
        [Some(udp("10.2.0.1", 41000)), Some(udp("10.2.0.1", 42000))]
    );
    assert_eq!(stats(&router).host.forwarded, 2);
    drop(clients);
    drop((router, server, dir, net));
}

#[test]
fn a_udp_mode_server_runs_as_an_unprivileged_user() {
    require_root!();
    let net = TopologyBuilder::new("udpuser", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("udpuser");
    // A directory the unprivileged user may write its control socket in.
    let own = dir.join("nobody");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let control = own.join("sald.sock");
    let log = dir.join("nobody.log");
    let ns = &net.host(1).ns;
    let mut cmd = ns.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_sald"))
        .args(["--udp", "10.1.0.2:54325", "--control"])
        .arg(&control);
    let server = Daemon::start(ns, cmd, &control, &log).unwrap();
    let client = start_udp(&net.host(0).ns, &dir, "client", "10.1.0.1", PORT, &[]);
    client.forward_to("0/0", udp("10.1.0.2", PORT), 1);

    // It says what it does without, and serves flows all the same.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("running unprivileged (uid 65534)"), "{text}");
    assert!(text.contains("native carriage"), "{text}");
    let pid = server.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    let listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(svc("c6")), 4).unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let stream =
        ServiceStream::connect_via(client.client(), svc("c6"), Some(Duration::from_secs(5)))
            .unwrap();
    let accepted = accept.join().unwrap();
    let up = pattern(4 << 20, 6);
    let (got, _) = transfer(&stream, &accepted, &up, |_| {});
    assert!(got == up, "upload differs");
    let down = pattern(4 << 20, 7);
    let (got, _) = transfer(&accepted, &stream, &down, |_| {});
    assert!(got == down, "download differs");

    // Native carriage, by contrast, is refused with a reason.
    let output = ns
        .exec(
            "setpriv",
            [
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_sald"),
                "--iface",
                "eth0",
                "--control",
                own.join("native.sock").to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("native carriage needs root"), "{stderr}");
    drop((stream, accepted));
    assert!(wait_until(Duration::from_secs(5), || server
        .flows()
        .is_empty()));
}

/// Two salds in UDP mode on a veth pair, the client's forwarding every
/// service to the server's port (whether a sald listens there or not).
fn udp_pair(label: &str, server_runs: bool) -> (Option<Daemon>, Daemon, Scratch, Topology) {
    let net = TopologyBuilder::new(label, 2).link(0, 1).build().unwrap();
    let dir = Scratch::new(label);
    let server =
        server_runs.then(|| start_udp(&net.host(1).ns, &dir, "server", "10.1.0.2", PORT, &[]));
    let client = start_udp(&net.host(0).ns, &dir, "client", "10.1.0.1", PORT, &[]);
    client.forward_to("0/0", udp("10.1.0.2", PORT), 1);
    (server, client, dir, net)
}

/// A flow whose peer sald is killed outright: the client's next packets
/// come back as port unreachable, and its sald resets the flow a second
/// later, as the kernel's TCP would be reset by the peer's kernel; before
/// sald read those reports, the application waited for the 30 s peer
/// timeout.
#[test]
fn a_flow_whose_peer_sald_is_killed_is_reset_within_seconds() {
    require_root!();
    let (server, client, dir, net) = udp_pair("udpgone", true);
    let mut server = server.unwrap();
    common::gone::a_flow_is_reset_when_its_peer_sald_is_killed(&client, &mut server, svc("c8"));
    drop((server, client, dir, net));
}

/// A connect whose SYN goes to a port where no sald listens (one gone, or
/// never started) fails at once with a refusal, not after its SYN's
/// retransmissions (20 s before sald read ICMP errors).
#[test]
fn a_connect_forwarded_to_a_sald_gone_is_refused_at_once() {
    require_root!();
    let (_, client, dir, net) = udp_pair("udpnone", false);
    common::gone::a_connect_to_a_sald_gone_is_refused_at_once(&client, svc("c9"));
    drop((client, dir, net));
}
