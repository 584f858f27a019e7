//! The control socket against local users (issue 12): binding like
//! privileged ports, per-user connection limits with a reserve for root,
//! bounded frame memory and timeouts, and bounded, per-user event streams.
//!
//! Daemons run in this process (`sald::run`, UDP mode on loopback), except
//! for the memory test, which measures a real sald process. Other users'
//! connections are made by threads that switch their own effective user
//! (root is needed for that; those tests skip otherwise).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use sal::table::{ListenerId, Target};
use sal::wire::TransportProtocol;
use sal::{Locator, ServicePrefix};
use sal_control::{
    encode_frame, ControlEvent, DatagramFrame, ErrorKind, Request, Response, RuleChange,
    PROTOCOL_VERSION,
};
use socket_shim::{ControlClient, Error, ServiceListener, ServiceStream};
use testnet::{require_root, wait_until};

mod common;
use common::{client_as, raw_as, InProcess, Sald, SaldProcess, Scratch};

/// An ordinary user (`nobody`) and another one.
const NOBODY: u32 = 65534;
const OTHER: u32 = 4242;

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn daemon(dir: &Path, name: &str, tune: impl FnOnce(&mut sald::config::Config)) -> InProcess {
    let mut config = common::udp_config(dir, name, [127, 0, 0, 1].into());
    tune(&mut config);
    InProcess::start(config)
}

fn bind_as(sald: &InProcess, uid: u32, p: &str) -> socket_shim::Result<ServiceListener> {
    ServiceListener::bind_via(client_as(&sald.control, uid)?, prefix(p), 4)
}

fn errno_of(result: socket_shim::Result<ServiceListener>) -> Errno {
    Errno::from_raw(result.expect_err("the bind should fail").errno())
}

#[test]
fn ordinary_users_bind_like_unprivileged_ports() {
    require_root!();
    let dir = Scratch::new("bind-policy");
    let sald = daemon(&dir, "sald", |_| {});
    let _root = bind_as(&sald, 0, "c0ffee/24").unwrap();
    sald.forward_to("d00d/16", Locator::Udp("127.0.0.9:9".parse().unwrap()), 1);
    sald.forward_to("0/0", Locator::Udp("127.0.0.9:9".parse().unwrap()), 1);

    // Too broad: EACCES, as for a privileged port.
    assert_eq!(errno_of(bind_as(&sald, NOBODY, "0/0")), Errno::EACCES);
    assert_eq!(errno_of(bind_as(&sald, NOBODY, "be/8")), Errno::EACCES);
    // Covering, equal to or inside root's binding: EADDRINUSE.
    for p in ["c0ff/16", "c0ffee/24", "c0ffee01/32"] {
        assert_eq!(
            errno_of(bind_as(&sald, NOBODY, p)),
            Errno::EADDRINUSE,
            "{p}"
        );
    }
    // What the operator forwards elsewhere: EACCES (the /0 default route
    // alone does not stop a bind).
    assert_eq!(errno_of(bind_as(&sald, NOBODY, "d00d01/24")), Errno::EACCES);
    assert_eq!(errno_of(bind_as(&sald, NOBODY, "d00d/16")), Errno::EACCES);
    let ours = bind_as(&sald, NOBODY, "beef/16").expect("an ordinary bind");
    let _more = bind_as(&sald, NOBODY, "beef01/24").expect("inside one's own binding");
    // Another ordinary user may not enter nobody's binding either.
    assert_eq!(
        errno_of(bind_as(&sald, OTHER, "beef02/24")),
        Errno::EADDRINUSE
    );
    // Once it is gone, the prefix is free again.
    drop((ours, _more));
    assert!(wait_until(Duration::from_secs(2), || bind_as(
        &sald,
        OTHER,
        "beef02/24"
    )
    .is_ok()));
    // Root may still bind anything.
    assert!(bind_as(&sald, 0, "0/0").is_ok());
}

#[test]
fn control_connections_are_capped_per_user_with_a_reserve_for_root() {
    require_root!();
    let dir = Scratch::new("conn-limits");
    let sald = daemon(&dir, "sald", |config| {
        config.limits.clients = 8;
        config.limits.clients_per_uid = 3;
        config.limits.root_reserve = 2;
    });
    let mut nobody: Vec<ControlClient> = (0..3)
        .map(|_| client_as(&sald.control, NOBODY).unwrap())
        .collect();
    let refused = client_as(&sald.control, NOBODY).unwrap_err();
    assert!(matches!(refused, Error::Exhausted(_)), "{refused:?}");
    assert_eq!(Errno::from_raw(refused.errno()), Errno::ENOBUFS);
    let _other: Vec<ControlClient> = (0..3)
        .map(|_| client_as(&sald.control, OTHER).unwrap())
        .collect();
    // Ordinary users hold all they may together; root still gets in.
    let third = client_as(&sald.control, OTHER + 1).unwrap_err();
    assert!(matches!(third, Error::Exhausted(_)), "{third:?}");
    let mut root = [
        ControlClient::connect_to(&sald.control).unwrap(),
        ControlClient::connect_to(&sald.control).unwrap(),
    ];
    for client in &mut root {
        assert_serves(client);
    }
    // A connection that goes gives its place back.
    nobody.pop();
    assert!(wait_until(Duration::from_secs(2), || client_as(
        &sald.control,
        OTHER + 1
    )
    .is_ok()));
}

/// One ordinary user cannot take every flow: beyond `flows_per_uid`
/// (connected, connecting, or datagram sockets) its connects fail with
/// `ENOBUFS`, other users and root are not affected, and a flow that
/// closes gives its place back.
#[test]
fn flows_are_capped_per_user() {
    require_root!();
    let dir = Scratch::new("flow-limits");
    let sald = daemon(&dir, "sald", |config| config.limits.flows_per_uid = 3);
    // Root's listener, with room for every flow of the test unaccepted.
    let listener = ServiceListener::bind_via(sald.client(), prefix("c0ffee/24"), 64).unwrap();
    let service = "c0ffee01".parse().unwrap();
    let connect = |uid: u32| {
        ServiceStream::connect_via(
            client_as(&sald.control, uid).unwrap(),
            service,
            Some(Duration::from_secs(3)),
        )
    };
    // nobody's flows, each with the server's end, to close both.
    let connected = || {
        let client = connect(NOBODY)?;
        let (server, _) = listener.accept().unwrap();
        Ok::<_, Error>((client, server))
    };
    let mut held = vec![connected().unwrap(), connected().unwrap()];
    // A datagram socket counts too.
    let mut control = client_as(&sald.control, NOBODY).unwrap();
    let opened = control.request(&Request::OpenDatagram).unwrap();
    assert!(
        matches!(opened.response, Response::DatagramOpened { .. }),
        "{:?}",
        opened.response
    );
    let refused = connect(NOBODY).unwrap_err();
    assert!(matches!(refused, Error::Exhausted(_)), "{refused:?}");
    assert_eq!(Errno::from_raw(refused.errno()), Errno::ENOBUFS);
    let again = client_as(&sald.control, NOBODY)
        .unwrap()
        .request(&Request::OpenDatagram)
        .unwrap_err();
    assert!(matches!(again, Error::Exhausted(_)), "{again:?}");
    // Another user and root are not bounded by nobody's share.
    let others: Vec<ServiceStream> = [OTHER, OTHER, OTHER, 0, 0, 0, 0]
        .into_iter()
        .map(|uid| connect(uid).unwrap())
        .collect();
    assert_eq!(others.len(), 7);
    // A flow closed at both ends (once it is gone from the host) frees a
    // place, and so does closing the datagram socket.
    held.pop();
    assert!(
        wait_until(Duration::from_secs(20), || connect(NOBODY).is_ok()),
        "a closed flow gave its place back"
    );
    assert!(
        matches!(connect(NOBODY), Err(Error::Exhausted(_))),
        "full again"
    );
    drop(opened.fd);
    assert!(
        wait_until(Duration::from_secs(20), || connect(NOBODY).is_ok()),
        "a closed datagram socket gave its place back"
    );
}

