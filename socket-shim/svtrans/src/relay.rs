//! Carrying one connection: both directions, half-close, errors.
//!
//! Each direction waits until its source is readable holding no pipe, then
//! moves what is there with `splice(2)` through a pipe borrowed from the
//! [`PipePool`] (or, when none is free, with `read`/`write` through a
//! buffer), and waits again. The two directions run on two threads that
//! share the two sockets (no duplicated descriptors): an idle connection
//! costs exactly its two sockets.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use socket_shim::reset::Mark;

use crate::pipes::{PipePool, CHUNK};

/// Bytes copied at a time when no pipe is free.
const COPY_BUFFER: usize = 64 * 1024;

fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `splice(2)` call. Never with `SPLICE_F_MORE`: into a TCP socket it
/// means `MSG_MORE`, which corks whatever is spliced until more comes or the
/// kernel's 200 ms cork timer fires, and a request/response protocol sends
/// nothing more until it has its answer.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: null offsets (sockets and pipes have none); no other pointers.
        check(unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        })
    })
}

/// Blocks until `fd` is readable (or at end of file, or in error).
fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    retry_interrupted(|| {
        // SAFETY: one valid pollfd, and its count.
        check(unsafe { libc::poll(&mut poll, 1, -1) } as isize)
    })?;
    Ok(())
}

/// Moves what `from` has now to `to` through `pipe`; 0 at end of file.
fn splice_once(from: RawFd, to: RawFd, pipe: &crate::pipes::Pipe) -> io::Result<usize> {
    let n = splice(from, pipe.write_end(), CHUNK)?;
    let mut left = n;
    while left > 0 {
        let m = splice(pipe.read_end(), to, left)?;
        if m == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        left -= m;
    }
    Ok(n)
}

/// Moves what `from` has now to `to` through `buf`; 0 at end of file.
fn copy_once(from: RawFd, to: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = retry_interrupted(|| {
        // SAFETY: `buf` is valid for writes of its length.
        check(unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) })
    })?;
    let mut done = 0;
    while done < n {
        let m = retry_interrupted(|| {
            // SAFETY: `buf[done..n]` is initialised and valid for reads.
            check(unsafe { libc::write(to, buf[done..n].as_ptr().cast(), n - done) })
        })?;
        if m == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += m;
    }
    Ok(n)
}

/// Moves bytes from `from` to `to` until end of file.
fn pump(from: RawFd, to: RawFd, pipes: &PipePool) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        wait_readable(from)?;
        let moved = match pipes.take() {
            Some(pipe) => match splice_once(from, to, &pipe) {
                Ok(n) => {
                    pipes.give(pipe);
                    n
                }
                Err(error) => {
                    pipes.discard(pipe);
                    return Err(error);
                }
            },
            None => {
                if buf.is_empty() {
                    buf.resize(COPY_BUFFER, 0);
                }
                copy_once(from, to, &mut buf)?
            }
        };
        if moved == 0 {
            return Ok(total);
        }
        total += moved as u64;
    }
}

/// What one direction does when it ends: half-close its destination at end
/// of file; on an error, shut both sockets down so the other direction
/// ends too.
fn finish(result: &io::Result<u64>, to_write_side: impl FnOnce(), both: impl FnOnce()) {
    match result {
        Ok(_) => to_write_side(),
        Err(_) => both(),
    }
}

