//! Raising an alert and delivering it. Every alert (the watcher's, a leaked
//! key's, a budget threshold crossed) is stored once, counted and logged;
//! with a webhook configured it is also delivered through a durable outbox:
//! the delivery state lives in the alert's row, so a restart, a crash or a
//! receiver that blinks loses nothing, and replicas never send one twice.
//!
//! Deliveries follow the Standard Webhooks convention, as OpenAI's own
//! webhooks do: `webhook-id` (the same on every attempt), `webhook-timestamp`
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! keyed by the `whsec_` secret, so a receiver can check them with the
//! official SDK's `client.webhooks.verify_signature`.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use zeroize::Zeroizing;

use crate::auth::KeyIndex;
use crate::clock::Clock;
use crate::store::{Alert, Delivery, DeliveryStatus, Store, StoreResult};
use crate::time::Timestamp;

/// After the n-th failed attempt the next comes this much later; after the
/// last one the delivery is given up (about 1 h 43 min after the alert).
const RETRY_AFTER_SECONDS: [i64; 6] = [5, 30, 120, 600, 1800, 3600];
/// One attempt's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed delivery is held this long: a replica that dies mid-attempt
/// leaves it to another after that.
const CLAIM_SECONDS: i64 = 60;
/// Due deliveries are looked for this often even when nothing woke the sender
/// (alerts raised by other replicas, retries coming due).
const POLL: Duration = Duration::from_secs(5);
const BATCH: u32 = 20;

/// An alert id that is the same wherever the same event is raised: two
/// replicas examining one window store one alert.
pub fn alert_id(event: &str) -> String {
    format!("alert_{}", &hex::encode(Sha256::digest(event.as_bytes()))[..24])
}

/// The `whsec_...` signing secret of the webhook: 24 to 64 random bytes in
/// base64. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "must be `whsec_` followed by 24 to 64 random bytes in base64 \
                     (make one with: echo \"whsec_$(openssl rand -base64 32)\")";
        let bytes = text
            .trim()
            .strip_prefix("whsec_")
            .and_then(|b64| BASE64.decode(b64).ok())
            .filter(|bytes| (24..=64).contains(&bytes.len()))
            .ok_or_else(|| usage.to_owned())?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// `v1,<signature>` for the `webhook-signature` header.
    pub fn sign(&self, id: &str, timestamp: Timestamp, body: &[u8]) -> String {
        // HMAC takes keys of any length: this cannot fail (and an empty
        // signature would only be refused by the receiver).
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else { return String::new() };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

/// Where alerts are POSTed (`anomaly.webhook_url`) and how they are signed.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: WebhookSecret,
}

/// Scheme and host only: a webhook's path or query often is its own secret
/// (a Slack-style token), and its user info certainly is.
impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = reqwest::Url::parse(&self.url)
            .map(|u| format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default()))
            .unwrap_or_else(|_| "…".into());
        f.debug_struct("WebhookTarget").field("url", &shown).field("secret", &self.secret).finish()
    }
}

pub struct Alerts {
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
    clock: Arc<dyn Clock>,
    webhook: Option<(WebhookTarget, reqwest::Client)>,
    wake: Notify,
}

