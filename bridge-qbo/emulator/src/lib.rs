//! A local stand-in for QuickBooks Online, faithful to Intuit's published v3 Accounting API
//! and the traffic recorded in `shared/qbo-fixtures`: same paths, envelopes, server defaults,
//! SyncTokens, errors, query language, CDC, batch, `requestid`, OAuth, webhooks, throttling.
//! A client changes only its base URLs.
//!
//! One company (realm) per emulator, kept in its own redb file. Fault switches (latency, 5xx,
//! "commit, then drop the response") and limits are set by flags or `POST /admin/config`.

mod clock;
mod company;
mod fault;
mod oauth;
pub mod query;
mod schema;
pub mod tls;
pub mod webhooks;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use company::ENTITY_NAMES;
use company::{Change, Company, WriteError, canonical};
use fault::Fault;
use oauth::{TokenError, Tokens};
use webhooks::{Format, Stats, Target};

/// QBO's per-realm limits, as Intuit documents them.
pub const REQUESTS_PER_MINUTE: u32 = 500;
pub const CONCURRENT_MAX: u32 = 10;
/// Batch requests per minute per realm, on top of the per-minute limit they also count in.
pub const BATCH_REQUESTS_PER_MINUTE: u32 = 40;
/// Items one batch request may carry.
pub const BATCH_ITEMS_MAX: usize = 30;

/// What can be changed while it runs (`POST /admin/config`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub requests_per_minute: u32,
    pub concurrent_max: u32,
    pub batch_requests_per_minute: u32,
    /// Added to every API answer.
    pub latency_ms: u64,
    /// Share of API requests answered 503 before doing anything, in thousandths.
    pub fail_5xx_per_mille: u32,
    /// Share of writes committed whose response is then dropped (connection cut), in
    /// thousandths: the client sees a failure for a write that happened.
    pub drop_after_commit_per_mille: u32,
    pub webhook_url: Option<String>,
    pub webhook_format: Format,
    /// Answer a repeated `requestid` as a new request: Intuit keeps request ids for a
    /// while, not for ever, so a client must not lean on them alone.
    pub forget_request_ids: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            requests_per_minute: REQUESTS_PER_MINUTE,
            concurrent_max: CONCURRENT_MAX,
            batch_requests_per_minute: BATCH_REQUESTS_PER_MINUTE,
            latency_ms: 0,
            fail_5xx_per_mille: 0,
            drop_after_commit_per_mille: 0,
            webhook_url: None,
            webhook_format: Format::Legacy,
            forget_request_ids: false,
        }
    }
}

/// How to start an emulator.
#[derive(Debug, Clone)]
pub struct Config {
    pub data: PathBuf,
    pub settings: Settings,
    /// The company's home currency when it is made (USD if not said); a company made
    /// already keeps its own, and asking for another is refused.
    pub currency: Option<tillmesh_protocol::Currency>,
    /// Serve HTTPS with a certificate for 127.0.0.1 (see [`tls`]).
    pub tls: bool,
}

impl Config {
    /// A plain-HTTP company in USD, kept in `data`.
    pub fn new(data: impl Into<PathBuf>) -> Config {
        Config {
            data: data.into(),
            settings: Settings::default(),
            currency: None,
            tls: false,
        }
    }
}

/// What a client needs to talk to the emulator: the first line `qbo-emulator` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    pub base_url: String,
    pub authorize_url: String,
    pub token_url: String,
    pub revoke_url: String,
    pub realm_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub verifier_token: String,
    /// With `--tls`: the certificate authority a client must trust (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The company's home currency (ISO 4217).
    pub currency: String,
}

impl Endpoints {
    /// An HTTP client that trusts this emulator (its CA, when it serves HTTPS): for tests,
    /// the demo and the accountant's side of the examples.
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = self.ca_file.as_ref().and_then(|f| std::fs::read(f).ok())
            && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
        {
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().expect("an HTTP client for the emulator")
    }
}

/// Counters for the admin endpoint and tests.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub requests: u64,
    pub throttled: u64,
    pub injected_5xx: u64,
    pub dropped_after_commit: u64,
    pub writes: u64,
}

struct Throttle {
    recent: VecDeque<Instant>,
    recent_batches: VecDeque<Instant>,
    in_flight: u32,
}

