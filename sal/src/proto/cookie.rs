//! SYN cookies: answering a SYN without keeping anything, and rebuilding the
//! flow from the client's ACK.
//!
//! A server that allocates a flow for every SYN can be made to hold any
//! amount of memory by anyone who can send packets, and to spend its
//! backlog on clients that do not exist. With a cookie, the SYN-ACK carries
//! everything the server must remember, sealed with a keyed hash: our flow
//! ID, our `verno`, our nonce and (for a stream) our TCP ISN are all drawn
//! from an HMAC-SHA256 over the client's locator, flow ID, nonce and
//! `verno`, the service, the protocol, the client's ISN and SYN options,
//! and a 64-second time slot. The client's ACK (the third packet, WIRE.md)
//! echoes our flow ID (as its destination), our `verno` + 1 (as `ackno`)
//! and our ISN + 1 (in its TCP ACK), and repeats its own flow ID, nonce,
//! `verno` + 1, client ISN + 1 and the service: the server recomputes the
//! hash for the current and the previous slot and, if one matches, builds
//! the flow as if it had kept it all along. Our nonce is not echoed, but it
//! need not be: it is recomputed from the same hash.
//!
//! The client's SYN options that the transport needs later (MSS, window
//! scale, SACK) ride in the low 8 bits of our ISN, covered by the hash;
//! the MSS is rounded down to an entry of a small table, which is always
//! safe. That leaves 32 + 32 + 24 bits of hash that an off-path forger
//! would have to guess (flow ID, `verno`, ISN); a datagram flow has no ISN
//! and keeps 64.
//!
//! The secret is drawn once from the host's random numbers; the time slot
//! in the hash input plays the part of a rotating key: a cookie is good for
//! 64 to 128 seconds, far more than any handshake's round trip.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use smoltcp::time::Instant;

use sal_tcp::{CookieParams, TcpSeqNumber, MIN_MSS};

use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;

/// Milliseconds of one time slot.
const SLOT_MILLIS: i64 = 64_000;

/// MSS values a cookie can carry (index 0: the client sent none). A
/// client's MSS is rounded down to the largest entry not above it.
const MSS_TABLE: [u16; 8] = [0, MIN_MSS, 536, 1220, 1400, 1440, 1448, 1460];

/// Window-scale code for "the client offered no scaling".
const NO_WINDOW_SCALE: u8 = 0xf;

/// What of the client's SYN the cookie is computed over: everything its
/// ACK repeats, so that the server can compute the cookie again then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CookieInput {
    /// Where the client is (the ACK's source).
    pub client: Locator,
    pub client_flow: FlowId,
    pub client_nonce: [u8; 8],
    /// The client's SYN `verno` (its ACK carries this plus one).
    pub client_verno: u32,
    pub service: ServiceId,
    pub protocol: u8,
    /// A stream's TCP side: the client's ISN and SYN options. `None` for
    /// a datagram flow.
    pub tcp: Option<TcpSyn>,
}

/// The TCP fields of a stream SYN a cookie covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcpSyn {
    pub remote_isn: TcpSeqNumber,
    /// The MSS, window scale and SACK of the SYN, coded in 8 bits.
    pub options: u8,
}

impl TcpSyn {
    /// The SYN fields of `params` (from [`sal_tcp::write_syn_ack`]), with
    /// the MSS rounded down to the cookie's table.
    pub fn from_params(params: &CookieParams) -> TcpSyn {
        let mss = match params.remote_mss {
            None | Some(0) => 0,
            Some(mss) => MSS_TABLE
                .iter()
                .rposition(|&entry| entry != 0 && entry <= mss)
                .unwrap_or(1),
        };
        let scale = params
            .remote_window_scale
            .map_or(NO_WINDOW_SCALE, |s| s.min(14));
        let options = (mss as u8) << 5 | scale << 1 | u8::from(params.sack_permitted);
        TcpSyn {
            remote_isn: params.remote_isn,
            options,
        }
    }

    /// The parameters [`sal_tcp::Socket::from_cookie`] needs, with our ISN.
    pub fn params(&self, local_isn: TcpSeqNumber) -> CookieParams {
        let mss = MSS_TABLE[usize::from(self.options >> 5)];
        let scale = (self.options >> 1) & 0xf;
        CookieParams {
            remote_isn: self.remote_isn,
            local_isn,
            remote_mss: (mss != 0).then_some(mss),
            remote_window_scale: (scale != NO_WINDOW_SCALE).then_some(scale),
            sack_permitted: self.options & 1 == 1,
        }
    }
}

/// What the server puts in its SYN-ACK, all drawn from the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cookie {
    /// Our flow ID (the ACK's destination flow).
    pub flow: FlowId,
    /// Our SYN-ACK's `verno` (the ACK's `ackno` is this plus one).
    pub verno: u32,
    /// Our nonce (not echoed: recomputed).
    pub nonce: [u8; 8],
    /// Our TCP ISN, its low 8 bits the client's SYN options (streams).
    pub isn: TcpSeqNumber,
}

/// What the ACK of a cookie handshake says, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CookieEcho {
    /// The ACK's destination flow.
    pub flow: FlowId,
    /// The ACK's `ackno` minus one.
    pub verno: u32,
    /// The TCP ACK's acknowledgement number minus one (streams).
    pub isn: Option<TcpSeqNumber>,
}

/// The host's cookie secret. See the module docs.
#[derive(Clone)]
pub(super) struct CookieJar {
    secret: [u8; 32],
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieJar { .. }")
    }
}

/// The time slot of `now`.
fn slot(now: Instant) -> i64 {
    now.total_millis().div_euclid(SLOT_MILLIS)
}

impl CookieJar {
    pub fn new(secret: [u8; 32]) -> CookieJar {
        CookieJar { secret }
    }

