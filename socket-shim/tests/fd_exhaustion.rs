//! An application out of file descriptors gets `EMFILE` when sald hands it
//! a flow, as `socket(2)` or `accept(2)` would tell it, never a protocol
//! error. Alone in its test binary: it lowers the process's descriptor
//! limit.

use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sal::proto::{FlowCounters, FlowInfo, FlowState, Role};
use sal::wire::TransportProtocol;
use sal::FlowId;
use sal_control::{decode_body, encode_frame, frame_len, Request, Response, PROTOCOL_VERSION};
use socket_shim::{ControlClient, ServiceStream};

/// Reads one request frame.
fn read_request(conn: &mut UnixStream) -> Request {
    let mut prefix = [0u8; 4];
    conn.read_exact(&mut prefix).unwrap();
    let mut body = vec![0u8; frame_len(prefix).unwrap()];
    conn.read_exact(&mut body).unwrap();
    decode_body(&body).unwrap()
}

#[test]
fn a_flow_handed_to_a_process_without_a_free_descriptor_is_emfile() {
    let dir = std::env::temp_dir().join(format!("shim-emfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sald.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // The flow sald will hand over, made before the table fills up.
    let (flow, _peer) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let hello = Response::Hello {
            version: PROTOCOL_VERSION,
            server: "fake".into(),
        };
        assert!(matches!(read_request(&mut conn), Request::Hello { .. }));
        conn.write_all(&encode_frame(&hello).unwrap()).unwrap();
        assert!(matches!(read_request(&mut conn), Request::Connect { .. }));
        let info = FlowInfo {
            flow: FlowId::new(7).unwrap(),
            peer_flow: FlowId::new(9),
            service: "beef".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            role: Role::Client,
            state: FlowState::Established,
            local: "10.0.0.1".parse().unwrap(),
            remote: Some("10.0.0.2".parse().unwrap()),
            interface: None,
            counters: FlowCounters::default(),
            migrations: 0,
            peer_moves: 0,
            last_migration_us_ago: None,
        };
        let frame = encode_frame(&Response::Connected { flow: info }).unwrap();
        let fds = [flow.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        // Stay until the client is done with the reply.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    let client = ControlClient::connect_to(&path).unwrap();

    // Fill this process's descriptor table.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(soft), hard).unwrap();
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(Errno::EMFILE as i32));
                break;
            }
        }
    }
    let result = ServiceStream::connect_via(client, "beef01".parse().unwrap(), None);
    drop(hogs);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let error = result.expect_err("no descriptor was free for the flow");
    assert_eq!(error.errno(), Errno::EMFILE as i32, "{error}");
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
