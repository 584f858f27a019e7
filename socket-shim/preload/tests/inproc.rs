//! The in-process mode (`serval-run --in-process`): unmodified C programs
//! whose stream sockets run on a SAL host inside the program, against a
//! real sald on loopback. sald's counters tell which path the flows took:
//! an in-process listener's SYNs are relayed by sald (`forwarded`), an
//! in-process client's arrive at sald over UDP (`link_rx`); the daemon
//! path does neither with client and server on one sald.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use sal_control::{Request, Response, StatsReport};
use socket_shim::ControlClient;
use support::{c_program, Proc, Sald};

const T: Duration = Duration::from_secs(30);

/// `benches/c/connrate.c`, compiled once.
fn connrate() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/c/connrate.c");
        support::compile_c(&source, "connrate-inproc", &[])
    })
}

/// `tests/c/inproc_fork.c`, compiled once.
fn fork_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| support::compile_test_c("inproc_fork"))
}

/// `tests/c/inproc_exec.c`, compiled once.
fn exec_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| support::compile_test_c("inproc_exec"))
}

/// `tests/c/inproc_recycle.c`, compiled once.
fn recycle_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| support::compile_test_c("inproc_recycle"))
}

/// `tests/c/inproc_fds.c`, compiled once.
fn fds_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| support::compile_test_c("inproc_fds"))
}

/// sald's counters now.
fn stats(sald: &Sald) -> StatsReport {
    let reply = ControlClient::connect_to(&sald.control)
        .expect("control")
        .request(&Request::Stats)
        .expect("stats");
    match reply.response {
        Response::Stats { stats } => *stats,
        other => panic!("not stats: {other:?}"),
    }
}

/// `connrate server PORT 4` under `serval-run ARGS --map PORT=SERVICE`.
fn connrate_server(sald: &Sald, args: &[&str], map: &str, port: &str) -> Proc {
    let run_args: Vec<&str> = args.iter().copied().chain(["--map", map]).collect();
    let mut cmd = sald.run(&run_args, connrate(), &["server", port, "4"]);
    cmd.stdout(Stdio::piped());
    let mut proc = Proc::spawn("connrate server", &mut cmd);
    proc.wait_ready("listening");
    proc
}