struct Inner {
    company: Mutex<Company>,
    tokens: Mutex<Tokens>,
    settings: RwLock<Settings>,
    endpoints: Endpoints,
    throttle: Mutex<Throttle>,
    counters: Mutex<Counters>,
    webhook_target: Arc<RwLock<Option<Target>>>,
    webhook_stats: Arc<Mutex<Stats>>,
    changes: mpsc::UnboundedSender<Change>,
    /// Held through a batch, so two batches with one `requestid` cannot both write.
    batches: Mutex<()>,
    /// For the fault switches: a cheap deterministic sequence.
    dice: Mutex<u64>,
}

#[derive(Clone)]
struct Emu(Arc<Inner>);

/// Credentials that last across restarts, kept beside the company's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    realm_id: String,
    client_id: String,
    client_secret: String,
    verifier_token: String,
}

fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn identity(data: &std::path::Path) -> Result<Identity, String> {
    let path = data.join("identity.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let mut realm = String::from("9341");
    for _ in 0..15 {
        let mut b = [0u8; 1];
        getrandom::fill(&mut b).map_err(|e| e.to_string())?;
        realm.push(char::from(b'0' + b[0] % 10));
    }
    let id = Identity {
        realm_id: realm,
        client_id: format!("AB{}", hex(20)),
        client_secret: hex(20),
        verifier_token: format!("{}-{}-{}-{}-{}", hex(4), hex(2), hex(2), hex(2), hex(6)),
    };
    std::fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&id).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(id)
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the emulator's data folder could not be used: {0}")]
    Data(String),
    #[error("the emulator's store could not be opened: {0}")]
    Store(String),
    #[error("the emulator could not serve HTTPS: {0}")]
    Tls(String),
}

/// Serves the emulator on `listener` until `shutdown` resolves. Returns once it is ready,
/// with the endpoints to print and the server task.
pub async fn start(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Endpoints, tokio::task::JoinHandle<std::io::Result<()>>), StartError> {
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| StartError::Data(e.to_string()))?;
    let id = identity(&config.data).map_err(StartError::Data)?;
    let company = Company::open(&config.data, config.currency)
        .map_err(|e| StartError::Store(e.to_string()))?;
    let tokens = Tokens::open(company.db()).map_err(StartError::Store)?;
    let certificates = if config.tls {
        Some(tls::Certificates::load_or_make(&config.data).map_err(StartError::Tls)?)
    } else {
        None
    };
    let scheme = if certificates.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{addr}");
    let endpoints = Endpoints {
        base_url: base.clone(),
        authorize_url: format!("{base}/connect/oauth2"),
        token_url: format!("{base}/oauth2/v1/tokens/bearer"),
        revoke_url: format!("{base}/v2/oauth2/tokens/revoke"),
        realm_id: id.realm_id.clone(),
        client_id: id.client_id,
        client_secret: id.client_secret,
        verifier_token: id.verifier_token.clone(),
        ca_file: certificates.as_ref().map(|c| c.ca_file.clone()),
        currency: company.currency().to_string(),
    };
    let (changes, rx) = mpsc::unbounded_channel();
    let webhook_target = Arc::new(RwLock::new(config.settings.webhook_url.clone().map(
        |url| Target {
            url,
            verifier_token: id.verifier_token.clone(),
            format: config.settings.webhook_format,
        },
    )));
    let webhook_stats = Arc::new(Mutex::new(Stats::default()));
    tokio::spawn(webhooks::deliver(
        id.realm_id,
        rx,
        webhook_target.clone(),
        webhook_stats.clone(),
    ));
    let emu = Emu(Arc::new(Inner {
        company: Mutex::new(company),
        tokens: Mutex::new(tokens),
        settings: RwLock::new(config.settings),
        endpoints: endpoints.clone(),
        throttle: Mutex::new(Throttle {
            recent: VecDeque::new(),
            recent_batches: VecDeque::new(),
            in_flight: 0,
        }),
        counters: Mutex::new(Counters::default()),
        webhook_target,
        webhook_stats,
        changes,
        batches: Mutex::new(()),
        dice: Mutex::new(0x9e37_79b9_7f4a_7c15),
    }));
    let app = router(emu);
    let task = match certificates {
        Some(c) => {
            let listener = c
                .listen(listener)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }),
    };
    Ok((endpoints, task))
}

