//! What the shim knows of listeners and datagram sockets, carried across
//! `exec`.
//!
//! The table of what each descriptor number means lives in memory and is
//! gone when the program execs, while the descriptors themselves stay
//! (those that are not close-on-exec). A connected stream is a plain
//! socket and needs no table, but a listener's number holds the accept
//! queue (whose reads, untranslated, give up accept notices) and an
//! unconnected datagram socket's holds sald's framed socket; and a
//! listener, or a bound datagram socket, stays bound only while its
//! control connection to sald is open (sald unbinds when it closes), and
//! that connection was close-on-exec. Inetd-style servers and supervisors
//! that bind and exec a worker, shell wrappers (`exec prog` with an
//! inherited listener) and binary upgrades that pass their listeners on
//! all need both.
//!
//! So the shim keeps a *record*: a sealed memfd named
//! `serval-shim-exec`, not close-on-exec, listing each listener and open
//! datagram socket whose number crosses exec (is not close-on-exec), with
//! the device and inode of its socket, what it means (family, type,
//! address, socket options, the process that listened) and its control
//! connection's number, device and inode. The control connection of such
//! a socket is made to cross exec with it, and only then: it is
//! close-on-exec exactly when every number of its socket is, so a
//! close-on-exec listener is unbound at exec as before, like a TCP
//! listener that no process holds any more. When the library is loaded in
//! the new image, it finds records among its descriptors (by the memfd's
//! name in `/proc/self/fd`, at whatever number; not the one this process
//! wrote already, when a library's constructor that ran before the shim's
//! made a listener), keeps the entries whose
//! number and control connection still refer to the same open sockets
//! (device and inode; a socket no longer at its number is looked for at
//! the others, as a program in between may have moved it where the shim
//! does not see: `posix_spawn`'s file actions, a direct system call, a
//! program not under the shim), and closes the records, and the control connections recorded that no entry
//! taken up holds (one that crossed without its socket, closed by
//! `posix_spawn`'s file actions or by a program in between that is not
//! under the shim, would keep the service bound for as long as this image
//! lives); then writes its own. An image that gained privileges at exec
//! (`AT_SECURE`) takes up nothing.
//!
//! The record is written again, under the table lock, only when the table
//! changes for these kinds (a socket becomes or stops being one, a `dup`
//! of a listener, `fcntl(F_SETFD)` on one): `bind`, `listen`, the first
//! `sendto` of a datagram socket and their `close`, all of which already
//! cost a round trip to sald or a lock; never on a `read`, `write`,
//! `accept` or `connect`. Each write is a new memfd, sealed against
//! changes, that replaces the old one (closed): a file that crossed into
//! a child (forked, or spawned by `posix_spawn` or `vfork`, which run no
//! fork handlers) is never written again, so a child's record is the
//! table it was given, and no two processes write one file.
//!
//! A record is never at 0-2: a program that closed its standard streams
//! takes them again with `open` or `dup2`, which would close the record
//! (and leave the control connections crossing without it), or give a
//! child the record as its input. It is moved high in the table
//! (`socket_shim::fd::out_of_the_way`), out of the numbers the program's
//! own files take, as other libraries keep their own descriptors.
//!
//! Why not interpose `execve`: the exec family (`execl`, `execvp`,
//! `posix_spawn`, `system`, `popen`) reaches the system call through
//! glibc's internal `__execve`, which a preloaded library cannot
//! interpose, so a hook there would see some execs and miss others. The
//! record needs no hook: it is up to date whenever an exec happens. (The
//! in-process mode does hook the public exec functions, `crate::exec`,
//! since its sockets must leave the process's memory before any `exec`;
//! it hands them to the daemon path, whose listeners then cross through
//! this record.)
//!
//! The record is written by the process itself, but read as untrusted
//! input: it is parsed without panics, bounded in size (and in sockets:
//! [`MAX_CARRIED`], as written), and an entry is
//! taken only if its descriptors check out. What does not cross: connected
//! streams (plain sockets: they keep working, but the new image does not
//! know them, so a reset reads as end of file), a stream bound but not
//! listening (its control connection stays close-on-exec: unbound at
//! exec), unconnected datagram sockets' `dup` copies (the shim does not
//! track those at all), epoll registrations of a datagram socket (re-added
//! only after a swap, so one made before exec does not follow a later
//! `connect`), and a change of close-on-exec made by a direct system call
//! rather than `fcntl` or `ioctl` (what a rewrite found of each number is
//! kept, see [`Seen`]). Without `/proc` nothing is carried.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sal::table::ListenerId;
use socket_shim::ControlClient;

