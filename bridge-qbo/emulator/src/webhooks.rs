//! Webhook notifications, as Intuit sends them: after each change, a POST to the configured
//! URL in the legacy format (`eventNotifications`) and/or as CloudEvents, signed with
//! `intuit-signature: base64(HMAC-SHA256(verifier token, raw body))`, retried with backoff
//! until the receiver answers 2xx.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::clock;
use super::company::Change;

/// Deliveries tried per notification before it is given up (and counted as failed).
const ATTEMPTS_MAX: u32 = 6;
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Changes sent in one legacy notification at most; more wait for the next.
const BATCH_MAX: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Legacy,
    Cloudevents,
    Both,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub verifier_token: String,
    pub format: Format,
}

/// The signature Intuit puts in `intuit-signature`.
pub fn sign(verifier_token: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(verifier_token.as_bytes()).expect("any key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The legacy payload for a batch of changes in one realm.
pub fn legacy(realm: &str, changes: &[Change]) -> Value {
    json!({
        "eventNotifications": [{
            "realmId": realm,
            "dataChangeEvent": {
                "entities": changes.iter().map(|c| json!({
                    "name": c.entity,
                    "id": c.id,
                    "operation": c.operation,
                    "lastUpdated": clock_utc(c.at_ms),
                })).collect::<Vec<_>>()
            }
        }]
    })
}

/// One CloudEvent per change, as a JSON array.
pub fn cloudevents(realm: &str, changes: &[Change]) -> Value {
    Value::Array(
        changes
            .iter()
            .map(|c| {
                let op = match c.operation {
                    "Create" => "created",
                    "Update" => "updated",
                    "Delete" => "deleted",
                    "Void" => "voided",
                    "Merge" => "merged",
                    other => other,
                };
                let mut id = [0u8; 16];
                getrandom::fill(&mut id).expect("the OS random source failed");
                let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
                json!({
                    "specversion": "1.0",
                    "id": id,
                    "source": "intuit.dsnBgbseACLLRZNxo2dfc4evmEJdxde58xeeYcZliOU=",
                    "type": format!("qbo.{}.{op}.v1", c.entity.to_lowercase()),
                    "datacontenttype": "application/json",
                    "time": clock_utc(c.at_ms),
                    "intuitentityid": c.id,
                    "intuitaccountid": realm,
                    "data": {}
                })
            })
            .collect(),
    )
}

/// `2020-09-29T12:58:16.000Z`: webhooks speak UTC.
fn clock_utc(ms: i64) -> String {
    clock::utc_ms(ms)
}

/// Delivery counters, for the admin endpoint and tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
}

/// Sends notifications in the background, in order, retrying each until delivered.
pub async fn deliver(
    realm: String,
    mut rx: mpsc::UnboundedReceiver<Change>,
    target: std::sync::Arc<std::sync::RwLock<Option<Target>>>,
    stats: std::sync::Arc<std::sync::Mutex<Stats>>,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let Some(t) = target.read().ok().and_then(|t| t.clone()) else {
            continue;
        };
        let mut bodies = Vec::new();
        if matches!(t.format, Format::Legacy | Format::Both) {
            bodies.push(legacy(&realm, &batch));
        }
        if matches!(t.format, Format::Cloudevents | Format::Both) {
            bodies.push(cloudevents(&realm, &batch));
        }
        for body in bodies {
            let raw = serde_json::to_vec(&body).expect("JSON");
            let signature = sign(&t.verifier_token, &raw);
            let mut backoff = BACKOFF_FIRST;
            let mut delivered = false;
            for attempt in 0..ATTEMPTS_MAX {
                let sent = http
                    .post(&t.url)
                    .header("content-type", "application/json")
                    .header("intuit-signature", &signature)
                    .body(raw.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    delivered = true;
                    break;
                }
                if attempt + 1 < ATTEMPTS_MAX {
                    if let Ok(mut s) = stats.lock() {
                        s.retried += 1;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
            if let Ok(mut s) = stats.lock() {
                if delivered {
                    s.delivered += 1;
                } else {
                    s.failed += 1;
                    tracing::warn!(url = %t.url, "webhook not delivered after {ATTEMPTS_MAX} attempts");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_intuits_shape() {
        let c = Change {
            entity: "Customer",
            id: "70".into(),
            operation: "Create",
            at_ms: clock::parse("2020-09-29T05:58:16-07:00").unwrap(),
        };
        let l = legacy("123", std::slice::from_ref(&c));
        let e = &l["eventNotifications"][0]["dataChangeEvent"]["entities"][0];
        assert_eq!(e["name"], "Customer");
        assert_eq!(e["lastUpdated"], "2020-09-29T12:58:16.000Z");
        let ce = cloudevents("123", &[c]);
        assert_eq!(ce[0]["type"], "qbo.customer.created.v1");
        assert_eq!(ce[0]["intuitaccountid"], "123");
    }
}
