//! Bytes a peer sent stay readable however long the application takes to
//! read them, also once both ends have sent their FIN and the connection's
//! timers have run out. (smoltcp's socket dropped its receive buffer when
//! TIME-WAIT ended: 100,000 unread bytes became an immediate end of stream.)

use sal::proto::HostConfig;
use sal_sim::LinkConditions;
use smoltcp::time::Duration;

mod common;
use common::sim::{client_server, establish, pattern, ClientServer};

#[test]
fn unread_bytes_outlive_the_connection_s_timers() {
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(11, LinkConditions::default(), HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let data = pattern(100_000, 4);
    let mut sent = 0;
    while sent < data.len() {
        sent += net.host(client).send(cflow, &data[sent..]).unwrap_or(0);
        net.run_for(Duration::from_millis(10));
    }
    // The server's application says it will send nothing and reads nothing
    // yet; the client finishes and closes.
    net.host(server).shutdown(sflow).unwrap();
    net.run_for(Duration::from_millis(100));
    net.host(client).shutdown(cflow).unwrap();
    net.run_for(Duration::from_secs(1));
    let _ = net.host(client).close(cflow);
    // Long past TIME-WAIT and every retransmission timer.
    net.run_for(Duration::from_secs(120));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match net.host(server).recv(sflow, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(error) => panic!("after {} bytes: {error}", got.len()),
        }
    }
    assert!(got == data, "read {} of {} bytes", got.len(), data.len());
}
