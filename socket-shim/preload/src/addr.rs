//! Socket addresses: `struct sockaddr_sv` (WIRE.md, "The C socket API"), the
//! inet addresses of inet mode, and the port map of inet mode.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use sal::locator::Locator;
use sal::proto::DatagramPeer;
use sal::{FlowId, ServiceId, ServicePrefix};

/// `AF_SERVAL` / `PF_SERVAL`.
pub(crate) const AF_SERVAL: i32 = 28;
/// `sizeof(struct sockaddr_sv)` on Linux.
pub(crate) const SOCKADDR_SV_LEN: usize = 36;
/// `sv_flags` bit of a reply address filled in by `recvfrom` (serval.h).
pub(crate) const SV_FLAG_PEER: u8 = 0x80;
/// Where an application gets the port map of inet mode.
pub(crate) const MAP_ENV: &str = "SERVAL_SHIM_MAP";
/// Optional address ranges that narrow inet-mode connects.
pub(crate) const NET_ENV: &str = "SERVAL_SHIM_NET";

/// An address as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockAddr {
    Serval {
        flags: u8,
        bits: u8,
        id: [u8; 32],
    },
    /// The sender of a datagram as the reference stack's `recvfrom` gives
    /// it: a `sockaddr_sv` with the sender's own service ID, followed by a
    /// `sockaddr_in` with its IPv4 address when the buffer has room for
    /// both ([`SOCKADDR_SV_IN_LEN`]). `sendto` takes the same back.
    ServalAt {
        id: [u8; 32],
        ip: Ipv4Addr,
    },
    Inet(SocketAddr),
}

/// A `sockaddr_sv` followed by a `sockaddr_in`.
pub(crate) const SOCKADDR_SV_IN_LEN: usize = SOCKADDR_SV_LEN + 16;

/// Why an address given by the application was refused (an errno).
pub(crate) type AddrError = i32;

impl SockAddr {
    /// A service address (`sv_prefix_bits` 0: the whole ID).
    pub(crate) fn service(id: ServiceId) -> SockAddr {
        SockAddr::Serval {
            flags: 0,
            bits: 0,
            id: *id.as_bytes(),
        }
    }

    /// The address of a datagram's sender: its service ID and IPv4 address
    /// (the reference form; over UDP carriage the port is the deployment's
    /// own), or for a sender that named no service of its own (older
    /// serval-rs) the peer packed into the ID ([`SV_FLAG_PEER`]); `sendto`
    /// understands both.
    pub(crate) fn sender(peer: &DatagramPeer) -> SockAddr {
        match peer.service {
            Some(service) => SockAddr::ServalAt {
                id: *service.as_bytes(),
                ip: peer.locator.ip(),
            },
            None => SockAddr::peer(peer),
        }
    }