use crate::addr::{parse_inet, parse_serval, SockAddr, AF_SERVAL};
use crate::real;
use crate::table::{self, ident, Domain, Entry, Kind, ListenerControl, State};

/// The memfd's name (`/proc/self/fd` shows `/memfd:serval-shim-exec`).
const NAME: &std::ffi::CStr = c"serval-shim-exec";
/// What `/proc/self/fd/N` links to for a record.
const LINK_PREFIX: &[u8] = b"/memfd:serval-shim-exec";
/// The first bytes of a record, naming its format.
const MAGIC: [u8; 8] = *b"SVSHEX01";
/// The most bytes of a record read (a few hundred a socket).
const MAX_BYTES: usize = 1 << 20;
/// The most records read in one image (all are closed).
const MAX_RECORDS: usize = 8;
/// The most bytes of an address kept (a `sockaddr_sv` with its
/// `sockaddr_in` is 52, a `sockaddr_in6` 28).
const MAX_ADDR: usize = 64;
/// The seals a record has once written: it can no longer change.
const SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// The table changed for a kind that crosses exec since the record was
/// last written: the next unlock writes it. Set and cleared under the
/// table lock.
static DIRTY: AtomicBool = AtomicBool::new(false);

/// The numbers of the entries the record may carry (those that became a
/// listener or an open datagram socket, while there was room), so that a
/// rewrite looks at them only, not at every entry of the table (a host's
/// connected flows are there too). A number that is no longer such an
/// entry leaves it at the next rewrite, or at its close. Used under the
/// table lock.
static CANDIDATES: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// The most sockets the record carries: a rewrite then costs at most this
/// many entries' work, however many sockets the process has, and making
/// thousands of datagram sockets is not quadratic in the number made
/// (2,000 took four times as long with all of them rewritten at each).
/// The first this many listeners and unconnected datagram sockets open
/// at once are carried; one made while that many are is not, for its
/// life (an entry never leaves the record while it is one, so its control
/// connection's close-on-exec flag always says whether the record has it;
/// a `dup` copy of a carried listener made then is not carried either,
/// and its connection crosses only while a number the record carries
/// does: see [`left`]).
pub(crate) const MAX_CARRIED: usize = 256;

/// This process's record: its number and the device and inode of its
/// memfd (a number the program closed and reused is not closed again).
/// Used under the table lock.
static RECORD: Mutex<Option<(RawFd, (u64, u64))>> = Mutex::new(None);

/// What the record last found of an entry's descriptors, so that a
/// rewrite looks again (`fcntl(F_GETFD)`, `fstat`) only at what is new:
/// each rewrite costs a few system calls however many sockets it lists.
/// A number's close-on-exec flag changes only by the program's
/// `fcntl(F_SETFD)` or `ioctl(FIOCLEX)` (which clear this), or with the
/// file at it (a new entry).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    /// Whether the number crosses `exec` (is not close-on-exec).
    pub crosses: Option<bool>,
    /// A datagram socket's control connection: its number, device and
    /// inode, and whether it was left to cross.
    pub control: Option<(RawFd, (u64, u64), bool)>,
}

