// Heads up! Before working on this file you should read, at least, RFC 793 and
// the parts of RFC 1122 that discuss TCP, as well as RFC 7323 for some of the TCP options.
// Consult RFC 7414 when implementing a new feature.

//! The TCP socket state machine, driven on its own (sans-IO).
//!
//! Forked from smoltcp 0.14.0 `src/socket/tcp.rs` (0BSD, see the crate docs
//! for what changed). The logic of `process` and `dispatch` is smoltcp's, now
//! behind [`Socket::handle_segment`] and [`Socket::poll_transmit`].

use core::fmt;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    Ipv4Address, TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr, TCP_HEADER_LEN,
};

use crate::assembler::Assembler;
use crate::buffer::ElasticBuffer;
use crate::config::{Config, MIN_MSS};
use crate::congestion::{self, CongestionControl};
use crate::counters::LossCounters;
use crate::dsack::{self, DuplicateReport};
use crate::hystart::HyStart;
use crate::rack::{self, Rack};
use crate::rtt::RttEstimator;
use crate::sack::Scoreboard;
use crate::segment::{self, SegmentError};
use crate::timer::{AckDelayTimer, PollAt, Timer};
use crate::tlp::{self, LossProbe};
use crate::undo::{Prior, Undo};

/// Error returned by [`Socket::listen`].
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum ListenError {
    /// The socket is already open.
    #[error("invalid state")]
    InvalidState,
}

/// Error returned by [`Socket::connect`].
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum ConnectError {
    /// The socket is already open.
    #[error("invalid state")]
    InvalidState,
}

/// Error returned by [`Socket::send`].
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum SendError {
    /// The transmit half of the connection is not open.
    #[error("invalid state")]
    InvalidState,
}

/// Error returned by [`Socket::recv`].
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum RecvError {
    /// The receive half is not open and no data is left (the data received
    /// may be incomplete: the connection was reset or aborted).
    #[error("invalid state")]
    InvalidState,
    /// The peer closed its half gracefully (FIN) and all its data was read.
    #[error("operation finished")]
    Finished,
}

/// The state of a TCP socket, according to [RFC 793].
///
/// [RFC 793]: https://tools.ietf.org/html/rfc793
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum State {
    /// No connection.
    Closed,
    /// Waiting for a SYN (passive open).
    Listen,
    /// SYN sent, waiting for the SYN-ACK.
    SynSent,
    /// SYN received and SYN-ACK sent, waiting for its ACK.
    SynReceived,
    /// Open both ways.
    Established,
    /// We closed our half; our FIN is not acknowledged yet.
    FinWait1,
    /// We closed our half and our FIN is acknowledged; the peer may still send.
    FinWait2,
    /// The peer closed its half; we may still send.
    CloseWait,
    /// Both closed at once; waiting for the ACK of our FIN.
    Closing,
    /// The peer closed first, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both halves closed; lingering to absorb stray segments.
    TimeWait,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            State::Closed => write!(f, "CLOSED"),
            State::Listen => write!(f, "LISTEN"),
            State::SynSent => write!(f, "SYN-SENT"),
            State::SynReceived => write!(f, "SYN-RECEIVED"),
            State::Established => write!(f, "ESTABLISHED"),
            State::FinWait1 => write!(f, "FIN-WAIT-1"),
            State::FinWait2 => write!(f, "FIN-WAIT-2"),
            State::CloseWait => write!(f, "CLOSE-WAIT"),
            State::Closing => write!(f, "CLOSING"),
            State::LastAck => write!(f, "LAST-ACK"),
            State::TimeWait => write!(f, "TIME-WAIT"),
        }
    }
}

/// A segment owed in answer to one just received (smoltcp's `process` returns
/// these to its interface; here they wait for the next `poll_transmit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// An ACK of the current state, `count` times (duplicate ACKs matter to
    /// the peer's fast retransmit), echoing `tsecr` if the segment had one.
    Ack { count: u8, tsecr: Option<u32> },
    /// A reset with these sequence and acknowledgement numbers.
    Rst {
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
    },
}

impl Reply {
    /// The RST answering `repr` (RFC 793: RST or RST|ACK depending on it).
    fn rst(repr: &TcpRepr) -> Reply {
        debug_assert!(repr.control != TcpControl::Rst);
        // See https://www.snellman.net/blog/archive/2016-02-01-tcp-rst/ for explanation
        // of why we sometimes send an RST and sometimes an RST|ACK
        let ack = if repr.control == TcpControl::Syn && repr.ack_number.is_none() {
            Some(repr.seq_number + repr.segment_len())
        } else {
            None
        };
        Reply::Rst {
            seq: repr.ack_number.unwrap_or_default(),
            ack,
        }
    }

    /// An ACK answering `repr`.
    fn ack(repr: &TcpRepr) -> Reply {
        Reply::Ack {
            count: 1,
            tsecr: repr.timestamp.map(|ts| ts.tsval),
        }
    }
}

/// A TCP connection's state machine, one per flow, driven by its owner.
///
/// Nothing here knows about addresses, ports, interfaces or other sockets:
/// the owner feeds it segments ([`handle_segment`]), asks it for segments
/// ([`poll_transmit`], which also runs its timers) and for its next deadline
/// ([`poll_at`]). See the [crate docs](crate) for the driving loop.
///
/// [`handle_segment`]: Socket::handle_segment
/// [`poll_transmit`]: Socket::poll_transmit
/// [`poll_at`]: Socket::poll_at
#[derive(Debug)]
pub struct Socket {
    state: State,
    timer: Timer,
    rtte: RttEstimator,
    /// sal-tcp: HyStart++ (RFC 9406), which ends slow start when the round
    /// trip grows (see `crate::hystart`).
    hystart: HyStart,
    /// sal-tcp: copies of our SYN or SYN-ACK resent at a timeout: more than
    /// one, and the connection starts from one segment
    /// (`Socket::set_initial_window`).
    handshake_timeouts: u8,
    assembler: Assembler,
    rx_buffer: ElasticBuffer,
    rx_fin_received: bool,
    tx_buffer: ElasticBuffer,
    /// Interval after which, if no inbound packets are received, the connection is aborted.
    timeout: Option<Duration>,
    /// Interval at which keep-alive packets will be sent.
    keep_alive: Option<Duration>,
    /// Whether there is a peer to send to (smoltcp: its 4-tuple is set). Set by
    /// `connect` and by a SYN in LISTEN; cleared once a reset ends the connection.
    has_peer: bool,
    /// Whether the socket was opened by `listen` (smoltcp: a listen endpoint is
    /// set), which makes an RST in SYN-RECEIVED return it to LISTEN.
    passive: bool,
    /// Our initial sequence number, chosen by the caller (`listen`/`connect`).
    isn: TcpSeqNumber,
    /// The sequence number corresponding to the beginning of the transmit buffer.
    /// I.e. an ACK(local_seq_no+n) packet removes n bytes from the transmit buffer.
    local_seq_no: TcpSeqNumber,
    /// The sequence number corresponding to the beginning of the receive buffer.
    /// I.e. userspace reading n bytes adds n to remote_seq_no.
    remote_seq_no: TcpSeqNumber,
    /// The last sequence number sent.
    /// I.e. in an idle socket, local_seq_no+tx_buffer.len().
    remote_last_seq: TcpSeqNumber,
    /// The highest sequence number sent so far (Linux's SND.NXT, which unlike
    /// `remote_last_seq` does not go back on a retransmission timeout).
    remote_max_seq: TcpSeqNumber,
    /// The last acknowledgement number sent.
    /// I.e. in an idle socket, remote_seq_no+rx_buffer.len().
    remote_last_ack: Option<TcpSeqNumber>,
    /// The last window length sent.
    remote_last_win: u16,
    /// The sending window scaling factor advertised to remotes which support RFC 1323.
    /// It is zero if the window <= 64KiB and/or the remote does not support it.
    remote_win_shift: u8,
    /// The remote window size, relative to local_seq_no
    /// I.e. we're allowed to send octets until local_seq_no+remote_win_len
    remote_win_len: usize,
    /// sal-tcp: the largest window the peer ever advertised (RFC 5961's
    /// MAX.SND.WND): how far below SND.UNA an ACK may be and still be
    /// taken for an old one.
    max_remote_win: u32,
    /// The receive window scaling factor for remotes which support RFC 1323, None if unsupported.
    remote_win_scale: Option<u8>,
    /// Whether or not the remote supports selective ACK as described in RFC 2018.
    remote_has_sack: bool,
    /// The maximum number of data octets that the remote side may receive.
    remote_mss: usize,
    /// The timestamp of the last packet received.
    remote_last_ts: Option<Instant>,
    /// sal-tcp: when a segment occupying sequence space last went out
    /// (Linux's `lsndtime`), the flight last emptied, or the congestion
    /// window last restarted after an idle period
    /// (`Socket::restart_after_idle`).
    last_sent: Instant,
    /// The sequence number of the last packet received, used for sACK
    local_rx_last_seq: Option<TcpSeqNumber>,
    /// sal-tcp: the sequence numbers of the last out-of-order segments
    /// held, most recent first: the blocks holding them are the ones our
    /// SACK options repeat after the first (RFC 2018 section 4).
    local_rx_recent_seq: [Option<TcpSeqNumber>; 3],
    /// The ACK number of the last packet received.
    local_rx_last_ack: Option<TcpSeqNumber>,
    /// The number of packets received directly after
    /// each other which have the same ACK number.
    local_rx_dup_acks: u8,
    /// If a fast retransmit needs to occur
    pending_fast_retransmit: bool,
    /// NewReno (RFC 6582): until an ACK reaches it, duplicate ACKs below
    /// it tell of a loss already being repaired, not of a new one: they
    /// start no fast retransmit (3.2 step 1), nor limited transmit. After
    /// a fast retransmit, the highest sequence number sent then; after a
    /// rewind, one past the oldest unacknowledged byte, which it resends
    /// first (not after a retransmission timeout: see `poll_transmit`).
    recover: Option<TcpSeqNumber>,
    /// sal-tcp: in fast recovery (RFC 6582 3.2), up to `recover`: an ACK
    /// below it (a partial ACK) means another segment of that window was
    /// lost, and it is retransmitted at once instead of waiting for the
    /// retransmission timeout. After a rewind, which resends everything
    /// from the oldest unacknowledged byte, it is not.
    fast_recovery: bool,
    /// sal-tcp: limited transmit (RFC 3042): bytes sent past the congestion
    /// window on the first two duplicate ACKs since new data was last
    /// acknowledged, left out of the flight size a fast retransmit halves
    /// (RFC 5681 3.2 step 2).
    limited_transmit: usize,
    /// sal-tcp: what the peer SACKed above the cumulative ACK (see
    /// `crate::sack`), kept while it does SACK; forgotten at a
    /// retransmission timeout or a rewind.
    scoreboard: Scoreboard,
    /// sal-tcp: the fast recovery in progress is SACK-based (RFC 6675):
    /// each ACK lets out retransmissions of the holes the scoreboard shows,
    /// then new data, as far as the congestion window exceeds the `pipe`.
    sack_recovery: bool,
    /// sal-tcp: RFC 6675's HighRxt: in a SACK-based recovery, the holes
    /// below it were retransmitted.
    high_rxt: TcpSeqNumber,
    /// sal-tcp: in a SACK-based recovery, a segment's worth for each
    /// duplicate ACK that SACKed nothing new since the last ACK of new
    /// data, taken off the `pipe` for retransmissions (not for new data):
    /// such an ACK still tells of a segment that left the network. Our
    /// receiver sends them for what it drops (its hole slots full, or
    /// out-of-order data it will not hold); without them a pipe that no
    /// SACK drained kept the holes back until the retransmission timeout.
    /// New data would only be dropped in turn until the holes are filled
    /// (counted for it too, `sim_tcp_loss` at 1 % took 26.2 s at p90
    /// instead of 23.8 s).
    sack_dup_credit: usize,
    /// sal-tcp: RACK loss detection (`crate::rack`): retransmissions lost
    /// in turn, and losses with too little SACKed above them for a fast
    /// retransmit, found by the send order and a reordering window.
    rack: Rack,
    /// sal-tcp: in a SACK-based recovery, a partial ACK with nothing
    /// SACKed restarted the retransmission timer: later ones do not (RFC
    /// 6582's "Impatient" variant). With nothing SACKed, each resends one
    /// segment a round trip; when the peer dropped the rest of a large
    /// window (our receiver does, its hole slots full), the timeout resends
    /// it by slow start instead, where restarting the timer on every
    /// partial ACK kept it from ever firing (the SAL's `sim_blackhole`
    /// upload, a window of 170 segments lost, finished 23 s after the cut
    /// instead of under 8 s).
    partial_ack_restarted_timer: bool,
    /// sal-tcp: the tail loss probe (`crate::tlp`).
    tlp: LossProbe,
    /// sal-tcp: bytes just received twice, to report as a D-SACK block in
    /// the next ACK (`crate::dsack`).
    dsack: DuplicateReport,
    /// sal-tcp: the last window reduction, to undo if the peer D-SACKs
    /// every retransmission since (`crate::undo`).
    undo: Undo,

    /// Duration for Delayed ACK. If None no ACKs will be delayed.
    ack_delay: Option<Duration>,
    /// Delayed ack timer. If set, packets containing exclusively
    /// ACK or window updates (ie, no data) won't be sent until expiry.
    ack_delay_timer: AckDelayTimer,
    /// sal-tcp: the ACK of a SYN-ACK waits on the delayed-ACK timer
    /// (`Config::hold_handshake_ack`).
    hold_handshake_ack: bool,

    /// Used for rate-limiting: No more challenge ACKs will be sent until this instant.
    challenge_ack_timer: Instant,

    /// Nagle's Algorithm enabled.
    nagle: bool,

    /// The congestion control algorithm.
    congestion_controller: congestion::AnyController,

    /// Whether TCP timestamps are on (smoltcp: a tsval generator is set).
    timestamps: bool,
    /// Added to the clock in milliseconds to make our tsval (the ISN).
    ts_offset: u32,

    /// 0 if not seen or timestamp not enabled
    last_remote_tsval: u32,

    /// A segment owed in answer to the last received one.
    reply: Option<Reply>,
    /// Our MSS: the largest payload we send and the one we advertise.
    local_mss: u16,
    /// The smallest buffer allocation, for the send-queue limit.
    min_buffer: u32,
    /// How often buffers are reconsidered (see `crate::buffer`).
    trim_interval: Duration,
    /// The next trim point, while the buffers hold memory.
    trim_at: Option<Instant>,
    /// sal-tcp: bytes that joined the receive queue in order since the last
    /// trim point (`[0]`) and in the trim interval before (`[1]`); see
    /// `ooo_limit`.
    rx_in_order: [u32; 2],
    /// sal-tcp: out-of-order segments refused, and out-of-order ranges
    /// given up at trim points, because holding them would have cost more
    /// memory than the data received justifies (see `ooo_limit`).
    ooo_dropped: u64,
    /// sal-tcp: the host's buffer memory is under pressure (see
    /// `set_memory_pressure`): no buffer grows.
    memory_pressure: bool,
    /// sal-tcp: segments (or their tails) dropped because the receive
    /// buffer could not grow under memory pressure.
    pressure_dropped: u64,
    /// sal-tcp: what loss recovery did (`crate::counters`).
    loss_counters: LossCounters,
    /// sal-tcp: the most received data the socket offers to hold (see
    /// `set_recv_cap`); `usize::MAX` for its buffer's maximum.
    recv_cap: usize,
    /// sal-tcp: `remote_last_win` came in a SYN, unscaled (RFC 7323 2.2).
    /// Read as scaled, the 65,535 bytes of a SYN-ACK were a promise of
    /// 2 MiB at a 1 MiB buffer's scale, which no memory pressure or receive
    /// cap could cut (`promised_window`). (`last_scaled_window` still reads
    /// it as scaled, which keeps the window the handshake ends with from
    /// taking a window update of its own: the first ACK carries it.)
    remote_last_win_unscaled: bool,
    /// sal-tcp: the furthest right edge any window we advertised reached
    /// (see `advertised_edge`): data up to it is taken, as promised, though
    /// a later window ended short of it (truncated to the scale's unit).
    advertised_max_edge: Option<TcpSeqNumber>,
}

/// A segment with no flags, options or payload, numbered 0: the base of
/// every segment the socket builds.
pub(crate) const EMPTY_SEGMENT: TcpRepr<'static> = TcpRepr {
    src_port: 0,
    dst_port: 0,
    control: TcpControl::None,
    seq_number: TcpSeqNumber(0),
    ack_number: None,
    window_len: 0,
    window_scale: None,
    max_seg_size: None,
    sack_permitted: false,
    sack_ranges: [None, None, None],
    timestamp: None,
    payload: &[],
};

/// sal-tcp: bytes of receive buffer span out-of-order data may take per
/// byte actually received (see `Socket::ooo_limit`).
const OOO_SPAN_PER_BYTE: usize = 2;
/// sal-tcp: and segments of span on top of that.
const OOO_SPARE_SEGMENTS: usize = 2;

/// The peer's MSS until it tells us (RFC 1122).
const DEFAULT_MSS: usize = 536;

/// Minimum MSS we accept from the remote, same value as Linux's `TCP_MIN_SND_MSS`.
/// Without it, a peer advertising a tiny MSS could force segments to carry little
/// or no payload once the TCP options length is subtracted from the effective MSS,
/// stalling the connection in an endless stream of empty segments.
///
/// Must exceed the maximum possible length of the TCP options (currently 12, for
/// timestamps) so that every segment carries some payload.
const MIN_REMOTE_MSS: usize = MIN_MSS as usize;

/// The receive window scale for a buffer of `capacity` bytes, as smoltcp
/// derives it (see [`Config::window_shift`]).
fn window_shift(capacity: usize) -> u8 {
    let log2 = usize::BITS - capacity.leading_zeros();
    log2.saturating_sub(16) as u8
}

impl Socket {
    /// A closed socket with the settings of `config` (out-of-range values are
    /// clamped; see [`Config::validate`]). Holds no buffer memory until data
    /// flows. The receive window scale is fixed here from
    /// `config.max_recv_buffer`.
    pub fn new(config: &Config) -> Socket {
        let rx_buffer = ElasticBuffer::new(config.min_buffer, config.max_recv_buffer);
        let tx_buffer = ElasticBuffer::new(config.min_buffer, config.max_send_buffer);
        Socket {
            state: State::Closed,
            timer: Timer::new(),
            rtte: RttEstimator::default(),
            hystart: HyStart::default(),
            handshake_timeouts: 0,
            assembler: Assembler::new(),
            tx_buffer,
            rx_buffer,
            rx_fin_received: false,
            timeout: config.timeout,
            keep_alive: config.keep_alive,
            has_peer: false,
            passive: false,
            isn: TcpSeqNumber::default(),
            local_seq_no: TcpSeqNumber::default(),
            remote_seq_no: TcpSeqNumber::default(),
            remote_last_seq: TcpSeqNumber::default(),
            remote_max_seq: TcpSeqNumber::default(),
            remote_last_ack: None,
            remote_last_win: 0,
            remote_win_len: 0,
            max_remote_win: 0,
            remote_win_shift: config.window_shift(),
            remote_win_scale: None,
            remote_has_sack: false,
            remote_mss: DEFAULT_MSS,
            remote_last_ts: None,
            last_sent: Instant::ZERO,
            local_rx_last_ack: None,
            local_rx_last_seq: None,
            local_rx_recent_seq: [None; 3],
            local_rx_dup_acks: 0,
            pending_fast_retransmit: false,
            recover: None,
            fast_recovery: false,
            limited_transmit: 0,
            scoreboard: Scoreboard::default(),
            sack_recovery: false,
            high_rxt: TcpSeqNumber::default(),
            sack_dup_credit: 0,
            rack: Rack::default(),
            partial_ack_restarted_timer: false,
            tlp: LossProbe::default(),
            dsack: DuplicateReport::default(),
            undo: Undo::default(),
            ack_delay: config.ack_delay,
            ack_delay_timer: AckDelayTimer::Idle,
            hold_handshake_ack: config.hold_handshake_ack,
            challenge_ack_timer: Instant::from_secs(0),
            nagle: config.nagle,
            timestamps: config.timestamps,
            ts_offset: 0,
            last_remote_tsval: 0,
            congestion_controller: congestion::AnyController::new(config.congestion_control),
            reply: None,
            local_mss: config.mss.max(MIN_MSS),
            min_buffer: config.min_buffer.clamp(1, u32::MAX as usize) as u32,
            trim_interval: config.trim_interval.max(Duration::from_millis(1)),
            trim_at: None,
            rx_in_order: [0; 2],
            ooo_dropped: 0,
            memory_pressure: false,
            pressure_dropped: 0,
            loss_counters: LossCounters::default(),
            recv_cap: usize::MAX,
            remote_last_win_unscaled: false,
            advertised_max_edge: None,
        }
    }

