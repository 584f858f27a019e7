//! Flushing a namespace's connection-tracking table (what `conntrack -F`
//! does), over netfilter's netlink interface, so that NAT tests can make a
//! NAT forget its mappings without the conntrack tool.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::{Error, Netns, Result};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`: a delete without
/// attributes deletes every entry.
const CT_DELETE: u16 = 1 << 8 | 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// Deletes every IPv4 connection-tracking entry in `ns`.
pub fn flush(ns: &Netns) -> Result<()> {
    ns.run(flush_here)?.map_err(|source| Error::Io {
        context: format!("flushing conntrack in {}", ns.name()),
        source,
    })
}

/// Deletes every IPv4 entry in the calling thread's namespace.
fn flush_here() -> io::Result<()> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    let kernel = NetlinkAddr::new(0, 0);
    bind(fd.as_raw_fd(), &kernel)?;
    // nlmsghdr (length, type, flags, sequence, port) then nfgenmsg
    // (family, version, resource id).
    let mut request = [0u8; 20];
    request[0..4].copy_from_slice(&20u32.to_ne_bytes());
    request[4..6].copy_from_slice(&CT_DELETE.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[16] = nix::libc::AF_INET as u8;
    sendto(fd.as_raw_fd(), &request, &kernel, MsgFlags::empty())?;
    let mut answer = [0u8; 256];
    let len = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
    if len < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("unexpected answer from ctnetlink"));
    }
    match i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}
