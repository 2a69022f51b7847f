//! The bridge: a mesh node with the `bridge` role that posts the mesh's sales to QuickBooks
//! Online exactly once and brings back what QuickBooks says about money.
//!
//! # Exactly once
//!
//! The outbox is the set of sales with no record in `bridge.redb`. A sale is posted with a
//! `requestid` derived from its id, so QBO answers a repeat with its first answer; when a post
//! gets no answer (the write may have happened), the bridge looks the receipt up by its
//! `DocNumber` (the till's receipt number) before it posts again. The record is committed
//! before the sale's `ledger` is written back into the mesh, and a record, once written, means
//! the sale is never posted again. Items are made the same way, keyed by SKU; a duplicate name
//! (6240) maps to the existing item.
//!
//! # Server wins
//!
//! The pull polls QBO's change feed (CDC). Where QuickBooks holds another total for a posted
//! receipt (an accountant's edit, a void, a deletion), the bridge writes QBO's figure into the
//! sale's `ledger`; every node then shows the ledger's total, and the till's as `till_total`.

pub mod client;
pub mod connect;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tillmesh_node::Repo;
use tillmesh_node::repo::Command;
use tillmesh_protocol::schema::{Ledger, Sale, SaleStatus};
use tillmesh_protocol::{DocId, DocType, Money};

use client::{Qbo, QboError};
use state::{Posted, State};

/// How often the outbox looks for sales to post, and the pull for QBO's changes.
const PUSH_INTERVAL: Duration = Duration::from_millis(500);
const PULL_INTERVAL: Duration = Duration::from_secs(5);
/// Sales listed per page while looking for the unposted.
const PAGE: usize = 1000;

/// What `tillmesh-bridge status` shows.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub connected: bool,
    pub realm_id: String,
    pub outbox: usize,
    pub posted: u64,
    pub last_push_ms: Option<u64>,
    pub last_pull_ms: Option<u64>,
    pub conflicts: u64,
    /// Where the bridge's own HTTP endpoint listens (status, webhooks).
    pub http: Option<String>,
    pub webhooks_verified: u64,
    /// Notifications whose `intuit-signature` did not hold: refused, nothing done.
    pub webhooks_refused: u64,
    pub last_error: Option<String>,
    pub qbo: client::ClientStats,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn request_id(what: &str) -> String {
    let h = Sha256::digest(what.as_bytes());
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn major(m: i64) -> Value {
    json!((m as f64) / 100.0)
}

fn minor(v: &Value) -> Option<i64> {
    v.as_f64().map(|x| (x * 100.0).round() as i64)
}

/// QBO's text literal: single quotes escaped with a backslash.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "\\'"))
}

pub struct Bridge {
    repo: Repo,
    qbo: Qbo,
    state: Arc<State>,
    income_account: tokio::sync::OnceCell<String>,
    status: std::sync::Mutex<Status>,
    status_file: std::path::PathBuf,
    /// Rung by a verified webhook: pull now rather than at the next tick.
    pull_now: tokio::sync::Notify,
    verifier_token: Option<String>,
}