/// Whether `state` is one the record carries.
pub(crate) fn carried(state: &State) -> bool {
    matches!(state, State::Listening { .. } | State::DgramOpen { .. })
}

/// The table changed for an entry the record carries (or did): the record
/// is written again when the table is unlocked.
pub(crate) fn changed() {
    DIRTY.store(true, Ordering::Relaxed);
}

/// The entry at `fd` is one the record carries now (new, or its state
/// changed to one): as [`changed`], and the next rewrite looks at it.
pub(crate) fn changed_at(fd: RawFd) {
    let mut candidates = CANDIDATES.lock().unwrap_or_else(|e| e.into_inner());
    if candidates.len() < MAX_CARRIED {
        candidates.insert(fd);
    }
    drop(candidates);
    changed();
}

/// The entry at `fd` is gone from the table.
pub(crate) fn removed(fd: RawFd) {
    CANDIDATES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&fd);
}

/// The entry whose state was `state` (with what the record found of it,
/// `seen`) left the table (closed, replaced, found stale) or that state
/// (a datagram socket that listens or connects): a control connection
/// that the record left to cross `exec` is made close-on-exec again. A
/// listener's crosses again at the next rewrite only if another number
/// of the listener that the record carries crosses. A rewrite looks only
/// at the numbers it carries, and a copy of the listener made while the
/// record carried its most is not one, nor is a datagram socket that
/// listens once another socket took its place meanwhile: without this
/// the connection would cross with a number the record does not name,
/// and keep the service bound in an image that does not know it. Under
/// the table lock.
pub(crate) fn left(state: &State, seen: &mut Seen) {
    match state {
        State::Listening { control } => {
            let mut crossing = control.crossing.lock().unwrap_or_else(|e| e.into_inner());
            if *crossing == Some(true) {
                set_cloexec(control.fd, true);
                *crossing = Some(false);
            }
        }
        State::DgramOpen {
            bound: Some((connection, _)),
        } => left_datagram(connection, seen),
        _ => {}
    }
}

/// As [`left`], for a datagram socket's control connection `connection`
/// (taken out of its state).
pub(crate) fn left_datagram(connection: &ControlClient, seen: &mut Seen) {
    if let Some((cfd, _, true)) = seen.control {
        if cfd == connection.as_fd().as_raw_fd() {
            set_cloexec(cfd, true);
        }
    }
    seen.control = None;
}

/// Whether the record is to be written again (and no longer, after this).
pub(crate) fn take_changed() -> bool {
    DIRTY.load(Ordering::Relaxed) && DIRTY.swap(false, Ordering::Relaxed)
}

/// One socket as the record has it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    fd: RawFd,
    ident: (u64, u64),
    kind: Kind,
    domain: Domain,
    /// A listener (else an unconnected datagram socket).
    listening: bool,
    /// The process that listened (a listener's, see `ListenerControl`).
    owner: u32,
    /// The control connection that keeps it bound: number, device and inode.
    control: Option<(RawFd, (u64, u64))>,
    listener: u64,
    local: Option<SockAddr>,
    options: Vec<(libc::c_int, Vec<u8>)>,
}

/// Whether `fd` is close-on-exec (a number that is not open counts as
/// one: nothing of it crosses).
pub(crate) fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer; libc's own fcntl.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    flags < 0 || flags & libc::FD_CLOEXEC != 0
}

