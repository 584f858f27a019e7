//! `tun-forwarder`: kernel TCP vs. a plain user-space TUN-to-TUN forwarder,
//! the throughput baselines of DESIGN.md's performance method (see
//! [`testnet::tunfwd`] for what is measured and how). Needs root and iperf3;
//! builds its own namespaces and removes them on exit. Run it with
//! `scripts/bench-baselines` (release build) or
//! `cargo run --release -p testnet --bin tun-forwarder -- --help`.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use testnet::tunfwd::{measure, Options};

#[derive(Parser, Debug)]
#[command(
    about = "Baseline: kernel TCP vs. a plain user-space TUN-to-TUN forwarder (needs root, iperf3)"
)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// MTU of every veth and TUN device.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(576..=9000))]
    mtu: u32,
    /// Transmit queue length of the two TUN devices (packets the kernel
    /// may queue for the forwarder to read; 500 is the kernel's default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    txqueuelen: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testnet::is_root() {
        eprintln!("tun-forwarder: needs root (it builds network namespaces and TUN devices)");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let options = Options {
        seconds: args.seconds,
        mtu: args.mtu,
        txqueuelen: args.txqueuelen,
    };
    match measure(&options) {
        Ok(report) => {
            println!("{report}");
            println!(
                "  (total {:.1} s, namespaces removed)",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tun-forwarder: {error}");
            ExitCode::FAILURE
        }
    }
}
