//! A server that keeps no state per SYN: the SYN-ACK from `write_syn_ack`,
//! the connection from `Socket::from_cookie` when the ACK comes back, then a
//! normal transfer both ways.

mod common;

use common::{pattern, Conditions, End, Net};
use sal_tcp::{
    write_syn_ack, Config, CookieError, CookieParams, Duration, Instant, Ipv4Address, Socket,
    State, TcpSeqNumber,
};

const CLIENT: Ipv4Address = Ipv4Address::new(10, 1, 0, 1);
const SERVER: Ipv4Address = Ipv4Address::new(10, 1, 0, 2);

/// The client's SYN, the stateless SYN-ACK, and the client's reply to it.
fn handshake(
    config: &Config,
    client: &mut Socket,
    cookie: TcpSeqNumber,
) -> (Vec<u8>, CookieParams) {
    let mut out = [0; 1600];
    client.connect(TcpSeqNumber(123_456)).unwrap();
    let len = client
        .poll_transmit(Instant::ZERO, CLIENT, SERVER, &mut out)
        .unwrap();
    let syn = out[..len].to_vec();

    let now = Instant::from_millis(1);
    let (len, params) = write_syn_ack(config, now, &syn, cookie, SERVER, CLIENT, &mut out).unwrap();
    // The server remembers nothing: all it needs comes back in the cookie.
    client
        .handle_segment(Instant::from_millis(2), &out[..len])
        .unwrap();
    assert_eq!(client.state(), State::Established);
    let len = client
        .poll_transmit(Instant::from_millis(2), CLIENT, SERVER, &mut out)
        .unwrap();
    (out[..len].to_vec(), params)
}

fn transfer(client: Socket, server: Socket, seed: u64, loss: f64) {
    let (up, down) = (pattern(300_000, seed), pattern(200_000, seed + 1));
    let mut net = Net::new(
        [
            End::new(client, CLIENT, up.clone()),
            End::new(server, SERVER, down.clone()),
        ],
        Conditions {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            loss,
        },
        seed,
    );
    net.now = Instant::from_millis(3);
    assert!(net.run_to_completion(Duration::from_secs(600)));
    assert!(net.ends[1].received == up);
    assert!(net.ends[0].received == down);
}

#[test]
fn connection_from_cookie_carries_data_both_ways() {
    for (seed, timestamps, loss) in [(1, false, 0.0), (2, true, 0.0), (3, true, 0.03)] {
        let config = Config {
            timestamps,
            ..Config::default()
        };
        let mut client = Socket::new(&config);
        let (ack, params) = handshake(&config, &mut client, TcpSeqNumber(-5));
        assert_eq!(params.remote_isn, TcpSeqNumber(123_456));
        assert_eq!(params.local_isn, TcpSeqNumber(-5));
        let server = Socket::from_cookie(&config, Instant::from_millis(3), &ack, &params).unwrap();
        assert_eq!(server.state(), State::Established);
        assert_eq!(server.timestamp_enabled(), timestamps);
        transfer(client, server, seed, loss);
    }
}

#[test]
fn data_in_the_third_packet_is_received() {
    let config = Config::default();
    let mut client = Socket::new(&config);
    let mut out = [0; 1600];
    client.connect(TcpSeqNumber(77)).unwrap();
    let len = client
        .poll_transmit(Instant::ZERO, CLIENT, SERVER, &mut out)
        .unwrap();
    let syn = out[..len].to_vec();
    let (len, params) = write_syn_ack(
        &config,
        Instant::ZERO,
        &syn,
        TcpSeqNumber(9),
        SERVER,
        CLIENT,
        &mut out,
    )
    .unwrap();
    client.handle_segment(Instant::ZERO, &out[..len]).unwrap();
    client.send_slice(b"hello").unwrap();
    let len = client
        .poll_transmit(Instant::ZERO, CLIENT, SERVER, &mut out)
        .unwrap();

    let mut server = Socket::from_cookie(&config, Instant::ZERO, &out[..len], &params).unwrap();
    let mut got = [0; 5];
    assert_eq!(server.recv_slice(&mut got), Ok(5));
    assert_eq!(&got, b"hello");
}

#[test]
fn a_forged_ack_builds_nothing() {
    let config = Config::default();
    let mut client = Socket::new(&config);
    let (ack, params) = handshake(&config, &mut client, TcpSeqNumber(1000));
    // Right segment, but parameters the SAL decoded from someone else's cookie.
    for wrong in [
        CookieParams {
            local_isn: TcpSeqNumber(999),
            ..params
        },
        CookieParams {
            remote_isn: TcpSeqNumber(5),
            ..params
        },
    ] {
        assert_eq!(
            Socket::from_cookie(&config, Instant::ZERO, &ack, &wrong).unwrap_err(),
            CookieError::WrongNumbers
        );
    }
    assert!(matches!(
        Socket::from_cookie(&config, Instant::ZERO, &ack[..10], &params),
        Err(CookieError::Malformed(_))
    ));
}
