//! The Serval C socket interface through LD_PRELOAD: a C program written
//! against serval.h (tests/c/serval_test.c), unmodified, under serval-run,
//! against a real sald.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::process::Stdio;
use std::time::Duration;

use support::{c_program, far_host, forward, Proc, Sald, Silent};

const T: Duration = Duration::from_secs(30);

fn server(sald: &Sald, args: &[&str]) -> Proc {
    let mut cmd = sald.run(&[], c_program(), args);
    cmd.stdout(Stdio::piped());
    let mut proc = Proc::spawn(&format!("serval_test {}", args.join(" ")), &mut cmd);
    proc.wait_ready("ready");
    proc
}

/// Where nobody answers: a connect to a service forwarded there waits
/// (for sald's SYN retries, 31.5 s); see [`testnet::silent_hole`].
fn hole() -> SocketAddrV4 {
    testnet::silent_hole()
}

fn client(sald: &Sald, args: &[&str]) -> Proc {
    let mut cmd = sald.run(&[], c_program(), args);
    Proc::spawn(&format!("serval_test {}", args.join(" ")), &mut cmd)
}

/// `ioctl(FIONREAD)` and `ioctl(SIOCOUTQ)` count a stream's queues, as
/// TCP's; a listener's `FIONREAD` is `EINVAL`; `SO_SNDBUF` and
/// `SO_RCVBUF` are never 0, and read back twice what was set.
#[test]
fn ioctl_counts_a_stream_s_queues() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "beef0f", "1"]);
    client(&sald, &["stream-queues", "beef0f", "beef10"]).success(T);
    srv.success(T);
}

#[test]
fn stream_echo_blocking_nonblocking_and_exec() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "beef01", "3"]);
    client(&sald, &["stream-client", "beef01", "4000000"]).success(T);
    // Non-blocking connect completed through epoll and poll, SO_ERROR 0.
    client(&sald, &["nonblock-client", "beef01", "1000000"]).success(T);
    // The client exec'd by a shell still has the shim (through the environment).
    let mut cmd = sald.run(
        &[],
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            &format!("exec {} stream-client beef01 100000", c_program().display()),
        ],
    );
    Proc::spawn("sh -c serval_test", &mut cmd).success(T);
    srv.success(T);
}

#[test]
fn datagram_echo() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["dgram-server", "d06", "40"]);
    client(&sald, &["dgram-client", "d06", "40"]).success(T);
    srv.success(T);
}

/// Unconnected datagrams with `sendmsg` and `recvmsg` only, as on a UDP
/// socket: iovecs gathered into one datagram sent to `msg_name`, received
/// scattered with the sender's address in `msg_name`, `MSG_TRUNC` in
/// `msg_flags` when the iovecs are too short; `readv` reads a payload.
#[test]
fn datagrams_with_sendmsg_and_recvmsg() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["dgram-msg-server", "d08", "10"]);
    client(&sald, &["dgram-msg-client", "d08"]).success(T);
    srv.success(T);
}

/// Unconnected datagrams in batches, as on a UDP socket: `sendmmsg` sends
/// each message to its `msg_name`, `recvmmsg` receives each with its
/// sender (`MSG_WAITFORONE`, `MSG_DONTWAIT`), both return how many
/// messages and set each one's `msg_len`; a message that fails ends the
/// batch, whose error it is only if it was the first; the timeout is
/// looked at after each message, as Linux does.
#[test]
fn datagrams_in_batches_with_sendmmsg_and_recvmmsg() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["dgram-mmsg-server", "d09", "6"]);
    client(&sald, &["dgram-mmsg-client", "d09"]).success(T);
    srv.success(T);
}

/// Connected datagram flows: `recvmsg` and `recvmmsg` name the peer in
/// `msg_name` as `recvfrom` does; `sendmmsg` sends on the flow.
#[test]
fn datagram_flows_listen_accept_and_half_close() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["dgram-flow-server", "d07", "3"]);
    client(&sald, &["dgram-flow-client", "d07"]).success(T);
    // As UDP: a socket bound, or one that sent a datagram, may connect.
    client(&sald, &["dgram-flow-client", "d07", "bind"]).success(T);
    client(&sald, &["dgram-flow-client", "d07", "sendto"]).success(T);
    srv.success(T);
}

/// A listening datagram socket has no data of its own, as a listening
/// `SOCK_SEQPACKET` socket of Linux's: a non-blocking `recv` fails with
/// `ENOTCONN` (it used to read the accept queue: `EAGAIN` with no flow
/// waiting, an accept notice's bytes with one, which `accept` then
/// missed), as do its other reads and its writes (`sendto`'s address
/// notwithstanding); `poll`, `select` and `epoll` still show the waiting
/// flow, and `accept` takes it.
#[test]
fn a_listening_datagram_socket_reads_and_writes_nothing() {
    let sald = Sald::start();
    client(&sald, &["dgram-listener", "d0a"]).success(T);
}