/// Runs `connrate client` for a second (`extra`: `nonblock`) and returns
/// (done, errors).
fn connrate_client(
    sald: &Sald,
    args: &[&str],
    map: &str,
    port: &str,
    extra: &[&str],
) -> (u64, u64) {
    let run_args: Vec<&str> = args.iter().copied().chain(["--map", map]).collect();
    let client_args: Vec<&str> = ["client", "127.0.0.1", port, "2", "1000"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut cmd = sald.run(&run_args, connrate(), &client_args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("connrate client");
    let pid = child.id();
    // Killed if it hangs (the test's bound).
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(T);
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let output = child.wait_with_output().expect("connrate client output");
    drop(watchdog);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "connrate client failed: {}\n{out}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    let field = |name: &str| -> u64 {
        let at = words.iter().position(|w| *w == name).expect(name);
        words[at + 1].parse().expect(name)
    };
    (field("done"), field("errors"))
}

/// An unmodified multi-threaded TCP program (the connect bench's) under
/// `--in-process --map`: blocking and non-blocking connects (`poll` for
/// `POLLOUT`, `SO_ERROR`, `fcntl(O_NONBLOCK)`), accept, echo, close, from
/// two client threads against four server threads; and its flows really
/// ran in-process: sald relayed the listener's SYNs to the server's own
/// host, and the clients' SYNs came to it over UDP.
#[test]
fn connrate_in_process() {
    let sald = Sald::start();
    let map = "9101=beef01";
    let _server = connrate_server(&sald, &["--in-process"], map, "9101");
    let before = stats(&sald);
    let (done, errors) = connrate_client(&sald, &["--in-process"], map, "9101", &[]);
    assert!(
        done > 0 && errors == 0,
        "blocking: done {done} errors {errors}"
    );
    let (done_nb, errors_nb) =
        connrate_client(&sald, &["--in-process"], map, "9101", &["nonblock"]);
    assert!(
        done_nb > 0 && errors_nb == 0,
        "non-blocking: done {done_nb} errors {errors_nb}"
    );
    let after = stats(&sald);
    let relayed = after.host.forwarded - before.host.forwarded;
    assert!(
        relayed > 0,
        "sald relayed no SYN to the in-process listener: the daemon path was taken"
    );
    assert!(
        after.link_rx > before.link_rx,
        "no SYN came to sald over UDP"
    );
    // Whatever sald holds now is not these connections' (all closed): no
    // flow of sald's carried them.
    assert!(
        after.flows <= 1,
        "sald holds {} flows: the daemon path was taken",
        after.flows
    );
}

/// The C suite's stream modes over `AF_SERVAL` in-process: blocking
/// connect, `SO_RCVTIMEO` before connect holding for the flow,
/// `getpeername`, `SO_TYPE`, options, a 1 MB echo from two threads on one
/// socket with `shutdown(SHUT_WR)`; the non-blocking client; the
/// listener's `getsockname` and accepted addresses.
#[test]
fn serval_stream_modes_in_process() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef02", "3"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let before = stats(&sald);
    for _ in 0..2 {
        let mut cmd = sald.run(
            &["--in-process"],
            c_program(),
            &["stream-client", "beef02", "1000000"],
        );
        Proc::spawn("serval_test stream-client", &mut cmd).success(T);
    }
    // Non-blocking: epoll (a registration made before the connect, one
    // while it is in flight) and poll for `POLLOUT`, `SO_ERROR`, connect
    // again (0, then `EISCONN`), `O_NONBLOCK` kept, `EAGAIN`.
    let args = ["nonblock-client", "beef02", "1000000"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    Proc::spawn("serval_test nonblock-client", &mut cmd).success(T);
    server.success(T);
    let after = stats(&sald);
    assert!(after.host.forwarded > before.host.forwarded, "not relayed");
}

/// `ioctl(FIONREAD)` and `ioctl(SIOCOUTQ)` on in-process streams count
/// the engine's queues, as TCP's; a listener's `FIONREAD` is `EINVAL`;
/// `SO_SNDBUF` and `SO_RCVBUF` answer Linux's defaults (not 0) and twice
/// what was set; `TCP_MAXSEG` the flow's segment size; `SIOCOUTQNSD`
/// nothing unsent and `SIOCATMARK` 0 (`EINVAL` on a listener).
#[test]
fn ioctl_counts_a_stream_s_queues_in_process() {
    let sald = Sald::start();
    let args = ["stream-server", "beef11", "1"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let args = ["stream-queues", "beef11", "beef12"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    cmd.env("SERVAL_TEST_IN_ENGINE", "1");
    Proc::spawn("serval_test stream-queues", &mut cmd).success(T);
    server.success(T);
}

/// A peer program killed outright (`SIGKILL`: no FIN, no RST) whose
/// listener sald relayed: the writer's first packet after the kill comes
/// back as port unreachable (once sald let go of its copy of the killed
/// engine's socket), and its stream is reset within seconds (about 1.1 s
/// here), not after the 30 s peer timeout.
#[test]
fn a_writer_to_a_peer_killed_outright_is_reset_within_seconds_in_process() {
    let sald = Sald::start();
    let args = ["stream-server", "beef13", "2"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let pid = server.child.id().to_string();
    let args = ["write-until-reset", "beef13", pid.as_str()];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    Proc::spawn("serval_test write-until-reset", &mut cmd).success(T);
    let _ = server.wait_timeout(T);
}

/// A sald without relays (`--no-relays`: it neither routes a program's
/// SYNs nor relays its listeners): the process makes no engine, and
/// every socket takes the daemon path (nothing relayed, no SYN over
/// UDP), so that the program cannot tell.
#[test]
fn fallback_without_relays() {
    let sald = Sald::start_without_relays();
    let map = "9103=beef03";
    let _server = connrate_server(&sald, &["--in-process"], map, "9103");
    let before = stats(&sald);
    let (done, errors) = connrate_client(&sald, &["--in-process"], map, "9103", &["nonblock"]);
    assert!(done > 0 && errors == 0, "done {done} errors {errors}");
    let after = stats(&sald);
    assert_eq!(after.host.forwarded, before.host.forwarded, "relayed");
    assert_eq!(after.link_rx, before.link_rx, "a SYN came over UDP");
}

/// Three streams connected in-process, then `fork` while a thread waits in
/// `read` on one, another in `poll` on the second and a third in
/// `epoll_wait` on a set that holds the third: the fork hands the flows
/// to sald first (`inproc/handover.rs`), so the child sends on each, the
/// waits go on and get the echoes (no error, no spurious event, the
/// program's epoll data), close-on-exec stays as the program set it, and
/// the parent goes on with every stream; a socket the child makes works
/// (a fresh engine). sald counts the three flows it adopted.
#[test]
fn a_fork_hands_the_streams_to_sald_under_waiting_threads() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef04", "4"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fork_program(), &["beef04"]);
    Proc::spawn("inproc_fork", &mut cmd).success(T);
    server.success(T);
    let adopted = stats(&sald).host.flows_imported;
    assert_eq!(adopted, 3, "sald adopted the three streams");
}

/// In-process sockets across `exec` (`tests/c/inproc_exec.c`): a `vfork`
/// child's `exec` hands nothing over; `posix_spawn` hands over the
/// sockets with a number that is not close-on-exec, and only those; a
/// failed `exec` leaves the sockets with sald, working; a listener, a
/// stream and an accepted stream cross `execl` (more arguments than registers) at their numbers, two
/// close-on-exec streams are closed by it (their peers get the bytes,
/// then end of stream), a stream closed just before it delivers its
/// bytes (its reader paused: the `exec` waits for them), one kept across
/// it with its send buffer full crosses with every byte (when the buffer
/// grew past what an `Adopt` frame carries, after the `exec` waited for
/// it to drain: not every run), and `execle`'s environment reaches the
/// image after.
/// sald adopted two streams at the spawn, two at the failed `exec` and
/// the full one at the second.
#[test]
fn sockets_cross_exec_in_process() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef0e", "2"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(
        &["--in-process"],
        exec_program(),
        &["beef0e", "e7ec10", "e7ec11"],
    );
    Proc::spawn("inproc_exec", &mut cmd).success(T);
    server.success(T);
    let adopted = stats(&sald).host.flows_imported;
    assert_eq!(adopted, 5, "sald adopted the five open streams");
}

/// The C suite's listeners across `exec` and `posix_spawn`, in-process
/// (`serval_test exec-listener`, `exec-spawn-moved`): a listener crosses
/// `execl` (the shim hands it to sald first) and the image after accepts
/// from it; one crosses two `exec`s; a forked child (inetd) clears
/// close-on-exec and execs; a close-on-exec listener is closed by `exec`
/// and its service unbound; `posix_spawn`'s file actions move a listener
/// to another number, where the spawned program accepts from it.
#[test]
fn listeners_cross_exec_and_posix_spawn_in_process() {
    let sald = Sald::start();
    let run = |args: &[&str]| {
        let mut cmd = sald.run(&["--in-process"], c_program(), args);
        cmd.stdout(Stdio::piped());
        Proc::spawn(&format!("serval_test {}", args.join(" ")), &mut cmd)
    };
    let cases = [
        (&["exec-listener", "e7ec21", "2", "plain"][..], "e7ec21"),
        (&["exec-listener", "e7ec22", "2", "twice"], "e7ec22"),
        (&["exec-listener", "e7ec23", "2", "fork"], "e7ec23"),
        (&["exec-spawn-moved", "e7ec24", "2", "3"], "e7ec24"),
    ];
    for (args, sid) in cases {
        let mut server = run(args);
        server.wait_ready("ready");
        for _ in 0..2 {
            run(&["stream-client", sid, "100000"]).success(T);
        }
        server.success(T);
    }
    run(&["exec-listener", "e7ec25", "0", "cloexec"]).success(T);
}

/// Eight clients echo 64 KiB each at once through a server that exits
/// as soon as it has echoed them: its last bytes and ends of stream
/// still reach every client (the exit drives the host until it is
/// quiet, as the kernel goes on sending a dead process's bytes).
#[test]
fn a_server_s_last_bytes_outlive_its_exit() {
    let sald = Sald::start();
    let args = ["stream-server", "beef05", "8"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let args = ["many", "beef05", "8", "65536"];
    let mut cmd = sald.run(&["--in-process"], c_program(), &args);
    Proc::spawn("serval_test many", &mut cmd).success(T);
    server.success(T);
}

/// In-process numbers changed behind the shim's back: closed by
/// `syscall(SYS_close)` and by `close_range`, then reused by a pipe,
/// whose reads and writes must be the pipe's (the registry's identity
/// check); a pipe `dup2`ed onto a number registered in epoll, whose
/// registration must go with it (no event of the stream, still open
/// through a `dup`, reaches the set); a `dup` is close-on-exec in the
/// kernel, not for `F_GETFD` (as `dup` asks).
#[test]
fn numbers_changed_behind_the_shim_s_back() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef06", "3"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef06"]);
    Proc::spawn("inproc_fds", &mut cmd).success(T);
    server.success(T);
}

