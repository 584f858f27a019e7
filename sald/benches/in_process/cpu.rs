//! CPU time, three ways: the whole machine's busy time (`/proc/stat`),
//! a process's own (`/proc/<pid>/stat`), and this process's
//! (`getrusage`, finer-grained).

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// The machine's busy time so far (see `testnet::bench::machine_busy_us`).
pub fn machine_busy_us() -> u64 {
    testnet::bench::machine_busy_us()
}

/// A process's user and system time so far (all its threads), or 0 if
/// there is no such process.
pub fn process_us(pid: u32) -> u64 {
    testnet::bench::process_cpu_us(pid).unwrap_or(0)
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