/// A listener crosses `exec` (when its number is not close-on-exec): the
/// new image's shim knows it (name, `SO_ACCEPTCONN`, `ENOTCONN` from a
/// read) and accepts from it, the service still bound (its control
/// connection crossed with it). Directly; from a forked child that
/// cleared close-on-exec (inetd) with `fcntl` or `ioctl(FIONCLEX)`; from
/// one that copied it with `dup2`.
/// A close-on-exec listener is unbound at exec: the new image binds its
/// service again.
#[test]
fn a_listener_crosses_exec() {
    let sald = Sald::start();
    for (sid, mode) in [
        ("e7ec1", "plain"),
        ("e7ec2", "fork"),
        ("e7ec5", "fork-ioctl"),
        ("e7ec3", "fork-dup2"),
    ] {
        let mut srv = server(&sald, &["exec-listener", sid, "2", mode]);
        for _ in 0..2 {
            client(&sald, &["stream-client", sid, "100000"]).success(T);
        }
        srv.success(T);
    }
    client(&sald, &["exec-listener", "e7ec4", "0", "cloexec"]).success(T);
}

/// A listener crosses two `exec`s in a row: the image it crossed into
/// records it again (at its number, or at the one a `dup2` there moved
/// it to), and the third image accepts from it.
#[test]
fn a_listener_crosses_exec_twice() {
    let sald = Sald::start();
    for (sid, mode) in [("e7ec7", "twice"), ("e7ec8", "twice-dup2")] {
        let mut srv = server(&sald, &["exec-listener", sid, "2", mode]);
        for _ in 0..2 {
            client(&sald, &["stream-client", sid, "100000"]).success(T);
        }
        srv.success(T);
    }
}

/// A copy of a listener made while the record of what crosses `exec`
/// carries its most is not carried; once the original is closed, the
/// listener's control connection does not cross `exec` either (it would
/// keep the service bound in an image that does not know the listener):
/// the new image binds the service again. In-process the listener takes
/// no place in the record until the `exec` hands it to sald, when there
/// is room: the copy crosses as a listener, as Linux's would, and closed
/// there lets the service go.
#[test]
fn a_listener_copy_past_the_records_most_is_unbound_at_exec() {
    let sald = Sald::start();
    client(&sald, &["exec-full-dup", "e7ec9"]).success(T);
}

/// A bound and an unbound (sent from) datagram socket cross `exec`: the
/// datagram sent before it is received after it, the reply reaches the
/// unbound socket unframed, the bound one echoes a client's datagrams.
#[test]
fn datagram_sockets_cross_exec() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["exec-dgram", "d0e", "10"]);
    client(&sald, &["dgram-client", "d0e", "10"]).success(T);
    srv.success(T);
}

/// The record of what crosses `exec` carries at most 256 sockets, so that
/// keeping it costs a bounded amount per change (4,000 unbound datagram
/// sockets took 2.1 s to make and 1.1 s to close with every one of them
/// rewritten at each change, 0.5-0.6 s and 0.04 s now and before the
/// record): the first ones cross, one made past that does not.
#[test]
fn the_record_of_what_crosses_exec_is_bounded() {
    let sald = Sald::start();
    client(&sald, &["exec-many-dgram", "d1e"]).success(T);
}

/// Records of what crosses `exec` that do not check out (noise, a count
/// past the end, cut short, not sealed, naming another socket's inode)
/// are read without harm, ignored and closed.
#[test]
fn records_that_do_not_check_out_are_ignored_across_exec() {
    let sald = Sald::start();
    client(&sald, &["exec-garbage", "-"]).success(T);
}

/// A listener's control connection that crosses `exec` without its
/// listener (`posix_spawn` closing the listener in its file actions, which
/// no fork handler or interposed `close` sees) does not keep the service
/// bound: the spawned program's shim closes it, so once the process that
/// listened exits, the service binds again.
#[test]
fn a_control_connection_without_its_listener_does_not_cross_exec() {
    let sald = Sald::start();
    client(&sald, &["exec-orphan", "e7ec6"]).success(T);
}

/// A program that closed its standard input and opens it again finds it
/// at 0, whatever the shim wrote meanwhile: the record of what crosses
/// `exec` is never at 0-2 (where the program's `open`, or a `dup2` onto
/// 0, would close it and the listener would not cross), and the listener
/// crosses `exec`.
#[test]
fn the_record_of_what_crosses_exec_is_never_a_standard_stream() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["exec-stdio", "e7eca", "1"]);
    client(&sald, &["stream-client", "e7eca", "100000"]).success(T);
    srv.success(T);
}

/// `listen` on a bound datagram socket while another thread fills the
/// record's last place between its two steps (sald stopped, so that the
/// listen waits there): the listener is not in the record, and its
/// control connection does not cross `exec` (the new image binds the
/// service again). In-process the copy that fills the record is of the
/// engine's listener, in no record: the datagram socket's listener keeps
/// its place and crosses as a listener, as Linux's would.
#[test]
fn a_listener_left_out_of_the_record_does_not_stay_bound_across_exec() {
    let sald = Sald::start();
    client(&sald, &["exec-listen-race", "e7ecb"]).success(T);
}

/// A listener moved where the shim does not see it (`posix_spawn`'s file
/// actions `dup2` it to 3, or to 0, and close the original) is taken up
/// by the spawned program at its new number, found by device and inode;
/// so are a bound and an unbound datagram socket moved so.
/// A `dup2` over a listener's number (which closes it) leaves it out of
/// the record: a plain file there after `exec`, the service unbound.
#[test]
fn a_moved_listener_crosses_exec_at_its_new_number() {
    let sald = Sald::start();
    for (sid, target) in [("e7ecc", "3"), ("e7ecd", "0")] {
        let mut srv = server(&sald, &["exec-spawn-moved", sid, "2", target]);
        for _ in 0..2 {
            client(&sald, &["stream-client", sid, "100000"]).success(T);
        }
        srv.success(T);
    }
    let mut srv = server(&sald, &["exec-spawn-moved-dgram", "d3e", "4"]);
    client(&sald, &["dgram-client", "d3e", "4"]).success(T);
    srv.success(T);
    client(&sald, &["exec-dup2-over", "e7ece"]).success(T);
}

