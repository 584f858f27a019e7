//! The system calls of the batched UDP path, and nothing else: `sendmmsg`
//! with a `UDP_SEGMENT` (GSO) and `IP_PKTINFO` control message per message,
//! `recvmmsg` reading `UDP_GRO` and `IP_PKTINFO` back, and the socket
//! options that turn those on. Everything unsafe of the UDP link is here;
//! `batch.rs` decides what goes into a call.
//!
//! Control messages are written and read at offsets computed here (the
//! kernel's `CMSG_ALIGN` rule) rather than with the `CMSG_NXTHDR` macros,
//! which read the next header's length from the buffer and so need zeroed
//! buffers to stay in bounds (quinn-udp's lesson).

use std::io;
use std::mem::{self, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::ptr;

use nix::libc;

/// Messages per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;
/// Messages per `recvmmsg` call.
pub const RECV_BATCH: usize = 32;
/// Segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// The largest UDP payload in IPv4 (65535 - 20 - 8), GSO batches included.
pub const MAX_PAYLOAD: usize = 65_507;
/// Bytes of control messages per message: two messages of at most 12 bytes
/// of data each, with their headers and padding.
const CONTROL_LEN: usize = 2 * (size_of::<libc::cmsghdr>() + 16);

/// A control-message buffer aligned like `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// `CMSG_ALIGN`: control messages start at multiples of `size_t`.
const fn cmsg_align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// `CMSG_SPACE(len)` for a message carrying `len` bytes of data.
const fn cmsg_space(len: usize) -> usize {
    cmsg_align(size_of::<libc::cmsghdr>()) + cmsg_align(len)
}

/// Writes one control message into `control` at `*offset`; returns false
/// (writing nothing) if it does not fit.
fn push_cmsg<T: Copy>(
    control: &mut Control,
    offset: &mut usize,
    level: i32,
    kind: i32,
    value: T,
) -> bool {
    let header = cmsg_align(size_of::<libc::cmsghdr>());
    if *offset + cmsg_space(size_of::<T>()) > CONTROL_LEN {
        return false;
    }
    // SAFETY: a zeroed `cmsghdr` is a valid value (integers and padding).
    let mut cmsg: libc::cmsghdr = unsafe { mem::zeroed() };
    cmsg.cmsg_len = (header + size_of::<T>()) as _;
    cmsg.cmsg_level = level;
    cmsg.cmsg_type = kind;
    let base = control.0.as_mut_ptr();
    // SAFETY: both writes stay inside `control` (checked just above) and
    // are unaligned writes of plain-old-data values.
    unsafe {
        ptr::write_unaligned(base.add(*offset).cast::<libc::cmsghdr>(), cmsg);
        ptr::write_unaligned(base.add(*offset + header).cast::<T>(), value);
    }
    *offset += cmsg_space(size_of::<T>());
    true
}

/// What the control messages of a received message said.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    /// `UDP_GRO`: the size of each coalesced segment but the last.
    stride: Option<usize>,
    /// `IP_PKTINFO`: the address the datagram was sent to.
    dst: Option<Ipv4Addr>,
}

