//! The process's shared connector: the connects of this library
//! ([`ServiceStream::connect`](crate::ServiceStream::connect),
//! [`AsyncServiceStream::connect`](crate::AsyncServiceStream::connect),
//! [`ServiceDatagramFlow::connect`](crate::ServiceDatagramFlow::connect) and
//! their `_timeout` forms), and the non-blocking connects of the C shim,
//! all ride one control connection to sald.
//!
//! Why: a connect on a control connection of its own costs a connection
//! setup and teardown in sald (accept, epoll, peer credentials, close) and a
//! `Hello` (the async client waited for its answer: two round trips per
//! connect). Worse, every connect in flight held a connection, and sald
//! gives an ordinary user only `clients_per_uid` of them (128 by default):
//! a tokio program with a few hundred connects in flight was refused. Here
//! the process keeps one *connector* connection ([`Request::Connector`]) per
//! control socket path: a connect writes its `Connect` there (one frame, no
//! round trip before it) and waits for its answer, which sald sends as its
//! handshake ends, named by the request's number, in whatever order. One
//! reader thread (small stack) per connection reads the answers and hands
//! each flow to its waiting connect, a blocking thread or an async task of
//! any tokio runtime. The timeout of `connect_timeout` goes to sald in the
//! request, so sald answers `TimedOut` itself.
//!
//! A connect future dropped before its answer loses nothing: when the
//! answer comes, nobody takes it and the flow's socket is closed (the peer
//! sees the flow end).
//!
//! Breakage: if the connection breaks (sald stopped or restarted), every
//! connect waiting on it fails with [`Error::Closed`] ("sald closed the
//! connection"), and the next connect opens a new connection; with sald
//! down, that fails at once with [`Error::DaemonNotRunning`], as a connect
//! on a connection of its own does. A flow descriptor this process had no
//! room for (`EMFILE`) breaks the connection too: the answer that lost it
//! cannot be told apart, so the connects waiting fail with that error.
//!
//! After `fork`, the child keeps its copies of the parent's descriptors but
//! not the reader thread, and the parent's connects are not its own: its
//! first connect closes the inherited descriptors (each only while its
//! number still names the connection's socket: a program may have closed
//! it behind our back and reused the number) and opens a connection of its
//! own. The parent's waiters are forgotten in the child, neither answered
//! nor dropped (their wakers belong to threads the child does not have).
//!
//! # Callers that interpose libc (the LD_PRELOAD shim)
//!
//! The same connector completes the non-blocking connects of the C shim
//! (`libserval_shim.so`), and its blocking ones on sockets with a send
//! timeout (which may return before the outcome): its waiter is a function that the reader thread
//! runs ([`connect_then`]), holding no lock of this module, to install the
//! flow on the program's descriptor. There, this module's own socket calls
//! (`socket`, `connect`, `write`, `close`) re-enter the shim's interposed
//! functions, which may take the shim's descriptor-table lock: the
//! connector's lock may be held while the table's is taken, never the
//! other way round. Across `fork` the locks must be taken in that same
//! order, the connector's first, which `pthread_atfork` cannot guarantee
//! for two lazily registered handlers (prepare handlers run in reverse
//! registration order). Such a caller therefore calls
//! [`fork_handled_by_caller`] before its first connect and runs
//! [`fork_prepare`] and [`fork_release`] from its own handlers, in the
//! order it needs; otherwise this module registers its own handlers when
//! it opens its first connection. Either way the one lock the connecting
//! side holds across calls (the connections' lock) is taken across `fork`,
//! so the child never inherits it held. The per-connection waiter lock is
//! not: it is held only for a map update, never while taking another lock,
//! and the child never takes an inherited connection's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sal::proto::FlowInfo;
use sal::wire::TransportProtocol;
use sal::ServiceId;
use sal_control::{Request, Response};

use crate::client::control_path;

use crate::client::{default_client_name, ControlClient, Reply, RequestSender};
use crate::error::{Error, Result};
use crate::stream::{connect_request, flow_from_reply};

/// The reader thread only decodes answers and passes descriptors on.
const THREAD_STACK: usize = 128 * 1024;