/// A listener made before the shim's own constructor ran (by a library's
/// constructor: one preloaded after the shim, as a linked library's runs
/// before it too) is in this process's record when the shim looks for
/// the records that the image before left: the shim must not take its
/// own record for one, and close the listener's control connection as
/// one that crossed without its socket (the service would be unbound
/// under the program).
#[test]
fn a_listener_made_before_the_shim_is_loaded_stays_bound() {
    let sald = Sald::start();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = manifest.join("../include");
    let lib = support::compile_c(
        &manifest.join("tests/c/ctor_listener.c"),
        "libctor_listener.so",
        &[
            "-shared".as_ref(),
            "-fPIC".as_ref(),
            "-I".as_ref(),
            include.as_os_str(),
        ],
    );
    let mut cmd = sald.run(&[], c_program(), &["exec-accept", "e7ed0", "1", "50"]);
    cmd.env("LD_PRELOAD", &lib)
        .env("SERVAL_TEST_CTOR_SID", "e7ed0")
        .stdout(Stdio::piped());
    let mut srv = Proc::spawn("serval_test exec-accept e7ed0 (listening early)", &mut cmd);
    srv.wait_ready("ready");
    client(&sald, &["stream-client", "e7ed0", "100000"]).success(T);
    srv.success(T);
}

#[test]
fn fork_after_accept() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "f0c4", "3", "fork"]);
    for _ in 0..3 {
        client(&sald, &["stream-client", "f0c4", "200000"]).success(T);
    }
    srv.success(T);
}

/// Connects reuse the shim's idle control connection, but never one whose
/// descriptor the program closed and reused, nor one inherited by a
/// forked child.
#[test]
fn connects_reuse_control_connections_safely() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "2e05e", "5"]);
    client(&sald, &["reuse-client", "2e05e", "100000"]).success(T);
    srv.success(T);
}

/// A server that closes every number below 64 but its listener's (a
/// daemon closing what it does not know of) goes on serving: the shim's
/// own long-lived descriptors (the listener's control connection to sald;
/// in-process, the engine's and the relay's) are high in the table
/// (`socket_shim::fd::out_of_the_way`).
#[test]
fn a_server_closing_a_range_of_numbers_keeps_its_listener() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "c105f", "3", "close-others"]);
    for _ in 0..3 {
        client(&sald, &["stream-client", "c105f", "20000"]).success(T);
    }
    srv.success(T);
}

#[test]
fn many_concurrent_connections_with_nonblocking_accept() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "3a3", "48", "nonblock"]);
    client(&sald, &["many", "3a3", "48", "65536"]).success(T);
    srv.success(T);
}

/// 64 non-blocking connects in flight at once: one connector thread in the
/// program, not one per connect, and every flow echoes intact; then one
/// from a forked child, which needs a connector of its own.
#[test]
fn many_nonblocking_connects_share_one_thread() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "3a4", "65", "nonblock"]);
    client(&sald, &["nonblock-many", "3a4", "64", "20000"]).success(T);
    srv.success(T);
}

/// sald going away while a non-blocking connect waits: the connect fails
/// (`ECONNRESET` through `SO_ERROR`) instead of waiting forever, and the
/// next one opens a new connector connection (which fails at once with
/// `ENETDOWN`, sald being gone). In-process the SYN the program's host
/// sends again to sald's port is refused once sald is gone
/// (`ECONNREFUSED`); the next connect, which may go by a route the
/// program learnt, does not depend on sald there and is not looked at.
#[test]
fn a_waiting_nonblocking_connect_fails_when_sald_goes() {
    let sald = Sald::start();
    // Nobody answers at the hole: a connect to b1ac.. waits.
    forward(&sald, "b1ac/16", hole());
    let mut cmd = sald.run(&[], c_program(), &["nonblock-orphan", "b1ac01"]);
    cmd.stdout(Stdio::piped());
    let mut orphan = Proc::spawn("serval_test nonblock-orphan", &mut cmd);
    orphan.wait_ready("pending");
    drop(sald);
    orphan.success(T);
}

