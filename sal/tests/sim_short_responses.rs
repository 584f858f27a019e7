//! How many round trips a short request and its answer take on a fresh
//! flow, on the deterministic simulator: the product's workload (many
//! short connections to a replicated web service) is made of these.
//!
//! The path has 20 ms of round trip (10 ms each way) and carries a
//! gigabit a second (a segment takes 12 us). The client connects and
//! sends its request once connected; the server reads it whole, answers
//! and closes; the time is from the connect to the answer's last byte at
//! the client. The SAL's handshake
//! takes one round trip and the request and answer another: with RFC
//! 6928's initial congestion window (ten segments, 14,600 bytes at most),
//! as Linux and now sal-tcp start, a 14 KB answer arrives after two. An
//! answer or a request of 4, 16 and 64 KiB takes 2, 3 and 4 round trips
//! here; from smoltcp's 2,048 bytes (one of the SAL's 1,448-byte
//! segments; the silly-window rule holds back the rest) it took 3.05,
//! 6.05 and 8.2.
//!
//! The larger start waited for HyStart++ (RFC 9406, sal-tcp's `hystart`):
//! on the deep-queue lossy path of `sim_tcp_loss` (and `sim_lossy_paths`)
//! slow start overshot the queue by what it holds, and from ten segments
//! the overshoot repeated after the first timeout, since ssthresh came
//! from a flight that still counted the segments the queue dropped.
//! Leaving slow start as the round trip climbs stops it there.
//!
//! `measure_short_exchanges` (ignored: it prints) gives the figures for
//! answers and requests of 4, 16 and 64 KiB, on that path and on one
//! without a rate limit, where the segments of a flight all arrive at
//! once and the receiver acknowledges them with one ACK. There slow
//! start grew the window by a segment a round trip while it grew by one
//! segment an ACK (RFC 5681 3.1), and 64 KiB took five round trips; it
//! now grows by the segments acknowledged, up to eight an ACK (RFC
//! 9406's L, sal-tcp's `congestion::slow_start`), and takes four, as on
//! Linux, which counts them all.

use sal::proto::HostConfig;
use sal_sim::{Delay, Network, Path, RateLimit};
use smoltcp::time::Duration;

mod common;
use common::sim::{client_server_on, pattern, request_answer};

/// The path's round trip time.
const RTT: Duration = Duration::from_millis(20);

/// A gigabit a second, in bytes.
const GIGABIT: u64 = 125_000_000;

/// Bytes the client asks with when the answer is the big one.
const SMALL: usize = 100;

/// A connect, a request of `request` bytes and an answer of `answer`
/// bytes on an idle path with [`RTT`] carrying `rate` bytes a second
/// (`None`: no limit); returns the time from the connect to the answer's
/// last byte at the client.
fn exchange(rate: Option<u64>, request: usize, answer: usize) -> Duration {
    let net = Network::with_default_path(1, move || {
        let path = Path::new();
        let path = match rate {
            Some(rate) => path.then(RateLimit::new(rate, 1 << 20)),
            None => path,
        };
        path.then(Delay::new(RTT / 2))
    });
    let mut cs = client_server_on(net, HostConfig::default());
    cs.net.settle();
    request_answer(
        &mut cs,
        &pattern(request, 1),
        &pattern(answer, 2),
        false,
        Duration::from_secs(30),
        "the exchange",
    )
}

fn round_trips(d: Duration) -> f64 {
    d.total_micros() as f64 / RTT.total_micros() as f64
}

/// A 14 KB answer fits the initial window: it arrives one round trip
/// after the request, two after the connect (and the 1 ms of delayed
/// ACK at most). It took five.
#[test]
fn a_fourteen_kilobyte_answer_takes_two_round_trips_from_the_connect() {
    let took = exchange(Some(GIGABIT), SMALL, 14_000);
    assert!(
        took <= RTT * 2 + Duration::from_millis(2),
        "took {took} ({:.1} round trips)",
        round_trips(took)
    );
}

/// So does a 14 KB request: the client's window is the same.
#[test]
fn a_fourteen_kilobyte_request_is_answered_in_two_round_trips() {
    let took = exchange(Some(GIGABIT), 14_000, SMALL);
    assert!(
        took <= RTT * 2 + Duration::from_millis(2),
        "took {took} ({:.1} round trips)",
        round_trips(took)
    );
}

/// Prints the time and round trips of exchanges with a request or an
/// answer of 4, 16 and 64 KiB, at a gigabit a second and with no limit.
#[test]
#[ignore = "a measurement: prints figures"]
fn measure_short_exchanges() {
    for (link, rate) in [("1 Gb/s", Some(GIGABIT)), ("no limit", None)] {
        for len in [4 << 10, 16 << 10, 64 << 10] {
            for (what, request, answer) in [("answer", SMALL, len), ("request", len, SMALL)] {
                let took = exchange(rate, request, answer);
                eprintln!(
                "{link:>8}: {what:>7} of {:>2} KiB: {:>6.1} ms from the connect, {:.2} round trips",
                len >> 10,
                took.total_micros() as f64 / 1000.0,
                round_trips(took)
            );
            }
        }
    }
}
