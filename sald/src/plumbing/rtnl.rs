//! A small synchronous rtnetlink client, used by the plumbing and by the
//! TUN device's set-up ([`crate::link`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::{nl_err, PlumbingError};
use super::messages::route_table;

/// A small synchronous rtnetlink client: the handful of link, address, rule
/// and route operations sald needs at start-up and shut-down.
///
/// Synchronous on purpose: plumbing is undone from `Drop` and from signal
/// handlers' aftermath, where no async runtime may be available, and every
/// call is a single request/response with the kernel. The socket belongs to
/// the network namespace of the thread that created it.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl").field("seq", &self.seq).finish()
    }
}

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket in the calling thread's namespace.
    pub fn new() -> Result<Rtnl, PlumbingError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("open socket"))?;
        sock.bind_auto().map_err(nl_err("bind socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect socket"))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects the replies: until the ACK for a
    /// plain request, until NLMSG_DONE for a dump.
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, PlumbingError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(nl_err(op))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = {
                let mut slice: &mut [u8] = &mut self.buf[..];
                self.sock
                    .recv(&mut slice, nix::libc::MSG_TRUNC)
                    .map_err(nl_err(op))?
            };
            if n > self.buf.len() {
                return Err(PlumbingError::Netlink {
                    op: op.to_owned(),
                    source: io::Error::other(format!("reply of {n} bytes truncated")),
                });
            }
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let chunk = &self.buf[off..n];
                let len = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
                let mtype = u16::from_ne_bytes([chunk[4], chunk[5]]);
                let mseq = u32::from_ne_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
                if len < NLMSG_HDRLEN || len > chunk.len() {
                    return Err(PlumbingError::Netlink {
                        op: op.to_owned(),
                        source: io::Error::other("malformed netlink reply"),
                    });
                }
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..len]) {
                    Ok(m) => match m.payload {
                        NetlinkPayload::Done(d) => {
                            if d.code != 0 {
                                return Err(PlumbingError::Netlink {
                                    op: op.to_owned(),
                                    source: io::Error::from_raw_os_error(d.code.abs()),
                                });
                            }
                            return Ok(replies);
                        }
                        NetlinkPayload::Error(e) => {
                            if e.code.is_some() {
                                return Err(PlumbingError::Netlink {
                                    op: op.to_owned(),
                                    source: e.to_io(),
                                });
                            }
                            if !dump {
                                return Ok(replies);
                            }
                        }
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    },
                    Err(e) if mtype == NLMSG_DONE || mtype == NLMSG_ERROR => {
                        return Err(PlumbingError::Netlink {
                            op: op.to_owned(),
                            source: io::Error::other(format!("undecodable reply: {e}")),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(%op, "skipping undecodable netlink message: {e}");
                    }
                }
            }
        }
    }

    /// The index of interface `name`, or `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, PlumbingError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(m),
            NLM_F_ACK,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the MTU and the transmit queue length (if given) and brings the
    /// link up (if `up`).
    pub fn set_link(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        queue_len: Option<u32>,
        up: bool,
    ) -> Result<(), PlumbingError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = vec![LinkFlag::Up];
            m.header.change_mask = vec![LinkFlag::Up];
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(len) = queue_len {
            m.attributes.push(LinkAttribute::TxQueueLen(len));
        }
        self.request(
            &format!("set link {index} mtu {mtu:?} txqueuelen {queue_len:?} up {up}"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// The IPv4 addresses (with prefix length) on interface `index`.
    pub fn ipv4_addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, PlumbingError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            });
            if let Some(v) = addr {
                out.push((v, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    pub(crate) fn rules_v4(&mut self) -> Result<Vec<RuleMessage>, PlumbingError> {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request("dump rules", RouteNetlinkMessage::GetRule(m), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRule(r) if r.header.family == AddressFamily::Inet => {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    pub(crate) fn add_rule(&mut self, op: &str, rule: RuleMessage) -> Result<(), PlumbingError> {
        self.request(
            op,
            RouteNetlinkMessage::NewRule(rule),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    pub(crate) fn del_rule(&mut self, op: &str, rule: RuleMessage) -> Result<(), PlumbingError> {
        self.request(op, RouteNetlinkMessage::DelRule(rule), NLM_F_ACK)?;
        Ok(())
    }

    pub(crate) fn routes_v4(&mut self, table: u32) -> Result<Vec<RouteMessage>, PlumbingError> {
        let mut routes = self.all_routes_v4()?;
        routes.retain(|r| route_table(r) == table);
        Ok(routes)
    }

    /// Every IPv4 route of every table (one dump).
    pub(crate) fn all_routes_v4(&mut self) -> Result<Vec<RouteMessage>, PlumbingError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let replies = self.request("dump routes", RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.address_family == AddressFamily::Inet =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    pub(crate) fn add_default_route(&mut self, table: u32, oif: u32) -> Result<(), PlumbingError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Table(table));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            &format!("add route default dev #{oif} table {table}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    pub(crate) fn add_route(&mut self, op: &str, route: RouteMessage) -> Result<(), PlumbingError> {
        self.request(
            op,
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    pub(crate) fn del_route(&mut self, op: &str, route: RouteMessage) -> Result<(), PlumbingError> {
        self.request(op, RouteNetlinkMessage::DelRoute(route), NLM_F_ACK)?;
        Ok(())
    }
}
