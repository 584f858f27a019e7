//! The client library's connects share one connector connection per
//! process (socket-shim's `connector` module), tested against a real sald:
//! many connects in flight as an ordinary user, sald dying under waiting
//! connects, a dropped connect future, a forked child, datagram flows.
//!
//! The library's connects go to the default control socket
//! (`SERVAL_CONTROL`), so the tests here take turns ([`use_control`]).

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use socket_shim::{
    AsyncControlClient, AsyncServiceListener, AsyncServiceStream, Error, ServiceDatagram,
    ServiceDatagramFlow, ServiceListener, ServiceStream,
};
use testnet::require_root;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{become_user, pattern, raise_fd_limit, InProcess, Sald, SaldProcess, Scratch};

/// An ordinary user.
const NOBODY: u32 = 65534;
/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(30);

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

/// Points the library's default control socket at `path` for one test;
/// the tests of this file hold it in turn.
fn use_control(path: &Path) -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("SERVAL_CONTROL", path);
    turn
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` on a thread of its own whose effective user is `uid` (the
/// raw system call changes that thread only; threads it starts inherit it).
fn run_as<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        become_user(uid);
        f()
    })
    .join()
    .expect("thread of another user")
}

/// A root echo server on `p` (its own thread and runtime) that serves
/// `flows` flows, each until end of file; returns how many it served.
fn echo_server(control: &Path, p: &str, flows: usize) -> std::thread::JoinHandle<usize> {
    let control = control.to_path_buf();
    let p = prefix(p);
    let (bound, is_bound) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let control = AsyncControlClient::connect_to(&control).await.unwrap();
            let listener = AsyncServiceListener::bind_via(control, p, 1024)
                .await
                .unwrap();
            bound.send(()).unwrap();
            let mut echoes = tokio::task::JoinSet::new();
            for _ in 0..flows {
                let (mut flow, _) = listener.accept().await.unwrap();
                echoes.spawn(async move {
                    let mut got = Vec::new();
                    flow.read_to_end(&mut got).await.unwrap();
                    flow.write_all(&got).await.unwrap();
                    flow.shutdown().await.unwrap();
                });
            }
            echoes.join_all().await.len()
        })
    });
    is_bound.recv().expect("the server bound its prefix");
    server
}

/// Connects to `service` through the shared connector, sends 64 bytes and
/// checks they come back intact.
async fn connect_and_echo(service: ServiceId, seed: u32) -> Result<(), Error> {
    let mut stream = AsyncServiceStream::connect(service).await?;
    let sent = pattern(64, seed);
    stream.write_all(&sent).await?;
    stream.shutdown().await?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await?;
    assert_eq!(got, sent, "echo of flow {seed}");
    Ok(())
}

/// sald gives an ordinary user two control connections here; 300 connects
/// in flight at once, each on a connection of its own, would be refused.
/// On the shared connector they all go through.
#[test]
fn many_async_connects_of_an_ordinary_user_share_one_connection() {
    require_root!();
    const CONNECTS: u32 = 300;
    // Each flow costs descriptors here thrice: client, server, and the
    // in-process sald's socketpairs.
    raise_fd_limit(8 * u64::from(CONNECTS) + 1024);
    let dir = Scratch::new("shim-connector-many");
    let mut config = common::udp_config(&dir, "sald", [127, 0, 0, 1].into());
    config.limits.clients_per_uid = 2;
    let sald = InProcess::start(config);
    let _turn = use_control(&sald.control);
    let server = echo_server(&sald.control, "c1/8", CONNECTS as usize);

    let failures = run_as(NOBODY, move || {
        runtime().block_on(async {
            // Every task writes its connect before any answer is read: all
            // of them are in flight at once.
            let tasks: Vec<_> = (0..CONNECTS)
                .map(|i| tokio::spawn(connect_and_echo(svc(&format!("c1{i:04x}")), i)))
                .collect();
            let mut failures = Vec::new();
            for (i, task) in tasks.into_iter().enumerate() {
                match tokio::time::timeout(PATIENCE, task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(error))) => failures.push(format!("{i}: {error}")),
                    Ok(Err(panic)) => failures.push(format!("{i}: {panic}")),
                    Err(_) => failures.push(format!("{i}: no answer within {PATIENCE:?}")),
                }
            }
            failures
        })
    });
    assert!(
        failures.is_empty(),
        "{} of {CONNECTS} connects failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(server.join().unwrap(), CONNECTS as usize);
}

/// Waits until `sald` lists at least `count` flows, letting the tasks of
/// the runtime run meanwhile.
async fn wait_for_flows(sald: &impl Sald, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while sald.flows().len() < count {
        assert!(Instant::now() < deadline, "sald never had {count} flows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects waiting on the connection when sald dies fail, saying sald
/// closed it; with sald down a connect fails at once; once sald is back
/// the next connect opens a new connection and works.
#[test]
fn connects_waiting_when_sald_dies_fail_and_later_connects_reconnect() {
    require_root!();
    let dir = Scratch::new("shim-connector-restart");
    let sald = SaldProcess::start(&dir, "sald", "127.0.0.1:0", |_| {});
    let control = sald.control.clone();
    let _turn = use_control(&control);
    // Nobody answers at the hole: connects there wait for the timeout.
    sald.forward_to("dead/16", common::silent_hole(), 1);
    let wait = Duration::from_secs(120);
    let blocked = std::thread::spawn(move || ServiceStream::connect_timeout(svc("dead00"), wait));
    let rt = runtime();
    let waiting: Vec<_> = (1..=4)
        .map(|i| {
            rt.spawn(AsyncServiceStream::connect_timeout(
                svc(&format!("dead{i:02x}")),
                wait,
            ))
        })
        .collect();
    rt.block_on(wait_for_flows(&sald, 5));

    drop(sald); // SIGKILL
    for task in waiting {
        let outcome = rt
            .block_on(async { tokio::time::timeout(PATIENCE, task).await })
            .expect("the connect fails once sald is gone")
            .unwrap();
        let error = outcome.expect_err("a connect sald never answered");
        assert!(matches!(error, Error::Closed), "{error:?}");
        assert_eq!(error.to_string(), "sald closed the connection");
    }
    let error = blocked.join().unwrap().expect_err("sald died");
    assert!(matches!(error, Error::Closed), "{error:?}");

    // sald down: no connection to open.
    let error = rt
        .block_on(AsyncServiceStream::connect(svc("c20001")))
        .expect_err("sald is down");
    assert!(matches!(error, Error::DaemonNotRunning { .. }), "{error:?}");
    let error = ServiceStream::connect(svc("c20001")).expect_err("sald is down");
    assert!(matches!(error, Error::DaemonNotRunning { .. }), "{error:?}");

    // sald back on the same control socket.
    let sald = SaldProcess::start(&dir, "sald", "127.0.0.1:0", |_| {});
    assert_eq!(sald.control, control);
    let listener = ServiceListener::bind_via(sald.client(), prefix("c2/8"), 16).unwrap();
    let served = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut flow, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            flow.read_to_end(&mut got).unwrap();
            flow.write_all(&got).unwrap();
        }
    });
    rt.block_on(connect_and_echo(svc("c20002"), 2)).unwrap();
    let mut stream = ServiceStream::connect(svc("c20003")).unwrap();
    stream.write_all(b"blocking").unwrap();
    stream.shutdown_write().unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"blocking");
    served.join().unwrap();
}

/// A connect future dropped after its request went out leaks nothing:
/// the flow sald hands over is closed, and the peer sees its end.
#[test]
fn a_dropped_connect_future_closes_its_flow() {
    require_root!();
    let dir = Scratch::new("shim-connector-drop");
    let sald = InProcess::start(common::udp_config(&dir, "sald", [127, 0, 0, 1].into()));
    let _turn = use_control(&sald.control);
    let listener = ServiceListener::bind_via(sald.client(), prefix("c3/8"), 16).unwrap();
    runtime().block_on(async {
        let mut connect = pin!(AsyncServiceStream::connect(svc("c30001")));
        // One poll sends the request; then the caller loses interest.
        let first = std::future::poll_fn(|cx| Poll::Ready(connect.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "sald cannot have answered yet");
    });
    let (mut theirs, _) = listener.accept().unwrap();
    theirs.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        theirs.read(&mut byte).expect("end of file, not a timeout"),
        0,
        "the abandoned flow was closed"
    );
    // The connection goes on serving connects.
    let stream = runtime()
        .block_on(AsyncServiceStream::connect(svc("c30002")))
        .unwrap();
    let (theirs, _) = listener.accept().unwrap();
    assert_eq!(theirs.flow_info().peer_flow, Some(stream.flow_id()));
}

/// A forked child does not use its parent's connection or thread: its
/// first connect opens one of its own, and the parent's goes on working.
#[test]
fn a_forked_child_opens_its_own_connection() {
    require_root!();
    let dir = Scratch::new("shim-connector-fork");
    let sald = SaldProcess::start(&dir, "sald", "127.0.0.1:0", |_| {});
    let _turn = use_control(&sald.control);
    let listener = ServiceListener::bind_via(sald.client(), prefix("c4/8"), 16).unwrap();
    let mut before = ServiceStream::connect(svc("c40001")).unwrap();
    let (mut theirs, _) = listener.accept().unwrap();

    // SAFETY: the child only connects, writes and leaves with `_exit`.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let sent = ServiceStream::connect(svc("c40002")).and_then(|mut child| {
                child.write_all(b"from the child")?;
                Ok(())
            });
            // SAFETY: ends the child without running the parent's
            // destructors or atexit handlers.
            unsafe { nix::libc::_exit(i32::from(sent.is_err())) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let (mut from_child, _) = listener.accept().unwrap();
            from_child.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut got = Vec::new();
            from_child.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"from the child");
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    // The parent's flow and connection are untouched.
    before.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    theirs.read_exact(&mut byte).unwrap();
    let after = ServiceStream::connect(svc("c40003")).unwrap();
    let (theirs, _) = listener.accept().unwrap();
    assert_eq!(theirs.flow_info().peer_flow, Some(after.flow_id()));
}

/// Connected datagram flows ride the connector too.
#[test]
fn datagram_flows_connect_through_the_connector() {
    require_root!();
    let dir = Scratch::new("shim-connector-dgram");
    let sald = InProcess::start(common::udp_config(&dir, "sald", [127, 0, 0, 1].into()));
    let _turn = use_control(&sald.control);
    let bound = ServiceDatagram::bind_via(sald.client(), prefix("c5/8")).unwrap();
    let client = std::thread::spawn(|| {
        let flow = ServiceDatagramFlow::connect(svc("c50001")).unwrap();
        flow.send(b"ping").unwrap();
        flow.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 16];
        let n = flow.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    let flow = bound.accept().unwrap();
    flow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    let n = flow.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    flow.send(b"pong").unwrap();
    assert_eq!(client.join().unwrap(), b"pong");
}

/// An empty datagram is a datagram, not the end of the flow: the pump reads
/// 0 bytes for both, and tells them apart by whether the program's end is
/// still open for sending. (It took the empty one for the end, sent our FIN
/// and dropped what came after.)
#[test]
fn an_empty_datagram_is_delivered_and_the_flow_goes_on() {
    require_root!();
    let dir = Scratch::new("shim-connector-empty");
    let sald = InProcess::start(common::udp_config(&dir, "sald", [127, 0, 0, 1].into()));
    let _turn = use_control(&sald.control);
    let bound = ServiceDatagram::bind_via(sald.client(), prefix("c6/8")).unwrap();
    let client = std::thread::spawn(|| {
        let flow = ServiceDatagramFlow::connect(svc("c60001")).unwrap();
        flow.send(b"").unwrap();
        flow.send(b"after").unwrap();
        flow.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 16];
        let n = flow.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    let flow = bound.accept().unwrap();
    flow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(flow.recv(&mut buf).unwrap(), 0, "the empty datagram");
    let n = flow.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after", "the flow went on after it");
    flow.send(b"done").unwrap();
    assert_eq!(client.join().unwrap(), b"done");
}
