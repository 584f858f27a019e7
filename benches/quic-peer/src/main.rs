//! quic-peer: one QUIC (quinn 0.11) bulk transfer, the peer figure of
//! sald's UDP benchmark (`cargo bench -p sald --bench udp`).
//!
//! ```text
//! quic-peer server --listen ADDR:PORT [--seconds N]
//! quic-peer client --connect ADDR:PORT [--streams K] [--seconds N]
//! ```
//!
//! The client opens one connection and writes as fast as it can on `K`
//! unidirectional streams until the server closes the connection. The
//! server reads everything, skips half a second of start-up, counts the
//! bytes of the next `N` seconds and prints `gbps X` (application bytes
//! received per second, as sald's benchmark counts them), then closes the
//! connection and exits. Both ends run on one thread each, like sald.
//!
//! The transport gets every advantage the benchmark's SAL flows have: flow
//! control windows of 16 MiB (above the bandwidth-delay product of a veth
//! pair) and full-size packets from the start (1472-byte UDP payloads at
//! MTU 1500). quinn batches with UDP GSO/GRO through quinn-udp. The
//! certificate is self-signed and the client does not verify it: only the
//! encryption's cost matters here, not its authentication.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Endpoint, ServerConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Skipped at the start of a measurement, as sald's benchmark does.
const WARM_UP: Duration = Duration::from_millis(500);
/// Flow-control windows (connection and stream) and send window.
const WINDOW: u32 = 16 << 20;
/// Largest UDP payload at MTU 1500.
const MTU: u16 = 1472;
const ALPN: &[u8] = b"quic-peer";

struct Args {
    role: String,
    addr: SocketAddr,
    streams: usize,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut argv = std::env::args().skip(1);
    let role = argv.next().context("usage: quic-peer server|client ...")?;
    let (mut addr, mut streams, mut seconds) = (None, 1, 5);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" | "--connect" => addr = Some(value.parse()?),
            "--streams" => streams = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(Args {
        role,
        addr: addr.context("--listen or --connect is required")?,
        streams,
        seconds,
    })
}

fn transport() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(WINDOW))
        .receive_window(VarInt::from_u32(WINDOW))
        .send_window(u64::from(WINDOW))
        .initial_mtu(MTU)
        .max_concurrent_uni_streams(VarInt::from_u32(64));
    Arc::new(transport)
}

fn main() -> Result<()> {
    let args = args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.role.as_str() {
        "server" => runtime.block_on(server(args)),
        "client" => runtime.block_on(client(args)),
        other => bail!("unknown role {other}: server or client"),
    }
}

async fn server(args: Args) -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["quic-peer".into()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport());
    let endpoint = Endpoint::server(config, args.addr)?;
    let connection = endpoint.accept().await.context("endpoint closed")?.await?;
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let connection = connection.clone();
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(mut stream) = connection.accept_uni().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let mut chunks: [bytes::Bytes; 32] = Default::default();
                    while let Ok(Some(n)) = stream.read_chunks(&mut chunks).await {
                        let bytes: usize = chunks[..n].iter().map(|c| c.len()).sum();
                        received.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    // Wait for the first byte, then for the start-up to pass.
    while received.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = start.elapsed().as_secs_f64();
    println!("gbps {:.3}", bytes as f64 * 8.0 / elapsed / 1e9);
    connection.close(VarInt::from_u32(0), b"done");
    reader.abort();
    endpoint.wait_idle().await;
    Ok(())
}

async fn client(args: Args) -> Result<()> {
    let mut tls = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    let mut endpoint = Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let connection = endpoint.connect(args.addr, "quic-peer")?.await?;
    let deadline = Instant::now() + WARM_UP + Duration::from_secs(args.seconds + 5);
    let mut writers = Vec::new();
    for _ in 0..args.streams.max(1) {
        let mut stream = connection.open_uni().await?;
        writers.push(tokio::spawn(async move {
            let chunk = bytes::Bytes::from(vec![0x5au8; 256 * 1024]);
            while Instant::now() < deadline {
                if stream.write_chunk(chunk.clone()).await.is_err() {
                    break;
                }
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    connection.close(VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

/// Accepts any certificate: the benchmark measures the transfer, not the
/// authentication.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