/// A blocking connect that waits is interrupted by a signal as TCP's:
/// `EINTR` from a handler without `SA_RESTART`, and the connect goes on (a
/// non-blocking connect is `EALREADY`, a later blocking connect waits for
/// the outcome, a write waits for it, `poll` shows the socket writable once
/// connected, a close ends another thread's wait), in inet mode too; with
/// `SA_RESTART` a connect rides the signals out. Nobody answers for each service until a
/// host comes up, where sald forwards it, after the program says so.
#[test]
fn a_signal_interrupts_a_blocking_connect_as_tcp() {
    let sald = Sald::start();
    let rule = |prefix: &str, locator: SocketAddrV4| forward(&sald, prefix, locator);
    let (far, mut silent): (Vec<SocketAddrV4>, Vec<Silent>) = (2..5).map(far_host).unzip();
    for (i, far) in far.iter().enumerate() {
        rule(&format!("e{0}e{0}/16", i + 1), *far);
    }
    rule("e0e0/16", hole());
    // The second service is reached from a TCP socket, in inet mode.
    let args = ["connect-eintr", "e1e101", "7202", "e3e301", "e0e001"];
    let mut cmd = sald.run(&["--map", "7202=e2e201"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut client = Proc::spawn("serval_test connect-eintr", &mut cmd);
    let mut lines = BufReader::new(client.child.stdout.take().expect("stdout")).lines();
    let mut hosts = Vec::new();
    for (marker, sid, count) in [
        ("connecting", "e1e101", "2"),
        ("restart", "e2e201", "1"),
        ("fresh", "e3e301", "1"),
    ] {
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(marker) => break,
                Some(Ok(_)) => continue,
                _ => panic!("connect-eintr exited before saying {marker:?}"),
            }
        }
        // Signals keep coming while the SYNs go unanswered for a while.
        std::thread::sleep(Duration::from_millis(500));
        let silent = silent.remove(0);
        let far_sald = silent.host(&format!("{sid}/24"));
        let srv = server(&far_sald, &["stream-server", sid, count]);
        hosts.push((far_sald, srv));
    }
    client.success(T);
    for (_far, mut srv) in hosts {
        srv.success(T);
    }
}

