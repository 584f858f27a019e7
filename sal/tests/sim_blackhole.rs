//! A path that still carries small packets (the liveness probe's RSYN and
//! its answer, the peer's ACKs) but no longer carries full-size data
//! segments one way (a path-MTU black hole, or a policer dropping bulk
//! traffic) is a dead path for the flow. With somewhere else to go, the
//! flow leaves it at about the liveness timeout: neither the answered probe
//! (found by the review of b12a817) nor the peer's own data streaming the
//! other way (found by a later review) keeps it there.

use std::net::Ipv4Addr;

use sal::proto::HostError;
use sal::Locator;
use sal_sim::{Delay, Network, Path, RateLimit};
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

/// A's upload to B1 is black-holed (its segments over 300 bytes dropped)
/// while B streams a download to A over the same path. B's segments made
/// A's receive queue grow, which counted as the peer heard, so A's
/// stalled upload never found the path dead: it waited 36.6 s, until the
/// download ended. Only what proves A's own data got through counts while
/// that data waits.
#[test]
fn an_upload_black_holed_beside_a_download_is_moved() {
    let mut net = Network::with_default_path(1, || {
        Path::new()
            .then(RateLimit::new(1_000_000, 200_000))
            .then(Delay::new(Duration::from_millis(5)))
    });
    let (a, b, listener) = multi_homed_pair(&mut net);
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    let up = pattern(1 << 20, 1);
    // About 20 s at 1 MB/s: it outlasts the upload by far.
    let down = pattern(20 << 20, 2);
    let (mut sent_up, mut sent_down) = (0, 0);
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 65536];
    let mut failed_at = None::<Instant>;
    let mut up_done_at = None::<Instant>;
    let send = |net: &mut Network, host, flow, data: &[u8], sent: &mut usize| {
        while *sent < data.len() {
            match net.host(host).send(flow, &data[*sent..]) {
                Ok(n) => *sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
    };
    net.run_until(Duration::from_secs(60), |net| {
        send(net, a, aflow, &up, &mut sent_up);
        send(net, b, bflow, &down, &mut sent_down);
        for (host, flow, got) in [(b, bflow, &mut got_up), (a, aflow, &mut got_down)] {
            while let Ok(n) = net.host(host).recv(flow, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        if failed_at.is_none() && got_up.len() >= up.len() / 4 {
            net.set_filter(Some(Box::new(|p| {
                p.src == Locator::Ipv4(A) && p.dst == Locator::Ipv4(B1) && p.payload.len() > 300
            })));
            failed_at = Some(net.now());
        }
        if got_up.len() == up.len() && up_done_at.is_none() {
            up_done_at = Some(net.now());
        }
        up_done_at.is_some() && got_down.len() == down.len()
    });
    assert!(got_up == up, "the upload arrived whole");
    assert!(got_down == down, "the download arrived whole");
    let flow = net.host(a).flow(aflow).unwrap();
    assert!(flow.peer_moves + flow.migrations >= 1, "A never left B1");
    // Unharmed, the upload took 2.8 s beside the download; after the cut,
    // the path is found dead at about the liveness timeout.
    let stalled = up_done_at.zip(failed_at).map(|(done, cut)| done - cut);
    assert!(
        stalled.is_some_and(|s| s < Duration::from_secs(8)),
        "the upload finished {stalled:?} after the cut"
    );
}
