//! A QuickBooks Online v3 client that stays within the realm's limits and keeps its tokens
//! alive: sliding-window limiters under the per-minute limits (all requests, and batch
//! requests) and a cap on requests in flight,
//! access tokens refreshed ahead of expiry (the rotated refresh token stored before use), 429
//! and 5xx retried with backoff, and writes that may have happened told apart from writes
//! that did not.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use super::state::{Connection, State, Tokens};
use super::transport::{self, TransportError, check_url};

/// Intuit's limits per realm; the client keeps a little under them.
pub const REQUESTS_PER_MINUTE: usize = 500;
pub const CONCURRENT_MAX: usize = 10;
pub const BATCH_REQUESTS_PER_MINUTE: usize = 40;
pub const BATCH_ITEMS_MAX: usize = 30;
/// Refresh the access token when it has less than this left.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of a 429 or 5xx before giving up for now (the outbox tries again later).
const RETRIES_MAX: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum QboError {
    /// QBO refused the request; `code` is its error code ("6240", "5010", "610"...).
    #[error("QuickBooks refused it ({code}): {message}: {detail}")]
    Fault {
        status: u16,
        code: String,
        message: String,
        detail: String,
    },
    /// The refresh token no longer works: someone must connect again.
    #[error("the QuickBooks connection has lapsed ({0}); reconnect with `tillmesh-bridge connect`")]
    Reconnect(String),
    /// A write was sent and no answer came back: it may have happened.
    #[error("no answer from QuickBooks to a write that may have happened: {0}")]
    Uncertain(String),
    /// QuickBooks is unavailable or throttling beyond the retries; nothing happened.
    #[error("QuickBooks is unavailable: {0}")]
    Unavailable(String),
    /// The QuickBooks company keeps its books in another currency than the mesh.
    #[error(
        "the QuickBooks company keeps its books in {qbo} and the mesh in {mesh}: nothing is posted, since every amount would be booked in the wrong currency; connect the bridge to a {mesh} company"
    )]
    Currency { qbo: String, mesh: String },
    #[error("the bridge's store failed: {0}")]
    State(#[from] super::state::StateError),
}

