//! The in-process SAL's echo server and client: each a single-threaded
//! event loop around its own [`Node`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use sal::proto::{Event, HostError};
use sal::table::Target;
use sal::wire::TransportProtocol;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use sal_inproc::resolve::{ResolutionCache, Resolve, SaldResolver};
use socket_shim::ControlClient;

use super::common::program::Node;
use super::{Tally, MESSAGE};

/// How long one connection may take before it counts as failed.
const CONNECTION_LIMIT: Duration = Duration::from_secs(2);
/// How long a client waits at the end for its flows' teardown to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Rounds of poll and application work per wake at most.
const ROUNDS: usize = 8;

/// One accepted flow's echo.
#[derive(Default)]
struct Echo {
    /// Read and not yet written back.
    pending: Vec<u8>,
    /// The client has half-closed.
    eof: bool,
    /// We closed the flow; waiting for the host to release it.
    closed: bool,
}

/// Listens for `service` on a host bound at `addr`, and echoes every flow
/// until its client half-closes, then closes it. With `relay`, binds the
/// service with the sald of that control socket too, which then relays
/// its SYNs here (`Request::Relay`). Never returns; `ready` is called once
/// listening.
pub fn serve(
    addr: SocketAddrV4,
    service: ServiceId,
    relay: Option<&Path>,
    ready: impl FnOnce(),
) -> ! {
    let mut node = Node::bind(addr).expect("UDP bind");
    let prefix = ServicePrefix::exact(service);
    let listener = node
        .host
        .listen(prefix, TransportProtocol::Stream, 1024)
        .expect("listen");
    // Kept: the relay lasts as long as its control connection.
    let _sald = relay.map(|control| {
        let mut sald = ControlClient::connect_to(control).expect("sald's control socket");
        let request = Request::Relay {
            prefix,
            locator: None,
        };
        let reply = sald
            .request_with_fd(&request, node.socket())
            .expect("relay");
        assert!(
            matches!(reply.response, Response::Relaying { .. }),
            "sald did not relay: {:?}",
            reply.response
        );
        sald
    });
    ready();
    let mut flows: HashMap<FlowId, Echo> = HashMap::new();
    let mut buf = [0u8; 4096];
    loop {
        let _ = node.wait(Instant::now() + Duration::from_secs(1));
        let _ = node.receive();
        for _ in 0..ROUNDS {
            node.poll();
            if node.events.is_empty() {
                break;
            }
            for event in std::mem::take(&mut node.events) {
                match event {
                    Event::Incoming(l) if l == listener => {
                        while let Ok(id) = node.host.accept(listener) {
                            flows.insert(id, Echo::default());
                            serve_flow(&mut node, id, &mut flows, &mut buf);
                        }
                    }
                    Event::Activity(id) => serve_flow(&mut node, id, &mut flows, &mut buf),
                    Event::Closed(id) => {
                        flows.remove(&id);
                    }
                    _ => {}
                }
            }
            let _ = node.flush();
        }
        let _ = node.flush();
    }
}

/// Moves what flow `id` received to its echo, writes the echo back, and
/// closes the flow once the client half-closed and everything is written.
fn serve_flow(node: &mut Node, id: FlowId, flows: &mut HashMap<FlowId, Echo>, buf: &mut [u8]) {
    let Some(echo) = flows.get_mut(&id).filter(|e| !e.closed) else {
        return;
    };
    loop {
        match node.host.recv(id, buf) {
            Ok(0) => {
                echo.eof = true;
                break;
            }
            Ok(n) => echo.pending.extend_from_slice(&buf[..n]),
            Err(HostError::WouldBlock) => break,
            Err(_) => {
                // Reset or gone: release it.
                let _ = node.host.close(id);
                echo.closed = true;
                return;
            }
        }
    }
    while !echo.pending.is_empty() {
        match node.host.send(id, &echo.pending) {
            Ok(n) => {
                echo.pending.drain(..n);
            }
            Err(_) => break,
        }
    }
    if echo.eof && echo.pending.is_empty() {
        let _ = node.host.close(id);
        echo.closed = true;
    }
}

/// What went wrong with one connection.
enum Failure {
    /// The step did not finish within [`CONNECTION_LIMIT`].
    Timeout,
    /// The host refused or reset.
    Host,
    /// The echo differs from what was sent, or ended early.
    Echo,
}

/// A client's cached resolution (`sal_inproc::resolve`): what it asks
/// the sald of its host, and what that answered.
struct Resolution {
    resolver: SaldResolver,
    cache: ResolutionCache,
}

