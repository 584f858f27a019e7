//! sal-tcp: moving an established connection's state out of one socket
//! and into a new one, on another host if need be ([`SocketExport`]).
//!
//! What crosses is what the peer holds this end to: the sequence numbers
//! (what it acknowledged, what it was sent, what it sent), the options the
//! handshake settled (SACK, window scales, timestamps and the peer's MSS),
//! the peer's window, and the bytes: those sent and not yet acknowledged
//! plus those not sent yet, and those received in order and not yet read.
//! What the socket measured of its path does not cross: the importing end
//! is on another path (the SAL moves the flow there at once, and a move
//! forgets the path's round trip and restarts the congestion window
//! anyway, see [`Socket::new_path`]). Out-of-order data received is not
//! carried either: the peer resends it (a move makes it resend everything
//! unacknowledged, SACKed or not), so it would only make the form bigger.
//!
//! An export is hostile input to [`Socket::import`]: it may come from a
//! program that wants the importing host to misbehave. Every field is
//! checked against the importing socket's [`Config`] and against the others
//! (sequence numbers must agree with the buffers), and a form that does not
//! hold together is refused with an [`ImportError`]; nothing in it can make
//! the socket panic later or hold more memory than its config allows.

use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;
use smoltcp::wire::TcpSeqNumber;

use super::{Socket, State, MIN_REMOTE_MSS};
use crate::buffer::ElasticBuffer;
use crate::config::{Config, MAX_BUFFER};

/// The largest window scale RFC 7323 allows.
const MAX_WINDOW_SCALE: u8 = 14;

/// The state of an established TCP connection, taken out of a [`Socket`]
/// ([`Socket::export`]) to be set up in another ([`Socket::import`]).
/// Sequence numbers are the wire's (32 bits, modulo 2^32).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketExport {
    /// SND.UNA: the sequence number of the first byte of `send_buffer`,
    /// the oldest the peer has not acknowledged.
    pub send_unacked: u32,
    /// SND.MAX: one past the highest sequence number ever sent; between
    /// `send_unacked` and the end of `send_buffer`. The peer may
    /// acknowledge up to here.
    pub send_max: u32,
    /// Bytes sent and not yet acknowledged, then bytes not yet sent.
    pub send_buffer: Vec<u8>,
    /// The sequence number of the first byte of `recv_buffer`; RCV.NXT is
    /// this plus its length.
    pub recv_start: u32,
    /// Bytes received in order and not yet read by the application.
    pub recv_buffer: Vec<u8>,
    /// The peer's window, bytes from `send_unacked`.
    pub peer_window: u32,
    /// The largest window the peer ever advertised (RFC 5961's MAX.SND.WND).
    pub max_peer_window: u32,
    /// The window scale the peer announced (`None`: no scaling).
    pub peer_window_scale: Option<u8>,
    /// The window scale this end announced: the peer reads our windows with it.
    pub local_window_shift: u8,
    /// The peer takes SACK options.
    pub sack: bool,
    /// The largest segment the peer takes.
    pub peer_mss: u16,
    /// Timestamps were negotiated: every segment must carry them.
    pub timestamps: bool,
    /// Our tsval at the export: the importing end's go on from it, so that
    /// the peer's PAWS check (RFC 7323 5) sees one clock.
    pub tsval: u32,
    /// The peer's last tsval (TS.Recent), which our segments echo.
    pub ts_recent: u32,
    /// Nagle's algorithm is on (off: `TCP_NODELAY`).
    pub nagle: bool,
    /// The peer's FIN arrived (CLOSE-WAIT): `recv_start` counts it, reads
    /// end after `recv_buffer`, and this end may still send. Absent from
    /// older forms: false.
    #[serde(default)]
    pub peer_finished: bool,
}

/// Why a socket's state cannot be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Only an established connection is exported, open both ways or
    /// with the peer's FIN received (CLOSE-WAIT): one still opening, or
    /// whose own FIN went, is in an exchange with its peer whose state is
    /// not carried.
    #[error("the connection is not established (state {0})")]
    NotEstablished(State),
}

