//! sal-tcp next to unmodified smoltcp 0.14, same process, same run:
//!
//! 1. bulk transfer between two sockets in memory (Gbit/s, ns per segment);
//! 2. memory per idle established socket;
//! 3. cost of one segment's work on an active flow (handle, transmit,
//!    next deadline) with 1, 10,000 and 100,000 idle sockets present.
//!
//! `cargo bench -p sal-tcp --bench transfer`. Environment:
//! `SAL_TCP_BENCH_MB` (transfer size, default 200), `SAL_TCP_BENCH_IDLE`
//! (comma-separated idle counts, default `1,10000,100000`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant as WallClock;

use sal_tcp::{CongestionControl, Instant, Ipv4Address, TcpSeqNumber, MAX_HEADER_LEN};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, TcpPacket};

/// Tracks the bytes currently allocated, to measure memory per socket.
struct Tracking;

static HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; the counter has no effect on the memory.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

fn heap() -> isize {
    HEAP.load(Ordering::Relaxed)
}

const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const BUFFER: usize = 1 << 20;
/// Payload per segment on a 1500-byte IPv4 link, as smoltcp derives it.
const MSS: u16 = 1460;
const SLOT: usize = MAX_HEADER_LEN + MSS as usize;

/// The same clock for both stacks: microseconds since the start.
struct Clock(WallClock);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as i64)
    }
}

/// Both stacks run with the settings the SAL uses today.
fn sal_config() -> sal_tcp::Config {
    sal_tcp::Config {
        mss: MSS,
        max_send_buffer: BUFFER,
        max_recv_buffer: BUFFER,
        nagle: false,
        ack_delay: Some(Duration::from_millis(1)),
        congestion_control: CongestionControl::Cubic,
        ..sal_tcp::Config::default()
    }
}

// ---------------------------------------------------------------------------
// sal-tcp driver

/// Segments in flight one way, in reused buffers.
#[derive(Default)]
struct SalWire {
    queue: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
}

impl SalWire {
    /// Everything `socket` has to send; returns the number of segments.
    fn fill(
        &mut self,
        now: Instant,
        socket: &mut sal_tcp::Socket,
        src: Ipv4Address,
        dst: Ipv4Address,
    ) -> u64 {
        let mut sent = 0;
        loop {
            let mut buffer = self.free.pop().unwrap_or_else(|| vec![0; SLOT]);
            match socket.poll_transmit(now, src, dst, &mut buffer) {
                Some(len) => {
                    self.queue.push_back((buffer, len));
                    sent += 1;
                }
                None => {
                    self.free.push(buffer);
                    return sent;
                }
            }
        }
    }

    /// Deliver everything, verifying checksums as the SAL does.
    fn drain(
        &mut self,
        now: Instant,
        socket: &mut sal_tcp::Socket,
        src: Ipv4Address,
        dst: Ipv4Address,
    ) {
        while let Some((buffer, len)) = self.queue.pop_front() {
            let packet = TcpPacket::new_unchecked(&buffer[..len]);
            assert!(packet.verify_checksum(&src.into(), &dst.into()));
            socket.handle_segment(now, &buffer[..len]).unwrap();
            self.free.push(buffer);
        }
    }
}

/// A connected pair of sal-tcp sockets and the wires between them.
struct SalPair {
    a: sal_tcp::Socket,
    b: sal_tcp::Socket,
    ab: SalWire,
    ba: SalWire,
    segments: u64,
}

impl SalPair {
    fn new(clock: &Clock) -> SalPair {
        let config = sal_config();
        let mut pair = SalPair {
            a: sal_tcp::Socket::new(&config),
            b: sal_tcp::Socket::new(&config),
            ab: SalWire::default(),
            ba: SalWire::default(),
            segments: 0,
        };
        pair.a.connect(TcpSeqNumber(1)).unwrap();
        pair.b.listen(TcpSeqNumber(2)).unwrap();
        while pair.a.state() != sal_tcp::State::Established
            || pair.b.state() != sal_tcp::State::Established
        {
            pair.exchange(clock.now());
        }
        pair
    }
}