    /// The cookie for `input` in time slot `slot`.
    fn compute(&self, slot: i64, input: &CookieInput) -> Cookie {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&slot.to_be_bytes());
        match input.client {
            Locator::Ipv4(ip) => {
                mac.update(&ip.octets());
                mac.update(&[0, 0]);
            }
            Locator::Udp(addr) => {
                mac.update(&addr.ip().octets());
                mac.update(&addr.port().to_be_bytes());
            }
        }
        mac.update(&input.client_flow.get().to_be_bytes());
        mac.update(&input.client_nonce);
        mac.update(&input.client_verno.to_be_bytes());
        mac.update(input.service.as_bytes());
        mac.update(&[input.protocol]);
        if let Some(tcp) = input.tcp {
            mac.update(&tcp.remote_isn.0.to_be_bytes());
            mac.update(&[tcp.options]);
        }
        let hash = mac.finalize().into_bytes();
        let word =
            |at: usize| u32::from_be_bytes([hash[at], hash[at + 1], hash[at + 2], hash[at + 3]]);
        let mut nonce = [0; 8];
        nonce.copy_from_slice(&hash[8..16]);
        let options = input.tcp.map_or(0, |tcp| tcp.options);
        Cookie {
            flow: FlowId::new(word(0)).unwrap_or_else(|| FlowId::new(1).expect("not 0")),
            verno: word(4),
            nonce,
            isn: TcpSeqNumber((word(16) & !0xff | u32::from(options)) as i32),
        }
    }

    /// The cookie to answer `input`'s SYN with at `now`.
    pub fn issue(&self, now: Instant, input: &CookieInput) -> Cookie {
        self.compute(slot(now), input)
    }

    /// The cookie `echo` proves, if it is one this host issued for `input`
    /// in the current or the previous time slot.
    pub fn check(&self, now: Instant, input: &CookieInput, echo: &CookieEcho) -> Option<Cookie> {
        let current = slot(now);
        [current, current - 1].into_iter().find_map(|slot| {
            let cookie = self.compute(slot, input);
            let matches = cookie.flow == echo.flow
                && cookie.verno == echo.verno
                && (input.tcp.is_none() || echo.isn == Some(cookie.isn));
            matches.then_some(cookie)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> CookieInput {
        CookieInput {
            client: "10.0.0.1".parse().unwrap(),
            client_flow: FlowId::new(77).unwrap(),
            client_nonce: [3; 8],
            client_verno: 1000,
            service: "beef".parse().unwrap(),
            protocol: 6,
            tcp: Some(TcpSyn::from_params(&CookieParams {
                remote_isn: TcpSeqNumber(5),
                local_isn: TcpSeqNumber(0),
                remote_mss: Some(1448),
                remote_window_scale: Some(7),
                sack_permitted: true,
            })),
        }
    }

    fn echo(cookie: &Cookie) -> CookieEcho {
        CookieEcho {
            flow: cookie.flow,
            verno: cookie.verno,
            isn: Some(cookie.isn),
        }
    }

    #[test]
    fn a_cookie_is_accepted_for_one_to_two_slots_then_refused() {
        let jar = CookieJar::new([9; 32]);
        let issued_at = Instant::from_millis(63_000);
        let cookie = jar.issue(issued_at, &input());
        for ms in [63_000, 64_000, 127_999] {
            let got = jar.check(Instant::from_millis(ms), &input(), &echo(&cookie));
            assert_eq!(got, Some(cookie), "at {ms} ms");
        }
        let late = jar.check(Instant::from_millis(128_000), &input(), &echo(&cookie));
        assert_eq!(late, None);
    }

    #[test]
    fn any_changed_field_or_secret_breaks_the_cookie() {
        let jar = CookieJar::new([9; 32]);
        let now = Instant::from_millis(1000);
        let cookie = jar.issue(now, &input());
        let mut other = input();
        other.client_nonce[0] ^= 1;
        assert_eq!(jar.check(now, &other, &echo(&cookie)), None);
        let mut other = input();
        other.client = "10.0.0.2".parse().unwrap();
        assert_eq!(jar.check(now, &other, &echo(&cookie)), None);
        let mut forged = echo(&cookie);
        forged.verno ^= 1;
        assert_eq!(jar.check(now, &input(), &forged), None);
        let mut forged = echo(&cookie);
        forged.isn = Some(cookie.isn + 256);
        assert_eq!(jar.check(now, &input(), &forged), None);
        let stranger = CookieJar::new([8; 32]);
        assert_eq!(stranger.check(now, &input(), &echo(&cookie)), None);
    }

    #[test]
    fn the_isn_carries_the_syn_options_rounded_down() {
        let jar = CookieJar::new([1; 32]);
        let cookie = jar.issue(Instant::ZERO, &input());
        let tcp = input().tcp.unwrap();
        assert_eq!(cookie.isn.0 as u32 & 0xff, u32::from(tcp.options));
        let params = tcp.params(cookie.isn);
        assert_eq!(params.remote_mss, Some(1448));
        assert_eq!(params.remote_window_scale, Some(7));
        assert!(params.sack_permitted);
        assert_eq!(params.remote_isn, TcpSeqNumber(5));
        let odd = TcpSyn::from_params(&CookieParams {
            remote_mss: Some(1000),
            remote_window_scale: None,
            sack_permitted: false,
            ..params
        });
        let back = odd.params(cookie.isn);
        assert_eq!(back.remote_mss, Some(536));
        assert_eq!(back.remote_window_scale, None);
        assert!(!back.sack_permitted);
        let tiny = TcpSyn::from_params(&CookieParams {
            remote_mss: Some(10),
            ..params
        });
        assert_eq!(tiny.params(cookie.isn).remote_mss, Some(MIN_MSS));
    }
}
