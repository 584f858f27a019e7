//! The engine at the descriptor limit (alone in its test binary: it lowers
//! the process's `RLIMIT_NOFILE`, which every thread shares). A connect or
//! an accept that cannot get its stream's eventfds fails with `EMFILE`,
//! nothing panics, and the flows already open keep working; once
//! descriptors are free again, connects and accepts succeed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sal_inproc::{Error, Mode, Stream};

/// Sets the soft descriptor limit (the hard one stays); returns the old
/// soft one.
fn set_soft_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the call's duration.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let old = limit.rlim_cur;
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    old
}

/// Puts the soft descriptor limit back when dropped, even if the test
/// panics.
struct RestoreLimit(u64);

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        set_soft_limit(self.0);
    }
}

/// The soft limit that leaves exactly `free` descriptor numbers unused
/// below it: `RLIMIT_NOFILE` bounds numbers, not a count, and a new
/// descriptor takes the lowest free number.
fn limit_leaving(free: u64) -> u64 {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd must be readable");
    let open: std::collections::BTreeSet<u64> = (dir)
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut left = free;
    (0..)
        .find(|n| {
            if !open.contains(n) {
                if left == 0 {
                    return true;
                }
                left -= 1;
            }
            false
        })
        .expect("a number")
}

/// Whether `fd` polls readable now.
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
}

/// A message each way on an established pair, byte-exact.
fn exchange(a: &Stream, b: &Stream, seed: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (from, to, seed) in [(a, b, seed), (b, a, seed + 1)] {
        let msg = pattern(3000, seed);
        write_all(from, &msg, deadline).expect("write");
        let mut got = vec![0; msg.len()];
        read_exact(to, &mut got, deadline).expect("read");
        assert!(got == msg, "exchange {seed} differs");
    }
}

fn connect(client: &sal_inproc::Runtime) -> Result<Stream, Error> {
    client.connect(
        service(),
        Mode::Until(Instant::now() + Duration::from_secs(10)),
    )
}

#[test]
fn running_out_of_descriptors_is_emfile_and_the_engine_keeps_serving() {
    let (server, listener) = server(64);
    let client = client(&server);
    let open = connect(&client).expect("connect");
    let served = listener.accept(Mode::Blocking).expect("accept");
    exchange(&open, &served, 1);

    // Six free descriptor numbers: three more streams' eventfds, no more.
    let _restore = RestoreLimit(set_soft_limit(limit_leaving(6)));
    let mut streams = Vec::new();
    let (refused, sent_before) = loop {
        // The last connect's handshake ACK, held for a first write that
        // does not come, goes at the delayed-ACK timer: before the count.
        std::thread::sleep(Duration::from_millis(20));
        let sent_before = client.host_stats().packets_out;
        match connect(&client) {
            Ok(stream) => streams.push(stream),
            Err(error) => break (error, sent_before),
        }
        assert!(streams.len() < 100, "the descriptor limit never bit");
    };
    // Refused before the host made a flow: no SYN went out for it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        client.host_stats().packets_out,
        sent_before,
        "the refused connect sent packets"
    );
    assert_eq!(
        refused.errno(),
        libc::EMFILE,
        "a connect past the limit (after {} made): {refused}",
        streams.len()
    );
    assert!(matches!(refused, Error::Io(_)), "{refused:?}");
    let made = streams.len();
    assert!(made >= 1, "no connect fit under the limit");
    // The host forgot the refused connect's flow: the established ones,
    // and the first.
    assert_eq!(client.flow_count(), made + 1, "client flows");

    // The flows the client made wait in the server's queue; accepting one
    // needs eventfds too.
    let started = Instant::now();
    let accept = listener.accept(Mode::Until(started + Duration::from_secs(5)));
    let accept_error = accept.err().expect("an accept at the limit succeeded");
    assert_eq!(accept_error.errno(), libc::EMFILE, "{accept_error}");
    // At once, not at the deadline; and the flow stays queued, the
    // listener readable, as Linux's accept leaves both (a poller retries).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "EMFILE only at the deadline"
    );
    assert!(
        readable(listener.readable_fd().unwrap()),
        "the listener no longer polls readable"
    );

    // What was open keeps working, both ways, with the engine at the limit.
    exchange(&open, &served, 3);

    // A closed stream's eventfds serve the next connect.
    drop(streams.pop());
    let again = connect(&client).expect("a connect once a stream closed");
    streams.push(again);
    exchange(&open, &served, 5);

    // Descriptors again: the server accepts every flow that waited (the
    // failed accept left its flow queued, as Linux's does), in the order
    // they were opened, and each works end to end; the one the client
    // closed meanwhile reads as ended.
    drop(_restore);
    eprintln!("{made} connects fit under the limit");
    let accepted: Vec<Stream> = (0..=made)
        .map(|i| {
            let until = Instant::now() + Duration::from_secs(10);
            (listener.accept(Mode::Until(until)))
                .unwrap_or_else(|e| panic!("flow {i} of {} lost at the limit: {e}", made + 1))
        })
        .collect();
    let mut accepted = accepted;
    let more = listener.accept(Mode::NonBlocking).map(|s| s.id());
    assert!(
        matches!(more, Err(Error::WouldBlock)),
        "a flow too many: {more:?}"
    );
    let closed = accepted.remove(made - 1);
    let end = read_to_end(&closed, Instant::now() + Duration::from_secs(10));
    assert_eq!(end.map_err(|e| e.to_string()), Ok(Vec::new()));
    for (i, (client_end, server_end)) in streams.iter().zip(&accepted).enumerate() {
        exchange(client_end, server_end, 11 + 2 * i as u32);
    }
    let fresh = connect(&client).expect("connect after the limit");
    let fresh_served = listener
        .accept(Mode::Blocking)
        .expect("accept after the limit");
    exchange(&fresh, &fresh_served, 7);
    exchange(&open, &served, 9);
}