    /// Enable or disable TCP timestamps (RFC 7323) for the next connection.
    /// A peer that does not offer them turns them off for the connection.
    pub fn set_timestamps_enabled(&mut self, enabled: bool) {
        self.timestamps = enabled;
    }

    /// Return whether TCP Timestamp is enabled.
    pub fn timestamp_enabled(&self) -> bool {
        self.timestamps
    }

    /// Our tsval at `now`: milliseconds plus a per-connection offset (the ISN),
    /// so that a peer's PAWS check sees one clock from SYN to close.
    fn tsval(&self, now: Instant) -> u32 {
        (now.total_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// The timestamp option for a segment sent at `now`, echoing `tsecr`.
    fn timestamp_option(&self, now: Instant, tsecr: u32) -> Option<TcpTimestampRepr> {
        self.timestamps
            .then(|| TcpTimestampRepr::new(self.tsval(now), tsecr))
    }

    /// Set an algorithm for congestion control.
    ///
    /// `CongestionControl::None` indicates that no congestion control is applied.
    /// Options `CongestionControl::Cubic` and `CongestionControl::Reno` are also available.
    /// `CongestionControl::Reno` is a classic congestion control algorithm valued for its simplicity.
    /// Despite having a lower algorithmic complexity than `Cubic`,
    /// it is less efficient in terms of bandwidth usage.
    ///
    /// `CongestionControl::Cubic` represents a modern congestion control algorithm designed to
    /// be more efficient and fair compared to `CongestionControl::Reno`.
    /// It is the default choice for Linux, Windows, and macOS.
    /// `CongestionControl::Cubic` relies on double precision (`f64`) floating point operations, which may cause issues in some contexts:
    /// * Small embedded processors (such as Cortex-M0, Cortex-M1, and Cortex-M3) do not have an FPU, and floating point operations consume significant amounts of CPU time and Flash space.
    /// * Interrupt handlers should almost always avoid floating-point operations.
    /// * Kernel-mode code on desktop processors usually avoids FPU operations to reduce the penalty of saving and restoring FPU registers.
    ///
    /// In all these cases, `CongestionControl::Reno` is a better choice of congestion control algorithm.
    pub fn set_congestion_control(&mut self, congestion_control: CongestionControl) {
        self.congestion_controller = congestion::AnyController::new(congestion_control);
    }

    /// Return the current congestion control algorithm.
    pub fn congestion_control(&self) -> CongestionControl {
        self.congestion_controller.kind()
    }

    /// Return the timeout duration.
    ///
    /// See also the [set_timeout](#method.set_timeout) method.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Return the ACK delay duration.
    ///
    /// See also the [set_ack_delay](#method.set_ack_delay) method.
    pub fn ack_delay(&self) -> Option<Duration> {
        self.ack_delay
    }

    /// Return whether Nagle's Algorithm is enabled.
    ///
    /// See also the [set_nagle_enabled](#method.set_nagle_enabled) method.
    pub fn nagle_enabled(&self) -> bool {
        self.nagle
    }

    /// Return the current window field value, including scaling according to RFC 1323.
    ///
    /// Used in internal calculations as well as packet generation.
    #[inline]
    fn scaled_window(&self) -> u16 {
        u16::try_from(self.rx_window() >> self.remote_win_shift).unwrap_or(u16::MAX)
    }

    /// sal-tcp: the receive window to offer, in bytes. Normally what the
    /// buffer may grow to hold (its capacity minus what is queued). Under
    /// memory pressure, only what the storage already held can take (see
    /// `ElasticBuffer::pressure_capacity`), but never less than what is
    /// left of the window already advertised: the right edge does not
    /// move left (RFC 9293 3.8.6.2.2, SHLD-14; RFC 7323 2.4), but for
    /// less than the window scale's unit when that storage covers what is
    /// left (the scale truncates it; a promise beyond the storage is kept
    /// whole, rounded up to the unit). Data the
    /// storage cannot take within that edge is dropped, and the peer
    /// resends it (see `pressure_clip`).
    ///
    /// The same bound applies to a socket with a receive cap (see
    /// `set_recv_cap`): it offers only what the cap leaves.
    fn rx_window(&self) -> usize {
        let window = self.rx_buffer.window();
        let held = self.rx_buffer.len();
        let mut free = self.recv_cap.saturating_sub(held);
        if self.memory_pressure {
            free = free.min(self.rx_buffer.pressure_capacity().saturating_sub(held));
        }
        if free >= window {
            return window;
        }
        // Room for what was promised: the window is the room (which the
        // scale truncates to its unit, a retraction of less than a unit
        // that RFC 7323 2.4 allows for). Only a promise beyond the room is
        // kept whole, rounded up to the unit: rounded up every time, even
        // when the room just met it, the edge crept right by up to a unit
        // per segment, past the room.
        let promised = self.promised_window();
        if free >= promised {
            return free;
        }
        let unit = (1usize << self.remote_win_shift) - 1;
        window.min(promised.saturating_add(unit) & !unit)
    }

    /// sal-tcp: the right edge of the last window advertised, if any.
    fn advertised_edge(&self) -> Option<TcpSeqNumber> {
        let last_ack = self.remote_last_ack?;
        let shift = match self.remote_last_win_unscaled {
            true => 0,
            false => self.remote_win_shift,
        };
        Some(last_ack + ((self.remote_last_win as usize) << shift))
    }

    /// sal-tcp: records the edge of the window just advertised, if it is
    /// the furthest yet (`advertised_max_edge`).
    fn note_advertised_edge(&mut self) {
        if let Some(edge) = self.advertised_edge() {
            if self.advertised_max_edge.is_none_or(|max| edge > max) {
                self.advertised_max_edge = Some(edge);
            }
        }
    }

    /// sal-tcp: bytes between the next byte expected and the right edge of
    /// the last window advertised (0 if none, or if data reached it).
    fn promised_window(&self) -> usize {
        let Some(edge) = self.advertised_edge() else {
            return 0;
        };
        let next_ack = self.remote_seq_no + self.rx_buffer.len();
        if edge > next_ack {
            edge - next_ack
        } else {
            0
        }
    }

    /// Return the last window field value, including scaling according to RFC 1323.
    ///
    /// Used in internal calculations as well as packet generation.
    ///
    /// Unlike `remote_last_win`, we take into account new packets received (but not acknowledged)
    /// since the last window update and adjust the window length accordingly. This ensures a fair
    /// comparison between the last window length and the new window length we're going to
    /// advertise.
    #[inline]
    fn last_scaled_window(&self) -> Option<u16> {
        let last_ack = self.remote_last_ack?;
        let next_ack = self.remote_seq_no + self.rx_buffer.len();

        let last_win = (self.remote_last_win as usize) << self.remote_win_shift;
        // sal-tcp: data up to an earlier, further edge may have been taken
        // (see `advertised_max_edge`): nothing is left of this window then.
        let last_edge = last_ack + last_win;
        let last_win_adjusted = if last_edge > next_ack {
            last_edge - next_ack
        } else {
            0
        };

        Some(u16::try_from(last_win_adjusted >> self.remote_win_shift).unwrap_or(u16::MAX))
    }

    /// Set the timeout duration.
    ///
    /// A socket with a timeout duration set will abort the connection if either of the following
    /// occurs:
    ///
    ///   * After a [connect](#method.connect) call, the remote endpoint does not respond within
    ///     the specified duration;
    ///   * After establishing a connection, there is data in the transmit buffer and the remote
    ///     endpoint exceeds the specified duration between any two packets it sends;
    ///   * After enabling [keep-alive](#method.set_keep_alive), the remote endpoint exceeds
    ///     the specified duration between any two packets it sends.
    pub fn set_timeout(&mut self, duration: Option<Duration>) {
        self.timeout = duration
    }

    /// Set the ACK delay duration.
    ///
    /// By default, the ACK delay is set to 10ms.
    pub fn set_ack_delay(&mut self, duration: Option<Duration>) {
        self.ack_delay = duration
    }

    /// sal-tcp: sends what acknowledgement the delayed-ACK timer holds at
    /// the next transmit, as if the timer ran out now: for a caller whose
    /// application will wait for the peer rather than write (see
    /// `Config::hold_handshake_ack`). Nothing held, nothing sent.
    pub fn release_ack(&mut self) {
        if matches!(self.ack_delay_timer, AckDelayTimer::Waiting(_)) {
            self.ack_delay_timer = AckDelayTimer::Immediate;
        }
    }

    /// sal-tcp: whether the socket owes the peer an acknowledgement it has
    /// not sent yet (held by the delayed-ACK timer, or due at the next
    /// transmit): its next segment is then certain to come soon, for a
    /// caller with something to put in front of it (the SAL's
    /// acknowledgement of the peer's SAL FIN, which came with its TCP FIN).
    pub fn owes_ack(&self) -> bool {
        self.ack_to_transmit()
    }

    /// sal-tcp: sends the FIN again at the next transmit, if it is all
    /// that is in flight (every byte before it acknowledged), and nothing
    /// else: no ACK ahead of it (as [`rewind`](Socket::rewind) sends), no
    /// restart of the window. For the SAL, whose own FIN rides on it and
    /// whose retransmission timer resends both. Returns whether it will.
    pub fn resend_fin(&mut self) -> bool {
        let fin_only = matches!(
            self.state,
            State::FinWait1 | State::Closing | State::LastAck
        ) && self.tx_buffer.is_empty()
            && self.flight_size() > 0;
        if fin_only {
            self.remote_last_seq = self.local_seq_no;
            // No round-trip sample from what is resent (Karn).
            self.rtte.on_retransmit();
        }
        fin_only
    }

    /// Enable or disable Nagle's Algorithm.
    ///
    /// Also known as "tinygram prevention". By default, it is enabled.
    /// Disabling it is equivalent to Linux's TCP_NODELAY flag.
    ///
    /// When enabled, Nagle's Algorithm prevents sending segments smaller than MSS if
    /// there is data in flight (sent but not acknowledged). In other words, it ensures
    /// at most only one segment smaller than MSS is in flight at a time.
    ///
    /// It ensures better network utilization by preventing sending many very small packets,
    /// at the cost of increased latency in some situations, particularly when the remote peer
    /// has ACK delay enabled.
    pub fn set_nagle_enabled(&mut self, enabled: bool) {
        self.nagle = enabled
    }

    /// Return the keep-alive interval.
    ///
    /// See also the [set_keep_alive](#method.set_keep_alive) method.
    pub fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive
    }

    /// Set the keep-alive interval.
    ///
    /// An idle socket with a keep-alive interval set will transmit a "keep-alive ACK" packet
    /// every time it receives no communication during that interval. As a result, three things
    /// may happen:
    ///
    ///   * The remote endpoint is fine and answers with an ACK packet.
    ///   * The remote endpoint has rebooted and answers with an RST packet.
    ///   * The remote endpoint has crashed and does not answer.
    ///
    /// The keep-alive functionality together with the timeout functionality allows to react
    /// to these error conditions.
    pub fn set_keep_alive(&mut self, interval: Option<Duration>) {
        self.keep_alive = interval;
        if self.keep_alive.is_some() {
            // If the connection is idle and we've just set the option, it would not take effect
            // until the next packet, unless we wind up the timer explicitly.
            self.timer.set_keep_alive();
        }
    }

    /// Return the connection state, in terms of the TCP state machine.
    #[inline]
    pub fn state(&self) -> State {
        self.state
    }

    /// Back to CLOSED without a word to the peer, keeping for the
    /// application what the peer sent and it has not read yet, and the end
    /// of stream after it if the peer's FIN came (Linux, too, keeps a
    /// socket's receive queue until the application closes it, after a
    /// reset as at the end of TIME-WAIT). Everything else is forgotten and
    /// the send buffer's memory freed. Returns whether anything is left for
    /// the application to read (bytes or the end of stream); if not, the
    /// receive buffer's memory is freed too.
    ///
    /// TIME-WAIT's end closes this way: smoltcp dropped the receive buffer
    /// there, and an application that read slowly lost the end of its data
    /// and read end of stream where it should have. So does a connection
    /// that the layer above reset or gave up on.
    pub fn forget_peer(&mut self) -> bool {
        let unread = std::mem::take(&mut self.rx_buffer);
        let fin = self.rx_fin_received;
        self.reset();
        let left = !unread.is_empty() || fin;
        if left {
            self.rx_buffer = unread;
            self.rx_fin_received = fin;
        }
        left
    }

    fn reset(&mut self) {
        self.state = State::Closed;
        self.timer = Timer::new();
        self.rtte = RttEstimator::default();
        self.hystart = HyStart::default();
        self.handshake_timeouts = 0;
        self.assembler = Assembler::new();
        self.tx_buffer.release();
        self.rx_buffer.release();
        self.rx_fin_received = false;
        self.passive = false;
        self.has_peer = false;
        self.local_seq_no = TcpSeqNumber::default();
        self.remote_seq_no = TcpSeqNumber::default();
        self.remote_last_seq = TcpSeqNumber::default();
        self.remote_max_seq = TcpSeqNumber::default();
        self.remote_last_ack = None;
        self.remote_last_win = 0;
        self.remote_last_win_unscaled = false;
        self.advertised_max_edge = None;
        self.remote_win_len = 0;
        self.max_remote_win = 0;
        self.remote_win_scale = None;
        self.remote_win_shift = window_shift(self.rx_buffer.capacity());
        self.remote_mss = DEFAULT_MSS;
        self.remote_last_ts = None;
        self.last_sent = Instant::ZERO;
        self.ack_delay_timer = AckDelayTimer::Idle;
        self.challenge_ack_timer = Instant::from_secs(0);
        self.reply = None;
        self.trim_at = None;
        self.recover = None;
        self.fast_recovery = false;
        self.limited_transmit = 0;
        self.scoreboard.clear();
        self.sack_recovery = false;
        self.rack = Rack::default();
        self.tlp.end();
        self.dsack = DuplicateReport::default();
        self.undo = Undo::default();
        self.local_rx_last_seq = None;
        self.local_rx_recent_seq = [None; 3];
        self.rx_in_order = [0; 2];
    }

    /// Wait for a SYN (passive open), answering it with initial sequence
    /// number `isn`. Choose `isn` unpredictably (RFC 6528): it is also the
    /// offset of our TCP timestamps.
    ///
    /// This function returns `Err(ListenError::InvalidState)` if the socket was already open
    /// (see [is_open](#method.is_open)) other than by listening.
    pub fn listen(&mut self, isn: TcpSeqNumber) -> Result<(), ListenError> {
        if self.is_open() {
            // If we were already listening there is nothing to do; exit early.
            if matches!(self.state, State::Listen) {
                return Ok(());
            } else {
                return Err(ListenError::InvalidState);
            }
        }

        self.reset();
        self.passive = true;
        self.isn = isn;
        self.ts_offset = isn.0 as u32;
        self.set_state(State::Listen);
        Ok(())
    }

    /// Open a connection (active open): the next [`poll_transmit`] sends a SYN
    /// with initial sequence number `isn`. Choose `isn` unpredictably
    /// (RFC 6528): it is also the offset of our TCP timestamps.
    ///
    /// This function returns an error if the socket was open; see [is_open](#method.is_open).
    ///
    /// [`poll_transmit`]: Socket::poll_transmit
    pub fn connect(&mut self, isn: TcpSeqNumber) -> Result<(), ConnectError> {
        if self.is_open() {
            return Err(ConnectError::InvalidState);
        }

        self.reset();
        self.has_peer = true;
        self.set_state(State::SynSent);

        self.isn = isn;
        self.ts_offset = isn.0 as u32;
        self.local_seq_no = isn;
        self.remote_last_seq = isn;
        self.remote_max_seq = isn;
        Ok(())
    }

    /// Close the transmit half of the full-duplex connection.
    ///
    /// Note that there is no corresponding function for the receive half of the full-duplex
    /// connection; only the remote end can close it. If you no longer wish to receive any
    /// data and would like to reuse the socket right away, use [abort](#method.abort).
    pub fn close(&mut self) {
        match self.state {
            // In the LISTEN state there is no established connection.
            State::Listen => self.set_state(State::Closed),
            // In the SYN-SENT state the remote endpoint is not yet synchronized and, upon
            // receiving an RST, will abort the connection.
            State::SynSent => self.set_state(State::Closed),
            // In the SYN-RECEIVED, ESTABLISHED and CLOSE-WAIT states the transmit half
            // of the connection is open, and needs to be explicitly closed with a FIN.
            State::SynReceived | State::Established => self.set_state(State::FinWait1),
            State::CloseWait => self.set_state(State::LastAck),
            // In the FIN-WAIT-1, FIN-WAIT-2, CLOSING, LAST-ACK, TIME-WAIT and CLOSED states,
            // the transmit half of the connection is already closed, and no further
            // action is needed.
            State::FinWait1
            | State::FinWait2
            | State::Closing
            | State::TimeWait
            | State::LastAck
            | State::Closed => (),
        }
    }

    /// Aborts the connection, if any.
    ///
    /// This function instantly closes the socket. One reset packet will be sent to the remote
    /// endpoint.
    ///
    /// In terms of the TCP state machine, the socket may be in any state and is moved to
    /// the `CLOSED` state.
    pub fn abort(&mut self) {
        self.set_state(State::Closed);
    }

    /// The path changed (a SAL migration), or went silent and answered a
    /// probe: resend, from the oldest unacknowledged byte, everything in
    /// flight, as the congestion window lets it out, and first a pure ACK
    /// of what we hold. Returns the bytes of sequence space that will be
    /// resent (0: nothing was in flight).
    ///
    /// Segments in flight on a path that died are lost, and the
    /// retransmission timer would resend them only after its timeout
    /// (SRTT + 200 ms at least, doubling with each in a row).
    /// This is that timeout's go-back without waiting for it and without its
    /// congestion response (the loss was the old path's, not congestion on
    /// the new one), but not at the old path's rate: the congestion window
    /// restarts from the initial window at most, as RFC 9000 (9.4) restarts
    /// a new path and RFC 5681 (4.1) and Linux a flow that was silent, and
    /// slow start regrows it from the ACKs, up to 3/4 of the window given
    /// up before it slows (ssthresh is kept there at least, as Linux's
    /// restart does). Before, the whole flight went out at once (44
    /// segments in one trace), onto a path whose capacity nothing had
    /// measured. RTT samples of the resent data are not taken (Karn), any
    /// fast recovery ends, and duplicate ACKs of the oldest segment (the
    /// old path's data still arriving) start no fast retransmit of the
    /// segment this resends first, as after a timeout.
    /// The ACK tells the peer at once where we are, so that what it resends
    /// is only what we lack. Takes no memory: the data is still in the send
    /// buffer until acknowledged.
    ///
    /// [`poll_transmit`]: Socket::poll_transmit
    pub fn rewind(&mut self) -> usize {
        if !matches!(
            self.state,
            State::Established
                | State::FinWait1
                | State::FinWait2
                | State::Closing
                | State::CloseWait
                | State::LastAck
        ) {
            return 0;
        }
        let in_flight = self.flight_size();
        self.congestion_controller.inner_mut().on_restart(u32::MAX);
        if in_flight > 0 {
            self.remote_last_seq = self.local_seq_no;
            self.pending_fast_retransmit = false;
            // As after a timeout: duplicate ACKs of the oldest segment,
            // which goes first, start no fast retransmit.
            self.recover = Some(self.local_seq_no + 1);
            self.fast_recovery = false;
            // The old path's duplicate ACKs: neither limited transmit nor
            // a fast retransmit on the new one.
            self.local_rx_dup_acks = 0;
            self.limited_transmit = 0;
            // sal-tcp: all is resent, SACKed or not (the peer may have
            // reneged, RFC 2018 8).
            self.scoreboard.clear();
            self.sack_recovery = false;
            self.rack.forget_flight();
            self.rtte.on_retransmit();
        }
        // sal-tcp: the rewind resends the tail too (`crate::tlp`), and
        // restarts the window: no reduction left to undo (`crate::undo`).
        self.tlp.end();
        self.undo.end();
        // sal-tcp: and HyStart++ begins its rounds afresh, even with
        // nothing to resend (the controller left Conservative Slow Start).
        self.hystart.on_retransmit();
        if self.reply.is_none() {
            let tsecr = self.timestamps.then_some(self.last_remote_tsval);
            self.reply = Some(Reply::Ack { count: 1, tsecr });
        }
        in_flight
    }

    /// sal-tcp: the flow moved to another path at `now` (a SAL migration:
    /// either end's locator changed): forget the old path's round trip,
    /// then [`rewind`](Socket::rewind). Returns what `rewind` returns.
    ///
    /// The round-trip estimator starts again as a new connection's (no
    /// sample, a timeout of 1 s, RFC 6298 2.1, no backoff), and so does
    /// RACK's least round trip (`crate::rack`): RFC 9000 (9.4) resets
    /// both for a new path. A retransmission timer running for the old
    /// path's flight restarts from now with that timeout, for the flight
    /// resent. Kept, the old path's figures were wrong both ways: moved
    /// from a 10 ms path to a 300 ms one, the timer of the old flight,
    /// held back during the move, fired 38 ms after the flight was resent
    /// on the new path, and the window restarted from one segment resent
    /// what was on its way (`sal/tests/sim_path_change.rs`); RACK's
    /// reordering window stayed a quarter of the old least round trip
    /// for five minutes. The congestion window restarts as `rewind`
    /// restarts it, ssthresh kept: reset as well, as RFC 9000 resets the
    /// whole controller, slow start overshot the short queues of that
    /// test (moved to the longer path without loss, 356 segments resent
    /// against 184, the transfer 16.1 s against 11.3 s). A path that went
    /// silent and answered a probe is the same path: `rewind` alone.
    pub fn new_path(&mut self, now: Instant) -> usize {
        self.rtte.new_path();
        if self.timer.is_retransmit() {
            let rto = self.rtte.retransmission_timeout();
            self.timer.set_for_retransmit(now, rto);
        }
        self.rewind()
    }

    /// sal-tcp: a round trip the SAL measured on the flow's path at
    /// `now` (the answer to a migration's RSYN, sent once): the first
    /// sample of a path that has none, as Linux seeds a connection's
    /// estimator from its handshake. Without it a new path
    /// ([`new_path`](Socket::new_path)) has the initial timeout of 1 s
    /// until data sent after the move is acknowledged, and a segment of
    /// the resent flight lost on the new path waited that second
    /// (after a rewind only the timeout repairs the head: `recover` holds
    /// duplicate ACKs off, as after a timeout), where the old estimate
    /// would have resent it after about 200 ms. A running retransmission
    /// timer restarts from now with the timeout the sample gives. Ignored
    /// once the path has a sample of its own.
    pub fn seed_round_trip(&mut self, now: Instant, round_trip: Duration) {
        if self.rtte.srtt_sample().is_some() {
            return;
        }
        let millis = u32::try_from(round_trip.total_millis()).unwrap_or(u32::MAX);
        self.rtte.sample(now, millis);
        if self.timer.is_retransmit() {
            let rto = self.rtte.retransmission_timeout();
            self.timer.set_for_retransmit(now, rto);
        }
    }

    /// Return whether the socket is passively listening for incoming connections.
    ///
    /// In terms of the TCP state machine, the socket must be in the `LISTEN` state.
    #[inline]
    pub fn is_listening(&self) -> bool {
        matches!(self.state, State::Listen)
    }

    /// Return whether the socket is open.
    ///
    /// This function returns true if the socket will process incoming or dispatch outgoing
    /// packets. Note that this does not mean that it is possible to send or receive data through
    /// the socket; for that, use [can_send](#method.can_send) or [can_recv](#method.can_recv).
    ///
    /// In terms of the TCP state machine, the socket must not be in the `CLOSED`
    /// or `TIME-WAIT` states.
    #[inline]
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed | State::TimeWait)
    }

    /// Return whether a connection is active.
    ///
    /// This function returns true if the socket is actively exchanging packets with
    /// a remote endpoint. Note that this does not mean that it is possible to send or receive
    /// data through the socket; for that, use [can_send](#method.can_send) or
    /// [can_recv](#method.can_recv).
    ///
    /// If a connection is established, [abort](#method.close) will send a reset to
    /// the remote endpoint.
    ///
    /// In terms of the TCP state machine, the socket must not be in the `CLOSED`, `TIME-WAIT`,
    /// or `LISTEN` state.
    #[inline]
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Closed | State::TimeWait | State::Listen)
    }

    /// Return whether the transmit half of the full-duplex connection is open.
    ///
    /// This function returns true if it's possible to send data and have it arrive
    /// to the remote endpoint. However, it does not make any guarantees about the state
    /// of the transmit buffer, and even if it returns true, [send](#method.send) may
    /// not be able to enqueue any octets.
    ///
    /// In terms of the TCP state machine, the socket must be in the `ESTABLISHED` or
    /// `CLOSE-WAIT` state.
    #[inline]
    pub fn may_send(&self) -> bool {
        match self.state {
            State::Established => true,
            // In CLOSE-WAIT, the remote endpoint has closed our receive half of the connection
            // but we still can transmit indefinitely.
            State::CloseWait => true,
            _ => false,
        }
    }

    /// Return whether the receive half of the full-duplex connection is open.
    ///
    /// This function returns true if it's possible to receive data from the remote endpoint.
    /// It will return true while there is data in the receive buffer, and if there isn't,
    /// as long as the remote endpoint has not closed the connection.
    ///
    /// In terms of the TCP state machine, the socket must be in the `ESTABLISHED`,
    /// `FIN-WAIT-1`, or `FIN-WAIT-2` state, or have data in the receive buffer instead.
    #[inline]
    pub fn may_recv(&self) -> bool {
        match self.state {
            State::Established => true,
            // In FIN-WAIT-1/2, we have closed our transmit half of the connection but
            // we still can receive indefinitely.
            State::FinWait1 | State::FinWait2 => true,
            // If we have something in the receive buffer, we can receive that.
            _ if self.can_recv() => true,
            _ => false,
        }
    }

    /// Whether the peer's FIN arrived (in order): the receive half ends once
    /// what came before it is read, whatever happens to the connection
    /// after (a reset included).
    #[inline]
    pub fn peer_finished(&self) -> bool {
        self.rx_fin_received
    }

    /// Check whether the transmit half of the full-duplex connection is open
    /// (see [may_send](#method.may_send)), and the transmit buffer is not full.
    #[inline]
    pub fn can_send(&self) -> bool {
        if !self.may_send() {
            return false;
        }

        self.send_space() > 0
    }

    /// How many bytes the transmit queue may hold right now: twice the
    /// congestion window (what keeps the pipe full while the application
    /// refills), at least the configured first allocation, at most the
    /// configured maximum. This is what makes the send buffer's memory follow
    /// the flow's bandwidth-delay product rather than its maximum.
    pub fn send_limit(&self) -> usize {
        let cwnd = self.congestion_controller.inner().window();
        cwnd.saturating_mul(2)
            .max(self.min_buffer as usize)
            .min(self.tx_buffer.capacity())
    }

    /// How many more bytes `send_slice` would accept now. Under memory
    /// pressure (see [`set_memory_pressure`](Socket::set_memory_pressure))
    /// only the free space of the storage already held: the send buffer
    /// does not grow, and the application waits for acknowledgements.
    pub fn send_space(&self) -> usize {
        let limit = if self.memory_pressure {
            self.send_limit().min(self.tx_buffer.pressure_capacity())
        } else {
            self.send_limit()
        };
        limit.saturating_sub(self.tx_buffer.len())
    }

    /// Return the maximum number of bytes inside the recv buffer.
    #[inline]
    pub fn recv_capacity(&self) -> usize {
        self.rx_buffer.capacity()
    }

    /// Return the maximum number of bytes inside the transmit buffer.
    #[inline]
    pub fn send_capacity(&self) -> usize {
        self.tx_buffer.capacity()
    }

    /// Check whether the receive buffer is not empty.
    #[inline]
    pub fn can_recv(&self) -> bool {
        !self.rx_buffer.is_empty()
    }

    fn send_impl<'b, F, R>(&'b mut self, f: F) -> Result<R, SendError>
    where
        F: FnOnce(&'b mut ElasticBuffer, usize) -> (usize, R),
    {
        if !self.may_send() {
            return Err(SendError::InvalidState);
        }

        let room = self.send_space();
        let old_length = self.tx_buffer.len();
        let (size, result) = f(&mut self.tx_buffer, room);
        if size > 0 {
            // The connection might have been idle for a long time, and so remote_last_ts
            // would be far in the past. Unless we clear it here, we'll abort the connection
            // down over in dispatch() by erroneously detecting it as timed out.
            if old_length == 0 {
                self.remote_last_ts = None
            }

            // if remote win is zero and we go from having no data to some data pending to
            // send, start the zero window probe timer.
            if self.remote_win_len == 0 && self.timer.is_idle() {
                let delay = self.rtte.retransmission_timeout();
                tcp_trace!("starting zero-window-probe timer for t+{}", delay);

                // We don't have access to the current time here, so use Instant::ZERO instead.
                // this will cause the first ZWP to be sent immediately, but that's okay.
                self.timer.set_for_zero_window_probe(Instant::ZERO, delay);
            }

            tcp_trace!(
                "tx buffer: enqueueing {} octets (now {})",
                size,
                old_length + size
            );
        }
        Ok(result)
    }

    /// Call `f` with the largest contiguous free slice of the transmit buffer
    /// (within [`send_space`](Socket::send_space); the buffer grows first if it
    /// has no free byte), and enqueue the amount of elements returned by `f`.
    /// Lets a caller read from a file descriptor straight into the buffer.
    ///
    /// This function returns `Err(SendError::InvalidState)` if the transmit half of
    /// the connection is not open; see [may_send](#method.may_send).
    pub fn send<'b, F, R>(&'b mut self, f: F) -> Result<R, SendError>
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        self.send_impl(|tx_buffer, room| {
            if room == 0 {
                // sal-tcp: no room, no growth (the buffer grows when full).
                let (_, result) = f(&mut []);
                return (0, result);
            }
            tx_buffer.enqueue_many_with(|buf| {
                let size = buf.len().min(room);
                f(&mut buf[..size])
            })
        })
    }

    /// Enqueue a sequence of octets to be sent, and fill it from a slice.
    ///
    /// This function returns the amount of octets actually enqueued, which is limited
    /// by [`send_space`](Socket::send_space); down to zero.
    ///
    /// See also [send](#method.send).
    pub fn send_slice(&mut self, data: &[u8]) -> Result<usize, SendError> {
        self.send_impl(|tx_buffer, room| {
            let size = tx_buffer.enqueue_slice(&data[..data.len().min(room)]);
            (size, size)
        })
    }

    fn recv_error_check(&mut self) -> Result<(), RecvError> {
        // We may have received some data inside the initial SYN, but until the connection
        // is fully open we must not dequeue any data, as it may be overwritten by e.g.
        // another (stale) SYN. (We do not support TCP Fast Open.)
        if !self.may_recv() {
            if self.rx_fin_received {
                return Err(RecvError::Finished);
            }
            return Err(RecvError::InvalidState);
        }

        Ok(())
    }

    fn recv_impl<'b, F, R>(&'b mut self, f: F) -> Result<R, RecvError>
    where
        F: FnOnce(&'b mut ElasticBuffer) -> (usize, R),
    {
        self.recv_error_check()?;

        let _old_length = self.rx_buffer.len();
        let (size, result) = f(&mut self.rx_buffer);
        self.remote_seq_no += size;
        if size > 0 {
            tcp_trace!(
                "rx buffer: dequeueing {} octets (now {})",
                size,
                _old_length - size
            );
        }
        Ok(result)
    }

    /// Call `f` with the largest contiguous slice of octets in the receive buffer,
    /// and dequeue the amount of elements returned by `f`.
    ///
    /// This function errors if the receive half of the connection is not open.
    ///
    /// If the receive half has been gracefully closed (with a FIN packet), `Err(RecvError::Finished)`
    /// is returned. In this case, the previously received data is guaranteed to be complete.
    ///
    /// In all other cases, `Err(RecvError::InvalidState)` is returned and previously received data (if any)
    /// may be incomplete (truncated).
    pub fn recv<'b, F, R>(&'b mut self, f: F) -> Result<R, RecvError>
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        self.recv_impl(|rx_buffer| rx_buffer.dequeue_many_with(f))
    }

    /// Dequeue a sequence of received octets, and fill a slice from it.
    ///
    /// This function returns the amount of octets actually dequeued, which is limited
    /// by the amount of occupied space in the receive buffer; down to zero.
    ///
    /// See also [recv](#method.recv).
    pub fn recv_slice(&mut self, data: &mut [u8]) -> Result<usize, RecvError> {
        self.recv_impl(|rx_buffer| {
            let size = rx_buffer.dequeue_slice(data);
            (size, size)
        })
    }

    /// Peek at a sequence of received octets without removing them from
    /// the receive buffer, and return a pointer to it.
    ///
    /// This function otherwise behaves identically to [recv](#method.recv).
    pub fn peek(&mut self, size: usize) -> Result<&[u8], RecvError> {
        self.recv_error_check()?;

        let buffer = self.rx_buffer.get_allocated(0, size);
        if !buffer.is_empty() {
            tcp_trace!("rx buffer: peeking at {} octets", buffer.len());
        }
        Ok(buffer)
    }

    /// Peek at a sequence of received octets without removing them from
    /// the receive buffer, and fill a slice from it.
    ///
    /// This function otherwise behaves identically to [recv_slice](#method.recv_slice).
    pub fn peek_slice(&mut self, data: &mut [u8]) -> Result<usize, RecvError> {
        Ok(self.rx_buffer.read_allocated(0, data))
    }

    /// Octets queued in the transmit buffer and not sent yet (Linux's
    /// `SIOCOUTQNSD`: SND.NXT to the end of what was written).
    pub fn send_queue_unsent(&self) -> usize {
        let end = self.local_seq_no + self.tx_buffer.len();
        if end > self.remote_max_seq {
            end - self.remote_max_seq
        } else {
            0
        }
    }

    /// Whether `seq` may start a segment this socket sent and has not had
    /// acknowledged: SND.UNA to SND.NXT, as Linux asks of the segment an
    /// ICMP error quotes before it believes it, and SND.UNA - 1 (a
    /// keepalive's).
    pub fn sent_unacknowledged(&self, seq: TcpSeqNumber) -> bool {
        seq >= self.local_seq_no - 1 && seq <= self.remote_max_seq
    }

    /// Return the amount of octets queued in the transmit buffer.
    ///
    /// Note that the Berkeley sockets interface does not have an equivalent of this API.
    pub fn send_queue(&self) -> usize {
        self.tx_buffer.len()
    }

    /// The window the peer last advertised, in octets (0: it asked us to
    /// stop sending; only zero-window probes go until it opens).
    pub fn remote_window(&self) -> usize {
        self.remote_win_len
    }

    /// Number of octets transmitted but not yet ACKed.
    fn flight_size(&self) -> usize {
        self.remote_last_seq - self.local_seq_no
    }

    /// What the congestion window leaves to send: the window, plus one
    /// segment for each of the first two duplicate ACKs outside a recovery
    /// (limited transmit, RFC 3042), less what is in flight.
    fn cwnd_remaining(&self) -> usize {
        if self.sack_recovery {
            return self
                .congestion_controller
                .inner()
                .recovery_window()
                .saturating_sub(self.pipe());
        }
        // sal-tcp: none while RACK's timer waits to mark the hole of a
        // large flight lost (`crate::rack`).
        let limited_transmit = if self.recover.is_none() && !self.rack_waits() {
            usize::from(self.local_rx_dup_acks.min(2)) * self.effective_mss()
        } else {
            0
        };
        self.congestion_controller
            .inner()
            .window()
            .saturating_add(limited_transmit)
            .saturating_sub(self.flight_size())
    }

    /// sal-tcp: RFC 6675's `pipe` in a SACK-based recovery: the bytes
    /// taken to be in the network. Those above the highest SACKed byte
    /// are; those the peer SACKed are not; a hole below the highest SACKed
    /// byte is taken for lost (this lean form does not wait for three
    /// segments above it, RFC 6675's IsLost: the recovery itself only
    /// starts on that evidence, and the SAL's paths do not reorder), so
    /// it counts again only once retransmitted (below `high_rxt`), and
    /// not while a retransmission found lost waits to be sent again
    /// (`crate::rack`).
    fn pipe(&self) -> usize {
        let una = self.local_seq_no;
        let nxt = self.remote_last_seq.max(una);
        let highest = self
            .scoreboard
            .highest()
            .map_or(una, |h| h.max(una).min(nxt));
        let retransmitted_end = self.high_rxt.max(una).min(highest);
        let retransmitted = (retransmitted_end - una)
            .saturating_sub(self.scoreboard.sacked_in(una, retransmitted_end))
            .saturating_sub(self.rack.lost_bytes(una, &self.scoreboard, self.high_rxt));
        (nxt - highest) + retransmitted
    }

    /// sal-tcp: in a SACK-based recovery, the hole to retransmit next, if
    /// the congestion window has a segment's room beyond the pipe (RFC
    /// 6675 5 step C): a retransmission found lost (`crate::rack`), else
    /// the first hole not yet retransmitted in this recovery that lies
    /// below SACKed data, cut to a segment and to the peer's window.
    fn sack_retransmission(&self) -> Option<(TcpSeqNumber, usize)> {
        if !self.sack_recovery || self.remote_win_len == 0 {
            return None;
        }
        let mss = self.effective_mss();
        let window = self.congestion_controller.inner().recovery_window();
        let pipe = self.pipe().saturating_sub(self.sack_dup_credit);
        if pipe.saturating_add(mss) > window {
            return None;
        }
        let from = self.high_rxt.max(self.local_seq_no);
        let (start, end) = self
            .rack
            .next_lost(self.local_seq_no, &self.scoreboard, self.high_rxt)
            .or_else(|| self.scoreboard.next_hole(from))?;
        let end = end.min(self.local_seq_no + self.remote_win_len.min(self.tx_buffer.len()));
        (start < end).then(|| (start, (end - start).min(mss)))
    }

    /// sal-tcp: take the peer's SACK blocks into the scoreboard. A block
    /// must lie above the cumulative ACK and within what was sent; others
    /// (a D-SACK of data already acknowledged, RFC 2883, or nonsense) are
    /// ignored.
    /// A block is also a round-trip sample if it holds the segment timed
    /// (see [`RttEstimator`]).
    fn note_sack_blocks(
        &mut self,
        now: Instant,
        ack: TcpSeqNumber,
        blocks: &[Option<(u32, u32)>; 3],
    ) {
        for &(left, right) in blocks.iter().flatten() {
            let (left, right) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
            if ack <= left && left < right && right <= self.remote_max_seq {
                self.scoreboard.add(left, right);
                self.rtte.on_sack(now, left, right);
            }
        }
    }

    /// sal-tcp: `[left, right)` arrived a second time: a peer that SACKs
    /// hears of it in the next ACK (`crate::dsack`), which is owed at
    /// once: whether it is.
    fn note_duplicate(&mut self, left: TcpSeqNumber, right: TcpSeqNumber) -> bool {
        if self.remote_has_sack {
            self.dsack.note(left, right);
        }
        self.remote_has_sack
    }

    /// sal-tcp: a window reduction (`reduced`), or a probe that may bring
    /// one, begins: the window now is what undoing it restores
    /// (`crate::undo`). Only a peer that SACKs tells of duplicates.
    fn begin_undo(&mut self, reduced: bool) {
        if self.remote_has_sack {
            let prior = self.congestion_controller.inner().undo_point();
            self.undo.begin(self.local_seq_no, prior, reduced);
        }
    }

    /// sal-tcp: the ACK of `ack` leads with a D-SACK block (`crate::dsack`):
    /// if it names the last byte retransmitted since the window was cut,
    /// all were needless, and the window goes back (`crate::undo`).
    fn note_dsack(&mut self, ack: TcpSeqNumber, blocks: &[Option<(u32, u32)>; 3]) {
        let Some((left, right)) = dsack::duplicate_block(ack, blocks) else {
            return;
        };
        if let Some(prior) = self.undo.on_dsack(left, right, self.remote_max_seq) {
            self.undo_reduction(prior);
        }
    }

    /// sal-tcp: undo a needless window reduction (`crate::undo`): back to
    /// `prior`. The RTO backoff is kept, and a timeout's resending goes on
    /// (see `crate::undo`).
    fn undo_reduction(&mut self, prior: Prior) {
        net_debug!("all retransmissions were needless, undoing the window reduction");
        self.loss_counters.undos = self.loss_counters.undos.wrapping_add(1);
        self.congestion_controller.inner_mut().undo(prior);
    }

    /// sal-tcp: `[start, end)` was resent to repair a loss the peer
    /// reported. With SACK, the segment being timed may still give a
    /// sample (see [`RttEstimator`]); without, nothing could tell its ACK
    /// from the retransmission's, and the timing ends, for the next new
    /// segment sent to be timed (smoltcp's way).
    fn note_resent(&mut self, start: TcpSeqNumber, end: TcpSeqNumber) {
        if self.remote_has_sack {
            self.rtte.on_resend(start, end);
        } else {
            self.rtte.on_retransmit();
        }
    }

    /// sal-tcp: whether the tail loss probe may stand in for the
    /// retransmission timer (`crate::tlp`): data in flight in a
    /// synchronized state, a peer that SACKs, a window open, no recovery,
    /// no timeout's or rewind's resending under way, no fast retransmit
    /// due, and no probe in flight (one probe a flight).
    fn may_probe(&self) -> bool {
        self.synchronized_sending()
            && self.remote_has_sack
            && self.flight_size() > 0
            && self.remote_win_len > 0
            && self.recover.is_none()
            && !self.pending_fast_retransmit
            && self.remote_last_seq == self.remote_max_seq
            && !matches!(self.timer, Timer::FastRetransmit)
            && !self.tlp.in_flight(self.local_seq_no)
    }

    /// sal-tcp: arm the tail loss probe if it may go (`crate::tlp`), no
    /// later than the retransmission timer running (or one started now).
    fn arm_loss_probe(&mut self, now: Instant) {
        if !self.may_probe() {
            return;
        }
        // sal-tcp: with data SACKed, the probe's timer is RACK's too, and
        // a fast retransmit when it fires (`crate::rack`): new data sent
        // does not put it off.
        if !self.scoreboard.is_empty() && matches!(self.timer, Timer::LossProbe { .. }) {
            return;
        }
        let one_segment = self.flight_size() <= self.effective_mss();
        let ack_delay = self.ack_delay.unwrap_or(Duration::ZERO);
        if let Some(pto) = tlp::probe_timeout(self.rtte.srtt_sample(), one_segment, ack_delay) {
            let rto = self.rtte.retransmission_timeout();
            self.timer.set_for_loss_probe(now, pto, rto);
        }
    }

    /// sal-tcp: the tail loss probe's timer fired (`crate::tlp`). If no
    /// probe may go (a rewind's resending, a window closed meanwhile), the
    /// retransmission timeout stays where it was: restarted from now, a
    /// probe capped at the timeout put it off by a whole timeout, and a
    /// rewind's by up to one. Else the retransmission timer runs from now;
    /// SACKed data above the oldest unacknowledged byte, sent more than two
    /// round trips ago, marks it lost (a fast retransmit); else the probe
    /// is due.
    fn loss_probe_due(&mut self, now: Instant) {
        if !self.may_probe() {
            self.timer.set_for_retransmit_instead_of_probe();
            // sal-tcp: in a recovery, the timer was RACK's (`crate::rack`),
            // unless it fired for the retransmission timeout: that goes
            // now (RACK's again would put it off while its wait lasts, the
            // timer due and nothing sent: a host polling it spins).
            if self.sack_recovery && !self.timer.should_retransmit(now) {
                self.rack_detect(now);
            }
            return;
        }
        let rto = self.rtte.retransmission_timeout();
        self.timer.set_for_retransmit(now, rto);
        if self.scoreboard.sacked_bytes() > 0 {
            net_debug!("loss probe timeout with data SACKed, starting fast retransmit");
            self.timer.set_for_fast_retransmit();
        } else {
            net_debug!("sending a tail loss probe");
            self.tlp.set_due();
        }
    }

    /// sal-tcp: RACK (`crate::rack`), after an ACK (or at its timer). In a
    /// SACK-based recovery, retransmissions sent before data the peer
    /// holds are lost once the reordering window has passed, and are sent
    /// again; the timer waits for the rest. Outside one, SACKed data above
    /// the oldest unacknowledged byte (sent after it) marks it lost after
    /// the reordering window: the probe's timer is armed for then, and
    /// starts a fast retransmit (`loss_probe_due`). Not before a round-trip
    /// sample, nor while a timeout's or a rewind's resending is under way.
    fn rack_detect(&mut self, now: Instant) {
        if !self.remote_has_sack || self.remote_last_seq != self.remote_max_seq {
            return;
        }
        let dup_thresh = self.scoreboard.sacked_bytes() > 2 * self.effective_mss();
        let reo_wnd = self.rack.reo_wnd(
            self.rtte.min_rtt(),
            self.rtte.srtt_sample(),
            self.sack_recovery,
            dup_thresh,
        );
        if self.sack_recovery {
            if let Some(at) = self
                .rack
                .detect(now, self.local_seq_no, &self.scoreboard, reo_wnd)
            {
                self.timer.set_for_rack(at);
            }
        } else if self.recover.is_none()
            && !self.scoreboard.is_empty()
            && self.rtte.srtt_sample().is_some()
            && self.may_probe()
        {
            self.timer.set_for_rack(now + reo_wnd);
        }
    }

    /// sal-tcp: whether RACK's timer (`crate::rack`) runs to mark the
    /// oldest segment of a flight of [`rack::LARGE_FLIGHT`] segments or
    /// more lost outside a recovery, in the reordering window of a path
    /// not known to reorder: limited transmit waits (see there).
    fn rack_waits(&self) -> bool {
        self.flight_size() >= rack::LARGE_FLIGHT * self.effective_mss()
            && self.recover.is_none()
            && !self.scoreboard.is_empty()
            && !self.rack.reord_seen()
            && matches!(self.timer, Timer::LossProbe { .. })
    }

    /// Return the amount of octets queued in the receive buffer. This value can be larger than
    /// the slice read by the next `recv` or `peek` call because it includes all queued octets,
    /// and not only the octets that may be returned as a contiguous slice.
    ///
    /// Note that the Berkeley sockets interface does not have an equivalent of this API.
    pub fn recv_queue(&self) -> usize {
        self.rx_buffer.len()
    }

    /// Whether `segment` (a whole TCP segment) carries data past what this
    /// socket has received in order: new data, not a retransmission of
    /// bytes it already has (nor a bare FIN or ACK), and inside its
    /// receive window. A closed application's socket is reset only for
    /// new data, as Linux resets an orphaned socket.
    pub fn carries_new_data(&self, segment: &[u8]) -> bool {
        let Some(header) = segment.get(12).map(|b| usize::from(b >> 4) * 4) else {
            return false;
        };
        let Some(seq) = segment.get(4..8) else {
            return false;
        };
        let len = segment.len().saturating_sub(header);
        if len == 0 {
            return false;
        }
        let seq = TcpSeqNumber(i32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]));
        // Within the receive window, as Linux validates a segment before
        // anything else: a forged segment far ahead is dropped, not a
        // reason to reset.
        let window = self.rx_buffer.window().max(1);
        seq + len > self.remote_seq_no && seq < self.remote_seq_no + window
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            tcp_trace!("state={}=>{}", self.state, state);
        }

        self.state = state;
    }

    /// The ACK of the current state owed to a received segment (smoltcp
    /// builds it in `process`; here it is built when sent), echoing `tsecr`.
    fn ack_reply(&mut self, now: Instant, tsecr: Option<u32>) -> TcpRepr<'static> {
        let mut reply_repr = EMPTY_SEGMENT;
        reply_repr.timestamp = tsecr.and_then(|tsecr| self.timestamp_option(now, tsecr));

        // From RFC 793:
        // [...] an empty acknowledgment segment containing the current send-sequence number
        // and an acknowledgment indicating the next sequence number expected
        // to be received.
        reply_repr.seq_number = self.ack_seq();
        reply_repr.ack_number = Some(self.remote_seq_no + self.rx_buffer.len());

        // From RFC 1323:
        // The window field [...] of every outgoing segment, with the exception of SYN
        // segments, is right-shifted by [advertised scale value] bits[...]
        // sal-tcp: the window is chosen before the acknowledgement it goes with
        // is recorded: `rx_window` keeps the right edge of the window last
        // advertised, which is the last acknowledgement plus the last window;
        // recorded first, the new acknowledgement with the old window moved
        // that edge right at every reply, and a window under memory pressure
        // never closed (the peer kept sending what was then dropped).
        reply_repr.window_len = self.scaled_window();
        self.remote_last_ack = reply_repr.ack_number;
        self.remote_last_win = reply_repr.window_len;
        self.remote_last_win_unscaled = false;
        self.note_advertised_edge();

        // If the remote supports selective acknowledgement, add the option to the outgoing
        // segment.
        if let Some(ack) = reply_repr.ack_number {
            reply_repr.sack_ranges = self.sack_option(ack);
        }

        reply_repr
    }

    /// The SACK option of an ACK of `ack` (RFC 2018), for a peer that
    /// SACKs (none otherwise): a pending D-SACK block first (RFC 2883,
    /// reported once: `crate::dsack`), then the blocks held.
    fn sack_option(&mut self, ack: TcpSeqNumber) -> [Option<(u32, u32)>; 3] {
        let mut ranges = [None; 3];
        if !self.remote_has_sack {
            return ranges;
        }
        net_debug!("sending sACK option with current assembler ranges");

        // sal-tcp: the D-SACK block, if any, leads (RFC 2883 section 4);
        // the block holding it, if out of order, follows, as the segment
        // it came in is the last received (below).
        let mut count = 0;
        if let Some(block) = self.dsack.take() {
            ranges[0] = Some(block);
            count = 1;
        }
        let duplicates = count;

        // RFC 2018: The first SACK block (i.e., the one immediately following the kind and
        // length fields in the option) MUST specify the contiguous block of data containing
        // the segment which triggered this ACK, unless that segment advanced the
        // Acknowledgment Number field in the header.
        // sal-tcp: then (section 4) the blocks most recently reported,
        // as far as they are still held: those holding the last
        // out-of-order segments, most recent first; then the others,
        // lowest first, up to the three the option holds with a
        // timestamp. smoltcp sent the first block only.
        let assembler = &self.assembler;
        let block_of = |seq: TcpSeqNumber| {
            assembler
                .iter_data()
                .map(|(left, right)| (ack + left, ack + right))
                .find(|&(left, right)| left <= seq && seq < right)
        };
        let recent = core::iter::once(self.local_rx_last_seq)
            .chain(self.local_rx_recent_seq)
            .flatten()
            .filter_map(block_of);
        let others = assembler
            .iter_data()
            .map(|(left, right)| (ack + left, ack + right));
        for (left, right) in recent.chain(others) {
            if count == ranges.len() {
                break;
            }
            let block = Some((left.0 as u32, right.0 as u32));
            // A block equal to the D-SACK block is still sent: it is how
            // the peer tells a duplicate of a whole block held.
            if !ranges[duplicates..count].contains(&block) {
                ranges[count] = block;
                count += 1;
            }
        }
        ranges
    }

    fn challenge_ack_reply(&mut self, now: Instant, repr: &TcpRepr) -> Option<Reply> {
        if now < self.challenge_ack_timer {
            return None;
        }

        // Rate-limit to 1 per second max.
        self.challenge_ack_timer = now + Duration::from_secs(1);

        Some(Reply::ack(repr))
    }

    /// Whether this socket takes the segment at all (smoltcp's interface then
    /// answers a refused one with an RST, which `handle_segment` does too).
    fn accepts(&self, repr: &TcpRepr) -> bool {
        if self.state == State::Closed {
            return false;
        }

        // If we're still listening for SYNs and the packet has an ACK or a RST,
        // it cannot be the opening of a connection.
        !(self.state == State::Listen
            && (repr.ack_number.is_some() || repr.control == TcpControl::Rst))
    }

    /// Take one received TCP segment (header and payload, as it arrived):
    /// its checksum must have been verified by the caller, its ports are
    /// ignored. Any answer it calls for (an ACK, a reset) is queued for the
    /// next [`poll_transmit`](Socket::poll_transmit), which the caller should
    /// drain right after.
    ///
    /// The payload is copied once, into the receive buffer. A segment that
    /// does not parse is refused with an error and changes nothing.
    pub fn handle_segment(&mut self, now: Instant, segment: &[u8]) -> Result<(), SegmentError> {
        let repr = segment::parse(segment)?;
        self.handle_repr(now, &repr);
        Ok(())
    }

    /// `handle_segment` after parsing.
    pub(crate) fn handle_repr(&mut self, now: Instant, repr: &TcpRepr) {
        let reply = if self.accepts(repr) {
            self.process(now, repr)
        } else if repr.control != TcpControl::Rst {
            net_debug!("no connection for this segment, replying with RST");
            Some(Reply::rst(repr))
        } else {
            None
        };
        if let Some(reply) = reply {
            self.queue_reply(reply);
        }
        self.schedule_trim(now);
    }

    /// The sequence number of a segment that occupies no sequence space (an
    /// ACK, a window update): as Linux's `tcp_acceptable_seq`, the highest
    /// sequence number sent, clipped to the peer's window.
    ///
    /// smoltcp uses `remote_last_seq`, which a retransmission timeout rewinds
    /// to the oldest unacknowledged byte. When both directions carry data and
    /// both time out, each side's ACKs then carry a sequence number below what
    /// the other has already received; RFC 9293's acceptability test drops
    /// such segments, ACK field included, and the connection deadlocks with
    /// both sides retransmitting forever.
    fn ack_seq(&self) -> TcpSeqNumber {
        let window_end = self.local_seq_no + self.remote_win_len;
        self.remote_max_seq
            .min(window_end)
            .max(self.remote_last_seq)
    }

    /// sal-tcp: the handshake fixed the segment size: the congestion window
    /// starts at the initial window for it, or at one segment if more than
    /// one copy of our SYN or SYN-ACK was resent
    /// (`Controller::set_initial_window`).
    fn set_initial_window(&mut self) {
        let resent = self.handshake_timeouts > 1;
        self.congestion_controller
            .inner_mut()
            .set_initial_window(self.remote_mss, resent);
    }

    /// Drop the RTT sample in progress (see `Socket::from_cookie`).
    pub(crate) fn forget_rtt_sample(&mut self) {
        self.rtte.on_retransmit();
        self.hystart.on_retransmit();
    }

    /// Remember a reply for the next `poll_transmit`. Consecutive ACKs add
    /// up (each is a duplicate ACK the peer counts); anything else replaces
    /// what was pending.
    fn queue_reply(&mut self, reply: Reply) {
        self.reply = Some(match (self.reply, reply) {
            (Some(Reply::Ack { count, .. }), Reply::Ack { tsecr, .. }) => Reply::Ack {
                count: count.saturating_add(1),
                tsecr,
            },
            (_, reply) => reply,
        });
    }

    /// smoltcp's `process`: the segment's effect on the state machine, and
    /// the reply it calls for.
    fn process(&mut self, now: Instant, repr: &TcpRepr) -> Option<Reply> {
        // Consider how much the sequence number space differs from the transmit buffer space.
        let (sent_syn, sent_fin) = match self.state {
            // In SYN-SENT or SYN-RECEIVED, we've just sent a SYN.
            State::SynSent | State::SynReceived => (true, false),
            // In FIN-WAIT-1, LAST-ACK, or CLOSING, we've just sent a FIN.
            State::FinWait1 | State::LastAck | State::Closing => (false, true),
            // In all other states we've already got acknowledgements for
            // all of the control flags we sent.
            _ => (false, false),
        };
        let control_len = (sent_syn as usize) + (sent_fin as usize);

        // sal-tcp: an acceptable ACK below SND.UNA (RFC 5961 5.2): the
        // segment's ACK field and window are ignored.
        let mut old_ack = false;

        // Reject unacceptable acknowledgements.
        match (self.state, repr.control, repr.ack_number) {
            // An RST received in response to initial SYN is acceptable if it acknowledges
            // the initial SYN.
            (State::SynSent, TcpControl::Rst, None) => {
                net_debug!("unacceptable RST (expecting RST|ACK) in response to initial SYN");
                return None;
            }
            (State::SynSent, TcpControl::Rst, Some(ack_number)) => {
                if ack_number != self.local_seq_no + 1 {
                    net_debug!("unacceptable RST|ACK in response to initial SYN");
                    return None;
                }
            }
            // Any other RST need only have a valid sequence number.
            (_, TcpControl::Rst, _) => (),
            // The initial SYN cannot contain an acknowledgement.
            (State::Listen, _, None) => (),
            // This case is refused by `accepts()`.
            (State::Listen, _, Some(_)) => return None,
            // SYN|ACK in the SYN-SENT state must have the exact ACK number.
            (State::SynSent, TcpControl::Syn, Some(ack_number)) => {
                if ack_number != self.local_seq_no + 1 {
                    net_debug!("unacceptable SYN|ACK in response to initial SYN");
                    return Some(Reply::rst(repr));
                }
            }
            // TCP simultaneous open.
            // This is required by RFC 9293, which states "A TCP implementation MUST support
            // simultaneous open attempts (MUST-10)."
            (State::SynSent, TcpControl::Syn, None) => (),
            // ACKs in the SYN-SENT state are invalid.
            (State::SynSent, TcpControl::None, Some(ack_number)) => {
                // If the sequence number matches, ignore it instead of RSTing.
                // I'm not sure why, I think it may be a workaround for broken TCP
                // servers, or a defense against reordering. Either way, if Linux
                // does it, we do too.
                if ack_number == self.local_seq_no + 1 {
                    net_debug!(
                        "expecting a SYN|ACK, received an ACK with the right ack_number, ignoring."
                    );
                    return None;
                }

                net_debug!(
                    "expecting a SYN|ACK, received an ACK with the wrong ack_number, sending RST."
                );
                return Some(Reply::rst(repr));
            }
            // Anything else in the SYN-SENT state is invalid.
            (State::SynSent, _, _) => {
                net_debug!("expecting a SYN|ACK");
                return None;
            }
            // Every packet after the initial SYN must be an acknowledgement.
            (_, _, None) => {
                net_debug!("expecting an ACK");
                return None;
            }
            // ACK in the SYN-RECEIVED state must have the exact ACK number, or we RST it.
            (State::SynReceived, _, Some(ack_number)) => {
                if ack_number != self.local_seq_no + 1 {
                    net_debug!("unacceptable ACK in response to SYN|ACK");
                    return Some(Reply::rst(repr));
                }
            }
            // Every acknowledgement must be for transmitted but unacknowledged data.
            (_, _, Some(ack_number)) => {
                let unacknowledged = self.tx_buffer.len() + control_len;

                // Acceptable ACK range (both inclusive). sal-tcp: up to
                // the highest byte sent (SND.NXT, RFC 9293 3.10.7.4), not
                // the end of the send buffer, whose unsent bytes an ACK
                // would have thrown away (RFC 5961 5.2: a challenge ACK).
                let mut ack_min = self.local_seq_no;
                let ack_max = (self.local_seq_no + unacknowledged)
                    .min(self.remote_max_seq.max(self.local_seq_no));

                // If we have sent a SYN, it MUST be acknowledged.
                if sent_syn {
                    ack_min += 1;
                }

                // sal-tcp: RFC 5961 5.2: an ACK up to the largest window
                // the peer ever advertised below SND.UNA is an old one (a
                // segment overtaken by later ones): its ACK field is
                // ignored, its data taken. smoltcp dropped the segment,
                // data and all. Older still, it is dropped, and answered
                // with a challenge ACK.
                if ack_number < ack_min {
                    if ack_number < ack_min - self.max_remote_win as usize {
                        net_debug!(
                            "unacceptable old ACK ({} not in {}...{})",
                            ack_number,
                            ack_min,
                            ack_max
                        );
                        return self.challenge_ack_reply(now, repr);
                    }
                    net_debug!(
                        "old ACK ({} not in {}...{}), taking the data only",
                        ack_number,
                        ack_min,
                        ack_max
                    );
                    old_ack = true;
                }

                if ack_number > ack_max {
                    net_debug!(
                        "unacceptable ACK ({} not in {}...{})",
                        ack_number,
                        ack_min,
                        ack_max
                    );
                    return self.challenge_ack_reply(now, repr);
                }
            }
        }

        let window_start = self.remote_seq_no + self.rx_buffer.len();
        // sal-tcp: up to the furthest edge advertised, not only the last:
        // a window truncated to the scale's unit (`rx_window`) may end up
        // to a unit short of an earlier one, which the peer may have sent
        // up to already. Cut there, its last bytes waited for a timeout.
        let window_end = match (self.advertised_edge(), self.advertised_max_edge) {
            (Some(last), Some(max)) if max > last => max,
            (Some(last), _) => last,
            (None, _) => window_start,
        };
        let segment_start = repr.seq_number;
        let segment_end = repr.seq_number + repr.payload.len();

        // sal-tcp: the segment brought bytes already received (`crate::dsack`).
        let mut duplicate = false;
        let (payload, payload_offset) = match self.state {
            // In LISTEN and SYN-SENT states, we have not yet synchronized with the remote end.
            State::Listen | State::SynSent => (&[][..], 0),
            _ => {
                // https://www.rfc-editor.org/rfc/rfc9293.html#name-segment-acceptability-tests
                let segment_in_window = match (
                    segment_start == segment_end,
                    window_start == window_end,
                ) {
                    (true, _) if segment_end == window_start - 1 => {
                        net_debug!(
                            "received a keep-alive or window probe packet, will send an ACK"
                        );
                        false
                    }
                    (true, true) => {
                        if window_start == segment_start {
                            true
                        } else {
                            net_debug!(
                                "zero-length segment not inside zero-length window, will send an ACK."
                            );
                            false
                        }
                    }
                    (true, false) => {
                        if window_start <= segment_start && segment_start < window_end {
                            true
                        } else {
                            net_debug!("zero-length segment not inside window, will send an ACK.");
                            false
                        }
                    }
                    (false, true) => {
                        net_debug!(
                            "non-zero-length segment with zero receive window, will only send an ACK"
                        );
                        false
                    }
                    (false, false) => {
                        // sal-tcp: a FIN occupies a sequence number (RFC
                        // 9293 3.10.7.4 counts it in SEG.LEN): data all
                        // received before, followed by a FIN at RCV.NXT,
                        // is a new FIN (a retransmission that took the FIN
                        // along). smoltcp dropped it, and the peer waited
                        // for a timeout to send it alone.
                        let fin_at_edge =
                            repr.control == TcpControl::Fin && segment_end == window_start;
                        if (window_start <= segment_start && segment_start < window_end)
                            || (window_start < segment_end && segment_end <= window_end)
                            || fin_at_edge
                        {
                            true
                        } else {
                            net_debug!(
                                "segment not in receive window ({}..{} not intersecting {}..{}), will send challenge ACK",
                                segment_start,
                                segment_end,
                                window_start,
                                window_end
                            );
                            false
                        }
                    }
                };

                if segment_in_window {
                    let overlap_start = window_start.max(segment_start);
                    let overlap_end = window_end.min(segment_end);

                    // the checks done above imply this.
                    debug_assert!(overlap_start <= overlap_end);

                    self.local_rx_last_seq = Some(repr.seq_number);
                    // sal-tcp: bytes below RCV.NXT came again (RFC 2883
                    // 4.1.2): a D-SACK block for them.
                    if !repr.payload.is_empty() && segment_start < overlap_start {
                        duplicate = self.note_duplicate(segment_start, overlap_start);
                    }

                    (
                        &repr.payload[overlap_start - segment_start..overlap_end - segment_start],
                        overlap_start - window_start,
                    )
                } else {
                    // Out-of-window RSTs are silently dropped, per RFC 9293
                    // (3.10.7.4) and RFC 5961 (3.2): no reply is sent, and the
                    // TIME-WAIT timer below is not refreshed. RST senders don't
                    // need a reply to make progress.
                    if repr.control == TcpControl::Rst {
                        net_debug!("dropping out-of-window RST");
                        return None;
                    }

                    // If we're in the TIME-WAIT state, restart the TIME-WAIT timeout, since
                    // the remote end may not have realized we've closed the connection.
                    if self.state == State::TimeWait {
                        self.timer.set_for_close(now);
                    }

                    // Segments carrying data are exempt from challenge ACK rate
                    // limiting: an out-of-window data segment is a retransmission
                    // whose ACK was lost, or a window probe, and per RFC 9293
                    // (3.10.7.4, 3.8.6.1) it should elicit an ACK so the remote
                    // can make progress. Withholding these ACKs strands the
                    // remote in retransmission backoff or persist state. The
                    // rate limit exists to break ACK loops between desynced
                    // peers, and exempting data segments cannot sustain such a
                    // loop: the remote paces them with its retransmission and
                    // persist timers, and the data it may send in response to a
                    // duplicate ACK of ours (fast recovery) is bounded by its
                    // send window, which never advances during a desync.
                    //
                    // The exemption covers FIN (a retransmitted final segment is
                    // the same lost-ACK situation) but not SYN: a SYN in a
                    // synchronized state is a challenge ACK situation (RFC 5961
                    // 4.2), and challenge ACKs should be throttled (RFC 5961 7).
                    // One per second is ample for a restarted peer to complete
                    // the challenge exchange, since it retransmits its SYN on
                    // its own timer.
                    if !repr.payload.is_empty()
                        && matches!(
                            repr.control,
                            TcpControl::None | TcpControl::Psh | TcpControl::Fin
                        )
                    {
                        // sal-tcp: all of it received before (RFC 2883
                        // 4.1.1): reported as a D-SACK block, its FIN too
                        // (`crate::dsack`).
                        if segment_end <= window_start {
                            let end = segment_start + repr.segment_len();
                            self.note_duplicate(segment_start, end.min(window_start));
                        }
                        return Some(Reply::ack(repr));
                    }

                    return self.challenge_ack_reply(now, repr);
                }
            }
        };

        // sal-tcp: under memory pressure, in-order data only as far as the
        // storage held reaches. What is dropped earns an immediate ACK, as
        // out-of-window data does: the peer hears from us, and its fast
        // retransmit resends. A FIN behind dropped bytes waits for them.
        let full_len = payload.len();
        let payload = self.pressure_clip(payload, payload_offset);
        let clipped = payload.len() < full_len;

        // Compute the amount of acknowledged octets, removing the SYN and FIN bits
        // from the sequence space.
        let mut ack_len = 0;
        // sal-tcp: an ACK of new data that leaves the retransmission timer
        // alone (see `partial_ack_restarted_timer`).
        let mut keep_timer = false;
        let mut ack_of_fin = false;
        let mut ack_all = false;
        // sal-tcp: an old ACK's field is ignored (RFC 5961 5.2).
        let ack_field = repr.ack_number.filter(|_| !old_ack);
        if let (false, Some(ack_number)) = (repr.control == TcpControl::Rst, ack_field) {
            // Sequence number corresponding to the first byte in `tx_buffer`.
            // This normally equals `local_seq_no`, but is 1 higher if we have sent a SYN,
            // as the SYN occupies 1 sequence number "before" the data.
            let tx_buffer_start_seq = self.local_seq_no + (sent_syn as usize);

            if ack_number >= tx_buffer_start_seq {
                ack_len = ack_number - tx_buffer_start_seq;

                // We could've sent data before the FIN, so only remove FIN from the sequence
                // space if all of that data is acknowledged.
                if sent_fin && self.tx_buffer.len() + 1 == ack_len {
                    ack_len -= 1;
                    tcp_trace!("received ACK of FIN");
                    ack_of_fin = true;
                }

                ack_all = self.remote_last_seq <= ack_number;
            }
        }

        // Disregard control flags we don't care about or shouldn't act on yet.
        let mut control = repr.control;
        control = control.quash_psh();

        // If a FIN is received at the end of the current segment, but
        // we have a hole in the assembler before the current segment, disregard this FIN.
        // sal-tcp: so too if the segment was cut at the window's right
        // edge: the FIN follows the bytes cut off.
        let cut_at_edge = !repr.payload.is_empty() && window_end < segment_end;
        if control == TcpControl::Fin && (window_start < segment_start || clipped || cut_at_edge) {
            tcp_trace!(
                "ignoring FIN because we don't have full data yet. window_start={} segment_start={}",
                window_start,
                segment_start
            );
            control = TcpControl::None;
        }

        // Validate and update the state.
        match (self.state, control) {
            // RSTs are not accepted in the LISTEN state.
            (State::Listen, TcpControl::Rst) => return None,

            // RSTs in SYN-RECEIVED flip the socket back to the LISTEN state.
            // Here we need to additionally check `passive`, because we want to make sure
            // that SYN-RECEIVED was actually converted from the LISTEN state (another possible
            // reason is TCP simultaneous open).
            (State::SynReceived, TcpControl::Rst) if self.passive => {
                tcp_trace!("received RST");
                self.has_peer = false;
                self.set_state(State::Listen);
                return None;
            }

            // RSTs in any other state close the socket.
            (_, TcpControl::Rst) => {
                tcp_trace!("received RST");
                self.set_state(State::Closed);
                self.has_peer = false;
                return None;
            }

            // SYN packets in the LISTEN state change it to SYN-RECEIVED.
            (State::Listen, TcpControl::Syn) => {
                tcp_trace!("received SYN");
                if let Some(max_seg_size) = repr.max_seg_size {
                    // Treat a zero MSS as if the option were absent, like Linux does.
                    if max_seg_size != 0 {
                        self.remote_mss = (max_seg_size as usize).max(MIN_REMOTE_MSS);
                    }
                }
                // sal-tcp: the segment size is fixed, and no data was sent:
                // the congestion window starts at RFC 6928's initial window
                // for it (ten segments), not at smoltcp's 2048 bytes. No
                // SYN-ACK was resent yet (a RST in SYN-RECEIVED may have
                // brought the listener back after some).
                self.handshake_timeouts = 0;
                self.set_initial_window();

                self.has_peer = true;
                self.local_seq_no = self.isn;
                self.remote_seq_no = repr.seq_number + 1;
                // sal-tcp: the edge advertised to a peer that a RST in
                // SYN-RECEIVED sent away (back to LISTEN, which keeps the
                // rest) would widen this one's window, in sequence numbers
                // unrelated to it.
                self.advertised_max_edge = None;
                self.remote_last_seq = self.local_seq_no;
                self.remote_max_seq = self.local_seq_no;
                self.remote_has_sack = repr.sack_permitted;
                self.remote_win_scale = repr.window_scale;
                // Remote doesn't support window scaling, don't do it.
                if self.remote_win_scale.is_none() {
                    self.remote_win_shift = 0;
                }
                // Remote doesn't support timestamping, don't do it.
                if repr.timestamp.is_none() {
                    self.timestamps = false;
                }
                self.set_state(State::SynReceived);
                self.timer.set_for_idle(now, self.keep_alive);
            }

            // ACK packets in the SYN-RECEIVED state change it to ESTABLISHED.
            // sal-tcp: the SYN-ACK's timeouts came after the SYN set the
            // initial window (see `set_initial_window`).
            (State::SynReceived, TcpControl::None) => {
                if self.handshake_timeouts > 1 {
                    self.set_initial_window();
                }
                self.set_state(State::Established);
            }

            // FIN packets in the SYN-RECEIVED state change it to CLOSE-WAIT.
            // It's not obvious from RFC 793 that this is permitted, but
            // 7th and 8th steps in the "SEGMENT ARRIVES" event describe this behavior.
            (State::SynReceived, TcpControl::Fin) => {
                if self.handshake_timeouts > 1 {
                    self.set_initial_window();
                }
                self.remote_seq_no += 1;
                self.rx_fin_received = true;
                self.set_state(State::CloseWait);
            }

            // SYN|ACK packets in the SYN-SENT state change it to ESTABLISHED.
            // SYN packets in the SYN-SENT state change it to SYN-RECEIVED.
            (State::SynSent, TcpControl::Syn) => {
                if repr.ack_number.is_some() {
                    tcp_trace!("received SYN|ACK");
                } else {
                    tcp_trace!("received SYN");
                }
                if let Some(max_seg_size) = repr.max_seg_size {
                    // Treat a zero MSS as if the option were absent, like Linux does.
                    if max_seg_size != 0 {
                        self.remote_mss = (max_seg_size as usize).max(MIN_REMOTE_MSS);
                    }
                }
                // sal-tcp: the segment size is fixed, and no data was sent:
                // the congestion window starts at RFC 6928's initial window
                // for it (ten segments), not at smoltcp's 2048 bytes.
                self.set_initial_window();

                self.remote_seq_no = repr.seq_number + 1;
                self.remote_last_seq = self.local_seq_no + 1;
                self.remote_max_seq = self.remote_max_seq.max(self.remote_last_seq);
                self.remote_last_ack = Some(repr.seq_number);
                self.remote_has_sack = repr.sack_permitted;
                self.remote_win_scale = repr.window_scale;
                // Remote doesn't support window scaling, don't do it.
                if self.remote_win_scale.is_none() {
                    self.remote_win_shift = 0;
                }
                // Remote doesn't support timestamping, don't do it.
                if repr.timestamp.is_none() {
                    self.timestamps = false;
                }

                if repr.ack_number.is_some() {
                    self.set_state(State::Established);
                    if self.hold_handshake_ack {
                        // sal-tcp: the ACK waits for the first write (or
                        // the timer, or `release_ack`).
                        self.schedule_delayed_ack(now);
                    }
                } else {
                    self.set_state(State::SynReceived);
                }
            }

            (State::Established, TcpControl::None) => {}

            // FIN packets in ESTABLISHED state indicate the remote side has closed.
            (State::Established, TcpControl::Fin) => {
                self.remote_seq_no += 1;
                self.rx_fin_received = true;
                self.set_state(State::CloseWait);
            }

            // ACK packets in FIN-WAIT-1 state change it to FIN-WAIT-2, if we've already
            // sent everything in the transmit buffer. If not, they reset the retransmit timer.
            (State::FinWait1, TcpControl::None) => {
                if ack_of_fin {
                    self.set_state(State::FinWait2);
                }
            }

            // FIN packets in FIN-WAIT-1 state change it to CLOSING, or to TIME-WAIT
            // if they also acknowledge our FIN.
            (State::FinWait1, TcpControl::Fin) => {
                self.remote_seq_no += 1;
                self.rx_fin_received = true;
                if ack_of_fin {
                    self.set_state(State::TimeWait);
                    self.timer.set_for_close(now);
                } else {
                    self.set_state(State::Closing);
                }
            }

            (State::FinWait2, TcpControl::None) => {}

            // FIN packets in FIN-WAIT-2 state change it to TIME-WAIT.
            (State::FinWait2, TcpControl::Fin) => {
                self.remote_seq_no += 1;
                self.rx_fin_received = true;
                self.set_state(State::TimeWait);
                self.timer.set_for_close(now);
            }

            // ACK packets in CLOSING state change it to TIME-WAIT.
            (State::Closing, TcpControl::None) => {
                if ack_of_fin {
                    self.set_state(State::TimeWait);
                    self.timer.set_for_close(now);
                }
            }

            (State::CloseWait, TcpControl::None) => {}

            // ACK packets in LAST-ACK state change it to CLOSED.
            (State::LastAck, TcpControl::None) => {
                if ack_of_fin {
                    // Clear the remote endpoint, or we'll send an RST there.
                    self.set_state(State::Closed);
                    self.has_peer = false;
                } else if ack_len == 0 && self.tx_buffer.is_empty() {
                    // Duplicate ACK; our FIN has not been acknowledged.
                    // Per RFC 9293 (3.10.7.4), send a challenge ACK.
                    // sal-tcp: only when the FIN is all that is outstanding.
                    // With data still in flight a duplicate ACK is the peer
                    // reporting a loss, and must reach fast retransmit below
                    // (smoltcp answered it with a challenge ACK, leaving the
                    // loss to the retransmission timeout).
                    return self.challenge_ack_reply(now, repr);
                }
                // Partial ACK: fall through to advance SND.UNA normally.
            }

            _ => {
                net_debug!("unexpected packet {}", repr);
                return None;
            }
        }

        // Update remote state.
        self.remote_last_ts = Some(now);

        // RFC 1323: The window field (SEG.WND) in the header of every incoming segment, with the
        // exception of SYN segments, is left-shifted by Snd.Wind.Scale bits before updating SND.WND.
        let scale = match repr.control {
            TcpControl::Syn => 0,
            _ => self.remote_win_scale.unwrap_or(0),
        };
        // sal-tcp: not an old ACK's window (RFC 5961 5.2), which is
        // relative to that ACK: taken from SND.UNA, its edge moved right.
        let new_remote_win_len = (repr.window_len as usize) << (scale as usize);
        let is_window_update = !old_ack && new_remote_win_len != self.remote_win_len;
        if !old_ack {
            self.remote_win_len = new_remote_win_len;
            self.max_remote_win = self
                .max_remote_win
                .max(u32::try_from(new_remote_win_len).unwrap_or(u32::MAX));
            self.congestion_controller
                .inner_mut()
                .set_remote_window(new_remote_win_len);
        }

        if ack_len > 0 {
            // Dequeue acknowledged octets.
            debug_assert!(self.tx_buffer.len() >= ack_len);
            tcp_trace!(
                "tx buffer: dequeueing {} octets (now {})",
                ack_len,
                self.tx_buffer.len() - ack_len
            );
            self.tx_buffer.dequeue_allocated(ack_len);
        }

        if let Some(ack_number) = ack_field {
            // sal-tcp: what the peer holds above the cumulative ACK, to
            // choose what to resend (see `crate::sack`); and, before it
            // moves, the holes below the highest SACKed byte: one filled by
            // a segment sent once shows reordering (`crate::rack`).
            let prior = self.scoreboard.highest().map(|h| {
                let from = self.rack.sent_once_from(self.local_seq_no);
                (h, rack::holes(&self.scoreboard, from, h))
            });
            self.scoreboard.trim(ack_number);
            let sacked_before = self.scoreboard.sacked_bytes();
            if self.remote_has_sack {
                self.note_sack_blocks(now, ack_number, &repr.sack_ranges);
                if dsack::duplicate_block(ack_number, &repr.sack_ranges).is_some() {
                    self.rack.on_dsack(ack_number, self.remote_max_seq);
                }
            }
            let sack_news = self.scoreboard.sacked_bytes() != sacked_before;
            if let Some((highest, holes)) = prior {
                // Not while anything resent may be what arrived.
                let from = self.rack.sent_once_from(ack_number);
                if self.recover.is_none()
                    && self.remote_last_seq == self.remote_max_seq
                    && rack::holes(&self.scoreboard, from, highest) < holes
                {
                    self.rack.on_reordering();
                }
            }
            self.rack.on_ack(ack_number);
            // sal-tcp: the end of a tail loss probe's episode (`crate::tlp`):
            // a probe that filled a hole reduces the window once, as a loss.
            let pure_dup = repr.payload.is_empty()
                && ack_len == 0
                && self.local_rx_last_ack == Some(ack_number)
                && !is_window_update
                && !sack_news;
            if self.tlp.on_ack(ack_number, &repr.sack_ranges, pure_dup) {
                net_debug!("a tail loss probe repaired a loss, reducing the window");
                let in_flight = self.flight_size();
                self.congestion_controller
                    .inner_mut()
                    .on_loss(now, in_flight);
                self.undo.reduced();
            }
            match self.local_rx_last_ack {
                // Duplicate ACK if payload empty and ACK doesn't move send window ->
                // Increment duplicate ACK count, notify congestion controller and
                // set for retransmit if we just received the third duplicate ACK
                Some(last_rx_ack)
                    if repr.payload.is_empty()
                        && last_rx_ack == ack_number
                        && ack_number < self.remote_last_seq
                        && !is_window_update =>
                {
                    // Increment duplicate ACK count
                    // sal-tcp: unless all it reports is a segment that
                    // arrived twice below the cumulative ACK (a D-SACK of
                    // data delivered in order, nothing newly SACKed): that
                    // shows no loss. Counted, three started a fast
                    // retransmit of data on its way, whose copies drew
                    // three more, for the rest of a transfer (about half of
                    // what was sent went twice). A copy of data held past
                    // the hole still counts: it arrived past the hole.
                    let only_duplicate = self.remote_has_sack
                        && !sack_news
                        && dsack::duplicate_block(ack_number, &repr.sack_ranges)
                            .is_some_and(|(_, right)| right <= ack_number);
                    if !only_duplicate {
                        self.local_rx_dup_acks = self.local_rx_dup_acks.saturating_add(1);
                    }

                    net_debug!(
                        "received duplicate ACK for seq {} (duplicate nr {}{})",
                        ack_number,
                        self.local_rx_dup_acks,
                        if self.local_rx_dup_acks == u8::MAX {
                            "+"
                        } else {
                            ""
                        }
                    );

                    // sal-tcp: not again within one recovery (RFC 6582 3.2 step 1):
                    // partial ACKs take care of the other losses of the window;
                    // nor for the segment a rewind resends (see `recover`).
                    if self.local_rx_dup_acks == 3 && self.recover.is_none() {
                        self.timer.set_for_fast_retransmit();
                        net_debug!("started fast retransmit");
                    }

                    if self.sack_recovery && !sack_news {
                        self.sack_dup_credit =
                            self.sack_dup_credit.saturating_add(self.effective_mss());
                    }

                    // Notify of duplicate ACK
                    let in_flight = self.flight_size();
                    self.congestion_controller.inner_mut().on_dup_ack(
                        now,
                        self.remote_mss,
                        in_flight,
                    );
                }

                // No duplicate ACK means we reset the duplicate ACK count
                // and notify the congestion controller of the fresh ACK
                _ => {
                    if self.local_rx_dup_acks > 0 {
                        self.local_rx_dup_acks = 0;
                        net_debug!("reset duplicate ACK count");
                    }
                    self.limited_transmit = 0;
                    self.sack_dup_credit = 0;
                    self.local_rx_last_ack = Some(ack_number);

                    // sal-tcp: NewReno partial ACKs (RFC 6582 3.2 step 3).
                    match self.recover {
                        Some(recover) if ack_number >= recover => {
                            net_debug!("full ACK, leaving recovery");
                            self.recover = None;
                            self.fast_recovery = false;
                            self.sack_recovery = false;
                            self.rack.forget_flight();
                        }
                        // sal-tcp: in a SACK-based recovery the scoreboard
                        // shows the holes left (`sack_retransmission`); with
                        // nothing SACKed to go by, the hole at the ACK is
                        // NewReno's, unless it was resent in this recovery;
                        // only the first such ACK restarts the timer
                        // (`partial_ack_restarted_timer`).
                        Some(_)
                            if ack_len > 0
                                && self.sack_recovery
                                && self.scoreboard.is_empty()
                                && ack_number >= self.high_rxt =>
                        {
                            net_debug!(
                                "partial ACK and nothing SACKed, retransmitting the next hole"
                            );
                            self.pending_fast_retransmit = true;
                            self.hystart.on_retransmit();
                            keep_timer = self.partial_ack_restarted_timer;
                            self.partial_ack_restarted_timer = true;
                        }
                        Some(_) if self.sack_recovery => {}
                        Some(_) if ack_len > 0 && self.fast_recovery => {
                            net_debug!("partial ACK, retransmitting the next hole");
                            self.pending_fast_retransmit = true;
                            self.hystart.on_retransmit();
                        }
                        _ => {}
                    }

                    // Notify of fresh ACK
                    self.rtte.on_ack(now, ack_number);
                    let new_flight_size = self.flight_size().saturating_sub(ack_len);
                    self.congestion_controller.inner_mut().on_ack(
                        now,
                        ack_len,
                        new_flight_size,
                        &self.rtte,
                    );
                    if ack_len > 0 {
                        self.hystart.on_ack(
                            now,
                            ack_number,
                            self.remote_max_seq,
                            self.congestion_controller.inner_mut(),
                        );
                    }
                }
            };

            // sal-tcp: after the ACK's own effect on the window, so that
            // an undo restores it as it was (`crate::undo`).
            if self.remote_has_sack {
                self.note_dsack(ack_number, &repr.sack_ranges);
            }

            // We've processed everything in the incoming segment, so advance the local
            // sequence number past it.
            self.local_seq_no = ack_number;

            // During retransmission, if an earlier segment got lost but later was
            // successfully received, self.local_seq_no can move past self.remote_last_seq.
            // Do not attempt to retransmit the latter segments; not only this is pointless
            // in theory but also impossible in practice, since they have been already
            // deallocated from the buffer.
            if self.remote_last_seq < self.local_seq_no {
                self.remote_last_seq = self.local_seq_no
            }
            self.remote_max_seq = self.remote_max_seq.max(self.local_seq_no);
            if self.local_seq_no == self.remote_max_seq {
                // sal-tcp: the flight emptied; idle starts now at the
                // earliest (see `Socket::restart_after_idle`).
                self.last_sent = self.last_sent.max(now);
            }
        }

        // update last remote tsval
        if let Some(timestamp) = repr.timestamp {
            self.last_remote_tsval = timestamp.tsval;
        }

        // update timers.
        match self.timer {
            Timer::Retransmit { .. } | Timer::FastRetransmit | Timer::LossProbe { .. } => {
                if ack_all {
                    // RFC 6298: (5.2) ACK of all outstanding data turn off the retransmit timer.
                    self.timer.set_for_idle(now, self.keep_alive);
                } else if ack_len > 0 && !keep_timer {
                    // (5.3) ACK of new data in ESTABLISHED state restart the retransmit timer.
                    let rto = self.rtte.retransmission_timeout();
                    self.timer.set_for_retransmit(now, rto);
                    // sal-tcp: or the tail loss probe's, before it.
                    self.arm_loss_probe(now);
                }
            }
            Timer::Idle { .. } => {
                // any packet on idle refresh the keepalive timer.
                self.timer.set_for_idle(now, self.keep_alive);
            }
            _ => {}
        }

        // sal-tcp: RFC 6675's other way into a recovery (IsLost): more
        // than two segments SACKed above the oldest unacknowledged byte,
        // though three duplicate ACKs did not come (some were lost, or
        // ACKs of new data carried the blocks). Not while a timeout's or a
        // rewind's resending is under way.
        if self.remote_has_sack
            && self.recover.is_none()
            && self.remote_win_len > 0
            && self.remote_last_seq == self.remote_max_seq
            && self.flight_size() > 0
            && self.timer.is_retransmit()
            && (self.scoreboard.sacked_bytes() > 2 * self.effective_mss()
                // sal-tcp: or any, once a tail loss probe went (`crate::tlp`).
                || (self.tlp.in_flight(self.local_seq_no) && self.scoreboard.sacked_bytes() > 0))
        {
            net_debug!("SACKed data marks the oldest segment lost, starting fast retransmit");
            self.timer.set_for_fast_retransmit();
        }
        // sal-tcp: RACK (`crate::rack`), with the timers up to date.
        self.rack_detect(now);

        // start/stop the Zero Window Probe timer.
        if self.remote_win_len == 0
            && !self.tx_buffer.is_empty()
            && (self.timer.is_idle() || ack_len > 0)
        {
            let delay = self.rtte.retransmission_timeout();
            tcp_trace!("starting zero-window-probe timer for t+{}", delay);
            self.timer.set_for_zero_window_probe(now, delay);
        }
        if self.remote_win_len != 0 && self.timer.is_zero_window_probe() {
            tcp_trace!("stopping zero-window-probe timer");
            if self.flight_size() > 0 {
                // sal-tcp: data still in flight went past a window that
                // closed (a right edge moved left, as a scaled window's may
                // by less than a unit, and the peer cut the segment there):
                // the probe timer had taken the retransmission timer's
                // place, and idle, nothing would ever resend it.
                let rto = self.rtte.retransmission_timeout();
                self.timer.set_for_retransmit(now, rto);
            } else {
                self.timer.set_for_idle(now, self.keep_alive);
            }
        }

        let payload_len = payload.len();
        if payload_len == 0 {
            // sal-tcp: the peer's FIN closing an established connection is
            // acknowledged after the delayed-ACK time, as Linux does (it
            // enters pingpong mode on a FIN): the application's close
            // usually follows at once, and then our FIN carries the ACK.
            // smoltcp acknowledged every bare FIN at once, one more packet.
            if control == TcpControl::Fin && self.state == State::CloseWait {
                self.schedule_delayed_ack(now);
            }
            return clipped.then(|| Reply::ack(repr));
        }

        // sal-tcp: bytes inside a range held out of order came again (RFC
        // 2883 4.1.3): a D-SACK block for them, the first such overlap.
        if !duplicate {
            let (from, to) = (payload_offset, payload_offset + payload_len);
            let held = self
                .assembler
                .iter_data()
                .map(|(left, right)| (left.max(from), right.min(to)))
                .find(|&(left, right)| left < right);
            if let Some((left, right)) = held {
                duplicate = self.note_duplicate(window_start + left, window_start + right);
            }
        }

        let assembler_was_empty = self.assembler.is_empty();

        // Place payload octets into the buffer first (smoltcp does it after the
        // assembler): growing the buffer may fail, and then the segment must
        // not be recorded as received.
        tcp_trace!(
            "rx buffer: receiving {} octets at offset {}",
            payload_len,
            payload_offset
        );
        let len_written = if payload_offset == 0 {
            // In order: always within the window we advertised, always taken.
            self.rx_buffer.write_unallocated(0, payload)
        } else {
            // sal-tcp: out of order, the buffer must reach the segment's
            // offset, so growth is charged to what was actually received
            // (see `ooo_limit`), never to the offset alone.
            let mut assembler = self.assembler.clone();
            if assembler.add(payload_offset, payload_len).is_err() {
                net_debug!(
                    "assembler: too many holes to add {} octets at offset {}",
                    payload_len,
                    payload_offset
                );
                // sal-tcp: dropped, but still out of order: it earns the
                // duplicate ACK (RFC 5681 4.2) that smoltcp withheld. Once
                // a burst of losses has used every hole slot, the sender
                // would otherwise hear nothing more of what arrives, and
                // wait for its timeout where three of these would start a
                // fast retransmit.
                return Some(Reply::ack(repr));
            }
            let limit = self.ooo_limit(assembler.data_len());
            // Under memory pressure, only into storage already held.
            let grow_to = if self.memory_pressure {
                limit.min(self.rx_buffer.pressure_capacity())
            } else {
                limit
            };
            let written = self.rx_buffer.write_ahead(payload_offset, payload, grow_to);
            if written != payload_len {
                net_debug!(
                    "rx buffer: {} out-of-order octets at offset {} would need more memory than received data justifies or memory pressure allows, dropping them",
                    payload_len,
                    payload_offset
                );
                let extent = self.rx_buffer.len() + payload_offset + payload_len;
                if extent <= limit {
                    self.pressure_dropped += 1;
                } else {
                    self.ooo_dropped += 1;
                }
                // The duplicate ACK an out-of-order segment earns: it is
                // what starts the sender's fast retransmit.
                return Some(Reply::ack(repr));
            }
            written
        };
        if len_written != payload_len {
            net_debug!("rx buffer: cannot grow to hold the segment, dropping it");
            return None;
        }

        // Try adding payload octets to the assembler.
        let Ok(contig_len) = self
            .assembler
            .add_then_remove_front(payload_offset, payload_len)
        else {
            net_debug!(
                "assembler: too many holes to add {} octets at offset {}",
                payload_len,
                payload_offset
            );
            return None;
        };

        if payload_offset > 0 {
            // sal-tcp: held out of order; its block leads the SACK options
            // to come, after the one of the segment each answers.
            let seq = self.remote_seq_no + self.rx_buffer.len() + payload_offset;
            self.local_rx_recent_seq.copy_within(0..2, 1);
            self.local_rx_recent_seq[0] = Some(seq);
        }

        if contig_len != 0 {
            // Enqueue the contiguous data octets in front of the buffer.
            tcp_trace!(
                "rx buffer: enqueueing {} octets (now {})",
                contig_len,
                self.rx_buffer.len() + contig_len
            );
            self.rx_buffer.enqueue_unallocated(contig_len);
            self.rx_in_order[0] = self.rx_in_order[0].saturating_add(contig_len as u32);
        }

        if !self.assembler.is_empty() {
            // Print the ranges recorded in the assembler.
            tcp_trace!("assembler: {}", self.assembler);
        }

        self.schedule_delayed_ack(now);

        // Per RFC 5681, we should send an immediate ACK when either:
        //  1) an out-of-order segment is received, or
        //  2) a segment arrives that fills in all or part of a gap in sequence space.
        // sal-tcp: and a duplicate, for its D-SACK block (RFC 2883).
        if !self.assembler.is_empty() || !assembler_was_empty || clipped || duplicate {
            // Note that we change the transmitter state here.
            // This is fine because smoltcp assumes that it can always transmit zero or one
            // packets for every packet it receives.
            tcp_trace!("ACKing incoming segment");
            Some(Reply::ack(repr))
        } else {
            None
        }
    }

    /// Starts (or, for a second segment to acknowledge, force-expires) the
    /// delayed-ACK timer when something is owed to the peer.
    fn schedule_delayed_ack(&mut self, now: Instant) {
        if let (Some(ack_delay), true) = (self.ack_delay, self.ack_to_transmit()) {
            self.ack_delay_timer = match self.ack_delay_timer {
                AckDelayTimer::Idle => {
                    tcp_trace!("starting delayed ack timer");
                    AckDelayTimer::Waiting(now + ack_delay)
                }
                AckDelayTimer::Waiting(_) if self.immediate_ack_to_transmit() => {
                    tcp_trace!("delayed ack timer already started, forcing expiry");
                    AckDelayTimer::Immediate
                }
                timer @ AckDelayTimer::Waiting(_) => {
                    tcp_trace!("waiting until delayed ack timer expires");
                    timer
                }
                AckDelayTimer::Immediate => {
                    tcp_trace!("delayed ack timer already force-expired");
                    AckDelayTimer::Immediate
                }
            };
        }
    }

    fn timed_out(&self, timestamp: Instant) -> bool {
        match (self.remote_last_ts, self.timeout) {
            (Some(remote_last_ts), Some(timeout)) => timestamp >= remote_last_ts + timeout,
            (_, _) => false,
        }
    }

    /// The largest payload of a data segment: our MSS and the peer's, less
    /// the TCP options every segment carries (what Linux's `TCP_MAXSEG`
    /// answers on a connected socket).
    pub fn effective_mss(&self) -> usize {
        // The effective max segment size, taking into account the options and the local and remote limits.
        let options_len = if self.timestamps { 12 } else { 0 };
        (self.local_mss as usize)
            .min(self.remote_mss)
            .saturating_sub(options_len)
    }

    fn seq_to_transmit(&self) -> bool {
        // Fast retransmits should always send, even if later congestion checks would disallow
        // sal-tcp: but not into a closed window (see `poll_transmit`).
        if self.pending_fast_retransmit && !self.tx_buffer.is_empty() && self.remote_win_len > 0 {
            return true;
        }
        // sal-tcp: so do the holes of a SACK-based recovery, within the
        // congestion window.
        if self.sack_retransmission().is_some() {
            return true;
        }
        // sal-tcp: and a tail loss probe, past the congestion window.
        if self.tlp.due() && self.remote_win_len > 0 && self.flight_size() > 0 {
            return true;
        }

        let effective_mss = self.effective_mss();

        // Have we sent data that hasn't been ACKed yet?
        let data_in_flight = self.remote_last_seq != self.local_seq_no;

        // If we want to send a SYN and we haven't done so, do it!
        if matches!(self.state, State::SynSent | State::SynReceived) && !data_in_flight {
            return true;
        }

        // max sequence number we can send.
        let max_send_seq =
            self.local_seq_no + core::cmp::min(self.remote_win_len, self.tx_buffer.len());

        // Max amount of octets we can send.
        let capped_send_seq = if max_send_seq >= self.remote_last_seq {
            max_send_seq - self.remote_last_seq
        } else {
            0
        };

        // compare max bytes allowed by cwnd with max bytes allowed by remote
        let max_send = capped_send_seq.min(self.cwnd_remaining());

        // Can we send at least 1 octet?
        let mut can_send = max_send != 0;
        // Can we send at least 1 full segment?
        let can_send_full = max_send >= effective_mss;

        // Do we have to send a FIN?
        let want_fin = matches!(
            self.state,
            State::FinWait1 | State::Closing | State::LastAck
        );

        // If we're applying the Nagle algorithm we don't want to send more
        // until one of:
        // * There's no data in flight
        // * We can send a full packet
        // * We have all the data we'll ever send (we're closing send)
        if self.nagle && data_in_flight && !can_send_full && !want_fin {
            can_send = false;
        }
        if self.silly_window(max_send) {
            can_send = false;
        }

        // Can we actually send the FIN? We can send it if:
        // 1. We have unsent data that fits in the remote window.
        // 2. We have no unsent data.
        // This condition matches only if #2, because #1 is already covered by can_data and we're ORing them.
        let can_fin = want_fin && self.remote_last_seq == self.local_seq_no + self.tx_buffer.len();

        can_send || can_fin
    }

    /// sal-tcp: sender silly window avoidance (RFC 9293 3.8.6.2.1,
    /// MUST-38): whether `usable` bytes, what the peer's window and the
    /// congestion window let out now, are better held back. They are when
    /// they make less than a full segment, more data is queued than that,
    /// they are less than half the peer's window, and data is in flight
    /// (its ACK will open the window further, so nothing waits for a
    /// timer). A short segment that carries all the queued data still goes
    /// at once: every write is pushed, Nagle or not.
    ///
    /// smoltcp had only Nagle's algorithm, which the SAL turns off. A bulk
    /// sender limited by its congestion window then sent whatever an ACK
    /// opened, and an ACK of a short segment opens little: short segments
    /// bred short segments, each as likely to be lost as a full one and
    /// each costing a header (two in five segments of a 2 MiB transfer
    /// under half the MSS, through 1 % loss).
    fn silly_window(&self, usable: usize) -> bool {
        let in_flight = self.flight_size();
        let unsent = self.tx_buffer.len().saturating_sub(in_flight);
        in_flight > 0
            && usable < self.effective_mss()
            && usable < unsent
            && usable.saturating_mul(2) < self.remote_win_len
    }

    fn delayed_ack_expired(&self, timestamp: Instant) -> bool {
        match self.ack_delay_timer {
            AckDelayTimer::Idle => true,
            AckDelayTimer::Waiting(t) => t <= timestamp,
            AckDelayTimer::Immediate => true,
        }
    }

    fn ack_to_transmit(&self) -> bool {
        if let Some(remote_last_ack) = self.remote_last_ack {
            remote_last_ack < self.remote_seq_no + self.rx_buffer.len()
        } else {
            false
        }
    }

    /// Return whether to send ACK immediately due to the amount of unacknowledged data.
    ///
    /// RFC 9293 states "An ACK SHOULD be generated for at least every second full-sized segment or
    /// 2*RMSS bytes of new data (where RMSS is the MSS specified by the TCP endpoint receiving the
    /// segments to be acknowledged, or the default value if not specified) (SHLD-19)."
    ///
    /// Note that the RFC above only says "at least 2*RMSS bytes", which is not a hard requirement.
    /// In practice, we follow the Linux kernel's empirical value of sending an ACK for every RMSS
    /// byte of new data. For details, see
    /// <https://elixir.bootlin.com/linux/v6.11.4/source/net/ipv4/tcp_input.c#L5747>.
    fn immediate_ack_to_transmit(&self) -> bool {
        if let Some(remote_last_ack) = self.remote_last_ack {
            remote_last_ack + self.remote_mss < self.remote_seq_no + self.rx_buffer.len()
        } else {
            false
        }
    }

    /// Return whether we should send ACK immediately due to significant window updates.
    ///
    /// ACKs with significant window updates should be sent immediately to let the sender know that
    /// more data can be sent. According to the Linux kernel implementation, "significant" means
    /// doubling the receive window. The Linux kernel implementation can be found at
    /// <https://elixir.bootlin.com/linux/v6.9.9/source/net/ipv4/tcp.c#L1472>.
    fn window_to_update(&self) -> bool {
        match self.state {
            State::SynSent
            | State::SynReceived
            | State::Established
            | State::FinWait1
            | State::FinWait2 => {
                let new_win = self.scaled_window();
                if let Some(last_win) = self.last_scaled_window() {
                    new_win > 0 && new_win / 2 >= last_win
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Write the next segment this socket has to send into `out` and return
    /// its length, or `None` if there is nothing to send now.
    ///
    /// The segment is complete: TCP header (ports 0, options) and payload,
    /// with the checksum computed over the IPv4 pseudo-header `src` -> `dst`
    /// (the real locators of this moment: they may change between calls, the
    /// socket does not care). The payload is copied once, from the send
    /// buffer into `out`. Put IPv4 and SAL headers in front of `out` yourself
    /// (headroom). `out` should hold at least
    /// [`MAX_HEADER_LEN`](crate::MAX_HEADER_LEN) plus the configured MSS;
    /// a shorter one gets smaller segments, or nothing if even a header does
    /// not fit.
    ///
    /// This is also where timers act (retransmission, keep-alive, zero-window
    /// probe, delayed ACK, TIME-WAIT expiry, timeouts, buffer trims): call it
    /// when [`poll_at`](Socket::poll_at) is due, after `handle_segment`, and
    /// after the application sent, read or closed; call it again until it
    /// returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        src: Ipv4Address,
        dst: Ipv4Address,
        out: &mut [u8],
    ) -> Option<usize> {
        self.run_trim(now);

        if let Some(reply) = self.reply {
            return self.transmit_reply(now, reply, src, dst, out);
        }

        if !self.has_peer {
            return None;
        }

        if self.remote_last_ts.is_none() {
            // We get here in exactly two cases:
            //  1) This socket just transitioned into SYN-SENT.
            //  2) This socket had an empty transmit buffer and some data was added there.
            // Both are similar in that the socket has been quiet for an indefinite
            // period of time, it isn't anymore, and the local endpoint is talking.
            // So, we start counting the timeout not from the last received packet
            // but from the first transmitted one.
            self.remote_last_ts = Some(now);
        }

        self.congestion_controller.inner_mut().pre_transmit(now);

        // sal-tcp: the tail loss probe's timer (`crate::tlp`).
        if !self.timed_out(now) && self.timer.should_probe(now) {
            self.loss_probe_due(now);
        }

        // Check if any state needs to be changed because of a timer.
        if self.timed_out(now) {
            // If a timeout expires, we should abort the connection.
            net_debug!("timeout exceeded");
            self.set_state(State::Closed);
        } else if self.timer.should_retransmit(now) {
            if let Timer::Retransmit { .. } = self.timer {
                // If a retransmit timer expired, we should resend data starting at the last ACK.
                net_debug!("retransmitting after rto");

                // Inform the congestion controller that we're retransmitting and should enter the slow start state
                // sal-tcp: unless it is the SYN or SYN-ACK: the connection
                // starts from the initial window when the handshake ends,
                // or from one segment after two such timeouts
                // (`set_initial_window`). The SYN-ACK's timeout left a
                // listener one segment and an ssthresh of two.
                if matches!(self.state, State::SynSent | State::SynReceived) {
                    self.handshake_timeouts = self.handshake_timeouts.saturating_add(1);
                } else {
                    // sal-tcp: a new episode to undo (`crate::undo`),
                    // unless the timeout fired in a recovery, or in a
                    // timeout's resending: that episode carries on, its
                    // window before it all (Linux's `tcp_enter_loss`).
                    self.loss_counters.timeouts = self.loss_counters.timeouts.wrapping_add(1);
                    let carry_on =
                        self.recover.is_some() || self.remote_last_seq < self.remote_max_seq;
                    if !(self.undo.is_open() && carry_on) {
                        self.begin_undo(true);
                    }
                    let in_flight = self.flight_size();
                    self.congestion_controller
                        .inner_mut()
                        .on_rto(now, in_flight);
                }

                // Rewind "last sequence number sent", as if we never
                // had sent them. This will cause all data in the queue
                // to be sent again.
                self.remote_last_seq = self.local_seq_no;

                // Inform RTTE, so that it can can handle RTO backoff
                self.rtte.on_rto();
                // And avoid bogus measurements: all is resent.
                self.rtte.on_retransmit();

                // A timeout ends any fast recovery. sal-tcp: and the count of
                // duplicate ACKs, which the window given up on earned: left
                // standing, it let one segment per duplicate out beyond the
                // timeout's window of one segment (limited transmit), and
                // one more duplicate started a fast retransmit (Linux also
                // forgets them, `tcp_enter_loss`). `recover` stays unset:
                // duplicate ACKs still to come may start a fast retransmit
                // of the segment the timeout resends. RFC 6582 section 4
                // suggests holding them off (until an ACK of all sent
                // before the timeout, or only of the segment resent), which
                // spares a copy and a second congestion response when the
                // timeout's copy arrives; but through random loss that copy
                // is often lost too, and the duplicate ACKs are what repair
                // it at once. Measured with `sal/tests/sim_tcp_loss.rs`
                // (64 runs at 3 %): held off until the resent segment is
                // acknowledged, 3 stalls of 1 s or more (the longest
                // 1.65 s) against none (0.99 s); held off until all is,
                // `sim_lossy_paths` waited 1.1 s against its 0.75 s bound.
                self.recover = None;
                self.fast_recovery = false;
                self.local_rx_dup_acks = 0;
                self.limited_transmit = 0;
                // sal-tcp: and the scoreboard (RFC 2018 8: the peer may
                // have reneged; what it holds will be SACKed again).
                self.scoreboard.clear();
                self.sack_recovery = false;
                self.rack.forget_flight();
                self.tlp.end();
            } else {
                // If a fast rentrasmit timer expired, we should resend only the earliest unAcked segment
                net_debug!("retransmitting for fast-retransmit");

                // Inform the congestion controller that we're doing a fast retransmit and should enter the fast recovery state
                // sal-tcp: what limited transmit sent is not part of it.
                let in_flight = self.flight_size().saturating_sub(self.limited_transmit);
                self.limited_transmit = 0;
                // sal-tcp: a new episode to undo (`crate::undo`), unless
                // a timeout's resending is under way: duplicate ACKs of
                // what it resends carry its episode on.
                if !(self.undo.is_open() && self.remote_last_seq < self.remote_max_seq) {
                    self.begin_undo(true);
                }
                self.congestion_controller
                    .inner_mut()
                    .on_loss(now, in_flight);

                self.pending_fast_retransmit = true;
                self.recover = Some(self.remote_max_seq);
                self.fast_recovery = true;
                self.loss_counters.fast_retransmits =
                    self.loss_counters.fast_retransmits.wrapping_add(1);
                // sal-tcp: SACK-based if the peer SACKs, and no timeout's
                // resending is under way (the scoreboard was forgotten).
                self.sack_recovery =
                    self.remote_has_sack && self.remote_last_seq == self.remote_max_seq;
                self.high_rxt = self.local_seq_no;
                self.sack_dup_credit = 0;
                self.partial_ack_restarted_timer = false;
                self.rack.forget_flight();
                self.rack.on_recovery();
                self.tlp.end();
            }

            // Clear the `should_retransmit` state. If we can't retransmit right
            // now for whatever reason (like zero window), this avoids an
            // infinite polling loop where `poll_at` returns `Now` but `dispatch`
            // can't actually do anything.
            self.timer.set_for_idle(now, self.keep_alive);
            // sal-tcp: a fast retransmit, or a timeout's resending, waits
            // for a closed window to open, and the zero-window probe asks
            // for that meanwhile (when it opens, the retransmission timer
            // takes over). Left idle after a timeout, a lost window update
            // stalled the flow for good.
            if self.remote_win_len == 0 && !self.tx_buffer.is_empty() {
                let delay = self.rtte.retransmission_timeout();
                self.timer.set_for_zero_window_probe(now, delay);
            }
            // sal-tcp: a fast retransmit with no data left to resend, only
            // the FIN in flight (the peer's duplicate ACKs acknowledged all
            // our data): the FIN goes again now, and its retransmission
            // timer with it. A fast retransmit resends data only, so it sent
            // nothing here, and idle, the lost FIN was never sent again: the
            // connection stalled for good (both ends in FIN-WAIT-1 or
            // CLOSING after a simultaneous close, each waiting for the
            // other's FIN).
            if self.tx_buffer.is_empty() && self.flight_size() > 0 {
                self.pending_fast_retransmit = false;
                self.remote_last_seq = self.local_seq_no;
            }

            // sal-tcp: the RTT estimator hears of a fast retransmission
            // when it is sent (`note_resent`).
            self.hystart.on_retransmit();
        }

        self.restart_after_idle(now);

        // Decide whether we're sending a packet.
        if self.seq_to_transmit() {
            // If we have data to transmit and it fits into partner's window, do it.
            tcp_trace!("outgoing segment will send data or flags");
        } else if self.ack_to_transmit() && self.delayed_ack_expired(now) {
            // If we have data to acknowledge, do it.
            tcp_trace!("outgoing segment will acknowledge");
        } else if self.window_to_update() {
            // If we have window length increase to advertise, do it.
            tcp_trace!("outgoing segment will update window");
        } else if self.state == State::Closed {
            // If we need to abort the connection, do it.
            tcp_trace!("outgoing segment will abort connection");
        } else if self.timer.should_keep_alive(now) {
            // If we need to transmit a keep-alive packet, do it.
            tcp_trace!("keep-alive timer expired");
        } else if self.timer.should_zero_window_probe(now) {
            tcp_trace!("sending zero-window probe");
        } else if self.timer.should_close(now) {
            // If we have spent enough time in the TIME-WAIT state, close the socket.
            tcp_trace!("TIME-WAIT timer expired");
            self.forget_peer();
            return None;
        } else {
            return None;
        }

        // Construct the basic TCP representation, an empty ACK packet.
        // We'll adjust this to be more specific as needed. The payload is not
        // part of it: it is described by `payload_offset`/`payload_len` and
        // copied from the transmit buffer straight into `out`.
        let mut repr = TcpRepr {
            seq_number: self.remote_last_seq,
            ack_number: Some(self.remote_seq_no + self.rx_buffer.len()),
            window_len: self.scaled_window(),
            timestamp: self.timestamp_option(now, self.last_remote_tsval),
            ..EMPTY_SEGMENT
        };
        let mut payload_offset = 0;
        let mut payload_len = 0;

        let mut is_zero_window_probe = false;
        // sal-tcp: a fast retransmission or a SACK hole (`note_resent`).
        let mut resent = false;
        // sal-tcp: this segment is the tail loss probe (`crate::tlp`).
        let mut probe = false;
        // sal-tcp: this segment resends the oldest byte, whose last
        // retransmission was lost (`crate::rack`).
        let mut resent_lost_head = false;

        match self.state {
            // We transmit an RST in the CLOSED state. If we ended up in the CLOSED state
            // with a specified endpoint, it means that the socket was aborted.
            State::Closed => {
                repr.control = TcpControl::Rst;
            }

            // We never transmit anything in the LISTEN state.
            State::Listen => return None,

            // We transmit a SYN in the SYN-SENT state.
            // We transmit a SYN|ACK in the SYN-RECEIVED state.
            State::SynSent | State::SynReceived => {
                repr.control = TcpControl::Syn;
                repr.seq_number = self.local_seq_no;
                // window len must NOT be scaled in SYNs.
                repr.window_len = u16::try_from(self.rx_window()).unwrap_or(u16::MAX);
                if self.state == State::SynSent {
                    repr.ack_number = None;
                    repr.window_scale = Some(self.remote_win_shift);
                    repr.sack_permitted = true;
                } else {
                    repr.sack_permitted = self.remote_has_sack;
                    repr.window_scale = self.remote_win_scale.map(|_| self.remote_win_shift);
                }
            }

            // We transmit data in all states where we may have data in the buffer,
            // or the transmit half of the connection is still open.
            State::Established
            | State::FinWait1
            | State::Closing
            | State::CloseWait
            | State::LastAck => {
                // Extract as much data as the remote side can receive in this packet
                // from the transmit buffer.

                // Maximum size we're allowed to send. This can be limited by 4 factors:
                // 1. remote window
                // 2. MSS the remote is willing to accept, probably determined by their MTU
                // 3. MSS we can send, determined by our MTU.
                // 4. Our congestion window
                // and here also by the caller's buffer.
                let options_len = repr.header_len() - TCP_HEADER_LEN;
                let effective_mss = (self.local_mss as usize)
                    .min(self.remote_mss)
                    .saturating_sub(options_len);
                let device_limit = effective_mss.min(out.len().saturating_sub(repr.header_len()));

                // sal-tcp: a fast retransmission waits for a closed window
                // to open: a segment sent meanwhile (the ACK of the peer's
                // data, a zero-window probe) leaves it pending, where it
                // took its place and left the hole to the timeout.
                let offset = if self.pending_fast_retransmit && self.remote_win_len > 0 {
                    // sal-tcp: within the peer's window, as any segment
                    // (smoltcp sent a whole segment past a window that had
                    // shrunk, which the peer cuts or drops).
                    let size = device_limit
                        .min(self.tx_buffer.len())
                        .min(self.remote_win_len);
                    // sal-tcp: in a SACK-based recovery, the hole only.
                    let size = match self.scoreboard.next_hole(self.local_seq_no) {
                        Some((_, end)) if self.sack_recovery => size.min(end - self.local_seq_no),
                        _ => size,
                    };
                    repr.seq_number = self.local_seq_no;
                    payload_len = size;

                    self.pending_fast_retransmit = false;
                    resent = true;
                    if self.sack_recovery {
                        self.high_rxt = self.high_rxt.max(self.local_seq_no + size);
                        self.rack.on_resent(
                            self.local_seq_no,
                            self.local_seq_no + size,
                            self.remote_max_seq,
                        );
                    }

                    0
                } else if let Some((seq, len)) = self.sack_retransmission() {
                    // sal-tcp: the next hole of a SACK-based recovery.
                    tcp_trace!("retransmitting a SACK hole at {}", seq);
                    let offset = seq - self.local_seq_no;
                    repr.seq_number = seq;
                    payload_offset = offset;
                    payload_len = len.min(device_limit);
                    resent_lost_head = seq == self.local_seq_no && self.rack.has_lost();
                    // Not back, for a retransmission found lost.
                    self.high_rxt = self.high_rxt.max(seq + payload_len);
                    self.rack
                        .on_resent(seq, seq + payload_len, self.remote_max_seq);
                    resent = true;
                    self.hystart.on_retransmit();
                    offset
                } else if self.tlp.due() && self.remote_win_len > 0 && self.flight_size() > 0 {
                    // sal-tcp: the tail loss probe: a new segment if the
                    // peer's window and the data allow, past the congestion
                    // window, else the last segment sent again.
                    probe = true;
                    let in_flight = self.flight_size();
                    let win_right_edge = self.local_seq_no + self.remote_win_len;
                    let win_limit = if win_right_edge >= self.remote_last_seq {
                        win_right_edge - self.remote_last_seq
                    } else {
                        0
                    };
                    let unsent = self.tx_buffer.len().saturating_sub(in_flight);
                    let new = unsent.min(win_limit).min(device_limit);
                    if new > 0 {
                        payload_offset = in_flight;
                        payload_len = new;
                        in_flight
                    } else {
                        // Within the peer's window, as any segment.
                        let data_end = in_flight.min(self.tx_buffer.len()).min(self.remote_win_len);
                        let start = data_end.saturating_sub(device_limit);
                        repr.seq_number = self.local_seq_no + start;
                        payload_offset = start;
                        payload_len = data_end - start;
                        resent = true;
                        start
                    }
                } else {
                    // Right edge of window, ie the max sequence number we're allowed to send.
                    let win_right_edge = self.local_seq_no + self.remote_win_len;

                    // Max amount of octets we're allowed to send according to the remote window.
                    let mut win_limit = if win_right_edge >= self.remote_last_seq {
                        win_right_edge - self.remote_last_seq
                    } else {
                        // This can happen if we've sent some data and later the remote side
                        // has shrunk its window so that data is no longer inside the window.
                        // This should be very rare and is strongly discouraged by the RFCs,
                        // but it does happen in practice.
                        // http://www.tcpipguide.com/free/t_TCPWindowManagementIssues.htm
                        0
                    };

                    // To send a zero-window-probe, force the window limit to at least 1 byte.
                    if win_limit == 0 && self.timer.should_zero_window_probe(now) {
                        win_limit = 1;
                        is_zero_window_probe = true;
                    }

                    let size = if is_zero_window_probe {
                        // Zero-window probes are exempt from the congestion window: they
                        // are sent precisely when normal transmission is impossible, and
                        // an empty segment elicits no reply, so capping the probe to a
                        // zero length would stall the connection if a window update from
                        // the remote got lost.
                        win_limit.min(device_limit)
                    } else {
                        let usable = win_limit.min(self.cwnd_remaining());
                        if self.silly_window(usable) {
                            0
                        } else {
                            usable.min(device_limit)
                        }
                    };

                    let offset = self.flight_size();
                    payload_offset = offset;
                    payload_len = size.min(self.tx_buffer.len().saturating_sub(offset));

                    offset
                };

                // If we've sent everything we had in the buffer, follow it with the PSH or FIN
                // flags, depending on whether the transmit half of the connection is open.
                if offset + payload_len == self.tx_buffer.len() {
                    match self.state {
                        State::FinWait1 | State::LastAck | State::Closing => {
                            repr.control = TcpControl::Fin
                        }
                        State::Established | State::CloseWait if payload_len > 0 => {
                            repr.control = TcpControl::Psh
                        }
                        _ => (),
                    }
                }
            }

            // In FIN-WAIT-2 and TIME-WAIT states we may only transmit ACKs for incoming data or FIN
            State::FinWait2 | State::TimeWait => {}
        }

        // sal-tcp: a segment that occupies no sequence space carries the highest
        // sequence number sent (see `ack_seq`), not the retransmission point.
        if payload_len == 0 && matches!(repr.control, TcpControl::None | TcpControl::Psh) {
            repr.seq_number = self.ack_seq();
        }

        // There might be more than one reason to send a packet. E.g. the keep-alive timer
        // has expired, and we also have data in transmit buffer. Since any packet that occupies
        // sequence space will elicit an ACK, we only need to send an explicit packet if we
        // couldn't fill the sequence space with anything.
        let is_keep_alive;
        if self.timer.should_keep_alive(now) && payload_len == 0 && repr.is_empty() {
            repr.seq_number = repr.seq_number - 1;
            payload_len = 1; // RFC 1122 says we should send one garbage byte (a zero)
            is_keep_alive = true;
        } else {
            is_keep_alive = false;
        }

        // sal-tcp: a pure ACK carries the SACK option, as a reply does (a
        // delayed ACK, a window update, the ACK of a FIN): it went without
        // any, and an ACK that did not answer a segment at once told a
        // peer nothing of what was held above a hole.
        let dsack_before = self.dsack;
        if let (0, TcpControl::None | TcpControl::Psh, Some(ack)) =
            (payload_len, repr.control, repr.ack_number)
        {
            repr.sack_ranges = self.sack_option(ack);
        }

        // Trace a summary of what will be sent.
        if is_keep_alive {
            tcp_trace!("sending a keep-alive");
        } else if payload_len > 0 {
            tcp_trace!(
                "tx buffer: sending {} octets at offset {}",
                payload_len,
                payload_offset
            );
        }
        if repr.control != TcpControl::None || payload_len == 0 {
            let flags = match (repr.control, repr.ack_number) {
                (TcpControl::Syn, None) => "SYN",
                (TcpControl::Syn, Some(_)) => "SYN|ACK",
                (TcpControl::Fin, Some(_)) => "FIN|ACK",
                (TcpControl::Rst, Some(_)) => "RST|ACK",
                (TcpControl::Psh, Some(_)) => "PSH|ACK",
                (TcpControl::None, Some(_)) => "ACK",
                _ => "<unreachable>",
            };
            tcp_trace!("sending {}", flags);
        }

        if repr.control == TcpControl::Syn {
            // Fill the MSS option. See RFC 6691 for an explanation of this calculation.
            repr.max_seg_size = Some(self.local_mss);
        }

        // Write the segment. If `out` cannot hold it, nothing is sent and the
        // state below is left alone, as smoltcp does when its device refuses.
        let tx_buffer = &self.tx_buffer;
        let len = segment::emit(
            &repr,
            payload_len,
            |payload| {
                if is_keep_alive {
                    payload.fill(0);
                } else {
                    tx_buffer.read_allocated(payload_offset, payload);
                }
            },
            src,
            dst,
            out,
        );
        let Some(len) = len else {
            self.dsack = dsack_before;
            return None;
        };

        // We've sent something, whether useful data or a keep-alive packet, so rewind
        // the keep-alive timer.
        self.timer.rewind_keep_alive(now, self.keep_alive);

        // Reset delayed-ack timer
        match self.ack_delay_timer {
            AckDelayTimer::Idle => {}
            AckDelayTimer::Waiting(_) => {
                tcp_trace!("stop delayed ack timer")
            }
            AckDelayTimer::Immediate => {
                tcp_trace!("stop delayed ack timer (was force-expired)")
            }
        }
        self.ack_delay_timer = AckDelayTimer::Idle;

        // Leave the rest of the state intact if sending a zero-window probe.
        if is_zero_window_probe {
            self.timer.rewind_zero_window_probe(now);
            // sal-tcp: its byte was sent, and may be acknowledged (the
            // acceptable ACK range ends at the highest byte sent).
            self.remote_max_seq = self.remote_max_seq.max(repr.seq_number + payload_len);
            return Some(len);
        }

        // Leave the rest of the state intact if sending a keep-alive packet, since those
        // carry a fake segment.
        if is_keep_alive {
            return Some(len);
        }

        // We've sent a packet successfully, so we can update the internal state now.
        // Use max() so a fast-retransmit segment (whose seq_number is local_seq_no, well
        // behind the current frontier) doesn't rewind the tracked "highest sent" sequence.
        // sal-tcp: only a segment that occupies sequence space moves it. One
        // that does not carries `ack_seq`, the highest sequence number sent:
        // counted, it marked all sent before a timeout or a rewind as resent,
        // and the rest of the flight waited for the next timeout (the pure
        // ACKs of the peer's data, while both directions carry data).
        let segment_len = payload_len + repr.control.len();
        let max_before = self.remote_max_seq;
        if segment_len > 0 {
            self.remote_last_seq = self.remote_last_seq.max(repr.seq_number + segment_len);
        }
        self.remote_max_seq = self.remote_max_seq.max(self.remote_last_seq);
        if self.local_rx_dup_acks > 0 && self.recover.is_none() {
            // sal-tcp: what this limited transmit put past the window.
            let cwnd = self.congestion_controller.inner().window();
            let beyond = self.flight_size().saturating_sub(cwnd);
            self.limited_transmit = self.limited_transmit.max(beyond);
        }
        self.remote_last_ack = repr.ack_number;
        self.remote_last_win = repr.window_len;
        self.remote_last_win_unscaled = repr.control == TcpControl::Syn;
        self.note_advertised_edge();

        if segment_len > 0 {
            self.last_sent = now;
            // sal-tcp: any segment sent again (`crate::undo`); a probe
            // that resends opens an episode of its own first.
            if probe && repr.seq_number < max_before {
                self.begin_undo(false);
            }
            if probe {
                self.loss_counters.loss_probes = self.loss_counters.loss_probes.wrapping_add(1);
            }
            if repr.seq_number < max_before {
                let end = (repr.seq_number + segment_len).min(max_before);
                self.undo.resent(repr.seq_number, end);
                self.rack.on_sent_again(end);
            }
            if resent {
                self.note_resent(repr.seq_number, repr.seq_number + segment_len);
            }
            self.rtte.on_send(now, repr.seq_number + segment_len);
            self.hystart.on_send(now, repr.seq_number, segment_len);
            self.congestion_controller
                .inner_mut()
                .post_transmit(now, segment_len);
        }

        if segment_len > 0 && (!self.timer.is_retransmit() || resent_lost_head) {
            // RFC 6298 (5.1) Every time a packet containing data is sent (including a
            // retransmission), if the timer is not running, start it running
            // so that it will expire after RTO seconds.
            // sal-tcp: and the oldest byte sent again, its last copy lost,
            // restarts it (Linux's `tcp_xmit_retransmit_queue`): run from
            // the lost copy, it fired with the new one still on its way.
            let rto = self.rtte.retransmission_timeout();
            self.timer.set_for_retransmit(now, rto);
            // sal-tcp: which leaves RACK's timer running for the other
            // retransmissions that wait out the reordering window.
            if resent_lost_head {
                self.rack_detect(now);
            }
        }
        // sal-tcp: the tail loss probe (`crate::tlp`): once sent, its
        // episode is open and the retransmission timer runs; new data
        // pushes the probe back, to 2 SRTT after the last segment.
        if probe {
            let retrans = repr.seq_number + segment_len <= max_before;
            self.tlp.sent(self.remote_max_seq, retrans);
        } else if segment_len > 0 && self.remote_max_seq > max_before {
            self.arm_loss_probe(now);
        }

        if self.state == State::Closed {
            // When aborting a connection, forget about it after sending a single RST packet.
            self.has_peer = false;
        }

        Some(len)
    }

    /// sal-tcp: a state in which the connection is synchronized and may
    /// still have data of ours in flight or to send.
    fn synchronized_sending(&self) -> bool {
        matches!(
            self.state,
            State::Established
                | State::FinWait1
                | State::Closing
                | State::CloseWait
                | State::LastAck
        )
    }

    /// sal-tcp: slow start after an idle period (RFC 5681 4.1, Linux's
    /// `tcp_slow_start_after_idle`, on by default): data waits to go out,
    /// nothing is in flight, and nothing went out for longer than the
    /// retransmission timeout. The congestion window is halved once for
    /// each timeout of that time, down to the restart window (min(initial
    /// window, cwnd)), and ssthresh kept at least 3/4 of the window given
    /// up, as Linux's `tcp_cwnd_restart` (`Controller::on_restart`);
    /// HyStart++ begins its rounds afresh, as after a rewind. The window
    /// measured what the path carried then: a flow silent for seconds
    /// sent all of it at once, into queues that may since have filled.
    /// Idle is counted from the last segment sent, as Linux, or from the
    /// ACK that emptied the flight if that came later (a flight whose ACK
    /// took longer than the timeout, which sent no retransmission as no
    /// poll came between, was not idle), and the restart counts as a send,
    /// so a poll that cannot send (a closed window) does not halve it
    /// again.
    fn restart_after_idle(&mut self, now: Instant) {
        if !self.synchronized_sending()
            || self.local_seq_no != self.remote_max_seq
            || self.tx_buffer.is_empty()
            || now <= self.last_sent
        {
            return;
        }
        let idle = (now - self.last_sent).total_micros();
        let rto = self.rtte.retransmission_timeout().total_micros().max(1);
        if idle <= rto {
            return;
        }
        let halvings = u32::try_from((idle - 1) / rto).unwrap_or(u32::MAX);
        net_debug!("idle for {} us, restarting the congestion window", idle);
        self.congestion_controller.inner_mut().on_restart(halvings);
        self.hystart.on_retransmit();
        self.last_sent = now;
    }

    /// Send the reply owed to a received segment (see `Reply`).
    fn transmit_reply(
        &mut self,
        now: Instant,
        reply: Reply,
        src: Ipv4Address,
        dst: Ipv4Address,
        out: &mut [u8],
    ) -> Option<usize> {
        let (repr, rest) = match reply {
            Reply::Rst { seq, ack } => {
                tcp_trace!("sending RST in reply");
                let repr = TcpRepr {
                    control: TcpControl::Rst,
                    seq_number: seq,
                    ack_number: ack,
                    ..EMPTY_SEGMENT
                };
                (repr, None)
            }
            Reply::Ack { count, tsecr } => {
                tcp_trace!("sending ACK in reply");
                let rest = (count > 1).then(|| Reply::Ack {
                    count: count - 1,
                    tsecr,
                });
                (self.ack_reply(now, tsecr), rest)
            }
        };
        let len = segment::emit(&repr, 0, |_| {}, src, dst, out)?;
        self.reply = rest;
        Some(len)
    }

    /// Run the trim point if due (see `crate::buffer`), and schedule the
    /// next one while the buffers hold memory.
    fn run_trim(&mut self, now: Instant) {
        if let Some(at) = self.trim_at {
            if now >= at {
                self.tx_buffer.trim(0);
                self.rx_in_order = [0, self.rx_in_order[0]];
                let ahead = self.trim_out_of_order();
                self.rx_buffer.trim(ahead);
                self.trim_at = None;
            }
        }
        self.schedule_trim(now);
    }

    /// sal-tcp: how far past the first queued byte the receive buffer may
    /// reach to hold out-of-order data, when `held` bytes of it (the segment
    /// at hand included) are held.
    ///
    /// Out-of-order data sits at its offset in the ring, so the memory it
    /// takes follows the offset, which costs the sender nothing: one byte
    /// near the right edge of a 1 MiB window used to pin 1 MiB for as long
    /// as the hole stayed open. The reach is therefore charged to bytes
    /// actually received: twice the sum of those queued in order, those
    /// held out of order and those that joined the queue in order since
    /// the previous trim point but one (one to two trim intervals), plus two
    /// segments. Growth by doubling then allocates at most twice the reach.
    ///
    /// A legitimate flow stays inside it. After a loss, the segments that
    /// follow the hole arrive back to back, so what is held grows as fast as
    /// the offset (a hole of up to two segments needs nothing else). A burst
    /// of losses makes a wider hole, but no wider than the sender's window,
    /// and a sender only has the window it has because about that much was
    /// delivered in its last round trips (in slow start, at least half of
    /// it: the factor two). Without that credit, a burst of four lost
    /// segments cost a bulk flow with a fast reader every segment after it,
    /// which NewReno then resends one per round trip (30 times slower in
    /// the tests). What does not fit is dropped with the duplicate ACK any
    /// out-of-order segment earns, as if lost. In-order data is never
    /// refused: the advertised window stays what the configuration promises.
    fn ooo_limit(&self, held: usize) -> usize {
        let recent = self.rx_in_order[0] as usize + self.rx_in_order[1] as usize;
        let received = self.rx_buffer.len() + held + recent;
        received
            .saturating_mul(OOO_SPAN_PER_BYTE)
            .saturating_add(OOO_SPARE_SEGMENTS * self.local_mss as usize)
    }

    /// sal-tcp: at a trim point, give up the furthest out-of-order ranges
    /// while the buffer span they need exceeds what `ooo_limit` allows now
    /// (what was queued was read since, or the flow went quiet), so that
    /// the buffer can shrink. Returns how many bytes past the queue must be
    /// kept.
    ///
    /// Under memory pressure every out-of-order range is given up: the
    /// memory it pins goes back at this or the next trim point, and the
    /// peer resends the data (a legitimate sender keeps it until it is
    /// acknowledged cumulatively, RFC 2018 section 8).
    fn trim_out_of_order(&mut self) -> usize {
        let queued = self.rx_buffer.len();
        loop {
            let end = self.assembler.end();
            let justified = queued + end <= self.ooo_limit(self.assembler.data_len());
            if end == 0 || (justified && !self.memory_pressure) {
                return end;
            }
            let size = self.assembler.pop_back();
            net_debug!(
                "rx buffer: giving up {} out-of-order octets ending {} past the queue",
                size,
                end
            );
            if justified {
                self.pressure_dropped += 1;
            } else {
                self.ooo_dropped += 1;
            }
        }
    }

    /// Out-of-order segments this socket dropped, and out-of-order ranges
    /// it gave up at trim points, because the buffer would have had to
    /// reach further past its in-order data than the bytes actually
    /// received justify (since the socket was created). Each costs the
    /// peer a retransmission, nothing else; a legitimate sender rarely
    /// earns any.
    pub fn out_of_order_dropped(&self) -> u64 {
        self.ooo_dropped
    }

    /// Tell the socket whether the host's buffer memory is under pressure
    /// (its owner keeps a host-wide budget; call this before every
    /// [`handle_segment`](Socket::handle_segment),
    /// [`poll_transmit`](Socket::poll_transmit) and send, it costs a
    /// store). While it is on, no buffer grows beyond the storage it
    /// already holds, except that one holding none may take its first
    /// allocation (`min_buffer`), so that every flow can still make
    /// progress, as Linux grants each socket `tcp_rmem[0]`; trim points
    /// still shrink and free buffers:
    ///
    /// - the receive window offered is what that storage can still take,
    ///   but never less than what is left of the window already
    ///   advertised (its right edge moves left by less than the window
    ///   scale's unit at most);
    /// - in-order data past that storage is dropped (the segment's head is
    ///   kept if it fits), as is out-of-order data that would need more;
    ///   the peer resends it. What is taken is taken exactly;
    /// - out-of-order data held is given up at the next trim point;
    /// - [`send_space`](Socket::send_space) is the free space of the send
    ///   storage held, so the application's writes wait for
    ///   acknowledgements instead of growing the buffer.
    ///
    /// Off (the default), the socket behaves as if this did not exist.
    pub fn set_memory_pressure(&mut self, pressure: bool) {
        self.memory_pressure = pressure;
    }

    /// sal-tcp: the most received data the socket offers to hold before
    /// the application reads (`None`: its buffer's maximum, the default).
    /// The window offered stops there, as Linux's does at a receive buffer
    /// that grows only as the application reads: a server flow nobody has
    /// accepted yet may hold a little (its driver bounds its memory), and a
    /// window as large as its maximum would have the peer send what it then
    /// drops. The right edge of a window already advertised moves left by
    /// less than the window scale's unit at most (as under memory
    /// pressure); a cap raised or lifted opens the
    /// window at the next segment sent.
    pub fn set_recv_cap(&mut self, cap: Option<usize>) {
        self.recv_cap = cap.unwrap_or(usize::MAX);
    }

    /// Whether the socket was last told the host is under memory pressure.
    pub fn memory_pressure(&self) -> bool {
        self.memory_pressure
    }

    /// Segments this socket dropped, whole or in part, because its receive
    /// buffer could not grow under memory pressure, and out-of-order ranges
    /// it gave up at trim points only because of the pressure (since it
    /// was created). Each costs the peer a retransmission.
    pub fn pressure_dropped(&self) -> u64 {
        self.pressure_dropped
    }

    /// What this socket's loss recovery did since it was created
    /// (`crate::counters`).
    pub fn loss_counters(&self) -> LossCounters {
        self.loss_counters
    }

    /// sal-tcp: the part of a received payload at `payload_offset` past the
    /// queue that may be written: all of it, except in order under memory
    /// pressure, where only what fits in the storage held (and then a
    /// shortened segment counts as dropped).
    fn pressure_clip<'p>(&mut self, payload: &'p [u8], payload_offset: usize) -> &'p [u8] {
        if !self.memory_pressure || payload_offset != 0 {
            return payload;
        }
        let room = self
            .rx_buffer
            .pressure_capacity()
            .saturating_sub(self.rx_buffer.len());
        if payload.len() <= room {
            return payload;
        }
        net_debug!(
            "rx buffer: memory pressure, taking {} of {} in-order octets",
            room,
            payload.len()
        );
        self.pressure_dropped += 1;
        &payload[..room]
    }

    /// Make sure a trim point is scheduled if the buffers hold memory.
    fn schedule_trim(&mut self, now: Instant) {
        if self.trim_at.is_none() && self.buffer_memory() > 0 {
            self.trim_at = Some(now + self.trim_interval);
        }
    }

    /// Bytes of heap memory the send and receive buffers hold right now.
    pub fn buffer_memory(&self) -> usize {
        self.tx_buffer.allocated() + self.rx_buffer.allocated()
    }

    /// Gives the socket's buffers their first allocations from `spares`
    /// (storage other sockets gave back: [`Socket::take_buffers`]), where
    /// one of the right size is there ([`ElasticBuffer::seed`]).
    pub fn seed_buffers(&mut self, spares: &mut Vec<Box<[u8]>>) {
        for buffer in [&mut self.tx_buffer, &mut self.rx_buffer] {
            if let Some(storage) = spares.pop() {
                if let Some(refused) = buffer.seed(storage) {
                    spares.push(refused);
                }
            }
        }
    }

    /// Moves the storage of the socket's buffers into `spares`, up to
    /// `max` entries there, for other sockets' [`Socket::seed_buffers`];
    /// the buffers hold nothing afterwards. Only storage of the first
    /// allocation's size is kept (the rest goes back to the allocator).
    pub fn take_buffers(&mut self, spares: &mut Vec<Box<[u8]>>, max: usize) {
        for buffer in [&mut self.tx_buffer, &mut self.rx_buffer] {
            let min = buffer.first_allocation();
            let storage = buffer.take_storage();
            if storage.len() == min && spares.len() < max {
                spares.push(storage);
            }
        }
    }

    /// When [`poll_transmit`](Socket::poll_transmit) must next be called:
    /// `None` if only a received segment or an application action can give
    /// the socket something to do; `Some(t)` for a deadline, where a `t` in
    /// the past (`Instant::ZERO` means "now") is due at once. Costs a few
    /// comparisons; re-read it after every call that may change the socket.
    pub fn poll_at(&self) -> Option<Instant> {
        let at = if self.reply.is_some() {
            PollAt::Now
        } else {
            self.protocol_poll_at()
        };
        let trim = self.trim_at.map_or(PollAt::Ingress, PollAt::Time);
        match at.min(trim) {
            PollAt::Now => Some(Instant::ZERO),
            PollAt::Time(t) => Some(t),
            PollAt::Ingress => None,
        }
    }

    /// smoltcp's `poll_at`: when the protocol next needs to act.
    #[allow(clippy::if_same_then_else)]
    fn protocol_poll_at(&self) -> PollAt {
        // The logic here mirrors the beginning of dispatch() closely.
        if !self.has_peer {
            // No one to talk to, nothing to transmit.
            PollAt::Ingress
        } else if self.remote_last_ts.is_none() {
            // Socket stopped being quiet recently, we need to acquire a timestamp.
            PollAt::Now
        } else if self.state == State::Closed {
            // Socket was aborted, we have an RST packet to transmit.
            PollAt::Now
        } else if self.seq_to_transmit() {
            // We have a data or flag packet to transmit.
            PollAt::Now
        } else if self.window_to_update() {
            // The receive window has been raised significantly.
            PollAt::Now
        } else {
            let want_ack = self.ack_to_transmit();

            let delayed_ack_poll_at = match (want_ack, self.ack_delay_timer) {
                (false, _) => PollAt::Ingress,
                (true, AckDelayTimer::Idle) => PollAt::Now,
                (true, AckDelayTimer::Waiting(t)) => PollAt::Time(t),
                (true, AckDelayTimer::Immediate) => PollAt::Now,
            };

            let timeout_poll_at = match (self.remote_last_ts, self.timeout) {
                // If we're transmitting or retransmitting data, we need to poll at the moment
                // when the timeout would expire.
                (Some(remote_last_ts), Some(timeout)) => PollAt::Time(remote_last_ts + timeout),
                // Otherwise we have no timeout.
                (_, _) => PollAt::Ingress,
            };

            // We wait for the earliest of our timers to fire.
            *[self.timer.poll_at(), timeout_poll_at, delayed_ack_poll_at]
                .iter()
                .min()
                .unwrap_or(&PollAt::Ingress)
        }
    }
}

impl fmt::Write for Socket {
    fn write_str(&mut self, slice: &str) -> fmt::Result {
        let slice = slice.as_bytes();
        if self.send_slice(slice) == Ok(slice.len()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

mod export;

pub use export::{ExportError, ImportError, SocketExport};

#[cfg(test)]
mod tests;
