//! `serval-run`: runs an unmodified program with the socket shim preloaded.
//!
//! ```text
//! serval-run [--in-process] [--map PORT=SERVICEID ...] [--net CIDR ...] -- PROGRAM ARGS
//! ```
//!
//! The program's `AF_SERVAL` sockets go through sald; with `--map`, TCP
//! `bind`s and `connect`s to the mapped ports become service IDs (inet
//! mode), optionally only for connects into the `--net` ranges. Everything
//! is passed through the environment (`LD_PRELOAD`, `SERVAL_SHIM_MAP`,
//! `SERVAL_SHIM_NET`), so children the program forks or execs inherit it.
//! With `--in-process` (`SERVAL_SHIM_INPROC=1`), the program's stream
//! sockets run on a SAL host inside the program, on its own UDP socket
//! beside sald's (which must carry the SAL over UDP, `--udp ADDR`, and
//! relay, as it does there by default; otherwise they fall back to
//! sald's flows).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sal::ServiceId;

/// The shim's file name.
const SHIM: &str = "libserval_shim.so";

#[derive(Debug, Parser)]
#[command(
    name = "serval-run",
    version,
    about = "Run an unmodified program over Serval service IDs",
    long_about = "Runs PROGRAM with libserval_shim.so preloaded: its AF_SERVAL sockets reach \
                  services through sald (control socket: SERVAL_CONTROL or /run/serval/sald.sock). \
                  With --map, TCP ports become service IDs (inet mode). With --in-process, stream \
                  sockets run on a SAL host inside the program (sald with --udp, relaying)."
)]
struct Args {
    /// Map a TCP port to a service ID: binding it registers the service,
    /// connecting to it (on any address) reaches the service. Repeatable.
    #[arg(long = "map", value_name = "PORT=SERVICEID")]
    maps: Vec<String>,
    /// Only redirect connects to addresses in this IPv4 range (repeatable;
    /// default: any address).
    #[arg(long = "net", value_name = "CIDR")]
    nets: Vec<String>,
    /// Run the program's stream sockets on a SAL host inside the program
    /// (its own UDP socket beside sald's), not on flows sald carries:
    /// connects, accepts, reads and writes cost no wake-up of another
    /// process. sald routes the SYNs and relays a listener's (it must
    /// carry the SAL over UDP, where it relays unless `--no-relays`); a
    /// sald without either serves the sockets as without this option. Sets SERVAL_SHIM_INPROC=1.
    /// In-process sockets do not survive exec, and are reset in a forked
    /// child. A thread about to sleep in the engine first busy-polls for
    /// up to 50 µs while that pays (SERVAL_SPIN_US=N sets the most, up to
    /// 1000; 0 turns it off).
    #[arg(long = "in-process")]
    in_process: bool,
    /// The shim library (default: SERVAL_SHIM_LIB, or next to this program).
    #[arg(long, value_name = "PATH", env = "SERVAL_SHIM_LIB")]
    shim: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn find_shim(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("shim library {} does not exist", path.display());
        }
        return Ok(path.canonicalize()?);
    }
    let exe = std::env::current_exe().context("locating serval-run")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(SHIM),
        dir.join("../lib").join(SHIM),
        dir.join("../lib/serval").join(SHIM),
        dir.join("..").join(SHIM),
    ];
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate.canonicalize()?);
        }
    }
    bail!(
        "cannot find {SHIM} next to {} (set SERVAL_SHIM_LIB or --shim)",
        exe.display()
    )
}

fn check_maps(maps: &[String]) -> Result<()> {
    for map in maps {
        let (port, id) = map
            .split_once('=')
            .with_context(|| format!("--map {map:?}: expected PORT=SERVICEID"))?;
        port.parse::<u16>()
            .with_context(|| format!("--map {map:?}: {port:?} is not a TCP port"))?;
        id.parse::<ServiceId>()
            .map_err(|e| anyhow::anyhow!("--map {map:?}: bad service ID: {e}"))?;
    }
    Ok(())
}

fn check_nets(nets: &[String]) -> Result<()> {
    for net in nets {
        let (ip, len) = net.split_once('/').unwrap_or((net, "32"));
        let ok =
            ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
        if !ok {
            bail!("--net {net:?}: expected an IPv4 CIDR such as 10.0.0.0/8");
        }
    }
    Ok(())
}

fn main() {
    if let Err(error) = run() {
        eprintln!("serval-run: {error:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args: Args = serval_cli::parse("serval-run");
    check_maps(&args.maps)?;
    check_nets(&args.nets)?;
    let shim = find_shim(args.shim)?;
    let mut preload = shim.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(" ");
        preload.push(existing);
    }
    let (program, rest) = args.command.split_first().context("no program given")?;
    let mut cmd = Command::new(program);
    cmd.args(rest).env("LD_PRELOAD", preload);
    if !args.maps.is_empty() {
        cmd.env("SERVAL_SHIM_MAP", args.maps.join(","));
    }
    if !args.nets.is_empty() {
        cmd.env("SERVAL_SHIM_NET", args.nets.join(","));
    }
    if args.in_process {
        cmd.env("SERVAL_SHIM_INPROC", "1");
    }
    let error = cmd.exec();
    bail!("cannot run {}: {error}", program.to_string_lossy())
}
