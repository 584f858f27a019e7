//! Two sockets joined by an in-memory network with loss, reordering and
//! delay, on a virtual clock, driven exactly as the SAL will drive them:
//! segments written after headroom, checksums verified by the receiver over
//! the addresses the segment was sent with, deadlines from `poll_at`.

#![allow(dead_code)] // each test binary uses part of this

use std::collections::BinaryHeap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal_tcp::{
    Config, Duration, Instant, Ipv4Address, Socket, State, TcpSeqNumber, MAX_HEADER_LEN,
};
use smoltcp::wire::TcpPacket;

/// Room left in front of every segment for the IPv4 and SAL headers.
pub const HEADROOM: usize = 20 + 12;

/// A network's behaviour in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Conditions {
    /// One-way delay.
    pub delay: Duration,
    /// Extra random delay, up to this much (reorders segments).
    pub jitter: Duration,
    /// Probability that a segment is lost.
    pub loss: f64,
}

impl Conditions {
    pub const PERFECT: Conditions = Conditions {
        delay: Duration::from_millis(1),
        jitter: Duration::ZERO,
        loss: 0.0,
    };
}

/// A segment on the wire, with the addresses of the IPv4 header carrying it.
struct InFlight {
    at: Instant,
    order: u64,
    src: Ipv4Address,
    dst: Ipv4Address,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    // Earliest first in a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// One end: its socket, its current address, what it has to send and what
/// it received.
pub struct End {
    pub socket: Socket,
    pub addr: Ipv4Address,
    pub to_send: Vec<u8>,
    pub sent: usize,
    pub received: Vec<u8>,
    /// Close after everything was queued.
    pub close_when_sent: bool,
    /// Segments this end emitted.
    pub segments: u64,
    /// Bytes per millisecond the application reads (a slow reader);
    /// unlimited if `None`.
    pub read_rate: Option<usize>,
    read_credit: usize,
    last_read: Instant,
}

impl End {
    pub fn new(socket: Socket, addr: Ipv4Address, to_send: Vec<u8>) -> End {
        End {
            socket,
            addr,
            to_send,
            sent: 0,
            received: Vec::new(),
            close_when_sent: true,
            segments: 0,
            read_rate: None,
            read_credit: 0,
            last_read: Instant::ZERO,
        }
    }

    /// Move data between the application and the socket.
    fn app(&mut self, now: Instant) {
        if self.sent < self.to_send.len() && self.socket.may_send() {
            self.sent += self.socket.send_slice(&self.to_send[self.sent..]).unwrap();
        }
        if self.close_when_sent && self.sent == self.to_send.len() && self.socket.may_send() {
            self.socket.close();
        }
        let mut chunk = [0; 4096];
        let mut budget = match self.read_rate {
            None => usize::MAX,
            Some(rate) => {
                let ms = (now - self.last_read.min(now)).total_millis() as usize;
                self.last_read = now;
                self.read_credit = self.read_credit.saturating_add(ms * rate);
                std::mem::take(&mut self.read_credit)
            }
        };
        while budget > 0 {
            let want = chunk.len().min(budget);
            match self.socket.recv_slice(&mut chunk[..want]) {
                Ok(n) if n > 0 => {
                    self.received.extend_from_slice(&chunk[..n]);
                    budget -= n;
                }
                _ => break,
            }
        }
        if self.read_rate.is_some() {
            self.read_credit = budget;
        }
    }
}

/// Sees every segment an end emits: the end's index, its socket, the segment.
pub type Inspector = Box<dyn FnMut(usize, &Socket, &[u8])>;

/// See [`Net::dropper`].
pub type Dropper = Box<dyn FnMut(usize, &[u8]) -> bool>;

/// Two ends and the network between them.
pub struct Net {
    pub now: Instant,
    pub ends: [End; 2],
    pub conditions: [Conditions; 2],
    wire: [BinaryHeap<InFlight>; 2],
    rng: SmallRng,
    order: u64,
    /// Segments dropped by the network.
    pub lost: u64,
    /// Called on every segment an end emits, with the end's index, before
    /// the network sees it.
    pub inspect: Option<Inspector>,
    /// Called on every segment the network delivers, with the receiving
    /// end's index and socket, before that end handles it.
    pub arrive: Option<Inspector>,
    /// Decides, for every segment an end emits (its index, the segment),
    /// whether the network drops it, on top of random loss.
    pub dropper: Option<Dropper>,
}

impl Net {
    pub fn new(ends: [End; 2], conditions: Conditions, seed: u64) -> Net {
        Net {
            now: Instant::from_millis(0),
            ends,
            conditions: [conditions; 2],
            wire: [BinaryHeap::new(), BinaryHeap::new()],
            rng: SmallRng::seed_from_u64(seed),
            order: 0,
            lost: 0,
            inspect: None,
            arrive: None,
            dropper: None,
        }
    }