/// An in-process number closed by `syscall(SYS_close)` and given to
/// another file, which the program closes next with `close` (no call
/// between that would check the number): the close is that file's, the
/// stream is let go of (the server sees its end), and a socket the shim
/// made on such a number leaves no socket behind once closed (its
/// daemon-table entry goes too).
#[test]
fn a_number_reused_behind_the_shim_s_back_then_closed() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef0a", "2"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef0a", "closed"]);
    Proc::spawn("inproc_fds closed", &mut cmd).success(T);
    server.success(T);
}

/// An in-process listener at `EMFILE`: `accept` fails and the flow stays
/// queued (the next `accept` gets it, and it carries bytes); a `fork`
/// while a thread waits in `accept` hands the listener to sald first, and
/// the parent's waiting thread and the child each accept one flow from
/// it, as a prefork server's processes share a kernel listener.
#[test]
fn a_listener_at_emfile_and_shared_with_a_forked_child() {
    let sald = Sald::start();
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef07", "listener"]);
    Proc::spawn("inproc_fds listener", &mut cmd).success(T);
}

/// `shutdown` wakes whoever waits, as Linux's: `SHUT_RD` of a stream
/// gives the bytes already queued, then end of file, also to a thread
/// blocked in `read`; a listener's wakes a thread blocked in `accept`
/// with `EINVAL`, and later accepts fail at once, also after a `fork`
/// and in the child (the hand-over leaves a stopped listener alone).
#[test]
fn shutdown_wakes_blocked_readers_and_accepters() {
    let sald = Sald::start();
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef08", "shutdown"]);
    Proc::spawn("inproc_fds shutdown", &mut cmd).success(T);
}