/// A flow handed over by sald: its description and socket.
pub type Flow = (FlowInfo, OwnedFd);

/// Opens a flow of `protocol` to `service` through this process's connector
/// for the default control socket, blocking the calling thread until sald
/// answers (any thread, a tokio worker included, like any blocking call).
pub(crate) fn connect(
    service: ServiceId,
    protocol: TransportProtocol,
    timeout: Option<Duration>,
) -> Result<Flow> {
    let (answer, wait) = std::sync::mpsc::sync_channel(1);
    submit(
        &connect_request(service, protocol, timeout),
        Waiter::Thread(answer),
    )?;
    wait.recv().unwrap_or(Err(Error::Closed))
}

/// [`connect`] for async callers, on any tokio runtime (or none). Dropping
/// the future before it completes closes the flow once sald hands it over.
#[cfg(feature = "tokio")]
pub(crate) async fn connect_async(
    service: ServiceId,
    protocol: TransportProtocol,
    timeout: Option<Duration>,
) -> Result<Flow> {
    let (answer, wait) = tokio::sync::oneshot::channel();
    submit(
        &connect_request(service, protocol, timeout),
        Waiter::Task(answer),
    )?;
    wait.await.unwrap_or(Err(Error::Closed))
}

/// Sends a connect of `protocol` to `service` through this process's
/// connector for the default control socket and returns at once; `done`
/// gets the answer, called on the connector's reader thread (so it must
/// not block for long: it holds up every other answer). It is called
/// exactly once, with the flow or why there is none ([`Error::Closed`]
/// when the connection broke while the connect waited), unless this
/// returns an error (the request did not go out; `done` is dropped
/// uncalled) or the process forks first (a child never runs its parent's
/// `done`s). A panic in `done` is caught and ends nothing but that call.
pub fn connect_then(
    service: ServiceId,
    protocol: TransportProtocol,
    timeout: Option<Duration>,
    done: impl FnOnce(Result<Flow>) + Send + 'static,
) -> Result<()> {
    submit(
        &connect_request(service, protocol, timeout),
        Waiter::Call(Box::new(done)),
    )
}

/// Where the answer to one connect goes.
enum Waiter {
    /// A blocked thread.
    Thread(std::sync::mpsc::SyncSender<Result<Flow>>),
    /// An async task.
    #[cfg(feature = "tokio")]
    Task(tokio::sync::oneshot::Sender<Result<Flow>>),
    /// A function run on the reader thread ([`connect_then`]).
    Call(Box<dyn FnOnce(Result<Flow>) + Send>),
}

impl Waiter {
    /// Hands the answer over; one nobody waits for any more (a dropped
    /// future) is dropped here, which closes its flow's socket.
    fn finish(self, answer: Result<Flow>) {
        match self {
            // Room for one answer, and there is only one: never blocks.
            Waiter::Thread(sender) => drop(sender.try_send(answer)),
            #[cfg(feature = "tokio")]
            Waiter::Task(sender) => drop(sender.send(answer)),
            // A panic must not end the reader thread, which would leave
            // the other connects waiting forever.
            Waiter::Call(done) => drop(catch_unwind(AssertUnwindSafe(|| done(answer)))),
        }
    }
}

/// The connects waiting on one connection, shared with its reader thread.
#[derive(Default)]
struct Waiting {
    /// By request number on the connection.
    waiters: HashMap<u64, Waiter>,
    /// The connection broke (or a request could not be written whole):
    /// nothing more goes out on it.
    broken: bool,
}

/// The writing side of one connector connection.
struct Connection {
    /// The control socket it reaches.
    path: PathBuf,
    /// The process that opened it (a forked child has another).
    pid: u32,
    sender: RequestSender,
    /// The number of the next request.
    next: u64,
    waiting: Arc<Mutex<Waiting>>,
    /// The descriptor the reader thread reads, and the identity of its
    /// socket: a forked child closes its copy.
    reader: RawFd,
    reader_socket: (u64, u64),
}

/// This process's connector connections, one per control socket path (a
/// program normally uses one).
static CONNECTIONS: Mutex<Vec<Connection>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent between
    // statements; a panic elsewhere in the thread does not change that.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `request` on the connection to the default control socket (opened