    /// Connect end 0 (active) to end 1 (passive) through their sockets.
    pub fn connected(
        config: &Config,
        data: [Vec<u8>; 2],
        conditions: Conditions,
        seed: u64,
    ) -> Net {
        let mut client = Socket::new(config);
        client.connect(TcpSeqNumber(seed as i32)).unwrap();
        let mut server = Socket::new(config);
        server.listen(TcpSeqNumber(!seed as i32)).unwrap();
        let [a, b] = data;
        Net::new(
            [
                End::new(client, Ipv4Address::new(10, 0, 0, 1), a),
                End::new(server, Ipv4Address::new(10, 0, 0, 2), b),
            ],
            conditions,
            seed,
        )
    }

    /// Let every end send what it has now.
    fn transmit(&mut self) {
        for i in 0..2 {
            self.ends[i].app(self.now);
            let (src, dst) = (self.ends[i].addr, self.ends[1 - i].addr);
            loop {
                let mut packet = vec![0; HEADROOM + MAX_HEADER_LEN + 1500];
                let end = &mut self.ends[i];
                let Some(len) =
                    end.socket
                        .poll_transmit(self.now, src, dst, &mut packet[HEADROOM..])
                else {
                    break;
                };
                end.segments += 1;
                // The SAL would write its headers into the headroom here.
                packet[..HEADROOM].fill(0x45);
                let segment = packet[HEADROOM..HEADROOM + len].to_vec();
                if let Some(inspect) = &mut self.inspect {
                    inspect(i, &end.socket, &segment);
                }
                let conditions = self.conditions[i];
                let dropped = self.dropper.as_mut().is_some_and(|drop| drop(i, &segment));
                if dropped || self.rng.random_bool(conditions.loss) {
                    self.lost += 1;
                    continue;
                }
                let jitter = if conditions.jitter > Duration::ZERO {
                    Duration::from_micros(
                        self.rng.random_range(0..conditions.jitter.total_micros()),
                    )
                } else {
                    Duration::ZERO
                };
                self.order += 1;
                self.wire[i].push(InFlight {
                    at: self.now + conditions.delay + jitter,
                    order: self.order,
                    src,
                    dst,
                    bytes: segment,
                });
            }
        }
    }

    /// Deliver what has arrived by now.
    fn deliver(&mut self) {
        for i in 0..2 {
            while self.wire[i].peek().is_some_and(|p| p.at <= self.now) {
                let p = self.wire[i].pop().unwrap();
                let packet = TcpPacket::new_checked(&p.bytes[..]).unwrap();
                assert!(
                    packet.verify_checksum(&p.src.into(), &p.dst.into()),
                    "bad checksum"
                );
                let receiver = &mut self.ends[1 - i];
                if let Some(arrive) = &mut self.arrive {
                    arrive(1 - i, &receiver.socket, &p.bytes);
                }
                receiver.socket.handle_segment(self.now, &p.bytes).unwrap();
                // Answer at once, as the SAL will.
                self.transmit();
            }
        }
    }

    /// The next instant anything happens, if anything will.
    fn next_event(&self) -> Option<Instant> {
        let sockets = self.ends.iter().filter_map(|e| e.socket.poll_at());
        let wire = self.wire.iter().filter_map(|w| w.peek().map(|p| p.at));
        sockets.chain(wire).min()
    }

    /// Run until `done` holds or virtual time passes `limit`; returns whether
    /// `done` was reached.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let deadline = self.now + limit;
        let mut stuck = 0;
        loop {
            self.transmit();
            self.deliver();
            if done(self) {
                return true;
            }
            match self.next_event() {
                Some(at) if at <= deadline => {
                    // A socket that keeps asking for "now" without sending
                    // anything would spin here forever.
                    stuck = if at <= self.now { stuck + 1 } else { 0 };
                    assert!(
                        stuck < 10_000,
                        "a socket asks to be polled but does nothing"
                    );
                    self.now = self.now.max(at);
                }
                _ => return false,
            }
        }
    }

    /// Run until both ends got all the other's data and both are closed.
    pub fn run_to_completion(&mut self, limit: Duration) -> bool {
        self.run_until(limit, |net| {
            let [a, b] = &net.ends;
            a.received.len() == b.to_send.len()
                && b.received.len() == a.to_send.len()
                && matches!(a.socket.state(), State::Closed | State::TimeWait)
                && matches!(b.socket.state(), State::Closed | State::TimeWait)
        })
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}
