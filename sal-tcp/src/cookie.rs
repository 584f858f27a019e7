//! SYN-cookie hooks: answer a SYN without keeping state, build the connection
//! when the client's ACK proves it received our SYN-ACK.
//!
//! A server under a SYN flood must not allocate anything per SYN. With these
//! hooks the SAL can (see the crate docs for the whole contract):
//!
//! 1. on a SYN, choose our ISN (the cookie: a keyed hash of the flow, a time
//!    slot, and whatever it must remember), and call [`write_syn_ack`], which
//!    writes the SYN-ACK and returns the [`CookieParams`] the SAL must be able
//!    to recover later. Nothing is kept;
//! 2. on the third packet, validate the cookie (that is the SAL's job: it
//!    knows its secret, its nonces and flow IDs), recover the parameters, and
//!    call [`Socket::from_cookie`], which checks the TCP side of the ACK and
//!    returns an ESTABLISHED socket.
//!
//! Both run the ordinary state machine on a throw-away socket (which holds no
//! heap memory until data flows), so the SYN-ACK is byte for byte what a
//! listening socket would send and the resulting socket is exactly the one a
//! listening socket would have become.

use smoltcp::time::Instant;
use smoltcp::wire::{Ipv4Address, TcpControl, TcpRepr, TcpSeqNumber};

use crate::config::Config;
use crate::segment::{self, SegmentError, MAX_HEADER_LEN};
use crate::socket::{Socket, State, EMPTY_SEGMENT};

/// What a cookie must let the server recover when the client's ACK arrives:
/// the client's SYN options and both initial sequence numbers.
///
/// The SAL may store `remote_mss` coarsely (e.g. as an index into a small
/// table, rounding down, as Linux does): a smaller MSS is always safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieParams {
    /// The client's ISN (the sequence number of its SYN).
    pub remote_isn: TcpSeqNumber,
    /// Our ISN (the cookie).
    pub local_isn: TcpSeqNumber,
    /// The client's MSS option, if it sent one (0 counts as absent).
    pub remote_mss: Option<u16>,
    /// The client's window scale option, if it sent one. `None` also turns
    /// off our own scaling (RFC 7323: both or neither).
    pub remote_window_scale: Option<u8>,
    /// Whether the client offered SACK.
    pub sack_permitted: bool,
}

/// Why a cookie hook refused a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The segment does not parse.
    #[error(transparent)]
    Malformed(#[from] SegmentError),
    /// `write_syn_ack` was given something other than a SYN without ACK.
    #[error("not a connection-opening SYN")]
    NotSyn,
    /// `from_cookie` was given something other than an ACK (SYN or RST set,
    /// or no ACK number).
    #[error("not the ACK that completes a handshake")]
    NotAck,
    /// The ACK's numbers do not match the cookie's ISNs (ack must be our
    /// ISN + 1, seq the client's ISN + 1).
    #[error("ACK does not match the cookie's sequence numbers")]
    WrongNumbers,
    /// `out` cannot hold a SYN-ACK (needs [`MAX_HEADER_LEN`] bytes).
    #[error("output buffer too small for a SYN-ACK")]
    BufferTooSmall,
}

/// Answer `syn` (a TCP SYN as received, checksum verified, ports ignored)
/// with a SYN-ACK whose sequence number is `isn`, written into `out` with
/// ports 0 and the checksum over `src` -> `dst` (our address, the client's).
/// Keeps no state and allocates nothing.
///
/// The SYN-ACK offers what a listening [`Socket`] with `config` would: our
/// MSS, our window scale (if the client offered scaling), SACK (if offered),
/// timestamps (if offered and `config.timestamps`). Returns the segment
/// length and the parameters to encode in the cookie.
pub fn write_syn_ack(
    config: &Config,
    now: Instant,
    syn: &[u8],
    isn: TcpSeqNumber,
    src: Ipv4Address,
    dst: Ipv4Address,
    out: &mut [u8],
) -> Result<(usize, CookieParams), CookieError> {
    let syn = segment::parse(syn)?;
    if syn.control != TcpControl::Syn || syn.ack_number.is_some() {
        return Err(CookieError::NotSyn);
    }
    let mut socket = listener(config, isn);
    socket.handle_repr(now, &syn);
    let len = socket
        .poll_transmit(now, src, dst, out)
        .ok_or(CookieError::BufferTooSmall)?;
    let params = CookieParams {
        remote_isn: syn.seq_number,
        local_isn: isn,
        remote_mss: syn.max_seg_size,
        remote_window_scale: syn.window_scale,
        sack_permitted: syn.sack_permitted,
    };
    Ok((len, params))
}