/// if there is none, or it broke); `waiter` gets its answer. An error means
/// the request could not go out.
fn submit(request: &Request, mut waiter: Waiter) -> Result<()> {
    let path = control_path();
    let pid = std::process::id();
    let mut connections = lock(&CONNECTIONS);
    // A connection that broke since it was last used is replaced, once.
    for retry in [false, true] {
        let connection = live(&mut connections, &path, pid)?;
        let number = connection.next;
        {
            let mut waiting = lock(&connection.waiting);
            if waiting.broken {
                continue;
            }
            waiting.waiters.insert(number, waiter);
        }
        let error = match connection.sender.send(request) {
            Ok(()) => {
                connection.next += 1;
                return Ok(());
            }
            Err(error) => error,
        };
        let mut waiting = lock(&connection.waiting);
        waiting.broken = true;
        match waiting.waiters.remove(&number) {
            Some(back) => waiter = back,
            // The reader thread saw the breakage first and told the waiter.
            None => return Ok(()),
        }
        if retry || !matches!(error, Error::Closed) {
            return Err(error);
        }
    }
    Err(Error::Closed)
}

/// The usable connection to `path`, opened if there is none. Drops the
/// connections that broke and lets go of those a forked child inherited.
fn live<'a>(
    connections: &'a mut Vec<Connection>,
    path: &Path,
    pid: u32,
) -> Result<&'a mut Connection> {
    // In place: this runs on every connect, which should not allocate.
    let mut at = 0;
    while at < connections.len() {
        let connection = &connections[at];
        if connection.pid == pid && !lock(&connection.waiting).broken {
            at += 1;
            continue;
        }
        let gone = connections.swap_remove(at);
        if gone.pid != pid {
            forsake(gone);
        } else {
            // Broken. (The reader thread closes the reading descriptor.)
            close_if_ours(gone.sender, gone.reader_socket);
        }
    }
    if let Some(at) = connections.iter().position(|c| c.path == path) {
        return Ok(&mut connections[at]);
    }
    connections.push(open(path, pid)?);
    Ok(connections.last_mut().expect("just pushed"))
}

/// Lets go of a connection a forked child inherited: its descriptors are
/// closed (each only while its number still names that socket), its
/// waiters left alone (the parent's connects; their wakers belong to
/// threads the child does not have).
fn forsake(inherited: Connection) {
    if socket_identity(inherited.reader) == Some(inherited.reader_socket) {
        // The reader thread owned this descriptor; it does not exist here.
        let _ = nix::unistd::close(inherited.reader);
    }
    let Connection {
        sender,
        waiting,
        reader_socket,
        ..
    } = inherited;
    close_if_ours(sender, reader_socket);
    std::mem::forget(waiting);
}

/// Drops `handle` (closing its descriptor) if the descriptor still refers
/// to the socket `socket` names; else only forgets it: the program may have
/// closed the number behind our back (`closefrom`) and reused it.
fn close_if_ours<T: AsFd + IntoRawFd>(handle: T, socket: (u64, u64)) {
    if socket_identity(handle.as_fd().as_raw_fd()) == Some(socket) {
        drop(handle);
    } else {
        let _ = handle.into_raw_fd();
    }
}