// ---------------------------------------------------------------------------
// smoltcp driver: two interfaces joined by in-memory queues

/// One end's device: packets in, packets out, buffers reused.
#[derive(Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = self.free.pop().unwrap_or_default();
        buffer.resize(len, 0);
        let result = f(&mut buffer);
        self.tx.push_back(buffer);
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            RxToken(packet),
            TxToken {
                tx: &mut self.tx,
                free: &mut self.free,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            free: &mut self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

/// One smoltcp host: interface, device, sockets.
struct Host {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
}

impl Host {
    fn new(addr: Ipv4Address, now: Instant) -> Host {
        let mut device = QueueDevice::default();
        let mut iface = Interface::new(IfaceConfig::new(HardwareAddress::Ip), &mut device, now);
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(IpAddress::Ipv4(addr), 24)).unwrap();
        });
        Host {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    /// Move what this host sent into `other`'s receive queue, returning
    /// the buffers `other` consumed to this host's free list.
    fn send_to(&mut self, other: &mut Host) -> u64 {
        let n = self.device.tx.len() as u64;
        other.device.rx.extend(self.device.tx.drain(..));
        self.device.free.append(&mut other.device.free);
        n
    }
}

fn smoltcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    socket.set_congestion_control(tcp::CongestionControl::Cubic);
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(Some(Duration::from_millis(1)));
    socket
}

/// Two smoltcp hosts with one connected pair of sockets.
struct SmolPair {
    a: Host,
    b: Host,
    ha: SocketHandle,
    hb: SocketHandle,
    segments: u64,
}

impl SmolPair {
    fn new(clock: &Clock, idle_on_b: usize) -> SmolPair {
        let now = clock.now();
        let (mut a, mut b) = (Host::new(A, now), Host::new(B, now));
        // Idle sockets on b: listening on a port nobody uses, tiny buffers.
        for _ in 0..idle_on_b {
            let mut socket = smoltcp_socket(64);
            socket.listen(9999).unwrap();
            b.sockets.add(socket);
        }
        let mut server = smoltcp_socket(BUFFER);
        server.listen(80).unwrap();
        let hb = b.sockets.add(server);
        let mut client = smoltcp_socket(BUFFER);
        client
            .connect(a.iface.context(), (IpAddress::Ipv4(B), 80), 40000)
            .unwrap();
        let ha = a.sockets.add(client);
        let mut pair = SmolPair {
            a,
            b,
            ha,
            hb,
            segments: 0,
        };
        while !pair.a.sockets.get::<tcp::Socket>(ha).may_send()
            || !pair.b.sockets.get::<tcp::Socket>(hb).may_send()
        {
            pair.exchange(clock.now());
        }
        pair
    }
}

// ---------------------------------------------------------------------------
// The two stacks behind one interface, so that both run the same loops

/// A connected pair of sockets, `a` (client) and `b` (server), and the
/// in-memory network between them.
trait Pair {
    /// Queue bytes at `a`; returns how many were accepted.
    fn send_a(&mut self, data: &[u8]) -> usize;
    /// Queue bytes at `b`.
    fn send_b(&mut self, data: &[u8]) -> usize;
    /// Read what `a` received.
    fn recv_a(&mut self, buf: &mut [u8]) -> usize;
    /// Read what `b` received.
    fn recv_b(&mut self, buf: &mut [u8]) -> usize;
    /// Everything `a` sends now reaches `b`, which processes it.
    fn a_to_b(&mut self, now: Instant);
    /// Everything `b` sends now reaches `a`, which processes it.
    fn b_to_a(&mut self, now: Instant);
    /// `b`'s next deadline, as its host computes it.
    fn poll_at_b(&mut self, now: Instant) -> Option<Instant>;
    /// Segments sent so far, both ways.
    fn segments(&self) -> u64;
    /// Buffer memory held by both sockets (sal-tcp only).
    fn buffer_memory(&self) -> usize {
        0
    }
    /// One exchange: `a` sends, `b` receives and answers, `a` receives.
    fn exchange(&mut self, now: Instant) {
        self.a_to_b(now);
        self.b_to_a(now);
    }
}

