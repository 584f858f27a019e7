//! The process-wide table of descriptors the shim manages.
//!
//! Every Serval socket the application sees is a real kernel descriptor (a
//! placeholder socketpair end, a flow socket handed over by sald, or the
//! accept queue of a listener; see the crate docs). This table remembers,
//! per descriptor number, what that number *means* to the application:
//! family, type, addresses, and where in its life the socket is.
//!
//! Three bitsets let the hot paths (`read`, `write`, `send`, `recv` of every
//! descriptor in the process) decide without a lock that a number is not
//! ours: `TRACKED` (in the table at all), `INTERCEPTED` (data calls need
//! the shim: a datagram socket whose messages must be wrapped in
//! `DatagramFrame`s, or a listener or a stream that is not connected,
//! whose accept queue or placeholder would give up an accept notice or
//! block where `ENOTCONN` or `EPIPE` is the answer) and `DGRAM_FLOWS` (a
//! connected datagram flow, whose `recvmsg` must name the peer: a
//! connected stream's never needs the table).
//!
//! Locking rule: the table lock is held only for bookkeeping and for the
//! `dup3` that swaps a descriptor in; never across a blocking call and never
//! while dropping a Rust-owned descriptor (that would re-enter `close`).
//! When an entry that crosses `exec` (a listener, an unconnected datagram
//! socket) came, went or changed, the record of those is written again
//! as the lock is released (`inherit`: a few system calls, none of which
//! re-enter the shim); other changes cost one atomic load there.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use sal::table::ListenerId;
use socket_shim::reset::ResetWatch;
use socket_shim::ControlClient;

use crate::addr::SockAddr;
use crate::inherit;

/// Descriptors below this are tracked in the lock-free bitsets; above it
/// every lookup takes the lock (only when some such descriptor is tracked).
const FAST_FDS: usize = 1 << 16;
const WORDS: usize = FAST_FDS / 64;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static TRACKED: [AtomicU64; WORDS] = [ZERO; WORDS];
static INTERCEPTED: [AtomicU64; WORDS] = [ZERO; WORDS];
static DGRAM_FLOWS: [AtomicU64; WORDS] = [ZERO; WORDS];
/// Whether any descriptor at or above `FAST_FDS` is tracked.
static HIGH: AtomicBool = AtomicBool::new(false);

static TABLE: Mutex<BTreeMap<RawFd, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// The socket type as the application asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stream,
    Dgram,
}

/// The family the application believes the socket has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    Serval,
    /// A TCP socket of the program redirected by inet mode (`libc::AF_INET`
    /// or `AF_INET6`).
    Inet(i32),
}

impl Domain {
    pub(crate) fn family(self) -> i32 {
        match self {
            Domain::Serval => crate::addr::AF_SERVAL,
            Domain::Inet(family) => family,
        }
    }
}

/// Where a socket is in its life.
#[derive(Debug)]
pub(crate) enum State {
    /// Created; the descriptor is a placeholder. `wake` is the placeholder's
    /// peer end (absent for an inet-mode TCP socket, which is still real).
    Fresh { wake: Option<OwnedFd> },
    /// A stream socket bound to a prefix: sald already registered it (so
    /// `bind` reports `EADDRINUSE`), `listen` starts accepting.
    Bound {
        control: ControlClient,
        listener: ListenerId,
        wake: Option<OwnedFd>,
    },
    /// A connect is in flight (in the caller's thread, for a non-blocking
    /// one or a blocking one with a send timeout in the connector's, for
    /// one a signal interrupted in a one-shot thread's: see
    /// [`Entry::parked`]). A `connect` to an `AF_UNSPEC` address ends it
    /// (see [`Entry::disconnected`]).
    Connecting { wake: Option<OwnedFd> },
    /// A stream flow (or a connected datagram flow) is at the descriptor.
    Connected,
    /// The last connect failed; the error waits in `so_error`.
    Failed,
    /// The descriptor is the application end of the listener's accept queue.
    Listening {
        /// The connection that owns the listener in sald. Shared by the
        /// numbers `dup` made of the listener: the last one closed unbinds.
        control: Arc<ListenerControl>,
    },
    /// Inet mode: the program's own TCP socket, neither connected nor bound
    /// yet. Every call on it goes to the kernel; the entry only remembers
    /// the program's epoll registrations and socket-level options, which a
    /// `connect` or `bind` to a mapped port carries over to the flow or the
    /// accept queue (nginx registers an upstream socket before connecting
    /// it). A connect or bind elsewhere drops the entry.
    Watched,
    /// A datagram socket not yet opened with sald (placeholder descriptor).
    DgramIdle { wake: Option<OwnedFd> },
    /// An unconnected datagram socket: messages are `DatagramFrame`s.
    /// `bound` keeps a bound prefix registered (its listener takes the
    /// connected datagram flows once the program calls `listen`).
    DgramOpen {
        bound: Option<(ControlClient, ListenerId)>,
    },
}