/// A blocking connect on a socket with `SO_SNDTIMEO` gives up as TCP's
/// does when that time has passed: `EINPROGRESS`, and the connect goes on
/// as a non-blocking one (`poll` shows it writable once connected,
/// `SO_ERROR` 0, the next `connect` 0, then `EISCONN`, on a `dup` of the
/// descriptor too, whose first `connect` is the one); meanwhile a
/// non-blocking connect is `EALREADY`, a blocking one waits the timeout
/// again (`EALREADY`), a write or read waits its timeout (`EAGAIN`), and any
/// signal interrupts the wait (`EINTR`, with `SA_RESTART` too, as TCP's
/// with a timeout); a negative timeout gives up at once, one too long to
/// matter (`LONG_MAX` s) waits for the outcome; a connect that fails
/// within the wait reports it, the receive timeout as the program set it
/// after; in inet mode too. Nobody answers for the service until a host
/// comes up for it, after the program says so. Connects left in flight
/// so take one thread and one control connection for the process, not
/// one each.
#[test]
fn a_blocking_connect_gives_up_after_so_sndtimeo_as_tcp() {
    let sald = Sald::start();
    let (far, silent) = far_host(5);
    forward(&sald, "c7c7/16", far);
    forward(&sald, "c0c0/16", hole());
    let args = ["connect-timeout", "c7c701", "7203", "c0c001", "dead07"];
    let mut cmd = sald.run(&["--map", "7203=c7c701"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut connecting = Proc::spawn("serval_test connect-timeout", &mut cmd);
    connecting.wait_ready("connecting");
    let far = silent.host("c7c701/24");
    let mut srv = server(&far, &["stream-server", "c7c701", "4"]);
    connecting.success(T);
    srv.success(T);
    // Connects that timed out go on through the process's connector: one
    // thread and one control connection however many are in flight.
    client(&sald, &["connect-timeout-many", "c0c002", "64"]).success(T);
}

/// Waits for a connect in flight as TCP's (each checked against Linux's
/// TCP, its SYNs dropped): a blocking `connect` on a socket whose
/// non-blocking connect is in flight waits for its outcome (it was
/// `EALREADY` at once), for `SO_SNDTIMEO` at most (`EALREADY` then), in
/// inet mode too; a stop and continue (`SIGSTOP`, `SIGCONT`, no handler)
/// ends a wait with a timeout with `EINTR` (it was restarted: `connect`,
/// `write` and `read` waiting for a connect, and a fresh connect with a
/// send timeout) and not one without; a send timeout of 1e15 s is one (a
/// `SA_RESTART` signal interrupts its wait), one of 1e17 s none, as Linux
/// takes a timeout too long to count in jiffies (it was a timeout, and
/// the signals interrupted it). Nobody answers for the service until a
/// host comes up for it, after the program says so.
#[test]
fn connects_wait_for_a_connect_in_flight_as_tcp() {
    let sald = Sald::start();
    let (far, silent) = far_host(6);
    forward(&sald, "c8c8/16", far);
    forward(&sald, "c9c9/16", hole());
    let args = ["connect-waits", "c8c801", "7205", "c9c901"];
    let mut cmd = sald.run(&["--map", "7205=c8c801"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut connecting = Proc::spawn("serval_test connect-waits", &mut cmd);
    connecting.wait_ready("connecting");
    // The stop (0.3 s after, for 0.2 s) and the signals come first.
    std::thread::sleep(Duration::from_secs(1));
    let far = silent.host("c8c801/24");
    let mut srv = server(&far, &["stream-server", "c8c801", "3"]);
    connecting.success(T);
    srv.success(T);
}

/// `connect` checks in Linux's order (each checked against Linux's TCP,
/// its SYNs dropped): what needs no socket first, at once (a NULL address
/// `EFAULT`, a length below 2 or above `sockaddr_storage` `EINVAL`; a
/// blocking connect waited for the connect in flight first, and a length
/// of 129 was cut to 128), then an `AF_UNSPEC` address disconnects (0; it
/// was `EAFNOSUPPORT`: a connect in flight ends, a thread waiting for it
/// gets `EPIPE`, reads `ECONNRESET` once, and the socket connects again),
/// then the socket's state (`EALREADY`, or a wait, and `EISCONN`, where a
/// short address or another family was `EINVAL` or `EAFNOSUPPORT`), then
/// the address. A receive timeout set while a connect is in flight leaves
/// an untimed wait for it restartable (a `SA_RESTART` signal made it
/// `EINTR`).
#[test]
fn connect_checks_in_linux_s_order() {
    let sald = Sald::start();
    forward(&sald, "cbcb/16", hole());
    let mut srv = server(&sald, &["stream-server", "c1c101", "2"]);
    client(&sald, &["connect-checks", "c1c101", "cbcb01"]).success(T);
    srv.success(T);
}

/// Two threads' blocking connects on one socket, neither with a send
/// timeout: the second waits for the first's outcome and both return 0, as
/// TCP's (checked against it; the second was `EALREADY` at once), in inet
/// mode too (where the program's own TCP socket is at the number); of two
/// that fail (the host has no such service), one reports the error and
/// the other gets `EPIPE`, as Linux's (6.18), also of two waiting for a
/// non-blocking connect (it was `ECONNABORTED`).
/// Nobody answers for the services until a
/// host comes up for one of them, after the program says so.
#[test]
fn a_second_blocking_connect_waits_for_the_first() {
    let sald = Sald::start();
    let (far, silent) = far_host(8);
    forward(&sald, "c2c2/16", far);
    let args = ["connect-twice", "c2c201", "7206", "c2c2ff"];
    let mut cmd = sald.run(&["--map", "7206=c2c201"], c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut connecting = Proc::spawn("serval_test connect-twice", &mut cmd);
    connecting.wait_ready("connecting");
    let far = silent.host("c2c201/24");
    let mut srv = server(&far, &["stream-server", "c2c201", "2"]);
    connecting.success(T);
    srv.success(T);
}

/// A blocking read with `SO_RCVTIMEO` on a socket whose non-blocking
/// connect is in flight waits that long in all, as TCP's (checked against
/// Linux's TCP, its first SYN dropped: `EAGAIN` after 2.5 s of 2.5): the
/// connect completes once the host comes up, a second or more in (the
/// SYNs that waited at its address are held until it listens), and the read then
/// waits for data only for what is left of its timeout (it
/// waited the whole timeout again on the flow: 5.5 s or more). Nobody
/// answers for the service until a host comes up for it, a second after
/// the program says so.
#[test]
fn a_read_waiting_for_a_connect_waits_its_timeout_in_all() {
    let sald = Sald::start();
    let (far, silent) = far_host(7);
    forward(&sald, "cdcd/16", far);
    let mut cmd = sald.run(&[], c_program(), &["read-timeout-connecting", "cdcd01"]);
    cmd.stdout(Stdio::piped());
    let mut connecting = Proc::spawn("serval_test read-timeout-connecting", &mut cmd);
    connecting.wait_ready("connecting");
    // The connect completes once the host is up, a second or more in:
    // what the read waited on the flow is then plain to see.
    std::thread::sleep(Duration::from_secs(1));
    let far = silent.host("cdcd01/24");
    let mut srv = server(&far, &["stream-server", "cdcd01", "1"]);
    connecting.success(T);
    srv.success(T);
}

/// `SO_RCVTIMEO` reads as the program set it (as Linux rounds it) while a
/// connect is in flight: timed out, interrupted or non-blocking (it read
/// 0: the placeholder's is turned off for the shim's waits).
#[test]
fn so_rcvtimeo_reads_as_set_while_a_connect_is_in_flight() {
    let sald = Sald::start();
    forward(&sald, "cacb/16", hole());
    client(&sald, &["rcvtimeo-connecting", "cacb01"]).success(T);
}

/// The kernel's clock rate, which the shim measures with a socket of its
/// own the first time it needs it, is measured again later when that
/// first time found no descriptor free (`EMFILE`): `SO_RCVTIMEO` then
/// reads as the kernel rounds it (it read as at 1000 Hz for good).
#[test]
fn the_clock_rate_is_measured_again_after_emfile() {
    let sald = Sald::start();
    forward(&sald, "cece/16", hole());
    client(&sald, &["hz-emfile", "cece01"]).success(T);
}

/// A forked child's copy of a socket whose non-blocking connect is in
/// flight never connects (README, "Known gaps") and polls as hung up: its
/// reads and writes fail with `ENOTCONN`, non-blocking ones too (they gave
/// `EAGAIN` for good, on which an event loop spins).
#[test]
fn a_forked_child_s_copy_of_a_connecting_socket_is_not_connected() {
    let sald = Sald::start();
    forward(&sald, "cfcf/16", hole());
    client(&sald, &["fork-connecting", "cfcf01"]).success(T);
}

/// A connect that completes while a `connect` call looks at the socket
/// returns 0, as TCP's, not `EISCONN` (the call saw the socket connecting,
/// then connected, and took it for one that had said so).
#[test]
fn the_first_connect_after_a_background_connect_returns_0() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "ccc1", "300"]);
    client(&sald, &["connect-race", "ccc1", "300"]).success(T);
    srv.success(T);
}

/// `accept` on a listener with `SO_RCVTIMEO` (set before `listen` or
/// after, in inet mode too) fails with `EAGAIN` once that time has passed
/// without a flow, as TCP's, and any signal interrupts it (`EINTR`, with
/// `SA_RESTART` too); reads of a flow with `SO_RCVTIMEO` give up with
/// `EAGAIN`.
#[test]
fn accept_and_reads_give_up_after_so_rcvtimeo() {
    let sald = Sald::start();
    let args = ["accept-timeout", "acc1", "7204", "acc2"];
    let mut cmd = sald.run(&["--map", "7204=acc2"], c_program(), &args);
    Proc::spawn("serval_test accept-timeout", &mut cmd).success(T);
}

/// Forks while two threads keep non-blocking connects in flight (their
/// requests being written on the connector connection, their answers
/// installed by the connector's thread): no fork deadlocks on the shim's
/// locks, and every child's own connects complete (none inherited a lock
/// held by a thread it does not have).
#[test]
fn forks_while_nonblocking_connects_complete() {
    let sald = Sald::start();
    client(&sald, &["fork-storm", "dead04", "100"]).success(T);
}

#[test]
fn a_socket_connects_again_after_a_failed_connect() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "beef07", "2"]);
    client(&sald, &["retry", "dead07", "beef07"]).success(T);
    let map = ["--map", "7001=dead08", "--map", "7002=beef07"];
    let mut cmd = sald.run(&map, c_program(), &["inet-retry", "7001", "7002"]);
    Proc::spawn("serval_test inet-retry", &mut cmd).success(T);
    srv.success(T);
}

