//! svc-hello: the smallest replicated service. Binds a service prefix and
//! greets every connection with one line naming this replica, then reads
//! whatever the client sends until it half-closes, and closes.
//!
//! Used by the demo and the namespace tests to see which replica a
//! connection by service ID reached.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use socket_shim::{ControlClient, ServiceListener, ServicePrefix};

#[derive(Parser)]
#[command(about = "Answer every connection to a service with this replica's name")]
struct Args {
    /// sald's control socket [default: $SERVAL_CONTROL, else /run/serval/sald.sock]
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The name to answer with.
    #[arg(long)]
    name: String,
    /// Service ID or prefix to bind (hex, optionally /LEN).
    prefix: ServicePrefix,
}

fn main() {
    if let Err(error) = run(serval_cli::parse("svc-hello")) {
        eprintln!("svc-hello: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let control = match &args.control {
        Some(path) => ControlClient::connect_to(path),
        None => ControlClient::connect(),
    }
    .context("cannot reach sald")?;
    let listener = ServiceListener::bind_via(control, args.prefix, 128)
        .with_context(|| format!("cannot bind {}", args.prefix))?;
    eprintln!("svc-hello: {} serving {}", args.name, args.prefix);
    loop {
        let (mut stream, _) = listener.accept().context("accept failed")?;
        let greeting = format!("hello from {}\n", args.name);
        std::thread::spawn(move || {
            let _ = stream.write_all(greeting.as_bytes());
            let _ = stream.shutdown_write();
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        });
    }
}