/// Why an export was refused by [`Socket::import`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A buffer holds more than the importing socket's config allows.
    #[error("the {which} buffer holds {len} bytes, more than the {limit} allowed")]
    BufferTooLarge {
        /// "send" or "receive".
        which: &'static str,
        /// Bytes in the export.
        len: usize,
        /// The importing config's maximum.
        limit: usize,
    },
    /// `send_max` is not between `send_unacked` and the end of the send buffer.
    #[error("send_max is outside the send buffer")]
    BadSequence,
    /// A window scale beyond RFC 7323's 14.
    #[error("window scale {0} is beyond 14")]
    BadWindowScale(u8),
    /// The peer's window is larger than any window can be.
    #[error("peer window of {0} bytes is beyond the largest scaled window")]
    BadWindow(u32),
    /// The peer's MSS is below the smallest this stack accepts.
    #[error("peer MSS {0} is too small")]
    BadMss(u16),
}

impl SocketExport {
    /// Refuses buffers longer than `config` lets a socket hold: an export
    /// that can never be imported here, whatever memory is free (a caller
    /// that checks its budget first tells the two apart this way).
    pub fn check_buffer_lengths(&self, config: &Config) -> Result<(), ImportError> {
        let send_limit = config.max_send_buffer.clamp(1, MAX_BUFFER);
        let recv_limit = config.max_recv_buffer.clamp(1, MAX_BUFFER);
        if self.send_buffer.len() > send_limit {
            return Err(ImportError::BufferTooLarge {
                which: "send",
                len: self.send_buffer.len(),
                limit: send_limit,
            });
        }
        if self.recv_buffer.len() > recv_limit {
            return Err(ImportError::BufferTooLarge {
                which: "receive",
                len: self.recv_buffer.len(),
                limit: recv_limit,
            });
        }
        Ok(())
    }
}

impl Socket {
    /// The connection's state at `now`, to be set up in another socket by
    /// [`Socket::import`]; this socket is left as it was (its owner drops
    /// it, without a word to the peer, once the export is safe elsewhere).
    /// Out-of-order data is left out (see the [module docs](self)).
    pub fn export(&self, now: Instant) -> Result<SocketExport, ExportError> {
        let peer_finished = match self.state {
            State::Established => false,
            State::CloseWait => true,
            state => return Err(ExportError::NotEstablished(state)),
        };
        Ok(SocketExport {
            send_unacked: self.local_seq_no.0 as u32,
            send_max: self.remote_max_seq.max(self.local_seq_no).0 as u32,
            send_buffer: queued(&self.tx_buffer),
            recv_start: self.remote_seq_no.0 as u32,
            recv_buffer: queued(&self.rx_buffer),
            peer_window: u32::try_from(self.remote_win_len).unwrap_or(u32::MAX),
            max_peer_window: self.max_remote_win,
            peer_window_scale: self.remote_win_scale,
            local_window_shift: self.remote_win_shift,
            sack: self.remote_has_sack,
            peer_mss: u16::try_from(self.remote_mss).unwrap_or(u16::MAX),
            timestamps: self.timestamps,
            tsval: self.tsval(now),
            ts_recent: self.last_remote_tsval,
            nagle: self.nagle,
            peer_finished,
        })
    }

