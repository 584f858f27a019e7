//! The engine: one host per process behind one mutex, driven by whichever
//! application thread is inside a call, and by the driver thread while none
//! is.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};

use crate::core::Core;
use crate::deadline::Deadlines;
use crate::descriptors;
use crate::gate::{self, Gate, Inside, Role};
use crate::interrupt;
use crate::lock::{Closing, EngineLock, Held};
use crate::mirror::Signal;
use crate::resolve::{CachedRoute, Resolution};
use crate::spin::{Spin, Spun};
use crate::{Config, Error, Listener, Stream};

/// How a call waits when it cannot complete at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until it completes (a socket without `O_NONBLOCK`).
    Blocking,
    /// Not at all: [`Error::WouldBlock`] (a socket with `O_NONBLOCK`).
    NonBlocking,
    /// Until it completes or this instant passes, then
    /// [`Error::WouldBlock`] (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
    Until(Instant),
}

/// What the runtime's handles share.
pub(crate) struct Inner {
    core: EngineLock,
    gate: Arc<Gate>,
    /// The host's deadline as the lock was last let go: the poller's
    /// timeout.
    deadlines: Arc<Deadlines>,
    /// Duplicates of the UDP socket and the timerfd, to wait on without
    /// the lock.
    udp: OwnedFd,
    timer: OwnedFd,
    local: Locator,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// The long-lived descriptors the engine holds (see
    /// [`Runtime::descriptors`]), set once at [`Runtime::bind`].
    descriptors: std::sync::OnceLock<Vec<RawFd>>,
    /// Cached resolution, with a resolver configured (the core holds it
    /// too, for the hops found gone: see `Core::report_unreachable`).
    resolution: Option<Arc<Resolution>>,
    /// How waiting threads spin before they sleep.
    spin: Spin,
}

impl Inner {
    /// The core, waiting for it if need be.
    fn lock(&self) -> Held<'_> {
        self.core.lock()
    }

    /// One full turn of the host under the lock, waiting for it if need
    /// be; at once `WouldBlock` on the thread that holds it (a signal
    /// handler's `poll`: see `EngineLock::held_here`).
    pub(crate) fn drive(&self) -> Result<(), Error> {
        if self.core.held_here() {
            return Err(Error::WouldBlock);
        }
        self.lock().drive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.gate.stop();
        let driver = self
            .driver
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = driver.take() {
            // The driver thread may hold the last handle itself: it ends
            // on its own then.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// One process's SAL engine: a host on its own UDP socket, shared by all
/// its threads (clone it freely).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

/// The driver thread's cost (see [`Runtime::driver_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverStats {
    /// Times it woke up (its grace period's end, the last thread leaving
    /// while it was parked, input while nobody was inside).
    pub wakeups: u64,
    /// Times it drove the host.
    pub turns: u64,
}

/// What the application threads' waits cost (see [`Runtime::wait_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitStats {
    /// Times an application thread woke up in one of the engine's waits
    /// (for input as the poller, for its own object, for the poller role,
    /// a lock's release or its deadline).
    pub wakeups: u64,
    /// Times the poller role (watching the socket and the timer for the
    /// threads waiting inside) passed from a leaving thread to a waiting one.
    pub handoffs: u64,
    /// Waits that spun, whether their spin caught what they waited for or
    /// they slept after it (see [`Config::spin`](crate::Config::spin)).
    pub spins: u64,
    /// Those of them whose spin caught what they waited for: they did not
    /// sleep (counted in `wakeups` too).
    pub caught: u64,
}

