//! sald: the SAL daemon.
//!
//! Drives the sans-IO [`sal::proto::Host`] with tokio: packets from the link
//! (TUN or UDP) go in, transmits go out, timers fire, and the control socket
//! serves applications, the controller and operators. See DESIGN.md; the
//! daemon itself is [`sald::run`].

use tracing_subscriber::EnvFilter;

use sald::config::{Config, Flags};

fn main() {
    let flags: Flags = serval_cli::parse("sald");
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
    raise_fd_limit();
    let runtime = sald::runtime().expect("cannot start the tokio runtime");
    let result =
        Config::load(flags).and_then(|config| runtime.block_on(sald::run(config, signal())));
    if let Err(error) = result {
        eprintln!("sald: {error:#}");
        std::process::exit(1);
    }
}

/// Waits for SIGINT or SIGTERM.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals: stop sald with SIGKILL");
        return std::future::pending().await;
    };
    let signal = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!(signal, "signal received");
}

/// Every control connection and every handed-over flow is a file
/// descriptor: use what the hard limit allows (the control socket's own
/// limits keep any one user from taking them all).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
