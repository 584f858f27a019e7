//! Control-socket isolation: what one unprivileged local user's control
//! requests take from another user's traffic.
//!
//! sald moves packets and serves its control clients on one thread, so a
//! user who loops expensive requests takes that thread from everyone. The
//! threat model (DESIGN.md) says no input may lock legitimate users out,
//! and an unprivileged user gets only what a port-binding user gets on
//! Linux. sald meters each ordinary user's share of its thread (its
//! "ration", `control::ration`) and serves one listing at a time per user
//! (`control::listing`); this bench measures what is left for the victim.
//!
//! Two sald processes of this target directory (the release build of the
//! bench), UDP mode on loopback only: the server on 127.0.0.2, holding
//! `BENCH_RULES` rules (default 100,000) and `BENCH_SOCKETS` datagram
//! sockets of root (default 0: descriptors, which `Stats` once walked one
//! by one; a cheap `Stats` is now the harder case for the ration, see
//! below), and the client on 127.0.0.1, its default rule toward the
//! server. The victim
//! is an ordinary user (uid 4242): its server application is bound on the
//! server's sald, and its program connects through the client's. Its
//! figures, per phase: connect + one byte echoed, p50 and p99 (a fresh
//! control connection each, as a program that starts; up to
//! `BENCH_CONNECTS`, default 200, within `BENCH_MILLIS`), then one bulk
//! flow writing for `BENCH_MILLIS` (default 3000) until the server counted
//! every byte. Also the server sald's CPU share over those runs and its
//! resident memory before the phase and at its peak (sampled every 20 ms).
//!
//! The attacks, in one run, each as the user `nobody` (uid 65534), each
//! right after a run without attacker (its baseline: the machine drifts
//! too much over a minute for one baseline to serve the whole run), each
//! started `BENCH_WARMUP_MILLIS` (default 1000) before the victim's runs
//! and stopped after them (a count of 0 leaves an attack out):
//! - `ListRules` looped on `BENCH_LISTERS` connections (default `1,8`: one
//!   row each), every part read (not decoded);
//! - `Stats` looped on `BENCH_STATS` connections (default 8);
//! - `BENCH_SLOW_READERS` connections (default 128, the most one user may
//!   hold) each reading a `ListRules` answer one part every 5 s (within the
//!   frame timeout);
//! - `BENCH_DRAINS` connections (default 120) each waiting in a `Drain` of
//!   a prefix that nobody bound `BENCH_LISTENERS` times (default 4,096, its
//!   `bindings_per_uid`) with a flow left pending. Each wait used to look
//!   at all those listeners every 20 ms; it now sleeps until one it waits
//!   on has nothing pending (`control::cmd::drain`), so this row checks
//!   that waiting drains cost nothing;
//! - a datagram flood: `BENCH_DGRAM_FLOODERS` datagram sockets (default
//!   8) opened with `OpenDatagram` on one connection, a thread each
//!   writing 64-byte `SendTo` frames to a service routed nowhere as fast
//!   as sald takes them (its "frames/s": datagrams written). Each is a
//!   packet sald's thread resolves and sends (here: drops); the pumps
//!   took them as fast as they came, and now charge them to their owner's
//!   ration (`pump`).
//!
//! Each figure is printed with its ratio against the baseline before it
//! (bulk: higher is better; latencies: lower is better; a baseline's
//! against the first one: the drift), and each attack with what it got
//! done: the server sald's CPU share while the attacker ran alone (the
//! warm-up: its take of the thread, which the ration holds near a quarter;
//! a datagram flooder, for which it became work-conserving (see the end),
//! takes what no one else wants), answers and frames a second, errors, connections refused or
//! closed by sald, and the attacking threads' own CPU (they run on the
//! same machine). The attackers' connections are made by threads that
//! switch their effective user, as the tests' `common::raw_as` does; they
//! are shut when their phase ends, and the next phase waits until the
//! server's control connections are back to the baseline's count.
//!
//! Run (root): `cargo build --release -p sald && cargo bench -p sald
//! --bench control_isolation`. About 75 s with the defaults.
//!
//! Figures on the development machine (2 cores, shared with other
//! sessions' builds and tests while it ran, load average about 3: the
//! baselines alone moved by up to 1.4x within the run, so read ratios
//! near 1 as "no effect"), release build, 2026-12-01:
//!
//! ```text
//! control_isolation: server sald with 100000 rules and 0 datagram sockets (set up in 1.1 s); victim uid 4242, attacker uid 65534; bulk 3000 ms, up to 200 connects; same run
//!   phase                                          bulk MiB/s  connect p50 ms          p99 ms  max ms  failed   CPU       RSS MiB  attacker
//!   no attacker                                    585  1.00x     1.04  1.00x     6.93  1.00x    7.43   0/197   21%    33->34
//!   ListRules looped x1                            503  0.86x     1.72  1.66x    18.38  2.65x   20.95   0/196   40%    32->38     sald CPU alone 24%; 2.4/s, 240.2 frames/s, errors 0, refused 0, closed 0; its CPU 1%
//!   no attacker                                    565  0.97x     0.93  0.89x     5.73  0.83x    5.93   0/199   20%    38->38
//!   ListRules looped x8                            534  0.94x     1.68  1.81x    16.21  2.83x   23.27   0/199   39%    35->38     sald CPU alone 21%; 2.6/s, 254.9 frames/s, errors 0, refused 0, closed 0; its CPU 1%
//!   no attacker                                    665  1.18x     0.87  0.94x     8.21  1.43x    9.27   0/199   21%    38->38
//!   Stats looped x8                                211  0.32x     3.17  3.64x     8.75  1.07x   12.04   0/200   66%    35->35     sald CPU alone 71%; 61897.3/s, 61897.3 frames/s, errors 0, refused 0, closed 0; its CPU 35%
//!   no attacker                                    833  1.25x     2.17  2.49x     4.01  0.49x    6.47   0/199   21%    35->35
//!   slow ListRules readers x128                    845  1.01x     1.12  0.52x     5.96  1.49x    5.99   0/199   34%    35->39     sald CPU alone 0%; 0.0/s, 0.3 frames/s, errors 0, refused 0, closed 0; its CPU 0%
//!   no attacker                                    759  0.91x     0.97  0.45x     6.60  1.65x   21.63   0/198   20%    39->39
//!   waiting Drains x120 (4096 listeners)           619  0.82x     2.28  2.35x    24.70  3.74x   26.34   0/195   47%    35->45     sald CPU alone 20%; 0.0/s, 0.0 frames/s, errors 0, refused 0, closed 0; its CPU 0%
//!   (each attack against the no-attacker run right before it, each of those against the first; CPU: the server sald's share during the victim's runs; RSS: the server sald's, before the phase -> peak; the drains' 4096 listeners took 5.2 s to bind)
//! ```
//!
//! What they say (the same in three full runs): the ration holds a looping
//! `ListRules` (1 or 8 connections) and 120 waiting drains to about a
//! fifth of sald's thread when alone, and the victim's bulk flow and
//! median connect stay within the machine's noise; 128 slow readers cost
//! sald 4 MiB (one snapshot at a time). What is left: (1) the p99
//! connect is 16-27 ms under `ListRules` and the drains (4-8 ms without):
//! the ration meters the average, not the length of one step; by the
//! code, a listing's first step copies and sorts every prefix in one
//! poll, and waiting drains that the ration held wake together, each
//! looking at all 4,096 listeners (30 drains: max 5 ms; 120 drains over
//! 1,024 listeners: no tail); (2) looping `Stats`, cheap today, took
//! 66-71% of sald's thread and the victim's bulk flow to 0.3-0.6x: the
//! ration charged a request's handler, not the reading and decoding of
//! the request nor the encoding and writing of its answer, which are most
//! of a cheap request's cost (8 loopers of `ListInterfaces`, tried by
//! hand: 87%). The attacking threads' own CPU (35% here) competes for the
//! machine's two cores too.
//!
//! Since then the ration charges all of it (`control::client`). Same
//! machine, `BENCH_LISTERS=0 BENCH_SLOW_READERS=0 BENCH_DRAINS=0`:
//!
//! ```text
//!   no attacker                                    854  1.00x     1.14  1.00x     1.77  1.00x    1.89   0/199   34%    33->34
//!   Stats looped x8                                743  0.87x     1.22  1.07x     2.18  1.23x    2.20   0/199   54%    32->34     sald CPU alone 31%; 16029.0/s, 16029.0 frames/s, errors 0, refused 0, closed 0; its CPU 16%
//! ```
//!
//! (31% rather than 25%: what the ration does not see, the runtime's own
//! wake-ups and polling around each request.)
//!
//! And listings longer than 4,096 keys are now sorted off sald's thread
//! (`control::cmd::parts::sorted`, still charged to the user). Same
//! machine, quieter than above, `BENCH_LISTERS=1,8`, the build before
//! (731a5a5) then this one, one run each:
//!
//! ```text
//!   before: no attacker      879 MiB/s  p50 0.93  p99  1.55 ms
//!           ListRules x1     783 0.89x  p50 1.18  p99 11.14 ms (7.21x)
//!           ListRules x8     834 0.83x  p50 1.23  p99  7.39 ms (4.01x)
//!   after:  no attacker     1149 MiB/s  p50 0.90  p99  1.88 ms
//!           ListRules x1     772 0.67x  p50 1.09  p99  4.84 ms (2.57x)
//!           ListRules x8     723 0.71x  p50 1.24  p99  4.53 ms (2.58x)
//! ```
//!
//! The connect tail is cut by half or more; the bulk flow loses a little
//! more, as the sort now runs beside it on the machine's other core
//! instead of taking turns with it on sald's thread (on two cores every
//! process of the bulk path competes for CPU either way).
//!
//! Last, a user's tasks waiting for its ration now wait in line
//! (`Rations::wait`): they used to wake together and run all at once.
//! Drains only (`BENCH_DRAINS=120`), the build before then this one:
//! p99 13.93 ms (8.04x) and bulk 0.97x, then 2.31 ms (1.78x) and 0.88x.
//! (A first try, each task looking again after its own sleep, also cut
//! the tail but woke every waiting task at every turn: bulk 0.60-0.71x.)
//! The whole bench on the final code, one run, the machine quiet but the
//! baselines drifting (1,882 -> 1,376 MiB/s between the first two):
//!
//! ```text
//!   no attacker                                   1882  1.00x     0.96  1.00x     2.32  1.00x    3.04   0/199   39%    33->34
//!   ListRules looped x1                           1075  0.57x     1.18  1.23x     4.07  1.75x    6.17   0/199   51%    32->38     sald CPU alone 25%; 4.6/s, 452.0 frames/s, errors 0, refused 0, closed 0; its CPU 1%
//!   no attacker                                   1376  0.73x     0.81  0.84x     2.29  0.98x    2.31   0/199   34%    38->38
//!   ListRules looped x8                            911  0.66x     0.75  0.92x     5.49  2.40x    6.36   0/199   51%    35->39     sald CPU alone 26%; 4.1/s, 410.0 frames/s, errors 0, refused 0, closed 0; its CPU 1%
//!   no attacker                                   1361  0.99x     0.75  0.92x     1.82  0.80x    1.99   0/199   35%    39->39
//!   Stats looped x8                               1084  0.80x     0.86  1.14x     1.90  1.04x    2.21   0/199   58%    35->35     sald CPU alone 30%; 23886.8/s, 23886.8 frames/s, errors 0, refused 0, closed 0; its CPU 17%
//!   no attacker                                   1358  1.00x     0.54  0.72x     1.47  0.81x    1.52   0/199   37%    35->35
//!   slow ListRules readers x128                   1908  1.40x     0.72  1.32x     1.96  1.34x    2.03   0/199   36%    35->40     sald CPU alone 1%; 0.0/s, 0.3 frames/s, errors 0, refused 0, closed 0; its CPU 0%
//!   no attacker                                   1433  1.06x     0.74  1.36x     2.14  1.46x    2.23   0/199   34%    38->38
//!   waiting Drains x120 (4096 listeners)          1126  0.79x     0.93  1.26x     1.92  0.89x    2.02   0/199   54%    35->45     sald CPU alone 26%; 0.0/s, 0.0 frames/s, errors 0, refused 0, closed 0; its CPU 0%
//! ```
//!
//! Every attacker now gets 25-30% of sald's thread alone, and the
//! victim's connect p99 stays within 2.4x of its baseline (it was 2.6-8x);
//! the bulk flow keeps 0.57-0.80x on this two-core machine, where the
//! attacker's own work shares the cores with every process of the
//! victim's path.
//!
//! Then waiting drains stopped polling: each sleeps on the listener it
//! waits for until that one has nothing pending. Drains only
//! (`BENCH_LISTERS=0 BENCH_STATS=0 BENCH_SLOW_READERS=0`), one run, load
//! average about 3 from other sessions:
//!
//! ```text
//!   no attacker                                    579  1.00x     0.94  1.00x     1.74  1.00x    2.92   0/200   21%    33->34
//!   waiting Drains x120 (4096 listeners)           773  1.33x     1.27  1.34x     7.17  4.11x    8.30   0/198   28%    32->44     sald CPU alone 6%; 0.0/s, 0.0 frames/s, errors 0, refused 0, closed 0; its CPU 0%
//! ```
//!
//! The attacker's take of sald's thread alone went from 20-26% (the
//! quarter the ration allows) to 6% (its 120 connections and first looks
//! during the warm-up), and sald's share beside the victim from 47-54%
//! to 28%, against 21% without the attacker. The victim's figures are one
//! run's on a busy machine: bulk and median connect within the noise
//! (better than the baseline), the p99 of 200 connects (its second
//! worst) 7 ms against 2 ms.
//!
//! Then the datagram flood (`BENCH_DGRAM_FLOODERS=8`, the other rows off),
//! on the same machine, load average 2-3. Before, the pumps sent each
//! message as fast as the program wrote it (two runs):
//!
//! ```text
//!   no attacker                                   1170  1.00x     0.90  1.00x     2.08  1.00x    2.16   0/199   29%    33->34
//!   datagram flood x8                                2  0.00x   130.16 145.11x   640.32 307.24x  640.32   0/14    87%    33->33     sald CPU alone 85%; 0.0/s, 791428.4 frames/s, errors 0, refused 0, closed 0; its CPU 72%
//!   no attacker                                   1111  1.00x     0.76  1.00x     2.24  1.00x    5.07   0/199   30%    33->34
//!   datagram flood x8                                1  0.00x   175.60 229.80x   361.79 161.80x  361.79   0/19    72%    33->35     sald CPU alone 86%; 0.0/s, 777120.5 frames/s, errors 0, refused 0, closed 0; its CPU 62%
//! ```
//!
//! The flood took 85% of sald's thread alone and the victim's bulk flow to
//! 1-2 MiB/s; its connects took 130-176 ms (p50), and only 14-19 of them
//! fit in the 3 s. Now the pumps take the messages 16 at a time, each
//! batch charged to the socket's owner, who waits for its ration before
//! the next (`pump`, `control::ration`). Two runs:
//!
//! ```text
//!   no attacker                                   1082  1.00x     0.98  1.00x     1.40  1.00x    1.44   0/199   36%    33->35
//!   datagram flood x8                              720  0.67x     1.28  1.32x     2.82  2.02x    3.24   0/199   58%    33->35     sald CPU alone 34%; 0.0/s, 145119.7 frames/s, errors 0, refused 0, closed 0; its CPU 17%
//!   no attacker                                   1157  1.00x     0.89  1.00x     1.48  1.00x    1.64   0/199   35%    33->34
//!   datagram flood x8                              689  0.60x     1.33  1.50x     2.11  1.43x    3.28   0/199   54%    33->35     sald CPU alone 35%; 0.0/s, 148127.5 frames/s, errors 0, refused 0, closed 0; its CPU 18%
//! ```
//!
//! The flooder gets a third of sald's thread alone (a quarter charged, the
//! rest the runtime's wake-ups around the batches, which the ration does
//! not see, as with `Stats`; 64 messages a batch did no better), a fifth
//! of the datagrams it got through before, and the victim keeps 0.6-0.7x
//! of its bulk flow and its connects within 1.5x (p50) and 2x (p99).
//!
//! Then the ration became work-conserving: a user in debt waits only
//! while sald's thread has other work, and waiting users take the
//! thread's idle moments in turns, one step each (`control::ration`;
//! the hook is `sald::runtime`'s). The flooder above got a quarter of the
//! thread while the rest sat idle. The same flood, two runs of this build,
//! load average 2-3:
//!
//! ```text
//!   no attacker                                    957  1.00x     1.03  1.00x     3.27  1.00x    4.77   0/199   35%    33->34
//!   datagram flood x8                              498  0.52x     1.50  1.45x    21.01  6.43x   23.95   0/196   71%    33->35     sald CPU alone 70%; 0.0/s, 278051.1 frames/s, errors 0, refused 0, closed 0; its CPU 31%
//!   no attacker                                    695  1.00x     1.34  1.00x     5.70  1.00x    5.79   0/199   26%    33->34
//!   datagram flood x8                              488  0.70x     1.72  1.29x     6.99  1.23x    7.26   0/195   71%    33->35     sald CPU alone 78%; 0.0/s, 317332.7 frames/s, errors 0, refused 0, closed 0; its CPU 32%
//! ```
//!
//! In 9 runs of this build (load average 2-5), the flooder alone took
//! 42-97% of sald's thread (median 77%: what the busy machine gave it)
//! and got 270,000-400,000 datagrams a second through; in 5 runs of the
//! build before, alternated with them, 25-35% and 110,000-160,000. (Of
//! the thread, the ration's looks and the idle turns' wake-ups take
//! about a tenth, `perf`; the messages' reads most of it.) Beside the
//! flood, the victim's figures, this build then the one before: bulk
//! 0.52-1.22x (median 0.61x) against 0.62-0.96x (0.82x), connect p50
//! 0.91-2.07x (1.30x) against 1.33-2.22x (1.43x), p99 1.2-6.4x (2.3x)
//! against 0.5-1.2x (1.0x), 3 of the 9 runs with a p99 of 21-29 ms. On
//! sald's thread the victim's work waits for one step of the flood at
//! most (16 messages; `control::ration`'s tests): the rest is the
//! machine's two cores. sald now keeps one of them busy, and the flooding
//! threads get twice as much done (29-46% of a core, against 12-19%), so
//! the victim's own processes (its programs, the client sald) wait for a
//! core more often; the server sald reniced to -10 took its core from
//! them the more (bulk 0.09-0.54x, p50 9-18x). With the other attackers
//! too, one run: `ListRules` looped took 61% (x1) and 94% (x8) of the
//! thread alone, `Stats` looped x8 98% (35,104 answers a second, against
//! 23,887), and the victim kept 0.44-1.01x of its bulk flow, p50 within
//! 1.1-2.1x and p99 within 0.9-1.4x.
//!
//! Requests took idle turns too, at first. In the next full run a looping
//! `ListRules` (x1) took 99% of the thread alone, and beside it the
//! victim's bulk fell to 0.44x and its connects' p99 to 6.4x (x8: 0.54x,
//! 7.0x): each idle moment of the victim's went to a listing part, which
//! may hold the thread for milliseconds, and a turn given cannot be taken
//! back. So only the pumps' steps (16 messages, tens of microseconds)
//! take idle turns; requests wait out their debt, as before.
//!
//! For comparison, the review that led to the rations measured (by hand,
//! same topology, before the fixes) one `ListRules` looper at 100,000
//! rules taking the bulk flow from 722 to 2 MB/s and the connect p50 from
//! 3.3 to 72 ms; 8 `Stats` loopers (then O(descriptors) each) from 285 to
//! 57 MB/s; 128 slow readers holding 434 MB of sald's memory.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sal::table::Target;
use sal::wire::TransportProtocol;
use sal::{ServiceId, ServicePrefix};
use sal_control::{
    encode_frame, frame_len, DatagramFrame, Request, Response, RuleChange, PROTOCOL_VERSION,
};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::bench::{env_counts, env_number, process_cpu_us};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Sald, SaldProcess, Scratch};

