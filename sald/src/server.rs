//! The daemon as a function: [`run`] sets sald up from its [`Config`],
//! serves until the `shutdown` future completes (SIGTERM or SIGINT in
//! `main`, anything in a test), then stops gracefully:
//!
//! 1. the control server stops accepting, and every control client and pump
//!    is told; a pump drops the application's socket (it reads end of file)
//!    and closes its flow;
//! 2. every flow left is closed, so that the peer is told (FIN); flows that
//!    have not finished after [`FIN_GRACE`] are reset (RST), and the whole
//!    step takes at most [`FLOWS_BOUND`] (the packet path keeps running
//!    meanwhile, to carry the FINs and their answers);
//! 3. the packet path stops, the control socket file and the kernel
//!    plumbing are removed.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sal::proto::{Host, HostConfig, LocalInterface};
use sal::wire::ipv4_payload;
use sal::Locator;

use crate::config::Config;
use crate::control::{self, ControlContext};
use crate::daemon::{Core, Links, Shared};
use crate::link::{drain_batch, tun_ingress_wire_ttl, TunDevice, TunLink};
use crate::plumbing::{PlumbingConfig, PlumbingWorker};
use crate::privileges::Privileges;
use crate::raw::{BroadcastReceiver, RawSender};
use crate::shutdown::Tasks;
use crate::udp::UdpLink;
use crate::watch;

/// Packets read from the link per lock acquisition.
const RX_BATCH: usize = 64;
/// How long the control clients and pumps get to end once told.
const TASKS_BOUND: Duration = Duration::from_millis(500);
/// How long closed flows get to finish (FIN answered) before they are reset.
pub const FIN_GRACE: Duration = Duration::from_secs(1);
/// How long ending the flows takes at most, resets included.
pub const FLOWS_BOUND: Duration = Duration::from_secs(2);
/// The TUN device's MTU.
const TUN_MTU: u32 = 1500;
/// Bytes a UDP header adds to every packet in UDP mode.
const UDP_HEADER_LEN: u16 = 8;

/// The runtime to [`run`] a daemon on: one thread for everything, whose
/// idle moments go to ordinary users held back by their ration
/// (`control::ration`: without them, a user alone on sald would get a
/// quarter of its thread while the rest sat idle).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(control::ration::thread_idle)
        .build()
}

