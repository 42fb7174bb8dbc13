//! Keeping every replica's key index current. A key or project changed on one
//! replica is announced on a Redis channel and the others reload it from the
//! shared store, so a revocation holds everywhere within milliseconds.
//! Messages can be lost (Redis restarts, a full channel): every new
//! subscription starts with a full reconcile, and the periodic reconcile in
//! [`crate::jobs`] remains the backstop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSub};
use tokio::sync::{mpsc, watch};

use crate::auth::{Change, KeyIndex};
use crate::ids::PublicId;
use crate::jobs::{reconcile_index, BoxFuture, Tasks};
use crate::store::Store;

/// Announcements a replica may queue before it drops them (and relies on reconcile).
const QUEUE: usize = 1024;

/// One message on the channel: `<origin> key <id>` or `<origin> project <id>`.
fn encode(origin: &str, change: &Change) -> String {
    match change {
        Change::Key(id) => format!("{origin} key {id}"),
        Change::Project(id) => format!("{origin} project {id}"),
    }
}

fn decode(payload: &str) -> Option<(&str, Change)> {
    let mut parts = payload.splitn(3, ' ');
    let (origin, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    let change = match kind {
        "key" => Change::Key(PublicId::parse(id)?),
        "project" => Change::Project(id.to_owned()),
        _ => return None,
    };
    Some((origin, change))
}

/// Subscribes to peers' changes and starts announcing this replica's. Fails
/// when Redis cannot be reached at start; later outages are retried.
pub async fn start(
    tasks: &mut Tasks,
    url: &str,
    prefix: &str,
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let channel = format!("{prefix}changes");
    let origin = format!("{:016x}", rand::random::<u64>());
    let pubsub = subscription(&client, &channel).await?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_millis(500));
    let publisher = ConnectionManager::new_with_config(client.clone(), config).await?;
    let Some(changes) = index.announce_changes(QUEUE) else { return Ok(()) };
    // Changes made by peers before the subscription existed.
    reconcile_index(&*store, &index).await;

    let (own, channel_out) = (origin.clone(), channel.clone());
    tasks.spawn("change announcer", move |shutdown| -> BoxFuture {
        Box::pin(announce(publisher, channel_out, own, changes, shutdown))
    });
    let listener = Listener { client, channel, origin, store, index };
    tasks.spawn("change listener", move |shutdown| -> BoxFuture { Box::pin(listener.run(pubsub, shutdown)) });
    Ok(())
}

async fn subscription(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

async fn announce(
    mut connection: ConnectionManager,
    channel: String,
    origin: String,
    mut changes: mpsc::Receiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let published: redis::RedisResult<i64> =
            redis::cmd("PUBLISH").arg(&channel).arg(encode(&origin, &change)).query_async(&mut connection).await;
        if let Err(error) = published {
            metrics::counter!("keygate_redis_failures_total").increment(1);
            tracing::warn!(%error, ?change, "cannot announce a key change; peers catch up at their next reconcile");
        }
    }
}

struct Listener {
    client: redis::Client,
    channel: String,
    origin: String,
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
}

impl Listener {
    async fn run(self, first: PubSub, mut shutdown: watch::Receiver<bool>) {
        let mut pubsub = Some(first);
        loop {
            if let Some(subscribed) = pubsub.take() {
                let mut messages = subscribed.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => self.apply(message.get_payload_bytes()).await,
                            None => break,
                        },
                        _ = shutdown.changed() => return,
                    }
                }
                tracing::warn!("lost the Redis key-change subscription; reconnecting");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            match subscription(&self.client, &self.channel).await {
                Ok(subscribed) => {
                    // Whatever was announced while unsubscribed is lost.
                    reconcile_index(&*self.store, &self.index).await;
                    pubsub = Some(subscribed);
                }
                Err(error) => tracing::warn!(%error, "cannot resubscribe to key changes"),
            }
        }
    }

    async fn apply(&self, payload: &[u8]) {
        let Some((origin, change)) = std::str::from_utf8(payload).ok().and_then(decode) else {
            tracing::warn!("ignoring a malformed key-change message");
            return;
        };
        if origin == self.origin {
            return;
        }
        let reloaded = match &change {
            Change::Key(id) => self.store.get_key(id).await.map(|record| record.map(|r| self.index.refresh([r]))),
            Change::Project(id) => {
                self.store.get_project(id).await.map(|project| project.map(|p| self.index.refresh_project(p)))
            }
        };
        if let Err(error) = reloaded {
            tracing::warn!(%error, ?change, "cannot reload a peer's change; the next reconcile will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_ignored() {
        let id = PublicId::random();
        let key = encode("abc", &Change::Key(id));
        assert_eq!(decode(&key), Some(("abc", Change::Key(id))));
        let project = encode("abc", &Change::Project("proj_1".into()));
        assert_eq!(decode(&project), Some(("abc", Change::Project("proj_1".into()))));
        assert_eq!(decode("abc key not-an-id"), None);
        assert_eq!(decode("abc user u1"), None);
        assert_eq!(decode("abc"), None);
    }
}