/// The attacker.
const NOBODY: u32 = 65534;
/// The victim: another ordinary user.
const VICTIM: u32 = 4242;
/// The victim's prefix on the server, and the service it connects to.
const VICTIM_PREFIX: &str = "c0ffee/24";
const VICTIM_SERVICE: &str = "c0ffee01";
/// The prefix the draining attacker binds over and over, and a service in it.
const DRAIN_PREFIX: &str = "bad0/16";
const DRAIN_SERVICE: &str = "bad00001";
/// Where the datagram flood goes: a service no rule routes.
const FLOOD_SERVICE: &str = "dead0001";
/// The payload of each of the flood's datagrams.
const FLOOD_BYTES: usize = 64;
/// The most connections one ordinary user may hold (sald's default
/// `clients_per_uid`): no pattern asks for more.
const MOST_CONNECTIONS: usize = 128;
/// How long one of the victim's connects (and echoes) may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// A slow reader takes one part of its listing this often.
const SLOW_READ_EVERY: Duration = Duration::from_secs(5);
/// How long a phase waits for the attacker's connections to be gone.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The bench's knobs (see the module documentation), bounded.
struct Knobs {
    millis: u64,
    connects: usize,
    warmup: Duration,
    rules: u32,
    sockets: usize,
    listers: Vec<usize>,
    stats: usize,
    slow_readers: usize,
    drains: usize,
    listeners: usize,
    dgram_flooders: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        let connections =
            |name, default| (env_number(name, default) as usize).min(MOST_CONNECTIONS);
        Knobs {
            millis: env_number("BENCH_MILLIS", 3_000).clamp(100, 20_000),
            connects: env_number("BENCH_CONNECTS", 200).clamp(1, 10_000) as usize,
            warmup: Duration::from_millis(env_number("BENCH_WARMUP_MILLIS", 1_000).min(10_000)),
            rules: env_number("BENCH_RULES", 100_000).min(1_000_000) as u32,
            // The descriptors of this process (each socket's other end) are
            // limited to 20,000.
            sockets: env_number("BENCH_SOCKETS", 0).min(15_000) as usize,
            listers: env_counts("BENCH_LISTERS", "1,8")
                .into_iter()
                .map(|k| k.min(MOST_CONNECTIONS))
                .collect(),
            stats: connections("BENCH_STATS", 8),
            slow_readers: connections("BENCH_SLOW_READERS", 128),
            // Two more connections hold the listeners and the pending flow.
            drains: connections("BENCH_DRAINS", 120).min(MOST_CONNECTIONS - 2),
            listeners: env_number("BENCH_LISTENERS", 4_096).clamp(1, 4_096) as usize,
            // A thread each, in this process.
            dgram_flooders: connections("BENCH_DGRAM_FLOODERS", 8),
        }
    }
}