/// `fstat`, `fstatat` and `statx` answer for an in-process number (an
/// eventfd in the kernel) as for a TCP socket: `S_ISSOCK`, a socket's mode
/// and device, an inode of its own that its `dup` shares.
#[test]
fn fstat_says_socket() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef0c", "2"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef0c", "stat"]);
    Proc::spawn("inproc_fds stat", &mut cmd).success(T);
    server.success(T);
}

/// glibc's stdio and `sendfile` on in-process streams: `fdopen` and
/// `sendfile` hand the stream to sald first (its number becomes a kernel
/// socket, which stdio's internal calls and the kernel's copy can use),
/// and the bytes echo intact; sald counts the two flows it adopted.
#[test]
fn stdio_and_sendfile_hand_the_stream_to_sald() {
    let sald = Sald::start();
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef09", "2"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef09", "stdio"]);
    Proc::spawn("inproc_fds stdio", &mut cmd).success(T);
    server.success(T);
    assert_eq!(stats(&sald).host.flows_imported, 2, "sald adopted both");
}

/// A flow sald refuses to adopt at a `fork` (its unread bytes exceed the
/// buffers sald's config allows) comes back to the engine
/// (`Stream::restore`): the parent reads every byte and the flow goes on.
#[test]
fn a_flow_sald_refuses_at_fork_stays_in_process() {
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(
        config.path(),
        "[tcp]\nmin_buffer = 4096\nmax_send_buffer = 8192\nmax_recv_buffer = 8192\n",
    )
    .expect("write config");
    let path = config.path().to_str().expect("utf-8 path");
    let udp = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, support::free_udp_port());
    let sald = Sald::start_with(udp, &["--relays", "--config", path]);
    let mut cmd = sald.run(
        &["--in-process"],
        c_program(),
        &["stream-server", "beef0b", "1"],
    );
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], fds_program(), &["beef0b", "refused"]);
    Proc::spawn("inproc_fds refused", &mut cmd).success(T);
    server.success(T);
    assert_eq!(stats(&sald).host.flows_imported, 0, "sald adopted nothing");
}

/// `serval_test ARGS` in the in-process mode against `sald`; a server
/// (`ready` awaited) if `serves`.
fn in_process(sald: &Sald, args: &[&str], serves: bool) -> Proc {
    let mut cmd = sald.run(&["--in-process"], c_program(), args);
    if serves {
        cmd.stdout(Stdio::piped());
    }
    let mut proc = Proc::spawn(&format!("serval_test {}", args.join(" ")), &mut cmd);
    if serves {
        proc.wait_ready("ready");
    }
    proc
}

