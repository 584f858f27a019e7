//! One application's in-process SAL: a [`Host`] driven from its own UDP
//! socket on the caller's thread, with no daemon, no control socket and no
//! other thread. This is the whole "driver" a program embedding the SAL
//! would need for streams over UDP carriage. Shared by the in-process
//! connect bench (`benches/in_process_connect.rs`) and the tests of sald's
//! relays to such programs (`tests/relay.rs`). The batched UDP link is
//! `sal_inproc::udp`, the in-process engine's; that crate's `Runtime` is
//! the multi-threaded engine built from this loop.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use sal::proto::{Event, Host, HostConfig, LocalInterface};
use sal::Locator;

use sal_inproc::udp::{UdpLink, BATCH};

/// Bytes of UDP header: full-size segments must still fit the MTU (sald
/// makes the same cut in UDP mode).
const UDP_HEADER_LEN: u16 = 8;

/// A host, its socket, and the clock it runs on.
pub struct Node {
    pub host: Host,
    link: UdpLink,
    /// The socket's address: every datagram arrives there.
    local: Locator,
    epoch: Instant,
    /// What the host reported in the last [`Node::poll`].
    pub events: Vec<Event>,
    /// Datagrams the host asked to send somewhere other than a UDP
    /// locator (none are expected): counted, not sent.
    pub unsendable: u64,
}

impl Node {
    /// A host whose one interface is the UDP socket bound at `addr` (port 0:
    /// the kernel picks one), with a random seed (flow IDs, nonces, ISNs
    /// differ between the client threads).
    pub fn bind(addr: SocketAddrV4) -> io::Result<Node> {
        let link = UdpLink::bind(addr)?;
        let local = link.local_addr()?;
        let mut config = HostConfig {
            seed: rand::random(),
            ..HostConfig::default()
        };
        config.stream.mss -= UDP_HEADER_LEN;
        let epoch = Instant::now();
        let mut host = Host::new(config, sal::time::Instant::ZERO);
        host.add_interface(LocalInterface {
            name: "udp".into(),
            locator: Locator::Udp(local),
            prefix_len: 24,
            up: true,
        });
        Ok(Node {
            host,
            link,
            local: Locator::Udp(local),
            epoch,
            events: Vec::new(),
            unsendable: 0,
        })
    }

    /// The socket's address: the host's locator.
    pub fn local(&self) -> Locator {
        self.local
    }

    /// The UDP socket (a program hands it to its sald to prove the port
    /// is its own: `Request::Relay`).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.link.fd()
    }

    /// The host's clock: microseconds since the node was made.
    pub fn now(&self) -> sal::time::Instant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        sal::time::Instant::from_micros(micros)
    }

    /// Sleeps until a datagram arrives, the host's next deadline, or
    /// `limit`, whichever comes first.
    pub fn wait(&mut self, limit: Instant) -> io::Result<()> {
        let now = Instant::now();
        let mut wait = limit.saturating_duration_since(now);
        if let Some(at) = self.host.poll_timeout() {
            let now = self.now();
            // (smoltcp's `Instant - Instant` is the distance either way.)
            let due_in = if at > now {
                (at - now).into()
            } else {
                Duration::ZERO
            };
            wait = wait.min(due_in);
        }
        let mut fds = [PollFd::new(self.link.fd(), PollFlags::POLLIN)];
        match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Hands every datagram waiting on the socket to the host.
    pub fn receive(&mut self) -> io::Result<()> {
        let local = self.local;
        loop {
            let count = self.link.recv_batch()?;
            let now = self.now();
            for i in 0..count {
                let (from, payload) = self.link.datagram(i);
                self.host
                    .handle_packet(now, Locator::Udp(from), local, 64, payload);
            }
            if count < BATCH {
                return Ok(());
            }
        }
    }

    /// Advances the host to now and collects its events into
    /// [`Node::events`] (what was there before is dropped).
    pub fn poll(&mut self) {
        let now = self.now();
        self.host.poll(now);
        self.events.clear();
        while let Some(event) = self.host.poll_event() {
            self.events.push(event);
        }
    }

    /// Sends everything the host has to send, in batches.
    pub fn flush(&mut self) -> io::Result<()> {
        let now = self.now();
        self.unsendable += self.link.send_from(&mut self.host, now)?;
        Ok(())
    }

    /// One turn of the event loop: wait (until `limit` at most), read,
    /// poll, send.
    pub fn turn(&mut self, limit: Instant) -> io::Result<()> {
        self.wait(limit)?;
        self.receive()?;
        self.poll();
        self.flush()
    }
}