/// The device and inode of the file `fd` refers to.
fn socket_identity(fd: RawFd) -> Option<(u64, u64)> {
    let stat = nix::sys::stat::fstat(fd).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// Opens a connector connection to `path` (`Hello` and `Connector` in one
/// write, answers left to the reader thread) and starts its thread.
fn open(path: &Path, pid: u32) -> Result<Connection> {
    register_fork_handlers();
    let control = ControlClient::open_with(path, &default_client_name(), &Request::Connector)?;
    let sender = control.sender()?;
    let reader = control.as_fd().as_raw_fd();
    let reader_socket = socket_identity(reader).unwrap_or_default();
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let shared = waiting.clone();
    std::thread::Builder::new()
        .name("serval-connector".into())
        .stack_size(THREAD_STACK)
        .spawn(move || read_answers(control, reader_socket, &shared))?;
    Ok(Connection {
        path: path.to_path_buf(),
        pid,
        sender,
        next: 0,
        waiting,
        reader,
        reader_socket,
    })
}

/// The reader thread: hands each answer to its connect; when the
/// connection breaks, fails the connects still waiting.
fn read_answers(mut control: ControlClient, socket: (u64, u64), waiting: &Mutex<Waiting>) {
    let failure = match control.answer() {
        Ok(reply) if reply.response == Response::Ok => loop {
            match control.recv() {
                Ok(reply) => complete(waiting, reply),
                Err(error) => break error,
            }
        },
        Ok(reply) => Error::unexpected("connector", &reply.response),
        Err(error) => error,
    };
    close_if_ours(control, socket);
    let orphans = {
        let mut waiting = lock(waiting);
        waiting.broken = true;
        std::mem::take(&mut waiting.waiters)
    };
    for waiter in orphans.into_values() {
        waiter.finish(Err(failure.duplicate()));
    }
}

/// Hands one answer to its connect, or closes its flow if nobody waits.
fn complete(waiting: &Mutex<Waiting>, reply: Reply) {
    // sald sends nothing else on a connector connection.
    let Response::Completed { request, response } = reply.response else {
        return;
    };
    let waiter = lock(waiting).waiters.remove(&request);
    let answer = flow_from_reply(
        "connect",
        Reply {
            response: *response,
            fd: reply.fd,
        },
    );
    if let Some(waiter) = waiter {
        waiter.finish(answer);
    }
}

thread_local! {
    /// The lock [`fork_prepare`] took, until the fork is over.
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Vec<Connection>>>> =
        const { RefCell::new(None) };
}

/// Who runs [`fork_prepare`] and [`fork_release`] around `fork`: nobody
/// yet, this module's own `pthread_atfork` handlers, or the caller's.
static FORK_HANDLERS: AtomicU8 = AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const OURS: u8 = 1;
const CALLERS: u8 = 2;

/// Tells the connector that the caller runs [`fork_prepare`] and
/// [`fork_release`] from its own `pthread_atfork` handlers, so that it can
/// order the connector's lock among its own (see the module docs); the
/// connector then registers no handlers of its own. Call it before the
/// first connect. Returns whether the caller has the job: false if the
/// connector already registered its own handlers (a connect came first);
/// then those functions do nothing.
pub fn fork_handled_by_caller() -> bool {
    match FORK_HANDLERS.compare_exchange(UNDECIDED, CALLERS, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(now) => now == CALLERS,
    }
}

/// Registers this module's fork handlers once per process, unless the
/// caller took the job ([`fork_handled_by_caller`]).
fn register_fork_handlers() {
    if FORK_HANDLERS
        .compare_exchange(UNDECIDED, OURS, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: the handlers are `extern "C"` functions that live as long
        // as the program and only take or release a lock of this module.
        unsafe { nix::libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
    }
}

extern "C" fn prepare() {
    take_lock();
}

extern "C" fn release() {
    drop_lock();
}

/// The caller's `pthread_atfork` prepare handler runs this (only after
/// [`fork_handled_by_caller`] returned true; otherwise it does nothing):
/// takes the connector's lock, waiting for any connect that is writing its
/// request or opening a connection, so the child does not inherit the
/// lock held by a thread it does not have. Take it before any lock that a
/// connect may take while it holds this one.
pub fn fork_prepare() {
    if FORK_HANDLERS.load(Ordering::Acquire) == CALLERS {
        take_lock();
    }
}

/// The caller's parent and child `pthread_atfork` handlers run this:
/// releases what [`fork_prepare`] took (nothing if it took nothing).
/// Allocates nothing, so it is safe in the child of a threaded program.
pub fn fork_release() {
    if FORK_HANDLERS.load(Ordering::Acquire) == CALLERS {
        drop_lock();
    }
}

fn take_lock() {
    let guard = lock(&CONNECTIONS);
    let _ = FORK_GUARD.try_with(|slot| *slot.borrow_mut() = Some(guard));
}

fn drop_lock() {
    let _ = FORK_GUARD.try_with(|slot| slot.borrow_mut().take());
}