/// Carries a TCP connection and a flow until both directions end.
///
/// A flow that was reset (see `socket_shim::reset`: end of file with a
/// hang-up while we still send on it) resets the TCP connection when the
/// caller closes it, once what the flow delivered is through, rather than
/// finishing it as if that were all. A reset also makes our writes into
/// the flow fail: that direction then just stops, leaving the other to
/// deliver the rest and reset the client. A reset after the flow's end of
/// stream (which sald marks: `socket_shim::reset::mark`) finishes
/// the TCP connection with a FIN instead, as a TCP socket's reads give 0
/// once its FIN came, whatever follows; sald's reset mark tells a reset
/// also after this side shut the flow's writing down (a finished flow
/// hangs up then too).
pub fn relay(tcp: &TcpStream, flow: &UnixStream, pipes: &PipePool) -> io::Result<()> {
    let shut_both = || {
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = flow.shutdown(Shutdown::Both);
    };
    // Set before this side shuts the flow's writing down, which makes a
    // finished flow hang up too.
    let forward_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let back = std::thread::Builder::new()
            .name("relay".into())
            .spawn_scoped(scope, || {
                let result = pump(flow.as_raw_fd(), tcp.as_raw_fd(), pipes);
                // The hang-up first, then sald's mark and whether it may be
                // our own doing (see `socket_shim::reset` for why in this
                // order).
                let reset = result.is_ok()
                    && socket_shim::reset::hung_up(flow.as_fd())
                    && match socket_shim::reset::mark(flow.as_fd()) {
                        Mark::Ended => false,
                        Mark::Reset => true,
                        Mark::None => !forward_done.load(Ordering::SeqCst),
                    };
                if reset {
                    reset_on_close(tcp);
                    // Ends the other direction without a FIN.
                    let _ = tcp.shutdown(Shutdown::Read);
                    return result;
                }
                finish(
                    &result,
                    || {
                        let _ = tcp.shutdown(Shutdown::Write);
                    },
                    shut_both,
                );
                result
            })?;
        let mut forward = pump(tcp.as_raw_fd(), flow.as_raw_fd(), pipes);
        if forward.is_err() && socket_shim::reset::hung_up(flow.as_fd()) {
            // The flow was reset under our writes: the other direction
            // delivers what came and resets the client.
            forward = Ok(0);
        } else {
            forward_done.store(true, Ordering::SeqCst);
            finish(
                &forward,
                || {
                    let _ = flow.shutdown(Shutdown::Write);
                },
                shut_both,
            );
        }
        let backward = back
            .join()
            .map_err(|_| io::Error::other("relay thread panicked"))?;
        forward?;
        backward?;
        Ok(())
    })
}