/// Accepted flows count against a user's share as connected ones do, and
/// ordinary users' flows leave sald a reserve of descriptors: one user who
/// accepted and held every flow a peer opened used to take all of sald's
/// descriptors (past `flows_per_uid`), and root's control connections
/// with them.
#[test]
fn accepted_flows_count_against_the_share_and_root_keeps_descriptors() {
    require_root!();
    common::raise_fd_limit(20_000);
    let dir = Scratch::new("accept-share");
    // The share: nobody may hold three flows, accepted or not.
    let sald = daemon(&dir, "shared", |config| config.limits.flows_per_uid = 3);
    let listener = bind_as(&sald, NOBODY, "acce/16").unwrap();
    let service: sal::ServiceId = "acce01".parse().unwrap();
    let connect = |sald: &dyn Sald| {
        ServiceStream::connect_via(sald.client(), service, Some(Duration::from_secs(3)))
    };
    let clients: Vec<ServiceStream> = (0..4).map(|_| connect(&sald).unwrap()).collect();
    let accepted: Vec<_> = (0..3).map(|_| listener.accept().unwrap()).collect();
    let refused = listener.accept().unwrap_err();
    assert!(matches!(refused, Error::Exhausted(_)), "{refused:?}");
    // The flow over the share was reset: its client reads so.
    let mut last = &clients[3];
    last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read = last.read(&mut [0u8; 8]).map_err(|e| e.kind());
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
    drop((accepted, clients));

    // The reserve: a sald of 512 descriptors, nobody accepting all a peer
    // opens, with no share to stop it.
    let limited = SaldProcess::start(&dir, "limited", "127.0.0.2:0", |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 512, 512)
                    .map_err(std::io::Error::from)
            });
        }
    });
    let peer = daemon(&dir, "peer", |_| {});
    peer.forward_to("0/0", limited.locator(), 1);
    let listener = ServiceListener::bind_via(
        client_as(&limited.control, NOBODY).unwrap(),
        prefix("acce/16"),
        1024,
    )
    .unwrap();
    let holder = thread::spawn(move || {
        let (mut held, mut refused) = (Vec::new(), 0);
        while held.len() + refused < 600 {
            match listener.accept() {
                Ok(flow) => held.push(flow),
                Err(Error::Exhausted(_)) => refused += 1,
                Err(error) => panic!("accept: {error}"),
            }
        }
        (held, refused)
    });
    let opened: Vec<ServiceStream> = (0..600).map(|_| connect(&peer).unwrap()).collect();
    let (held, refused) = holder.join().unwrap();
    assert!(refused > 0, "nobody took all {} flows", held.len());
    assert!(
        held.len() < 512 - 64,
        "{} flows took the reserve",
        held.len()
    );
    // Root is still served: control connections, and flows of its own.
    let mut root = limited.client();
    assert!(matches!(
        root.request(&Request::Stats).unwrap().response,
        Response::Stats { .. }
    ));
    let own = ServiceListener::bind_via(limited.client(), prefix("beef/16"), 8).unwrap();
    let _flow = ServiceStream::connect_via(peer.client(), "beef01".parse().unwrap(), None).unwrap();
    own.accept().expect("root accepts within the reserve");
    drop((held, opened));

    // Datagram sockets hold descriptors too (and are not flows): they used
    // to take the reserve of a sald with more descriptors than 4,096 flows
    // short of its limit.
    let limited = SaldProcess::start(&dir, "dgram", "127.0.0.3:0", |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    8192,
                    8192,
                )
                .map_err(std::io::Error::from)
            });
        }
    });
    let mut sockets = Vec::new();
    let refused = loop {
        let mut control = client_as(&limited.control, NOBODY).unwrap();
        match control.request(&Request::OpenDatagram) {
            Ok(opened) => sockets.push(opened.fd),
            Err(error) => break error,
        }
        assert!(sockets.len() < 8192, "nobody took every descriptor");
    };
    assert!(matches!(refused, Error::Exhausted(_)), "{refused:?}");
    assert!(
        sockets.len() < 8192 - 512,
        "{} sockets took the reserve",
        sockets.len()
    );
    let mut root = limited.client();
    let opened = root.request(&Request::OpenDatagram).unwrap();
    assert!(matches!(opened.response, Response::DatagramOpened { .. }));
}

/// One ordinary user's bindings are bounded too (each is a rule, and with
/// servd a route announced to the routers): past `bindings_per_uid`, a bind
/// fails with `ENOBUFS`; others are not affected; closing one frees a place.
/// The backlogs of one ordinary user's listeners add up to at most its
/// share: flows waiting to be accepted are the host's, and one user's
/// listeners used to queue `bindings_per_uid` x 65,535 of them.
#[test]
fn a_user_s_listeners_queue_no_more_than_its_share() {
    require_root!();
    let dir = Scratch::new("backlog-share");
    let sald = daemon(&dir, "sald", |config| config.limits.flows_per_uid = 8);
    // A listener nobody accepts from (no `Deliver`): it lives as long as
    // its control connection, and its flows wait in the host's queue.
    let bind = |uid: u32, p: &str, backlog: u32| {
        let mut control = client_as(&sald.control, uid).unwrap();
        let listen = Request::Listen {
            prefix: prefix(p),
            protocol: TransportProtocol::Stream,
            backlog,
        };
        match control.request(&listen).unwrap().response {
            Response::Listening { listener, .. } => (control, listener),
            other => panic!("{other:?}"),
        }
    };
    let set_backlog = |control: &mut ControlClient, listener, backlog| {
        control
            .request(&Request::SetBacklog { listener, backlog })
            .map(|answer| answer.response)
    };
    // Root connects (its flows count against nobody's share of nothing).
    let queued = |service: &str| {
        let service = service.parse().unwrap();
        let mut opened = Vec::new();
        while let Ok(flow) =
            ServiceStream::connect_via(sald.client(), service, Some(Duration::from_secs(3)))
        {
            opened.push(flow);
            assert!(opened.len() <= 64, "the backlog holds no bound");
        }
        opened
    };
    let first = bind(NOBODY, "b10c/16", 6);
    let second = bind(NOBODY, "b10d/16", 6);
    let third = bind(NOBODY, "b10e/16", 6);
    assert_eq!(
        queued("b10c01").len(),
        6,
        "the first gets what it asked for"
    );
    assert_eq!(queued("b10d01").len(), 2, "the second what is left");
    assert_eq!(queued("b10e01").len(), 1, "the third at least one");
    // Root's listeners are not cut, nor another user's.
    let _root = bind(0, "b20c/16", 12);
    assert_eq!(queued("b20c01").len(), 12);
    let _other = bind(OTHER, "b30c/16", 7);
    assert_eq!(queued("b30c01").len(), 7);
    // A listener closed gives its backlog back; `SetBacklog` (the shim's
    // `listen`) changes one within the same room.
    drop((first, second, third));
    let (mut again, listener) = bind(NOBODY, "b10f/16", 2);
    assert_eq!(
        set_backlog(&mut again, listener, 100).unwrap(),
        Response::Ok
    );
    assert_eq!(queued("b10f01").len(), 8);
    let (mut full, other) = bind(NOBODY, "b10a/16", 1);
    assert_eq!(set_backlog(&mut full, other, 100).unwrap(), Response::Ok);
    assert_eq!(queued("b10a01").len(), 1, "no room left");
    // Only the listener's own connection may.
    let refused = set_backlog(&mut full, listener, 1).unwrap_err();
    assert!(matches!(refused, Error::NotFound(_)), "{refused:?}");
    drop((again, full));

    // A listener that shrinks keeps counting its largest backlog (the
    // flows it queued stay): binding, filling and shrinking over and over
    // queued 33 flows at this share of 8 (found by a review).
    let mut held = Vec::new();
    for p in ["c1c0", "c1c1", "c1c2", "c1c3"] {
        let (mut control, listener) = bind(NOBODY, &format!("{p}/16"), 8);
        let flows = queued(&format!("{p}01"));
        assert_eq!(
            set_backlog(&mut control, listener, 1).unwrap(),
            Response::Ok
        );
        held.push((control, flows));
    }
    let total: usize = held.iter().map(|(_, flows)| flows.len()).sum();
    assert!(total <= 8 + held.len(), "{total} flows queued, share 8");
}

/// One ordinary user's flows have a buffer budget of their own (`[tcp]
/// buffer_memory_per_uid`): flows whose peers send what the user never
/// reads put that user's flows under pressure, not the host's.
#[test]
fn one_user_s_unread_flows_hold_no_more_than_its_share_of_the_buffer_budget() {
    require_root!();
    let dir = Scratch::new("buffer-share");
    let sald = daemon(&dir, "sald", |config| {
        config.tcp.max_send_buffer = 64 << 10;
        config.tcp.max_recv_buffer = 64 << 10;
        config.tcp.buffer_memory = Some(16 << 20);
        config.tcp.buffer_memory_per_uid = Some(256 << 10);
    });
    let listener = bind_as(&sald, NOBODY, "b0f0/16").unwrap();
    let service: sal::ServiceId = "b0f001".parse().unwrap();
    // Root's clients write 64 KiB each into flows their user never
    // reads. It takes them, and says a word on
    // each: else they would count as still waiting in its accept queue,
    // its listener's rather than its own.
    let mut clients: Vec<ServiceStream> = (0..16)
        .map(|_| {
            ServiceStream::connect_via(sald.client(), service, Some(Duration::from_secs(3)))
                .unwrap()
        })
        .collect();
    let _held: Vec<_> = (0..16)
        .map(|_| {
            let (mut flow, info) = listener.accept().unwrap();
            flow.write_all(b"hi").unwrap();
            (flow, info)
        })
        .collect();
    for client in &mut clients {
        client.write_all(&vec![7u8; 64 << 10]).unwrap();
    }
    let stats = || match sald.client().request(&Request::Stats).unwrap().response {
        Response::Stats { stats } => *stats,
        other => panic!("{other:?}"),
    };
    assert!(
        wait_until(Duration::from_secs(20), || stats()
            .host
            .group_buffer_pressures
            > 0),
        "nobody's flows reached its share: {:?}",
        stats().host
    );
    let now = stats();
    assert_eq!(now.buffer_limit_per_uid, 256 << 10);
    assert!(!now.host.buffer_pressure, "the host is not under pressure");
}