/// Adds `count` DROP rules to the server (as root, 2,000 a request).
fn add_rules(sald: &impl Sald, count: u32) {
    let mut root = sald.client();
    for first in (0..count).step_by(2_000) {
        let changes = (first..(first + 2_000).min(count))
            .map(|i| RuleChange::Add {
                prefix: format!("d0{i:06x}/40").parse().expect("prefix"),
                target: Target::Drop,
                priority: 0,
                origin: Default::default(),
            })
            .collect();
        match root.request(&Request::ApplyRules { changes }) {
            Ok(reply) => match reply.response {
                Response::Applied { failures } if failures.is_empty() => {}
                other => panic!("rules refused: {other:?}"),
            },
            Err(error) => panic!("rules: {error}"),
        }
    }
}

/// Opens `count` datagram sockets on the server as root; sald holds a
/// descriptor for each while they are open.
fn open_datagrams(sald: &impl Sald, count: usize) -> Vec<OwnedFd> {
    let mut root = sald.client();
    (0..count)
        .map(|_| {
            let reply = root.request(&Request::OpenDatagram).expect("OpenDatagram");
            reply
                .fd
                .unwrap_or_else(|| panic!("no socket: {:?}", reply.response))
        })
        .collect()
}

/// The victim's server application, bound on `server` as `VICTIM`: each
/// flow echoes its first byte, then counts what comes and answers the
/// count (8 bytes) at its end. Its threads end when the daemon goes.
fn serve_victim(server: &SaldProcess) {
    let control = common::client_as(&server.control, VICTIM).expect("victim's control socket");
    let prefix: ServicePrefix = VICTIM_PREFIX.parse().expect("prefix");
    let listener = ServiceListener::bind_via(control, prefix, 1024).expect("victim's bind");
    thread::spawn(move || {
        while let Ok((mut flow, _)) = listener.accept() {
            thread::spawn(move || {
                let mut one = [0u8; 1];
                if flow.read_exact(&mut one).is_err() || flow.write_all(&one).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                while let Ok(n @ 1..) = flow.read(&mut buf) {
                    total += n as u64;
                }
                let _ = flow.write_all(&total.to_be_bytes());
            });
        }
    });
}