/// Makes closing `tcp` send a reset, so that a refused client knows at
/// once, and one whose flow was reset does not take what it got for all.
pub fn reset_on_close(tcp: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct and its size, on a socket we own.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A relay's two sockets and their far ends: (the TCP socket the relay
    /// carries, its peer; the flow socket the relay carries, its peer).
    fn sockets() -> ((TcpStream, TcpStream), (UnixStream, UnixStream)) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        ((tcp, peer), UnixStream::pair().unwrap())
    }

    /// Small request/response exchanges, as a memcached client makes them
    /// through `svtrans egress`: each request is relayed into the TCP
    /// socket at once. Splicing into TCP with `SPLICE_F_MORE` corked every
    /// request for the kernel's 200 ms cork timeout (memcached operations
    /// took 420 ms); 200 exchanges take well under a second when nothing
    /// holds them back.
    #[test]
    fn small_exchanges_are_relayed_without_delay() {
        const EXCHANGES: usize = 200;
        for max_pipes in [4, 0] {
            let pipes = PipePool::new(max_pipes);
            let ((tcp, mut server), (flow, mut client)) = sockets();
            std::thread::scope(|scope| {
                let relay = scope.spawn(|| relay(&tcp, &flow, &pipes));
                let answer = scope.spawn(move || {
                    let mut request = [0u8; 20];
                    for _ in 0..EXCHANGES {
                        server.read_exact(&mut request).unwrap();
                        server.write_all(b"END\r\n").unwrap();
                    }
                });
                let started = std::time::Instant::now();
                for i in 0..EXCHANGES {
                    client.write_all(&[i as u8; 20]).unwrap();
                    let mut response = [0u8; 5];
                    client.read_exact(&mut response).unwrap();
                    assert_eq!(&response, b"END\r\n");
                }
                let took = started.elapsed();
                answer.join().unwrap();
                client.shutdown(Shutdown::Write).unwrap();
                relay.join().unwrap().unwrap();
                assert!(
                    took < std::time::Duration::from_secs(1),
                    "max_pipes {max_pipes}: {EXCHANGES} exchanges took {took:?}"
                );
            });
        }
    }

    /// A flow that sald reset (its socket shut down both ways once what had
    /// arrived was through) resets the TCP connection: the client reads
    /// the bytes, then `ECONNRESET`, never a clean end of file. A finished
    /// flow (shut down for writing only) still ends with a FIN.
    #[test]
    fn a_reset_flow_resets_the_tcp_connection() {
        for (how, reset) in [(Shutdown::Both, true), (Shutdown::Write, false)] {
            let pipes = PipePool::new(4);
            let ((tcp, mut client), (flow, service)) = sockets();
            std::thread::scope(|scope| {
                let relay = scope.spawn(|| relay(&tcp, &flow, &pipes));
                (&service).write_all(b"partial answer").unwrap();
                service.shutdown(how).unwrap();
                let mut got = [0u8; 14];
                client.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"partial answer");
                if !reset {
                    client.shutdown(Shutdown::Write).unwrap();
                }
                relay.join().unwrap().unwrap();
            });
            drop(tcp);
            let end = client.read(&mut [0u8; 16]);
            match reset {
                true => assert_eq!(
                    end.map_err(|e| e.kind()),
                    Err(io::ErrorKind::ConnectionReset)
                ),
                false => assert_eq!(end.unwrap(), 0, "a clean end of file"),
            }
        }
    }

    /// A reset after the flow's end of stream, which sald marks before it
    /// hangs the flow's socket up (it binds its end to an address), ends
    /// the TCP connection with a FIN, as the reset reads from a TCP socket
    /// whose FIN came first: the client reads the bytes, then end of file.
    #[test]
    fn a_reset_after_the_flows_end_finishes_the_tcp_connection() {
        let pipes = PipePool::new(4);
        let ((tcp, mut client), (flow, service)) = sockets();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        std::thread::scope(|scope| {
            // The relay's caller closes the TCP socket once it is done.
            let relay = scope.spawn(|| {
                let result = relay(&tcp, &flow, &pipes);
                drop(tcp);
                result
            });
            // sald: the answer and its end, the mark, then the reset.
            (&service).write_all(b"partial answer").unwrap();
            service.shutdown(Shutdown::Write).unwrap();
            let unnamed = libc::sockaddr_un {
                sun_family: libc::AF_UNIX as libc::sa_family_t,
                sun_path: [0; 108],
            };
            // SAFETY: the address's family alone (an autobind), from a
            // local that outlives the call.
            let bound = unsafe {
                libc::bind(
                    service.as_raw_fd(),
                    std::ptr::addr_of!(unnamed).cast(),
                    std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                )
            };
            assert_eq!(bound, 0, "the mark");
            service.shutdown(Shutdown::Both).unwrap();
            let mut got = Vec::new();
            let end = client.read_to_end(&mut got);
            assert_eq!(got, b"partial answer");
            assert_eq!(end.map_err(|e| e.kind()), Ok(got.len()), "a FIN");
            client.shutdown(Shutdown::Write).unwrap();
            relay.join().unwrap().unwrap();
        });
    }

    /// A reset while the client is still sending: our writes into the flow
    /// fail with `EPIPE`, and that must not end the connection as if it
    /// were whole. The client reads a prefix of what the flow delivered
    /// (closing a socket with a reset drops what it had not sent yet),
    /// then `ECONNRESET`. It used to read part of it and a clean end of
    /// file.
    #[test]
    fn a_reset_while_the_client_sends_reads_as_a_reset() {
        let pipes = PipePool::new(4);
        let ((tcp, mut client), (flow, service)) = sockets();
        let answer: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        // The client sends until every buffer on the way is full (nobody
        // reads the flow): the relay's writes into the flow block.
        let chunk = [1u8; 4096];
        for _ in 0..100_000 {
            // SAFETY: a valid buffer of its length; MSG_DONTWAIT only.
            let sent = unsafe {
                libc::send(
                    client.as_raw_fd(),
                    chunk.as_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if sent < 0 {
                break;
            }
        }
        let mut got = Vec::new();
        let mut end = Ok(0);
        std::thread::scope(|scope| {
            // The relay's caller closes the TCP socket once it is done.
            let relay = scope.spawn(|| {
                let result = relay(&tcp, &flow, &pipes);
                drop(tcp);
                result
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            // sald: an answer, then a reset: both ways shut down.
            (&service).write_all(&answer).unwrap();
            service.shutdown(Shutdown::Both).unwrap();
            end = client.read_to_end(&mut got);
            relay.join().unwrap().unwrap();
        });
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "after {} of {} bytes",
            got.len(),
            answer.len()
        );
        assert!(answer.starts_with(&got), "not a prefix of the answer");
    }

    /// Both directions, with pipes and without (a pool of none), end to end.
    #[test]
    fn relays_both_ways_with_and_without_pipes() {
        for max_pipes in [4, 0] {
            let pipes = PipePool::new(max_pipes);
            let ((tcp, mut client), (flow, mut service)) = sockets();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
            std::thread::scope(|scope| {
                let relay = scope.spawn(|| relay(&tcp, &flow, &pipes));
                let echo = scope.spawn(|| {
                    let mut got = Vec::new();
                    service.read_to_end(&mut got).unwrap();
                    service.write_all(&got).unwrap();
                    service.shutdown(Shutdown::Write).unwrap();
                    got.len()
                });
                client.write_all(&data).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).unwrap();
                assert_eq!(echo.join().unwrap(), data.len());
                assert!(back == data, "max_pipes {max_pipes}: content differs");
                relay.join().unwrap().unwrap();
            });
            assert!(pipes.alive() <= max_pipes);
        }
    }
}