fn router(emu: Emu) -> Router {
    let api = Router::new()
        .route("/v3/company/{realm}/query", get(query_get).post(query_post))
        .route("/v3/company/{realm}/cdc", get(cdc))
        .route("/v3/company/{realm}/batch", post(batch))
        .route("/v3/company/{realm}/preferences", get(preferences))
        .route("/v3/company/{realm}/{entity}", post(write))
        .route("/v3/company/{realm}/{entity}/{id}", get(read))
        .route("/v3/company/{realm}/{entity}/{id}/{*rest}", get(too_deep))
        .route_layer(middleware::from_fn_with_state(emu.clone(), gate));
    // Intuit's OAuth server answers with an `intuit_tid` too (intuit-oauth's AuthClientError
    // reads it from token and revoke responses).
    let oauth = Router::new()
        .route("/oauth2/v1/tokens/bearer", post(token))
        .route("/v2/oauth2/tokens/revoke", post(revoke))
        .layer(middleware::map_response(|resp: Response| async move {
            with_tid(resp)
        }));
    Router::new()
        .merge(api)
        .merge(oauth)
        .route("/connect/oauth2", get(authorize))
        // Intuit's discovery document, at the addresses its SDKs fetch: intuit-oauth
        // (`intuitlib/config.py`) and node-quickbooks (`setOauthVersion`) ask for
        // `/.well-known/openid_configuration/` and `/.well-known/openid_sandbox_configuration/`,
        // with the trailing slash.
        .route("/.well-known/openid_configuration", get(discovery))
        .route("/.well-known/openid_configuration/", get(discovery))
        .route("/.well-known/openid_sandbox_configuration", get(discovery))
        .route("/.well-known/openid_sandbox_configuration/", get(discovery))
        .route("/admin/config", get(admin_get).post(admin_set))
        .route("/admin/expire-tokens", post(admin_expire))
        .with_state(emu)
}

// ---- the gate every API request passes: auth, throttle, faults, headers -----------------

fn tid() -> String {
    format!("1-{}-{}", hex(4), hex(12))
}

impl Emu {
    fn roll(&self, per_mille: u32) -> bool {
        if per_mille == 0 {
            return false;
        }
        let mut d = self
            .0
            .dice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // xorshift: cheap, and enough to spread injected faults.
        *d ^= *d << 13;
        *d ^= *d >> 7;
        *d ^= *d << 17;
        (*d % 1000) < u64::from(per_mille)
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        if let Ok(mut c) = self.0.counters.lock() {
            f(&mut c);
        }
    }

    fn settings(&self) -> Settings {
        self.0
            .settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

async fn gate(
    State(emu): State<Emu>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    emu.count(|c| c.requests += 1);
    let settings = emu.settings();
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    let refused = match &token {
        None => Some("Token invalid".to_owned()),
        Some(t) => emu.0.tokens.lock().map(|tk| tk.check(t)).unwrap_or(None),
    };
    if let Some(detail) = refused {
        return with_tid(fault::unauthorized(&detail));
    }
    if params.get("realm").map(String::as_str) != Some(emu.0.endpoints.realm_id.as_str()) {
        return with_tid(fault::unauthorized("Token invalid for this realm"));
    }
    // Throttle: requests in the last minute, and requests in flight, per realm.
    {
        let mut guard = emu
            .0
            .throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let is_batch = req.uri().path().ends_with("/batch");
        let t = &mut *guard;
        for window in [&mut t.recent, &mut t.recent_batches] {
            while window
                .front()
                .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60))
            {
                window.pop_front();
            }
        }
        if t.recent.len() >= settings.requests_per_minute as usize
            || t.in_flight >= settings.concurrent_max
            || (is_batch && t.recent_batches.len() >= settings.batch_requests_per_minute as usize)
        {
            drop(guard);
            emu.count(|c| c.throttled += 1);
            return with_tid(fault::throttled());
        }
        t.recent.push_back(now);
        if is_batch {
            t.recent_batches.push_back(now);
        }
        t.in_flight += 1;
    }
    struct InFlight(Emu);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Ok(mut t) = self.0.0.throttle.lock() {
                t.in_flight = t.in_flight.saturating_sub(1);
            }
        }
    }
    let _in_flight = InFlight(emu.clone());
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    if emu.roll(settings.fail_5xx_per_mille) {
        emu.count(|c| c.injected_5xx += 1);
        return with_tid(Fault::service().into_response());
    }
    let mut resp = next.run(req).await;
    if resp.status().is_success() {
        resp.headers_mut()
            .insert("qbo-version", HeaderValue::from_static("1944.190"));
    }
    with_tid(resp)
}