/// A listener's control connection to sald: closing it unbinds the
/// service; a second `listen` sends its backlog through it.
#[derive(Debug)]
pub(crate) struct ListenerControl {
    /// The listener, as sald names it.
    pub listener: ListenerId,
    /// The connection, one request at a time, in the process that
    /// listened ([`ListenerControl::owner`]) only: a forked child's copy
    /// of this lock may have been taken by a thread the child does not
    /// have, and its requests would mix with the parent's on the one
    /// socket they share (either could read the other's answer).
    pub connection: Mutex<ControlClient>,
    /// The process that listened, whose requests the connection carries.
    pub owner: u32,
    /// The connection's descriptor, for a close to shut it down without
    /// waiting for a `listen` that is using it.
    pub fd: RawFd,
    /// The connection's device and inode, for the record of what crosses
    /// `exec` (see `inherit`).
    pub ident: (u64, u64),
    /// Whether the record left the connection to cross `exec` (see
    /// `inherit::Seen`), so that a rewrite changes its flag only when it
    /// must.
    pub crossing: Mutex<Option<bool>>,
    /// The listener stopped listening (`connect` to an `AF_UNSPEC`
    /// address, as TCP's `tcp_disconnect`: see `ops::stop_listening`) and
    /// stays bound: sald refuses its flows, and its accept queue is hung
    /// up, until a `listen` makes it listen again with a new one. Shared by
    /// the numbers `dup` made of it, as their socket is one. Written under
    /// the table lock.
    pub stopped: AtomicBool,
}

impl ListenerControl {
    pub(crate) fn new(listener: ListenerId, connection: ControlClient) -> ListenerControl {
        ListenerControl::inherited(listener, connection, std::process::id())
    }

    /// The control connection of a listener that `owner` listened on
    /// (this process, or another that this one inherited it from: see
    /// `inherit`).
    pub(crate) fn inherited(
        listener: ListenerId,
        connection: ControlClient,
        owner: u32,
    ) -> ListenerControl {
        ListenerControl {
            listener,
            fd: connection.as_fd().as_raw_fd(),
            ident: ident(connection.as_fd().as_raw_fd()),
            connection: Mutex::new(connection),
            owner,
            crossing: Mutex::new(None),
            stopped: AtomicBool::new(false),
        }
    }
}