#[test]
fn inet_mode_keeps_what_was_set_before_connect() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["stream-server", "beef09", "2"]);
    let mut cmd = sald.run(
        &["--map", "7003=beef09"],
        c_program(),
        &["inet-client", "7003", "100000"],
    );
    Proc::spawn("serval_test inet-client", &mut cmd).success(T);
    srv.success(T);
}

#[test]
fn copies_of_a_listener_and_a_flow_mean_the_same() {
    let sald = Sald::start();
    client(&sald, &["dup", "d0d0"]).success(T);
}

/// [`support::flows_taken`] on the daemon path.
fn flows_taken(sald: &Sald, service: &str, backlogs: &[usize]) -> usize {
    support::flows_taken(sald, &[], service, backlogs, T)
}

/// `listen`'s backlog reaches sald (the shim binds at `bind`, with a
/// backlog of 128, and used to leave it at that). A listener nobody
/// accepts from takes flows until its accept queue's socket is full (a
/// few hundred, however fast sald feeds it) and its backlog in sald is
/// too, then refuses.
#[test]
fn listen_s_backlog_bounds_the_flows_waiting_to_be_accepted() {
    let sald = Sald::start();
    let small = flows_taken(&sald, "ba0c01", &[1]);
    let large = flows_taken(&sald, "ba0c02", &[1500]);
    assert!(large >= 1500, "backlog 1,500 took {large}");
    assert!(
        large - small >= 1400,
        "backlog 1 took {small}, 1,500 {large}"
    );
}

/// A flow the server closes with the client's request unread is reset
/// (by sald, as TCP resets it): the client reads the reply, then
/// `ECONNRESET` once (through `read`, `recv`, `recvfrom`, `recvmsg`,
/// `readv` and `recvmmsg`), then end of file; a `recvmmsg` batch that
/// takes the reply and meets the reset leaves the reset to the next read.
/// A flow the server closes after reading the request ends with end
/// of file only, also when the client shut its writing down (directly,
/// through a copy, or in a forked child that shares the socket), after
/// which sald hangs the flow up too. Linux, measured over loopback: a
/// forked child's `shutdown(SHUT_WR)`, then the peer's FIN, and the
/// parent reads the reply, then 0 for good. The parent's shim, which does
/// not hear of the child's shutdown, used to read `ECONNRESET` once: sald
/// did not mark the hang-up as coming after the peer's end of stream once
/// the application had shut its sending down.
#[test]
fn a_reset_flow_reads_econnreset_once_a_finished_one_end_of_file() {
    let sald = Sald::start();
    let hows = [
        "read", "recv", "recvfrom", "recvmsg", "readv", "recvmmsg", "batch",
    ];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5e7", "reset", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5e7", "reset", how]).success(T);
    }
    srv.success(T);
    let mut srv = server(&sald, &["reset-server", "5e8", "clean", "7"]);
    for (mode, how) in [
        ("clean", "read"),
        ("clean", "recv"),
        ("clean", "recvmsg"),
        ("clean-shut", "readv"),
        ("clean-shut", "read"),
        ("clean-dup-shut", "recvfrom"),
        ("clean-fork-shut", "read"),
    ] {
        client(&sald, &["reset-client", "5e8", mode, how]).success(T);
    }
    srv.success(T);
}

/// A second `listen` changes the backlog, as Linux's does (it used to
/// keep the first one's): up from 1 to 1,500, and down from 1,500 to 1.
#[test]
fn a_second_listen_changes_the_backlog() {
    let sald = Sald::start();
    let raised = flows_taken(&sald, "ba0c03", &[1, 1500]);
    let lowered = flows_taken(&sald, "ba0c04", &[1500, 1]);
    assert!(
        raised >= 1500,
        "listen(1), then listen(1500): {raised} taken"
    );
    assert!(
        raised >= lowered + 1400,
        "listen(1500), then listen(1): {lowered} taken, against {raised}"
    );
}