/// Root's flows have a buffer budget of their own too (as sald's own
/// user's): a root service whose peers send what it never reads puts
/// root's flows under pressure, not the host's budget, whose pressure
/// stops every user's flows from growing. In no group, root's flows held
/// the whole budget.
#[test]
fn root_s_unread_flows_put_no_other_user_under_pressure() {
    require_root!();
    const FLOWS: usize = 12;
    let dir = Scratch::new("buffer-share-root");
    let sald = daemon(&dir, "sald", |config| {
        config.tcp.max_send_buffer = 256 << 10;
        config.tcp.max_recv_buffer = 256 << 10;
        // Less than root's flows' receive buffers together (3 MiB), more
        // than two users' shares with what each may overshoot by.
        config.tcp.buffer_memory = Some(2 << 20);
        config.tcp.buffer_memory_per_uid = Some(512 << 10);
    });
    let listener = ServiceListener::bind_via(sald.client(), prefix("b0f1/16"), 32).unwrap();
    let service: sal::ServiceId = "b0f101".parse().unwrap();
    let clients: Vec<ServiceStream> = (0..FLOWS)
        .map(|_| {
            let control = client_as(&sald.control, OTHER).unwrap();
            ServiceStream::connect_via(control, service, Some(Duration::from_secs(3))).unwrap()
        })
        .collect();
    // Taken, and a word said on each: accepted, root's (see above).
    let _held: Vec<_> = (0..FLOWS)
        .map(|_| {
            let (mut flow, info) = listener.accept().unwrap();
            flow.write_all(b"hi").unwrap();
            (flow, info)
        })
        .collect();
    // More than the flows' sockets take, so that their receive buffers
    // fill behind them. The writers end when the daemon goes.
    for mut client in clients {
        thread::spawn(move || {
            let _ = client.write_all(&vec![7u8; 1 << 20]);
        });
    }
    let stats = || match sald.client().request(&Request::Stats).unwrap().response {
        Response::Stats { stats } => *stats,
        other => panic!("{other:?}"),
    };
    let pressed =
        |host: &sal::proto::HostStats| host.group_buffer_pressures > 0 || host.buffer_pressures > 0;
    assert!(
        wait_until(Duration::from_secs(20), || pressed(&stats().host)),
        "no flows reached a share: {:?}",
        stats().host
    );
    // Root's flows fill on: within this they took the host's budget.
    let host_pressed = wait_until(Duration::from_secs(3), || stats().host.buffer_pressures > 0);
    assert!(
        !host_pressed,
        "the host came under pressure: {:?}",
        stats().host
    );
}

/// An idle datagram socket costs sald a few KiB: each used to keep a
/// 64 KiB receive buffer of its own (10,000 idle ones took sald from 33
/// to 693 MiB), and an ordinary user may open `flows_per_uid` of them.
#[test]
fn an_idle_datagram_socket_costs_sald_a_few_kib() {
    require_root!();
    common::raise_fd_limit(4_000);
    const SOCKETS: u64 = 1_000;
    let dir = Scratch::new("dgram-memory");
    let sald = SaldProcess::start(&dir, "dgram-memory", "127.0.0.4:0", |_| {});
    let mut control = sald.client();
    // One first: what every socket shares (the runtime, the buffer the
    // pumps share) is not what one costs.
    let mut sockets = vec![control.request(&Request::OpenDatagram).unwrap().fd];
    thread::sleep(Duration::from_millis(200));
    let before = sald.rss();
    for _ in 1..SOCKETS {
        sockets.push(control.request(&Request::OpenDatagram).unwrap().fd);
    }
    // Each pump has run (and waits for its application).
    thread::sleep(Duration::from_millis(500));
    let each = sald.rss().saturating_sub(before) / (SOCKETS - 1);
    eprintln!("{each} bytes of sald's memory per idle datagram socket");
    assert!(each < 16 << 10, "{each} bytes per idle datagram socket");
    drop(sockets);
}

/// What an ordinary user's datagram sockets send is its work on sald's
/// thread, rationed as its requests are: a user flooding them waits for
/// its ration between batches of messages (`ration_waits`). The pumps
/// used to send each message as fast as the program wrote: 8 sockets
/// flooded took 85% of sald's thread and another user's bulk flow from
/// 1,170 to 2 MiB/s (`benches/control_isolation.rs`).
#[test]
fn a_user_flooding_its_datagram_sockets_waits_for_its_ration() {
    require_root!();
    const SOCKETS: usize = 4;
    let dir = Scratch::new("dgram-flood");
    let sald = daemon(&dir, "sald", |_| {});
    let mut flooder = client_as(&sald.control, NOBODY).unwrap();
    let sockets: Vec<UnixStream> = (0..SOCKETS)
        .map(|_| {
            let reply = flooder.request(&Request::OpenDatagram).unwrap();
            UnixStream::from(reply.fd.expect("a datagram socket"))
        })
        .collect();
    // To a service no rule routes: each message is sald's work all the same.
    let frame = DatagramFrame::SendTo {
        service: "dead0001".parse().unwrap(),
        via: None,
        data: vec![0x5a; 64],
    }
    .encode();
    let waits_before = sald.stats().ration_waits;
    let stop = AtomicBool::new(false);
    let waited = thread::scope(|scope| {
        for mut socket in sockets {
            let (frame, stop) = (&frame, &stop);
            socket
                .set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.write_all(frame);
                }
            });
        }
        let waited = wait_until(Duration::from_secs(10), || {
            sald.stats().ration_waits > waits_before
        });
        stop.store(true, Ordering::Relaxed);
        waited
    });
    assert!(waited, "the flooding user never waited for its ration");
}

/// The ration holds a user back only while sald's thread has other work:
/// alone, an ordinary user's flood gets most of the thread, as root's does (0.59-0.93
/// of root's rate measured; 0.4 asked, for a busy machine); beside
/// root's, it yields. The pumps used to wait out the user's debt while the
/// thread sat idle: alone, `nobody` got 0.22-0.24 times the messages root
/// got through (a quarter of the thread, less the ration's own work).
#[test]
fn a_user_flooding_alone_gets_the_whole_thread_and_yields_it_to_others() {
    require_root!();
    const SOCKETS: usize = 4;
    let dir = Scratch::new("dgram-alone");
    let sald = daemon(&dir, "sald", |_| {});
    // Alone, each in turn, three times (the machine drifts): the best of each.
    let (mut root, mut nobody) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        root = root.max(flood(&sald, &[(0, SOCKETS)])[0]);
        nobody = nobody.max(flood(&sald, &[(NOBODY, SOCKETS)])[0]);
    }
    eprintln!("alone: root {root:.0}/s, nobody {nobody:.0}/s");
    assert!(
        nobody > root * 0.4,
        "alone, nobody got {nobody:.0} messages/s through, root {root:.0}"
    );
    // Together, root's flood comes first: nobody gets its ration and the
    // moments root leaves the thread idle. As many sockets and writing
    // threads each: unrationed, they would share the thread about evenly.
    let waits_before = sald.stats().ration_waits;
    let both = flood(&sald, &[(0, SOCKETS), (NOBODY, SOCKETS)]);
    eprintln!("together: root {:.0}/s, nobody {:.0}/s", both[0], both[1]);
    assert!(
        both[1] < both[0] * 0.8,
        "together, nobody got {:.0} messages/s through, root {:.0}",
        both[1],
        both[0]
    );
    assert!(sald.stats().ration_waits > waits_before);
}

/// With idle turns off (`[limits] idle_turns = false`), the ration is a
/// hard cap: a user flooding alone keeps to about a quarter of the thread
/// (0.22-0.24 of root's rate measured when that was the only way), and the
/// rest of the CPU is left to the machine.
#[test]
fn with_idle_turns_off_a_user_flooding_alone_keeps_to_its_ration() {
    require_root!();
    const SOCKETS: usize = 4;
    let dir = Scratch::new("dgram-capped");
    let sald = daemon(&dir, "sald", |config| config.limits.idle_turns = false);
    let (mut root, mut nobody) = (0.0f64, 0.0f64);
    for _ in 0..2 {
        root = root.max(flood(&sald, &[(0, SOCKETS)])[0]);
        nobody = nobody.max(flood(&sald, &[(NOBODY, SOCKETS)])[0]);
    }
    eprintln!("alone, idle turns off: root {root:.0}/s, nobody {nobody:.0}/s");
    assert!(
        nobody < root * 0.35,
        "alone, nobody got {nobody:.0} messages/s through, root {root:.0}"
    );
}