/// A flow to `service` through the sald at `control`, its first byte
/// echoed, with `CONNECT_LIMIT` on each step.
fn open_echoed(control: &Path, service: ServiceId) -> Option<ServiceStream> {
    let control = ControlClient::connect_to(control).ok()?;
    let mut flow = ServiceStream::connect_via(control, service, Some(CONNECT_LIMIT)).ok()?;
    flow.set_read_timeout(Some(CONNECT_LIMIT)).ok()?;
    flow.set_write_timeout(Some(CONNECT_LIMIT)).ok()?;
    flow.write_all(b"x").ok()?;
    let mut one = [0u8; 1];
    flow.read_exact(&mut one).ok()?;
    Some(flow)
}

/// MiB/s of one flow writing for `millis`, until the server counted it
/// all; `None` if it failed.
fn bulk(control: &Path, service: ServiceId, millis: u64) -> Option<f64> {
    let mut flow = open_echoed(control, service)?;
    let chunk = vec![0x5au8; 1 << 16];
    let started = Instant::now();
    let until = started + Duration::from_millis(millis);
    let mut sent = 0u64;
    while Instant::now() < until {
        flow.write_all(&chunk).ok()?;
        sent += chunk.len() as u64;
    }
    flow.shutdown_write().ok()?;
    flow.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut count = [0u8; 8];
    flow.read_exact(&mut count).ok()?;
    (u64::from_be_bytes(count) == sent)
        .then(|| sent as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64())
}

