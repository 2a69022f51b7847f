//! The bridge's own HTTP endpoint, beside the node's API:
//! - `GET /v1/bridge`: its status;
//! - `POST /webhooks`: QuickBooks' notifications, checked against `intuit-signature` in
//!   constant time before anything is done;
//! - `GET /connect`: a page to connect (or reconnect) to QuickBooks, starting the OAuth flow
//!   whose redirect comes back to `GET /connect/callback`.
//!
//! The endpoint faces the internet (QuickBooks must reach `/webhooks`), so everything but the
//! webhook and the OAuth redirect needs the node's API token: `Authorization: Bearer`, or the
//! session cookie (HttpOnly, SameSite=Strict) that `GET /connect?token=<token>` sets once and
//! then drops from the address bar. The cookie holds a session of these pages (random, ended
//! after a working day or a restart; `auth::Sessions`), not the token: a browser sends it to
//! every port of the host, and it opens nothing else. The redirect needs none: its `state` was
//! handed out only to a signed-in person, and a company other than the bridge's is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tillmesh_node::api::auth;

use super::Bridge;
use super::connect::{self, App};

/// Authorizations started from the page and not yet come back; the oldest go first.
const PENDING_MAX: usize = 8;
const PENDING_TTL: Duration = Duration::from_secs(600);

/// Started authorizations: `state`, the redirect it named, when.
#[derive(Default)]
pub(super) struct Pending(std::sync::Mutex<Vec<(String, String, Instant)>>);

impl Bridge {
    pub fn http(self: Arc<Self>) -> axum::Router {
        let people = axum::Router::new()
            .route("/v1/bridge", get(status))
            .route("/", get(page))
            .route("/connect", get(page))
            .route("/connect/start", get(start))
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::new(SignIn::of(&self)),
                signed_in,
            ));
        axum::Router::new()
            .route("/webhooks", post(webhook))
            .route("/connect/callback", get(callback))
            .merge(people)
            .with_state(self)
    }

    /// `GET /v1/bridge` alone, for the node's own API.
    pub fn status_routes(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/v1/bridge", get(status))
            .with_state(self)
    }

    /// Records where the HTTP endpoint listens, for status readers and tests.
    pub fn listening(&self, addr: std::net::SocketAddr) {
        self.update(|s| s.http = Some(addr.to_string()));
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        use base64::Engine;
        use hmac::{Hmac, KeyInit, Mac};
        let signature = headers
            .get("intuit-signature")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
        match (&self.verifier_token, signature) {
            (Some(token), Some(sig)) => {
                let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token.as_bytes())
                    .expect("HMAC takes any key");
                mac.update(body);
                // Constant time: `verify_slice` does not stop at the first differing byte.
                mac.verify_slice(&sig).is_ok()
            }
            _ => false,
        }
    }
}

/// What a person signs in with, read once when the endpoint is built: `tillmesh run` makes
/// the token before the bridge starts, so no request reads the disk for it.
struct SignIn {
    token: Option<String>,
    /// Browsers signed in to these pages (and nothing of the node's API).
    sessions: auth::Sessions,
    /// The data folder, for the message that says how to sign in.
    dir: String,
}

impl SignIn {
    fn of(b: &Bridge) -> SignIn {
        SignIn {
            token: auth::read_token(b.repo.dir()),
            sessions: auth::Sessions::default(),
            dir: b.repo.dir().display().to_string(),
        }
    }
}

/// Lets through a request that presents the node's token or the session cookie; turns a
/// sign-in link (`?token=<token>`) into the session cookie and the same page without the
/// token in its address; refuses anything else, saying how to sign in.
async fn signed_in(State(s): State<Arc<SignIn>>, req: Request, next: Next) -> Response {
    let Some(token) = s.token.as_deref() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no API token yet; start it with `tillmesh-bridge run`, which makes one",
        )
            .into_response();
    };
    let holds = |given: &str| auth::same(given.as_bytes(), token.as_bytes());
    if auth::presented(req.headers()).is_some_and(holds)
        || s.sessions
            .holds(auth::cookies(req.headers(), auth::SESSION_COOKIE))
    {
        return next.run(req).await;
    }
    let link = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="));
    if link.is_some_and(holds) {
        let mut r = Redirect::to(req.uri().path()).into_response();
        let session = s.sessions.open();
        if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(auth::SESSION_COOKIE, &session))
        {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    (
        StatusCode::UNAUTHORIZED,
        Html(format!(
            "<p>Sign in first: open <code>/connect?token=TOKEN</code>, with the token that <code>tillmesh api-token --data {}</code> prints on the bridge's machine.</p>",
            escape(&s.dir)
        )),
    )
        .into_response()
}