    /// A socket with `config`'s settings that takes up the connection
    /// `export` describes, at `now`, established (CLOSE-WAIT if the
    /// peer's FIN had arrived). What was sent and not
    /// acknowledged counts as in flight: the owner moves the flow to its
    /// own path, whose [`Socket::new_path`] resends it. Refuses an export
    /// that does not hold together or does not fit `config` (see the
    /// [module docs](self)).
    pub fn import(
        config: &Config,
        export: &SocketExport,
        now: Instant,
    ) -> Result<Socket, ImportError> {
        export.check_buffer_lengths(config)?;
        // Both lengths are below 2^30 here, so the sums and differences
        // below cannot wrap past what a sequence number compares.
        let sent = export.send_max.wrapping_sub(export.send_unacked);
        if sent as usize > export.send_buffer.len() {
            return Err(ImportError::BadSequence);
        }
        for scale in [export.peer_window_scale, Some(export.local_window_shift)]
            .into_iter()
            .flatten()
        {
            if scale > MAX_WINDOW_SCALE {
                return Err(ImportError::BadWindowScale(scale));
            }
        }
        let largest_window = (u16::MAX as u32) << MAX_WINDOW_SCALE;
        // Windows take part in sequence arithmetic, which must stay
        // within 2^31: no window may exceed what a scaled field says.
        for window in [export.peer_window, export.max_peer_window] {
            if window > largest_window {
                return Err(ImportError::BadWindow(window));
            }
        }
        if usize::from(export.peer_mss) < MIN_REMOTE_MSS {
            return Err(ImportError::BadMss(export.peer_mss));
        }

        let mut socket = Socket::new(config);
        let mut tx_buffer = ElasticBuffer::new(config.min_buffer, config.max_send_buffer);
        let mut rx_buffer = ElasticBuffer::new(config.min_buffer, config.max_recv_buffer);
        if tx_buffer.enqueue_slice(&export.send_buffer) != export.send_buffer.len()
            || rx_buffer.enqueue_slice(&export.recv_buffer) != export.recv_buffer.len()
        {
            // Checked above; only an allocator that refuses gets here.
            return Err(ImportError::BufferTooLarge {
                which: "send or receive",
                len: export.send_buffer.len().max(export.recv_buffer.len()),
                limit: config.max_send_buffer.min(config.max_recv_buffer),
            });
        }
        socket.tx_buffer = tx_buffer;
        socket.rx_buffer = rx_buffer;

        let send_unacked = TcpSeqNumber(export.send_unacked as i32);
        let send_max = TcpSeqNumber(export.send_max as i32);
        socket.has_peer = true;
        // No SYN will be resent: any number before the data does.
        socket.isn = TcpSeqNumber(export.send_unacked.wrapping_sub(1) as i32);
        socket.local_seq_no = send_unacked;
        socket.remote_last_seq = send_max;
        socket.remote_max_seq = send_max;
        socket.remote_seq_no = TcpSeqNumber(export.recv_start as i32);
        socket.remote_last_ack = Some(socket.remote_seq_no + export.recv_buffer.len());
        socket.remote_win_len = export.peer_window as usize;
        socket.max_remote_win = export.max_peer_window.max(export.peer_window);
        socket.remote_win_scale = export.peer_window_scale;
        socket.remote_win_shift = if export.peer_window_scale.is_some() {
            export.local_window_shift
        } else {
            0
        };
        socket.remote_has_sack = export.sack;
        socket.remote_mss = usize::from(export.peer_mss);
        socket.timestamps = export.timestamps;
        // Our tsval goes on from the exporter's, whatever this clock reads.
        socket.ts_offset = export
            .tsval
            .wrapping_add(1)
            .wrapping_sub(now.total_millis() as u32);
        socket.last_remote_tsval = export.ts_recent;
        socket.nagle = export.nagle;
        socket.remote_last_ts = Some(now);
        socket.last_sent = now;
        socket.set_initial_window();
        socket.set_state(State::Established);
        if export.peer_finished {
            // The FIN is in `recv_start` already: reads end after the
            // buffer, and nothing more comes.
            socket.rx_fin_received = true;
            socket.set_state(State::CloseWait);
        }
        socket.schedule_trim(now);
        if socket.flight_size() > 0 {
            let rto = socket.rtte.retransmission_timeout();
            socket.timer.set_for_retransmit(now, rto);
        } else {
            socket.timer.set_for_idle(now, socket.keep_alive);
        }
        Ok(socket)
    }
}

