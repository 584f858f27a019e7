//! sald: the SAL daemon.
//!
//! Drives the sans-IO [`sal::proto::Host`] with tokio: packets from the link
//! (TUN or UDP) go in, transmits go out, timers fire, and the control socket
//! serves applications, the controller and operators. See DESIGN.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sal::proto::{Host, HostConfig, LocalInterface};
use sal::wire::ipv4_payload;
use sal::Locator;
use tracing_subscriber::EnvFilter;

use sald::config::{Config, Flags};
use sald::control_server::{self, ControlContext};
use sald::daemon::{Links, Shared};
use sald::link::{drain_batch, TunLink, UdpLink};
use sald::plumbing::{Plumbing, PlumbingConfig};
use sald::watch;

/// Packets read from the link per lock acquisition.
const RX_BATCH: usize = 64;

fn main() {
    let flags = Flags::parse();
    // netlink-packet-route warns about every link attribute newer than
    // itself (IFLA_INET6_CONF on recent kernels); that is noise unless asked.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = if filter.contains("netlink_packet_route") {
        filter
    } else {
        format!("{filter},netlink_packet_route=error")
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    if let Err(error) = runtime.block_on(run(flags)) {
        eprintln!("sald: {error:#}");
        std::process::exit(1);
    }
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

async fn run(flags: Flags) -> Result<()> {
    let config = Config::load(flags)?;
    let mut interfaces = Vec::new();
    for name in &config.ifaces {
        let (ip, prefix_len) = interface_address(name)?;
        let locator = match config.udp {
            Some(udp) => Locator::Udp(std::net::SocketAddrV4::new(ip, udp.port())),
            None => Locator::Ipv4(ip),
        };
        interfaces.push(LocalInterface {
            name: name.clone(),
            locator,
            prefix_len,
            up: true,
        });
    }
    if let Some(udp) = config.udp.filter(|a| !a.ip().is_unspecified()) {
        if !interfaces.iter().any(|i| i.locator == Locator::Udp(udp)) {
            interfaces.push(LocalInterface {
                name: "udp".into(),
                locator: Locator::Udp(udp),
                prefix_len: 24,
                up: true,
            });
        }
    }

    let host_config = HostConfig {
        forward: config.forward,
        seed: config.seed.unwrap_or_else(rand::random),
        auto_migrate: config.auto_migrate,
        liveness_timeout: sal::time::Duration::from_millis(config.liveness_ms),
        idle_probe: (config.probe_idle_ms > 0)
            .then(|| sal::time::Duration::from_millis(config.probe_idle_ms)),
        ..HostConfig::default()
    };
    let mut host = Host::new(host_config, sal::time::Instant::from_micros(0));
    for interface in &interfaces {
        tracing::info!(iface = %interface.name, locator = %interface.locator, "SAL interface");
        host.add_interface(interface.clone());
    }
    for rule in &config.rules {
        host.add_rule(rule.prefix, rule.target()?, rule.priority);
    }

    // Links and, in native mode, the kernel plumbing that steers protocol 144
    // into our TUN. The plumbing guard undoes itself when dropped.
    let mut plumbing = None;
    let links = match config.udp {
        Some(addr) => Links::Udp(Arc::new(
            UdpLink::bind(SocketAddr::V4(addr))
                .await
                .with_context(|| format!("cannot bind UDP {addr}"))?,
        )),
        None => {
            let tun = TunLink::open(&config.tun, 1500).with_context(|| {
                format!("cannot open TUN device {} (are you root?)", config.tun)
            })?;
            let plumbing_config = interfaces
                .iter()
                .fold(PlumbingConfig::new(config.tun.clone()), |cfg, i| {
                    cfg.interface(i.name.clone(), vec![i.locator.ip()])
                });
            plumbing = Some(
                Plumbing::install(&plumbing_config).context("cannot set up routing for the SAL")?,
            );
            Links::Tun(Arc::new(tun))
        }
    };

    // The kernel's link and address events, for automatic migration.
    let mut view = watch::Interfaces::default();
    for interface in interfaces
        .iter()
        .filter(|i| config.ifaces.contains(&i.name))
    {
        if let Ok(index) = nix::net::if_::if_nametoindex(interface.name.as_str()) {
            view.track(
                index,
                &interface.name,
                interface.locator.ip(),
                interface.prefix_len,
            );
        }
    }
    let events = match watch::spawn() {
        Ok(events) => Some(events),
        Err(error) => {
            tracing::warn!(%error, "cannot watch link events; flows will not follow interface changes");
            None
        }
    };
    let plumbing = Arc::new(std::sync::Mutex::new(plumbing));

    let shared = Shared::new(host, links_clone(&links));
    let listener = control_server::bind(&config.control).await?;
    tracing::info!(control = %config.control.display(), forward = config.forward, "sald running");
    let context = Arc::new(ControlContext {
        shared: shared.clone(),
        allow: config.allow.clone(),
        started: std::time::Instant::now(),
        owner_uid: nix::unistd::geteuid().as_raw(),
    });

    let result = tokio::select! {
        () = follow_links(shared.clone(), plumbing.clone(), view, events) => Ok(()),
        result = receive_loop(shared.clone(), links, interfaces[0].locator) => result,
        () = timer_loop(shared.clone()) => Ok(()),
        () = control_server::serve(listener, context) => Ok(()),
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&config.control);
    let plumbing = plumbing.lock().map(|mut p| p.take()).unwrap_or(None);
    if let Some(plumbing) = plumbing {
        plumbing.remove();
    }
    result
}

/// Applies the kernel's link, address and route events to the host (moving
/// flows) and to the plumbing (rules for new addresses, per-source tables).
async fn follow_links(
    shared: Arc<Shared>,
    plumbing: Arc<std::sync::Mutex<Option<Plumbing>>>,
    mut view: watch::Interfaces,
    events: Option<tokio::sync::mpsc::UnboundedReceiver<watch::LinkEvent>>,
) {
    let Some(mut events) = events else {
        return std::future::pending().await;
    };
    while let Some(first) = events.recv().await {
        // Take whatever else already arrived (a link going down brings a
        // burst), so that the routing tables are refreshed once per burst.
        let mut batch = vec![first];
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        let mut changes = Vec::new();
        {
            let mut core = shared.lock();
            for event in batch {
                changes.extend(view.apply(&mut core.host, event));
            }
            core.run();
        }
        if changes.is_empty() {
            continue;
        }
        let Ok(mut guard) = plumbing.lock() else {
            continue;
        };
        let Some(plumbing) = guard.as_mut() else {
            continue;
        };
        let refresh = changes.contains(&watch::PlumbingChange::Routes);
        for change in changes {
            let result = match &change {
                watch::PlumbingChange::Add { iface, addr } => plumbing.add_address(iface, *addr),
                watch::PlumbingChange::Remove { iface, addr } => {
                    plumbing.remove_address(iface, *addr)
                }
                watch::PlumbingChange::Routes => continue,
            };
            if let Err(error) = result {
                tracing::warn!(%error, ?change, "routing did not follow an address change");
            }
        }
        if refresh {
            match plumbing.refresh_routes() {
                Ok(0) => {}
                Ok(changed) => tracing::info!(changed, "per-source routes follow the main table"),
                Err(error) => {
                    tracing::warn!(%error, "per-source routes did not follow the main table")
                }
            }
        }
    }
    std::future::pending().await
}

fn links_clone(links: &Links) -> Links {
    match links {
        Links::Tun(tun) => Links::Tun(tun.clone()),
        Links::Udp(udp) => Links::Udp(udp.clone()),
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!("pending never completes");
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Reads packets from the link and feeds them to the host, in batches.
async fn receive_loop(shared: Arc<Shared>, links: Links, local: Locator) -> Result<()> {
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
                            carriage.ttl,
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
        Links::Udp(udp) => loop {
            let (n, from) = udp.recv_from(&mut buf).await.context("UDP read failed")?;
            let SocketAddr::V4(from) = from else {
                continue;
            };
            let mut core = shared.lock();
            core.receive(Locator::Udp(from), local, 64, &buf[..n]);
            core.run();
        },
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