fn set_cloexec(fd: RawFd, on: bool) {
    if cloexec(fd) != on {
        let flags = if on { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD takes an int; libc's own fcntl.
        unsafe { real::fcntl(fd, libc::F_SETFD, flags as libc::c_ulong) };
    }
}

/// Writes the record of `map` again (under the table lock): the sockets
/// whose numbers cross exec, their control connections made to cross with
/// them (and only those). Best effort: on a failure the old record stays,
/// whose entries the next image checks all the same.
pub(crate) fn write(map: &mut BTreeMap<RawFd, Entry>) {
    let mut records = Vec::new();
    let pid = std::process::id();
    // Per listener control connection: whether a number of it crosses.
    let mut listeners: Vec<(Arc<ListenerControl>, bool)> = Vec::new();
    let mut candidates = CANDIDATES.lock().unwrap_or_else(|e| e.into_inner());
    let mut gone = Vec::new();
    for &fd in candidates.iter() {
        let Some(entry) = map.get_mut(&fd).filter(|entry| carried(&entry.state)) else {
            gone.push(fd);
            continue;
        };
        // An entry whose number the program closed or replaced behind the
        // shim's back is recorded all the same: the next image checks
        // device and inode.
        let crosses = *entry.exec.crosses.get_or_insert_with(|| !cloexec(fd));
        let (control, listener, owner) = match &entry.state {
            State::Listening { control } => {
                match listeners.iter_mut().find(|(c, _)| Arc::ptr_eq(c, control)) {
                    Some((_, any)) => *any |= crosses,
                    None => listeners.push((Arc::clone(control), crosses)),
                }
                (
                    Some((control.fd, control.ident)),
                    control.listener.0,
                    control.owner,
                )
            }
            State::DgramOpen {
                bound: Some((connection, listener)),
            } => {
                let cfd = connection.as_fd().as_raw_fd();
                let (cident, left) = match entry.exec.control {
                    Some((seen, cident, left)) if seen == cfd => (cident, Some(left)),
                    _ => (ident(cfd), None),
                };
                if left != Some(crosses) {
                    set_cloexec(cfd, !crosses);
                }
                entry.exec.control = Some((cfd, cident, crosses));
                (Some((cfd, cident)), listener.0, pid)
            }
            _ => (None, 0, pid),
        };
        if crosses {
            records.push(Recorded {
                fd,
                ident: entry.ident,
                kind: entry.kind,
                domain: entry.domain,
                listening: matches!(entry.state, State::Listening { .. }),
                owner,
                control,
                listener,
                local: entry.local,
                options: entry.options.clone(),
            });
        }
    }
    for fd in gone {
        candidates.remove(&fd);
    }
    drop(candidates);
    for (control, crosses) in listeners {
        let mut left = control.crossing.lock().unwrap_or_else(|e| e.into_inner());
        if *left != Some(crosses) {
            set_cloexec(control.fd, !crosses);
            *left = Some(crosses);
        }
    }
    let mut record = RECORD.lock().unwrap_or_else(|e| e.into_inner());
    let new = if records.is_empty() {
        None
    } else {
        match create(&encode(&records)) {
            Some(new) => Some(new),
            None => return,
        }
    };
    if let Some((old, old_ident)) = record.take() {
        if ident(old) == old_ident {
            // SAFETY: no pointers; the record this process made.
            unsafe { real::close(old) };
        }
    }
    *record = new;
}

/// A new sealed record holding `bytes`, not close-on-exec.
fn create(bytes: &[u8]) -> Option<(RawFd, (u64, u64))> {
    // SAFETY: NAME is NUL-terminated; memfd_create is not interposed.
    let fd =
        unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return None;
    }
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // SAFETY: `rest` is valid for its length; pwrite is not interposed.
        let n = unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), at as libc::off_t) };
        if n <= 0 {
            if n < 0 && crate::ops::last_errno() == libc::EINTR {
                continue;
            }
            // SAFETY: no pointers; the memfd just made.
            unsafe { real::close(fd) };
            return None;
        }
        at += n as usize;
    }
    // Never one of the standard streams (a program that closed them takes
    // 0-2 again with `open` or `dup2`, which would close the record, or
    // give a child the record as its input), nor one of the low numbers
    // the program's own files take (after an `exec`, a number the old
    // image had close-on-exec is free, as on Linux): moved high, as the
    // library's other long-lived descriptors (still close-on-exec until
    // written).
    // SAFETY: the memfd just made, ours alone.
    let owned = socket_shim::fd::out_of_the_way(unsafe { OwnedFd::from_raw_fd(fd) });
    if owned.as_raw_fd() < socket_shim::fd::LOWEST_OWN {
        return None;
    }
    let fd = owned.into_raw_fd();
    // SAFETY: F_ADD_SEALS and F_SETFD take an int.
    let sealed = unsafe { real::fcntl(fd, libc::F_ADD_SEALS, SEALS as libc::c_ulong) } == 0
        && unsafe { real::fcntl(fd, libc::F_SETFD, 0) } == 0;
    if !sealed {
        // SAFETY: no pointers; the memfd just made.
        unsafe { real::close(fd) };
        return None;
    }
    Some((fd, ident(fd)))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// The record's bytes: the magic, a count, then each socket.