/// The victim's figures of one phase.
struct Victim {
    /// Connect + echo times, sorted.
    times: Vec<Duration>,
    failed: usize,
    mbps: Option<f64>,
}

impl Victim {
    /// The `p`th percentile of the connect + echo times, in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        let Some(last) = self.times.len().checked_sub(1) else {
            return f64::NAN;
        };
        let at = ((self.times.len() as f64 * p / 100.0).ceil() as usize).clamp(1, last + 1) - 1;
        self.times[at].as_secs_f64() * 1e3
    }
}

/// The victim's runs through the sald at `control`, on a thread that is
/// `VICTIM`: `connects` one after another, spread over `millis` (one
/// started every `millis / connects` at most, none after `millis`: what
/// an attack does in bursts shows), then the bulk flow for `millis`.
fn victim(control: &Path, service: ServiceId, connects: usize, millis: u64) -> Victim {
    let control = control.to_owned();
    thread::spawn(move || {
        common::become_user(VICTIM);
        let window = Duration::from_millis(millis);
        let every = window / connects as u32;
        let until = Instant::now() + window;
        let (mut times, mut failed) = (Vec::with_capacity(connects), 0);
        while times.len() + failed < connects && Instant::now() < until {
            let started = Instant::now();
            match open_echoed(&control, service) {
                Some(_) => times.push(started.elapsed()),
                None => failed += 1,
            }
            thread::sleep(every.saturating_sub(started.elapsed()));
        }
        times.sort_unstable();
        let mbps = bulk(&control, service, millis);
        Victim {
            times,
            failed,
            mbps,
        }
    })
    .join()
    .expect("victim's thread")
}