/// A reset that comes after the peer's FIN, which the client read as end
/// of file, reads as end of file, as from TCP (whose reads return 0 once
/// its FIN came); a write then fails with `EPIPE`.
#[test]
fn a_reset_after_the_fin_reads_as_end_of_file() {
    let sald = Sald::start();
    let hows = ["read", "recvmsg", "recvmmsg"];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5e9", "fin-reset", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5e9", "fin-reset", how]).success(T);
    }
    srv.success(T);
}

/// A FIN and then a reset, both in before the client reads anything,
/// read as from TCP, whose reset in CLOSE_WAIT leaves what was received
/// and the FIN to be read: the reply, then end of file (not
/// `ECONNRESET`), for good; a write then fails with `EPIPE`, and raises
/// `SIGPIPE` unless `MSG_NOSIGNAL`. `recvfrom` and `recvmsg` name no
/// sender, as TCP's do not (sald's mark is a name: `socket_shim::reset`).
#[test]
fn a_fin_and_a_reset_both_unread_read_as_end_of_file() {
    let sald = Sald::start();
    let hows = ["read", "recv", "recvfrom", "recvmsg", "readv", "recvmmsg"];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5eb", "fin-reset", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5eb", "fin-reset-unread", how]).success(T);
    }
    srv.success(T);
}

/// A reset after the program shut its reading down (its reads then gave
/// end of file at once, no FIN having come) is `ECONNRESET` once, as
/// from TCP: that end of file was not the peer's end of stream.
#[test]
fn a_reset_after_shut_rd_reads_econnreset() {
    let sald = Sald::start();
    let hows = ["read", "recvmsg"];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5ea", "reset", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5ea", "shut-rd-reset", how]).success(T);
    }
    srv.success(T);
}

/// `shutdown(SHUT_RD)` while sald still has bytes of the reply to write
/// into the socket, then the peer's FIN (after the rest of the reply) and
/// a reset: the client reads what its socket held, then end of file for
/// good, as from TCP (measured over loopback: SHUT_RD with data coming,
/// FIN, RST, and reads give the data, then 0: the FIN came first). sald
/// took the failed write for the application gone and stopped reading the
/// flow, so the FIN was never delivered (and the flow's window stayed
/// shut): the server's reply stalled, and a reset read as `ECONNRESET`.
#[test]
fn a_reset_after_shut_rd_and_the_fin_reads_as_end_of_file() {
    let sald = Sald::start();
    let hows = ["read", "recvmsg"];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5ec", "shut-rd-fin", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5ec", "shut-rd-fin", how]).success(T);
    }
    srv.success(T);
}

/// A program that closed its standard streams gets 0-2 back from its own
/// calls, as from the kernel's (measured: with 0 and 1 closed, `socket`
/// is 0 and the next `open` 1), and the shim's own descriptors never take
/// them: a placeholder's peer end, the control connections of `bind`, of
/// a blocking `connect` (kept for the next) and of the connector of
/// non-blocking ones. Each used to take the lowest free number.
#[test]
fn the_shim_s_own_descriptors_are_never_standard_streams() {
    let sald = Sald::start();
    client(&sald, &["low-fds", "10f0"]).success(T);
}

/// `dup2` or `dup3` over the last number of a listener does what `close`
/// does: the service is unbound at once, also while a forked child holds
/// copies of the listener and of its control connection (the listener's
/// process let it go). It used to forget the listener without the
/// shutdown of its control connection that `close` makes, so the child's
/// copy kept the service bound.
#[test]
fn a_copy_over_a_listener_s_last_number_unbinds_it() {
    let sald = Sald::start();
    client(&sald, &["dup2-listener", "d2a", "dup2"]).success(T);
    client(&sald, &["dup2-listener", "d2b", "dup3"]).success(T);
}

/// `connect` to an `AF_UNSPEC` address on a connected stream disconnects
/// it, as TCP's (measured over loopback): 0, then `ECONNRESET` from the
/// next read and `ENOTCONN` after, `EPIPE` from a write, `SO_ERROR` 0,
/// `getpeername` `ENOTCONN`, hung up to `poll`, the peer's flow ended, and
/// the socket connects again. It used to answer `EISCONN` and leave the
/// flow as it was.
#[test]
fn connect_af_unspec_disconnects_a_connected_stream() {
    let sald = Sald::start();
    client(&sald, &["unspec", "a0f5"]).success(T);
}

/// `connect(AF_UNSPEC)` on a connected stream registered with epoll, while
/// a copy (`dup`, or a forked child's) keeps its flow open: epoll reports
/// the number once, and `EPOLL_CTL_DEL` on it leaves nothing registered, as
/// for TCP's socket, which the disconnect keeps. The swap to a placeholder
/// left the flow's registration in the set (epoll keeps one until the last
/// copy of its file closes): a second event for the number, hung up and
/// level-triggered for good, that no `EPOLL_CTL_DEL` could remove.
#[test]
fn connect_af_unspec_leaves_one_epoll_registration() {
    let sald = Sald::start();
    client(&sald, &["unspec-epoll", "a0f6"]).success(T);
}

