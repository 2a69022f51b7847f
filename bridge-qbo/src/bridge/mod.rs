//! The bridge: a mesh node with the `bridge` role that posts the mesh's documents to
//! QuickBooks Online exactly once and brings back what QuickBooks says about money.
//!
//! - [`push`]: the outbox. Customers and items first (references), then sales receipts
//!   and refund receipts, then voids; in batches of up to 30 or one by one.
//! - [`pull`]: QBO's change feed (CDC), rung early by verified webhooks. Where QuickBooks
//!   holds another figure (an accountant's edit, a void, a deletion), it goes into the
//!   document's `ledger` and wins in every view.
//! - [`http`]: the bridge's own endpoint: status, webhooks, the connect page.
//! - [`client`]: QBO v3 over HTTP within the realm's limits; [`state`]: `bridge.redb`.

mod amounts;
pub mod client;
pub mod connect;
pub mod dates;
mod edits;
pub mod http;
mod intents;
mod mapping;
mod pull;
mod push;
pub mod state;
pub mod transport;

/// The bridge's readers of QuickBooks' JSON, gathered for the fuzz target (`fuzz/`): whatever
/// QuickBooks (or something posing as it) answers, reading it must not panic.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::Value;
    use tillmesh_protocol::Currency;

    /// Reads `bytes` as QuickBooks JSON the way the bridge does: every object in it (an
    /// answer wraps its entities: `{"Customer": {...}}`, `QueryResponse`, `CDCResponse`) as a
    /// row, its amounts in currencies of 0, 2 and 3 decimals, its dates, and the edited fields
    /// of every entity the bridge pulls.
    pub fn read_qbo(bytes: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let currencies: Vec<Currency> = ["JPY", "USD", "KWD"]
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let mut rows = vec![(&v, 0usize)];
        while let Some((row, depth)) = rows.pop() {
            // Deep enough for every answer's shape; a hostile nesting costs no more.
            if depth < 6 {
                match row {
                    Value::Object(m) => rows.extend(m.values().map(|c| (c, depth + 1))),
                    Value::Array(a) => rows.extend(a.iter().map(|c| (c, depth + 1))),
                    _ => {}
                }
            }
            if !row.is_object() {
                continue;
            }
            for &c in &currencies {
                for key in ["TotalAmt", "Balance", "UnitPrice", "Amount", "TotalTax"] {
                    let _ = super::amounts::from_qbo(&row[key], c);
                    let _ = super::amounts::from_qbo_nearest(&row[key], c);
                }
                for entity in ["Customer", "Vendor", "Item", "Purchase", "SalesReceipt"] {
                    let _ = super::edits::fields_of(entity, row, c);
                }
            }
            for key in ["time", "TxnDate", "LastUpdatedTime", "CreateTime"] {
                if let Some(t) = row[key].as_str() {
                    let _ = super::dates::parse(t);
                }
            }
        }
    }
}

pub use push::ROUND_TRANSACTIONS_MAX;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tillmesh_node::Repo;
use tillmesh_node::repo::Command;
use tillmesh_protocol::schema::Ledger;
use tillmesh_protocol::{Currency, DocId, Money};

use client::{Qbo, QboError};
use state::{Posted, State};

/// How often the outbox looks for work, and the pull for QBO's changes.
const PUSH_INTERVAL: Duration = Duration::from_millis(500);
const PULL_INTERVAL: Duration = Duration::from_secs(5);
/// Failures kept for status, newest last.
const FAILURES_MAX: usize = 20;

/// How the bridge posts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Creates per batch request: 1 posts one by one, QBO takes at most 30.
    pub batch_items_max: usize,
    /// One summary receipt per period of sales (a day, usually) instead of one per sale.
    pub summary_period: Option<Duration>,
    /// Transactions one push round takes on; pulls and webhooks are served between rounds.
    pub round_transactions_max: usize,
    /// How often QBO's change feed is read when no webhook says to sooner.
    pub pull_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_items_max: client::BATCH_ITEMS_MAX,
            summary_period: None,
            round_transactions_max: push::ROUND_TRANSACTIONS_MAX,
            pull_interval: PULL_INTERVAL,
        }
    }
}