impl Pair for SalPair {
    fn send_a(&mut self, data: &[u8]) -> usize {
        self.a.send_slice(data).unwrap()
    }
    fn send_b(&mut self, data: &[u8]) -> usize {
        self.b.send_slice(data).unwrap()
    }
    fn recv_a(&mut self, buf: &mut [u8]) -> usize {
        self.a.recv_slice(buf).unwrap()
    }
    fn recv_b(&mut self, buf: &mut [u8]) -> usize {
        self.b.recv_slice(buf).unwrap()
    }
    fn a_to_b(&mut self, now: Instant) {
        self.segments += self.ab.fill(now, &mut self.a, A, B);
        self.ab.drain(now, &mut self.b, A, B);
    }
    fn b_to_a(&mut self, now: Instant) {
        self.segments += self.ba.fill(now, &mut self.b, B, A);
        self.ba.drain(now, &mut self.a, B, A);
    }
    fn poll_at_b(&mut self, _now: Instant) -> Option<Instant> {
        self.b.poll_at()
    }
    fn segments(&self) -> u64 {
        self.segments
    }
    fn buffer_memory(&self) -> usize {
        self.a.buffer_memory() + self.b.buffer_memory()
    }
}

impl Pair for SmolPair {
    fn send_a(&mut self, data: &[u8]) -> usize {
        let socket = self.a.sockets.get_mut::<tcp::Socket>(self.ha);
        socket.send_slice(data).unwrap()
    }
    fn send_b(&mut self, data: &[u8]) -> usize {
        let socket = self.b.sockets.get_mut::<tcp::Socket>(self.hb);
        socket.send_slice(data).unwrap()
    }
    fn recv_a(&mut self, buf: &mut [u8]) -> usize {
        let socket = self.a.sockets.get_mut::<tcp::Socket>(self.ha);
        socket.recv_slice(buf).unwrap()
    }
    fn recv_b(&mut self, buf: &mut [u8]) -> usize {
        let socket = self.b.sockets.get_mut::<tcp::Socket>(self.hb);
        socket.recv_slice(buf).unwrap()
    }
    fn a_to_b(&mut self, now: Instant) {
        self.a.poll(now);
        self.segments += self.a.send_to(&mut self.b);
        self.b.poll(now);
    }
    fn b_to_a(&mut self, now: Instant) {
        self.b.poll(now);
        self.segments += self.b.send_to(&mut self.a);
        self.a.poll(now);
    }
    fn poll_at_b(&mut self, now: Instant) -> Option<Instant> {
        self.b.iface.poll_at(now, &self.b.sockets)
    }
    fn segments(&self) -> u64 {
        self.segments
    }
}

/// What a bulk run measured.
struct Run {
    seconds: f64,
    segments: u64,
    /// Most buffer memory both sockets held at once.
    peak_memory: usize,
}

/// Send `total` bytes from `a` to `b` as fast as the stack goes.
fn bulk_run(pair: &mut impl Pair, clock: &Clock, total: usize) -> Run {
    let data = vec![0x5a; 256 * 1024];
    let mut sink = vec![0; 256 * 1024];
    let (mut queued, mut received) = (0, 0);
    let start = WallClock::now();
    let segments_before = pair.segments();
    let mut peak_memory = 0;
    while received < total {
        peak_memory = peak_memory.max(pair.buffer_memory());
        while queued < total {
            let n = pair.send_a(&data[..data.len().min(total - queued)]);
            if n == 0 {
                break;
            }
            queued += n;
        }
        let now = clock.now();
        pair.a_to_b(now);
        loop {
            let n = pair.recv_b(&mut sink);
            if n == 0 {
                break;
            }
            received += n;
        }
        pair.b_to_a(now);
    }
    Run {
        seconds: start.elapsed().as_secs_f64(),
        segments: pair.segments() - segments_before,
        peak_memory,
    }
}