/// The transaction id Intuit puts on every answer, under the name its documentation gives
/// ("Capture the intuit_tid value", REST API features / error handling) and its SDKs read
/// (intuit-oauth: `response.headers.get('intuit_tid')`).
fn with_tid(mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&tid()) {
        resp.headers_mut().insert("intuit_tid", v);
    }
    resp
}

/// A response that never arrives: the connection is cut after the write committed.
fn dropped() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("dropped after commit"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn ok(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        axum::Json(body),
    )
        .into_response()
}

fn now_time() -> Value {
    json!(clock::datetime_ms(clock::now_ms()))
}

fn write_error(e: WriteError) -> Response {
    match e {
        WriteError::Fault(f) => f.into_response(),
        WriteError::Store(s) => {
            tracing::error!(error = %s, "emulator store failed");
            Fault::service().into_response()
        }
    }
}

fn entity_of(name: &str, path: &str) -> Result<&'static str, Box<Response>> {
    canonical(name).ok_or_else(|| Box::new(Fault::unsupported(path).into_response()))
}

// ---- entities ---------------------------------------------------------------------------

async fn read(
    State(emu): State<Emu>,
    Path((realm, entity, id)): Path<(String, String, String)>,
) -> Response {
    let path = format!("/v3/company/{realm}/{entity}/{id}");
    // Read by the realm's id, as Intuit documents it.
    if entity.eq_ignore_ascii_case("companyinfo") && id == realm {
        return ok(json!({ "CompanyInfo": company_info(&emu), "time": now_time() }));
    }
    let entity = match entity_of(&entity, &path) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let Ok(n) = id.parse::<u64>() else {
        // QBO's 2030 answer carries no `time`.
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "Fault": Fault::invalid_id(&id).body() })),
        )
            .into_response();
    };
    let company = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match company.get(entity, n) {
        Some(v) => ok(json!({ entity: v, "time": now_time() })),
        None => Fault::not_found().into_response(),
    }
}

async fn too_deep(
    Path((realm, entity, id, rest)): Path<(String, String, String, String)>,
) -> Response {
    Fault::unsupported(&format!("/v3/company/{realm}/{entity}/{id}/{rest}")).into_response()
}

#[derive(Deserialize)]
struct WriteParams {
    operation: Option<String>,
    /// `include=void` with `operation=update`: how Intuit documents voiding a sales receipt.
    include: Option<String>,
    requestid: Option<String>,
    #[allow(dead_code)]
    minorversion: Option<String>,
}

/// Create, update (`Id` in the body), `?operation=delete`, `?operation=void`, or
/// `?operation=update&include=void` (a sales receipt's void, as Intuit documents it).
async fn write(
    State(emu): State<Emu>,
    Path((realm, entity)): Path<(String, String)>,
    QueryParams(params): QueryParams<WriteParams>,
    body: Bytes,
) -> Response {
    let path = format!("/v3/company/{realm}/{entity}");
    let entity = match entity_of(&entity, &path) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let request_id = params
        .requestid
        .filter(|r| !r.is_empty() && !emu.settings().forget_request_ids);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Fault::bad_request(format!("the body is not JSON: {e}")).into_response(),
    };
    // The entity may come wrapped (`{"Customer": {...}}`) as some clients send it.
    let body = match body.get(entity) {
        Some(inner) if body.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => body,
    };
    // One lock from the look-up of the requestid to its record, so two requests with the
    // same id cannot both write.
    let mut company = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rid) = &request_id {
        match company.remembered(rid) {
            Ok(Some((status, body))) => {
                return (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
                    axum::Json(body),
                )
                    .into_response();
            }
            Ok(None) => {}
            Err(e) => return write_error(e),
        }
    }
    let operation = match (params.operation.as_deref(), params.include.as_deref()) {
        (Some("update") | None, Some("void")) => Some("void"),
        (op, _) => op,
    };
    let outcome = apply_locked(&mut company, entity, operation, body);
    let (status, response, change) = match outcome {
        Ok((v, change)) => (
            StatusCode::OK,
            json!({ entity: v, "time": now_time() }),
            Some(change),
        ),
        // Refusals are not remembered: a request that failed may be sent again and succeed.
        Err(WriteError::Fault(f)) => (
            f.status,
            json!({"Fault": f.body(), "time": now_time()}),
            None,
        ),
        Err(e) => return write_error(e),
    };
    if let (Some(rid), true) = (&request_id, status.is_success())
        && let Err(e) = company.remember(rid, status.as_u16(), &response)
    {
        return write_error(e);
    }
    drop(company);
    if let Some(change) = change {
        emu.count(|c| c.writes += 1);
        let _ = emu.0.changes.send(change);
    }
    if status.is_success() && emu.roll(emu.settings().drop_after_commit_per_mille) {
        emu.count(|c| c.dropped_after_commit += 1);
        return dropped();
    }
    if status.is_success() {
        ok(response)
    } else {
        (status, axum::Json(response)).into_response()
    }
}