/// Floods `sald` with 64-byte datagrams to a service no rule routes, from
/// `sockets` datagram sockets of each `(uid, sockets)` of `floods`, a
/// writing thread each: the messages each user got through a second,
/// counted over 700 ms after a warm-up.
fn flood(sald: &InProcess, floods: &[(u32, usize)]) -> Vec<f64> {
    const WARMUP: Duration = Duration::from_millis(300);
    const WINDOW: Duration = Duration::from_millis(700);
    let frame = DatagramFrame::SendTo {
        service: "dead0001".parse().unwrap(),
        via: None,
        data: vec![0x5a; 64],
    }
    .encode();
    let opened: Vec<(ControlClient, Vec<UnixStream>)> = (floods.iter())
        .map(|&(uid, sockets)| {
            let mut client = client_as(&sald.control, uid).unwrap();
            let sockets = (0..sockets)
                .map(|_| {
                    let reply = client.request(&Request::OpenDatagram).unwrap();
                    UnixStream::from(reply.fd.expect("a datagram socket"))
                })
                .collect();
            (client, sockets)
        })
        .collect();
    let counting = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let counts: Vec<AtomicU64> = floods.iter().map(|_| AtomicU64::new(0)).collect();
    thread::scope(|scope| {
        for ((_, sockets), count) in opened.iter().zip(&counts) {
            for socket in sockets {
                let (frame, counting, stop) = (&frame, &counting, &stop);
                let mut socket = socket.try_clone().unwrap();
                socket
                    .set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let written = socket.write_all(frame).is_ok();
                        if written && counting.load(Ordering::Relaxed) {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        thread::sleep(WARMUP);
        counting.store(true, Ordering::Relaxed);
        let started = Instant::now();
        thread::sleep(WINDOW);
        counting.store(false, Ordering::Relaxed);
        let counted = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        (counts.iter())
            .map(|count| count.load(Ordering::Relaxed) as f64 / counted.as_secs_f64())
            .collect()
    })
}

#[test]
fn bindings_are_capped_per_user() {
    require_root!();
    let dir = Scratch::new("bind-limits");
    let sald = daemon(&dir, "sald", |config| config.limits.bindings_per_uid = 3);
    let mut held: Vec<ServiceListener> = ["a001/16", "a002/16", "a003/16"]
        .into_iter()
        .map(|p| bind_as(&sald, NOBODY, p).unwrap())
        .collect();
    assert_eq!(errno_of(bind_as(&sald, NOBODY, "a004/16")), Errno::ENOBUFS);
    let _other = bind_as(&sald, OTHER, "b001/16").unwrap();
    let _root: Vec<ServiceListener> = ["c001/16", "c002/16", "c003/16", "c004/16"]
        .into_iter()
        .map(|p| bind_as(&sald, 0, p).unwrap())
        .collect();
    held.pop().unwrap().close().unwrap();
    bind_as(&sald, NOBODY, "a004/16").unwrap();
}

/// Listings longer than one frame holds (about 2,000 flows or 5,000
/// rules) come whole, in order, in parts put together by the client; an
/// ordinary user's listing still shows only its own flows.
#[test]
fn long_listings_come_whole() {
    require_root!();
    let dir = Scratch::new("long-listings");
    let sald = daemon(&dir, "sald", |_| {});
    const RULES: u32 = 12_000;
    let mut root = sald.client();
    for batch in 0..RULES / 2_000 {
        let changes = (batch * 2_000..(batch + 1) * 2_000)
            .map(|i| RuleChange::Add {
                prefix: format!("d0{i:06x}/40").parse().unwrap(),
                target: Target::Drop,
                priority: 0,
                origin: Default::default(),
            })
            .collect();
        root.request(&Request::ApplyRules { changes }).unwrap();
    }
    let rules = match root.request(&Request::ListRules).unwrap().response {
        Response::Rules { rules, .. } => rules,
        other => panic!("{other:?}"),
    };
    assert_eq!(rules.len(), RULES as usize);
    assert!(
        rules.windows(2).all(|w| w[0].prefix < w[1].prefix),
        "sorted"
    );

    // 1,500 local flows are 3,000 ends (client and server).
    const FLOWS: usize = 1_500;
    let listener = ServiceListener::bind_via(sald.client(), prefix("c0ffee/24"), 4096).unwrap();
    let _ends = common::open_flows(&sald.control, "c0ffee01".parse().unwrap(), FLOWS, 1);
    let nobody = ServiceStream::connect_via(
        client_as(&sald.control, NOBODY).unwrap(),
        "c0ffee01".parse().unwrap(),
        Some(Duration::from_secs(3)),
    )
    .unwrap();
    let listed =
        |mut client: ControlClient| match client.request(&Request::ListFlows).unwrap().response {
            Response::Flows { flows } => flows,
            other => panic!("{other:?}"),
        };
    let all = listed(sald.client());
    assert_eq!(all.len(), 2 * (FLOWS + 1));
    assert!(all.windows(2).all(|w| w[0].flow < w[1].flow), "sorted");
    let own = listed(client_as(&sald.control, NOBODY).unwrap());
    assert_eq!(own.len(), 1, "only its own end");
    assert_eq!(own[0].flow, nobody.flow_id());
    drop(listener);
}

/// An ordinary user's listing comes from sald's index of what each user
/// owns, not from a walk over every flow on the host; it follows each of
/// the user's flows all the same: one waiting at its listener (not yet
/// accepted), the same one accepted, one it connected; never the other
/// ends of those flows, nor anyone else's; and a flow leaves it once it is
/// gone from the host.
#[test]
fn an_ordinary_users_listing_follows_its_flows() {
    require_root!();
    let dir = Scratch::new("own-listing");
    let sald = daemon(&dir, "sald", |_| {});
    let nobody_listener = bind_as(&sald, NOBODY, "beef/16").unwrap();
    let _root_listener = bind_as(&sald, 0, "c0ffee/24").unwrap();
    let listed = |uid: u32| -> Vec<sal::FlowId> {
        let mut client = client_as(&sald.control, uid).unwrap();
        match client.request(&Request::ListFlows).unwrap().response {
            Response::Flows { flows } => flows.into_iter().map(|f| f.flow).collect(),
            other => panic!("{other:?}"),
        }
    };
    let connect = |uid: u32, service: &str| {
        ServiceStream::connect_via(
            client_as(&sald.control, uid).unwrap(),
            service.parse().unwrap(),
            Some(Duration::from_secs(3)),
        )
        .unwrap()
    };

    // Root's connect to nobody's service: the server end, established once
    // the client's ACK is in, waits at nobody's listener and is nobody's.
    let root_stream = connect(0, "beef01");
    assert!(
        wait_until(Duration::from_secs(2), || listed(NOBODY).len() == 1),
        "{:?}",
        listed(NOBODY)
    );
    let waiting = listed(NOBODY)[0];
    assert_ne!(waiting, root_stream.flow_id(), "root's end is root's");
    let (accepted, _) = nobody_listener.accept().unwrap();
    assert_eq!(accepted.flow_id(), waiting, "the same flow, accepted");
    assert_eq!(listed(NOBODY), [waiting]);

    // nobody's connect to root's service: its own end only.
    let nobody_stream = connect(NOBODY, "c0ffee01");
    let mut own = vec![waiting, nobody_stream.flow_id()];
    own.sort();
    assert_eq!(listed(NOBODY), own);
    assert!(listed(OTHER).is_empty(), "another user owns nothing");
    assert_eq!(listed(0).len(), 4, "root sees every end");

    // Closed at both ends, the first flow goes from the host and from
    // nobody's listing; the second stays.
    drop((root_stream, accepted));
    assert!(
        wait_until(Duration::from_secs(20), || listed(NOBODY)
            == [nobody_stream.flow_id()]),
        "{:?}",
        listed(NOBODY)
    );
}

/// A blocking `Accept` is withdrawn by the client's next request, which is
/// then answered like any other. Watching for that request used to read
/// its first byte: the request was lost, and the connection's framing
/// with it.
#[test]
fn a_request_that_withdraws_a_waiting_accept_is_answered_whole() {
    let dir = Scratch::new("accept-then-request");
    let sald = daemon(&dir, "sald", |_| {});
    let mut stream = UnixStream::connect(&sald.control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&hello()).unwrap();
    let hello = next_response(&mut stream);
    assert!(matches!(hello, Response::Hello { .. }), "{hello:?}");
    stream
        .write_all(&frame(&Request::Listen {
            prefix: prefix("ac1d/16"),
            protocol: TransportProtocol::Stream,
            backlog: 4,
        }))
        .unwrap();
    let listener = match next_response(&mut stream) {
        Response::Listening { listener, .. } => listener,
        other => panic!("{other:?}"),
    };
    let accept = |nonblocking| {
        frame(&Request::Accept {
            listener,
            nonblocking,
        })
    };
    stream.write_all(&accept(false)).unwrap();
    // The accept waits for a flow; the next request comes meanwhile.
    thread::sleep(Duration::from_millis(100));
    stream.write_all(&frame(&Request::ListInterfaces)).unwrap();
    let withdrawn = next_response(&mut stream);
    assert!(
        is_error(&withdrawn, ErrorKind::InvalidRequest),
        "{withdrawn:?}"
    );
    let answer = next_response(&mut stream);
    assert!(matches!(answer, Response::Interfaces { .. }), "{answer:?}");
    // The connection and its listener go on as before.
    stream.write_all(&accept(true)).unwrap();
    let again = next_response(&mut stream);
    assert!(is_error(&again, ErrorKind::WouldBlock), "{again:?}");
}

/// A blocking `Accept` from a client that only shut its end for sending
/// (its request written, as `nc -N` leaves a connection) waits for a flow
/// and answers: the client still reads. It was taken for a client gone
/// and refused at once. Once the client closes, the accept is given up.
#[test]
fn a_blocking_accept_from_a_client_that_stopped_sending_waits_for_its_flow() {
    let dir = Scratch::new("accept-half-closed");
    let sald = daemon(&dir, "sald", |_| {});
    let listen = |stream: &mut UnixStream, p: &str| {
        stream
            .write_all(&frame(&Request::Listen {
                prefix: prefix(p),
                protocol: TransportProtocol::Stream,
                backlog: 4,
            }))
            .unwrap();
        match next_response(stream) {
            Response::Listening { listener, .. } => listener,
            other => panic!("{other:?}"),
        }
    };
    let accept = |listener| {
        frame(&Request::Accept {
            listener,
            nonblocking: false,
        })
    };
    let mut waiting = raw_connection(&sald);
    let listener = listen(&mut waiting, "ac1e/16");
    waiting.write_all(&accept(listener)).unwrap();
    waiting.shutdown(std::net::Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(response_sent(&mut waiting), None, "answered early");
    let _flow = ServiceStream::connect_via(
        ControlClient::connect_to(&sald.control).unwrap(),
        "ac1e0001".parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    let accepted = next_response(&mut waiting);
    assert!(
        matches!(accepted, Response::Accepted { .. }),
        "{accepted:?}"
    );

    // A client that stopped sending and then closed: its accept is given
    // up, its listener closed, and a flow for the service finds nobody.
    let mut leaving = raw_connection(&sald);
    let listener = listen(&mut leaving, "ac1f/16");
    leaving.write_all(&accept(listener)).unwrap();
    leaving.shutdown(std::net::Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(100));
    drop(leaving);
    assert!(
        wait_until(Duration::from_secs(5), || ServiceStream::connect_via(
            ControlClient::connect_to(&sald.control).unwrap(),
            "ac1f0001".parse().unwrap(),
            Some(Duration::from_secs(2)),
        )
        .is_err()),
        "the listener of a client gone still takes flows"
    );
}

/// Reads one response from a raw connection.
fn next_response(stream: &mut UnixStream) -> Response {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("a response");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream
        .read_exact(&mut body)
        .expect("the rest of the response");
    sal_control::decode_body(&body).expect("a response frame")
}

/// `client`'s connection is alive and answered.
fn assert_serves(client: &mut ControlClient) {
    let stats = client.request(&Request::Stats).unwrap().response;
    assert!(matches!(stats, Response::Stats { .. }), "{stats:?}");
}

/// Frames of the control protocol, for raw connections.
fn frame(request: &Request) -> Vec<u8> {
    encode_frame(request).unwrap()
}

fn hello() -> Vec<u8> {
    frame(&Request::Hello {
        version: PROTOCOL_VERSION,
        client: "raw".into(),
    })
}

/// Reads what sald sends until it closes the connection (or `within`
/// passes, which fails the test); returns the responses.
fn read_until_closed(mut stream: UnixStream, within: Duration) -> Vec<Response> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("sald did not close the connection within {within:?}: {e}"),
    }
    let mut responses = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        responses.push(sal_control::decode_body(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    responses
}

fn is_error(response: &Response, kind: ErrorKind) -> bool {
    matches!(response, Response::Error { kind: k, .. } if *k == kind)
}

/// A well-framed request sald does not know (a newer client's) is
/// refused, and the connection goes on: each new request fails alone
/// against an older sald instead of taking the connection, and the
/// client's bindings, with it.
#[test]
fn an_unknown_request_is_refused_and_the_connection_goes_on() {
    let dir = Scratch::new("unknown-request");
    let sald = daemon(&dir, "sald", |_| {});
    let mut stream = UnixStream::connect(&sald.control).unwrap();
    stream.write_all(&hello()).unwrap();
    assert!(matches!(next_response(&mut stream), Response::Hello { .. }));
    let body = br#"{"SomethingNewer":{"listener":3}}"#;
    let mut unknown = (body.len() as u32).to_be_bytes().to_vec();
    unknown.extend_from_slice(body);
    stream.write_all(&unknown).unwrap();
    let refused = next_response(&mut stream);
    assert!(is_error(&refused, ErrorKind::InvalidRequest), "{refused:?}");
    stream.write_all(&frame(&Request::Stats)).unwrap();
    let answered = next_response(&mut stream);
    assert!(matches!(answered, Response::Stats { .. }), "{answered:?}");
}

#[test]
fn idle_connections_and_partial_frames_time_out() {
    require_root!();
    let dir = Scratch::new("timeouts");
    let sald = daemon(&dir, "sald", |config| {
        config.limits.idle_secs = 1;
        config.limits.frame_timeout_ms = 500;
    });
    let started = Instant::now();
    // Silent from the start: no hello within the frame timeout.
    let silent = raw_as(&sald.control, NOBODY).unwrap();
    // Said hello, then nothing: an ordinary user's idle connection.
    let mut idle = raw_as(&sald.control, NOBODY).unwrap();
    idle.write_all(&hello()).unwrap();
    // Root, in the middle of a frame.
    let mut partial = UnixStream::connect(&sald.control).unwrap();
    partial.write_all(&hello()).unwrap();
    partial.write_all(&100u32.to_be_bytes()).unwrap();
    partial.write_all(b"{\"op\":").unwrap();
    // Kept: root's idle connection, and an ordinary user's that holds a
    // listener.
    let mut root = ControlClient::connect_to(&sald.control).unwrap();
    let listener = bind_as(&sald, NOBODY, "beef/16").unwrap();

    let silent = read_until_closed(silent, Duration::from_secs(3));
    assert!(is_error(&silent[0], ErrorKind::TimedOut), "{silent:?}");
    let idle = read_until_closed(idle, Duration::from_secs(3));
    assert!(matches!(idle[0], Response::Hello { .. }), "{idle:?}");
    assert!(is_error(&idle[1], ErrorKind::TimedOut), "{idle:?}");
    let partial = read_until_closed(partial, Duration::from_secs(3));
    assert!(is_error(&partial[1], ErrorKind::TimedOut), "{partial:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    assert_serves(&mut root);
    assert!(matches!(listener.try_accept(), Ok(None)));
}

#[test]
fn frame_memory_is_bounded_for_all_clients_together() {
    const CLIENTS: usize = 64;
    const SENT: usize = 960 * 1024;
    const BUDGET: u64 = 8 << 20;
    let dir = Scratch::new("frame-memory");
    let file = dir.join("sald.toml");
    std::fs::write(&file, format!("[limits]\nframe_memory = {BUDGET}\n")).unwrap();
    let sald = SaldProcess::start(&dir, "proc", "127.0.0.1:0", |cmd| {
        cmd.arg("--config").arg(&file);
    });
    thread::sleep(Duration::from_millis(200));
    let before = sald.rss();
    // Each client announces a 1 MiB frame and sends most of it, then stalls
    // (the frame timeout is 10 s: all of them are still pending below).
    let streams = (0..CLIENTS)
        .map(|_| UnixStream::connect(&sald.control).unwrap())
        .collect();
    let streams = stall_in_frames(streams, SENT);
    thread::sleep(Duration::from_millis(500));
    let grown = sald.rss().saturating_sub(before);
    eprintln!(
        "sald grew by {} KiB for {CLIENTS} partial 1 MiB frames",
        grown >> 10
    );
    // Without the budget every client would cost ~1 MiB (64 MiB in all).
    assert!(
        grown < BUDGET + (8 << 20),
        "sald grew by {} MiB for {CLIENTS} partial frames",
        grown >> 20
    );
    // The clients over the budget were told and cut off.
    let refused = told(streams, "exhausted");
    assert!(refused >= CLIENTS / 2, "only {refused} refused");
    // And sald still answers.
    let mut root = ControlClient::connect_to(&sald.control).unwrap();
    assert_serves(&mut root);
}

/// One user's half-sent frames took the whole budget: root, servd and
/// every other user were refused ("control socket memory exhausted") until
/// the frames timed out, and the user could start again. Now an ordinary
/// user's frames get an eighth of the budget, ordinary users together
/// three quarters.
#[test]
fn one_user_s_half_sent_frames_lock_out_nobody_else() {
    require_root!();
    let dir = Scratch::new("frame-share");
    let sald = daemon(&dir, "sald", |config| config.limits.frame_memory = 8 << 20);
    // 16 connections, each announcing a 1 MiB frame and sending 600 KiB
    // of it: enough to fill the whole budget twice over.
    let streams = (0..16)
        .map(|_| raw_as(&sald.control, NOBODY).unwrap())
        .collect();
    let streams = stall_in_frames(streams, 600 * 1024);
    thread::sleep(Duration::from_millis(300));
    // Root still gets answers, and so does another ordinary user.
    assert_serves(&mut sald.client());
    assert_serves(&mut client_as(&sald.control, OTHER).unwrap());
    // Most of the hog's connections were told why they were cut off.
    let told = told(streams, "for ordinary users");
    assert!(told >= 14, "only {told} of 16 refused by share");
}

/// Has each connection say hello, announce a 1 MiB request frame and send
/// `sent` bytes of it, then stall (all at once, each on a thread of its
/// own, since sald stops reading some of them).
fn stall_in_frames(streams: Vec<UnixStream>, sent: usize) -> Vec<UnixStream> {
    let writers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            stream
                .set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            thread::spawn(move || {
                let _ = stream.write_all(&hello());
                let _ = stream.write_all(&(1u32 << 20).to_be_bytes());
                let _ = stream.write_all(&vec![b' '; sent]);
                stream
            })
        })
        .collect();
    writers.into_iter().map(|w| w.join().unwrap()).collect()
}

/// How many of `streams` were sent an answer containing `needle` (sald's
/// reason for cutting them off).
fn told(streams: Vec<UnixStream>, needle: &str) -> usize {
    streams
        .into_iter()
        .filter(|stream| {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut bytes = vec![0u8; 4096];
            let n = (&*stream).read(&mut bytes).unwrap_or(0);
            String::from_utf8_lossy(&bytes[..n]).contains(needle)
        })
        .count()
}

/// Reads events from a subscription until `until` says stop or `within`
/// passes.
fn events_until(
    client: &mut ControlClient,
    within: Duration,
    mut until: impl FnMut(&ControlEvent) -> bool,
) -> Vec<ControlEvent> {
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        set_read_timeout(client, left.max(Duration::from_millis(1)));
        match client.recv() {
            Ok(reply) => {
                if let Response::Event { event } = reply.response {
                    let stop = until(&event);
                    events.push(event);
                    if stop {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    events
}

fn set_read_timeout(client: &ControlClient, timeout: Duration) {
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as nix::libc::time_t,
        timeout.subsec_micros() as nix::libc::suseconds_t,
    );
    nix::sys::socket::setsockopt(client, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
}

/// Binds and unbinds `prefix` `times` times: two events each.
fn churn_registrations(sald: &InProcess, p: &str, times: usize) {
    let mut churn = sald.client();
    for _ in 0..times {
        let Response::Listening { listener, .. } = churn
            .request(&Request::Listen {
                prefix: prefix(p),
                protocol: TransportProtocol::Stream,
                backlog: 1,
            })
            .unwrap()
            .response
        else {
            panic!("listen failed");
        };
        churn
            .request_ok(&Request::CloseListener { listener })
            .unwrap();
    }
}

fn subscribe(mut client: ControlClient) -> ControlClient {
    assert_eq!(
        client.request(&Request::Subscribe).unwrap().response,
        Response::Ok
    );
    client
}

/// Events about a prefix go to the owner of the listener they are about:
/// once an ordinary user's listener is drained, root may bind the same
/// prefix (nobody else may), and root's registration used to be told to
/// that user, as if it were the user's, since events named only the
/// prefix.
#[test]
fn a_prefix_s_events_go_to_the_owner_of_the_listener_they_are_about() {
    require_root!();
    let dir = Scratch::new("event-owner");
    let sald = daemon(&dir, "sald", |_| {});
    let mut nobody_events = subscribe(client_as(&sald.control, NOBODY).unwrap());
    let mut root_events = subscribe(ControlClient::connect_to(&sald.control).unwrap());
    let registered = ControlEvent::Registered {
        prefix: prefix("beef/16"),
    };
    let unregistered = ControlEvent::Unregistered {
        prefix: prefix("beef/16"),
    };
    let count = |events: &[ControlEvent], event: &ControlEvent| {
        events.iter().filter(|e| *e == event).count()
    };
    let nobody_listener = bind_as(&sald, NOBODY, "beef/16").unwrap();
    let drain = Request::Drain {
        prefix: prefix("beef/16"),
        wait_ms: None,
    };
    let drained = client_as(&sald.control, NOBODY)
        .unwrap()
        .request(&drain)
        .unwrap()
        .response;
    assert!(matches!(drained, Response::Drained { .. }), "{drained:?}");
    let root_listener = bind_as(&sald, 0, "beef/16").unwrap();
    drop(root_listener);
    // Root sees both registrations come and go.
    let mut ends = 0;
    let seen = events_until(&mut root_events, Duration::from_secs(5), |e| {
        ends += usize::from(*e == unregistered);
        ends == 2
    });
    assert_eq!(count(&seen, &registered), 2, "{seen:?}");
    assert_eq!(count(&seen, &unregistered), 2, "{seen:?}");
    // nobody only its own: nothing of root's listener.
    let seen = events_until(&mut nobody_events, Duration::from_secs(1), |_| false);
    assert_eq!(count(&seen, &registered), 1, "{seen:?}");
    assert_eq!(count(&seen, &unregistered), 1, "{seen:?}");
    drop(nobody_listener);
}

#[test]
fn ordinary_users_see_only_their_own_flows_and_events_and_queues_are_bounded() {
    require_root!();
    let dir = Scratch::new("visibility");
    let sald = daemon(&dir, "sald", |config| config.limits.subscriber_queue = 16);
    let mut nobody_events = subscribe(client_as(&sald.control, NOBODY).unwrap());
    let mut root_events = subscribe(ControlClient::connect_to(&sald.control).unwrap());

    let nobody_listener = bind_as(&sald, NOBODY, "beef/16").unwrap();
    let root_listener = bind_as(&sald, 0, "c0ffee/24").unwrap();
    let nobody_stream = ServiceStream::connect_via(
        client_as(&sald.control, NOBODY).unwrap(),
        "beef01".parse().unwrap(),
        Some(Duration::from_secs(3)),
    )
    .unwrap();
    let root_stream = ServiceStream::connect_via(
        sald.client(),
        "c0ffee01".parse().unwrap(),
        Some(Duration::from_secs(3)),
    )
    .unwrap();
    let (nobody_accepted, _) = nobody_listener.accept().unwrap();
    let (root_accepted, _) = root_listener.accept().unwrap();

    // Listings: nobody sees its two ends, root all four.
    let listed =
        |mut client: ControlClient| match client.request(&Request::ListFlows).unwrap().response {
            Response::Flows { flows } => flows,
            other => panic!("{other:?}"),
        };
    let nobody_flows = listed(client_as(&sald.control, NOBODY).unwrap());
    assert_eq!(nobody_flows.len(), 2, "{nobody_flows:?}");
    assert!(nobody_flows
        .iter()
        .all(|f| f.service == "beef01".parse().unwrap()));
    assert!(nobody_flows
        .iter()
        .any(|f| f.flow == nobody_stream.flow_id()));
    assert_eq!(listed(sald.client()).len(), 4);

    // Events: nobody's own binding and flows, never root's.
    let root_flow = root_stream.flow_id();
    let seen = events_until(&mut nobody_events, Duration::from_millis(500), |_| false);
    assert!(
        seen.contains(&ControlEvent::Registered {
            prefix: prefix("beef/16")
        }),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| matches!(e, ControlEvent::FlowOpened { flow, accepted: false, .. } if *flow == nobody_stream.flow_id())), "{seen:?}");
    // The server end too, as a flow a peer opened to nobody's listener
    // (servd counts a prefix's load from these).
    assert!(seen.iter().any(|e| matches!(e, ControlEvent::FlowOpened { flow, accepted: true, service } if *flow == nobody_accepted.flow_id() && *service == "beef01".parse().unwrap())), "{seen:?}");
    assert!(
        !seen.iter().any(|e| matches!(e,
        ControlEvent::Registered { prefix: p } if *p == prefix("c0ffee/24"))),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e,
        ControlEvent::FlowOpened { flow, .. } | ControlEvent::FlowClosed { flow }
            if *flow == root_flow || *flow == root_accepted.flow_id())),
        "{seen:?}"
    );

    // A subscriber that does not read falls behind a bounded queue and is
    // told so, rather than sald queueing without end.
    churn_registrations(&sald, "5e/8", 1500);
    let seen = events_until(&mut root_events, Duration::from_secs(5), |e| {
        matches!(e, ControlEvent::Lagged { .. })
    });
    assert!(
        matches!(seen.last(), Some(ControlEvent::Lagged { missed }) if *missed > 0),
        "{} events, none lagged",
        seen.len()
    );
    // The rules stay the operator's business.
    let mut nobody = client_as(&sald.control, NOBODY).unwrap();
    let denied = nobody.request(&Request::AddRule {
        prefix: prefix("0/0"),
        target: Target::Drop,
        priority: 0,
    });
    assert!(
        matches!(denied, Err(Error::PermissionDenied(_))),
        "{denied:?}"
    );
}

#[test]
fn two_daemons_in_one_process_keep_their_own_rule_origins() {
    let dir = Scratch::new("two-daemons");
    let a = daemon(&dir, "a", |_| {});
    let b = InProcess::start(common::udp_config(&dir, "b", [127, 0, 0, 2].into()));
    let target = Target::Forward {
        locator: Locator::Udp("127.0.0.9:9".parse().unwrap()),
        weight: 1,
    };
    let announced = sal::table::RuleOrigin::Announced {
        by: "r1".into(),
        expires_unix_ms: None,
    };
    let add = |sald: &InProcess, origin: sal::table::RuleOrigin| {
        let request = Request::AddRuleWithOrigin {
            prefix: prefix("beef/16"),
            target,
            priority: 0,
            origin,
        };
        assert_eq!(sald.request(request), Response::Ok);
    };
    add(&a, announced.clone());
    // The same target made static on the other daemon changes nothing here.
    add(&b, sal::table::RuleOrigin::Static);
    let origin_on = |sald: &InProcess| match sald.request(Request::ListRules) {
        Response::Rules { rules, .. } => rules[0].targets()[0].origin.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(origin_on(&a), announced);
    assert_eq!(origin_on(&b), sal::table::RuleOrigin::Static);
}

#[test]
fn batched_rule_changes_apply_in_order_and_never_outrank_the_operator() {
    let dir = Scratch::new("apply-rules");
    let sald = daemon(&dir, "a", |_| {});
    let forward = |host: u8, weight: u32| Target::Forward {
        locator: Locator::Udp(format!("127.0.0.{host}:9").parse().unwrap()),
        weight,
    };
    let announced = sal::table::RuleOrigin::Announced {
        by: "r1".into(),
        expires_unix_ms: None,
    };
    // The operator's rule at beef/16, priority 5.
    let operator = Request::AddRule {
        prefix: prefix("beef/16"),
        target: forward(7, 1),
        priority: 5,
    };
    assert_eq!(sald.request(operator), Response::Ok);
    let add = |p: &str, target: Target, priority: u32| sal_control::RuleChange::Add {
        prefix: prefix(p),
        target,
        priority,
        origin: announced.clone(),
    };
    let changes = vec![
        // A controller asks for a higher priority than the operator's ...
        add("beef/16", forward(8, 1), 4_000_000_000),
        // ... and to change the operator's own target.
        add("beef/16", forward(7, 9), 0),
        add("cafe/16", forward(8, 1), 3),
        sal_control::RuleChange::Del {
            prefix: prefix("dead/16"),
            target: None,
        },
        sal_control::RuleChange::Del {
            prefix: prefix("cafe/16"),
            target: Some(forward(8, 1).key()),
        },
        add("f00d/16", forward(8, 1), 3),
    ];
    let failures = match sald.request(Request::ApplyRules { changes }) {
        Response::Applied { failures } => failures,
        other => panic!("{other:?}"),
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (failures[0].index, failures[0].kind),
        (3, ErrorKind::NotFound)
    );
    let rules = match sald.request(Request::ListRules) {
        Response::Rules { rules, .. } => rules,
        other => panic!("{other:?}"),
    };
    let rule = |p: &str| rules.iter().find(|r| r.prefix == prefix(p));
    let beef = rule("beef/16").expect("beef/16");
    let entry = |host: u8| {
        let key = forward(host, 1).key();
        beef.targets()
            .iter()
            .find(|e| e.target.key() == key)
            .expect("target")
            .clone()
    };
    assert_eq!(entry(7).origin, sal::table::RuleOrigin::Static);
    assert_eq!(
        entry(7).target,
        forward(7, 1),
        "the operator's target is untouched"
    );
    assert_eq!(entry(8).priority, 5, "capped at the operator's priority");
    assert!(rule("cafe/16").is_none_or(|r| r.targets().is_empty()));
    assert_eq!(rule("f00d/16").expect("f00d/16").targets()[0].priority, 3);
}

/// Connects that time out before their handshake completes: each used to
/// leave its waiter in sald for good (a user looping on them grew sald's
/// memory without bound; the flows themselves were freed, so no flow
/// limit stopped it).
#[test]
fn connects_that_time_out_leave_nothing_behind() {
    let dir = Scratch::new("connect-timeouts");
    let client = daemon(&dir, "client", |_| {});
    // Nobody answers there: every connect waits until it times out.
    client.forward_to("7100/16", common::silent_hole(), 1);
    let connects_pending = |sald: &InProcess| match sald.request(Request::Stats) {
        Response::Stats { stats } => stats.connects_pending,
        other => panic!("{other:?}"),
    };
    let mut control = client_as(&client.control, NOBODY).unwrap();
    let mut timed_out = 0;
    for _ in 0..200 {
        let reply = control.request(&Request::Connect {
            service: "710001".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            timeout_ms: Some(0),
        });
        if reply.is_err() {
            timed_out += 1;
        }
    }
    assert!(
        timed_out > 100,
        "most connects should time out at 0 ms: {timed_out}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || connects_pending(&client) == 0),
        "{} connects still waited for",
        connects_pending(&client)
    );
}

/// A subscriber that takes no event for the frame timeout is let go, as a
/// client that does not take its response is: it held its connection and
/// task in a blocked write for good.
#[test]
fn a_subscriber_that_stops_reading_is_let_go() {
    let dir = Scratch::new("subscriber-stuck");
    let sald = daemon(&dir, "sald", |config| config.limits.frame_timeout_ms = 300);
    let mut subscriber = UnixStream::connect(&sald.control).unwrap();
    subscriber.write_all(&hello()).unwrap();
    subscriber.write_all(&frame(&Request::Subscribe)).unwrap();
    // Enough events to fill the subscriber's socket (a few hundred small
    // writes fill a Unix socket), which it never reads.
    churn_registrations(&sald, "5f/8", 3000);
    thread::sleep(Duration::from_secs(1));
    subscriber
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut everything = Vec::new();
    subscriber
        .read_to_end(&mut everything)
        .expect("sald closed the subscription (end of file, not a timeout)");
    assert!(
        everything.len() > 1000,
        "{} bytes of events",
        everything.len()
    );
}

/// A datagram listener's socket is pumped by a task in sald; closing the
/// listener left that task waiting for datagrams for good, with its
/// descriptor, and the application never read end of file.
#[test]
fn closing_a_datagram_listener_ends_its_socket() {
    let dir = Scratch::new("dgram-close");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = sald.client();
    let reply = owner
        .request(&Request::Listen {
            prefix: prefix("d9/8"),
            protocol: TransportProtocol::Datagram,
            backlog: 4,
        })
        .unwrap();
    let Response::Listening { listener, .. } = reply.response else {
        panic!("not listening: {:?}", reply.response);
    };
    let mut socket = UnixStream::from(reply.fd.expect("the listener's datagram socket"));
    owner
        .request_ok(&Request::CloseListener { listener })
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        socket.read(&mut buf).expect("end of file, not a timeout"),
        0
    );
}

#[test]
fn a_demux_target_added_by_hand_names_a_live_listener() {
    let dir = Scratch::new("demux-rule");
    let sald = daemon(&dir, "sald", |_| {});
    let listener = bind_as(&sald, 0, "d0/8").unwrap();
    let add = |id| Request::AddRule {
        prefix: prefix("d1/8"),
        target: Target::Demux {
            listener: ListenerId(id),
        },
        priority: 0,
    };
    let error = sald
        .client()
        .request(&add(listener.listener_id().0 + 1000))
        .expect_err("no such listener");
    assert_eq!(error.errno(), Errno::ENOENT as i32, "{error}");
    assert_eq!(
        sald.request(add(listener.listener_id().0)),
        Response::Ok,
        "the live one"
    );
}

#[test]
fn moving_every_flow_names_both_interfaces_or_fails() {
    let dir = Scratch::new("migrate-all");
    let sald = daemon(&dir, "sald", |_| {});
    let Response::Interfaces { interfaces, relays } = sald.request(Request::ListInterfaces) else {
        panic!("no interface list");
    };
    assert!(relays, "relays are on by default in UDP mode");
    let ours = interfaces[0].name.clone();
    for (from, to, missing) in [
        (&*ours, "nosuch0", "nosuch0"),
        ("nosuch1", &*ours, "nosuch1"),
    ] {
        let error = sald
            .client()
            .request(&Request::MigrateAll {
                from: from.into(),
                to: to.into(),
            })
            .expect_err("an unknown interface");
        assert_eq!(
            error.errno(),
            Errno::ENOENT as i32,
            "{from} -> {to}: {error}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("no interface {missing}")),
            "{error}"
        );
    }
    let reply = sald.request(Request::MigrateAll {
        from: ours.clone(),
        to: ours,
    });
    assert_eq!(reply, Response::Ok, "no flows to move");
}

#[test]
fn the_syn_settings_of_the_config_reach_the_host() {
    let dir = Scratch::new("syn-settings");
    let mut config = common::udp_config(&dir, "server", [127, 0, 0, 2].into());
    config.syn.cookies = sal::proto::SynCookies::Always;
    let server = InProcess::start(config);
    let client = InProcess::start(common::udp_config(&dir, "client", [127, 0, 0, 1].into()));
    client.forward_to("0/0", server.locator(), 1);
    let listener = ServiceListener::bind_via(server.client(), prefix("5c00/16"), 8).expect("bind");
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    let stream = ServiceStream::connect_via(
        client.client(),
        "5c0001".parse().unwrap(),
        Some(Duration::from_secs(10)),
    );
    assert!(stream.is_ok(), "connect: {stream:?}");
    accepting.join().unwrap().expect("accept");
    let stats = match server.request(Request::Stats) {
        Response::Stats { stats } => stats.host,
        other => panic!("{other:?}"),
    };
    // With `cookies = "always"`, even the first SYN is answered with a
    // cookie, and the handshake completes from it.
    assert_eq!((stats.cookies_sent, stats.cookies_accepted), (1, 1));
}

/// A raw control connection, past its `Hello`.
fn raw_connection(sald: &InProcess) -> UnixStream {
    let mut stream = UnixStream::connect(&sald.control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&hello()).unwrap();
    let hello = next_response(&mut stream);
    assert!(matches!(hello, Response::Hello { .. }), "{hello:?}");
    stream
}

/// The response sald already sent on `stream`, if any, without waiting.
fn response_sent(stream: &mut UnixStream) -> Option<Response> {
    stream.set_nonblocking(true).unwrap();
    let mut len = [0u8; 4];
    let read = stream.read(&mut len[..1]);
    stream.set_nonblocking(false).unwrap();
    match read {
        Ok(1) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
        other => panic!("the connection ended: {other:?}"),
    }
    stream.read_exact(&mut len[1..]).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    Some(sal_control::decode_body(&body).expect("a response frame"))
}

fn drain_request(p: &str, wait_ms: Option<u64>) -> Request {
    Request::Drain {
        prefix: prefix(p),
        wait_ms,
    }
}

/// Binds `p` on `owner`'s connection and opens a flow to `service` in it,
/// which waits there: the listener has one flow pending.
fn listen_with_a_flow(
    sald: &InProcess,
    owner: &mut ControlClient,
    p: &str,
    service: &str,
) -> (ListenerId, ServiceStream) {
    let listen = Request::Listen {
        prefix: prefix(p),
        protocol: TransportProtocol::Stream,
        backlog: 4,
    };
    let listener = match owner.request(&listen).unwrap().response {
        Response::Listening { listener, .. } => listener,
        other => panic!("{other:?}"),
    };
    let flow = ServiceStream::connect_via(
        ControlClient::connect_to(&sald.control).unwrap(),
        service.parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    (listener, flow)
}

/// Listeners drains counted so far, and listeners waiting drains watch.
fn drain_counters(sald: &InProcess) -> (u64, u64) {
    let stats = sald.stats();
    (stats.drain_looks, stats.drains_watching)
}

/// A waiting drain costs nothing while it waits: it looks at its
/// listeners again only when the one it waits on has nothing left, and
/// answers at once then. It used to look at all of them every 20 ms
/// (15 looks in the 300 ms below), and to answer up to 20 ms late:
/// after the answer to a request sent once the last flow was accepted.
#[test]
fn a_waiting_drain_answers_when_its_last_flow_is_taken_and_never_polls() {
    let dir = Scratch::new("drain-wakes");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    // Two listeners of the prefix, a flow pending on each: the first
    // drained so that the second may bind.
    let (first, _one) = listen_with_a_flow(&sald, &mut owner, "d1a1/16", "d1a10001");
    let drained = owner.request(&drain_request("d1a1/16", None)).unwrap();
    assert_eq!(drained.response, Response::Drained { pending: 1 });
    let (second, _two) = listen_with_a_flow(&sald, &mut owner, "d1a1/16", "d1a10002");
    let mut stats_client = ControlClient::connect_to(&sald.control).unwrap();

    let mut waiting = raw_connection(&sald);
    waiting
        .write_all(&frame(&drain_request("d1a1/16", Some(60_000))))
        .unwrap();
    let idle_for = |waiting: &mut UnixStream| {
        assert!(wait_until(Duration::from_secs(5), || drain_counters(&sald)
            .1
            == 1));
        let (looks, _) = drain_counters(&sald);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(drain_counters(&sald), (looks, 1), "it looked while waiting");
        assert_eq!(response_sent(waiting), None, "it answered early");
    };
    idle_for(&mut waiting);

    // The first listener's flow goes to the application through a
    // blocking `Accept` (on its way: sald's count; then the
    // application's): one listener still has one pending.
    let accept = |listener, nonblocking| Request::Accept {
        listener,
        nonblocking,
    };
    let accepted = owner.request(&accept(first, false)).unwrap();
    assert!(matches!(accepted.response, Response::Accepted { .. }));
    idle_for(&mut waiting);

    // The second one's through a non-blocking one (the host's count),
    // once its handshake is through.
    let mut taken = None;
    assert!(wait_until(Duration::from_secs(5), || {
        taken = owner.request(&accept(second, true)).ok();
        taken.is_some()
    }));
    // Answered before a request sent after that.
    assert_serves(&mut stats_client);
    assert_eq!(
        response_sent(&mut waiting),
        Some(Response::Drained { pending: 0 }),
        "not answered at once"
    );
    assert_eq!(drain_counters(&sald).1, 0, "a watch outlived its drain");
}

/// A drain that stops waiting leaves no watch behind, whether its time
/// ran out, its client hung up (it waited, and looked, until its time ran
/// out), or it was answered because its listener closed; several drains
/// of one listener share one watch.
#[test]
fn a_drain_that_stops_waiting_leaves_no_watch_behind() {
    let dir = Scratch::new("drain-watches");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1a2/16", "d1a20001");

    // Its time runs out.
    let answer = owner.request(&drain_request("d1a2/16", Some(200))).unwrap();
    assert_eq!(answer.response, Response::Drained { pending: 1 });
    assert_eq!(drain_counters(&sald).1, 0, "the timed-out drain's watch");

    // Its client hangs up.
    let mut gone = raw_connection(&sald);
    gone.write_all(&frame(&drain_request("d1a2/16", Some(60_000))))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || drain_counters(&sald)
        .1
        == 1));
    drop(gone);
    assert!(
        wait_until(Duration::from_secs(5), || drain_counters(&sald).1 == 0),
        "the watch of a drain whose client left"
    );
    let (looks, _) = drain_counters(&sald);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(drain_counters(&sald).0, looks, "a drain nobody waits for");

    // Its listener closes, under two drains waiting on it.
    let mut drains: Vec<UnixStream> = (0..2).map(|_| raw_connection(&sald)).collect();
    for drain in &mut drains {
        drain
            .write_all(&frame(&drain_request("d1a2/16", Some(60_000))))
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || {
        sald.stats().drain_looks >= looks + 2
    }));
    assert_eq!(drain_counters(&sald).1, 1, "one watch per listener");
    let closed = owner.request(&Request::CloseListener { listener }).unwrap();
    assert_eq!(closed.response, Response::Ok);
    for drain in &mut drains {
        assert_eq!(next_response(drain), Response::Drained { pending: 0 });
    }
    assert_eq!(drain_counters(&sald).1, 0);
}

/// A request sent while a drain waits stays whole: the drain watches for
/// its client hanging up without reading, and the request is answered
/// after the drain.
#[test]
fn a_request_sent_while_a_drain_waits_is_answered_after_it() {
    let dir = Scratch::new("drain-pipelined");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1b1/16", "d1b10001");
    let mut waiting = raw_connection(&sald);
    let mut bytes = frame(&drain_request("d1b1/16", Some(60_000)));
    bytes.extend(frame(&Request::Stats));
    waiting.write_all(&bytes).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(response_sent(&mut waiting), None, "it answered early");
    let accept = Request::Accept {
        listener,
        nonblocking: false,
    };
    let accepted = owner.request(&accept).unwrap();
    assert!(matches!(accepted.response, Response::Accepted { .. }));
    assert_eq!(
        next_response(&mut waiting),
        Response::Drained { pending: 0 }
    );
    let stats = next_response(&mut waiting);
    assert!(matches!(stats, Response::Stats { .. }), "{stats:?}");
}

/// A drain whose client sent its next request and then hung up stops
/// waiting, and gives its watch back. It looked only for a request or
/// the end of the connection, and saw the request: it waited until its
/// time ran out (up to 10 minutes), holding its watch and its user's
/// connection for a client long gone.
#[test]
fn a_drain_whose_client_sent_a_request_and_hung_up_stops_waiting() {
    let dir = Scratch::new("drain-pipelined-gone");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (_listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1b2/16", "d1b20001");
    let mut waiting = raw_connection(&sald);
    let mut bytes = frame(&drain_request("d1b2/16", Some(60_000)));
    bytes.extend(frame(&Request::Stats));
    waiting.write_all(&bytes).unwrap();
    assert!(wait_until(Duration::from_secs(5), || drain_counters(&sald)
        .1
        == 1));
    drop(waiting);
    assert!(
        wait_until(Duration::from_secs(3), || drain_counters(&sald).1 == 0),
        "the watch of a drain whose client left"
    );
}

/// A client that shut its end of the connection for sending only (as
/// `socat` or `nc -N` do once their request is sent) still reads: its
/// drain waits as asked and answers. It was taken for a client gone, and
/// answered at once with the flows still pending, as if the wait had run
/// out. A request sent before the shutdown changes nothing (and the
/// shutdown, which leaves the connection readable for good, keeps no
/// drain looking at it).
#[test]
fn a_drain_whose_client_only_stopped_sending_waits_and_answers() {
    let dir = Scratch::new("drain-half-closed");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1b4/16", "d1b40001");
    let mut quiet = raw_connection(&sald);
    quiet
        .write_all(&frame(&drain_request("d1b4/16", Some(60_000))))
        .unwrap();
    let mut asking = raw_connection(&sald);
    let mut bytes = frame(&drain_request("d1b4/16", Some(60_000)));
    bytes.extend(frame(&Request::Stats));
    asking.write_all(&bytes).unwrap();
    for stream in [&quiet, &asking] {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(response_sent(&mut quiet), None, "answered early");
    assert_eq!(response_sent(&mut asking), None, "answered early");
    assert_serves(&mut owner);
    let accept = Request::Accept {
        listener,
        nonblocking: false,
    };
    let accepted = owner.request(&accept).unwrap();
    assert!(matches!(accepted.response, Response::Accepted { .. }));
    assert_eq!(next_response(&mut quiet), Response::Drained { pending: 0 });
    assert_eq!(next_response(&mut asking), Response::Drained { pending: 0 });
    let stats = next_response(&mut asking);
    assert!(matches!(stats, Response::Stats { .. }), "{stats:?}");
}

/// A drain whose client stopped sending and later closed stops waiting
/// and gives its watch back: the end of file its client left keeps the
/// connection readable for good, and the drain no longer watched it, so
/// it held its watch and connection until its time ran out.
#[test]
fn a_drain_whose_client_stopped_sending_and_then_closed_stops_waiting() {
    let dir = Scratch::new("drain-half-closed-gone");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (_listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1b5/16", "d1b50001");
    let waiting = {
        let mut waiting = raw_connection(&sald);
        waiting
            .write_all(&frame(&drain_request("d1b5/16", Some(60_000))))
            .unwrap();
        waiting
    };
    waiting.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(wait_until(Duration::from_secs(5), || drain_counters(&sald)
        .1
        == 1));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(drain_counters(&sald).1, 1, "it stopped waiting early");
    drop(waiting);
    assert!(
        wait_until(Duration::from_secs(3), || drain_counters(&sald).1 == 0),
        "the watch of a drain whose client left"
    );
}

/// A drain from another connection answers when the owner's connection
/// goes (its listeners close, nothing is pending on them any more).
#[test]
fn a_drain_answers_when_its_listeners_owner_leaves() {
    let dir = Scratch::new("drain-owner-gone");
    let sald = daemon(&dir, "sald", |_| {});
    let mut owner = ControlClient::connect_to(&sald.control).unwrap();
    let (_listener, _flow) = listen_with_a_flow(&sald, &mut owner, "d1b3/16", "d1b30001");
    let mut waiting = raw_connection(&sald);
    waiting
        .write_all(&frame(&drain_request("d1b3/16", Some(60_000))))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || drain_counters(&sald)
        .1
        == 1));
    drop(owner);
    assert_eq!(
        next_response(&mut waiting),
        Response::Drained { pending: 0 }
    );
    assert_eq!(drain_counters(&sald).1, 0);
}
