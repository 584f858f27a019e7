//! Who else receives on a UDP port: the UDP sockets of the calling
//! thread's network namespace, with their owners, as the kernel lists them
//! in `/proc/thread-self/net/udp` and `udp6` (readable by every user, with
//! every socket's owner and inode, where `sock_diag` would need a netlink
//! socket and a parser of its own for the same facts).
//!
//! Why it matters (the relay's "whose port", `control/cmd/relay.rs`): Linux
//! lets several UDP sockets bind one port when all of them set
//! `SO_REUSEADDR` at bind time, whoever owns them (it checks the user only
//! for `SO_REUSEPORT`), and then the newest socket with the most specific
//! binding receives the port's unicast datagrams: one bound to the
//! address over one bound to any address, the later of two bound alike.
//! An IPv6 socket bound to `::` without `IPV6_V6ONLY` shares IPv4 ports the
//! same way. `sald/tests/relay.rs` (`linux_lets_any_user_share_a_udp_port_
//! only_through_so_reuseaddr`) pins this down.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Where a UDP socket is bound, as far as receiving IPv4 datagrams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// An IPv4 socket's address (unspecified: any).
    V4(Ipv4Addr),
    /// An IPv6 socket's address (unspecified: any, IPv4 included unless the
    /// socket is `IPV6_V6ONLY`, which the table does not say).
    V6(Ipv6Addr),
}

/// One UDP socket of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSocketEntry {
    /// Its local address.
    pub bound: Bound,
    /// Its local port.
    pub port: u16,
    /// Its owner (the user that created it), as seen from sald's user
    /// namespace.
    pub uid: u32,
    /// Its inode: `fstat` of a descriptor of it gives the same number.
    pub inode: u64,
}

impl UdpSocketEntry {
    /// Whether this socket may be handed IPv4 datagrams sent to `addr`
    /// (at its port): bound there or to any address, over IPv4 or IPv6
    /// (conservatively: an IPv6 `::` socket may be `IPV6_V6ONLY`).
    pub fn may_receive(&self, addr: Ipv4Addr) -> bool {
        match self.bound {
            Bound::V4(ip) => ip.is_unspecified() || ip == addr,
            Bound::V6(ip) => ip.is_unspecified() || ip.to_ipv4_mapped() == Some(addr),
        }
    }
}

/// The UDP sockets (IPv4 and IPv6) of the calling thread's network
/// namespace bound to `port`. The calling thread's, not the process's: a
/// thread may have entered a namespace of its own (tests do).
pub fn bound_to(port: u16) -> io::Result<Vec<UdpSocketEntry>> {
    let mut found = Vec::new();
    for table in ["udp", "udp6"] {
        let path = format!("/proc/thread-self/net/{table}");
        match std::fs::read_to_string(&path) {
            Ok(text) => found.extend(parse_table(&text).filter(|e| e.port == port)),
            // A kernel without IPv6 has no udp6 table.
            Err(error) if table == "udp6" && error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(found)
}

/// The entries of one `/proc/net/udp` or `udp6` table (a header line,
/// then one socket a line: `sl local_address rem_address st ... uid
/// timeout inode ...`); lines that do not parse are skipped.
pub fn parse_table(text: &str) -> impl Iterator<Item = UdpSocketEntry> + '_ {
    text.lines().skip(1).filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<UdpSocketEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (address, port) = fields.get(1)?.split_once(':')?;
    let bound = parse_address(address)?;
    Some(UdpSocketEntry {
        bound,
        port: u16::from_str_radix(port, 16).ok()?,
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// The kernel prints an address as its 32-bit words, each in the host's
/// byte order, in hex: 127.0.0.1 is `0100007F` on a little-endian machine.
fn parse_address(hex: &str) -> Option<Bound> {
    let word = |i: usize| {
        let digits = hex.get(i * 8..i * 8 + 8)?;
        u32::from_str_radix(digits, 16).ok().map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(Bound::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(Bound::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn the_kernels_tables_parse() {
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 8399: 0100007F:1005 00000000:0000 07 00000000:00000000 00:00000000 00000000  2000        0 2428651 2 0000000084d4c436 0\n\
 8399: 00000000:1005 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 2428650 2 00000000a0c8897e 0\n\
 garbage\n";
        let entries: Vec<_> = parse_table(udp).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(
                entries[0],
                UdpSocketEntry {
                    bound: Bound::V4(Ipv4Addr::LOCALHOST),
                    port: 4101,
                    uid: 2000,
                    inode: 2_428_651,
                }
            );
            let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 1: 0000000000000000FFFF00000100007F:1005 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0\n";
            let mapped = parse_table(udp6).next().unwrap();
            assert_eq!(
                mapped.bound,
                Bound::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())
            );
            assert!(mapped.may_receive(Ipv4Addr::LOCALHOST));
            assert!(!mapped.may_receive(Ipv4Addr::new(10, 0, 0, 1)));
        }
        assert_eq!(entries.len(), 2, "the header and garbage are skipped");
        assert_eq!(entries[1].bound, Bound::V4(Ipv4Addr::UNSPECIFIED));
        assert!(entries[1].may_receive(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn a_socket_of_ours_is_listed_with_its_inode_and_owner() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let inode = nix::sys::stat::fstat(socket.as_raw_fd()).unwrap().st_ino;
        let entries = bound_to(port).unwrap();
        let ours = entries.iter().find(|e| e.inode == inode).expect("listed");
        assert_eq!(ours.bound, Bound::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(ours.uid, nix::unistd::geteuid().as_raw());
    }
}