/// The peak resident memory of a process while it lives (sampled every
/// 20 ms on a thread of its own).
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(common::rss(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(common::rss(pid), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        PeakRss {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop_sampling();
        self.peak.load(Ordering::Relaxed)
    }

    fn stop_sampling(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop_sampling();
    }
}

/// What an attack's connections got done.
#[derive(Default)]
struct Done {
    /// Whole answers (a listing's last part, a `Stats`, a `Drain`).
    answers: AtomicU64,
    /// Answers that were errors.
    errors: AtomicU64,
    /// Frames read (a listing's parts, answers).
    frames: AtomicU64,
    /// CPU time of the attacking threads (this process's), microseconds.
    cpu_us: AtomicU64,
    /// Connections sald did not admit (no answer to their `Hello`).
    refused: AtomicU64,
    /// Connections sald closed during the attack.
    closed: AtomicU64,
}

/// `NOBODY`'s connections to a sald, each sending one request, reading its
/// answer's frames (waiting `pause` after each) and again, or its datagram
/// sockets, each flooded ([`Attack::flood`]), until dropped: then they
/// stop, are shut (ending reads and writes that wait) and their threads
/// are joined; what the attack held besides goes after them.
struct Attack {
    stop: Arc<AtomicBool>,
    done: Arc<Done>,
    started: Instant,
    sockets: Vec<UnixStream>,
    threads: Vec<JoinHandle<()>>,
    /// What the attack set up beforehand (listeners, a pending flow, the
    /// connection its datagram sockets were opened on).
    held: Vec<Box<dyn Send>>,
}

impl Attack {
    /// An attack with nothing running yet.
    fn new() -> Attack {
        Attack {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::new(Done::default()),
            started: Instant::now(),
            sockets: Vec::new(),
            threads: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Runs `work` on a thread of its own over `socket` (shut when the
    /// attack stops), its CPU counted.
    fn spawn(
        &mut self,
        socket: UnixStream,
        work: impl FnOnce(UnixStream, &AtomicBool, &Done) + Send + 'static,
    ) {
        self.sockets.push(socket.try_clone().expect("socket"));
        let (stop, done) = (self.stop.clone(), self.done.clone());
        self.threads.push(thread::spawn(move || {
            work(socket, &stop, &done);
            done.cpu_us.fetch_add(thread_cpu_us(), Ordering::Relaxed);
        }));
    }

    fn start(control: &Path, connections: usize, request: &Request, pause: Duration) -> Attack {
        let request = encode_frame(request).expect("request");
        let mut attack = Attack::new();
        for _ in 0..connections {
            let socket = common::raw_as(control, NOBODY).expect("control socket");
            let request = request.clone();
            attack.spawn(socket, move |socket, stop, done| {
                attacker(socket, &request, pause, stop, done);
            });
        }
        attack.started = Instant::now();
        attack
    }

    /// `NOBODY` opens `sockets` datagram sockets, and a thread each floods
    /// its socket (see [`flooder`]).
    fn flood(control: &Path, sockets: usize) -> Attack {
        let mut owner = common::client_as(control, NOBODY).expect("control socket");
        let frame = DatagramFrame::SendTo {
            service: FLOOD_SERVICE.parse().expect("service"),
            via: None,
            data: vec![0x5a; FLOOD_BYTES],
        }
        .encode();
        let mut attack = Attack::new();
        for _ in 0..sockets {
            let reply = owner.request(&Request::OpenDatagram).expect("OpenDatagram");
            let Some(fd) = reply.fd else {
                eprintln!("no datagram socket: {:?}", reply.response);
                break;
            };
            let frame = frame.clone();
            attack.spawn(UnixStream::from(fd), move |socket, stop, done| {
                flooder(socket, &frame, stop, done);
            });
        }
        attack.held.push(Box::new(owner));
        attack.started = Instant::now();
        attack
    }

    /// Stops it; what it got done: answers and frames a second, errors,
    /// refused and closed connections, and the attacking threads' CPU share.
    fn finish(self) -> String {
        let (done, secs) = (self.done.clone(), self.started.elapsed().as_secs_f64());
        drop(self);
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        format!(
            "{:.1}/s, {:.1} frames/s, errors {}, refused {}, closed {}; its CPU {:.0}%",
            load(&done.answers) as f64 / secs,
            load(&done.frames) as f64 / secs,
            load(&done.errors),
            load(&done.refused),
            load(&done.closed),
            load(&done.cpu_us) as f64 / 1e4 / secs
        )
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for socket in &self.sockets {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One attacking connection (see [`Attack`]).
fn attacker(
    mut socket: UnixStream,
    request: &[u8],
    pause: Duration,
    stop: &AtomicBool,
    done: &Done,
) {
    let hello = encode_frame(&Request::Hello {
        version: PROTOCOL_VERSION,
        client: "control_isolation".into(),
    })
    .expect("hello");
    let mut body = Vec::new();
    let admitted = socket.write_all(&hello).is_ok()
        && read_frame(&mut socket, &mut body).is_ok()
        && body.starts_with(br#"{"type":"hello""#);
    if !admitted {
        done.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let mut answered = socket.write_all(request).is_ok();
        while answered {
            answered = read_frame(&mut socket, &mut body).is_ok();
            done.frames
                .fetch_add(u64::from(answered), Ordering::Relaxed);
            nap(pause, stop);
            if !body.starts_with(br#"{"type":"rules_part""#) {
                break;
            }
        }
        if !answered {
            if !stop.load(Ordering::Relaxed) {
                done.closed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        done.answers.fetch_add(1, Ordering::Relaxed);
        if body.starts_with(br#"{"type":"error""#) {
            done.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One datagram socket of a flood: `frame` written into it as fast as
/// sald takes it, each counted as a frame, until the attack stops (or
/// sald closes the socket: counted as closed).
fn flooder(mut socket: UnixStream, frame: &[u8], stop: &AtomicBool, done: &Done) {
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        if socket.write_all(frame).is_err() {
            if !stop.load(Ordering::Relaxed) {
                done.closed.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        written += 1;
    }
    done.frames.fetch_add(written, Ordering::Relaxed);
}

/// The calling thread's CPU time so far, microseconds.
fn thread_cpu_us() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |usage| {
        (usage.user_time() + usage.system_time()).num_microseconds() as u64
    })
}

/// Reads one frame's body into `body`.
fn read_frame(socket: &mut UnixStream, body: &mut Vec<u8>) -> std::io::Result<()> {
    let mut prefix = [0u8; 4];
    socket.read_exact(&mut prefix)?;
    let len =
        frame_len(prefix).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    body.resize(len, 0);
    socket.read_exact(body)
}

/// Sleeps `pause`, or less if `stop` is set meanwhile.
fn nap(pause: Duration, stop: &AtomicBool) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
}

/// `NOBODY` binds `DRAIN_PREFIX` up to `listeners` times (draining each
/// binding so that the next may bind) and leaves a flow pending on the
/// first listener, so that a drain of the prefix waits; then `drains`
/// connections wait in drains of it.
fn drain_attack(server: &SaldProcess, listeners: usize, drains: usize) -> (Attack, usize) {
    let prefix: ServicePrefix = DRAIN_PREFIX.parse().expect("prefix");
    let mut owner = common::client_as(&server.control, NOBODY).expect("control socket");
    let mut pending = None;
    let mut bound = 0;
    while bound < listeners {
        let listen = Request::Listen {
            prefix,
            protocol: TransportProtocol::Stream,
            backlog: 1,
        };
        match owner.request(&listen).map(|r| r.response) {
            Ok(Response::Listening { .. }) => bound += 1,
            other => {
                eprintln!("listen {bound}: {other:?}");
                break;
            }
        }
        if pending.is_none() {
            let control = common::client_as(&server.control, NOBODY).expect("control socket");
            let service = DRAIN_SERVICE.parse().expect("service");
            let flow = ServiceStream::connect_via(control, service, Some(CONNECT_LIMIT));
            pending = Some(flow.expect("a flow to the first listener"));
        }
        let drain = Request::Drain {
            prefix,
            wait_ms: None,
        };
        match owner.request(&drain).map(|r| r.response) {
            Ok(Response::Drained { .. }) => {}
            other => panic!("drain: {other:?}"),
        }
    }
    let wait = Request::Drain {
        prefix,
        wait_ms: Some(600_000),
    };
    let mut attack = Attack::start(&server.control, drains, &wait, Duration::ZERO);
    attack.held.push(Box::new(owner));
    attack
        .held
        .extend(pending.map(|p| Box::new(p) as Box<dyn Send>));
    (attack, bound)
}

/// One row of the report.
struct Row {
    name: String,
    victim: Victim,
    /// The server sald's CPU share during the victim's runs.
    cpu: f64,
    /// The server sald's resident memory before the phase and its peak.
    rss: (u64, u64),
    /// No attacker in this phase.
    baseline: bool,
    /// What the attacker got done.
    attacker: String,
}

/// What every phase needs.
struct Bench<'a> {
    server: &'a SaldProcess,
    client: &'a SaldProcess,
    service: ServiceId,
    knobs: &'a Knobs,
    /// The server's control connections without an attacker.
    idle_clients: usize,
}

impl Bench<'_> {
    /// A baseline (no attacker), then `attack`'s phase, as two rows; none
    /// if it has no `connections`.
    fn versus(
        &self,
        rows: &mut Vec<Row>,
        connections: usize,
        name: String,
        attack: impl FnOnce() -> Attack,
    ) {
        if connections == 0 {
            return;
        }
        rows.push(self.phase("no attacker".into(), || None));
        rows.push(self.phase(name, || Some(attack())));
    }

    /// One phase: `attack` starts, the victim's runs follow after the
    /// warm-up, the attack stops, and the server's control connections
    /// go back to the baseline's.
    fn phase(&self, name: String, attack: impl FnOnce() -> Option<Attack>) -> Row {
        let pid = self.server.id();
        let rss_before = common::rss(pid);
        let peak = PeakRss::start(pid);
        let attack = attack();
        let baseline = attack.is_none();
        // The attacker alone: its take of sald's thread.
        let alone_before = process_cpu_us(pid).unwrap_or(0);
        if !baseline {
            thread::sleep(self.knobs.warmup);
        }
        let alone = process_cpu_us(pid)
            .unwrap_or(0)
            .saturating_sub(alone_before) as f64
            / 1e4
            / self.knobs.warmup.as_secs_f64();
        let cpu_before = process_cpu_us(pid).unwrap_or(0);
        let started = Instant::now();
        let victim = victim(
            &self.client.control,
            self.service,
            self.knobs.connects,
            self.knobs.millis,
        );
        let cpu = process_cpu_us(pid).unwrap_or(0).saturating_sub(cpu_before) as f64
            / 1e6
            / started.elapsed().as_secs_f64();
        let mut attacker = attack.map_or_else(String::new, |attack| {
            format!("sald CPU alone {alone:.0}%; {}", attack.finish())
        });
        let rss_peak = peak.finish();
        let settled = testnet::wait_until(SETTLE_LIMIT, || {
            self.server.stats().control_clients <= self.idle_clients
        });
        if !settled {
            attacker += &format!(
                "; {} control connections {SETTLE_LIMIT:?} after (baseline {})",
                self.server.stats().control_clients,
                self.idle_clients
            );
        }
        Row {
            name,
            victim,
            cpu,
            rss: (rss_before, rss_peak),
            baseline,
            attacker,
        }
    }
}

/// `value / base`, or `-` where either is missing.
fn ratio(value: f64, base: f64) -> String {
    if value.is_finite() && base.is_finite() && base > 0.0 {
        format!("{:.2}x", value / base)
    } else {
        "-".into()
    }
}

/// Prints the rows, each with its ratios against the last baseline before
/// it (a baseline against the first: how far the machine drifted).
fn report(rows: &[Row]) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "  {:<42} {:>14} {:>15} {:>15} {:>7} {:>7} {:>5} {:>13}  attacker",
        "phase", "bulk MiB/s", "connect p50 ms", "p99 ms", "max ms", "failed", "CPU", "RSS MiB"
    );
    let mut base = &rows[0];
    for row in rows {
        let v = &row.victim;
        let b = &base.victim;
        let figures = |v: &Victim| {
            let mbps = v.mbps.unwrap_or(f64::NAN);
            [mbps, v.percentile(50.0), v.percentile(99.0)]
        };
        let ([mbps, p50, p99], [b_mbps, b50, b99]) = (figures(v), figures(b));
        println!(
            "  {:<42} {:>7.0} {:>6} {:>8.2} {:>6} {:>8.2} {:>6} {:>7.2} {:>3}/{:<3} {:>4.0}% {:>5.0}->{:<5.0}  {}",
            row.name,
            mbps,
            ratio(mbps, b_mbps),
            p50,
            ratio(p50, b50),
            p99,
            ratio(p99, b99),
            v.percentile(100.0),
            v.failed,
            v.times.len() + v.failed,
            row.cpu * 100.0,
            mib(row.rss.0),
            mib(row.rss.1),
            row.attacker
        );
        if row.baseline {
            base = row;
        }
    }
}

fn main() {
    if !testnet::is_root() {
        eprintln!("control_isolation: needs root (other users' connections); skipped");
        return;
    }
    let knobs = Knobs::from_env();
    common::raise_fd_limit(knobs.sockets as u64 + 4_096);
    let dir = Scratch::new("ctliso");
    let server = SaldProcess::start(&dir, "server", "127.0.0.2:0", |_| {});
    let client = SaldProcess::start(&dir, "client", "127.0.0.1:0", |_| {});
    client.forward_to("0/0", server.locator(), 1);
    let started = Instant::now();
    add_rules(&server, knobs.rules);
    let _sockets = open_datagrams(&server, knobs.sockets);
    serve_victim(&server);
    let service: ServiceId = VICTIM_SERVICE.parse().expect("service");
    // Warm up: flows, the daemons' buffers.
    victim(&client.control, service, 20, 200);
    let bench = Bench {
        server: &server,
        client: &client,
        service,
        knobs: &knobs,
        idle_clients: server.stats().control_clients,
    };
    println!(
        "control_isolation: server sald with {} rules and {} datagram sockets (set up in {:.1} s); \
         victim uid {VICTIM}, attacker uid {NOBODY}; bulk {} ms, up to {} connects; same run",
        knobs.rules,
        knobs.sockets,
        started.elapsed().as_secs_f64(),
        knobs.millis,
        knobs.connects
    );
    let control = server.control.as_path();
    let mut rows = Vec::new();
    for &k in &knobs.listers {
        bench.versus(&mut rows, k, format!("ListRules looped x{k}"), || {
            Attack::start(control, k, &Request::ListRules, Duration::ZERO)
        });
    }
    bench.versus(
        &mut rows,
        knobs.stats,
        format!("Stats looped x{}", knobs.stats),
        || Attack::start(control, knobs.stats, &Request::Stats, Duration::ZERO),
    );
    let slow = knobs.slow_readers;
    bench.versus(
        &mut rows,
        slow,
        format!("slow ListRules readers x{slow}"),
        || Attack::start(control, slow, &Request::ListRules, SLOW_READ_EVERY),
    );
    let (mut bound, mut drain_setup) = (0, 0.0);
    let name = format!(
        "waiting Drains x{} ({} listeners)",
        knobs.drains, knobs.listeners
    );
    bench.versus(&mut rows, knobs.drains, name, || {
        let setup = Instant::now();
        let (attack, listeners) = drain_attack(&server, knobs.listeners, knobs.drains);
        bound = listeners;
        drain_setup = setup.elapsed().as_secs_f64();
        attack
    });
    let flooders = knobs.dgram_flooders;
    bench.versus(
        &mut rows,
        flooders,
        format!("datagram flood x{flooders}"),
        || Attack::flood(control, flooders),
    );
    if rows.is_empty() {
        println!("  no attack asked for");
        return;
    }
    report(&rows);
    println!(
        "  (each attack against the no-attacker run right before it, each of those against the \
         first; CPU: the server sald's share during the victim's runs; RSS: the server sald's, \
         before the phase -> peak; the drains' {bound} listeners took {drain_setup:.1} s to bind)"
    );
}