/// A reset as TCP's, in the in-process mode (the C suite's reset
/// clients): the bytes that came, then `ECONNRESET` once, whichever of a
/// read, `recvmmsg`'s next call or `SO_ERROR` comes first, then end of
/// file and `EPIPE`; after `SHUT_RD` or `SHUT_WR` too; after the peer's
/// end of stream, end of file for good, `EPIPE` (and `SIGPIPE`) from a
/// write and `SO_ERROR`; `POLLHUP` to a `poll` that asks for nothing,
/// `POLLRDHUP`; `MSG_PEEK` leaves the bytes; a stream's `recvfrom` names
/// no sender.
#[test]
fn resets_hang_ups_and_peeks_in_process() {
    let sald = Sald::start();
    let serve = |sid: &str, server_mode: &str, clients: &[(&str, &str)]| {
        let count = clients.len().to_string();
        let mut server = in_process(&sald, &["reset-server", sid, server_mode, &count], true);
        for (mode, how) in clients {
            in_process(&sald, &["reset-client", sid, mode, how], false).success(T);
        }
        server.success(T);
    };
    serve(
        "5e1",
        "reset",
        &[
            ("reset", "read"),
            ("reset", "recvmmsg"),
            ("reset", "batch"),
            ("so-error", "read"),
            ("shut-rd-reset", "recvmsg"),
            ("shut-wr-reset", "read"),
        ],
    );
    serve(
        "5e2",
        "fin-reset",
        &[
            ("fin-reset", "read"),
            ("fin-reset-unread", "recvfrom"),
            ("so-error", "fin"),
        ],
    );
}

/// Signals and timeouts as TCP's, in the in-process mode: `accept` and
/// reads with `SO_RCVTIMEO` give up with `EAGAIN`, and any signal
/// interrupts their wait (`EINTR`, with `SA_RESTART` too), in inet mode
/// too (the C suite's `accept-timeout`).
#[test]
fn timeouts_and_signals_in_process() {
    let sald = Sald::start();
    let args = ["accept-timeout", "acc1", "7204", "acc2"];
    let mut cmd = sald.run(&["--in-process", "--map", "7204=acc2"], c_program(), &args);
    Proc::spawn("serval_test accept-timeout", &mut cmd).success(T);
}

/// `connect` to `AF_UNSPEC` in the in-process mode, as TCP's (the C
/// suite's clients): a connected stream is reset (the peer reads
/// `ECONNRESET`, also after its own `SHUT_WR`) and left unconnected on the
/// daemon path, a thread waiting in `read` gets `EPIPE`, the epoll
/// registration stays one, and a listener goes to sald and stops there,
/// bound still.
#[test]
fn connect_af_unspec_in_process() {
    let sald = Sald::start();
    for (mode, sid) in [
        ("unspec", "a1f5"),
        ("unspec-epoll", "a1f6"),
        ("unspec-reader", "a1f7"),
        ("unspec-peer", "a1f8"),
        ("unspec-listener", "a1f9"),
    ] {
        in_process(&sald, &[mode, sid], false).success(T);
    }
}

/// `fork` in the in-process mode (the C suite's): a server that forks
/// per accepted connection echoes every client byte-exact (the accepted
/// flows handed to sald at each `fork`, the listener at the first); a
/// client whose server already replied and finished (CLOSE-WAIT) forks,
/// and its child's `shutdown` reaches the server, the parent reading the
/// reply and end of file; forks among failing non-blocking connects
/// neither deadlock nor lose an outcome.
#[test]
fn forking_in_process() {
    let sald = Sald::start();
    let mut server = in_process(&sald, &["stream-server", "f1c4", "3", "fork"], true);
    for _ in 0..3 {
        in_process(&sald, &["stream-client", "f1c4", "200000"], false).success(T);
    }
    server.success(T);
    let mut server = in_process(&sald, &["reset-server", "5e9", "clean", "2"], true);
    for _ in 0..2 {
        let args = ["reset-client", "5e9", "clean-fork-shut", "read"];
        in_process(&sald, &args, false).success(T);
    }
    server.success(T);
    // 100 forks while two threads keep non-blocking connects failing
    // (no route): no deadlock, every outcome told (none lost to a
    // hand-over look), every child's own connects complete.
    in_process(&sald, &["fork-storm", "dead05", "100"], false).success(T);
}