/// Every byte queued in `buffer`, in order.
fn queued(buffer: &ElasticBuffer) -> Vec<u8> {
    let mut bytes = vec![0; buffer.len()];
    let copied = buffer.read_allocated(0, &mut bytes);
    bytes.truncate(copied);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::MAX_HEADER_LEN;
    use smoltcp::wire::Ipv4Address;

    const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn config() -> Config {
        Config {
            timestamps: true,
            ..Config::default()
        }
    }

    /// Delivers every segment `from` has for `to`; with `drop`, loses them.
    fn drain(from: &mut Socket, to: &mut Socket, now: Instant, drop: bool) -> usize {
        let mut out = vec![0; MAX_HEADER_LEN + usize::from(config().mss)];
        let mut count = 0;
        while let Some(len) = from.poll_transmit(now, A, B, &mut out) {
            count += 1;
            if !drop {
                to.handle_segment(now, &out[..len]).unwrap();
            }
        }
        count
    }

    /// Two sockets with an established connection.
    fn pair() -> (Socket, Socket) {
        let (mut a, mut b) = (Socket::new(&config()), Socket::new(&config()));
        a.connect(TcpSeqNumber(-5)).unwrap();
        b.listen(TcpSeqNumber(123_456)).unwrap();
        let now = Instant::from_millis(0);
        drain(&mut a, &mut b, now, false);
        drain(&mut b, &mut a, now, false);
        drain(&mut a, &mut b, now, false);
        assert_eq!(
            (a.state(), b.state()),
            (State::Established, State::Established)
        );
        (a, b)
    }

    fn read_all(socket: &mut Socket) -> Vec<u8> {
        let mut got = vec![0; 1 << 20];
        let n = socket.recv_slice(&mut got).unwrap_or(0);
        got.truncate(n);
        got
    }

    #[test]
    fn an_imported_socket_goes_on_with_the_bytes_in_flight_and_unread() {
        let (mut a, mut b) = pair();
        let mut now = Instant::from_millis(10);
        // a's data leaves and is lost; b's data arrives and is not read.
        a.send_slice(b"lost in flight, ").unwrap();
        drain(&mut a, &mut b, now, true);
        a.send_slice(b"then never sent").unwrap();
        b.send_slice(b"unread at a").unwrap();
        drain(&mut b, &mut a, now, false);
        let export = a.export(now).unwrap();
        assert_ne!(export.send_max, export.send_unacked, "data was in flight");
        assert_eq!(export.recv_buffer, b"unread at a");
        drop(a);

        now = Instant::from_millis(5000);
        let mut c = Socket::import(&config(), &export, now).unwrap();
        assert_eq!(c.state(), State::Established);
        assert_eq!(read_all(&mut c), b"unread at a");
        // The owner's move resends what was in flight.
        c.new_path(now);
        for _ in 0..4 {
            drain(&mut c, &mut b, now, false);
            drain(&mut b, &mut c, now, false);
            now += smoltcp::time::Duration::from_millis(10);
        }
        assert_eq!(read_all(&mut b), b"lost in flight, then never sent");
        b.send_slice(b"and back").unwrap();
        drain(&mut b, &mut c, now, false);
        assert_eq!(read_all(&mut c), b"and back");
    }

    #[test]
    fn a_socket_whose_peer_finished_imports_in_close_wait() {
        let (mut a, mut b) = pair();
        let mut now = Instant::from_millis(10);
        b.send_slice(b"last words").unwrap();
        b.close();
        drain(&mut b, &mut a, now, false);
        drain(&mut a, &mut b, now, false);
        assert_eq!(a.state(), State::CloseWait);
        let export = a.export(now).unwrap();
        assert!(export.peer_finished);
        assert_eq!(export.recv_buffer, b"last words");
        drop(a);

        let mut c = Socket::import(&config(), &export, now).unwrap();
        assert_eq!(c.state(), State::CloseWait);
        assert_eq!(read_all(&mut c), b"last words");
        assert_eq!(
            c.recv_slice(&mut [0; 8]),
            Err(super::super::RecvError::Finished),
            "then the end of stream"
        );
        // Still sends, then closes: the peer reads it all, and both end.
        c.new_path(now);
        c.send_slice(b"answer").unwrap();
        c.close();
        for _ in 0..4 {
            drain(&mut c, &mut b, now, false);
            drain(&mut b, &mut c, now, false);
            now += smoltcp::time::Duration::from_millis(10);
        }
        assert_eq!(read_all(&mut b), b"answer");
        // Our FIN is acknowledged (RCV.NXT counted the peer's FIN once).
        assert_eq!(b.state(), State::TimeWait);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn timestamps_go_on_from_the_exporter_whatever_the_clock() {
        let (a, _) = pair();
        let export = a.export(Instant::from_millis(90_000)).unwrap();
        // The importer's clock reads much less than the exporter's.
        let c = Socket::import(&config(), &export, Instant::from_millis(3)).unwrap();
        let later = c.tsval(Instant::from_millis(4));
        assert!(later.wrapping_sub(export.tsval) as i32 > 0);
    }

    #[test]
    fn only_established_connections_export() {
        let mut a = Socket::new(&config());
        a.connect(TcpSeqNumber(1)).unwrap();
        assert_eq!(
            a.export(Instant::ZERO),
            Err(ExportError::NotEstablished(State::SynSent))
        );
        let (mut a, _) = pair();
        a.close();
        assert!(a.export(Instant::ZERO).is_err(), "its own FIN went");
    }

    #[test]
    fn exports_that_do_not_hold_together_are_refused() {
        let (mut a, _) = pair();
        a.send_slice(&[7; 1000]).unwrap();
        let good = a.export(Instant::ZERO).unwrap();
        let config = config();
        let refused = |change: &dyn Fn(&mut SocketExport)| {
            let mut export = good.clone();
            change(&mut export);
            Socket::import(&config, &export, Instant::ZERO).err()
        };
        assert_eq!(refused(&|_| {}), None);
        assert_eq!(
            refused(&|e| e.send_max = e.send_unacked.wrapping_add(1001)),
            Some(ImportError::BadSequence)
        );
        assert_eq!(
            refused(&|e| e.send_max = e.send_unacked.wrapping_sub(1)),
            Some(ImportError::BadSequence)
        );
        assert!(matches!(
            refused(&|e| e.send_buffer = vec![0; config.max_send_buffer + 1]),
            Some(ImportError::BufferTooLarge { .. })
        ));
        assert!(matches!(
            refused(&|e| e.recv_buffer = vec![0; config.max_recv_buffer + 1]),
            Some(ImportError::BufferTooLarge { .. })
        ));
        assert_eq!(
            refused(&|e| e.peer_window_scale = Some(15)),
            Some(ImportError::BadWindowScale(15))
        );
        assert_eq!(
            refused(&|e| e.local_window_shift = 200),
            Some(ImportError::BadWindowScale(200))
        );
        assert_eq!(refused(&|e| e.peer_mss = 3), Some(ImportError::BadMss(3)));
        assert_eq!(
            refused(&|e| e.peer_window = u32::MAX),
            Some(ImportError::BadWindow(u32::MAX))
        );
        assert_eq!(
            refused(&|e| e.max_peer_window = u32::MAX),
            Some(ImportError::BadWindow(u32::MAX))
        );
    }

    #[test]
    fn an_export_reads_back_from_json() {
        let (mut a, mut b) = pair();
        b.send_slice(b"x").unwrap();
        drain(&mut b, &mut a, Instant::ZERO, false);
        a.send_slice(b"y").unwrap();
        let export = a.export(Instant::ZERO).unwrap();
        let json = serde_json::to_string(&export).unwrap();
        assert_eq!(serde_json::from_str::<SocketExport>(&json).unwrap(), export);
    }
}