impl Alerts {
    pub fn new(
        store: Arc<dyn Store>,
        index: Arc<KeyIndex>,
        clock: Arc<dyn Clock>,
        webhook: Option<WebhookTarget>,
    ) -> Result<Self, reqwest::Error> {
        // No redirects: a webhook answers where it was configured, and a
        // redirect must not carry a signed alert somewhere else.
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { store, index, clock, webhook: webhook.map(|target| (target, http)), wake: Notify::new() })
    }

    /// Stores the alert (with a pending delivery when a webhook is set), then
    /// counts and logs it and wakes the sender. `None` when the same event
    /// was already stored (by another replica, or a window examined again).
    pub async fn raise(&self, alert: Alert) -> StoreResult<Option<Alert>> {
        let alert = self.with_delivery(alert);
        if !self.store.insert_alert(&alert).await? {
            return Ok(None);
        }
        announce(&alert);
        self.wake.notify_one();
        Ok(Some(alert))
    }

    /// For an alert raised on the request path, which the recorder stores
    /// later: gives it its delivery, counts and logs it.
    pub fn queued(&self, alert: Alert) -> Alert {
        let alert = self.with_delivery(alert);
        announce(&alert);
        alert
    }

    fn with_delivery(&self, mut alert: Alert) -> Alert {
        if self.webhook.is_some() && alert.delivery.is_none() {
            alert.delivery = Some(Delivery {
                id: format!("msg_{}", alert.id.strip_prefix("alert_").unwrap_or(&alert.id)),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: Some(alert.at),
                last_attempt_at: None,
                last_error: None,
            });
        }
        alert
    }

    /// One pass over the deliveries due now: each is claimed, sent once, and
    /// marked delivered, due again later, or failed for good. Returns how
    /// many were delivered.
    pub async fn deliver_due(&self) -> StoreResult<usize> {
        let Some((target, http)) = &self.webhook else { return Ok(0) };
        let mut delivered = 0;
        for alert in self.store.due_deliveries(self.clock.now(), BATCH).await? {
            let Some(delivery) = &alert.delivery else { continue };
            // Each attempt on its own clock reading: a batch of slow receivers
            // takes minutes, and a claim must not be born lapsed.
            let now = self.clock.now();
            let Some(attempt) = self.store.claim_delivery(&alert.id, now, now + CLAIM_SECONDS).await? else {
                continue; // another replica has it
            };
            let name = self.index.by_id(&alert.key_id).map(|k| k.name.to_string());
            let body = json!({
                "id": delivery.id,
                "object": "event",
                "type": "keygate.alert",
                "created_at": alert.at,
                "alert": alert_json(&alert, name.as_deref()),
            })
            .to_string();
            let result = http
                .post(&target.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &delivery.id)
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", target.secret.sign(&delivery.id, now, body.as_bytes()))
                .body(body)
                .send()
                .await;
            let error = match result {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
                // Without the URL: it may carry a token of the receiver's.
                Err(error) if error.is_timeout() => Some("timed out".to_owned()),
                Err(error) if error.is_connect() => Some("could not connect".to_owned()),
                Err(error) => Some(error.without_url().to_string()),
            };
            let (status, next) = match &error {
                None => (DeliveryStatus::Delivered, None),
                Some(_) => match usize::try_from(attempt - 1).ok().and_then(|n| RETRY_AFTER_SECONDS.get(n)) {
                    Some(delay) => (DeliveryStatus::Pending, Some(now + delay)),
                    None => (DeliveryStatus::Failed, None),
                },
            };
            let outcome = match (status, &error) {
                (DeliveryStatus::Delivered, _) => "delivered",
                (DeliveryStatus::Failed, _) => "given_up",
                _ => "retrying",
            };
            metrics::counter!("keygate_alert_deliveries_total", "outcome" => outcome).increment(1);
            if let Some(error) = &error {
                tracing::warn!(alert = %alert.id, attempt, %error, outcome, "alert webhook delivery failed");
            }
            self.store.finish_delivery(&alert.id, now, status, next, error.as_deref()).await?;
            delivered += usize::from(error.is_none());
        }
        Ok(delivered)
    }

    /// The sender: delivers whenever an alert is raised here, and every few
    /// seconds for the rest, until shutdown.
    pub fn sender(self: Arc<Self>) -> impl FnOnce(watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        move |mut shutdown| {
            Box::pin(async move {
                loop {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(POLL) => {}
                        _ = shutdown.changed() => return,
                    }
                    if let Err(error) = self.deliver_due().await {
                        tracing::warn!(%error, "alert webhook deliveries skipped");
                    }
                }
            })
        }
    }
}

/// Counts and logs a stored alert.
fn announce(alert: &Alert) {
    metrics::counter!("keygate_alerts_total", "kind" => alert.kind.clone(), "severity" => alert.severity.clone())
        .increment(1);
    tracing::warn!(key = %alert.key_id, kind = %alert.kind, severity = %alert.severity, message = %alert.message, "alert raised");
}

/// An alert as the webhook shows it (the API adds its delivery).
pub fn alert_json(alert: &Alert, key_name: Option<&str>) -> serde_json::Value {
    json!({
        "object": "keygate.alert",
        "id": alert.id,
        "created_at": alert.at,
        "api_key_id": alert.key_id.api_id(),
        "api_key_name": key_name,
        "project_id": alert.project_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "details": alert.details,
    })
}

/// An alert's webhook delivery as the API shows it.
pub fn delivery_json(delivery: &Delivery) -> serde_json::Value {
    json!({
        "id": delivery.id,
        "status": delivery.status.as_str(),
        "attempts": delivery.attempts,
        "last_attempt_at": delivery.last_attempt_at,
        "next_attempt_at": delivery.next_attempt_at,
        "last_error": delivery.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // The Standard Webhooks specification's own example.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        let b64 = |n: usize| BASE64.encode(vec![7u8; n]);
        assert!(WebhookSecret::parse(&format!("whsec_{}", b64(32))).is_ok());
        for bad in [b64(32), format!("whsec_{}", b64(16)), format!("whsec_{}", b64(65)), "whsec_not base64!".into()] {
            assert!(WebhookSecret::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", WebhookSecret::parse(&format!("whsec_{}", b64(32))).unwrap()),
            "WebhookSecret(whsec_…)"
        );
    }

    #[test]
    fn the_same_event_gets_the_same_alert_id() {
        assert_eq!(alert_id("spike/key_a/100"), alert_id("spike/key_a/100"));
        assert_ne!(alert_id("spike/key_a/100"), alert_id("spike/key_a/400"));
        assert_eq!(alert_id("x").len(), "alert_".len() + 24);
    }
}