impl QboError {
    pub fn code(&self) -> Option<&str> {
        match self {
            QboError::Fault { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Requests sent in the last minute, to stay under the realm's limit. A sliding window
/// rather than a token bucket because QBO counts that way: the client can then go at the
/// full rate and still never see a 429.
struct Window {
    sent: VecDeque<Instant>,
    batches_sent: VecDeque<Instant>,
    /// How much longer than QBO's minute the client waits: a request is counted here when it
    /// leaves and there when it arrives, a little later. Doubled after each 429 (up to
    /// `MARGIN_MAX`), so a slow path costs a little rate instead of repeated refusals; back
    /// to the least after `MARGIN_CALM` without one.
    margin: Duration,
    throttled_at: Option<Instant>,
}

const MARGIN_MIN: Duration = Duration::from_millis(500);
const MARGIN_MAX: Duration = Duration::from_secs(8);
const MARGIN_CALM: Duration = Duration::from_secs(600);

impl Window {
    /// Waits until one more request (and, for a batch, one more batch) fits in the last
    /// minute, then counts it. Both are counted at the same instant, so neither window can
    /// think a request went earlier than the server saw it.
    async fn admit(window: &Mutex<Window>, batch: bool) {
        loop {
            let wait = {
                let mut guard = window.lock().await;
                let w = &mut *guard;
                let now = Instant::now();
                if w.throttled_at
                    .is_some_and(|t| now.duration_since(t) >= MARGIN_CALM)
                {
                    w.margin = MARGIN_MIN;
                    w.throttled_at = None;
                }
                let span = Duration::from_secs(60) + w.margin;
                for sent in [&mut w.sent, &mut w.batches_sent] {
                    while sent.front().is_some_and(|t| now.duration_since(*t) >= span) {
                        sent.pop_front();
                    }
                }
                let full = |sent: &VecDeque<Instant>, max: usize| {
                    (sent.len() >= max).then(|| span - now.duration_since(sent[sent.len() - max]))
                };
                let wait = full(&w.sent, REQUESTS_PER_MINUTE)
                    .into_iter()
                    .chain(if batch {
                        full(&w.batches_sent, BATCH_REQUESTS_PER_MINUTE)
                    } else {
                        None
                    });
                match wait.max() {
                    Some(wait) => wait,
                    None => {
                        w.sent.push_back(now);
                        if batch {
                            w.batches_sent.push_back(now);
                        }
                        return;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counters for status.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ClientStats {
    pub requests: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub refreshed: u64,
}

pub struct Qbo {
    http: reqwest::Client,
    conn: Connection,
    state: Arc<State>,
    tokens: Mutex<Tokens>,
    window: Mutex<Window>,
    in_flight: Semaphore,
    pub stats: std::sync::Mutex<ClientStats>,
    /// Requests by the HTTP status QuickBooks answered (`error` when none came back).
    pub requests_by_status: Family<HttpStatus, Counter>,
}

/// The status of an answer from QuickBooks, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpStatus {
    pub status: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything but RFC 3986's unreserved characters is escaped (queries, OAuth forms).
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

/// The token endpoint's answer, turned into what the bridge stores.
pub fn tokens_from(answer: &Value) -> Option<Tokens> {
    let now = now_ms();
    Some(Tokens {
        access_token: answer["access_token"].as_str()?.to_owned(),
        access_expires_ms: now + answer["expires_in"].as_i64()? * 1000,
        refresh_token: answer["refresh_token"].as_str()?.to_owned(),
        refresh_expires_ms: now + answer["x_refresh_token_expires_in"].as_i64().unwrap_or(0) * 1000,
    })
}

impl Qbo {
    /// A client for the connection's realm; refuses plain HTTP to anywhere but loopback,
    /// and a CA file it cannot use.
    pub fn new(conn: Connection, tokens: Tokens, state: Arc<State>) -> Result<Qbo, TransportError> {
        check_url("the QuickBooks API", &conn.base_url)?;
        check_url("the token endpoint", &conn.token_url)?;
        Ok(Qbo {
            http: transport::client(conn.ca_file.as_deref(), REQUEST_TIMEOUT)?,
            conn,
            state,
            tokens: Mutex::new(tokens),
            window: Mutex::new(Window {
                sent: VecDeque::new(),
                batches_sent: VecDeque::new(),
                margin: MARGIN_MIN,
                throttled_at: None,
            }),
            in_flight: Semaphore::new(CONCURRENT_MAX),
            stats: Default::default(),
            requests_by_status: Family::default(),
        })
    }

    /// Takes tokens from a new connection (the connect page), stored first.
    pub async fn replace_tokens(&self, tokens: Tokens) -> Result<(), QboError> {
        let mut t = self.tokens.lock().await;
        self.state.set_tokens(&tokens)?;
        *t = tokens;
        Ok(())
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn count(&self, f: impl FnOnce(&mut ClientStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// A fresh access token, refreshing it (and storing the rotated refresh token before
    /// anything uses it) when it is close to expiry or `force`d.
    async fn access_token(&self, force: bool) -> Result<String, QboError> {
        let mut t = self.tokens.lock().await;
        if !force && t.access_expires_ms - now_ms() > REFRESH_AHEAD.as_millis() as i64 {
            return Ok(t.access_token.clone());
        }
        let body = format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(&t.refresh_token)
        );
        let resp = self
            .http
            .post(&self.conn.token_url)
            .basic_auth(&self.conn.client_id, Some(&self.conn.client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| QboError::Unavailable(format!("token endpoint: {e}")))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 400 || status.as_u16() == 401 {
            return Err(QboError::Reconnect(
                answer["error"].as_str().unwrap_or("refused").to_owned(),
            ));
        }
        let fresh = tokens_from(&answer).ok_or_else(|| {
            QboError::Unavailable(format!("token endpoint answered {status}: {answer}"))
        })?;
        // Stored first: if the bridge dies now, the next start has the token that works.
        self.state.set_tokens(&fresh)?;
        *t = fresh;
        self.count(|s| s.refreshed += 1);
        Ok(t.access_token.clone())
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v3/company/{}/{}",
            self.conn.base_url.trim_end_matches('/'),
            self.conn.realm_id,
            path
        )
    }

    /// `GET` a path; retried freely (reads change nothing).
    pub async fn get(&self, path: &str) -> Result<Value, QboError> {
        self.send(false, path, None).await
    }

    /// A query, in QBO's language.
    pub async fn query(&self, q: &str) -> Result<Value, QboError> {
        self.get(&format!("query?query={}&minorversion=75", enc(q)))
            .await
    }

    /// `POST` a write. With a `requestid`, QBO answers a repeat with the first answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, QboError> {
        self.send(true, path, Some(body)).await
    }

    async fn send(&self, write: bool, path: &str, body: Option<&Value>) -> Result<Value, QboError> {
        let mut backoff = Duration::from_millis(500);
        let mut refreshed = false;
        for attempt in 0..=RETRIES_MAX {
            let token = self.access_token(false).await?;
            let _permit = self.in_flight.acquire().await.expect("semaphore");
            Window::admit(&self.window, path.starts_with("batch")).await;
            self.count(|s| s.requests += 1);
            let mut req = if write {
                self.http.post(self.url(path))
            } else {
                self.http.get(self.url(path))
            }
            .bearer_auth(&token)
            .header("accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let sent = req.send().await;
            let label = match &sent {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            self.requests_by_status
                .get_or_create(&HttpStatus { status: label })
                .inc();
            let resp = match sent {
                Ok(r) => r,
                Err(e) if write => return Err(QboError::Uncertain(e.to_string())),
                Err(e) => {
                    if attempt == RETRIES_MAX {
                        return Err(QboError::Unavailable(e.to_string()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = match resp.text().await {
                Ok(t) => t,
                // The answer was cut off: a write may have happened.
                Err(e) if write => return Err(QboError::Uncertain(e.to_string())),
                Err(e) => return Err(QboError::Unavailable(e.to_string())),
            };
            match status {
                200..=299 => {
                    return serde_json::from_str(&text).map_err(|e| {
                        let why = format!("an answer that is not JSON: {e}");
                        // A write answered 200 happened, whatever the body says.
                        if write {
                            QboError::Uncertain(why)
                        } else {
                            QboError::Unavailable(why)
                        }
                    });
                }
                401 if !refreshed => {
                    refreshed = true;
                    drop(_permit);
                    self.access_token(true).await?;
                    continue;
                }
                429 | 500..=599 => {
                    self.count(|s| {
                        if status == 429 {
                            s.throttled += 1
                        } else {
                            s.server_errors += 1
                        }
                    });
                    if status == 429 {
                        let mut w = self.window.lock().await;
                        w.margin = (w.margin * 2).min(MARGIN_MAX);
                        w.throttled_at = Some(Instant::now());
                        tracing::info!(
                            margin_ms = w.margin.as_millis() as u64,
                            "QuickBooks throttled a request; keeping further under its limit"
                        );
                    }
                    if attempt == RETRIES_MAX {
                        // A 500 may come after the write committed; a 429 or 503 never does,
                        // but one cannot tell a 500 from the others after the fact.
                        let why = format!(
                            "HTTP {status} {} times in a row; it is tried again later",
                            RETRIES_MAX + 1
                        );
                        return Err(if write && status != 429 {
                            QboError::Uncertain(why)
                        } else {
                            QboError::Unavailable(why)
                        });
                    }
                    drop(_permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                _ => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let e = v["Fault"]["Error"][0].clone();
                    let e = if e.is_null() {
                        v["fault"]["error"][0].clone()
                    } else {
                        e
                    };
                    if status == 401 {
                        return Err(QboError::Reconnect(
                            e["detail"].as_str().unwrap_or("unauthorized").to_owned(),
                        ));
                    }
                    return Err(QboError::Fault {
                        status,
                        code: e["code"].as_str().unwrap_or("").to_owned(),
                        message: e["Message"].as_str().unwrap_or("").to_owned(),
                        detail: e["Detail"].as_str().unwrap_or(&text).to_owned(),
                    });
                }
            }
        }
        Err(QboError::Unavailable("retries exhausted".into()))
    }
}
