//! Moving bytes between applications' socketpairs and the host's flows.
//!
//! Each flow handed to an application gets one task. For a stream it runs two
//! loops side by side: *up* reads what the application wrote, as much as the
//! flow's send buffer has room for (so a slow network slows the writer), and
//! *down* writes what the flow received, reading more from the host only when
//! the application took the last chunk (so a slow reader closes the TCP
//! window). End of file on the socketpair is a half-close of the flow and
//! vice versa; the flow is closed when both directions are done.
//!
//! When the daemon stops, every pump drops its end of the socketpair (the
//! application reads end of file) and closes its flow, which tells the peer.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::socket::{recv, send, MsgFlags};
use sal::proto::{ConnectError, HostError};
use sal::FlowId;
use sal_control::DatagramFrame;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::daemon::{FlowSignal, Shared};
use crate::shutdown::Shutdown;

const CHUNK: usize = 64 * 1024;

/// Serves one stream flow until both directions are finished (or the daemon
/// stops), then closes it.
pub async fn stream(
    shared: Arc<Shared>,
    flow: FlowId,
    signal: Arc<FlowSignal>,
    socket: UnixStream,
    mut shutdown: Shutdown,
) {
    let (reader, mut writer) = socket.into_split();
    // Once nothing more can come down (end of stream, or the flow failed),
    // the up direction also watches the flow, so that a flow reset while
    // the application is silent still ends the pump (and frees the flow).
    let down_finished = AtomicBool::new(false);
    let down_done = Notify::new();
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let room = {
                let mut core = shared.lock();
                core.host.send_room(flow)
            };
            let room = match room {
                Ok(0) => {
                    signal.up.notified().await;
                    continue;
                }
                Ok(room) => room.min(CHUNK),
                Err(_) => return,
            };
            let watch_flow = down_finished.load(Ordering::Acquire);
            let readable = tokio::select! {
                readable = reader.readable() => readable,
                () = down_done.notified(), if !watch_flow => continue,
                () = signal.up.notified(), if watch_flow => continue,
            };
            if readable.is_err() {
                return;
            }
            match reader.try_read(&mut buf[..room]) {
                Ok(0) => {
                    let mut core = shared.lock();
                    let _ = core.host.shutdown(flow);
                    core.run();
                    return;
                }
                Ok(n) => {
                    let mut core = shared.lock();
                    let result = core.host.send(flow, &buf[..n]);
                    core.run();
                    match result {
                        Ok(written) if written == n => {}
                        // The room was measured under the same lock a moment
                        // ago, so a short write means the flow is going away.
                        Ok(_) | Err(_) => return,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let down_until_done = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let received = {
                let mut core = shared.lock();
                let result = core.host.recv(flow, &mut buf);
                if matches!(result, Ok(n) if n > 0) {
                    core.run();
                }
                result
            };
            match received {
                Ok(0) => {
                    let _ = writer.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if writer.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(HostError::WouldBlock) => signal.down.notified().await,
                Err(_) => return,
            }
        }
    };
    let down = async {
        down_until_done.await;
        down_finished.store(true, Ordering::Release);
        down_done.notify_one();
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = shutdown.recv() => {}
    }
    let mut core = shared.lock();
    let _ = core.host.close(flow);
    core.run();
}

/// A SOCK_SEQPACKET socket registered with the runtime.
struct Packets(AsyncFd<OwnedFd>);

impl Packets {
    fn new(fd: OwnedFd) -> io::Result<Packets> {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: `OwnedFd` keeps its descriptor open and unchanged until it
        // is dropped, which happens only when the `AsyncFd` is dropped.
        let registered = unsafe { AsyncFd::register(fd) };
        Ok(Packets(registered.map_err(io::Error::from)?))
    }

    /// Receives one message; `Ok(0)` is end of file.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| Ok(recv(fd.as_raw_fd(), buf, MsgFlags::empty())?)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one message, waiting for room.
    async fn send(&self, message: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| Ok(send(fd.as_raw_fd(), message, MsgFlags::MSG_NOSIGNAL)?)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Serves an unconnected datagram socket: frames from the app are sent to
/// services or peers, datagrams from the host go to the app as frames.
/// `owned` sockets (opened with OpenDatagram) are closed when the app closes
/// its end; a listener's socket lives as long as the listener.
pub async fn datagram_socket(
    shared: Arc<Shared>,
    socket: FlowId,
    signal: Arc<FlowSignal>,
    fd: OwnedFd,
    owned: bool,
    mut shutdown: Shutdown,
) {
    let Ok(packets) = Packets::new(fd) else {
        return;
    };
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match packets.recv(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut core = shared.lock();
            let result = match DatagramFrame::decode(&buf[..n]) {
                Ok(DatagramFrame::SendTo {
                    service,
                    via: None,
                    data,
                }) => core.host.send_to(socket, service, &data),
                Ok(DatagramFrame::SendTo {
                    service,
                    via: Some(via),
                    data,
                }) => core.host.send_to_via(socket, service, via, &data),
                Ok(DatagramFrame::Reply { peer, data }) => {
                    core.host.send_reply(socket, peer, &data)
                }
                Ok(DatagramFrame::Received { .. } | DatagramFrame::Refused) | Err(_) => {
                    tracing::debug!(%socket, "bad datagram frame from application");
                    continue;
                }
            };
            if let Err(error) = result {
                tracing::debug!(%socket, %error, "datagram not sent");
            }
            core.run();
        }
    };
    let down = async {
        loop {
            let received = shared.lock().host.recv_from(socket);
            let frame = match received {
                Ok(datagram) => DatagramFrame::Received {
                    peer: datagram.peer,
                    service: datagram.service,
                    data: datagram.data,
                },
                Err(HostError::Connect(ConnectError::Refused)) => DatagramFrame::Refused,
                Err(HostError::WouldBlock) => {
                    signal.down.notified().await;
                    continue;
                }
                Err(_) => return,
            };
            if packets.send(&frame.encode()).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending means the app is gone (or the socket closed).
    tokio::select! {
        () = up => {}
        () = down => {}
        () = shutdown.recv() => {}
    }
    let mut core = shared.lock();
    core.disown(socket);
    if owned {
        let _ = core.host.close_datagram(socket);
    }
}

/// Serves a connected datagram flow: one message per datagram both ways.
/// Either side may finish first, as with the reference stack's FINs: the
/// application shutting down its sending side (or closing its end) sends
/// our FIN, and datagrams still come down until the peer's FIN, which is
/// end of file for the application (its end of the socketpair is shut down
/// for reading); it may go on sending after that. The pump ends when both
/// directions are done, or the flow is gone.
pub async fn datagram_flow(
    shared: Arc<Shared>,
    flow: FlowId,
    signal: Arc<FlowSignal>,
    fd: OwnedFd,
    mut shutdown: Shutdown,
) {
    let Ok(packets) = Packets::new(fd) else {
        return;
    };
    let up_finished = AtomicBool::new(false);
    let up_done = Notify::new();
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match packets.recv(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut core = shared.lock();
            if let Err(error) = core.host.send_datagram(flow, &buf[..n]) {
                tracing::debug!(%flow, %error, "datagram not sent");
            }
            core.run();
        }
        // Nothing more to send: our FIN.
        let mut core = shared.lock();
        let _ = core.host.shutdown(flow);
        core.run();
        up_finished.store(true, Ordering::Release);
        up_done.notify_one();
    };
    let down = async {
        loop {
            let received = shared.lock().host.recv_datagram(flow);
            match received {
                Ok(Some(data)) => {
                    if packets.send(&data).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // End of file for the application; it may still send.
                    let _ = nix::sys::socket::shutdown(
                        packets.0.get_ref().as_raw_fd(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    if !up_finished.load(Ordering::Acquire) {
                        up_done.notified().await;
                    }
                    return;
                }
                Err(HostError::WouldBlock) => signal.down.notified().await,
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = shutdown.recv() => {}
    }
    let mut core = shared.lock();
    let _ = core.host.close(flow);
    core.run();
}
