//! CPU time, three ways: the whole machine's busy time (`/proc/stat`),
//! a process's own (`/proc/<pid>/stat`), and this process's
//! (`getrusage`, finer-grained).

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// Microseconds per clock tick of `/proc`: USER_HZ, 100 on Linux whatever
/// the kernel's own tick rate.
const TICK_US: u64 = 10_000;

/// The machine's busy time so far: every field of the `cpu ` line of
/// `/proc/stat` but idle and iowait (and guest time, which `user` and
/// `nice` already count). All CPUs together, every process: the other
/// programs on the machine count too.
pub fn machine_busy_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy * TICK_US
}

/// A process's user and system time so far (all its threads), or 0 if
/// there is no such process.
pub fn process_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from the ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * TICK_US
}

/// This process's user and system time so far, all threads.
pub fn own_us() -> u64 {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000).as_micros() as u64
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// The three clocks at one moment; `server` is another process's.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub machine: u64,
    pub own: u64,
    pub server: u64,
}

impl Snapshot {
    pub fn take(server: u32) -> Snapshot {
        Snapshot {
            machine: machine_busy_us(),
            own: own_us(),
            server: process_us(server),
        }
    }

    /// What was spent between `self` and the later `after`.
    pub fn until(&self, after: &Snapshot) -> Snapshot {
        Snapshot {
            machine: after.machine.saturating_sub(self.machine),
            own: after.own.saturating_sub(self.own),
            server: after.server.saturating_sub(self.server),
        }
    }
}
