//! Heap use, counted by a global allocator: none per segment in steady state,
//! none to answer a SYN statelessly, none for an idle connection.

use sal_tcp::{
    write_syn_ack, Config, Duration, Instant, Ipv4Address, Socket, State, TcpSeqNumber,
    MAX_HEADER_LEN,
};

/// Counts the allocations of the thread inside [`allocations`]; the test
/// harness's own threads (reporting results while a test runs) are not
/// counted.
#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

/// Allocations made by `f` on this thread (the tests in this binary run one
/// at a time: each test takes the lock below).
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    alloc_counter::mark_this_thread();
    alloc_counter::count(f)
}

/// Tests in one binary run on several threads: serialize them so that one
/// test's allocations are not counted in another's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const A: Ipv4Address = Ipv4Address::new(10, 2, 0, 1);
const B: Ipv4Address = Ipv4Address::new(10, 2, 0, 2);
const SLOT: usize = MAX_HEADER_LEN + 1500;

/// A FIFO of segments in preallocated slots.
struct Wire {
    slots: Vec<[u8; SLOT]>,
    lens: Vec<usize>,
    head: usize,
    count: usize,
}

impl Wire {
    fn new(capacity: usize) -> Wire {
        Wire {
            slots: vec![[0; SLOT]; capacity],
            lens: vec![0; capacity],
            head: 0,
            count: 0,
        }
    }

    /// Move everything `from` has to send onto the wire; returns how many.
    fn fill(&mut self, now: Instant, from: &mut Socket, src: Ipv4Address, dst: Ipv4Address) -> u64 {
        let mut sent = 0;
        loop {
            assert!(self.count < self.slots.len(), "wire full");
            let at = (self.head + self.count) % self.slots.len();
            let Some(len) = from.poll_transmit(now, src, dst, &mut self.slots[at]) else {
                return sent;
            };
            self.lens[at] = len;
            self.count += 1;
            sent += 1;
        }
    }

    /// Deliver everything on the wire to `to`.
    fn drain(&mut self, now: Instant, to: &mut Socket) {
        while self.count > 0 {
            let at = self.head;
            to.handle_segment(now, &self.slots[at][..self.lens[at]])
                .unwrap();
            self.head = (self.head + 1) % self.slots.len();
            self.count -= 1;
        }
    }
}

/// A connected pair (through the ordinary handshake).
fn pair(config: &Config) -> (Socket, Socket, Wire, Wire) {
    let (mut a, mut b) = (Socket::new(config), Socket::new(config));
    a.connect(TcpSeqNumber(1)).unwrap();
    b.listen(TcpSeqNumber(2)).unwrap();
    let (mut ab, mut ba) = (Wire::new(2048), Wire::new(2048));
    for _ in 0..3 {
        ab.fill(Instant::ZERO, &mut a, A, B);
        ab.drain(Instant::ZERO, &mut b);
        ba.fill(Instant::ZERO, &mut b, B, A);
        ba.drain(Instant::ZERO, &mut a);
    }
    assert_eq!(a.state(), State::Established);
    assert_eq!(b.state(), State::Established);
    (a, b, ab, ba)
}

/// A bulk transfer from `a` to `b` in lockstep rounds.
struct Bulk {
    a: Socket,
    b: Socket,
    ab: Wire,
    ba: Wire,
    data: Vec<u8>,
    sink: Vec<u8>,
    delivered: usize,
    segments: u64,
}

impl Bulk {
    /// The application writes, segments cross, the reader reads, ACKs come
    /// back.
    fn round(&mut self, now: Instant) {
        while self.a.send_slice(&self.data).unwrap() > 0 {}
        self.segments += self.ab.fill(now, &mut self.a, A, B);
        self.ab.drain(now, &mut self.b);
        while let Ok(n) = self.b.recv_slice(&mut self.sink) {
            if n == 0 {
                break;
            }
            self.delivered += n;
        }
        self.segments += self.ba.fill(now, &mut self.b, B, A);
        self.ba.drain(now, &mut self.a);
    }
}