/// One client thread: its own host on its own UDP socket at `local`,
/// connecting to `service` at `server` until `until`, then (after
/// `measured`) waiting for the teardown of its flows. With `resolver`
/// (the control socket of the sald at `server`), it asks that sald how it
/// routes `service` while its first SYN is out, and sends the next SYNs
/// straight where sald said for as long as sald said
/// (`Request::Resolve`).
pub fn client(
    server: SocketAddrV4,
    local: Ipv4Addr,
    service: ServiceId,
    resolver: Option<&Path>,
    until: Instant,
    measured: impl FnOnce(),
) -> Tally {
    let mut resolution = resolver.map(|path| Resolution {
        resolver: SaldResolver::new(path),
        cache: ResolutionCache::default(),
    });
    let mut tally = Tally::default();
    let Ok(mut node) = Node::bind(SocketAddrV4::new(local, 0)) else {
        tally.errors += 1;
        measured();
        return tally;
    };
    node.host.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: Locator::Udp(server),
            weight: 1,
        },
        0,
    );
    while Instant::now() < until {
        let start = Instant::now();
        let result = connection(
            &mut node,
            service,
            resolution.as_mut(),
            start + CONNECTION_LIMIT,
        );
        tally.record(result.is_ok(), start);
        if let Err(failure) = result {
            tally.note(failure);
        }
    }
    measured();
    let limit = Instant::now() + DRAIN_LIMIT;
    while node.host.flow_count() > 0 && Instant::now() < limit {
        if node.turn(limit).is_err() {
            break;
        }
    }
    let stats = node.host.stats();
    tally.left = node.host.flow_count() as u64;
    tally.unsendable = node.unsendable;
    tally.packets_out = stats.packets_out;
    tally.packets_in = stats.packets_in;
    tally.unknown_flow = stats.unknown_flow;
    tally
}

/// One connection: connect, wait for [`Event::Connected`], send
/// [`MESSAGE`], read the echo, close. Returns once the close is handed to
/// the host and what it sent for it (the TCP FIN) is on the socket: like
/// kernel TCP's `close()`, it does not wait for the FIN exchange, which
/// goes on in later turns of this thread's event loop. With a
/// resolution, a connect that finds no route cached asks for one once its
/// SYN is out (by the default route, through sald).
fn connection(
    node: &mut Node,
    service: ServiceId,
    mut resolution: Option<&mut Resolution>,
    limit: Instant,
) -> Result<(), Failure> {
    let now = node.now();
    node.host.advance_clock(now);
    let ask = match resolution.as_deref_mut() {
        Some(r) => {
            (r.cache)
                .before_connect(&mut node.host, service, Instant::now())
                .ask
        }
        None => false,
    };
    let id = node
        .host
        .connect(service, TransportProtocol::Stream)
        .map_err(|_| Failure::Host)?;
    if let Some(resolution) = resolution.filter(|_| ask) {
        node.flush().map_err(|_| Failure::Host)?;
        let answer = resolution.resolver.resolve(service);
        (resolution.cache).answer(&mut node.host, service, answer, Instant::now());
    }
    let result = exchange(node, id, limit);
    match result {
        Ok(()) => {
            let _ = node.host.close(id);
        }
        Err(_) => {
            let _ = node.host.abort(id);
            let _ = node.host.close(id);
        }
    }
    node.flush().map_err(|_| Failure::Host)?;
    result
}

/// Connect, send, read back: the part of [`connection`] that may fail.
fn exchange(node: &mut Node, id: FlowId, limit: Instant) -> Result<(), Failure> {
    node.flush().map_err(|_| Failure::Host)?;
    let connected = |node: &Node| {
        node.events.iter().find_map(|e| match e {
            Event::Connected(f) if *f == id => Some(Ok(())),
            Event::ConnectFailed(f, _) if *f == id => Some(Err(Failure::Host)),
            _ => None,
        })
    };
    loop {
        turn(node, limit)?;
        if let Some(result) = connected(node) {
            result?;
            break;
        }
    }
    let mut sent = 0;
    while sent < MESSAGE.len() {
        match node.host.send(id, &MESSAGE[sent..]) {
            Ok(n) => sent += n,
            Err(HostError::WouldBlock) => turn(node, limit)?,
            Err(_) => return Err(Failure::Host),
        }
    }
    node.flush().map_err(|_| Failure::Host)?;
    let mut echo = [0u8; MESSAGE.len()];
    let mut got = 0;
    while got < echo.len() {
        match node.host.recv(id, &mut echo[got..]) {
            Ok(0) => return Err(Failure::Echo),
            Ok(n) => got += n,
            Err(HostError::WouldBlock) => turn(node, limit)?,
            Err(_) => return Err(Failure::Host),
        }
    }
    if echo != *MESSAGE {
        return Err(Failure::Echo);
    }
    Ok(())
}

/// A turn of the event loop, unless the connection is out of time.
fn turn(node: &mut Node, limit: Instant) -> Result<(), Failure> {
    if Instant::now() >= limit {
        return Err(Failure::Timeout);
    }
    node.turn(limit).map_err(|_| Failure::Host)
}

impl Tally {
    fn note(&mut self, failure: Failure) {
        match failure {
            Failure::Timeout => self.timeouts += 1,
            Failure::Host => self.refused += 1,
            Failure::Echo => self.bad_echo += 1,
        }
    }
}