/// A thread's presence in the engine (see [`Runtime::enter`]).
#[derive(Debug)]
pub struct EnterGuard(#[allow(dead_code)] Inside);

impl Runtime {
    /// Binds the UDP socket at `config.addr`, makes the host (one interface
    /// `udp:ADDR:PORT`, one rule: everything to `config.route`) and starts
    /// the driver thread (unless `config.driver_thread` is off).
    pub fn bind(config: Config) -> Result<Runtime, Error> {
        let mut core = Core::new(&config)?;
        let [udp, timer] = core.wait_fds();
        let (udp, timer) = (descriptors::copy(udp)?, descriptors::copy(timer)?);
        let local = core.local();
        let deadlines = core.deadlines();
        let gate = Gate::new()?;
        let (resolution, questions) = match config.resolver.clone() {
            Some(resolver) => {
                let (resolution, questions) = Resolution::new(resolver);
                (Some(Arc::new(resolution)), Some(questions))
            }
            None => (None, None),
        };
        core.set_resolution(resolution.clone());
        let inner = Arc::new(Inner {
            core: EngineLock::new(core)?,
            gate: Arc::clone(&gate),
            deadlines: Arc::clone(&deadlines),
            udp,
            timer,
            local,
            driver: Mutex::new(None),
            descriptors: std::sync::OnceLock::new(),
            resolution,
            spin: Spin::new(config.spin),
        });
        let mut descriptors = {
            let core = inner.lock();
            let [udp, timer] = core.wait_fds();
            vec![udp.as_raw_fd(), timer.as_raw_fd()]
        };
        descriptors.extend([
            inner.udp.as_raw_fd(),
            inner.timer.as_raw_fd(),
            inner.core.send_fd(),
        ]);
        if let Some(questions) = questions {
            let weak = Arc::downgrade(&inner);
            questions.spawn(move |service, answer| {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                if let Some(resolution) = &inner.resolution {
                    let mut core = inner.lock();
                    (resolution.cache()).answer(&mut core.host, service, answer, Instant::now());
                }
                true
            })?;
        }
        if config.driver_thread {
            let (udp, timer) = (
                descriptors::copy(inner.udp.as_fd())?,
                descriptors::copy(inner.timer.as_fd())?,
            );
            descriptors.extend([udp.as_raw_fd(), timer.as_raw_fd()]);
            let weak = Arc::downgrade(&inner);
            let builder = std::thread::Builder::new().name("sal-inproc-driver".into());
            let handle = interrupt::spawn_engine_thread(builder, move || {
                gate::drive_while_away(gate, weak, deadlines, udp, timer)
            })?;
            *inner.driver.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        }
        let _ = inner.descriptors.set(descriptors);
        Ok(Runtime { inner })
    }

    /// The host's locator, `udp:ADDR:PORT`: where peers and sald reach it.
    pub fn local(&self) -> Locator {
        self.inner.local
    }

    /// Opens a stream flow to `service`. The SYN is out when this returns.
    /// Blocking: returns once the flow is established, or its error.
    /// Non-blocking: returns the stream at once, connecting (as `connect`
    /// gives `EINPROGRESS`); [`Stream::finish_connect`] tells the outcome,
    /// and the stream's writable descriptor shows when there is one. With
    /// a deadline that passes first: [`Error::WouldBlock`], and the flow is
    /// closed.
    ///
    /// With a resolver ([`Config::resolver`]): the SYN goes by the route
    /// cached for `service`, if any; if none, by the host's own rules
    /// (the default route, sald), and if that is the default route the
    /// resolver thread is asked (once per answer's lifetime) how the next
    /// SYNs may go: the connect never waits for the answer. A connect by
    /// a cached route that is not established (refused, timed out, its
    /// deadline passed, the stream dropped first) forgets the route.
    pub fn connect(&self, service: ServiceId, mode: Mode) -> Result<Stream, Error> {
        let resolution = self.inner.resolution.as_ref();
        let mut route = None;
        let (key, id, signals) = self.call(Mode::NonBlocking, None, |core| {
            if let Some(resolution) = resolution {
                route = resolution.before_connect(&mut core.host, service);
            }
            core.connect(service)
        })?;
        let mut stream = Stream::new(self.clone(), key, id, signals);
        stream.set_route(route);
        if mode != Mode::NonBlocking {
            // A failure (a passed deadline too: the stream is dropped)
            // forgets the route it took.
            stream.finish_connect(mode)?;
        }
        Ok(stream)
    }

    /// Closes a stream or listener, or, from a signal handler on the
    /// thread that holds the core (`EngineLock::held_here`), leaves the
    /// close to that section's release (a connect still pending by a
    /// cached route then does not count against the route).
    pub(crate) fn close(
        &self,
        closing: Closing,
        mut close: impl FnMut(&mut Core),
    ) -> Result<(), Error> {
        if self.inner.core.held_here() {
            self.inner.core.defer(closing);
            return Ok(());
        }
        self.call(Mode::NonBlocking, None, |core| {
            close(core);
            Ok(())
        })
    }

    /// A connect by `route` was not established: the cache forgets it
    /// (under the engine's lock, `core` being what it holds).
    pub(crate) fn route_failed(&self, core: &mut Core, route: CachedRoute) {
        if let Some(resolution) = &self.inner.resolution {
            resolution.cache().failed(&mut core.host, route);
        }
    }

    /// A connect by `route` was established as flow `id`: the cache may
    /// learn a shorter route from where its SYN-ACK came from
    /// ([`ResolutionCache::established`](crate::resolve::ResolutionCache::established)).
    pub(crate) fn route_established(&self, core: &mut Core, route: CachedRoute, id: FlowId) {
        if let (Some(resolution), Some(answerer)) =
            (&self.inner.resolution, core.host.flow_remote(id))
        {
            (resolution.cache()).established(&mut core.host, route, answerer, Instant::now());
        }
    }

    /// Whether connects to `service` take a route the resolver gave
    /// (see [`Config::resolver`]) rather than the default one now.
    pub fn is_resolved(&self, service: &ServiceId) -> bool {
        let Some(resolution) = self.inner.resolution.as_ref() else {
            return false;
        };
        let _core = self.inner.lock();
        let routed = resolution.cache().is_routed(service, Instant::now());
        routed
    }

    /// Binds a listener to `prefix`; at most `backlog` flows may be
    /// half-open or waiting to be accepted. Registering the prefix with
    /// sald (`Relay`) is the caller's business.
    pub fn listen(&self, prefix: ServicePrefix, backlog: usize) -> Result<Listener, Error> {
        let resolution = self.inner.resolution.as_ref();
        let (id, signal) = self.call(Mode::NonBlocking, None, |core| {
            let listening = core.listen(prefix, backlog)?;
            if let Some(resolution) = resolution {
                // Cached routes inside the prefix would hide it.
                resolution.cache().forget_within(&mut core.host, &prefix);
            }
            Ok(listening)
        })?;
        Ok(Listener::new(self.clone(), id, signal))
    }

    /// Holds the first packets of `prefix` until this engine listens on it
    /// ([`sal::proto::Host::reserve`]): call it before asking sald to relay
    /// the prefix here (`Request::Relay`, at the program's `bind`), so that
    /// SYNs sald relays before the program's `listen` wait rather than
    /// being refused.
    pub fn reserve(&self, prefix: ServicePrefix) -> Result<(), Error> {
        self.call(Mode::NonBlocking, None, |core| {
            core.host.reserve(prefix);
            Ok(())
        })
    }

    /// Ends [`Runtime::reserve`] (the relay was refused): what it held is
    /// refused.
    pub fn unreserve(&self, prefix: ServicePrefix) -> Result<(), Error> {
        self.call(Mode::NonBlocking, None, |core| {
            core.host.unreserve(&prefix);
            Ok(())
        })
    }

    /// Counts the calling thread as inside the engine until the guard is
    /// dropped: the driver thread then leaves the socket alone. For a
    /// future `poll`/`epoll` interposer that waits on [`Runtime::wait_fds`]
    /// itself and calls [`Runtime::drive`] when they are readable.
    pub fn enter(&self) -> EnterGuard {
        EnterGuard(self.inner.gate.enter())
    }

    /// The engine's UDP socket, to hand sald in a `Relay` or `Adopt`
    /// request as proof that the port is the program's own. Not to wait
    /// on: that is [`Runtime::wait_fds`].
    pub fn udp_fd(&self) -> BorrowedFd<'_> {
        self.inner.udp.as_fd()
    }

    /// The engine's long-lived descriptors: its UDP socket and timerfd,
    /// and the copies of them it waits on (the driver thread's among
    /// them) and sends on. For a forked child that forgets its parent's runtime
    /// without dropping it (its lock may be held by a thread the child
    /// does not have): closing these in the child lets go of the port
    /// there, without touching the runtime's state. Not included: the
    /// per-object eventfds (the streams' and listeners' own, closed with
    /// them), the threads' wake-up eventfds, and the resolver's
    /// connection. Takes no lock.
    pub fn descriptors(&self) -> &[RawFd] {
        self.inner.descriptors.get().map_or(&[], Vec::as_slice)
    }

    /// The UDP socket and the timerfd: when either is readable, the host
    /// has work ([`Runtime::drive`]). The engine's own waits sleep until the host's deadline
    /// with `ppoll`'s timeout and arm the timerfd only when one of them
    /// must wake earlier; from the first call of this one on, every
    /// deadline is armed on the timerfd, as its caller expects (that first
    /// call takes the lock, waiting for it if need be, to arm the
    /// deadline of now).
    pub fn wait_fds(&self) -> [BorrowedFd<'_>; 2] {
        if self.inner.deadlines.lend() && !self.inner.core.held_here() {
            // The release arms the timerfd at the host's deadline (the
            // holder's own release, on the thread that holds it).
            drop(self.inner.lock());
        }
        [self.inner.udp.as_fd(), self.inner.timer.as_fd()]
    }

    /// One turn of the host on the calling thread: read what waits on the
    /// socket, run the timers, mirror readiness, send. Waits for the lock
    /// if another thread holds it.
    pub fn drive(&self) -> Result<(), Error> {
        self.inner.drive()
    }

    /// What the driver thread cost so far: its wake-ups, and the turns of
    /// the host it drove (0 and 0 without one).
    pub fn driver_stats(&self) -> DriverStats {
        let (wakeups, turns) = self.inner.gate.counts();
        DriverStats { wakeups, turns }
    }

    /// What the application threads' waits cost so far: with one poller
    /// among them, a datagram wakes one waiting thread (and the one whose
    /// object it makes ready), not all of them.
    pub fn wait_stats(&self) -> WaitStats {
        let (wakeups, handoffs, spins, caught) = self.inner.gate.wait_counts();
        WaitStats {
            wakeups,
            handoffs,
            spins,
            caught,
        }
    }

    /// Flows and datagram sockets the host holds (closing ones included).
    pub fn flow_count(&self) -> usize {
        self.inner.lock().host.flow_count()
    }

    /// Stream flows not finished yet: bytes or an end of stream not yet
    /// acknowledged by their peers (sent or still queued), or the peer's
    /// end of stream not received yet. 0 when every flow is done both
    /// ways (closed, or in `TIME-WAIT`). See
    /// [`Host::unfinished_streams`](sal::proto::Host::unfinished_streams).
    /// Takes the lock.
    pub fn unfinished_streams(&self) -> usize {
        self.inner.lock().host.unfinished_streams()
    }

    /// [`unfinished_streams`](Self::unfinished_streams) among the streams
    /// the application closed (dropped): what a process about to `exec`
    /// waits for, since the streams it still holds go on elsewhere (to
    /// sald) or end with it. Takes the lock.
    pub fn unfinished_closed_streams(&self) -> usize {
        self.inner.lock().unfinished_closed_streams()
    }

    /// The host's counters (packets in and out, what was dropped and why:
    /// malformed, bad checksum, unknown flow, bad nonce, SYN cookies sent
    /// and accepted, ...) and its buffer memory gauge: what a hostile
    /// sender cost the engine, and what it kept of it. Takes the lock.
    pub fn host_stats(&self) -> sal::proto::HostStats {
        self.inner.lock().host.stats()
    }

    /// Half-open server flows (SYN answered, ACK awaited), all listeners
    /// together: bounded by the listeners' backlogs and the host's
    /// half-open limits whatever arrives (past them, SYNs are answered
    /// with cookies, which keep nothing). Takes the lock.
    pub fn half_open_count(&self) -> usize {
        self.inner.lock().host.half_open_count()
    }

    /// Runs `attempt` under the lock between a turn's input and output,
    /// and again after each wake-up until it stops saying `WouldBlock`, as
    /// `mode` allows; waits on `own` (the object's readiness) meanwhile.
    pub(crate) fn call<T>(
        &self,
        mode: Mode,
        own: Option<&Signal>,
        mut attempt: impl FnMut(&mut Core) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.inner.core.held_here() {
            // A signal handler's call on the thread that holds the core:
            // the lock would never come (see `EngineLock::held_here`).
            return Err(Error::WouldBlock);
        }
        // Counted as inside from the first wait to the return, wake-ups and
        // retries included: a thread blocked here for long never lets the
        // driver thread think the engine empty, and a poller keeps its role.
        let mut inside: Option<Inside> = None;
        // The core, when a wait won it for input: the input and the retry
        // are then one locked section.
        let mut won: Option<Held<'_>> = None;
        // The socket is read first only by a non-blocking call on an
        // object, which must see what arrived, and only if no poller reads
        // it anyway: a call that can wait watches it if it must; a connect
        // or a close has no use for what waits there (the next wait, or
        // the driver thread, hands it to the host).
        let mut drain = mode == Mode::NonBlocking && own.is_some() && !self.inner.gate.polled();
        loop {
            let result = {
                let mut core = match won.take() {
                    Some(core) => {
                        drain = true;
                        core
                    }
                    None => self.inner.lock(),
                };
                core.before(drain)?;
                let result = attempt(&mut core);
                if matches!(result, Err(Error::WouldBlock)) && mode != Mode::NonBlocking {
                    // This thread waits next: what it or others hold for
                    // a first write goes first.
                    core.release_held_acks();
                }
                match core.after() {
                    Ok(()) => result,
                    // What the call did stands (an accepted flow must
                    // reach its caller); the timer retries the output.
                    Err(error) if result.is_ok() => {
                        tracing::warn!(%error, "sending the host's output failed");
                        result
                    }
                    Err(error) => Err(error),
                }
            };
            let deadline = match (result, mode) {
                (Err(Error::WouldBlock), Mode::Blocking) => None,
                (Err(Error::WouldBlock), Mode::Until(at)) if at > Instant::now() => Some(at),
                (result, _) => return result,
            };
            match own {
                Some(own) => {
                    let inside = inside.get_or_insert_with(|| self.inner.gate.enter());
                    let (core, input) = self.wait(own, deadline, inside)?;
                    won = core;
                    // Input this thread saw but another holder may not
                    // have read (it drains only when it saw some too).
                    drain = input;
                }
                None => return Err(Error::WouldBlock),
            }
        }
    }

    /// Spins a little (`spin.rs`), then sleeps (counted as inside) until
    /// `own` is raised, or `deadline`, or (as the poller, see `gate.rs`)
    /// the socket has input or the host's deadline comes (`ppoll`'s
    /// timeout, or the timerfd, which a release arms if it moved the
    /// deadline before the one this thread sleeps until: `deadline.rs`);
    /// on input, returns the core to drive if the lock is free. If another
    /// thread holds it, that thread drives: this one waits for its own
    /// object or the holder's release (see `lock.rs`). A follower woken to
    /// take the poller role, or by a readiness already consumed, sleeps
    /// again without the lock. Also says whether it saw input on the
    /// socket or the timer, or the host's deadline passed (the next
    /// attempt then reads the socket).
    fn wait(
        &self,
        own: &Signal,
        deadline: Option<Instant>,
        inside: &mut Inside,
    ) -> Result<(Option<Held<'_>>, bool), Error> {
        let left = || deadline.map(|at| at.saturating_duration_since(Instant::now()));
        loop {
            let role = inside.claim(own);
            let follower = inside.wake_signal().filter(|_| role != Role::Poller);
            let Some(me) = follower else {
                let fds: [BorrowedFd<'_>; 3] = [
                    self.inner.udp.as_fd(),
                    self.inner.timer.as_fd(),
                    own.wait_fd()?,
                ];
                let mut polled = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
                let sleeper = self.inner.deadlines.sleep();
                let limit = sleeper.timeout(left()).map(Duration::from);
                let spun = self.inner.spin.run(limit, || ready_now(&mut polled));
                inside.gate().spun(spun);
                if !matches!(spun, Spun::Caught | Spun::Ready) {
                    sleep(&mut polled, sleeper.timeout(left()))?;
                }
                let due = sleeper.due();
                drop(sleeper);
                inside.gate().woke();
                let input = due
                    || (polled[..2].iter()).any(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
                if !input {
                    return Ok((None, false));
                }
                return match self.inner.core.try_lock() {
                    Some(core) => Ok((Some(core), true)),
                    // None: the holder drives; the caller looks again
                    // once it lets go (what is left of the deadline).
                    None => {
                        let left = left().map(TimeSpec::from_duration);
                        let core = self.inner.core.wait_release(own.wait_fd()?, left)?;
                        Ok((core, true))
                    }
                };
            };
            let watching = role == Role::Watcher;
            // Its own object's eventfd only if it watches it (a stream's
            // writable one may not be made yet): not polled otherwise.
            let mine = me.fd()?;
            let object = if watching { own.wait_fd()? } else { mine };
            let mut polled = [mine, object].map(|fd| PollFd::new(fd, PollFlags::POLLIN));
            let watched = if watching { 2 } else { 1 };
            // After a catch the eventfd is readable, or about to be (its
            // level is set before its write): the sleep below returns at
            // once, or as soon as it is.
            let spun =
                (self.inner.spin).run(left(), || me.is_raised() || (watching && own.is_raised()));
            inside.gate().spun(spun);
            let woken = sleep(&mut polled[..watched], left().map(TimeSpec::from_duration))?;
            inside.gate().woke();
            let seen = polled.map(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
            if seen[0] {
                me.lower();
            }
            let expired = deadline.is_some_and(|at| at <= Instant::now());
            if (seen[1] && own.is_raised()) || woken == 0 || expired {
                return Ok((None, false));
            }
        }
    }
}

/// Whether any of `fds` is ready now (a zero-timeout `ppoll`; a failure
/// counts as not ready: the sleep that follows reports it).
fn ready_now(fds: &mut [PollFd<'_>]) -> bool {
    matches!(ppoll(fds, Some(TimeSpec::new(0, 0)), None), Ok(n) if n > 0)
}

/// `ppoll`: how many descriptors are ready (0: the timeout passed). EINTR
/// ends an interruptible call ([`crate::interrupt`]), and is a wake-up
/// like any other (counted as one) otherwise.
fn sleep(fds: &mut [PollFd<'_>], timeout: Option<TimeSpec>) -> Result<i32, Error> {
    let mask = interrupt::sleep_mask();
    match interrupt::sleep(fds, timeout) {
        Ok(ready) => Ok(ready),
        Err(Errno::EINTR) if mask.is_some() => Err(Error::Interrupted),
        Err(Errno::EINTR) => Ok(1),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    /// Calls from a signal handler that interrupted its thread's locked
    /// section, simulated by holding the core on the calling thread: a
    /// read or write ends at once with `WouldBlock`, where it waited for
    /// good (the section goes on only once the handler returns); a close
    /// there is made as the section lets the lock go, and its FIN sent
    /// then, so the peer sees the end of the stream though nothing drives
    /// the client after.
    #[test]
    fn a_call_on_the_thread_that_holds_the_core_does_not_wait_for_it() {
        let loopback = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let nowhere = Locator::Udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9));
        let server = Runtime::bind(Config::new(loopback, nowhere)).unwrap();
        let service: ServiceId = "c0ec7003".parse().unwrap();
        let listener = server.listen(ServicePrefix::exact(service), 4).unwrap();
        // Nothing drives the client but its calls (and its releases): a
        // close left to a release must go out with it.
        let client_config = Config {
            driver_thread: false,
            ..Config::new(loopback, server.local())
        };
        let client = Runtime::bind(client_config).unwrap();
        let stream = client.connect(service, Mode::Blocking).unwrap();
        // The first write carries the handshake's last ACK (held for it).
        assert!(matches!(stream.write(b"ping", Mode::Blocking), Ok(4)));
        let until = Mode::Until(Instant::now() + Duration::from_secs(5));
        let accepted = listener.accept(until).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(accepted.read(&mut buf, until), Ok(4)));
        {
            let _held = client.inner.lock();
            assert!(client.inner.core.held_here());
            assert!(!server.inner.core.held_here(), "another engine's lock");
            let mut byte = [0u8; 1];
            assert!(matches!(
                stream.write(b"x", Mode::Blocking),
                Err(Error::WouldBlock)
            ));
            assert!(matches!(
                stream.read(&mut byte, Mode::Blocking),
                Err(Error::WouldBlock)
            ));
            drop(stream);
        }
        assert!(!client.inner.core.held_here(), "let go");
        let until = Mode::Until(Instant::now() + Duration::from_secs(5));
        let end = accepted.read(&mut buf, until);
        assert!(matches!(end, Ok(0)), "the end of the stream: {end:?}");
    }
}
