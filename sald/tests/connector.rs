//! `Connector` connections: many connects in flight on one control
//! connection, each answered as its handshake ends, in whatever order.
//!
//! The daemon runs in this process (`sald::run`, UDP mode on loopback);
//! flows to its own listener are local.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sal::wire::TransportProtocol;
use sal::{ServiceId, ServicePrefix};
use sal_control::{ErrorKind, Request, Response};
use socket_shim::{ControlClient, ServiceListener};
use testnet::require_root;

mod common;
use common::{client_as, InProcess, Sald, Scratch};

/// An ordinary user.
const NOBODY: u32 = 65534;

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn connect(service: &str, timeout_ms: Option<u64>) -> Request {
    Request::Connect {
        service: svc(service),
        protocol: TransportProtocol::Stream,
        timeout_ms,
    }
}

/// The next answer on a connector connection: (request number, response,
/// the flow's socket if it carried one).
fn next_answer(control: &mut ControlClient) -> (u64, Response, Option<UnixStream>) {
    let reply = control.recv().expect("an answer");
    match reply.response {
        Response::Completed { request, response } => {
            (request, *response, reply.fd.map(UnixStream::from))
        }
        other => panic!("not a completed answer: {other:?}"),
    }
}

/// A listener of `p` on `sald`'s own host, and a connector connection.
fn setup(
    dir: &Scratch,
    tune: impl FnOnce(&mut sald::config::Config),
) -> (InProcess, ServiceListener) {
    let mut config = common::udp_config(dir, "sald", [127, 0, 0, 1].into());
    tune(&mut config);
    let sald = InProcess::start(config);
    let listener = ServiceListener::bind_via(
        ControlClient::connect_to(&sald.control).unwrap(),
        prefix("c0/8"),
        64,
    )
    .unwrap();
    (sald, listener)
}

#[test]
fn answers_come_as_handshakes_end_not_in_request_order() {
    let dir = Scratch::new("connector-order");
    let (sald, listener) = setup(&dir, |_| {});
    // Nobody answers at the hole: a connect there waits out its timeout.
    sald.forward_to("dead/16", common::silent_hole(), 1);
    let mut control = ControlClient::connect_to(&sald.control).unwrap();
    assert_eq!(
        control.request(&Request::Connector).unwrap().response,
        Response::Ok
    );
    control.send(&connect("dead01", Some(1500))).unwrap();
    control.send(&connect("beef01", None)).unwrap();
    control.send(&connect("c001", None)).unwrap();
    control.send(&Request::ListFlows).unwrap();

    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(next_answer(&mut control));
    }
    let order: Vec<u64> = answers.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(
        *order.last().unwrap(),
        0,
        "the slow connect answers last: {order:?}"
    );
    for (number, response, fd) in answers {
        match number {
            0 => assert!(
                matches!(
                    response,
                    Response::Error {
                        kind: ErrorKind::TimedOut,
                        ..
                    }
                ),
                "{response:?}"
            ),
            1 => assert!(
                matches!(
                    response,
                    Response::Error {
                        kind: ErrorKind::NoRoute,
                        ..
                    }
                ),
                "{response:?}"
            ),
            2 => {
                assert!(
                    matches!(response, Response::Connected { .. }),
                    "{response:?}"
                );
                let mut ours = fd.expect("the flow's socket");
                let (mut theirs, _) = listener.accept().unwrap();
                ours.write_all(b"ping").unwrap();
                let mut got = [0u8; 4];
                theirs.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping");
            }
            3 => assert!(
                matches!(
                    response,
                    Response::Error {
                        kind: ErrorKind::InvalidRequest,
                        ..
                    }
                ),
                "{response:?}"
            ),
            _ => panic!("answer to a request never sent: {number}"),
        }
    }
    // The connection goes on serving after all that.
    control.send(&connect("c002", None)).unwrap();
    let (number, response, fd) = next_answer(&mut control);
    assert_eq!(number, 4);
    assert!(matches!(response, Response::Connected { .. }) && fd.is_some());
}

/// An ordinary user may hold only a few control connections, but one
/// connector connection carries any number of connects at once.
#[test]
fn one_connection_carries_more_connects_than_a_user_may_hold_connections() {
    require_root!();
    let dir = Scratch::new("connector-many");
    let (sald, listener) = setup(&dir, |config| config.limits.clients_per_uid = 2);
    let mut control = client_as(&sald.control, NOBODY).unwrap();
    assert_eq!(
        control.request(&Request::Connector).unwrap().response,
        Response::Ok
    );
    const N: u64 = 40;
    for i in 0..N {
        control.send(&connect(&format!("c0{i:02x}"), None)).unwrap();
    }
    let mut flows = Vec::new();
    let mut seen = vec![false; N as usize];
    for _ in 0..N {
        let (number, response, fd) = next_answer(&mut control);
        assert!(
            matches!(response, Response::Connected { .. }),
            "{number}: {response:?}"
        );
        assert!(
            !std::mem::replace(&mut seen[number as usize], true),
            "{number} answered twice"
        );
        flows.push(fd.expect("the flow's socket"));
    }
    // Every flow is a working one.
    for (i, flow) in flows.iter_mut().enumerate() {
        let (mut theirs, _) = listener.accept().unwrap();
        theirs.write_all(&[i as u8]).unwrap();
        let mut got = [0u8; 1];
        flow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Accept order need not be connect order: any flow may get any byte.
        flow.read_exact(&mut got).unwrap();
    }
}