/// A socket listening with `isn`.
fn listener(config: &Config, isn: TcpSeqNumber) -> Socket {
    let mut socket = Socket::new(config);
    // A new socket is closed, so listening cannot fail.
    let _ = socket.listen(isn);
    socket
}

impl Socket {
    /// Build the server side of a connection from the client's ACK (the third
    /// packet of the handshake, as received: checksum verified, ports ignored)
    /// and the parameters the SAL recovered from its validated cookie.
    ///
    /// Checks that `ack` is an ACK (no SYN, no RST) acknowledging our ISN + 1
    /// with sequence number the client's ISN + 1, then returns the socket a
    /// listening socket would have become: ESTABLISHED (or CLOSE-WAIT if the
    /// ACK carried a FIN), with any data the ACK carried already received and
    /// any reply it calls for queued for [`poll_transmit`]. Timestamps are on
    /// if `config.timestamps` and the ACK carries one (the client only sends
    /// them if our SYN-ACK offered them).
    ///
    /// [`poll_transmit`]: Socket::poll_transmit
    pub fn from_cookie(
        config: &Config,
        now: Instant,
        ack: &[u8],
        params: &CookieParams,
    ) -> Result<Socket, CookieError> {
        let ack = segment::parse(ack)?;
        if matches!(ack.control, TcpControl::Syn | TcpControl::Rst) {
            return Err(CookieError::NotAck);
        }
        let Some(ack_number) = ack.ack_number else {
            return Err(CookieError::NotAck);
        };
        if ack_number != params.local_isn + 1 || ack.seq_number != params.remote_isn + 1 {
            return Err(CookieError::WrongNumbers);
        }

        // Replay the handshake on a listening socket: the SYN as the cookie
        // describes it, our SYN-ACK (already sent: into a scratch buffer),
        // then the ACK.
        let mut socket = listener(config, params.local_isn);
        let syn = TcpRepr {
            control: TcpControl::Syn,
            seq_number: params.remote_isn,
            window_len: ack.window_len,
            window_scale: params.remote_window_scale,
            max_seg_size: params.remote_mss,
            sack_permitted: params.sack_permitted,
            timestamp: ack.timestamp,
            ..EMPTY_SEGMENT
        };
        socket.handle_repr(now, &syn);
        let mut scratch = [0; MAX_HEADER_LEN];
        let unspecified = Ipv4Address::UNSPECIFIED;
        socket.poll_transmit(now, unspecified, unspecified, &mut scratch);
        // When our SYN-ACK really left is unknown: take no RTT sample from it.
        socket.forget_rtt_sample();
        socket.handle_repr(now, &ack);

        match socket.state() {
            State::Established | State::CloseWait => Ok(socket),
            // Unreachable after the checks above; refuse rather than panic.
            _ => Err(CookieError::WrongNumbers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{TcpPacket, TcpTimestampRepr};

    const CLIENT: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn config() -> Config {
        Config {
            timestamps: true,
            ..Config::default()
        }
    }

    /// A client socket's SYN, through the ordinary path.
    fn client_syn(client: &mut Socket, out: &mut [u8]) -> usize {
        client.connect(TcpSeqNumber(1000)).unwrap();
        client
            .poll_transmit(Instant::ZERO, CLIENT, SERVER, out)
            .unwrap()
    }

    #[test]
    fn syn_ack_matches_a_listening_socket_byte_for_byte() {
        let mut client = Socket::new(&config());
        let mut syn = [0; 100];
        let syn_len = client_syn(&mut client, &mut syn);

        let now = Instant::from_millis(5);
        let mut stateless = [0; 100];
        let (len, params) = write_syn_ack(
            &config(),
            now,
            &syn[..syn_len],
            TcpSeqNumber(-77),
            SERVER,
            CLIENT,
            &mut stateless,
        )
        .unwrap();

        let mut listening = Socket::new(&config());
        listening.listen(TcpSeqNumber(-77)).unwrap();
        listening.handle_segment(now, &syn[..syn_len]).unwrap();
        let mut stateful = [0; 100];
        let stateful_len = listening
            .poll_transmit(now, SERVER, CLIENT, &mut stateful)
            .unwrap();
        assert_eq!(&stateless[..len], &stateful[..stateful_len]);

        assert_eq!(params.remote_isn, TcpSeqNumber(1000));
        assert_eq!(params.local_isn, TcpSeqNumber(-77));
        assert_eq!(params.remote_mss, Some(config().mss));
        assert_eq!(params.remote_window_scale, Some(config().window_shift()));
        assert!(params.sack_permitted);
        let packet = TcpPacket::new_checked(&stateless[..len]).unwrap();
        assert!(packet.verify_checksum(&SERVER.into(), &CLIENT.into()));
    }

    #[test]
    fn write_syn_ack_refuses_what_is_not_a_syn() {
        let mut client = Socket::new(&config());
        let mut syn = [0; 100];
        let syn_len = client_syn(&mut client, &mut syn);
        syn[13] |= 0x10; // ACK flag
        let mut out = [0; 100];
        let result = write_syn_ack(
            &config(),
            Instant::ZERO,
            &syn[..syn_len],
            TcpSeqNumber(5),
            SERVER,
            CLIENT,
            &mut out,
        );
        assert_eq!(result.unwrap_err(), CookieError::NotSyn);
        let result = write_syn_ack(
            &config(),
            Instant::ZERO,
            &syn[..3],
            TcpSeqNumber(5),
            SERVER,
            CLIENT,
            &mut out,
        );
        assert!(matches!(result, Err(CookieError::Malformed(_))));
    }

    #[test]
    fn from_cookie_checks_the_sequence_numbers() {
        let params = CookieParams {
            remote_isn: TcpSeqNumber(1000),
            local_isn: TcpSeqNumber(5000),
            remote_mss: Some(1400),
            remote_window_scale: Some(7),
            sack_permitted: true,
        };
        let ack = |seq: i32, ack: i32, control| {
            let repr = TcpRepr {
                control,
                seq_number: TcpSeqNumber(seq),
                ack_number: Some(TcpSeqNumber(ack)),
                window_len: 100,
                timestamp: Some(TcpTimestampRepr::new(1, 2)),
                ..EMPTY_SEGMENT
            };
            let mut out = [0; 60];
            let len = segment::emit(&repr, 0, |_| {}, CLIENT, SERVER, &mut out).unwrap();
            out[..len].to_vec()
        };
        let build = |bytes: Vec<u8>| Socket::from_cookie(&config(), Instant::ZERO, &bytes, &params);
        assert_eq!(
            build(ack(1001, 5002, TcpControl::None)).unwrap_err(),
            CookieError::WrongNumbers
        );
        assert_eq!(
            build(ack(1000, 5001, TcpControl::None)).unwrap_err(),
            CookieError::WrongNumbers
        );
        assert_eq!(
            build(ack(1001, 5001, TcpControl::Rst)).unwrap_err(),
            CookieError::NotAck
        );
        let socket = build(ack(1001, 5001, TcpControl::None)).unwrap();
        assert_eq!(socket.state(), State::Established);
        assert!(socket.timestamp_enabled());
        assert_eq!(socket.buffer_memory(), 0);
    }
}