/// Runs a daemon with `config` until `shutdown` completes, then stops it
/// gracefully (see the module documentation). Must be called inside a tokio
/// runtime with I/O and time enabled, [`runtime`]'s (on another, ordinary
/// users held back by their ration wait even while the thread is idle);
/// in native mode, from a thread in the network namespace the daemon is
/// for (the daemon's threads are started from it).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let privileges = Privileges::current();
    if config.udp.is_none() {
        if let Some(refusal) = privileges.native_refusal() {
            bail!(refusal);
        }
    }
    // Netlink and nft never run on the thread that carries packets.
    let worker = Arc::new(PlumbingWorker::spawn().context("cannot start the plumbing thread")?);
    let names = config.ifaces.clone();
    let addresses = worker
        .run(move |_| {
            names
                .iter()
                .map(|name| interface_address(name).map(|a| (name.clone(), a)))
                .collect::<Result<Vec<_>>>()
        })
        .await??;

    // Links and, in native mode, the kernel plumbing that steers protocol 144
    // into our TUN (undone by the worker when it is removed or dropped).
    let (links, udp_port) = match config.udp {
        Some(addr) => {
            let udp = match crate::activation::udp_socket(addr)? {
                Some(socket) => {
                    tracing::info!(%addr, "UDP socket passed by the service manager");
                    UdpLink::adopt(socket, addr, config.udp_offload)
                }
                None => UdpLink::bind(addr, config.udp_offload),
            }
            .with_context(|| format!("cannot bind UDP {addr}"))?;
            let offloads = udp.offloads();
            tracing::info!(
                local = %udp.local_addr(),
                gso = offloads.gso,
                gro = offloads.gro,
                recv_buffer = offloads.recv_buffer,
                send_buffer = offloads.send_buffer,
                "UDP link"
            );
            if let Some(note) = privileges.udp_note((offloads.recv_buffer, offloads.send_buffer)) {
                tracing::info!("{note}");
            }
            let port = udp.local_addr().port();
            (Links::Udp(Arc::new(udp)), Some(port))
        }
        None => {
            let name = config.tun.clone();
            let device = worker
                .run(move |_| TunDevice::create(&name, TUN_MTU))
                .await?
                .with_context(|| {
                    format!("cannot open TUN device {} (are you root?)", config.tun)
                })?;
            (Links::Tun(Arc::new(TunLink::from_device(device)?)), None)
        }
    };
    let interfaces = local_interfaces(&config, &addresses, udp_port);
    if interfaces.is_empty() {
        bail!("no SAL interface");
    }
    if matches!(links, Links::Tun(_)) {
        let plumbing = interfaces
            .iter()
            .fold(PlumbingConfig::new(config.tun.clone()), |cfg, i| {
                cfg.interface(i.name.clone(), vec![i.locator.ip()])
            });
        worker
            .install(plumbing)
            .await
            .context("cannot set up routing for the SAL")?;
    }
    let host = build_host(&config, &interfaces)?;

    // The kernel's link and address events, for automatic migration.
    let mut view = watch::Interfaces::default();
    for (name, (addr, prefix_len)) in &addresses {
        if let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) {
            view.track(index, name, *addr, *prefix_len);
        }
    }
    let events = match watch::spawn() {
        Ok(events) => Some(events),
        Err(error) => {
            tracing::warn!(%error, "cannot watch link events; flows will not follow interface changes");
            None
        }
    };

    let tasks = Tasks::new();
    let shared = Shared::new(host, links.clone(), config.limits.subscriber_queue);
    let broadcasts = match links {
        Links::Tun(_) => open_raw_sockets(&shared, &config.ifaces),
        Links::Udp(_) => Vec::new(),
    };
    let listener = match control::bind(&config.control).await {
        Ok(listener) => listener,
        Err(error) => match privileges.control_hint(&config.control) {
            Some(hint) => bail!("{error:#}; {hint}"),
            None => return Err(error),
        },
    };
    let owner_uid = nix::unistd::geteuid().as_raw();
    let context = ControlContext::new(shared.clone(), tasks.clone(), &config, owner_uid);
    tasks.spawn(move |shutdown| control::serve(listener, context, shutdown));
    let udp_tasks = match &links {
        Links::Udp(udp) => vec![
            tokio::spawn(udp_writer(shared.clone(), udp.clone())),
            tokio::spawn(udp_report_loop(shared.clone(), udp.clone())),
        ],
        Links::Tun(_) => Vec::new(),
    };
    let mut packets = tokio::spawn(receive_loop(shared.clone(), links));
    let broadcasts: Vec<_> = (broadcasts.into_iter())
        .map(|receiver| tokio::spawn(broadcast_loop(shared.clone(), receiver)))
        .collect();
    let timers = tokio::spawn(timer_loop(shared.clone()));
    let housekeeping = tokio::spawn(crate::memory::housekeeping(shared.clone()));
    let relay_watch = tokio::spawn(control::watch_relay_sockets(shared.clone()));
    let follow = tokio::spawn(watch::follow(shared.clone(), worker.clone(), view, events));
    tracing::info!(control = %config.control.display(), forward = config.forward, "sald running");

    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        ended = &mut packets => match ended {
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => Err(anyhow::anyhow!("the link closed")),
            Err(error) => Err(anyhow::anyhow!("the packet task failed: {error}")),
        },
    };

    let stopping = Instant::now();
    tasks.shut_down();
    if !tasks.wait(TASKS_BOUND).await {
        tracing::warn!(
            left = tasks.running(),
            "tasks still running after {TASKS_BOUND:?}"
        );
    }
    let _ = std::fs::remove_file(&config.control);
    let left = end_flows(&shared).await;
    if left > 0 {
        tracing::warn!(left, "flows still open after {FLOWS_BOUND:?}");
    }
    packets.abort();
    for task in broadcasts {
        task.abort();
    }
    timers.abort();
    for task in udp_tasks {
        task.abort();
    }
    housekeeping.abort();
    relay_watch.abort();
    follow.abort();
    let _ = follow.await;
    drop(shared);
    match Arc::try_unwrap(worker) {
        Ok(worker) => {
            if let Err(error) = worker.remove().await {
                tracing::warn!(%error, "plumbing not fully removed");
            }
        }
        Err(_) => tracing::warn!("plumbing still in use; removed when the last user goes"),
    }
    tracing::info!(took = ?stopping.elapsed(), "stopped");
    result
}