fn encode(records: &[Recorded]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + records.len() * 160);
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, records.len() as u32);
    for r in records {
        put_u32(&mut out, r.fd as u32);
        put_u64(&mut out, r.ident.0);
        put_u64(&mut out, r.ident.1);
        out.push(match r.kind {
            Kind::Stream => 1,
            Kind::Dgram => 2,
        });
        put_u32(&mut out, r.domain.family() as u32);
        out.push(u8::from(r.listening));
        put_u32(&mut out, r.owner);
        let (cfd, cident) = r.control.unwrap_or((-1, (0, 0)));
        put_u32(&mut out, cfd as u32);
        put_u64(&mut out, cident.0);
        put_u64(&mut out, cident.1);
        put_u64(&mut out, r.listener);
        let local = r.local.map(|a| a.encode()).unwrap_or_default();
        put_bytes(&mut out, &local[..local.len().min(MAX_ADDR)]);
        let options: Vec<_> = r
            .options
            .iter()
            .filter(|(_, v)| v.len() <= crate::ops::OPTION_MAX)
            .collect();
        out.push(options.len().min(u8::MAX as usize) as u8);
        for (name, value) in options.into_iter().take(u8::MAX as usize) {
            put_u32(&mut out, *name as u32);
            put_bytes(&mut out, value);
        }
    }
    out
}

/// A cursor over a record's bytes; every read is `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
}

/// The sockets a record lists, up to the first that does not parse, and
/// [`MAX_CARRIED`] at most.
fn decode(bytes: &[u8]) -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut r = Reader { bytes };
    if r.take(MAGIC.len()) != Some(&MAGIC[..]) {
        return out;
    }
    let Some(count) = r.u32() else {
        return out;
    };
    // No record this library writes lists more: a longer one is not
    // looked at past that many (each costs system calls to check).
    for _ in 0..count.min(MAX_CARRIED as u32) {
        match decode_one(&mut r) {
            Some(rec) => out.push(rec),
            None => break,
        }
    }
    out
}

fn decode_one(r: &mut Reader<'_>) -> Option<Recorded> {
    let fd = r.u32()? as i32;
    let ident = (r.u64()?, r.u64()?);
    let kind = match r.u8()? {
        1 => Kind::Stream,
        2 => Kind::Dgram,
        _ => return None,
    };
    let family = r.u32()? as i32;
    let domain = match family {
        AF_SERVAL => Domain::Serval,
        libc::AF_INET | libc::AF_INET6 => Domain::Inet(family),
        _ => return None,
    };
    let listening = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let owner = r.u32()?;
    let cfd = r.u32()? as i32;
    let cident = (r.u64()?, r.u64()?);
    let listener = r.u64()?;
    let local = r.bytes()?;
    let local = if local.is_empty() {
        None
    } else if crate::addr::family(local).ok()? == AF_SERVAL {
        Some(parse_serval(local).ok()?)
    } else {
        Some(SockAddr::Inet(parse_inet(local)?))
    };
    let count = r.u8()?;
    let mut options = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = r.u32()? as i32;
        options.push((name, r.bytes()?.to_vec()));
    }
    if fd < 0 || (!listening && kind != Kind::Dgram) {
        return None;
    }
    let control = (cfd >= 0).then_some((cfd, cident));
    if listening && control.is_none() {
        return None;
    }
    Some(Recorded {
        fd,
        ident,
        kind,
        domain,
        listening,
        owner,
        control,
        listener,
        local,
        options,
    })
}