async fn status(State(b): State<Arc<Bridge>>) -> axum::Json<super::Status> {
    axum::Json(b.status())
}

async fn webhook(
    State(b): State<Arc<Bridge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if b.verify(&headers, &body) {
        b.update(|s| s.webhooks_verified += 1);
        b.pull_now.notify_one();
        StatusCode::OK
    } else {
        tracing::warn!("refused a webhook whose signature does not hold");
        b.update(|s| s.webhooks_refused += 1);
        StatusCode::UNAUTHORIZED
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(b): State<Arc<Bridge>>) -> Html<String> {
    let s = b.status();
    let state = if s.connected {
        format!("Connected to QuickBooks company {}.", escape(&s.realm_id))
    } else {
        "Not connected: QuickBooks needs your approval again.".to_owned()
    };
    let error = s
        .last_error
        .as_deref()
        .map(|e| format!("<p>Last error: {}</p>", escape(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tillmesh bridge</title></head>\
         <body><h1>tillmesh bridge</h1><p>{state}</p>{error}\
         <p>Outbox: {} waiting, {} posted.</p>\
         <p><a href=\"/connect/start\">Connect to QuickBooks</a></p></body></html>",
        s.outbox, s.posted
    ))
}

fn redirect_uri(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("http://{host}/connect/callback"))
}

async fn start(State(b): State<Arc<Bridge>>, headers: HeaderMap) -> Response {
    let Some(redirect) = redirect_uri(&headers) else {
        return (StatusCode::BAD_REQUEST, "the request names no Host").into_response();
    };
    let state = match connect::new_state() {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let app = App::of(b.qbo.connection());
    let link = connect::authorize_link(&app, &redirect, &state);
    if let Ok(mut p) = b.pending.0.lock() {
        p.retain(|(_, _, at)| at.elapsed() < PENDING_TTL);
        if p.len() >= PENDING_MAX {
            p.remove(0);
        }
        p.push((state, redirect, Instant::now()));
    }
    Redirect::to(&link).into_response()
}

async fn callback(State(b): State<Arc<Bridge>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let state = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("state="))
        .unwrap_or_default()
        .to_owned();
    let pending = b.pending.0.lock().ok().and_then(|mut p| {
        let i = p
            .iter()
            .position(|(s, _, at)| *s == state && at.elapsed() < PENDING_TTL)?;
        Some(p.remove(i))
    });
    let Some((state, redirect, _)) = pending else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>This approval was not started here, or is older than 10 minutes. <a href=\"/connect\">Start again</a>.</p>"),
        )
            .into_response();
    };
    let app = App::of(b.qbo.connection());
    let failed = |why: String| {
        (
            StatusCode::BAD_REQUEST,
            Html(format!(
                "<p>Not connected: {}. <a href=\"/connect\">Try again</a>.</p>",
                escape(&why)
            )),
        )
            .into_response()
    };
    let (conn, tokens) = match connect::finish(&app, &query, &state, &redirect).await {
        Ok(t) => t,
        Err(e) => return failed(e.to_string()),
    };
    // Another company would make every record in the posted map wrong.
    if conn.realm_id != b.qbo.connection().realm_id {
        return failed(format!(
            "this bridge posts to company {}, and the approval was for company {}; a bridge for another company needs its own data folder",
            b.qbo.connection().realm_id,
            conn.realm_id
        ));
    }
    if let Err(e) = b.qbo.replace_tokens(tokens).await {
        return failed(e.to_string());
    }
    tracing::info!(realm = %conn.realm_id, "connected to QuickBooks again from the connect page");
    b.update(|s| {
        s.connected = true;
        s.last_error = None;
    });
    Html(format!(
        "<p>Connected to QuickBooks company {}. You can close this page.</p>",
        escape(&conn.realm_id)
    ))
    .into_response()
}