fn apply_locked(
    company: &mut Company,
    entity: &'static str,
    operation: Option<&str>,
    body: Value,
) -> Result<(Value, Change), WriteError> {
    schema::check(entity, &body)?;
    match operation {
        Some("delete") => company.delete(entity, body),
        Some("void") => company.void(entity, body),
        Some("update") | None if body.get("Id").is_some() => company.update(entity, body),
        None | Some("create") => company.create(entity, body),
        Some(other) => Err(Fault::business(format!("Unsupported operation: {other}")).into()),
    }
}

fn apply_write(
    emu: &Emu,
    entity: &'static str,
    operation: Option<&str>,
    body: Value,
) -> Result<Value, WriteError> {
    let mut company = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (value, change) = apply_locked(&mut company, entity, operation, body)?;
    drop(company);
    emu.count(|c| c.writes += 1);
    let _ = emu.0.changes.send(change);
    Ok(value)
}

async fn preferences(State(emu): State<Emu>) -> Response {
    let now = clock::now_ms();
    let (discount, tax, currency) = {
        let company = emu
            .0
            .company
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id_of = |v: Option<Value>| v.map(|a| a["value"].clone()).unwrap_or(json!("1"));
        (
            id_of(company.account_named("Discounts given")),
            id_of(company.tax_code_named("TAX")),
            company.currency(),
        )
    };
    let thanks = "Thank you for your business and have a great day!";
    let message = |form: &str, text: &str| json!({"Subject": format!("{form} from Emulated Company"), "Message": text});
    ok(json!({
        "Preferences": {
            "AccountingInfoPrefs": {"TrackDepartments": false, "ClassTrackingPerTxn": false,
                "ClassTrackingPerTxnLine": false, "CustomerTerminology": "Customers"},
            "ProductAndServicesPrefs": {"ForSales": true, "ForPurchase": true, "QuantityWithPriceAndRate": true, "QuantityOnHand": true},
            "SalesFormsPrefs": {"CustomField": [], "CustomTxnNumbers": false, "AllowDeposit": false,
                "AllowDiscount": true, "DefaultDiscountAccount": discount, "AllowEstimates": true,
                "ETransactionEnabledStatus": "NotApplicable", "ETransactionAttachPDF": false,
                "ETransactionPaymentEnabled": false, "IPNSupportEnabled": false,
                "AllowServiceDate": false, "AllowShipping": false, "DefaultTerms": {"value": "3"},
                "UsingPriceLevels": false, "DefaultCustomerMessage": thanks},
            "EmailMessagesPrefs": {
                "InvoiceMessage": message("Invoice", "Your invoice is attached."),
                "EstimateMessage": message("Estimate", "Please review the estimate below."),
                "SalesReceiptMessage": message("Sales Receipt", "Your sales receipt is attached."),
                "StatementMessage": message("Statement", "Your statement is attached.")
            },
            "VendorAndPurchasesPrefs": {"TrackingByCustomer": true, "BillableExpenseTracking": true, "POCustomField": []},
            "TimeTrackingPrefs": {"UseServices": true, "BillCustomers": true, "ShowBillRateToAll": false,
                "WorkWeekStartDate": "Monday", "MarkTimeEntriesBillable": true},
            "TaxPrefs": {"UsingSalesTax": true, "TaxGroupCodeRef": {"value": tax}},
            "CurrencyPrefs": {"MultiCurrencyEnabled": false, "HomeCurrency": {"value": currency.as_str()}},
            "ReportPrefs": {"ReportBasis": "Accrual", "CalcAgingReportFromTxnDate": false},
            "OtherPrefs": {"NameValue": [
                {"Name": "SalesFormsPrefs.DefaultCustomerMessage", "Value": thanks},
                {"Name": "DTXCopyMemo", "Value": "false"},
                {"Name": "Vendor1099Enabled", "Value": "true"},
                {"Name": "TimeTrackingFeatureEnabled", "Value": "true"}
            ]},
            "domain": "QBO", "sparse": false, "Id": "1", "SyncToken": "0",
            "MetaData": {"CreateTime": clock::datetime(now), "LastUpdatedTime": clock::datetime(now)}
        },
        "time": now_time()
    }))
}

