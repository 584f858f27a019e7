//! A UDP socket passed by a service manager (`LISTEN_PID`, `LISTEN_FDS`;
//! `sald::activation`): sald uses it for `--udp`, reads what waited in
//! it, and refuses to start, saying why, when what was passed is not the
//! socket `--udp` names. UDP on loopback; no root needed.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};

mod common;
use common::{udp_config, InProcess, Sald, SaldProcess, Scratch};

/// sald with `args`, started as a service manager would with `socket`
/// passed; its output dropped, its errors piped.
fn activated(socket: &UdpSocket, args: &[&std::ffi::OsStr]) -> Command {
    let sald = std::path::Path::new(env!("CARGO_BIN_EXE_sald"));
    let mut cmd = testnet::socket_activated(sald, args, socket);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn bound(addr: &str) -> (UdpSocket, SocketAddrV4) {
    let socket = UdpSocket::bind(addr).expect("bind");
    let std::net::SocketAddr::V4(local) = socket.local_addr().expect("address") else {
        panic!("not IPv4");
    };
    (socket, local)
}

/// A connect whose SYN reached the address before sald ran completes: the
/// SYN waited in the passed socket, and a DELAY rule held it until the
/// service was bound. Without the passed socket, sald could not bind the
/// address (the test holds it) and would not start.
#[test]
fn a_passed_socket_carries_the_link_and_what_waited_in_it() {
    let dir = Scratch::new("activation");
    let (socket, at) = bound("127.0.0.41:0");
    let client = InProcess::start(udp_config(&dir, "client", [127, 0, 0, 40].into()));
    client.forward_to("a7a7/16", sal::Locator::Udp(at), 1);
    let service: ServiceId = "a7a701".parse().unwrap();
    let connecting = {
        let control = client.control.clone();
        std::thread::spawn(move || {
            let client = socket_shim::ControlClient::connect_to(&control).expect("control");
            ServiceStream::connect_via(client, service, None)
        })
    };
    // The SYN goes to the socket, which nobody reads yet.
    std::thread::sleep(Duration::from_millis(300));
    let config = dir.join("server.toml");
    std::fs::write(&config, "[[rules]]\nprefix = \"a7a701/24\"\ndelay = true\n").unwrap();
    let control = dir.join("server.sock");
    let at_text = at.to_string();
    let args = [
        "--udp".as_ref(),
        at_text.as_ref(),
        "--control".as_ref(),
        control.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let server = SaldProcess::spawn(activated(&socket, &args), control.clone(), "server");
    drop(socket);
    let prefix: ServicePrefix = "a7a701/24".parse().unwrap();
    let listener = ServiceListener::bind_via(server.client(), prefix, 4).expect("bind");
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).expect("read");
        stream.write_all(&byte).expect("echo");
    });
    let mut stream = connecting.join().unwrap().expect("the connect completes");
    stream.write_all(b"x").unwrap();
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"x");
    serving.join().unwrap();
    assert!(
        server.stats().host.delayed >= 1,
        "the SYN that waited was held by the DELAY rule"
    );
}

/// Passed descriptors of which none is a UDP socket bound to the `--udp`
/// address: sald exits at once, naming what it was given.
#[test]
fn a_passed_socket_bound_elsewhere_stops_sald_with_the_reason() {
    let dir = Scratch::new("activation-elsewhere");
    let (socket, _) = bound("127.0.0.42:0");
    let (_other, wanted) = bound("127.0.0.42:0");
    let control = dir.join("sald.sock");
    let wanted_text = wanted.to_string();
    let args = [
        "--udp".as_ref(),
        wanted_text.as_ref(),
        "--control".as_ref(),
        control.as_os_str(),
    ];
    let mut child = activated(&socket, &args).spawn().expect("sald");
    let exited = testnet::wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output");
    assert!(exited, "sald went on with a socket that is not its own");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("none of the 1 descriptors passed")
            && text.contains(&wanted.to_string())
            && text.contains("3: datagram socket 127.0.0.42:"),
        "{text}"
    );
}
