//! A packet on the simulated wire: a whole SAL packet and its carriage.

use sal::locator::Locator;
use sal::proto::{Host, Transmit, TransmitKind};
use smoltcp::time::Instant;

/// A SAL packet with the addresses and TTL of the IPv4 (or UDP) header that
/// carries it: what a host hands its link, what a fault node sees, what a
/// host receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sender's locator (the NAT's public one once a NAT rewrote it).
    pub src: Locator,
    /// Where it goes: a host's locator, or a subnet broadcast address.
    pub dst: Locator,
    /// The IP TTL the sender gave it; the simulator passes it on unchanged.
    pub ttl: u8,
    /// How the host asked for it to leave (own unicast, relay, broadcast).
    pub kind: TransmitKind,
    /// The whole SAL packet, without the IPv4 or UDP header.
    pub payload: Vec<u8>,
}

impl Packet {
    /// Room for any packet a host writes (the largest IPv4 payload).
    pub const MAX_LEN: usize = 65_515;

    /// The next packet `host` sends at `now`, if any, written into
    /// `buffer` ([`Packet::MAX_LEN`] bytes) and copied out: the simulator's link
    /// keeps each packet, as a wire would.
    pub fn next_from(host: &mut Host, now: Instant, buffer: &mut [u8]) -> Option<Packet> {
        let Transmit {
            src,
            dst,
            ttl,
            kind,
            len,
        } = host.poll_transmit(now, buffer)?;
        Some(Packet {
            src,
            dst,
            ttl,
            kind,
            payload: buffer[..len].to_vec(),
        })
    }
}
