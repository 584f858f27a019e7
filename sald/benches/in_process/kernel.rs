//! The baseline: the same echo server and client on kernel TCP (std
//! sockets), the server with a pool of threads that each accept one
//! connection at a time (like `connrate`).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::Instant;

use super::{Tally, MESSAGE};

/// Server threads: each serves one connection at a time.
const SERVER_THREADS: usize = 32;

/// Listens on `addr` and echoes every connection until its client
/// half-closes, then closes it. Never returns; `ready` is called once
/// listening.
pub fn serve(addr: SocketAddrV4, ready: impl FnOnce()) -> ! {
    let listener = TcpListener::bind(addr).expect("kernel TCP listen");
    ready();
    std::thread::scope(|s| {
        for _ in 0..SERVER_THREADS {
            s.spawn(|| loop {
                let Ok((mut stream, _)) = listener.accept() else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if stream.write_all(&buf[..n]).is_err() => break,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    unreachable!("the server threads never return")
}

/// One client thread until `until`: connect, write [`MESSAGE`], read it
/// back, close. `close()` returns at once; the FIN exchange goes on in the
/// kernel.
pub fn client(server: SocketAddrV4, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut echo = [0u8; MESSAGE.len()];
    while Instant::now() < until {
        let start = Instant::now();
        let ok = TcpStream::connect(server).is_ok_and(|mut stream| {
            stream.set_nodelay(true).is_ok()
                && stream.write_all(MESSAGE).is_ok()
                && stream.read_exact(&mut echo).is_ok()
                && echo == *MESSAGE
        });
        tally.record(ok, start);
    }
    tally
}