/// This process's descriptors as `/proc/self/fd` shows them: the records
/// (by the memfd's name), and the sockets with their inodes (where a
/// socket the record names is looked for when it is no longer at its
/// number).
#[derive(Default)]
struct Found {
    /// Each record's number, with its device and inode as found.
    records: Vec<(RawFd, (u64, u64))>,
    sockets: Vec<(RawFd, u64)>,
}

fn find_descriptors() -> Found {
    let mut found = Found::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    for item in dir.flatten() {
        let Some(fd) = item
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(item.path()) else {
            continue;
        };
        let link = std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str());
        if link.starts_with(LINK_PREFIX) {
            found.records.push((fd, ident(fd)));
        } else if let Some(inode) = socket_inode(link) {
            found.sockets.push((fd, inode));
        }
    }
    found
}

/// The inode of a socket's `/proc/self/fd` link, `socket:[INODE]`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The numbers at which the socket `rec` names is taken up: its own, if
/// it is still there; else wherever this image has it (device and inode),
/// for a program in between may have moved it with what the shim does not
/// see (`posix_spawn`'s file actions, a direct system call, a program not
/// under the shim): each such number for a listener (copies share it), the
/// lowest for a datagram socket (whose copies the shim does not track).
/// `sockets` is sorted by inode, then number: each socket recorded costs
/// a search, not a pass over every socket the process has.
fn numbers(rec: &Recorded, sockets: &[(RawFd, u64)]) -> Vec<RawFd> {
    if ident(rec.fd) == rec.ident {
        return vec![rec.fd];
    }
    let first = sockets.partition_point(|&(_, inode)| inode < rec.ident.1);
    let mut at: Vec<RawFd> = sockets[first..]
        .iter()
        .take_while(|&&(_, inode)| inode == rec.ident.1)
        .filter(|&&(fd, _)| ident(fd) == rec.ident)
        .map(|&(fd, _)| fd)
        .collect();
    if !rec.listening {
        at.truncate(1);
    }
    at
}

/// The bytes of the record at `fd`, if it is sealed (whole, and no longer
/// changed by anyone) and not too long.
fn read_record(fd: RawFd) -> Option<Vec<u8>> {
    // SAFETY: F_GET_SEALS takes no argument.
    let seals = unsafe { real::fcntl(fd, libc::F_GET_SEALS, 0) };
    if seals < 0 || seals & SEALS != SEALS {
        return None;
    }
    let size = usize::try_from(real::kernel_stat(fd)?.st_size).ok()?;
    if size > MAX_BYTES {
        return None;
    }
    let mut bytes = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let rest = &mut bytes[at..];
        // SAFETY: `rest` is valid for writes of its length; pread is not
        // interposed.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), at as libc::off_t) };
        if n < 0 && crate::ops::last_errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return None;
        }
        at += n as usize;
    }
    Some(bytes)
}