// ---- query, CDC, batch ------------------------------------------------------------------

#[derive(Deserialize)]
struct QueryText {
    query: Option<String>,
}

async fn query_get(State(emu): State<Emu>, QueryParams(q): QueryParams<QueryText>) -> Response {
    let Some(text) = q.query else {
        return Fault::required("query").into_response();
    };
    match run_query(&emu, &text) {
        Ok(v) => ok(json!({"QueryResponse": v, "time": now_time()})),
        Err(f) => f.into_response(),
    }
}

/// Clients may also POST the query as `application/text`.
async fn query_post(State(emu): State<Emu>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    match run_query(&emu, &text) {
        Ok(v) => ok(json!({"QueryResponse": v, "time": now_time()})),
        Err(f) => f.into_response(),
    }
}

/// The company itself: one object, read-only here.
fn company_info(emu: &Emu) -> Value {
    let currency = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .currency();
    // The country whose currency it is, where that is plain; a test company elsewhere is US.
    let country = match currency.as_str() {
        "EUR" => "IE",
        c if c != "XAF" && c != "XOF" => &c[..2],
        _ => "US",
    };
    json!({
        "Id": "1", "SyncToken": "0", "domain": "QBO", "sparse": false,
        "CompanyName": "Emulated Company", "LegalName": "Emulated Company",
        "Country": country,
        "CompanyAddr": {"Id": "1", "Line1": "2500 Garcia Ave", "City": "Mountain View",
            "CountrySubDivisionCode": "CA", "PostalCode": "94043", "Country": country},
        "SupportedLanguages": "en", "FiscalYearStartMonth": "January",
        "CompanyStartDate": "2024-01-01",
        "NameValue": [{"Name": "OfferingSku", "Value": "QuickBooks Online Plus"}],
        "MetaData": {"CreateTime": "2024-01-01T00:00:00-08:00", "LastUpdatedTime": "2024-01-01T00:00:00-08:00"},
    })
}

