//! What the connection benchmarks share (sald's `in_process_connect`, the
//! preload's `connect`): their knobs from the environment, kernel TCP's
//! settings in the client namespace, starting a server program and
//! waiting until it says it is ready, running a client program for its
//! output, and reading the one line of `name value` pairs it prints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Netns, NsChild, Result};

/// `name` from the environment as a number, or `default` if it is unset
/// or not a number.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `name` from the environment as a comma-separated list of counts (say
/// `BENCH_PARALLEL=4,16`), or `default` in the same form.
pub fn env_counts(name: &str, default: &str) -> Vec<usize> {
    parse_counts(&std::env::var(name).unwrap_or_else(|_| default.into()))
}

/// The counts of a comma-separated list; what is not a count is skipped.
pub fn parse_counts(list: &str) -> Vec<usize> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Lets kernel TCP in `ns` open connections at benchmark rates: ports in
/// TIME-WAIT are reused, and the ephemeral range is wide.
pub fn tune_for_connection_rate(ns: &Netns) -> Result<()> {
    ns.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.set_sysctl("net.ipv4.ip_local_port_range", "1024 65000")
}

/// Starts `cmd` (made with [`Netns::command`]) with its stdout piped and
/// reads its first line: the child if that line is `ready`, `None` if the
/// program said something else or nothing (it is killed then).
pub fn spawn_ready(ns: &Netns, mut cmd: Command, ready: &str) -> Result<Option<NsChild>> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = ns.spawn_cmd(cmd)?;
    let Some(stdout) = child.child_mut().and_then(|c| c.stdout.take()) else {
        return Ok(None);
    };
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    Ok((line.trim() == ready).then_some(child))
}

/// Runs `cmd` (made with [`Netns::command`]) to the end, `timeout` at
/// most (it is killed then), and returns what it printed on stdout.
pub fn stdout_of(ns: &Netns, mut cmd: Command, timeout: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = ns.spawn_cmd(cmd)?.wait_with_output(timeout)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The number after the word `name` in `text`, a line of `name value`
/// pairs such as `done 120 errors 0 p50_us 75`.
pub fn field(text: &str, name: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()?.parse().ok()
}

/// Microseconds per clock tick of the CPU times in `/proc` (`USER_HZ`,
/// 100 on Linux whatever the kernel's own tick rate).
const PROC_TICK_US: u64 = 10_000;

/// A process's user and system CPU time so far, all its threads, in
/// microseconds (`/proc/<pid>/stat`); `None` if there is no such process.
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    // Fields 14 and 15 are utime and stime.
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) * PROC_TICK_US)
}

/// A process's minor page faults so far (pages it touched for the first
/// time, or again after they were given back): field 10 of
/// `/proc/<pid>/stat`.
pub fn process_minor_faults(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(7)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` from field 3 on (index 0 is field 3).
/// The command name (field 2) may hold spaces: they are counted from its
/// closing parenthesis.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The whole machine's busy CPU time so far, all CPUs and every process,
/// in microseconds: the `cpu` line of `/proc/stat` but idle and iowait (and
/// the guest fields, which user and nice already count).
pub fn machine_busy_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy: u64 = (line.split_whitespace().skip(1))
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    busy * PROC_TICK_US
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_and_grow_with_work() {
        let me = std::process::id();
        let before = process_cpu_us(me).expect("this process");
        let machine = machine_busy_us();
        // Spin for about 60 ms of CPU time.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(process_cpu_us(me).unwrap() > before, "own time grew");
        assert!(machine_busy_us() > machine, "machine time grew");
        assert_eq!(process_cpu_us(u32::MAX), None, "no such process");
    }

    #[test]
    fn counts_skip_what_is_not_a_count() {
        assert_eq!(parse_counts("4, 16,x,,2"), vec![4, 16, 2]);
        assert!(parse_counts("").is_empty());
    }

    #[test]
    fn a_field_is_the_word_after_its_name() {
        let line = "done 120 errors 0 p50_us 75";
        assert_eq!(field(line, "done"), Some(120));
        assert_eq!(field(line, "errors"), Some(0));
        assert_eq!(field(line, "p50_us"), Some(75));
        assert_eq!(field(line, "p99_us"), None);
        assert_eq!(field("done", "done"), None, "no value");
        assert_eq!(field("done x", "done"), None, "not a number");
    }
}