/// Takes up what the image before this one recorded (called when the
/// library is loaded, before the program's `main`): the listeners and
/// datagram sockets whose descriptors still refer to the sockets recorded
/// become entries again; the records are closed, and this image writes
/// its own.
pub(crate) fn restore() {
    let Found {
        records: found,
        mut sockets,
    } = find_descriptors();
    if found.is_empty() {
        return;
    }
    sockets.sort_unstable_by_key(|&(fd, inode)| (inode, fd));
    // A library's constructor that ran before this one (or a thread it
    // started) may have made a listener or a datagram socket already, and
    // this process's own record with it: that one is not an image
    // before's (its control connections are held, and closing them would
    // unbind the services under the program). Under the table lock, so
    // that no record is written meanwhile; one replaced since it was
    // found (closed, its number taken again) is left alone.
    let mut table = table::lock();
    let own = RECORD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|(_, own)| own);
    let found: Vec<RawFd> = found
        .into_iter()
        .filter(|&(fd, found)| found != (0, 0) && ident(fd) == found && Some(found) != own)
        .map(|(fd, _)| fd)
        .collect();
    // An image that gained privileges at exec (set-user-ID, file
    // capabilities) takes up nothing its less privileged parent recorded.
    // SAFETY: getauxval reads the process's auxiliary vector.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    let mut records = Vec::new();
    for &fd in found.iter().take(if secure { 0 } else { MAX_RECORDS }) {
        if let Some(bytes) = read_record(fd) {
            records.extend(decode(&bytes));
        }
    }
    for fd in found {
        // SAFETY: no pointers; a record inherited, which nothing else uses.
        unsafe { real::close(fd) };
    }
    if records.is_empty() {
        return;
    }
    // The control connections recorded: those no entry taken up holds
    // are closed below.
    let controls: Vec<(RawFd, (u64, u64))> = records.iter().filter_map(|r| r.control).collect();
    let path = socket_shim::control_path();
    let mut taken: BTreeSet<RawFd> = BTreeSet::new();
    let mut listeners: BTreeMap<RawFd, Arc<ListenerControl>> = BTreeMap::new();
    for rec in records {
        if rec.ident == (0, 0) {
            continue;
        }
        for fd in numbers(&rec, &sockets) {
            adopt(&mut table, &rec, fd, &path, &mut taken, &mut listeners);
        }
    }
    // This image's own record (and its control connections' close-on-exec
    // flags) are written as the table is unlocked.
    changed();
    drop(table);
    // A control connection that crossed without its socket (closed by
    // `posix_spawn`'s file actions, or by a program in between that is not
    // under the shim) would keep the service bound as long as this image
    // lives, after every holder of the socket is gone: closed, when it is
    // still the connection recorded.
    for (cfd, cident) in controls {
        if !taken.contains(&cfd) && cident != (0, 0) && ident(cfd) == cident {
            // SAFETY: no pointers; the recorded connection, which nothing
            // in this image took up.
            unsafe { real::close(cfd) };
            taken.insert(cfd);
        }
    }
}