/// What the application's descriptor number means.
#[derive(Debug)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub domain: Domain,
    /// Device and inode of the file at the descriptor when we last put it
    /// there: a mismatch means the program closed or replaced the descriptor
    /// behind our back (for example through `fclose`), and the entry is stale.
    pub ident: (u64, u64),
    /// Changes whenever a connect starts, so a late helper cannot install a
    /// flow into a socket that moved on.
    pub gen: u64,
    pub local: Option<SockAddr>,
    pub peer: Option<SockAddr>,
    pub state: State,
    /// The pending `SO_ERROR`.
    pub so_error: i32,
    /// The connect in flight goes on without its caller (a non-blocking
    /// one, marked as it starts; a blocking one a signal interrupted,
    /// `EINTR`), or may (a blocking one with a send timeout: marked as it
    /// starts, `EINPROGRESS` once the timeout passed), in a thread of the
    /// shim's (the connector's, or `ops::park`'s for an interrupted one),
    /// or has another caller waiting for it (a blocking one in the
    /// calling thread, marked when a second blocking `connect` comes:
    /// `ops::join_connect`),
    /// in the process with this id (0: none): a placeholder is at the
    /// number, a later blocking
    /// `connect` and blocking data calls there wait for the outcome, and
    /// its completion or a `close` shuts the placeholder's peer end down
    /// (which a forked child's copy of that end cannot hold off). A forked
    /// child's copy is never completed, so it does not wait. Cleared when
    /// a connect starts or ends.
    pub parked: u32,
    /// The stream's connect completed outside a `connect` call (one that
    /// was non-blocking, interrupted or timed out), and no `connect` has
    /// said so yet: the next returns 0, the ones after it `EISCONN`, as
    /// TCP's (whose socket stays `SS_CONNECTING` until a `connect` call
    /// sees it connected). Shared by the copies `dup` made of the flow, as
    /// that state is the socket's: the first `connect` on any of them is
    /// the one. Cleared when a connect starts. Read and written under the
    /// table lock.
    pub untold: Arc<AtomicBool>,
    /// The connect generation that ended disconnected (0: none), as TCP's
    /// `sk_disconnects` counts: by an `AF_UNSPEC` `connect`
    /// (`ops::disconnect`, also one after a failed connect), or by the
    /// `connect` call that reported the connect's failure. Any other
    /// `connect` that waited for it gets `EPIPE`, and a completion that
    /// comes after an `AF_UNSPEC` installs nothing. While it is the
    /// socket's generation the socket is unconnected, as TCP's after
    /// `tcp_disconnect`: its pending error (`so_error`, `ECONNRESET`
    /// after an `AF_UNSPEC`) is for reads and `SO_ERROR` only, and a new
    /// connect clears it rather than report it.
    pub disconnected: u64,
    /// epoll registrations of this descriptor, re-added after a swap.
    pub epoll: Vec<(RawFd, libc::epoll_event)>,
    /// Socket-level options the program set (name, value), set again on
    /// what replaces the descriptor's file in a swap: a receive timeout set
    /// before `connect` must hold for the flow.
    pub options: Vec<(libc::c_int, Vec<u8>)>,
    /// The process that created the entry (a forked child has copies); 0
    /// for a watched socket's ([`State::Watched`]), which never asks.
    pub owner: libc::pid_t,
    /// A connected stream's reset watch: whether the program shut its
    /// writing down, and whether a reset was reported (see
    /// `socket_shim::reset`). Shared by the copies `dup` made of the flow,
    /// as they share the socket.
    pub reset: Arc<ResetWatch>,
    /// What the record of what crosses `exec` last found of this entry's
    /// descriptors (see `inherit`).
    pub exec: inherit::Seen,
    /// A stream socket bound in-process (`State::Bound` through sald's
    /// relay, see `inproc`): the prefix its `listen` gives the engine.
    pub relayed: Option<sal::ServicePrefix>,
}

impl Entry {
    pub(crate) fn new(kind: Kind, domain: Domain, fd: RawFd, state: State) -> Entry {
        Entry::of_generation(kind, domain, fd, state, next_gen())
    }