    /// The reply address of a datagram sender: the peer packed into the ID.
    pub(crate) fn peer(peer: &DatagramPeer) -> SockAddr {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&peer.flow.get().to_be_bytes());
        let (kind, ip, port) = match peer.locator {
            Locator::Ipv4(ip) => (0u8, ip, 0u16),
            Locator::Udp(addr) => (1u8, *addr.ip(), addr.port()),
        };
        id[4] = kind;
        id[5..9].copy_from_slice(&ip.octets());
        id[9..11].copy_from_slice(&port.to_be_bytes());
        SockAddr::Serval {
            flags: SV_FLAG_PEER,
            bits: 0,
            id,
        }
    }

    /// The bytes of the C structure, for a buffer of `room` bytes: a
    /// sender's `sockaddr_in` only follows its `sockaddr_sv` when both fit,
    /// as the reference stack writes them (other addresses are truncated
    /// by the caller, as the kernel does).
    pub(crate) fn encode_for(&self, room: usize) -> Vec<u8> {
        match self {
            SockAddr::ServalAt { id, ip } => {
                let mut out = SockAddr::Serval {
                    flags: 0,
                    bits: 0,
                    id: *id,
                }
                .encode();
                if room >= SOCKADDR_SV_IN_LEN {
                    out.extend(SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(*ip, 0))).encode());
                }
                out
            }
            other => other.encode(),
        }
    }

    /// The bytes of the C structure.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            SockAddr::Serval { flags, bits, id } => {
                let mut out = Vec::with_capacity(SOCKADDR_SV_LEN);
                out.extend_from_slice(&(AF_SERVAL as u16).to_ne_bytes());
                out.push(*flags);
                out.push(*bits);
                out.extend_from_slice(id);
                out
            }
            SockAddr::ServalAt { .. } => self.encode_for(SOCKADDR_SV_IN_LEN),
            SockAddr::Inet(SocketAddr::V4(v4)) => {
                let mut out = vec![0u8; std::mem::size_of::<libc::sockaddr_in>()];
                out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                out[2..4].copy_from_slice(&v4.port().to_be_bytes());
                out[4..8].copy_from_slice(&v4.ip().octets());
                out
            }
            SockAddr::Inet(SocketAddr::V6(v6)) => {
                let mut out = vec![0u8; std::mem::size_of::<libc::sockaddr_in6>()];
                out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                out[2..4].copy_from_slice(&v6.port().to_be_bytes());
                out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
                out[8..24].copy_from_slice(&v6.ip().octets());
                out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
                out
            }
        }
    }

    /// The service ID of a Serval address.
    pub(crate) fn service_id(&self) -> Option<ServiceId> {
        match self {
            SockAddr::Serval { id, .. } | SockAddr::ServalAt { id, .. } => {
                Some(ServiceId::from_bytes(*id))
            }
            SockAddr::Inet(_) => None,
        }
    }

    /// The IPv4 address that follows the service ID, if one does.
    pub(crate) fn at(&self) -> Option<Ipv4Addr> {
        match self {
            SockAddr::ServalAt { ip, .. } => Some(*ip),
            _ => None,
        }
    }

    /// The prefix `bind` registers: `sv_prefix_bits` 0 means the whole ID.
    pub(crate) fn prefix(&self) -> Option<ServicePrefix> {
        match self {
            SockAddr::Serval { bits, id, .. } => {
                let len = if *bits == 0 { 256 } else { u16::from(*bits) };
                Some(ServicePrefix::new(ServiceId::from_bytes(*id), len))
            }
            SockAddr::ServalAt { .. } | SockAddr::Inet(_) => None,
        }
    }

    /// The datagram peer packed into a reply address, if this is one.
    pub(crate) fn as_peer(&self) -> Option<DatagramPeer> {
        let SockAddr::Serval { flags, id, .. } = self else {
            return None;
        };
        if flags & SV_FLAG_PEER == 0 {
            return None;
        }
        let flow = FlowId::new(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))?;
        let ip = Ipv4Addr::new(id[5], id[6], id[7], id[8]);
        let port = u16::from_be_bytes([id[9], id[10]]);
        let locator = match id[4] {
            0 => Locator::Ipv4(ip),
            _ => Locator::Udp(SocketAddrV4::new(ip, port)),
        };
        Some(DatagramPeer {
            locator,
            flow,
            service: None,
        })
    }
}

/// The family field of a raw address (`EINVAL` if too short to have one).
pub(crate) fn family(bytes: &[u8]) -> Result<i32, AddrError> {
    match bytes.first_chunk::<2>() {
        Some(raw) => Ok(i32::from(u16::from_ne_bytes(*raw))),
        None => Err(libc::EINVAL),
    }
}

/// Parses a `sockaddr_sv`, and a `sockaddr_in` after it if the address is
/// long enough to hold one (the reference stack's advisory address):
/// `EAFNOSUPPORT` for another family, `EINVAL` for a short one.
pub(crate) fn parse_serval(bytes: &[u8]) -> Result<SockAddr, AddrError> {
    if family(bytes)? != AF_SERVAL {
        return Err(libc::EAFNOSUPPORT);
    }
    if bytes.len() < SOCKADDR_SV_LEN {
        return Err(libc::EINVAL);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[4..36]);
    let (flags, bits) = (bytes[2], bytes[3]);
    match parse_inet(&bytes[SOCKADDR_SV_LEN..]) {
        Some(SocketAddr::V4(at)) if flags & SV_FLAG_PEER == 0 => {
            Ok(SockAddr::ServalAt { id, ip: *at.ip() })
        }
        _ => Ok(SockAddr::Serval { flags, bits, id }),
    }
}

/// Parses an IPv4 or IPv6 socket address; `None` for anything else.
pub(crate) fn parse_inet(bytes: &[u8]) -> Option<SocketAddr> {
    let family = family(bytes).ok()?;
    if family == libc::AF_INET && bytes.len() >= std::mem::size_of::<libc::sockaddr_in>() {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
        return Some(SocketAddr::V4(SocketAddrV4::new(ip, port)));
    }
    if family == libc::AF_INET6 && bytes.len() >= std::mem::size_of::<libc::sockaddr_in6>() {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            port,
            0,
            0,
        )));
    }
    None
}

/// The inet address an accepted inet-mode connection appears to come from:
/// the peer host's IPv4 locator.
pub(crate) fn inet_peer(remote: Option<Ipv4Addr>, port: u16, family: i32) -> SockAddr {
    let ip = remote.unwrap_or(Ipv4Addr::UNSPECIFIED);
    if family == libc::AF_INET6 {
        SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
            ip.to_ipv6_mapped(),
            port,
            0,
            0,
        )))
    } else {
        SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }
}

