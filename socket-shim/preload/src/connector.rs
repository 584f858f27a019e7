//! Non-blocking connects: one control connection and one thread per
//! process, however many connects are in flight.
//!
//! A non-blocking `connect` returns `EINPROGRESS` at once; sald's answer
//! (the flow's socket, or why there is none) comes a handshake later. The
//! process keeps one *connector* connection to sald ([`Request::Connector`]):
//! the connecting thread writes its `Connect` there and notes which socket
//! the answer is for; the connector thread reads the answers, which sald
//! sends as each handshake ends, in whatever order, and installs each flow
//! ([`finish_connect`]). So a program with ten thousand connects in flight
//! has one thread and one control connection of ours, not ten thousand of
//! each (sald would refuse an ordinary user's connections long before), and
//! a connect costs one request frame.
//!
//! If the connection breaks (sald restarted), the connects waiting on it
//! fail with `ECONNRESET` and the next connect opens a new connection.
//!
//! After `fork`, the child has the connection's descriptors but not the
//! thread, and the parent's connects stay the parent's (their flows go to
//! its descriptors). The child's first non-blocking connect opens a
//! connection of its own and closes the inherited descriptors (if their
//! numbers still refer to them). The two locks here are taken across
//! `fork`, after the descriptor table's (see [`fork_prepare`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sal::wire::TransportProtocol;
use sal::ServiceId;
use sal_control::{control_path, Request, Response};
use socket_shim::client::default_client_name;
use socket_shim::{ControlClient, Error as ShimError, Reply, RequestSender};

use crate::addr::SockAddr;
use crate::ops::{finish_connect, flow_from_reply, Errno, Res};
use crate::real;
use crate::table::ident;

/// The thread only reads answers and hands over descriptors.
const THREAD_STACK: usize = 128 * 1024;

/// A connect in flight: where its flow goes once sald answers.
struct Pending {
    fd: RawFd,
    gen: u64,
    peer: SockAddr,
}

/// Which connector connection a request went out on (numbered per
/// process), and its number on that connection.
type Ticket = (u64, u64);

/// The writing side of this process's connector connection.
struct Connector {
    pid: u32,
    connection: u64,
    sender: RequestSender,
    /// The number of the next request on the connection.
    next: u64,
    /// Cleared (under the pending lock) by the thread when the connection
    /// breaks.
    alive: Arc<AtomicBool>,
    /// The descriptor the thread reads from, for a forked child to close.
    reader: RawFd,
    reader_ident: (u64, u64),
}