    /// [`Entry::new`] with its generation taken already ([`next_gen`]).
    pub(crate) fn of_generation(
        kind: Kind,
        domain: Domain,
        fd: RawFd,
        state: State,
        gen: u64,
    ) -> Entry {
        // A watched socket's entry never needs it (its connect or bind
        // makes a new entry): no `getpid` for every TCP socket the
        // program makes.
        let owner = match state {
            State::Watched => 0,
            _ => std::process::id() as libc::pid_t,
        };
        Entry {
            kind,
            domain,
            ident: ident(fd),
            gen,
            local: None,
            peer: None,
            state,
            so_error: 0,
            parked: 0,
            disconnected: 0,
            untold: Arc::default(),
            epoll: Vec::new(),
            options: Vec::new(),
            owner,
            reset: Arc::default(),
            exec: inherit::Seen::default(),
            relayed: None,
        }
    }
}

impl Entry {
    /// Whether data calls (`send`, `recv`, `read`, `write`) need the shim:
    /// a datagram socket that is not connected (frames, or no
    /// destination; a listener's are all `ENOTCONN`, where its accept
    /// queue would give up an accept notice or take the program's bytes
    /// for sald), or a stream that was never connected, whose
    /// connect failed or that listens (TCP answers `ENOTCONN` and `EPIPE`,
    /// where the placeholder at the number would block or read end of
    /// file, and the accept queue would give up an accept notice), or one
    /// whose non-blocking, interrupted or timed connect is in flight
    /// ([`Entry::parked`]: TCP waits for the outcome, where the placeholder
    /// would end the wait with a hang-up, `EPIPE` and `SIGPIPE`).
    pub(crate) fn intercepted(&self) -> bool {
        match self.kind {
            Kind::Dgram => !matches!(self.state, State::Connected),
            Kind::Stream => match self.state {
                State::Fresh { .. } | State::Bound { .. } | State::Failed => true,
                State::Listening { .. } => true,
                State::Connecting { .. } => self.parked != 0,
                _ => false,
            },
        }
    }

    /// The placeholder's peer end, for a socket that has one.
    pub(crate) fn wake(&self) -> Option<&OwnedFd> {
        match &self.state {
            State::Fresh { wake }
            | State::Bound { wake, .. }
            | State::Connecting { wake }
            | State::DgramIdle { wake } => wake.as_ref(),
            _ => None,
        }
    }

    /// The entry of a copy of this socket at `fd` (`dup`, `dup2`, `dup3`,
    /// `fcntl(F_DUPFD)`): the same file, so the same meaning, with epoll
    /// registrations of its own. Only a socket whose file is final is
    /// copied (a connected flow, a listener's accept queue); a copy of a
    /// placeholder or of an unconnected datagram socket stays the kernel's
    /// plain socket, as a swap could not reach it.
    pub(crate) fn copy(&self, fd: RawFd) -> Option<Entry> {
        let state = match &self.state {
            State::Connected => State::Connected,
            State::Listening { control } => State::Listening {
                control: Arc::clone(control),
            },
            _ => return None,
        };
        let mut copy = Entry::new(self.kind, self.domain, fd, state);
        copy.local = self.local;
        copy.peer = self.peer;
        copy.options = self.options.clone();
        // Whoever copied it, the listener is the process's that listened: a
        // forked child's last copy must not unbind it.
        copy.owner = self.owner;
        copy.reset = Arc::clone(&self.reset);
        copy.untold = Arc::clone(&self.untold);
        Some(copy)
    }

    /// Whether this is an inet-mode socket the shim only watches (see
    /// [`State::Watched`]): every call on it is the kernel's.
    pub(crate) fn watched(&self) -> bool {
        matches!(self.state, State::Watched)
    }

    /// The control connection of a listener's entry.
    pub(crate) fn listener_control(&self) -> Option<&Arc<ListenerControl>> {
        match &self.state {
            State::Listening { control } => Some(control),
            _ => None,
        }
    }

    /// Whether this is a connected stream flow, whose reset its reader
    /// learns from a hang-up (see `socket_shim::reset`).
    pub(crate) fn stream_flow(&self) -> bool {
        self.kind == Kind::Stream && matches!(self.state, State::Connected)
    }

