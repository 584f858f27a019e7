//! svc-sink: receives one stream by service ID and reports what arrived: the
//! byte count, its SHA-256, the transfer rate, and the longest time data
//! stopped flowing, which is what a migration costs the application.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sha2::{Digest, Sha256};
use socket_shim::{ControlClient, ServiceListener, ServicePrefix};

#[derive(Parser)]
#[command(
    about = "Receive one stream on a service and report bytes, SHA-256 and the longest stall"
)]
struct Args {
    /// sald's control socket [default: $SERVAL_CONTROL, else /run/serval/sald.sock]
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Service ID or prefix to bind.
    prefix: ServicePrefix,
}

fn main() {
    if let Err(error) = run(serval_cli::parse("svc-sink")) {
        eprintln!("svc-sink: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let control = match &args.control {
        Some(path) => ControlClient::connect_to(path),
        None => ControlClient::connect(),
    }
    .context("cannot reach sald")?;
    let listener = ServiceListener::bind_via(control, args.prefix, 1)
        .with_context(|| format!("cannot bind {}", args.prefix))?;
    let (mut stream, info) = listener.accept().context("accept failed")?;
    drop(listener);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut stall, mut stall_at) = (0u64, Duration::ZERO, 0u64);
    let start = Instant::now();
    let mut last = start;
    loop {
        let n = stream.read(&mut buf).context("read failed")?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        if total > 0 && now - last > stall {
            stall = now - last;
            stall_at = total;
        }
        last = now;
        total += n as u64;
        hash.update(&buf[..n]);
    }
    let elapsed = last.duration_since(start).as_secs_f64().max(1e-9);
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "client   {} (when accepted)",
        info.remote.map_or("?".into(), |r| r.to_string())
    );
    println!("bytes    {total}");
    println!("sha256   {digest}");
    println!("rate     {:.1} Mbit/s", total as f64 * 8.0 / elapsed / 1e6);
    println!(
        "stall    {:.0} ms (longest time without data, after byte {stall_at})",
        stall.as_secs_f64() * 1e3
    );
    Ok(())
}