/// Takes up the socket `rec` names at `fd` (see [`restore`]), unless the
/// number or the control connection is one taken up already, or does not
/// check out.
fn adopt(
    table: &mut table::Table,
    rec: &Recorded,
    fd: RawFd,
    path: &std::path::Path,
    taken: &mut BTreeSet<RawFd>,
    listeners: &mut BTreeMap<RawFd, Arc<ListenerControl>>,
) {
    if taken.contains(&fd) {
        return;
    }
    let mut stale = Vec::new();
    if table.get(fd, &mut stale).is_some() {
        return;
    }
    // Each control connection is adopted once: shared by the copies
    // of one listener, never by two sockets that are not copies.
    let control = match rec.control {
        Some((cfd, cident)) => {
            if cfd == fd || cident == (0, 0) || ident(cfd) != cident {
                return;
            }
            Some(cfd)
        }
        None => None,
    };
    let state = if rec.listening {
        let Some(cfd) = control else { return };
        let control = match listeners.get(&cfd) {
            Some(shared) if shared.listener.0 == rec.listener => Arc::clone(shared),
            Some(_) => return,
            None if taken.contains(&cfd) => return,
            None => {
                // SAFETY: `cfd` is open and is the socket the record
                // names (device and inode), the connection the image
                // before held; nothing else in this image owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(cfd) };
                let connection = ControlClient::inherited(owned, path.to_path_buf());
                let shared = Arc::new(ListenerControl::inherited(
                    ListenerId(rec.listener),
                    connection,
                    rec.owner,
                ));
                listeners.insert(cfd, Arc::clone(&shared));
                shared
            }
        };
        // A listener that stopped listening (`ops::stop_listening`)
        // crosses with its accept queue hung up, and stays stopped.
        // SAFETY: `fd` is the open socket the record names.
        if socket_shim::reset::hung_up(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }) {
            control
                .stopped
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        State::Listening { control }
    } else {
        let bound = match control {
            Some(cfd) if taken.contains(&cfd) || listeners.contains_key(&cfd) => return,
            Some(cfd) => {
                // SAFETY: as above: the connection recorded, owned by
                // nothing else in this image.
                let owned = unsafe { OwnedFd::from_raw_fd(cfd) };
                Some((
                    ControlClient::inherited(owned, path.to_path_buf()),
                    ListenerId(rec.listener),
                ))
            }
            None => None,
        };
        State::DgramOpen { bound }
    };
    taken.insert(fd);
    if let Some(cfd) = control {
        taken.insert(cfd);
    }
    let mut entry = Entry::new(rec.kind, rec.domain, fd, state);
    entry.local = rec.local;
    entry.options = rec.options.clone();
    if rec.listening {
        entry.owner = rec.owner as libc::pid_t;
    }
    table.insert(fd, entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_s_inode_is_read_from_its_link_only() {
        assert_eq!(socket_inode(b"socket:[112446021]"), Some(112446021));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/memfd:serval-shim-exec (deleted)"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
    }

    fn datagram(fd: RawFd, ident: (u64, u64), listening: bool) -> Recorded {
        Recorded {
            fd,
            ident,
            kind: if listening { Kind::Stream } else { Kind::Dgram },
            domain: Domain::Serval,
            listening,
            owner: 1,
            control: Some((fd + 1, (1, 2))),
            listener: 7,
            local: None,
            options: Vec::new(),
        }
    }

    /// A record is untrusted input: one longer than any this library
    /// writes is read no further than that (each socket listed costs
    /// system calls at every start of a program).
    #[test]
    fn a_record_is_read_no_further_than_the_most_it_carries() {
        let records: Vec<Recorded> = (0..MAX_CARRIED as RawFd + 100)
            .map(|fd| datagram(fd + 3, (1, fd as u64 + 10), false))
            .collect();
        let decoded = decode(&encode(&records));
        assert_eq!(decoded.len(), MAX_CARRIED);
        assert_eq!(decoded[..], records[..MAX_CARRIED]);
    }

    /// A socket no longer at its number is found at the numbers that hold
    /// it (by device and inode, in the sorted list of sockets): all of
    /// them for a listener, the lowest for a datagram socket.
    #[test]
    fn a_moved_socket_is_found_at_its_numbers() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let copy = a.try_clone().unwrap();
        let at = |s: &std::os::unix::net::UnixStream| s.as_raw_fd();
        let inode = |fd| ident(fd).1;
        let mut sockets = vec![
            (at(&b), inode(at(&b))),
            (at(&copy), inode(at(&copy))),
            (at(&a), inode(at(&a))),
        ];
        sockets.sort_unstable_by_key(|&(fd, inode)| (inode, fd));
        let gone = at(&b) + 1000;
        let mut both = vec![at(&a), at(&copy)];
        both.sort_unstable();
        assert_eq!(
            numbers(&datagram(gone, ident(at(&a)), true), &sockets),
            both
        );
        assert_eq!(
            numbers(&datagram(gone, ident(at(&a)), false), &sockets),
            both[..1]
        );
        assert_eq!(
            numbers(&datagram(at(&a), ident(at(&a)), true), &sockets),
            [at(&a)]
        );
        assert_eq!(
            numbers(&datagram(gone, (ident(at(&a)).0, 1), true), &sockets),
            Vec::<RawFd>::new()
        );
    }
}
