//! Hostile SAL packets from a raw socket: SYN floods from spoofed sources,
//! SYNs whose TCP segment is not a SYN, SYNs that name a victim in SOURCE.
//! Every packet is built with the project's own wire module
//! (`sal::wire`); every generator is bounded in count and time.

#![allow(dead_code)]

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sal::wire::{
    fill_transport_checksum, ControlFlags, ControlRepr, Ipv4Carriage, SalRepr, SourceRepr,
    TransportProtocol, IPV4_HEADER_LEN,
};
use sal::{FlowId, ServiceId, ServicePrefix};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{Daemon, Netns};

use super::Sald;

/// What the TCP segment of a crafted SAL SYN is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A proper TCP SYN (MSS option), checksummed.
    Syn,
    /// Only ACK set: finding 1 of issue 12.
    AckOnly,
    /// A SYN with a wrong checksum.
    BadChecksum,
}

/// A 24-byte TCP segment (ports 0, MSS 1448) from `src` to `dst`.
pub fn tcp_segment(kind: Opening, src: Ipv4Addr, dst: Ipv4Addr, seq: u32) -> [u8; 24] {
    let mut segment = [0u8; 24];
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[12] = 6 << 4;
    segment[13] = match kind {
        Opening::AckOnly => 0x10,
        _ => 0x02,
    };
    if kind == Opening::AckOnly {
        segment[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    segment[14..16].copy_from_slice(&65535u16.to_be_bytes());
    segment[20..24].copy_from_slice(&[2, 4, 0x05, 0xa8]);
    fill_transport_checksum(TransportProtocol::Stream, src, dst, &mut segment)
        .expect("24 bytes hold a TCP header");
    if kind == Opening::BadChecksum {
        segment[16] ^= 0x5a;
    }
    segment
}

/// A whole IPv4 packet: a SAL SYN from flow `n` for `service`, sent from
/// `src` to `dst`, with `kind` as its TCP segment and `source` as its
/// SOURCE extension (as if a router had forwarded it).
pub fn syn_packet(
    n: u32,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    service: ServiceId,
    kind: Opening,
    source: Option<&[Ipv4Addr]>,
    out: &mut Vec<u8>,
) {
    let flow = FlowId::new(n.max(1)).expect("not 0");
    let mut repr = SalRepr::data(flow, None, TransportProtocol::Stream.number());
    let mut nonce = [0u8; 8];
    nonce[..4].copy_from_slice(&n.to_be_bytes());
    nonce[4..].copy_from_slice(&(!n).to_be_bytes());
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: n.wrapping_mul(2_654_435_761),
        ackno: 0,
        nonce,
    });
    repr.service = Some(service);
    repr.source = source.map(|addrs| {
        let mut source = SourceRepr::default();
        source.addrs.extend(addrs.iter().copied().take(2));
        source
    });
    let sal_len = repr.header_len() + 24;
    out.clear();
    out.resize(IPV4_HEADER_LEN + sal_len, 0);
    let carriage = Ipv4Carriage {
        src,
        dst,
        ttl: 64,
        ident: n as u16,
    };
    carriage.emit(out, sal_len).expect("room for the header");
    let header = IPV4_HEADER_LEN + repr.header_len();
    repr.emit(&mut out[IPV4_HEADER_LEN..header])
        .expect("room for the SAL header");
    // The TCP checksum is over the packet's own addresses.
    out[header..].copy_from_slice(&tcp_segment(kind, src, dst, n));
}

/// A raw IPv4 socket (header included) in `ns`.
pub fn raw_sender(ns: &Netns) -> Socket {
    ns.run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))))
        .expect("enter the namespace")
        .expect("raw socket")
}

/// Sends `packet` (a whole IPv4 packet) from `socket` to its destination.
pub fn send_raw(socket: &Socket, packet: &[u8]) -> bool {
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    socket.send_to(packet, &to).is_ok()
}

/// A SYN flood: valid SAL SYNs carrying valid TCP SYNs, each from another
/// spoofed address of `spoof` (a /16: its low 16 bits vary), at `rate`
/// per second at most, for `duration` or `max` packets, whichever ends
/// first. Runs on a thread of its own until done or dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Duration>>,
}

impl Flood {
    pub fn start(
        ns: &Netns,
        target: Ipv4Addr,
        service: ServiceId,
        spoof: Ipv4Addr,
        rate: u64,
        duration: Duration,
        max: u64,
    ) -> Flood {
        let socket = raw_sender(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let base = u32::from(spoof) & 0xffff_0000;
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut packet = Vec::with_capacity(256);
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) && n < max && start.elapsed() < duration {
                // Pace: never ahead of `rate` per second.
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if n >= due {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                for _ in 0..(due - n).min(256) {
                    n += 1;
                    let src = Ipv4Addr::from(base | (n as u32 & 0xffff).max(1));
                    syn_packet(
                        n as u32,
                        src,
                        target,
                        service,
                        Opening::Syn,
                        None,
                        &mut packet,
                    );
                    if send_raw(&socket, &packet) {
                        sent2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            start.elapsed()
        });
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it; returns (packets sent, how long it ran).
    pub fn finish(mut self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (self.sent(), elapsed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server application (a thread of this process): accepts every flow, answers "ok", keeps it open.
pub struct Greeter {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Greeter {
    pub fn start(daemon: &Daemon, prefix: &str) -> Greeter {
        let prefix: ServicePrefix = prefix.parse().unwrap();
        let listener = ServiceListener::bind_via(daemon.client(), prefix, 128).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.try_accept() {
                    Ok(Some((stream, _))) => {
                        let _ = stream.as_unix_stream().write_all(b"ok");
                        held.push(stream);
                    }
                    _ => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Greeter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One legitimate connect: its time if it completed, and the server's
/// greeting arrived, within 5 s.
pub fn connect_once(client: &Daemon, service: ServiceId) -> Option<Duration> {
    let start = Instant::now();
    let limit = Duration::from_secs(5);
    let stream = ServiceStream::connect_via(client.client(), service, Some(limit)).ok()?;
    let socket = stream.as_unix_stream();
    socket
        .set_read_timeout(Some(
            limit
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
    let mut greeting = [0u8; 2];
    (&*socket).read_exact(&mut greeting).ok()?;
    (greeting == *b"ok" && start.elapsed() <= limit).then(|| start.elapsed())
}