    /// Whether this is a connected datagram flow, whose peer its
    /// `recvmsg` names (the flow's socket has no name to give).
    pub(crate) fn datagram_flow(&self) -> bool {
        self.kind == Kind::Dgram && matches!(self.state, State::Connected)
    }
}

pub(crate) fn next_gen() -> u64 {
    NEXT_GEN.fetch_add(1, Ordering::Relaxed)
}

/// The first generation given after the process's last `fork` or
/// `posix_spawn`: entries below it are of sockets another process may
/// hold a copy of.
static FORKED_AT: AtomicU64 = AtomicU64::new(0);

/// The process is about to `fork` or spawn: its sockets may have copies
/// in the child from now on. `fork` calls it holding the table's lock
/// ([`fork_prepare`]), a spawn through [`spawning`], so that a connect
/// deciding under that lock whether to keep a socket sees it; a `vfork`
/// child about to `exec` (`crate::exec`) calls it bare.
pub(crate) fn forking() {
    FORKED_AT.store(NEXT_GEN.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// [`forking`], under the table's lock: before `posix_spawn`.
pub(crate) fn spawning() {
    let _table = lock();
    forking();
}

/// Whether the entry of generation `gen` is of a socket that was there
/// at a `fork` or spawn of this process (see [`forking`]).
pub(crate) fn made_before_a_fork(gen: u64) -> bool {
    gen < FORKED_AT.load(Ordering::Relaxed)
}

/// Device and inode of what `fd` refers to ((0, 0) if it is not open).
pub(crate) fn ident(fd: RawFd) -> (u64, u64) {
    crate::real::kernel_stat(fd).map_or((0, 0), |st| (st.st_dev, st.st_ino))
}

impl Drop for Entry {
    /// An entry that goes while its interrupted or timed connect is in flight
    /// (closed, replaced by a `dup2` over its number, found stale): whoever
    /// waits for that connect (on a copy of the placeholder, see
    /// `ops::await_parked`) must see a hang-up, even while a forked child
    /// holds a copy of the peer end. Only in the process that parked it: a
    /// child's placeholder may still be waited on for a connect of its own.
    fn drop(&mut self) {
        // (`parked` first: most entries never parked, and `getpid` is a
        // system call.)
        if self.parked != 0 && self.parked == std::process::id() {
            if let Some(wake) = self.wake() {
                // SAFETY: no pointers; a socket this entry owns.
                unsafe { crate::real::shutdown(wake.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }
}

fn bit(fd: RawFd) -> Option<(usize, u64)> {
    let fd = usize::try_from(fd).ok()?;
    (fd < FAST_FDS).then(|| (fd / 64, 1u64 << (fd % 64)))
}

/// Whether `fd` may be in the table (lock-free; false means surely not).
pub(crate) fn maybe_tracked(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => TRACKED[word].load(Ordering::Acquire) & mask != 0,
        None => fd >= 0 && HIGH.load(Ordering::Acquire),
    }
}

/// Whether data calls on `fd` may need the shim (lock-free hint; see
/// [`Entry::intercepted`]).
pub(crate) fn maybe_intercepted(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => INTERCEPTED[word].load(Ordering::Acquire) & mask != 0,
        None => fd >= 0 && HIGH.load(Ordering::Acquire),
    }
}

/// Whether `fd` may be a connected flow (lock-free hint): tracked, its
/// data calls not intercepted; any number at or above [`FAST_FDS`] once
/// one such is tracked (the bitsets do not reach there).
pub(crate) fn maybe_flow(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => {
            TRACKED[word].load(Ordering::Acquire)
                & !INTERCEPTED[word].load(Ordering::Acquire)
                & mask
                != 0
        }
        None => fd >= 0 && HIGH.load(Ordering::Acquire),
    }
}

/// Whether `fd` may be a connected datagram flow (lock-free hint; see
/// [`Entry::datagram_flow`]): false for every connected stream, so its
/// `recvmsg` never looks at the table for a peer to name.
pub(crate) fn maybe_datagram_flow(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => DGRAM_FLOWS[word].load(Ordering::Acquire) & mask != 0,
        None => fd >= 0 && HIGH.load(Ordering::Acquire),
    }
}

/// Sets `fd`'s hints of what its data calls need to what `entry` means
/// (all off for no entry). `TRACKED` is the caller's. A datagram socket
/// that becomes a flow is marked one before its calls stop being
/// intercepted, so that a `recvmsg` racing with its connect names the
/// peer either way.
fn set_hints(fd: RawFd, entry: Option<&Entry>) {
    set_bit(&DGRAM_FLOWS, fd, entry.is_some_and(Entry::datagram_flow));
    set_bit(&INTERCEPTED, fd, entry.is_some_and(Entry::intercepted));
}

fn set_bit(set: &[AtomicU64; WORDS], fd: RawFd, on: bool) {
    match bit(fd) {
        Some((word, mask)) if on => {
            set[word].fetch_or(mask, Ordering::AcqRel);
        }
        Some((word, mask)) => {
            set[word].fetch_and(!mask, Ordering::AcqRel);
        }
        None if on => HIGH.store(true, Ordering::Release),
        None => {}
    }
}

/// The locked table. Registers the fork handlers on first use.
pub(crate) struct Table {
    guard: MutexGuard<'static, BTreeMap<RawFd, Entry>>,
}

pub(crate) fn lock() -> Table {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // Before any connect (each locks the table first): the connector's
        // lock is ordered by the handlers below, not by its own.
        FORK_CONNECTOR.store(
            socket_shim::connector::fork_handled_by_caller(),
            Ordering::Release,
        );
        // SAFETY: the three handlers are plain `extern "C" fn()`s that live
        // as long as the process (this library is never unloaded while the
        // program uses sockets).
        unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release));
        }
    });
    Table {
        guard: TABLE.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

impl Table {
    /// The entry of `fd`, unless it is stale (then it is removed and its
    /// state handed back in `stale` for the caller to drop after unlocking).
    pub(crate) fn get(&mut self, fd: RawFd, stale: &mut Vec<Entry>) -> Option<&mut Entry> {
        if !maybe_tracked(fd) || !self.guard.contains_key(&fd) {
            return None;
        }
        self.get_at(fd, ident(fd), stale)
    }

    /// [`Table::get`] for a caller that just read `fd`'s device and inode
    /// (`now`, [`ident`]) under this lock, so that one `fstat` answers
    /// both its own question and the entry's identity check.
    pub(crate) fn get_at(
        &mut self,
        fd: RawFd,
        now: (u64, u64),
        stale: &mut Vec<Entry>,
    ) -> Option<&mut Entry> {
        if !maybe_tracked(fd) {
            return None;
        }
        let fresh = match self.guard.get(&fd) {
            None => return None,
            Some(entry) => entry.ident == now,
        };
        if !fresh {
            if let Some(old) = self.remove(fd) {
                stale.push(old);
            }
            return None;
        }
        self.guard.get_mut(&fd)
    }

    /// Whether `fd`'s entry is one the shim only watches
    /// ([`State::Watched`]), with no identity check: for a caller whose
    /// answer is the kernel's both for such an entry and for a stale one
    /// (which the next [`Table::get`] removes).
    pub(crate) fn watched(&self, fd: RawFd) -> bool {
        maybe_tracked(fd) && self.guard.get(&fd).is_some_and(Entry::watched)
    }

    pub(crate) fn insert(&mut self, fd: RawFd, entry: Entry) -> Option<Entry> {
        set_hints(fd, Some(&entry));
        set_bit(&TRACKED, fd, true);
        let carried = inherit::carried(&entry.state);
        let mut old = self.guard.insert(fd, entry);
        if let Some(old) = &mut old {
            inherit::left(&old.state, &mut old.exec);
        }
        if carried {
            inherit::changed_at(fd);
        } else if old.as_ref().is_some_and(|old| inherit::carried(&old.state)) {
            inherit::changed();
        }
        old
    }

    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<Entry> {
        set_bit(&TRACKED, fd, false);
        set_hints(fd, None);
        let mut old = self.guard.remove(&fd);
        inherit::removed(fd);
        if let Some(old) = &mut old {
            inherit::left(&old.state, &mut old.exec);
        }
        if old.as_ref().is_some_and(|old| inherit::carried(&old.state)) {
            inherit::changed();
        }
        old
    }

    /// Whether an entry still in the table holds `control` (a listener's
    /// control connection shared by `dup` copies).
    pub(crate) fn holds_listener(&self, control: &Arc<ListenerControl>) -> bool {
        self.guard.values().any(|entry| {
            entry
                .listener_control()
                .is_some_and(|c| Arc::ptr_eq(c, control))
        })
    }

    /// The numbers whose entries hold `control` (a listener and its `dup`
    /// copies), with their entries. Entries found stale on the way are
    /// left for the next lookup.
    pub(crate) fn listener_numbers<'a>(
        &'a mut self,
        control: &'a Arc<ListenerControl>,
    ) -> impl Iterator<Item = (RawFd, &'a mut Entry)> {
        self.guard.iter_mut().filter_map(move |(fd, entry)| {
            let holds = entry
                .listener_control()
                .is_some_and(|c| Arc::ptr_eq(c, control));
            (holds && entry.ident == ident(*fd)).then_some((*fd, entry))
        })
    }

    /// Updates `fd`'s hint bits after a state change of its entry.
    pub(crate) fn refresh(&mut self, fd: RawFd) {
        if let Some(entry) = self.guard.get(&fd) {
            set_hints(fd, Some(entry));
            if inherit::carried(&entry.state) {
                inherit::changed_at(fd);
            }
        }
    }
}