impl Bridge {
    pub fn new(
        repo: Repo,
        qbo: Qbo,
        state: Arc<State>,
        dir: &std::path::Path,
        realm: String,
        verifier_token: Option<String>,
    ) -> Bridge {
        Bridge {
            pull_now: tokio::sync::Notify::new(),
            verifier_token,
            repo,
            qbo,
            state,
            income_account: Default::default(),
            status: std::sync::Mutex::new(Status {
                connected: true,
                realm_id: realm,
                ..Status::default()
            }),
            status_file: dir.join("bridge-status.json"),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            s.qbo = self.qbo.stats.lock().map(|q| q.clone()).unwrap_or_default();
            if let Ok(text) = serde_json::to_vec_pretty(&*s) {
                let tmp = self.status_file.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &self.status_file);
                }
            }
        }
    }

    /// Runs the outbox and the pull until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut push = tokio::time::interval(PUSH_INTERVAL);
        let mut pull = tokio::time::interval(PULL_INTERVAL);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                _ = push.tick() => {
                    if let Err(e) = self.push_all().await {
                        tracing::warn!(error = %e, "pushing to QuickBooks");
                        let reconnect = matches!(e, QboError::Reconnect(_));
                        self.update(|s| {
                            s.last_error = Some(e.to_string());
                            if reconnect {
                                s.connected = false;
                            }
                        });
                    }
                }
                _ = async { tokio::select! { _ = pull.tick() => {}, _ = self.pull_now.notified() => {} } } => {
                    if let Err(e) = self.pull().await {
                        tracing::warn!(error = %e, "pulling from QuickBooks");
                        let reconnect = matches!(e, QboError::Reconnect(_));
                        self.update(|s| {
                            s.last_error = Some(e.to_string());
                            if reconnect {
                                s.connected = false;
                            }
                        });
                    }
                }
            }
        }
    }

    /// Sales not yet posted (or voided since), oldest first.
    fn outbox(&self) -> Result<Vec<(DocId, Sale)>, QboError> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .repo
                .list(DocType::Sale, before, PAGE)
                .map_err(|e| QboError::Unavailable(format!("reading the store: {e}")))?;
            let Some(last) = page.last() else { break };
            before = Some(last.0);
            let n = page.len();
            all.extend(page);
            if n < PAGE {
                break;
            }
        }
        all.reverse();
        let mut out = Vec::new();
        for (id, json) in all {
            let Ok(sale) = tillmesh_node::repo::typed::<Sale>(&id, json) else {
                continue;
            };
            if sale.status == SaleStatus::Open {
                continue;
            }
            match self.state.posted(&id.to_string())? {
                None => out.push((id, sale)),
                Some(p) if sale.status == SaleStatus::Voided && !p.voided => out.push((id, sale)),
                Some(_) => {}
            }
        }
        Ok(out)
    }

    pub async fn push_all(&self) -> Result<usize, QboError> {
        let outbox = self.outbox()?;
        self.update(|s| s.outbox = outbox.len());
        let mut n = 0;
        for (id, sale) in outbox {
            match self.push_sale(id, &sale).await {
                Ok(()) => {}
                // The connection or the bridge's own store: nothing else can go either.
                Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                // This sale only (QBO refused it, or is unavailable): the others go on, and
                // this one is tried again next round.
                Err(e) => {
                    tracing::warn!(sale = %id, error = %e, "a sale could not be posted yet");
                    self.update(|s| s.last_error = Some(format!("sale {id}: {e}")));
                    continue;
                }
            }
            n += 1;
            self.update(|s| {
                s.outbox = s.outbox.saturating_sub(1);
                s.posted += 1;
                s.last_push_ms = Some(now_ms());
                s.last_error = None;
                s.connected = true;
            });
        }
        Ok(n)
    }

    async fn income_account(&self) -> Result<String, QboError> {
        self.income_account
            .get_or_try_init(|| async {
                let v = self
                    .qbo
                    .query("select * from Account where AccountType = 'Income'")
                    .await?;
                v["QueryResponse"]["Account"][0]["Id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        QboError::Unavailable("the company has no income account".into())
                    })
            })
            .await
            .cloned()
    }

    /// The QBO item for a SKU, made (once) if QBO has none.
    async fn item(&self, sku: &str, name: &str, unit_minor: i64) -> Result<String, QboError> {
        let key = format!("item/{sku}");
        if let Some(p) = self.state.posted(&key)? {
            return Ok(p.qbo_id);
        }
        let find = || async {
            // Inactive items too: a name stays taken when an item is made inactive.
            let v = self
                .qbo
                .query(&format!(
                    "select * from Item where Name = {} AND Active IN (true, false)",
                    quoted(sku)
                ))
                .await?;
            Ok::<_, QboError>(v["QueryResponse"]["Item"][0].clone())
        };
        let body = json!({
            "Name": sku, "Sku": sku, "Description": name, "Type": "NonInventory",
            "UnitPrice": major(unit_minor),
            "IncomeAccountRef": {"value": self.income_account().await?},
        });
        let path = format!("item?requestid={}", request_id(&format!("item:{sku}")));
        let item = match self.qbo.post(&path, &body).await {
            Ok(v) => v["Item"].clone(),
            // The name is taken: it is this SKU's item, made before (or by hand in QBO).
            Err(e) if e.code() == Some("6240") => find().await?,
            Err(QboError::Uncertain(_)) => {
                let found = find().await?;
                if found.is_null() {
                    self.qbo.post(&path, &body).await?["Item"].clone()
                } else {
                    found
                }
            }
            Err(e) => return Err(e),
        };
        let qbo_id = item["Id"]
            .as_str()
            .ok_or_else(|| QboError::Unavailable(format!("no item {sku} in QuickBooks")))?
            .to_owned();
        self.state.set_posted(
            &key,
            &Posted {
                entity: "Item".into(),
                qbo_id: qbo_id.clone(),
                sync_token: item["SyncToken"].as_str().unwrap_or("0").into(),
                ..Posted::default()
            },
        )?;
        Ok(qbo_id)
    }

    /// This sale's receipt in QBO, if a post that got no answer made it. Receipt numbers
    /// can repeat across tills, so the sale's own note decides.
    async fn find_receipt(&self, doc_number: &str, id: DocId) -> Result<Value, QboError> {
        let v = self
            .qbo
            .query(&format!(
                "select * from SalesReceipt where DocNumber = {}",
                quoted(doc_number)
            ))
            .await?;
        let note = format!("tillmesh sale {id}");
        Ok(v["QueryResponse"]["SalesReceipt"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["PrivateNote"] == note.as_str())
            .cloned()
            .unwrap_or(Value::Null))
    }

    async fn push_sale(&self, id: DocId, sale: &Sale) -> Result<(), QboError> {
        let key = id.to_string();
        let posted = match self.state.posted(&key)? {
            Some(p) => p,
            None => self.post_receipt(id, sale).await?,
        };
        if sale.status == SaleStatus::Voided && !posted.voided {
            self.void_receipt(&key, posted).await?;
        }
        Ok(())
    }

    async fn post_receipt(&self, id: DocId, sale: &Sale) -> Result<Posted, QboError> {
        let mut lines = Vec::new();
        for l in &sale.lines {
            let item = self.item(&l.sku, &l.name, l.unit_price_minor).await?;
            lines.push(json!({
                "Amount": major(l.net_minor),
                "Description": l.name,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": item},
                    "Qty": l.qty,
                    "UnitPrice": major(l.unit_price_minor),
                    "TaxCodeRef": {"value": if l.tax_minor != 0 { "TAX" } else { "NON" }},
                },
            }));
        }
        let day_ms = sale.created_at_ms as i64;
        let body = json!({
            "DocNumber": sale.receipt_number,
            "TxnDate": date(day_ms),
            "PrivateNote": format!("tillmesh sale {id}"),
            "Line": lines,
            "TxnTaxDetail": {"TotalTax": major(sale.tax.amount_minor)},
        });
        let path = format!(
            "salesreceipt?requestid={}&minorversion=75",
            request_id(&format!("sale:{id}"))
        );
        let receipt = match self.qbo.post(&path, &body).await {
            Ok(v) => v["SalesReceipt"].clone(),
            Err(QboError::Uncertain(why)) => {
                tracing::info!(sale = %id, %why, "no answer to a post; looking the receipt up");
                let found = self.find_receipt(&sale.receipt_number, id).await?;
                if found.is_null() {
                    // Not there: the same requestid again, so a late first attempt still
                    // counts once.
                    self.qbo.post(&path, &body).await?["SalesReceipt"].clone()
                } else {
                    found
                }
            }
            Err(e) => return Err(e),
        };
        let posted = Posted {
            entity: "SalesReceipt".into(),
            qbo_id: receipt["Id"]
                .as_str()
                .ok_or_else(|| {
                    QboError::Unavailable(format!("an answer without an Id: {receipt}"))
                })?
                .to_owned(),
            sync_token: receipt["SyncToken"].as_str().unwrap_or("0").to_owned(),
            total_minor: minor(&receipt["TotalAmt"]),
            voided: false,
        };
        // Recorded before the mesh hears of it: a crash from here on never posts it again.
        self.state.set_posted(&id.to_string(), &posted)?;
        self.write_ledger(id, sale, &posted, false).await;
        Ok(posted)
    }

    async fn void_receipt(&self, key: &str, mut posted: Posted) -> Result<(), QboError> {
        let current = match self
            .qbo
            .get(&format!("salesreceipt/{}", posted.qbo_id))
            .await
        {
            Ok(v) => v["SalesReceipt"].clone(),
            // Deleted in QBO already: nothing left to void.
            Err(e) if e.code() == Some("610") => json!({"PrivateNote": "Voided"}),
            Err(e) => return Err(e),
        };
        if current["PrivateNote"] != "Voided" {
            let body = json!({"Id": posted.qbo_id, "SyncToken": current["SyncToken"]});
            match self.qbo.post("salesreceipt?operation=void", &body).await {
                Ok(_) => {}
                // Someone else changed it since; the next round reads it again.
                Err(e) if e.code() == Some("5010") => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        posted.voided = true;
        self.state.set_posted(key, &posted)?;
        Ok(())
    }

    /// Writes what QuickBooks holds into the sale's ledger, for every node to see. A failure
    /// is logged, not fatal: the next pull writes it again.
    async fn write_ledger(&self, id: DocId, sale: &Sale, posted: &Posted, pulled: bool) {
        let mut ledger = sale.ledger.clone().unwrap_or_default();
        ledger.qbo_id = Some(posted.qbo_id.clone());
        ledger.sync_token = Some(posted.sync_token.clone());
        ledger.total = posted.total_minor.map(|m| Money::new(m, sale.currency));
        if pulled {
            ledger.pulled_at_ms = Some(now_ms());
        } else {
            ledger.posted_at_ms = Some(now_ms());
        }
        if sale.ledger.as_ref() == Some(&ledger) {
            return;
        }
        if let Err(e) = self
            .repo
            .execute(Command::SetLedger {
                doc_id: id,
                ledger: Ledger { ..ledger },
            })
            .await
        {
            tracing::warn!(sale = %id, error = %e, "cannot write the ledger back into the mesh");
        }
    }

    /// QBO's changes since the last pull: where its total differs, it wins.
    pub async fn pull(&self) -> Result<usize, QboError> {
        let since = self
            .state
            .note("pulled_since")?
            .unwrap_or_else(|| "2000-01-01T00:00:00Z".into());
        let started = now_ms();
        let v = self
            .qbo
            .get(&format!(
                "cdc?entities=SalesReceipt&changedSince={}",
                client::enc(&since)
            ))
            .await?;
        let rows = v["CDCResponse"][0]["QueryResponse"][0]["SalesReceipt"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut changed = 0;
        if !rows.is_empty() {
            let by_qbo: std::collections::HashMap<String, (String, Posted)> = self
                .state
                .all_posted()?
                .into_iter()
                .filter(|(_, p)| p.entity == "SalesReceipt")
                .map(|(k, p)| (p.qbo_id.clone(), (k, p)))
                .collect();
            for row in rows {
                let Some((key, mut posted)) =
                    row["Id"].as_str().and_then(|id| by_qbo.get(id)).cloned()
                else {
                    continue;
                };
                let total = if row["status"] == "Deleted" {
                    Some(0)
                } else {
                    minor(&row["TotalAmt"])
                };
                let token = row["SyncToken"]
                    .as_str()
                    .unwrap_or(&posted.sync_token)
                    .to_owned();
                let Ok(doc_id) = key.parse::<DocId>() else {
                    continue;
                };
                let Ok(Some(sale)) = self.repo.get::<Sale>(&doc_id) else {
                    continue;
                };
                let ledger_total = sale
                    .ledger
                    .as_ref()
                    .and_then(|l| l.total)
                    .map(|m| m.amount_minor);
                if total == posted.total_minor && total == ledger_total {
                    continue;
                }
                posted.total_minor = total;
                posted.sync_token = token;
                self.state.set_posted(&key, &posted)?;
                if total != Some(sale.total.amount_minor) {
                    self.update(|s| s.conflicts += 1);
                }
                self.write_ledger(doc_id, &sale, &posted, true).await;
                changed += 1;
            }
        }
        // The next pull starts a little before this one did, so nothing falls between.
        let next = started.saturating_sub(2_000);
        self.state.set_note("pulled_since", &utc(next))?;
        self.update(|s| s.last_pull_ms = Some(now_ms()));
        Ok(changed)
    }
}

impl Bridge {
    /// The bridge's own HTTP endpoint: `GET /v1/bridge` (its status) and `POST /webhooks`
    /// (QuickBooks' notifications, checked against `intuit-signature` before anything is done).
    pub fn http(self: Arc<Self>) -> axum::Router {
        use axum::routing::{get, post};
        axum::Router::new()
            .route(
                "/v1/bridge",
                get({
                    let b = self.clone();
                    move || {
                        let b = b.clone();
                        async move { axum::Json(b.status.lock().map(|s| s.clone()).unwrap_or_default()) }
                    }
                }),
            )
            .route(
                "/webhooks",
                post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let b = self.clone();
                    async move { b.webhook(&headers, &body) }
                }),
            )
    }

    fn webhook(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        use base64::Engine;
        use hmac::{Hmac, KeyInit, Mac};
        let signature = headers
            .get("intuit-signature")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
        let verified = match (&self.verifier_token, signature) {
            (Some(token), Some(sig)) => {
                let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token.as_bytes())
                    .expect("HMAC takes any key");
                mac.update(body);
                // Constant time: `verify_slice` does not stop at the first differing byte.
                mac.verify_slice(&sig).is_ok()
            }
            _ => false,
        };
        if verified {
            self.update(|s| s.webhooks_verified += 1);
            self.pull_now.notify_one();
            axum::http::StatusCode::OK
        } else {
            tracing::warn!("refused a webhook whose signature does not hold");
            self.update(|s| s.webhooks_refused += 1);
            axum::http::StatusCode::UNAUTHORIZED
        }
    }

    /// Records where the HTTP endpoint listens, for status readers and tests.
    pub fn listening(&self, addr: std::net::SocketAddr) {
        self.update(|s| s.http = Some(addr.to_string()));
    }
}

/// `YYYY-MM-DD` of a UTC instant (QBO's `TxnDate`; the day in UTC is close enough for a
/// shop's books, and the same on every retry).
fn date(ms: i64) -> String {
    utc(ms as u64)[..10].to_owned()
}

fn utc(ms: u64) -> String {
    crate::emulator::clock::utc(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(1_700_000_000_000), "2023-11-14");
        assert_eq!(quoted("Amy's"), "'Amy\\'s'");
        assert_eq!(minor(&json!(12.34)), Some(1234));
        assert_eq!(request_id("sale:x"), request_id("sale:x"));
        assert_ne!(request_id("sale:x"), request_id("sale:y"));
    }
}
