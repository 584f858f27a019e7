//! A flow whose receiver stops reading (a zero window) on a working path
//! does not move: TCP's zero-window probes back off from the RTO (0.2 s,
//! 0.4 s, 0.8 s ...), past half the liveness timeout, and the answer to the
//! liveness probe is a control message only. Counting that answer as no
//! evidence (as for a black hole: `sim_blackhole`) made such a flow move
//! 20 times in 20 s.

use sal::proto::HostError;
use sal_sim::{Delay, Network, Path};
use smoltcp::time::Duration;

mod common;
use common::sim::{establish, multi_homed_pair, pattern};

fn run(upload: bool) -> (u32, u64, u64, usize) {
    let mut net =
        Network::with_default_path(1, || Path::new().then(Delay::new(Duration::from_millis(5))));
    let (a, b, listener) = multi_homed_pair(&mut net);
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    let ((fh, ff), (th, tf)) = if upload {
        ((a, aflow), (b, bflow))
    } else {
        ((b, bflow), (a, aflow))
    };
    let data = pattern(4 << 20, 1);
    let (mut sent, mut received) = (0, 0);
    let start = net.now();
    let mut buf = vec![0u8; 65536];
    net.run_until(Duration::from_secs(40), |net| {
        while sent < data.len() {
            match net
                .host(fh)
                .send(ff, &data[sent..(sent + 65536).min(data.len())])
            {
                Ok(n) => sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The receiving application reads nothing for 20 s.
        if net.now() - start > Duration::from_secs(20) {
            while let Ok(n) = net.host(th).recv(tf, &mut buf) {
                if n == 0 {
                    break;
                }
                received += n;
            }
        }
        false
    });
    let fa = net.host(a).flow(aflow).unwrap();
    let fb = net.host(b).flow(bflow).unwrap();
    let moves = fa.migrations + fa.peer_moves + fb.migrations + fb.peer_moves;
    let probes = net.host(a).stats().probes + net.host(b).stats().probes;
    let chal = net.host(a).stats().path_challenges + net.host(b).stats().path_challenges;
    (moves, probes, chal, received)
}

#[test]
fn a_receiver_that_stops_reading_does_not_move_the_flow() {
    for upload in [false, true] {
        let (moves, probes, chal, received) = run(upload);
        eprintln!("upload {upload}: {moves} moves, {probes} probes, {chal} challenges, received {received}");
        assert_eq!(moves, 0, "upload {upload}");
        assert_eq!(received, 4 << 20, "upload {upload}: every byte, once read");
    }
}