/// `rounds` requests of 64 bytes from `a`, each echoed by `b`; returns ns
/// per segment and ns per `poll_at` of `b`'s host.
fn request_response(pair: &mut impl Pair, clock: &Clock, rounds: usize) -> (f64, f64) {
    let mut buf = [0; 64];
    let mut poll_at_ns = 0.0;
    let start = WallClock::now();
    let before = pair.segments();
    for _ in 0..rounds {
        let now = clock.now();
        pair.send_a(&[7; 64]);
        pair.a_to_b(now);
        assert_eq!(pair.recv_b(&mut buf), 64);
        pair.send_b(&buf);
        pair.b_to_a(now);
        assert_eq!(pair.recv_a(&mut buf), 64);
        let t = WallClock::now();
        std::hint::black_box(pair.poll_at_b(now));
        poll_at_ns += t.elapsed().as_nanos() as f64;
    }
    let per_segment = start.elapsed().as_nanos() as f64 / (pair.segments() - before) as f64;
    (per_segment, poll_at_ns / rounds as f64)
}

// ---------------------------------------------------------------------------
// 1. Bulk transfer

fn bulk(clock: &Clock, megabytes: usize) -> (Run, SalPair) {
    let total = megabytes << 20;
    println!("## Bulk transfer, {megabytes} MB one way, 1 MiB maximum buffers, in memory\n");
    println!("| stack | Gbit/s | ns per segment | segments (both ways) |");
    println!("|---|---|---|---|");
    // Alternate, best of two each, so that both see the same machine.
    let (mut sal, mut smol): (Option<(Run, SalPair)>, Option<Run>) = (None, None);
    for _ in 0..2 {
        let mut pair = SalPair::new(clock);
        let run = bulk_run(&mut pair, clock, total);
        if sal
            .as_ref()
            .is_none_or(|(best, _)| run.seconds < best.seconds)
        {
            sal = Some((run, pair));
        }
        let run = bulk_run(&mut SmolPair::new(clock, 0), clock, total);
        if smol.as_ref().is_none_or(|best| run.seconds < best.seconds) {
            smol = Some(run);
        }
    }
    let (sal, pair) = sal.unwrap();
    let smol = smol.unwrap();
    for (name, run) in [
        ("sal-tcp (per-flow socket)", &sal),
        ("smoltcp 0.14 (Interface)", &smol),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {} |",
            total as f64 * 8.0 / run.seconds / 1e9,
            run.seconds * 1e9 / run.segments as f64,
            run.segments
        );
    }
    println!();
    (sal, pair)
}

// ---------------------------------------------------------------------------
// 2. Memory per idle established socket

fn memory(bulk: Run, mut pair: SalPair) {
    println!("## Memory per idle established socket\n");
    let config = sal_config();
    // sal-tcp: established server sockets, built from cookies as a
    // SYN-flooded server builds them.
    const N: usize = 10_000;
    let before = heap();
    let mut sockets = Vec::with_capacity(N);
    let vec_bytes = heap() - before;
    for i in 0..N {
        sockets.push(established_from_cookie(&config, i as i32));
    }
    let sal_heap = (heap() - before - vec_bytes) as f64 / N as f64;
    drop(sockets);

    // The bulk pair, idle: virtual time jumps past two trim points.
    let end = pair.a.poll_at().unwrap_or(Instant::ZERO);
    let mut now = end.max(Instant::from_secs(1_000));
    for _ in 0..3 {
        now += config.trim_interval;
        pair.exchange(now);
    }
    let after_idle = pair.a.buffer_memory() + pair.b.buffer_memory();

    // smoltcp: a socket with the SAL's 1 MiB buffers in a socket set (the
    // memory does not depend on the state).
    const M: usize = 64;
    let before = heap();
    let mut set = SocketSet::new(Vec::with_capacity(M));
    let set_bytes = heap() - before;
    for _ in 0..M {
        set.add(smoltcp_socket(BUFFER));
    }
    let smol_heap = (heap() - before - set_bytes) as f64 / M as f64;
    drop(set);

    println!("| stack | struct bytes | heap bytes | total |");
    println!("|---|---|---|---|");
    let sal_struct = std::mem::size_of::<sal_tcp::Socket>();
    println!(
        "| sal-tcp, idle established (from cookie) | {sal_struct} | {sal_heap:.0} | {:.0} |",
        sal_struct as f64 + sal_heap
    );
    println!(
        "| sal-tcp, after the bulk transfer (both ends peaked at {} KiB), idle 3 s | {sal_struct} | {} | {} |",
        bulk.peak_memory / 1024,
        after_idle / 2,
        sal_struct + after_idle / 2
    );
    let smol_struct = std::mem::size_of::<tcp::Socket<'static>>();
    println!(
        "| smoltcp 0.14, 1 MiB + 1 MiB buffers | {smol_struct} | {smol_heap:.0} | {:.0} |",
        smol_struct as f64 + smol_heap
    );
    println!();
}

