//! Review test (b12a817): a path that still carries small packets (the
//! Doubt probe's RSYN and its answer) but no longer carries full-size data
//! segments (a path-MTU black hole, or a policer dropping bulk traffic) is
//! a dead path for the flow. With somewhere else to go, the flow must
//! leave it at about the liveness timeout, as it did before the probe.

use std::net::Ipv4Addr;

use sal::Locator;
use sal_sim::{Delay, Network, Path};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{establish, multi_homed_pair, pattern, stream};

const LEN: usize = 1 << 20;
const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn run(upload: bool) -> (bool, Option<Duration>, Locator, u64) {
    let mut net =
        Network::with_default_path(1, || Path::new().then(Delay::new(Duration::from_millis(5))));
    let (a, b, listener) = multi_homed_pair(&mut net);
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    let (from, to) = if upload {
        ((a, aflow), (b, bflow))
    } else {
        ((b, bflow), (a, aflow))
    };
    let (src, dst) = if upload { (A, B1) } else { (B1, A) };
    let data = pattern(LEN, 1);
    let mut failed_at = None::<Instant>;
    let mut found_at = None::<Instant>;
    let received = stream(
        &mut net,
        from,
        to,
        &data,
        Duration::from_secs(120),
        |net, received| {
            if failed_at.is_none() && received >= LEN / 4 {
                // From now on B1's link drops the sender's data segments
                // (anything over 300 bytes), one way; small packets pass.
                net.set_filter(Some(Box::new(move |p| {
                    p.src == Locator::Ipv4(src)
                        && p.dst == Locator::Ipv4(dst)
                        && p.payload.len() > 300
                })));
                failed_at = Some(net.now());
            }
            if failed_at.is_some() && found_at.is_none() {
                let seeking = net.host(a).stats().path_challenges > 0;
                if seeking || net.host(b).flow(bflow).unwrap().migrations > 0 {
                    found_at = Some(net.now());
                }
            }
        },
    );
    let probes = net.host(a).stats().probes + net.host(b).stats().probes;
    let b_local = net.host(b).flow(bflow).unwrap().local;
    (
        received == data,
        found_at.zip(failed_at).map(|(f, s)| f - s),
        b_local,
        probes,
    )
}

#[test]
fn a_path_that_drops_only_data_is_left_download() {
    let (exact, detected, b_local, probes) = run(false);
    eprintln!(
        "download: exact {exact}, found dead after {detected:?}, b at {b_local}, {probes} probes"
    );
    assert!(
        detected.is_some_and(|d| d <= Duration::from_secs(3)),
        "{detected:?}"
    );
    assert!(exact);
    assert_eq!(b_local, Locator::Ipv4(B2));
}

#[test]
fn a_path_that_drops_only_data_is_left_upload() {
    let (exact, detected, b_local, probes) = run(true);
    eprintln!(
        "upload: exact {exact}, found dead after {detected:?}, b at {b_local}, {probes} probes"
    );
    assert!(
        detected.is_some_and(|d| d <= Duration::from_secs(3)),
        "{detected:?}"
    );
    assert!(exact);
}
