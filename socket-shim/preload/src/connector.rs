//! Non-blocking connects, completed by one thread per process.
//!
//! A non-blocking `connect` returns `EINPROGRESS` at once; sald's answer
//! (the flow's socket, or why there is none) comes a handshake later. The
//! `Connect` goes out on a control connection of its own (a kept one from
//! the [`pool`] when there is one), whose descriptor is then registered,
//! one-shot, with the connector's epoll instance. The connector thread
//! waits there for every connect in flight and installs each flow as its
//! answer arrives ([`ops::finish_connect`]), then puts the connection back
//! in the pool. A program with ten thousand connects in flight thus has
//! one thread of ours, not ten thousand, and a connect costs a control
//! connection for as long as it is in flight and one epoll registration.
//!
//! After `fork`, the child has the epoll instance but not the thread, and
//! the parent's connects stay the parent's (their flows go to its
//! descriptors, as a helper thread's did before). The child's first
//! non-blocking connect starts a connector of its own, on a fresh epoll
//! instance; the inherited one is closed if its number still refers to it.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Mutex;

use sal::wire::TransportProtocol;
use sal::ServiceId;
use sal_control::{control_path, Request};
use socket_shim::client::default_client_name;
use socket_shim::{ControlClient, Error as ShimError};

use crate::addr::SockAddr;
use crate::ops::{finish_connect, flow_from_reply, Res};
use crate::pool;
use crate::real;
use crate::table::{ident, Table};

/// Answers the thread takes from one `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;
/// The thread only waits and hands over descriptors.
const THREAD_STACK: usize = 128 * 1024;

/// A connect in flight: where its flow goes once sald answers.
struct Pending {
    control: ControlClient,
    /// The connection came from the pool (sald may have closed it since).
    kept: bool,
    fd: RawFd,
    gen: u64,
    peer: SockAddr,
    service: ServiceId,
}

/// This process's connector: its epoll instance (the thread waits on it).
struct Connector {
    epoll: RawFd,
    ident: (u64, u64),
    pid: u32,
}

/// Only locked while the descriptor table is locked (see [`instance`]), so
/// it is never held across `fork` (the table's fork handlers hold that
/// lock).
static CONNECTOR: Mutex<Option<Connector>> = Mutex::new(None);

/// Sends the `Connect` for the socket at `fd` (whose connect is generation
/// `gen`) and leaves the rest to the connector thread. An error means the
/// request could not go out; the caller reports it.
pub(crate) fn submit(fd: RawFd, gen: u64, peer: SockAddr, service: ServiceId) -> Res<()> {
    let epoll = instance(&crate::table::lock())?;
    let request = connect_request(service);
    let (control, kept) = match pool::take() {
        Some(mut control) => match control.send(&request) {
            Ok(()) => (control, true),
            Err(_) => (open(&request)?, false),
        },
        None => (open(&request)?, false),
    };
    let pending = Pending {
        control,
        kept,
        fd,
        gen,
        peer,
        service,
    };
    register(epoll, pending)
}

fn connect_request(service: ServiceId) -> Request {
    Request::Connect {
        service,
        protocol: TransportProtocol::Stream,
        timeout_ms: None,
    }
}

/// A fresh control connection with its `Hello` and `request` written.
fn open(request: &Request) -> Res<ControlClient> {
    ControlClient::open_with(control_path(), &default_client_name(), request).map_err(|e| e.errno())
}

/// Hands `pending` to the thread: the answer on its connection wakes it.
fn register(epoll: RawFd, pending: Pending) -> Res<()> {
    let control = pending.control.as_fd().as_raw_fd();
    let token = Box::into_raw(Box::new(pending));
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
        u64: token as u64,
    };
    // SAFETY: `event` is a valid epoll_event; both descriptors are open.
    let rc = unsafe { real::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, control, &mut event) };
    if rc < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        // SAFETY: the registration failed, so the thread never saw `token`,
        // which `Box::into_raw` made just above.
        drop(unsafe { Box::from_raw(token) });
        return Err(errno);
    }
    Ok(())
}

/// This process's epoll instance, made (with its thread) on first use.
/// Taking the table lock proves the caller holds it.
fn instance(_table: &Table) -> Res<RawFd> {
    let mut slot = CONNECTOR.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some(connector) = slot.as_ref() {
        if connector.pid == pid {
            return Ok(connector.epoll);
        }
    }
    if let Some(inherited) = slot.take() {
        if ident(inherited.epoll) == inherited.ident {
            // SAFETY: the number still refers to the instance the parent
            // made; the child's copy is ours to close.
            unsafe { real::close(inherited.epoll) };
        }
    }
    // SAFETY: no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let spawned = std::thread::Builder::new()
        .name("serval-connect".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(epoll));
    if spawned.is_err() {
        // SAFETY: made just above, known to no one else.
        unsafe { real::close(epoll) };
        return Err(libc::EAGAIN);
    }
    *slot = Some(Connector {
        epoll,
        ident: ident(epoll),
        pid,
    });
    Ok(epoll)
}

/// The connector thread: completes connects as their answers arrive.
fn run(epoll: RawFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    loop {
        // SAFETY: `events` has room for EVENTS_PER_WAIT entries.
        let n = unsafe {
            libc::epoll_wait(
                epoll,
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        for event in &events[..n as usize] {
            // SAFETY: every registration carries a `Box<Pending>` from
            // `register`, and is one-shot: this is its only delivery.
            let pending = unsafe { Box::from_raw(event.u64 as *mut Pending) };
            complete(epoll, *pending);
        }
    }
}

/// Reads sald's answer for `pending` and installs the flow (or the error).
fn complete(epoll: RawFd, pending: Pending) {
    // SAFETY: no event pointer is needed to delete a registration.
    unsafe {
        real::epoll_ctl(
            epoll,
            libc::EPOLL_CTL_DEL,
            pending.control.as_fd().as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
    let mut pending = pending;
    let result = match pending.control.answer() {
        Ok(reply) => flow_from_reply(reply),
        // A kept connection that sald had closed (it restarted, or the
        // connection sat idle too long): sald never saw the request, so it
        // goes again, once, on a fresh connection.
        Err(ShimError::Closed) if pending.kept => match open(&connect_request(pending.service)) {
            Ok(control) => {
                let again = Pending {
                    control,
                    kept: false,
                    ..pending
                };
                match register(epoll, again) {
                    Ok(()) => return,
                    Err(errno) => Err(errno),
                }
            }
            Err(errno) => Err(errno),
        },
        Err(error) => Err(error.errno()),
    };
    let installed = result.is_ok();
    let _ = finish_connect(pending.fd, pending.gen, result, pending.peer, None);
    if installed {
        pool::give(pending.control);
    }
}