static CONNECTOR: Mutex<Option<Connector>> = Mutex::new(None);
static PENDING: Mutex<BTreeMap<Ticket, Pending>> = Mutex::new(BTreeMap::new());
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn lock<T>(mutex: &'static Mutex<T>) -> MutexGuard<'static, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends the `Connect` for the socket at `fd` (whose connect is generation
/// `gen`); the connector thread does the rest. An error means the request
/// could not go out; the caller reports it.
pub(crate) fn submit(fd: RawFd, gen: u64, peer: SockAddr, service: ServiceId) -> Res<()> {
    let request = Request::Connect {
        service,
        protocol: TransportProtocol::Stream,
        timeout_ms: None,
    };
    let mut slot = lock(&CONNECTOR);
    // A connection that broke since it was last used is replaced, once.
    for retry in [false, true] {
        let connector = live(&mut slot)?;
        let ticket = (connector.connection, connector.next);
        {
            let mut pending = lock(&PENDING);
            if !connector.alive.load(Ordering::Acquire) {
                continue;
            }
            pending.insert(ticket, Pending { fd, gen, peer });
        }
        match connector.sender.send(&request) {
            Ok(()) => {
                connector.next += 1;
                return Ok(());
            }
            Err(error) => {
                lock(&PENDING).remove(&ticket);
                connector.alive.store(false, Ordering::Release);
                if retry || !matches!(error, ShimError::Closed) {
                    return Err(error.errno());
                }
            }
        }
    }
    Err(libc::ECONNRESET)
}

/// This process's connector, opened (with its thread) if there is none
/// or it broke.
fn live(slot: &mut Option<Connector>) -> Res<&mut Connector> {
    let pid = std::process::id();
    let usable = matches!(slot, Some(c) if c.pid == pid && c.alive.load(Ordering::Acquire));
    if !usable {
        if let Some(old) = slot.take() {
            retire(old, pid);
        }
        *slot = Some(open(pid)?);
    }
    Ok(slot.as_mut().expect("just set"))
}

/// Lets go of a connector that broke, or that a forked child inherited.
/// Its descriptors are closed only while their numbers still refer to its
/// socket: the program may have closed them behind our back (`closefrom`)
/// and reused the numbers.
fn retire(old: Connector, pid: u32) {
    if old.pid != pid {
        // Inherited: the parent's connects are not ours to complete.
        take_connection(&mut lock(&PENDING), old.connection);
        if ident(old.reader) == old.reader_ident {
            // SAFETY: the number refers to the child's copy of the reading
            // descriptor, which nothing in the child uses.
            unsafe { real::close(old.reader) };
        }
    }
    // (In the process that opened it, the thread closes the reading end.)
    close_if_ours(old.sender, old.reader_ident);
}

/// Drops `handle` (closing its descriptor) if the descriptor still refers
/// to the socket `socket` names; else only forgets it.
fn close_if_ours<T: AsFd + IntoRawFd>(handle: T, socket: (u64, u64)) {
    if ident(handle.as_fd().as_raw_fd()) == socket {
        drop(handle);
    } else {
        let _ = handle.into_raw_fd();
    }
}

/// Opens a connector connection and starts its thread.
fn open(pid: u32) -> Res<Connector> {
    let control =
        ControlClient::open_with(control_path(), &default_client_name(), &Request::Connector)
            .map_err(|e| e.errno())?;
    let sender = control.sender().map_err(|e| e.errno())?;
    let reader = control.as_fd().as_raw_fd();
    let socket = ident(reader);
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let alive = Arc::new(AtomicBool::new(true));
    let thread_alive = alive.clone();
    std::thread::Builder::new()
        .name("serval-connect".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(control, connection, thread_alive, socket))
        .map_err(|_| libc::EAGAIN)?;
    Ok(Connector {
        pid,
        connection,
        sender,
        next: 0,
        alive,
        reader,
        reader_ident: socket,
    })
}

/// The connector thread: completes connects as their answers arrive, and
/// fails the rest when the connection breaks.
fn run(mut control: ControlClient, connection: u64, alive: Arc<AtomicBool>, socket: (u64, u64)) {
    let failure = match control.answer() {
        Ok(reply) if reply.response == Response::Ok => loop {
            match control.recv() {
                Ok(reply) => complete(connection, reply),
                Err(error) => break broken(error),
            }
        },
        Ok(_) => libc::EPROTO,
        Err(error) => broken(error),
    };
    close_if_ours(control, socket);
    let orphans = {
        let mut pending = lock(&PENDING);
        alive.store(false, Ordering::Release);
        take_connection(&mut pending, connection)
    };
    for (_, orphan) in orphans {
        let _ = finish_connect(orphan.fd, orphan.gen, Err(failure), orphan.peer, None);
    }
}

/// Removes and returns the connects waiting on `connection` (a range of
/// the map: tickets sort by connection first).
fn take_connection(
    pending: &mut BTreeMap<Ticket, Pending>,
    connection: u64,
) -> BTreeMap<Ticket, Pending> {
    let mut ours = pending.split_off(&(connection, 0));
    let mut later = ours.split_off(&(connection + 1, 0));
    pending.append(&mut later);
    ours
}

/// The errno of connects that were waiting on a broken connection.
fn broken(error: ShimError) -> Errno {
    match error {
        ShimError::Closed => libc::ECONNRESET,
        other => other.errno(),
    }
}

/// Installs the flow (or records the error) of one answer.
fn complete(connection: u64, reply: Reply) {
    let Response::Completed { request, response } = reply.response else {
        return;
    };
    let Some(pending) = lock(&PENDING).remove(&(connection, request)) else {
        return;
    };
    let result = flow_from_reply(Reply {
        response: *response,
        fd: reply.fd,
    });
    let _ = finish_connect(pending.fd, pending.gen, result, pending.peer, None);
}

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

type ForkGuards = (
    MutexGuard<'static, Option<Connector>>,
    MutexGuard<'static, BTreeMap<Ticket, Pending>>,
);

/// Takes both locks across `fork` (after the descriptor table's), so the
/// child never inherits one held by a thread that does not exist there.
/// Nothing here waits for the table lock while holding them.
pub(crate) fn fork_prepare() {
    let guards = (lock(&CONNECTOR), lock(&PENDING));
    let _ = FORK_GUARDS.try_with(|slot| *slot.borrow_mut() = Some(guards));
}

/// Releases what [`fork_prepare`] took, in the parent and in the child.
pub(crate) fn fork_release() {
    let _ = FORK_GUARDS.try_with(|slot| slot.borrow_mut().take());
}