/// An established server socket built as a cookie-validating server would.
fn established_from_cookie(config: &sal_tcp::Config, seed: i32) -> sal_tcp::Socket {
    let mut client = sal_tcp::Socket::new(config);
    client.connect(TcpSeqNumber(seed)).unwrap();
    let mut out = [0; SLOT];
    let len = client.poll_transmit(Instant::ZERO, A, B, &mut out).unwrap();
    let syn = out[..len].to_vec();
    let (len, params) = sal_tcp::write_syn_ack(
        config,
        Instant::ZERO,
        &syn,
        TcpSeqNumber(!seed),
        B,
        A,
        &mut out,
    )
    .unwrap();
    client.handle_segment(Instant::ZERO, &out[..len]).unwrap();
    let len = client.poll_transmit(Instant::ZERO, A, B, &mut out).unwrap();
    sal_tcp::Socket::from_cookie(config, Instant::ZERO, &out[..len], &params).unwrap()
}

// ---------------------------------------------------------------------------
// 3. Per-segment work beside idle sockets

fn beside_idle(clock: &Clock, counts: &[usize]) {
    println!("## One active flow (64-byte request/response) beside idle sockets\n");
    println!("sal-tcp: handle_segment + poll_transmit + poll_at of the active socket only (the");
    println!("idle sockets exist but nothing walks them). smoltcp: Interface::poll / poll_at over");
    println!("one SocketSet holding the idle sockets (LISTEN on an unused port, a cheaper walk");
    println!("than ESTABLISHED: the smoltcp figures are a lower bound).\n");
    println!("| idle sockets | sal-tcp ns/segment | smoltcp ns/segment | sal-tcp ns/poll_at | smoltcp ns/poll_at |");
    println!("|---|---|---|---|---|");
    // Warm both up (caches, allocator) before the first measured row.
    request_response(&mut SalPair::new(clock), clock, 2000);
    request_response(&mut SmolPair::new(clock, 0), clock, 2000);
    let config = sal_config();
    for &idle in counts {
        let rounds = if idle >= 100_000 {
            200
        } else if idle >= 10_000 {
            1000
        } else {
            20_000
        };
        let idle_sockets: Vec<_> = (0..idle)
            .map(|i| established_from_cookie(&config, i as i32))
            .collect();
        let sal = request_response(&mut SalPair::new(clock), clock, rounds);
        drop(idle_sockets);
        let smol = request_response(&mut SmolPair::new(clock, idle), clock, rounds);
        println!(
            "| {idle} | {:.0} | {:.0} | {:.0} | {:.0} |",
            sal.0, smol.0, sal.1, smol.1
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let megabytes = std::env::var("SAL_TCP_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let counts: Vec<usize> = std::env::var("SAL_TCP_BENCH_IDLE")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10_000, 100_000]);
    let clock = Clock(WallClock::now());
    println!("# sal-tcp vs smoltcp 0.14 (same run)\n");
    let (sal_run, sal_pair) = bulk(&clock, megabytes);
    memory(sal_run, sal_pair);
    beside_idle(&clock, &counts);
}
