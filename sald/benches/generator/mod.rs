//! Idle flows without descriptors: a SAL host in this process, speaking
//! through a raw socket (IPv4 protocol 144) from an address of its own,
//! opens flows to a daemon's listener and keeps them established.
//!
//! A flow an application holds costs a file descriptor at each end, in
//! sald and in the application, and no process here may hold more than
//! 20,000 (hard `RLIMIT_NOFILE`, and no `CAP_SYS_RESOURCE` to raise it).
//! A hundred thousand idle flows are therefore opened by this generator
//! (its flows are plain state in its own `Host`) and left in the daemon's
//! accept queues (which cost the daemon no descriptor). What the daemon's
//! host does per packet and keeps per flow is then measured beside them;
//! what the daemon spends on a flow an application took (its pump task,
//! its socket) is measured with application-held flows at 10,000.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sal::proto::{Event, Host, HostConfig, LocalInterface};
use sal::table::Target;
use sal::wire::{ipv4_payload, TransportProtocol};
use sal::{Locator, ServiceId, ServicePrefix};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use testnet::Netns;

/// Connects in flight at most (the daemon answers them in turn).
const WINDOW: usize = 512;

/// The generator: a thread driving a host with many flows.
pub struct Generator {
    stop: Arc<AtomicBool>,
    established: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Host>>,
}

impl Generator {
    /// Opens `count` flows from `addr` (an address of `ns` that no daemon
    /// there claims, e.g. on `lo`) to `services` (taken in turn) at the
    /// daemon at `server`.
    pub fn start(
        ns: &Netns,
        addr: Ipv4Addr,
        server: Ipv4Addr,
        services: Vec<ServiceId>,
        count: usize,
    ) -> Generator {
        let socket = ns
            .run(move || -> std::io::Result<Socket> {
                let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(144)))?;
                socket.bind(&SockAddr::from(SocketAddrV4::new(addr, 0)))?;
                socket.set_read_timeout(Some(Duration::from_millis(1)))?;
                socket.set_recv_buffer_size(8 << 20)?;
                Ok(socket)
            })
            .expect("namespace")
            .expect("raw socket for protocol 144");
        let stop = Arc::new(AtomicBool::new(false));
        let established = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, established) = (stop.clone(), established.clone());
            move || run(socket, addr, server, services, count, &stop, &established)
        });
        Generator {
            stop,
            established,
            thread: Some(thread),
        }
    }

    /// Flows established so far.
    pub fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }

    /// Waits until all `count` flows are established or `timeout` passes;
    /// returns how many are.
    pub fn wait_established(&self, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.established() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.established()
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The generator's loop: packets in, the host polled, packets out, more
/// connects while fewer than [`WINDOW`] are in flight.
fn run(
    socket: Socket,
    addr: Ipv4Addr,
    server: Ipv4Addr,
    services: Vec<ServiceId>,
    count: usize,
    stop: &AtomicBool,
    established: &AtomicUsize,
) -> Host {
    let epoch = Instant::now();
    let now = || sal::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let config = HostConfig {
        seed: u64::from(u32::from(addr)),
        ..HostConfig::default()
    };
    let mut host = Host::new(config, now());
    host.add_interface(LocalInterface {
        name: "gen".into(),
        locator: Locator::Ipv4(addr),
        prefix_len: 32,
        up: true,
    });
    host.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: Locator::Ipv4(server),
            weight: 1,
        },
        0,
    );
    let mut opened = 0;
    let mut connected = 0;
    let mut failed = 0;
    let mut socket = socket;
    let mut packet = vec![0u8; 65_535];
    while !stop.load(Ordering::Relaxed) {
        while opened < count && opened - connected - failed < WINDOW {
            let service = services[opened % services.len()];
            if host.connect(service, TransportProtocol::Stream).is_err() {
                failed += 1;
            }
            opened += 1;
        }
        // What arrived (the socket waits at most a millisecond).
        let mut budget = 4096;
        while budget > 0 {
            let Ok(n) = socket.read(&mut packet) else {
                break;
            };
            budget -= 1;
            if let Ok((carriage, sal)) = ipv4_payload(&packet[..n]) {
                host.handle_packet(
                    now(),
                    Locator::Ipv4(carriage.src),
                    Locator::Ipv4(carriage.dst),
                    carriage.ttl,
                    sal,
                );
            }
        }
        let t = now();
        host.poll(t);
        while let Some(transmit) = host.poll_transmit(t, &mut packet) {
            let dst = SockAddr::from(SocketAddrV4::new(transmit.dst.ip(), 0));
            let _ = socket.send_to(&packet[..transmit.len], &dst);
        }
        while let Some(event) = host.poll_event() {
            match event {
                Event::Connected(_) => connected += 1,
                Event::ConnectFailed(..) => failed += 1,
                _ => {}
            }
        }
        established.store(connected, Ordering::Relaxed);
    }
    host
}