/// [`support::flows_taken`] in the in-process mode.
fn flows_taken_in_process(sald: &Sald, service: &str, backlogs: &[usize]) -> usize {
    support::flows_taken(sald, &["--in-process"], service, backlogs, T)
}

/// A second `listen` on an in-process listener changes its backlog, as
/// Linux's: up from 1 to 1,500, and down from 1,500 to 1.
#[test]
fn a_second_listen_changes_the_backlog_in_process() {
    let sald = Sald::start();
    let raised = flows_taken_in_process(&sald, "ba1c03", &[1, 1500]);
    let lowered = flows_taken_in_process(&sald, "ba1c04", &[1500, 1]);
    assert!(
        raised >= 1500,
        "listen(1), then listen(1500): {raised} taken"
    );
    assert!(
        raised >= lowered + 1400,
        "listen(1500), then listen(1): {lowered} taken, against {raised}"
    );
}

/// The engine's own descriptors (its UDP socket, timerfd and eventfds,
/// opened at the first socket call) never take 0-2, in the in-process
/// mode as on the daemon path (the C suite's `low-fds`): a program that
/// closed its standard streams gets them back from its own `socket`,
/// `connect` and `accept`. The engine's UDP socket used to take 1.
#[test]
fn the_engine_s_descriptors_are_never_standard_streams() {
    let sald = Sald::start();
    in_process(&sald, &["low-fds", "10f1"], false).success(T);
}

/// The kernel TCP socket an in-process connect leaves (inet mode) is the
/// next `socket()`'s, as new: the options the program set off again, the
/// blocking mode and close-on-exec asked for, the lowest free number, not
/// bound, and working on the kernel's path; a socket copied with `dup` or
/// made before a `fork` is not (another holder could still use it). See
/// `inproc::recycle`.
#[test]
fn kernel_sockets_left_by_in_process_connects_are_made_new() {
    let sald = Sald::start();
    let map = "9111=beef11";
    let _server = connrate_server(&sald, &["--in-process"], map, "9111");
    let mut cmd = sald.run(
        &["--in-process", "--map", map],
        recycle_program(),
        &["9111"],
    );
    Proc::spawn("inproc_recycle", &mut cmd).success(T);
}

/// After a failed connect, a socket connects again, as Linux's TCP (the
/// C suite's `retry` and `inet-retry`, in-process): its error once, then
/// end of file from a read; a connect reports the failure it had not
/// reported (`ECONNABORTED`), and the next one starts anew; a connect
/// that reports the error itself leaves the socket to connect anew at
/// once. It used to answer `ECONNRESET` for good.
#[test]
fn a_socket_connects_again_after_a_failed_connect_in_process() {
    let sald = Sald::start();
    let mut server = in_process(&sald, &["stream-server", "be07", "2"], true);
    in_process(&sald, &["retry", "dead17", "be07"], false).success(T);
    let map = ["--in-process", "--map", "7011=dead18", "--map", "7012=be07"];
    let mut cmd = sald.run(&map, c_program(), &["inet-retry", "7011", "7012"]);
    Proc::spawn("serval_test inet-retry", &mut cmd).success(T);
    server.success(T);
}

/// Connects on one socket from two threads, in-process, as TCP's (the C
/// suite's `connect-twice`): the later blocking `connect` waits for the
/// first's outcome, and both return 0 (it got `EBADF`: the first installed
/// its stream only once connected, and the second made a flow of its own);
/// of two that fail, one reports the error and the other gets `EPIPE`
/// (both reported it). Also the misuse errnos after a failed blocking
/// connect (`ENOTCONN` from a read: TCP's socket is disconnected then).
#[test]
fn connects_on_one_socket_from_two_threads_in_process() {
    let sald = Sald::start();
    let (far, silent) = support::far_host(21);
    support::forward(&sald, "c2c2/16", far);
    let args = ["connect-twice", "c2c201", "7206", "c2c2ff"];
    let mut cmd = sald.run(
        &["--in-process", "--map", "7206=c2c201"],
        c_program(),
        &args,
    );
    cmd.stdout(Stdio::piped());
    let mut connecting = Proc::spawn("serval_test connect-twice", &mut cmd);
    connecting.wait_ready("connecting");
    let far = silent.host("c2c201/24");
    let mut server = in_process(&far, &["stream-server", "c2c201", "2"], true);
    connecting.success(T);
    server.success(T);
    in_process(&sald, &["misuse", "dead21"], false).success(T);
}