/// The host's SAL interfaces: one per `--iface` (with the UDP port in UDP
/// mode), plus the UDP address itself when it is a specific one.
fn local_interfaces(
    config: &Config,
    addresses: &[(String, (Ipv4Addr, u8))],
    udp_port: Option<u16>,
) -> Vec<LocalInterface> {
    let mut interfaces: Vec<LocalInterface> = addresses
        .iter()
        .map(|(name, (ip, prefix_len))| LocalInterface {
            name: name.clone(),
            locator: match udp_port {
                Some(port) => Locator::Udp(SocketAddrV4::new(*ip, port)),
                None => Locator::Ipv4(*ip),
            },
            prefix_len: *prefix_len,
            up: true,
        })
        .collect();
    if let (Some(udp), Some(port)) = (config.udp, udp_port) {
        let udp = SocketAddrV4::new(*udp.ip(), port);
        if !udp.ip().is_unspecified() && !interfaces.iter().any(|i| i.locator == Locator::Udp(udp))
        {
            interfaces.push(LocalInterface {
                name: "udp".into(),
                locator: Locator::Udp(udp),
                prefix_len: 24,
                up: true,
            });
        }
    }
    interfaces
}

/// The protocol core with the configured interfaces and static rules.
fn build_host(config: &Config, interfaces: &[LocalInterface]) -> Result<Host> {
    let mut stream = config.tcp.stream_config();
    if config.udp.is_some() {
        // The UDP header comes out of every packet: full-size segments must
        // still fit the MTU, or every one of them is fragmented.
        stream.mss -= UDP_HEADER_LEN;
    }
    let mut host_config = HostConfig {
        stream,
        forward: config.forward,
        // Programs that drive their own SAL hosts reach sald over UDP: it
        // routes their SYNs (see `sal::proto`'s `route.rs`).
        relay_local: config.relays,
        broadcast_discovery: config.broadcast_discovery,
        seed: config.seed.unwrap_or_else(rand::random),
        // A `--seed` replays a run (tests); otherwise flow secrets come
        // from the operating system's entropy.
        entropy: config.seed.is_none().then(rand::random),
        auto_migrate: config.auto_migrate,
        validate_peer_moves: !config.trust_peer_moves,
        liveness_timeout: sal::time::Duration::from_millis(config.liveness_ms),
        idle_probe: (config.probe_idle_ms > 0)
            .then(|| sal::time::Duration::from_millis(config.probe_idle_ms)),
        keepalive: (config.keepalive_ms > 0)
            .then(|| sal::time::Duration::from_millis(config.keepalive_ms)),
        max_flows: config.limits.flows,
        buffer_memory_limit: config.tcp.memory_budget(),
        buffer_memory_group_limit: config.tcp.memory_budget_per_uid(),
        ..HostConfig::default()
    };
    config.syn.apply(&mut host_config);
    let mut host = Host::new(host_config, sal::time::Instant::from_micros(0));
    for interface in interfaces {
        tracing::info!(iface = %interface.name, locator = %interface.locator, "SAL interface");
        host.add_interface(interface.clone());
    }
    for rule in &config.rules {
        host.add_rule(rule.prefix, rule.target()?, rule.priority);
    }
    Ok(host)
}

/// An interface's IPv4 address and prefix length, from getifaddrs.
fn interface_address(name: &str) -> Result<(Ipv4Addr, u8)> {
    let addrs = nix::ifaddrs::getifaddrs().context("cannot list interfaces")?;
    let mut found = false;
    for ifaddr in addrs {
        if ifaddr.interface_name != name {
            continue;
        }
        found = true;
        let Some(addr) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let prefix = ifaddr
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
        return Ok((addr.ip(), prefix));
    }
    if found {
        bail!("interface {name} has no IPv4 address");
    }
    bail!("unknown interface {name}");
}