impl Drop for Table {
    /// Writes the record of what crosses `exec` again, if the table
    /// changed for it (see `inherit`), before the lock is released.
    fn drop(&mut self) {
        if inherit::take_changed() {
            // The call that changed the table may have succeeded: a
            // failure of the record's own calls must not show in `errno`.
            let errno = crate::ops::last_errno();
            inherit::write(&mut self.guard);
            crate::set_errno(errno);
        }
    }
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, BTreeMap<RawFd, Entry>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether the handlers below run the connector's ([`fork_prepare`]).
static FORK_CONNECTOR: AtomicBool = AtomicBool::new(false);

/// Takes the locks of the shim across `fork`, so the child never inherits
/// one held by a thread that does not exist there: the connector's
/// ([`socket_shim::connector::fork_prepare`]) first, then the table's.
///
/// That order is the one in which the other threads take them. A connect
/// holds the connector's lock while it writes its request or opens a
/// connection, and those socket calls of the library re-enter this shim's
/// interposed `write`/`socket`/`connect`/`close`, which take the table lock
/// when the number may be in the table: one at or above [`FAST_FDS`] once
/// any such number is tracked, or one whose stale entry is still there.
/// Nothing takes the connector's lock while holding the table's:
/// `ops::finish_connect` holds only the table lock, and the connector's
/// reader thread runs it holding none of the connector's. So a forking
/// thread that has the connector's lock waits only for table holders that
/// need nothing it has, whereas taking the table's lock first could
/// deadlock against a connect that holds the connector's and waits for the
/// table's.
extern "C" fn fork_prepare() {
    if FORK_CONNECTOR.load(Ordering::Acquire) {
        socket_shim::connector::fork_prepare();
    }
    let guard = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    forking();
    let _ = FORK_GUARD.try_with(|slot| *slot.borrow_mut() = Some(guard));
}

/// In the parent and in the child: releases the locks taken in
/// [`fork_prepare`] (allocating nothing).
extern "C" fn fork_release() {
    let _ = FORK_GUARD.try_with(|slot| slot.borrow_mut().take());
    socket_shim::connector::fork_release();
}