/// A document QBO refused or could not take yet, with QBO's reason.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub what: String,
    /// The document's key in `bridge.redb` (its id, `item/<sku>`...), when it is one: a
    /// later failure of it replaces this one, and its success clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub error: String,
    pub at_ms: u64,
}

/// What `tillmesh-bridge status` and `GET /v1/bridge` show.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub connected: bool,
    pub realm_id: String,
    /// Documents waiting to be posted (or voided) in QBO.
    pub outbox: usize,
    pub posted: u64,
    pub last_push_ms: Option<u64>,
    pub last_pull_ms: Option<u64>,
    /// QuickBooks figures that overrode a till's, ever (kept in `bridge.redb`); `GET
    /// /v1/conflicts` on any node lists the sales they concern.
    pub conflicts: u64,
    /// Refunds made on one till while another voided the sale, which reached the bridge after
    /// the void went to QBO: booked by the void, so not posted again (each is a conflict for
    /// review in `GET /v1/conflicts`, kind `void_and_refund`).
    pub refunds_covered_by_voids: u64,
    /// Where the bridge's own HTTP endpoint listens (status, webhooks, connect page).
    pub http: Option<String>,
    pub webhooks_verified: u64,
    /// Notifications whose `intuit-signature` did not hold: refused, nothing done.
    pub webhooks_refused: u64,
    pub last_error: Option<String>,
    pub failures: Vec<Failure>,
    pub qbo: client::ClientStats,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the books are kept in: the mesh's currency and the shop's time zone, from the mesh
/// settings, read again before every push round and pull.
#[derive(Debug, Clone)]
pub(crate) struct Books {
    pub currency: Currency,
    pub zone: jiff::tz::TimeZone,
}

impl Default for Books {
    fn default() -> Self {
        Books {
            currency: Currency::USD,
            zone: jiff::tz::TimeZone::UTC,
        }
    }
}

/// The company's home currency, from its preferences (`CurrencyPrefs.HomeCurrency`).
pub async fn home_currency(qbo: &Qbo) -> Result<Currency, QboError> {
    let prefs = qbo.get("preferences?minorversion=75").await?;
    let code = prefs["Preferences"]["CurrencyPrefs"]["HomeCurrency"]["value"]
        .as_str()
        .unwrap_or("USD");
    code.parse().map_err(|_| {
        QboError::Unavailable(format!(
            "QuickBooks named its home currency {code:?}, which is not an ISO 4217 code"
        ))
    })
}

/// QBO's text literal: single quotes escaped with a backslash.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "\\'"))
}

pub struct Bridge {
    repo: Repo,
    qbo: Qbo,
    state: Arc<State>,
    options: Options,
    /// Account ids by QBO `AccountType`, looked up once.
    accounts: tokio::sync::Mutex<std::collections::HashMap<&'static str, String>>,
    status: std::sync::Mutex<Status>,
    status_file: std::path::PathBuf,
    /// Rung by a verified webhook: pull now rather than at the next tick.
    pull_now: tokio::sync::Notify,
    verifier_token: Option<String>,
    outbox: push::Outbox,
    /// What QBO refused last round (keys in `bridge.redb`): what names it goes last next round.
    refused: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pending: http::Pending,
    books: std::sync::RwLock<Books>,
    /// The QuickBooks company's home currency, read once per start (and at connect).
    home_currency: tokio::sync::OnceCell<Currency>,
    metrics: Metrics,
}

/// The bridge's part of the node's `GET /metrics`.
#[derive(Clone)]
struct Metrics {
    outbox: Gauge,
    /// One push round that made something in QuickBooks, from its start to its end.
    push_seconds: Histogram,
}