/// `connect(AF_UNSPEC)` on a connected stream while another thread waits
/// in `read` on it: that read fails with `EPIPE`, the next is `ECONNRESET`,
/// then `ENOTCONN`, as TCP's (measured over loopback, Linux 6.18: a wait
/// that `tcp_disconnect` interrupted fails, and the reset stays for the
/// next read). The waiting read used to return 0, as at the peer's end of
/// stream, which a reader thread takes for a finished flow.
#[test]
fn connect_af_unspec_fails_a_waiting_read() {
    let sald = Sald::start();
    client(&sald, &["unspec-reader", "a0f7"]).success(T);
}

/// `connect(AF_UNSPEC)` on a connected stream resets its flow, as TCP's
/// `tcp_disconnect` does (measured over loopback, Linux 6.18: the peer's
/// read is `ECONNRESET`, then 0, a write `EPIPE`), also when the peer had
/// shut its writing down first (the client in `CLOSE_WAIT`). sald finished
/// the flow with a FIN (the flow's socket, shut down both ways, could not
/// say more): the peer read end of file.
#[test]
fn connect_af_unspec_resets_the_peer() {
    let sald = Sald::start();
    client(&sald, &["unspec-peer", "a0f8"]).success(T);
}

/// `connect(AF_UNSPEC)` on a listener stops it listening while it stays
/// bound, as TCP's (measured over loopback, Linux 6.18): 0; an `accept`
/// waiting in another thread, and any after, `EINVAL`; the flows it held
/// established and not accepted reset; `SO_ACCEPTCONN` 0; its service
/// still bound (`EADDRINUSE` elsewhere) but refusing connects
/// (`ECONNREFUSED`); a connect from it `EINVAL`; hung up to `poll`; and
/// `listen` makes it listen again, its `dup` copy too. It used to answer
/// `EISCONN` and go on listening (sald had no request to stop a listener
/// that stays bound: `StopListening` now).
#[test]
fn connect_af_unspec_stops_a_listener_bound_still() {
    let sald = Sald::start();
    client(&sald, &["unspec-listener", "a0f9"]).success(T);
}

/// `connect(AF_UNSPEC)` on a socket whose non-blocking connect completes
/// meanwhile (3,000 times, at delays spread over a connect's time) always
/// disconnects it, as TCP's. A connect that completed between the shim's
/// look at the socket and its lock was taken for a connected socket's
/// `connect` (0 from the first after a background connect, `EISCONN`
/// after), the socket left connected.
#[test]
fn connect_af_unspec_disconnects_a_connect_completing_meanwhile() {
    let sald = Sald::start();
    client(&sald, &["unspec-race", "a0fa", "400"]).success(T);
}

/// A reset after the program shut its writing down (`SHUT_WR`) is
/// `ECONNRESET` once, after what came, as from TCP (measured over
/// loopback, Linux 6.18), in the process that shut it down. Its reads gave
/// end of file: the hang-up a reset makes is also a finished flow's once
/// the program shut its writing down, and sald did not mark which.
#[test]
fn a_reset_after_shut_wr_reads_econnreset() {
    let sald = Sald::start();
    let hows = ["read", "recvmsg"];
    let count = hows.len().to_string();
    let mut srv = server(&sald, &["reset-server", "5ee", "reset", &count]);
    for how in hows {
        client(&sald, &["reset-client", "5ee", "shut-wr-reset", how]).success(T);
    }
    srv.success(T);
}

/// `SO_ERROR` holds a reset once, as TCP's (measured over loopback, Linux
/// 6.18): `ECONNRESET` for a reset, after which reads give what came and
/// end of file; `EPIPE` for a reset after the peer's FIN. It was 0.
#[test]
fn so_error_holds_a_reset_once() {
    let sald = Sald::start();
    let mut srv = server(&sald, &["reset-server", "5ef", "reset", "1"]);
    client(&sald, &["reset-client", "5ef", "so-error", "read"]).success(T);
    srv.success(T);
    let mut srv = server(&sald, &["reset-server", "5f0", "fin-reset", "1"]);
    client(&sald, &["reset-client", "5f0", "so-error", "fin"]).success(T);
    srv.success(T);
}

/// A close after `shutdown(SHUT_RD)`, with bytes come since, resets the
/// flow, as TCP's (measured over loopback: the peer's next read is
/// `ECONNRESET`), whose close finds them unread. sald threw them away (the
/// socket takes no more after `SHUT_RD`) and then closed the flow with a
/// FIN: the peer read end of file, as if they had been read.
#[test]
fn a_close_after_shut_rd_with_bytes_come_since_resets_the_flow() {
    let sald = Sald::start();
    client(&sald, &["shut-rd-close", "5ed"]).success(T);
}

/// Forks while a thread keeps calling `listen` on a listener (each sends
/// its backlog to sald): a child's `listen` on the listener it inherited
/// returns, and the parent's keep being answered.
#[test]
fn forks_while_a_listener_listens_again() {
    let sald = Sald::start();
    client(&sald, &["listen-fork", "1f0c", "50"]).success(T);
}

#[test]
fn misuse_gets_the_right_errno() {
    let sald = Sald::start();
    client(&sald, &["misuse", "dead01"]).success(T);
    client(&sald, &["nonblock-fail", "dead02"]).success(T);
    // sald not running: a control path nobody listens on.
    let mut cmd = sald.run(&[], c_program(), &["nodaemon", "dead03"]);
    cmd.env("SERVAL_CONTROL", sald.dir.path().join("nobody.sock"));
    Proc::spawn("serval_test nodaemon", &mut cmd).success(T);
}