#[test]
fn no_allocation_per_segment_in_steady_state() {
    let _serial = SERIAL.lock().unwrap();
    let config = Config::default();
    let (a, b, ab, ba) = pair(&config);
    let mut bulk = Bulk {
        a,
        b,
        ab,
        ba,
        data: vec![0x5a; 64 * 1024],
        sink: vec![0; 64 * 1024],
        delivered: 0,
        segments: 0,
    };
    let round = Duration::from_millis(40);
    let mut now = Instant::ZERO;
    // Warm up: the congestion window opens until the peer's window (1 MiB)
    // limits the flow, and the buffers grow with it.
    let mut rounds = 0;
    while bulk.a.buffer_memory() < config.max_send_buffer
        || bulk.b.buffer_memory() < config.max_recv_buffer
    {
        bulk.round(now);
        now += round;
        rounds += 1;
        assert!(rounds < 10_000, "never reached steady state");
    }
    let warm = (bulk.delivered, bulk.segments, now);
    let (count, ()) = allocations(|| {
        while bulk.delivered < warm.0 + (64 << 20) {
            bulk.round(now);
            now += round;
        }
    });
    let measured = bulk.segments - warm.1;
    println!(
        "{count} allocations for {measured} segments, {} MB, {} of virtual time",
        (bulk.delivered - warm.0) >> 20,
        now - warm.2
    );
    assert!(measured > 40_000);
    // Trim points were crossed, and nothing was reallocated.
    assert!(now - warm.2 > config.trim_interval * 2);
    assert_eq!(count, 0);
}

#[test]
fn answering_a_syn_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap();
    let config = Config::default();
    let mut client = Socket::new(&config);
    client.connect(TcpSeqNumber(10)).unwrap();
    let mut syn = [0; SLOT];
    let len = client.poll_transmit(Instant::ZERO, A, B, &mut syn).unwrap();
    let mut out = [0; SLOT];
    let (count, result) = allocations(|| {
        write_syn_ack(
            &config,
            Instant::ZERO,
            &syn[..len],
            TcpSeqNumber(20),
            B,
            A,
            &mut out,
        )
    });
    let (synack_len, params) = result.unwrap();
    assert_eq!(count, 0);

    client
        .handle_segment(Instant::ZERO, &out[..synack_len])
        .unwrap();
    let len = client.poll_transmit(Instant::ZERO, A, B, &mut out).unwrap();
    let (count, server) =
        allocations(|| Socket::from_cookie(&config, Instant::ZERO, &out[..len], &params));
    assert_eq!(server.unwrap().state(), State::Established);
    assert_eq!(count, 0, "an established socket without data holds no heap");
}

#[test]
fn an_idle_connection_costs_its_struct_only() {
    let _serial = SERIAL.lock().unwrap();
    let config = Config::default();
    let (mut a, mut b, mut ab, mut ba) = pair(&config);
    a.send_slice(&[1; 100_000]).unwrap();
    let mut now = Instant::ZERO;
    let mut sink = [0; 4096];
    while b.recv_queue() > 0 || a.send_queue() > 0 || now == Instant::ZERO {
        ab.fill(now, &mut a, A, B);
        ab.drain(now, &mut b);
        while b.recv_slice(&mut sink).unwrap() > 0 {}
        ba.fill(now, &mut b, B, A);
        ba.drain(now, &mut a);
        now += Duration::from_millis(1);
    }
    assert!(a.buffer_memory() > 0 && b.buffer_memory() > 0);
    // Two trim intervals later, nothing is held; no deadline remains.
    for socket in [&mut a, &mut b] {
        for _ in 0..2 {
            now += config.trim_interval;
            assert_eq!(socket.poll_transmit(now, A, B, &mut [0; SLOT]), None);
        }
        assert_eq!(socket.buffer_memory(), 0);
        assert_eq!(socket.poll_at(), None);
    }
    let size = std::mem::size_of::<Socket>();
    println!("idle established socket: {size} bytes, 0 bytes of heap");
    assert!(size <= 1024);
}
