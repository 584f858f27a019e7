//! epoll on in-process streams (`serval-run --in-process`), where
//! `EPOLLOUT` interest rides on a second, tagged registration that
//! `epoll_wait` translates back (`src/inproc/epoll.rs`): `EPOLLONESHOT`
//! covers both parts, both parts of one socket come as one event, a
//! `EPOLL_CTL_MOD` racing `epoll_wait` never leaks a tag, and a forked
//! child's `close` leaves its parent's registrations alone. Each case is
//! `tests/c/inproc_epoll.c` against a `stream-server` (echo) of the C
//! suite, under a real sald that relays.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use support::{c_program, Proc, Sald};

const T: Duration = Duration::from_secs(30);

/// `tests/c/inproc_epoll.c`, compiled once.
fn program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| support::compile_test_c("inproc_epoll"))
}

/// Runs `inproc_epoll MODE SID` in-process against an in-process echo
/// server for SID; both must succeed within [`T`].
fn case(mode: &str, sid: &str) {
    let sald = Sald::start();
    let mut cmd = sald.run(&["--in-process"], c_program(), &["stream-server", sid, "1"]);
    cmd.stdout(Stdio::piped());
    let mut server = Proc::spawn("serval_test stream-server", &mut cmd);
    server.wait_ready("ready");
    let mut cmd = sald.run(&["--in-process"], program(), &[mode, sid]);
    Proc::spawn(&format!("inproc_epoll {mode}"), &mut cmd).success(T);
    server.success(T);
}

/// `EPOLLONESHOT|EPOLLIN|EPOLLOUT`: one event per arming (the writable
/// part firing disarms the readable part: data arriving later wakes
/// nobody), until an `EPOLL_CTL_MOD` re-arms both for its new interest.
#[test]
fn oneshot_is_one_registration() {
    case("oneshot", "beef31");
}

/// Level-triggered `EPOLLIN|EPOLLOUT` on a stream with data queued: one
/// event with both flags each time, as the kernel's for one socket.
#[test]
fn readable_and_writable_come_as_one_event() {
    case("merged", "beef32");
}

/// A thread toggling `EPOLLOUT` (`EPOLL_CTL_MOD`, and `DEL` then `ADD`)
/// while two others sit in `epoll_wait` for half a second: every event
/// carries the program's `data`, never the shim's tag.
#[test]
fn a_mod_racing_epoll_wait_leaks_no_tag() {
    case("race", "beef33");
}

/// The same race, and no `epoll_wait` comes back empty-handed: one whose
/// events were all dropped as stale waits again for the time left.
/// Needs `inproc::epoll::wait` wired into `lib.rs`'s `epoll_wait` family.
#[test]
fn a_result_emptied_by_dropping_waits_again() {
    case("race-rewait", "beef35");
}

/// A writable part that cannot be registered (no descriptor left for
/// its copy) fails the `EPOLL_CTL_ADD`, leaving nothing registered; 300
/// sets the program closes leave no copy open behind them, and a set
/// that lives on through them keeps both parts.
#[test]
fn failures_are_told_and_closed_sets_leak_nothing() {
    case("hygiene", "beef36");
}

/// A forked child closes its copy of an in-process number registered in
/// a set it shares with its parent, and exits: the parent still gets
/// `EPOLLOUT`, then `EPOLLIN` when the echo comes.
#[test]
fn a_forked_child_s_close_leaves_the_parent_s_registration() {
    case("fork", "beef34");
}