impl Metrics {
    fn register(repo: &Repo, qbo: &Qbo) -> Metrics {
        let m = Metrics {
            outbox: Gauge::default(),
            push_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        };
        let r = repo.metrics();
        r.register(
            "bridge_outbox",
            "Documents waiting to be posted (or voided) in QuickBooks",
            m.outbox.clone(),
        );
        r.register(
            "bridge_push_seconds",
            "A push round that posted to QuickBooks, from its start to its end",
            m.push_seconds.clone(),
        );
        r.register(
            "bridge_qbo_requests",
            "Requests to QuickBooks by the HTTP status of the answer (429: throttled; error: none came back)",
            qbo.requests_by_status.clone(),
        );
        m
    }
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
        // Only the status shows it: a store that cannot say starts the count again.
        let conflicts = pull::conflicts_counted(&state).unwrap_or(0);
        let metrics = Metrics::register(&repo, &qbo);
        Bridge {
            metrics,
            outbox: push::Outbox::watch(&repo),
            pending: Default::default(),
            books: Default::default(),
            home_currency: Default::default(),
            refused: Default::default(),
            pull_now: tokio::sync::Notify::new(),
            verifier_token,
            repo,
            qbo,
            state,
            options: Options::default(),
            accounts: Default::default(),
            status: std::sync::Mutex::new(Status {
                connected: true,
                realm_id: realm,
                conflicts,
                ..Status::default()
            }),
            status_file: dir.join("bridge-status.json"),
        }
    }

    pub fn with_options(mut self, options: Options) -> Bridge {
        self.options = options;
        self
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            self.metrics.outbox.set(s.outbox as i64);
            s.qbo = self.qbo.stats.lock().map(|q| q.clone()).unwrap_or_default();
            if let Ok(text) = serde_json::to_vec_pretty(&*s) {
                let tmp = self.status_file.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &self.status_file);
                }
            }
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn failed(&self, what: String, e: &QboError) {
        self.failed_as(None, what, e);
    }

    fn failed_as(&self, key: Option<&str>, what: String, e: &QboError) {
        tracing::warn!(%what, error = %e, "QuickBooks did not take it yet");
        self.update(|s| {
            s.last_error = Some(format!("{what}: {e}"));
            s.failures
                .retain(|f| f.what != what && (key.is_none() || f.key.as_deref() != key));
            s.failures.push(Failure {
                what,
                key: key.map(str::to_owned),
                error: e.to_string(),
                at_ms: now_ms(),
            });
            if s.failures.len() > FAILURES_MAX {
                s.failures.remove(0);
            }
        });
    }

    /// A document QBO has taken: its earlier failure no longer stands.
    fn resolved(&self, key: &str) {
        self.update(|s| s.failures.retain(|f| f.key.as_deref() != Some(key)));
    }

    fn lapsed(&self, e: &QboError) {
        let reconnect = matches!(e, QboError::Reconnect(_));
        self.update(|s| {
            s.last_error = Some(e.to_string());
            if reconnect {
                s.connected = false;
            }
        });
    }

    /// Runs the outbox and the pull until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut push = tokio::time::interval(PUSH_INTERVAL);
        let mut pull = tokio::time::interval(self.options.pull_interval);
        // A long push round misses ticks: catching up on each would pull dozens of times in
        // a row for nothing.
        push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pulls and push rounds take turns: a pull that is due goes before the next round
        // (a backlog's rounds never hold QuickBooks' changes back for long), and a second
        // pull waits for a round between (webhooks never hold the push back).
        let mut pulled_last = false;
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                _ = async { tokio::select! { _ = pull.tick() => {}, _ = self.pull_now.notified() => {} } }, if !pulled_last => {
                    pulled_last = true;
                    if let Err(e) = self.pull().await {
                        tracing::warn!(error = %e, "pulling from QuickBooks");
                        self.lapsed(&e);
                    }
                }
                _ = push.tick() => {
                    pulled_last = false;
                    if let Err(e) = self.push_all().await {
                        tracing::warn!(error = %e, "pushing to QuickBooks");
                        self.lapsed(&e);
                    }
                }
            }
        }
    }

    /// Whether the mesh has admitted this device as its bridge. Until then nothing posted
    /// could be written back (and a pulled change could not be written at all), so the bridge
    /// waits, and its status says why.
    fn admitted(&self) -> bool {
        let why = match self.repo.role() {
            Some(tillmesh_protocol::Role::Bridge) => return true,
            None => "waiting for this device's admission to the mesh to arrive".to_owned(),
            Some(r) => format!(
                "this device is a {r} in the mesh, not its bridge; an admin can change its role"
            ),
        };
        self.update(|s| s.last_error = Some(why));
        false
    }

    pub(crate) fn books(&self) -> Books {
        self.books.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Minor units as QuickBooks' amount, in the mesh's currency.
    fn amount(&self, minor: i64) -> Value {
        amounts::to_qbo(minor, self.books().currency)
    }

    /// QuickBooks' amount in minor units of the mesh's currency.
    fn minor(&self, v: &Value) -> Option<i64> {
        amounts::from_qbo(v, self.books().currency)
    }

    /// `TxnDate`: the shop's local date at an instant.
    fn date(&self, ms: u64) -> String {
        dates::local_date(ms, &self.books().zone)
    }

    /// Reads the mesh settings (currency, time zone) and checks QuickBooks keeps its books in
    /// the same currency. Until it does, nothing is posted or pulled: every amount would be
    /// booked in the wrong money.
    async fn check_books(&self) -> Result<(), QboError> {
        let settings = self.repo.settings().map_err(|e| {
            QboError::Unavailable(format!(
                "waiting for the mesh settings (currency, time zone) to arrive: {e}"
            ))
        })?;
        let home = self
            .home_currency
            .get_or_try_init(|| home_currency(&self.qbo))
            .await?;
        if *home != settings.currency {
            return Err(QboError::Currency {
                qbo: home.to_string(),
                mesh: settings.currency.to_string(),
            });
        }
        let books = Books {
            currency: settings.currency,
            zone: dates::zone(settings.time_zone.as_deref()),
        };
        if let Ok(mut b) = self.books.write() {
            *b = books;
        }
        Ok(())
    }

    /// The id of the company's first account of a QBO `AccountType`.
    async fn account(&self, kind: &'static str) -> Result<String, QboError> {
        let mut known = self.accounts.lock().await;
        if let Some(id) = known.get(kind) {
            return Ok(id.clone());
        }
        let v = self
            .qbo
            .query(&format!(
                "select * from Account where AccountType = {}",
                quoted(kind)
            ))
            .await?;
        let id = v["QueryResponse"]["Account"][0]["Id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                QboError::Unavailable(format!(
                    "the company has no {kind} account; add one in QuickBooks"
                ))
            })?;
        known.insert(kind, id.clone());
        Ok(id)
    }

    /// Writes what QuickBooks holds into a document's ledger, for every node to see; does
    /// nothing when the ledger says so already.
    async fn write_ledger(
        &self,
        id: DocId,
        current: Option<&Ledger>,
        posted: &Posted,
        currency: Currency,
        pulled: bool,
    ) -> Result<(), QboError> {
        let mut ledger = current.cloned().unwrap_or_default();
        ledger.qbo_id = Some(posted.qbo_id.clone());
        ledger.sync_token = Some(posted.sync_token.clone());
        let money = |m: Option<i64>| m.map(|m| Money::new(m, currency));
        ledger.total = money(posted.total_minor).or(ledger.total);
        ledger.tax = money(posted.tax_minor).or(ledger.tax);
        ledger.balance = money(posted.balance_minor).or(ledger.balance);
        let unchanged = current.is_some_and(|c| {
            let mut c = c.clone();
            c.posted_at_ms = ledger.posted_at_ms;
            c.pulled_at_ms = ledger.pulled_at_ms;
            c == ledger
        });
        // The pull time is when QBO's figure last changed the ledger, not every poll.
        if unchanged {
            return Ok(());
        }
        if pulled {
            ledger.pulled_at_ms = Some(now_ms());
        } else {
            ledger.posted_at_ms = Some(now_ms());
        }
        self.repo
            .execute(Command::SetLedger { doc_id: id, ledger })
            .await
            .map(|_| ())
            .map_err(|e| {
                QboError::Unavailable(format!("writing the ledger of {id} into the mesh: {e}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(quoted("Amy's"), "'Amy\\'s'");
    }
}