/// Inet mode's configuration: which TCP ports are service IDs.
#[derive(Debug, Default)]
pub(crate) struct PortMap {
    ports: Vec<(u16, ServiceId)>,
    nets: Vec<(Ipv4Addr, u8)>,
}

impl PortMap {
    /// Parses `PORT=SERVICEID[,PORT=SERVICEID...]` and `CIDR[,CIDR...]`.
    pub(crate) fn parse(map: &str, nets: &str) -> Result<PortMap, String> {
        let mut out = PortMap::default();
        for item in map.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (port, id) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not PORT=SERVICEID"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{port:?} is not a port number"))?;
            let id: ServiceId = id
                .parse()
                .map_err(|e| format!("{id:?} is not a service ID: {e}"))?;
            out.ports.push((port, id));
        }
        for item in nets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (ip, len) = item.split_once('/').unwrap_or((item, "32"));
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("{item:?} is not an IPv4 CIDR"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{item:?} is not an IPv4 CIDR"))?;
            out.nets.push((ip, len));
        }
        Ok(out)
    }

    /// From the environment, once per process. A malformed map is reported
    /// once on stderr and then ignored (programs keep plain TCP).
    pub(crate) fn get() -> &'static PortMap {
        static MAP: std::sync::OnceLock<PortMap> = std::sync::OnceLock::new();
        MAP.get_or_init(|| {
            let map = std::env::var(MAP_ENV).unwrap_or_default();
            let nets = std::env::var(NET_ENV).unwrap_or_default();
            PortMap::parse(&map, &nets).unwrap_or_else(|e| {
                eprintln!("serval-shim: ignoring {MAP_ENV}/{NET_ENV}: {e}");
                PortMap::default()
            })
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The service a `bind` to `addr` registers.
    pub(crate) fn for_bind(&self, addr: &SocketAddr) -> Option<ServiceId> {
        self.ports
            .iter()
            .find(|(port, _)| *port == addr.port())
            .map(|(_, id)| *id)
    }

    /// The service a `connect` to `addr` reaches (within the ranges, if any).
    pub(crate) fn for_connect(&self, addr: &SocketAddr) -> Option<ServiceId> {
        let id = self.for_bind(addr)?;
        if self.nets.is_empty() {
            return Some(id);
        }
        let ip = match addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip.to_ipv4_mapped()?,
        };
        self.nets
            .iter()
            .any(|(net, len)| {
                let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(ip) & mask == u32::from(*net) & mask
            })
            .then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_sender() -> DatagramPeer {
        DatagramPeer {
            locator: Locator::Ipv4(Ipv4Addr::new(10, 77, 1, 1)),
            flow: FlowId::new(4).unwrap(),
            service: Some("0006".parse().unwrap()),
        }
    }

    #[test]
    fn a_sender_is_its_service_then_its_address_when_there_is_room() {
        let sender = SockAddr::sender(&reference_sender());
        let short = sender.encode_for(SOCKADDR_SV_LEN);
        assert_eq!(short.len(), SOCKADDR_SV_LEN, "sockaddr_sv alone");
        assert_eq!(family(&short), Ok(AF_SERVAL));
        assert_eq!((short[2], short[3]), (0, 0), "flags and prefix bits 0");
        assert_eq!(&short[4..8], &[0, 0x06, 0, 0], "the sender's service ID");
        let long = sender.encode_for(64);
        assert_eq!(long.len(), SOCKADDR_SV_IN_LEN);
        assert_eq!(&long[..SOCKADDR_SV_LEN], &short[..]);
        assert_eq!(
            parse_inet(&long[SOCKADDR_SV_LEN..]),
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(10, 77, 1, 1),
                0
            )))
        );
        // sendto takes both back: the service, at that address.
        let parsed = parse_serval(&long).unwrap();
        assert_eq!(parsed.service_id(), Some("0006".parse().unwrap()));
        assert_eq!(parsed.at(), Some(Ipv4Addr::new(10, 77, 1, 1)));
        assert_eq!(parse_serval(&short).unwrap().at(), None);
    }

    #[test]
    fn senders_without_a_service_get_a_reply_address() {
        let mut old = reference_sender();
        old.service = None;
        let reply = SockAddr::sender(&old);
        let bytes = reply.encode_for(64);
        assert_eq!(bytes.len(), SOCKADDR_SV_LEN);
        assert_eq!(parse_serval(&bytes).unwrap().as_peer(), Some(old));
    }
}