/// Reads the control messages the kernel wrote into `control[..len]`.
fn read_cmsgs(control: &Control, len: usize) -> Received {
    let header = cmsg_align(size_of::<libc::cmsghdr>());
    let len = len.min(CONTROL_LEN);
    let base = control.0.as_ptr();
    let mut received = Received::default();
    let mut offset = 0;
    while offset + header <= len {
        // SAFETY: `offset + header <= len <= CONTROL_LEN`: the header lies
        // inside the buffer; an unaligned read of plain old data.
        let cmsg: libc::cmsghdr = unsafe { ptr::read_unaligned(base.add(offset).cast()) };
        let cmsg_len = cmsg.cmsg_len as usize;
        if cmsg_len < header || offset + cmsg_len > len {
            break;
        }
        let data = offset + header;
        let data_len = cmsg_len - header;
        match (cmsg.cmsg_level, cmsg.cmsg_type) {
            (libc::SOL_UDP, libc::UDP_GRO) if data_len >= size_of::<libc::c_int>() => {
                // SAFETY: the data lies inside the buffer (checked above).
                let size: libc::c_int = unsafe { ptr::read_unaligned(base.add(data).cast()) };
                received.stride = usize::try_from(size).ok().filter(|s| *s > 0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data_len >= size_of::<libc::in_pktinfo>() => {
                // SAFETY: as above.
                let info: libc::in_pktinfo = unsafe { ptr::read_unaligned(base.add(data).cast()) };
                received.dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
            }
            _ => {}
        }
        offset += cmsg_align(cmsg_len);
    }
    received
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: a zeroed `sockaddr_in` is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

/// One message for [`send`]: `payload` to `dst`, from `src` if given (the
/// socket must be bound to the unspecified address for that), cut by the
/// kernel into segments of `segment` bytes if given (GSO).
#[derive(Debug, Clone, Copy)]
pub struct SendMessage<'a> {
    pub payload: &'a [u8],
    pub dst: SocketAddrV4,
    pub src: Option<Ipv4Addr>,
    pub segment: Option<u16>,
}

/// Sends up to [`SEND_BATCH`] of `messages` with one `sendmmsg`; returns
/// how many went (the first ones). An error means the first one failed.
pub fn send(fd: RawFd, messages: &[SendMessage<'_>]) -> io::Result<usize> {
    let count = messages.len().min(SEND_BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: zeroed `mmsghdr`, `iovec` and `sockaddr_in` are valid values
    // (integers and null pointers).
    let mut headers: [libc::mmsghdr; SEND_BATCH] = unsafe { mem::zeroed() };
    let mut iovecs: [libc::iovec; SEND_BATCH] = unsafe { mem::zeroed() };
    let mut names: [libc::sockaddr_in; SEND_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control([0; CONTROL_LEN]); SEND_BATCH];
    for (i, message) in messages[..count].iter().enumerate() {
        names[i] = sockaddr(message.dst);
        iovecs[i] = libc::iovec {
            iov_base: message.payload.as_ptr() as *mut libc::c_void,
            iov_len: message.payload.len(),
        };
        let mut used = 0;
        if let Some(segment) = message.segment {
            push_cmsg(
                &mut controls[i],
                &mut used,
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                segment,
            );
        }
        if let Some(src) = message.src {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(src).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            push_cmsg(
                &mut controls[i],
                &mut used,
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                info,
            );
        }
        let header = &mut headers[i].msg_hdr;
        header.msg_name = ptr::addr_of_mut!(names[i]).cast();
        header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_iov = ptr::addr_of_mut!(iovecs[i]);
        header.msg_iovlen = 1;
        if used > 0 {
            header.msg_control = controls[i].0.as_mut_ptr().cast();
            header.msg_controllen = used as _;
        }
    }
    loop {
        // SAFETY: `headers[..count]` point at names, iovecs and control
        // buffers that live on this stack frame for the whole call, and at
        // payloads borrowed from `messages`; the kernel only reads them
        // (and writes `msg_len`).
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// What [`recv`] learned about one received message.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Bytes received into the message's buffer.
    pub len: usize,
    /// Who sent it (`None`: not an IPv4 sender).
    pub src: Option<SocketAddrV4>,
    /// The address it was sent to (`IP_PKTINFO`), if known.
    pub dst: Option<Ipv4Addr>,
    /// Bytes of each datagram the kernel coalesced into it (GRO), all but
    /// the last; `len` when it is one datagram.
    pub stride: usize,
    /// The buffer was too small: the message is cut and must be dropped.
    pub truncated: bool,
}

impl RecvMeta {
    pub const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        src: None,
        dst: None,
        stride: 0,
        truncated: false,
    };
}

/// Receives up to [`RECV_BATCH`] messages with one non-blocking
/// `recvmmsg`, message `i` into `buffer[i * slot..(i + 1) * slot]`, its
/// metadata into `meta[i]`; returns how many arrived.
pub fn recv(fd: RawFd, buffer: &mut [u8], slot: usize, meta: &mut [RecvMeta]) -> io::Result<usize> {
    let count = meta.len().min(RECV_BATCH).min(buffer.len() / slot.max(1));
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: as in `send`, zeroed headers and addresses are valid values.
    let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { mem::zeroed() };
    let mut iovecs: [libc::iovec; RECV_BATCH] = unsafe { mem::zeroed() };
    let mut names: [libc::sockaddr_in; RECV_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control([0; CONTROL_LEN]); RECV_BATCH];
    for (i, chunk) in buffer.chunks_exact_mut(slot).take(count).enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: chunk.len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_name = ptr::addr_of_mut!(names[i]).cast();
        header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_iov = ptr::addr_of_mut!(iovecs[i]);
        header.msg_iovlen = 1;
        header.msg_control = controls[i].0.as_mut_ptr().cast();
        header.msg_controllen = CONTROL_LEN as _;
    }
    let received = loop {
        // SAFETY: every header points at a distinct `slot`-byte chunk of
        // `buffer` (exclusively borrowed for the call) and at a name and a
        // control buffer on this stack frame, each of the size given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    for i in 0..received {
        let header = &headers[i].msg_hdr;
        let len = (headers[i].msg_len as usize).min(slot);
        let control = read_cmsgs(&controls[i], header.msg_controllen as usize);
        let src = (names[i].sin_family == libc::AF_INET as libc::sa_family_t).then(|| {
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr)),
                u16::from_be(names[i].sin_port),
            )
        });
        meta[i] = RecvMeta {
            len,
            src,
            dst: control.dst,
            stride: control.stride.unwrap_or(len).max(1),
            truncated: header.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(received)
}

/// Sets an integer socket option.
fn set_option(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live `c_int` and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::addr_of!(value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads an integer socket option.
fn get_option(fd: RawFd, level: i32, name: i32) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for an integer option.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, ptr::addr_of_mut!(value).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel takes `UDP_SEGMENT` on this socket (GSO, Linux 4.18).
/// Probed by setting it as the socket's default and clearing it again, so
/// that only messages that ask for it (by control message) are segmented.
pub fn probe_gso(fd: RawFd) -> bool {
    if set_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 1400).is_err() {
        return false;
    }
    set_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// Asks for coalesced receives (`UDP_GRO`, Linux 5.0); whether granted.
pub fn enable_gro(fd: RawFd) -> bool {
    set_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Turns UDP GRO off (a socket passed in may have it on from an earlier
/// run; best effort: a kernel without GRO has it off anyway).
pub fn disable_gro(fd: RawFd) {
    let _ = set_option(fd, libc::SOL_UDP, libc::UDP_GRO, 0);
}

/// Asks for each datagram's destination address (`IP_PKTINFO`).
pub fn enable_pktinfo(fd: RawFd) -> io::Result<()> {
    set_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

/// Asks for the ICMP errors about the datagrams sent (`IP_RECVERR`):
/// queued on the socket's error queue, and reported once on the next send
/// or receive. Whether granted.
pub fn enable_recverr(fd: RawFd) -> bool {
    set_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1).is_ok()
}

/// Whether the socket has room for a datagram now (`poll` for `POLLOUT`,
/// without waiting).
pub fn has_room(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live `pollfd`, and its count; no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & libc::POLLOUT != 0
}

/// Which socket buffer: receive or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Receive,
    Send,
}

/// Sets a socket buffer to `bytes`: past the system's maximum
/// (`net.core.rmem_max`, `wmem_max`) where the process may
/// (`CAP_NET_ADMIN`), else as far as that maximum allows. Returns the size
/// the kernel reports afterwards (it doubles what it was given, for its own
/// bookkeeping).
pub fn set_buffer(fd: RawFd, which: Buffer, bytes: usize) -> io::Result<usize> {
    let (normal, force) = match which {
        Buffer::Receive => (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        Buffer::Send => (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
    };
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if set_option(fd, libc::SOL_SOCKET, force, value).is_err() {
        set_option(fd, libc::SOL_SOCKET, normal, value)?;
    }
    get_option(fd, libc::SOL_SOCKET, normal).map(|v| usize::try_from(v).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_at_aligned_offsets() {
        let mut control = Control([0; CONTROL_LEN]);
        let mut used = 0;
        assert!(push_cmsg(
            &mut control,
            &mut used,
            libc::SOL_UDP,
            libc::UDP_GRO,
            1448 as libc::c_int
        ));
        let info = libc::in_pktinfo {
            ipi_ifindex: 3,
            ipi_spec_dst: libc::in_addr { s_addr: 0 },
            ipi_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(10, 1, 0, 2)).to_be(),
            },
        };
        assert!(push_cmsg(
            &mut control,
            &mut used,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            info
        ));
        assert_eq!(used, cmsg_space(4) + cmsg_space(12));
        assert!(used <= CONTROL_LEN);
        let read = read_cmsgs(&control, used);
        assert_eq!(read.stride, Some(1448));
        assert_eq!(read.dst, Some(Ipv4Addr::new(10, 1, 0, 2)));
        // A third does not fit and writes nothing.
        let before = used;
        assert!(!push_cmsg(&mut control, &mut used, 0, 0, [0u8; 16]));
        assert_eq!(used, before);
    }

    #[test]
    fn malformed_control_messages_end_the_walk() {
        let mut control = Control([0; CONTROL_LEN]);
        // A length shorter than a header, then one running past the end.
        control.0[0] = 1;
        assert_eq!(read_cmsgs(&control, CONTROL_LEN).stride, None);
        let mut used = 0;
        push_cmsg(
            &mut control,
            &mut used,
            libc::SOL_UDP,
            libc::UDP_GRO,
            9 as libc::c_int,
        );
        let header = cmsg_align(size_of::<libc::cmsghdr>());
        assert_eq!(read_cmsgs(&control, header + 3).stride, None, "cut short");
        assert_eq!(read_cmsgs(&control, used).stride, Some(9));
    }
}
