//! `Subscribe`: the connection becomes a stream of the events its user may
//! see, from the daemon's bounded queue ([`crate::events`]).

use sal_control::Response;
use tokio::io::AsyncReadExt;

use super::client::Client;
use super::frame::write_response;

/// Streams events until the client sends anything or leaves. A subscriber
/// that does not read falls behind in the queue (and is told, `lagged`),
/// never holding more than the frame being written; one that takes no
/// event for the frame timeout is disconnected.
pub(super) async fn stream_events(client: &mut Client) -> anyhow::Result<()> {
    let mut events = client.context.shared.lock().subscribe();
    client.respond(&Response::Ok, None).await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            published = events.next() => match published {
                Some(published) if published.visible_to(client.uid, client.privileged) => {
                    let event = Response::Event { event: published.event };
                    // As every response: taken within the frame timeout,
                    // or the subscriber is let go (it may subscribe again).
                    let timeout = client.context.reader.timeout();
                    tokio::time::timeout(timeout, write_response(&mut client.stream, &event, None))
                        .await
                        .map_err(|_| anyhow::anyhow!("event not taken within {timeout:?}"))??;
                }
                Some(_) => {}
                None => return Ok(()),
            },
            read = client.stream.read(&mut probe) => {
                // Subscribers only listen; anything read (or EOF) ends it.
                let _ = read;
                return Ok(());
            }
        }
    }
}