/// Closes every flow (the peer is told: FIN), resets those that have not
/// finished after [`FIN_GRACE`] (RST), and waits at most [`FLOWS_BOUND`]
/// in all for them to go. Returns how many are left.
pub async fn end_flows(shared: &Shared) -> usize {
    let started = tokio::time::Instant::now();
    let end_all = |reset: bool| {
        let mut core = shared.lock();
        let flows: Vec<_> = core.host.flows().into_iter().map(|f| f.flow).collect();
        for flow in &flows {
            if reset {
                let _ = core.host.abort(*flow);
            }
            let _ = core.host.close(*flow);
        }
        core.run();
        flows.len()
    };
    if end_all(false) == 0 {
        return 0;
    }
    if flows_gone(shared, started + FIN_GRACE).await {
        return 0;
    }
    let reset = end_all(true);
    tracing::info!(reset, "flows not finished in {FIN_GRACE:?} reset");
    if flows_gone(shared, started + FLOWS_BOUND).await {
        return 0;
    }
    shared.lock().host.flow_count()
}

/// Waits until the host has no flows, or `deadline`; whether it has none.
async fn flows_gone(shared: &Shared, deadline: tokio::time::Instant) -> bool {
    loop {
        if shared.lock().host.flow_count() == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Native mode's raw sockets (see [`crate::raw`]): the sender goes to the
/// core, the broadcast receivers (one per SAL interface) are returned.
/// Without them (no `CAP_NET_RAW`) sald still runs, but cannot relay with
/// the client's address nor broadcast, which is logged.
fn open_raw_sockets(shared: &Shared, ifaces: &[String]) -> Vec<BroadcastReceiver> {
    match RawSender::open() {
        Ok(raw) => shared.lock().set_raw_sender(raw),
        Err(error) => tracing::warn!(
            %error,
            "no raw IPv4 socket (CAP_NET_RAW?): relayed packets and broadcasts go into the TUN, \
             where the kernel may drop them"
        ),
    }
    let mut receivers = Vec::new();
    for iface in ifaces {
        match BroadcastReceiver::open(iface) {
            Ok(receiver) => receivers.push(receiver),
            Err(error) => {
                tracing::warn!(%iface, %error, "cannot receive SAL broadcasts on this interface")
            }
        }
    }
    receivers
}

/// Feeds the host the SAL broadcasts one interface receives (anything else
/// the raw socket sees, unicast delivered locally, is not ours: unicast
/// SAL packets come through the TUN).
///
/// It also hands the host the packets of ours that came back refused: the
/// kernel gives every protocol-144 raw socket the ICMP errors about
/// protocol-144 packets (see `raw`'s module docs).
async fn broadcast_loop(shared: Arc<Shared>, receiver: BroadcastReceiver) {
    let mut buf = vec![0u8; 65536];
    loop {
        let received = tokio::select! {
            received = receiver.recv(&mut buf) => Some(received),
            refusals = receiver.refusals() => refusals.err().map(Err),
        };
        let first = match received {
            None | Some(Ok(0)) => {
                let mut core = shared.lock();
                if hand_refused(&mut core, &receiver) {
                    core.run();
                }
                continue;
            }
            Some(Ok(n)) => n,
            Some(Err(error)) => {
                // Not a report (those are read above): the socket cannot
                // work, and retrying would spin.
                tracing::error!(
                    iface = receiver.iface(),
                    %error,
                    "broadcast receive failed: no more broadcasts or refusals on this interface"
                );
                return;
            }
        };
        let mut core = shared.lock();
        let next = |b: &mut [u8]| receiver.try_recv(b).ok();
        drain_batch(&mut buf, first, RX_BATCH, next, |packet| {
            let Ok((carriage, sal)) = ipv4_payload(packet) else {
                return;
            };
            if core.host.is_broadcast(carriage.dst) {
                core.receive(
                    Locator::Ipv4(carriage.src),
                    Locator::Ipv4(carriage.dst),
                    carriage.ttl,
                    sal,
                );
            }
        });
        hand_refused(&mut core, &receiver);
        core.run();
    }
}

/// Hands the host what `receiver` read as refused (see `broadcast_loop`);
/// whether there was any.
fn hand_refused(core: &mut Core, receiver: &BroadcastReceiver) -> bool {
    let now = core.now();
    let refused = receiver.take_refused();
    for (to, start) in &refused {
        core.host
            .handle_unreachable(now, Locator::Ipv4(*to.ip()), start);
    }
    !refused.is_empty()
}

/// Reads packets from the link and feeds them to the host, in batches.
async fn receive_loop(shared: Arc<Shared>, links: Links) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    match links {
        Links::Tun(tun) => loop {
            let first = tun.recv(&mut buf).await.context("TUN read failed")?;
            {
                let mut core = shared.lock();
                let next = |b: &mut [u8]| tun.try_recv(b).ok();
                drain_batch(&mut buf, first, RX_BATCH, next, |packet| {
                    if let Ok((carriage, sal)) = ipv4_payload(packet) {
                        core.receive(
                            Locator::Ipv4(carriage.src),
                            Locator::Ipv4(carriage.dst),
                            tun_ingress_wire_ttl(carriage.ttl),
                            sal,
                        );
                    }
                });
                core.run();
            }
            // A readable TUN never makes `recv` wait: let the pumps move what
            // this batch made readable to the applications before the next.
            tokio::task::yield_now().await;
        },
        Links::Udp(udp) => udp_receive_loop(&shared, &udp).await,
    }
}

/// UDP mode: reads batches of datagrams (one `recvmmsg`, GRO batches cut
/// apart) and feeds each batch to the host under one lock and one run.
async fn udp_receive_loop(shared: &Shared, udp: &UdpLink) -> Result<()> {
    let mut batch = udp.rx_batch();
    loop {
        if let Err(error) = udp.recv_batch(&mut batch).await {
            // Errors that were reports of earlier sends the link read
            // itself; what is left ends nothing. Keep a broken socket from
            // spinning, though.
            tracing::debug!(%error, "UDP receive failed");
            if udp.has_reports() {
                shared.lock().run();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        {
            let mut core = shared.lock();
            core.link_stats.errors += batch.unusable() as u64;
            for datagram in batch.datagrams() {
                let dst = udp.arrival(&datagram);
                core.receive(
                    Locator::Udp(datagram.src),
                    Locator::Udp(dst),
                    64,
                    datagram.payload,
                );
            }
            core.run();
        }
        // Let the pumps move what this batch made readable.
        tokio::task::yield_now().await;
    }
}

/// UDP mode: reads the reports of earlier sends (ICMP errors) as they come
/// and runs the host on them; its own task, so that the receive loop does
/// not wait on a second readiness each batch.
async fn udp_report_loop(shared: Arc<Shared>, udp: Arc<UdpLink>) {
    loop {
        match udp.reports().await {
            Ok(read) if read > 0 && udp.has_reports() => shared.lock().run(),
            Ok(_) => {}
            // The reactor is going away.
            Err(error) => {
                tracing::debug!(%error, "UDP error wait failed");
                return;
            }
        }
    }
}

/// UDP mode: when a send found the socket full, waits for room and sends
/// what waits in the batch.
async fn udp_writer(shared: Arc<Shared>, udp: Arc<UdpLink>) {
    loop {
        shared.udp_blocked.notified().await;
        loop {
            if udp.writable().await.is_err() {
                return;
            }
            let mut core = shared.lock();
            let blocked = core.send_datagrams();
            // Reports these sends read: the host acts on them now.
            if udp.has_reports() {
                core.run();
            }
            if !blocked {
                break;
            }
        }
    }
}

/// Runs the host whenever its next deadline passes.
async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().deadline();
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => shared.lock().run(),
                    () = shared.timer.notified() => {}
                }
            }
            None => shared.timer.notified().await,
        }
    }
}