fn run_query(emu: &Emu, text: &str) -> Result<Value, Fault> {
    let q = query::parse(text).map_err(|e| Fault::query_parse(&e.0))?;
    if q.entity.eq_ignore_ascii_case("CompanyInfo") {
        let info = company_info(emu);
        let rows: Vec<Value> = std::iter::once(info)
            .filter(|v| q.conds.iter().all(|c| c.matches(v)))
            .collect();
        if q.select == query::Select::Count {
            return Ok(json!({"totalCount": rows.len()}));
        }
        let n = rows.len();
        return Ok(json!({"CompanyInfo": rows, "startPosition": 1, "maxResults": n}));
    }
    let entity = canonical(&q.entity).ok_or_else(|| Fault::query_entity(&q.entity))?;
    let company = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Name lists show active rows only, unless the query says otherwise.
    let filters_active = q
        .conds
        .iter()
        .any(|c| c.field.eq_ignore_ascii_case("Active"));
    let active_only = !filters_active
        && matches!(
            entity,
            "Customer" | "Vendor" | "Employee" | "Item" | "Account"
        );
    let mut rows: Vec<Value> = company
        .all(entity)
        .filter(|v| !active_only || v["Active"] != json!(false))
        .filter(|v| q.conds.iter().all(|c| c.matches(v)))
        .cloned()
        .collect();
    drop(company);
    if q.select == query::Select::Count {
        return Ok(json!({"totalCount": rows.len()}));
    }
    if q.order.is_empty() {
        let default: Vec<(String, bool)> = match entity {
            "Customer" => vec![("FullyQualifiedName".into(), false)],
            "Vendor" | "Employee" => vec![("DisplayName".into(), false)],
            "Item" | "Account" | "TaxCode" | "PaymentMethod" => vec![("Name".into(), false)],
            _ => vec![("MetaData.LastUpdatedTime".into(), true)],
        };
        query::sort(&mut rows, &default);
    } else {
        query::sort(&mut rows, &q.order);
    }
    let page: Vec<Value> = rows
        .into_iter()
        .skip((q.start - 1) as usize)
        .take(q.max as usize)
        .map(|mut v| {
            if let query::Select::Fields(fields) = &q.select
                && let Some(obj) = v.as_object_mut()
            {
                obj.retain(|k, _| {
                    ["Id", "SyncToken", "domain", "sparse", "MetaData"].contains(&k.as_str())
                        || fields.iter().any(|f| f.eq_ignore_ascii_case(k))
                });
            }
            v
        })
        .collect();
    if page.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({ entity: page.clone(), "startPosition": q.start, "maxResults": page.len() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdcParams {
    entities: Option<String>,
    changed_since: Option<String>,
}

async fn cdc(State(emu): State<Emu>, QueryParams(p): QueryParams<CdcParams>) -> Response {
    let Some(entities) = p.entities.filter(|e| !e.is_empty()) else {
        return Fault::required("entities").into_response();
    };
    let Some(since) = p.changed_since.as_deref().and_then(clock::parse) else {
        return Fault::required("changedSince").into_response();
    };
    let company = emu
        .0
        .company
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut responses = Vec::new();
    for name in entities.split(',').map(str::trim) {
        let Some(entity) = canonical(name) else {
            return Fault::query_entity(name).into_response();
        };
        let mut rows: Vec<Value> = company
            .all(entity)
            .filter(|v| {
                v["MetaData"]["LastUpdatedTime"]
                    .as_str()
                    .and_then(clock::parse)
                    .is_some_and(|t| t >= since)
            })
            .cloned()
            .collect();
        query::sort(&mut rows, &[("MetaData.LastUpdatedTime".into(), false)]);
        for (id, at) in company.deleted_since(entity, since) {
            rows.push(json!({
                "domain": "QBO", "status": "Deleted", "Id": id.to_string(),
                "MetaData": {"LastUpdatedTime": clock::datetime(at)}
            }));
        }
        let n = rows.len();
        responses.push(if n == 0 {
            json!({})
        } else {
            json!({ entity: rows, "startPosition": 1, "maxResults": n })
        });
    }
    ok(json!({"CDCResponse": [{"QueryResponse": responses}], "time": now_time()}))
}

async fn batch(
    State(emu): State<Emu>,
    QueryParams(params): QueryParams<WriteParams>,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Fault::bad_request(format!("the body is not JSON: {e}")).into_response(),
    };
    let Some(items) = body.get("BatchItemRequest").and_then(Value::as_array) else {
        return Fault::required("BatchItemRequest").into_response();
    };
    if items.len() > BATCH_ITEMS_MAX {
        return Fault::business(format!(
            "Batch request can contain at most {BATCH_ITEMS_MAX} items"
        ))
        .into_response();
    }
    let request_id = params
        .requestid
        .filter(|r| !r.is_empty() && !emu.settings().forget_request_ids);
    let batches = emu
        .0
        .batches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rid) = &request_id {
        let company = emu
            .0
            .company
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match company.remembered(rid) {
            Ok(Some((_, body))) => return ok(body),
            Ok(None) => {}
            Err(e) => return write_error(e),
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut wrote = false;
    for item in items {
        let bid = item.get("bId").cloned().unwrap_or(Value::Null);
        let mut answer = if let Some(q) = item.get("Query").and_then(Value::as_str) {
            match run_query(&emu, q) {
                Ok(v) => json!({"QueryResponse": v}),
                Err(f) => json!({"Fault": f.body()}),
            }
        } else {
            let found = item.as_object().and_then(|o| {
                o.iter()
                    .find_map(|(k, v)| canonical(k).map(|e| (e, v.clone())))
            });
            match found {
                None => json!({"Fault": Fault::required("entity").body()}),
                Some((entity, v)) => {
                    let op = item.get("operation").and_then(Value::as_str);
                    match apply_write(&emu, entity, op, v) {
                        Ok(v) => {
                            wrote = true;
                            json!({ entity: v })
                        }
                        Err(WriteError::Fault(f)) => json!({"Fault": f.body()}),
                        // Earlier items are committed: this one fails alone.
                        Err(WriteError::Store(_)) => json!({"Fault": Fault::service().body()}),
                    }
                }
            }
        };
        answer["bId"] = bid;
        out.push(answer);
    }
    let response = json!({"BatchItemResponse": out, "time": now_time()});
    // The whole answer is remembered, faults included: the items that were written must
    // never be written again, and a repeat must learn which ones those were.
    if let Some(rid) = &request_id {
        let company = emu
            .0
            .company
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = company.remember(rid, 200, &response) {
            return write_error(e);
        }
    }
    drop(batches);
    if wrote && emu.roll(emu.settings().drop_after_commit_per_mille) {
        emu.count(|c| c.dropped_after_commit += 1);
        return dropped();
    }
    ok(response)
}

// ---- OAuth ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Authorize {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
}

/// The consent page, approved at once: redirects with a code, the state and the realm.
async fn authorize(State(emu): State<Emu>, QueryParams(a): QueryParams<Authorize>) -> Response {
    if a.client_id.as_deref() != Some(emu.0.endpoints.client_id.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let Some(redirect) = a.redirect_uri else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is missing").into_response();
    };
    let code = emu
        .0
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .new_code();
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let state = a.state.unwrap_or_default();
    let Some(code) = code else {
        // OAuth's way to refuse at the consent step: back to the client with an error.
        return Redirect::to(&format!(
            "{redirect}{sep}error=temporarily_unavailable&error_description={}&state={}",
            enc(&format!(
                "{} authorization codes are waiting to be exchanged; exchange them or wait up to 10 minutes for them to expire",
                oauth::CODES_MAX
            )),
            enc(&state),
        ))
        .into_response();
    };
    Redirect::to(&format!(
        "{redirect}{sep}code={code}&state={}&realmId={}",
        enc(&state),
        emu.0.endpoints.realm_id
    ))
    .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Everything but RFC 3986's unreserved characters is escaped.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

fn client_ok(emu: &Emu, headers: &HeaderMap, f: &HashMap<String, String>) -> bool {
    use base64::Engine;
    let e = &emu.0.endpoints;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((i, s)) => (i.to_owned(), s.to_owned()),
        None => (
            f.get("client_id").cloned().unwrap_or_default(),
            f.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    id == e.client_id && secret == e.client_secret
}

async fn token(State(emu): State<Emu>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let result = if !client_ok(&emu, &headers, &f) {
        Err(TokenError::Client)
    } else {
        let mut tokens = emu
            .0
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => match f.get("code") {
                Some(code) => tokens.exchange_code(code),
                None => Err(TokenError::Request("code")),
            },
            Some("refresh_token") => match f.get("refresh_token") {
                Some(r) => tokens.refresh(r),
                None => Err(TokenError::Request("refresh_token")),
            },
            Some(_) => Err(TokenError::GrantType),
            None => Err(TokenError::Request("grant_type")),
        }
    };
    match result {
        Ok(v) => ok(v),
        Err(e) => {
            let status = match e {
                TokenError::Client => StatusCode::UNAUTHORIZED,
                TokenError::Store(ref s) => {
                    tracing::error!(error = %s, "emulator token store failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            (status, axum::Json(e.body())).into_response()
        }
    }
}

async fn revoke(State(emu): State<Emu>, headers: HeaderMap, body: Bytes) -> Response {
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| form(&body).get("token").cloned());
    if !client_ok(&emu, &headers, &form(&body)) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(TokenError::Client.body()),
        )
            .into_response();
    }
    match token {
        Some(t) => {
            let revoked = emu
                .0
                .tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .revoke(&t);
            match revoked {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(e.body())).into_response(),
            }
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(TokenError::Request("token").body()),
        )
            .into_response(),
    }
}

async fn discovery(State(emu): State<Emu>) -> Response {
    ok(oauth::discovery(&emu.0.endpoints.base_url))
}

// ---- admin ------------------------------------------------------------------------------

async fn admin_get(State(emu): State<Emu>) -> Response {
    let counters = emu.0.counters.lock().map(|c| c.clone()).unwrap_or_default();
    let hooks = emu
        .0
        .webhook_stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    ok(json!({"settings": emu.settings(), "counters": counters, "webhooks": hooks}))
}

async fn admin_set(State(emu): State<Emu>, body: Bytes) -> Response {
    let settings: Settings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": format!("not a settings object: {e}")})),
            )
                .into_response();
        }
    };
    if let Ok(mut t) = emu.0.webhook_target.write() {
        *t = settings.webhook_url.clone().map(|url| Target {
            url,
            verifier_token: emu.0.endpoints.verifier_token.clone(),
            format: settings.webhook_format,
        });
    }
    if let Ok(mut s) = emu.0.settings.write() {
        *s = settings;
    }
    admin_get(State(emu)).await
}

#[derive(Deserialize)]
struct Expire {
    #[serde(default)]
    refresh: bool,
}

/// For tests: every access token (and refresh token, if asked) expires now.
async fn admin_expire(State(emu): State<Emu>, QueryParams(e): QueryParams<Expire>) -> Response {
    let expired = emu
        .0
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .expire(e.refresh);
    match expired {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(e.body())).into_response(),
    }
}
