//! `Connector`: the connection carries many connects at once.
//!
//! A program with thousands of non-blocking connects in flight would
//! otherwise hold a control connection for each (and meet the per-user
//! connection limit long before its own descriptor limit). Here each
//! `Connect` runs as a task of its own; its answer goes back, named by the
//! request's number, as soon as its handshake ends, whatever the order.
//! Requests stay one at a time on the wire: the loop reads the next one
//! only when the socket is readable (so a frame is never abandoned half
//! read), and writes each answer whole.

use sal_control::{ErrorKind, Request, Response};
use tokio::task::JoinSet;

use super::client::{request_arrives, Client};
use super::cmd::{self, Reply};

/// Connects one connection may have in flight; past it sald reads no more
/// requests from it until some complete (its writes then wait, like a
/// full socket buffer's).
const MAX_IN_FLIGHT: usize = 65_536;

/// Serves connects until the client leaves. Connects still in flight then
/// complete on their own; their flows, with nobody to take them, are
/// closed. Unlike other connections of ordinary users, a connector is not
/// closed when idle: a program keeps one for its life (as one that holds a
/// listener keeps that connection), and a connect written just as sald
/// closed an idle connector would be lost. The per-user connection limit
/// still bounds how many a user holds.
pub(super) async fn serve(client: &mut Client) -> anyhow::Result<()> {
    client.respond(&Response::Ok, None).await?;
    let mut in_flight: JoinSet<(u64, Reply)> = JoinSet::new();
    let mut next: u64 = 0;
    let result = loop {
        tokio::select! {
            ready = request_arrives(&client.stream), if in_flight.len() < MAX_IN_FLIGHT => {
                if let Err(error) = ready {
                    break Err(error.into());
                }
                let request = match client.read_request(None).await {
                    Ok(Some(request)) => request,
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                };
                let number = next;
                next += 1;
                match request {
                    Request::Connect { service, protocol, timeout_ms } => {
                        // Not metered (see `client::serve`): connects are
                        // flows within the user's share.
                        let context = client.context.clone();
                        let uid = client.uid;
                        in_flight.spawn(async move {
                            let reply =
                                cmd::connect(&context, uid, service, protocol, timeout_ms).await;
                            (number, reply)
                        });
                    }
                    _ => {
                        let refused = Response::error(
                            ErrorKind::InvalidRequest,
                            "a connector connection carries only connect requests",
                        );
                        if let Err(error) = answer(client, number, (refused, None)).await {
                            break Err(error);
                        }
                    }
                }
            }
            Some(joined) = in_flight.join_next() => {
                let (number, reply) = match joined {
                    Ok(done) => done,
                    Err(error) => break Err(error.into()),
                };
                if let Err(error) = answer(client, number, reply).await {
                    break Err(error);
                }
            }
        }
    };
    in_flight.detach_all();
    result
}

/// Sends the answer to request `number`.
async fn answer(client: &mut Client, number: u64, (response, fd): Reply) -> anyhow::Result<()> {
    let completed = Response::Completed {
        request: number,
        response: Box::new(response),
    };
    client.respond(&completed, fd).await
}
