//! Who may use a node's API. A web page the till's browser shows must never drive it: a
//! `text/plain` POST crosses origins without a preflight, and DNS rebinding makes a hostile
//! name resolve to 127.0.0.1. So every request must carry
//! - the node's token, `Authorization: Bearer <token>`: 32 random bytes, in `DIR/api.token`
//!   (owner-only), made at `init`/`join` (and at the first `run` of an older folder); the CLI
//!   reads it itself, `tillmesh api-token` prints it;
//! - a `Host` that is the address the API is bound to (`127.0.0.1:7420`, or `localhost` at
//!   that port): a rebound name is refused;
//! - no `Origin`, or one on the allow-list (`tillmesh run --allow-origin`);
//!
//! and a write must declare no body type or `application/json`, even with an empty body
//! (checked here, before any handler, and again by the body reader). The console in a browser
//! has a session cookie instead (HttpOnly, SameSite=Strict, from a one-time sign-in link that
//! `tillmesh console` asks for with the token), checked here in place of the header, under
//! the same Host and Origin checks; the API's own origins are allowed for its pages. A
//! session is a random value this process holds ([`Sessions`]): it ends after a working day,
//! at sign-out, or when the node restarts, and shows nothing of the token.
//!
//! A scraper on `tillmesh run --metrics ADDR` presents its own token, `DIR/metrics.token`
//! ([`metrics_token`]): that address may be on the shop's network, where a token crosses in
//! the clear, and what it carries must open nothing but the metrics.
//!
//! One route needs no token: `GET /v1/hello?nonce=N` answers
//! `HMAC-SHA256(token, "tillmesh-api-hello" ‖ address ‖ N)`. The CLI asks it before it sends the
//! token anywhere: after a crash, `api.addr` may name a port some other program now holds, and
//! only the folder's own node can answer for its own address. The address in the proof keeps
//! a program on the old port from relaying the question to the node wherever it now listens.
//!
//! A page of an allowed origin may call the API from a browser: preflights (`OPTIONS`) are
//! answered for those origins only, and their responses carry `Access-Control-Allow-Origin`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tillmesh_protocol::ids::to_hex;

use super::error::ApiError;

pub const TOKEN_FILE: &str = "api.token";
/// The one route that needs no token (see the module's doc).
pub const HELLO_PATH: &str = "/v1/hello";
/// The cookie the bridge's sign-in link sets (HttpOnly, SameSite=Strict). It holds a session
/// ([`Sessions`]), never the token itself: a browser sends a cookie to every port of its
/// host, so it must open nothing but its own door, and not for long.
pub const SESSION_COOKIE: &str = "tillmesh_session";
/// How long a browser session lasts from its sign-in: a shop's working day.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions open at once per door (the oldest end first).
const SESSIONS_MAX: usize = 64;
/// The scraper's token for `tillmesh run --metrics ADDR`, beside `api.token`.
pub const METRICS_TOKEN_FILE: &str = "metrics.token";
/// How long a browser keeps a preflight's answer.
const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// Why the node's token cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{path} can be read by other users of this machine (mode {mode:o}), so any of them could drive this node; \
         run `chmod 600 {path}` (or delete it to make a new token), then start again"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "could not make the API token {path}: {source}; check that the data folder is writable"
    )]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<TokenError> for std::io::Error {
    fn from(e: TokenError) -> std::io::Error {
        let kind = match &e {
            TokenError::Exposed { .. } => std::io::ErrorKind::PermissionDenied,
            TokenError::Io { source, .. } => source.kind(),
        };
        std::io::Error::new(kind, e)
    }
}

pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The node's API token, made (owner-only) if the folder has none yet. One that others
/// may read is refused, not used: it would hand the till to every account on the machine.
pub fn ensure_token(dir: &Path) -> Result<String, TokenError> {
    let path = token_path(dir);
    let io = |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(t) = read_token(dir) {
        check_private(&path)?;
        return Ok(t);
    }
    let token = to_hex(&crate::store::seal::random::<32>());
    // Linked into place: of two processes making one at once, the first link wins.
    let tmp = write_private(dir, TOKEN_FILE, &token).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_private(&path)?;
            read_token(dir).ok_or_else(|| io(e))
        }
        Err(e) => Err(io(e)),
    }
}

/// `content` written whole and synced, owner-only, under a fresh, unguessable name beside
/// `name` (never one someone else made first), for the caller to move into place: a reader
/// never sees half a secret, nor one others could read.
fn write_private(dir: &Path, name: &str, content: &str) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(
        "{name}.{}.tmp",
        to_hex(&crate::store::seal::random::<8>())
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(content.as_bytes())?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), TokenError> {
    Ok(())
}

/// The token in `DIR/api.token`, if there is one.
pub fn read_token(dir: &Path) -> Option<String> {
    std::fs::read_to_string(token_path(dir))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// What only the holder of `token` can answer to `GET /v1/hello?nonce=` at `addr`.
pub fn hello_proof(token: &str, addr: &str, nonce: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token.as_bytes()).expect("any key");
    mac.update(b"tillmesh-api-hello\0");
    mac.update(addr.as_bytes());
    mac.update(b"\0");
    mac.update(nonce.as_bytes());
    to_hex(&mac.finalize().into_bytes())
}

/// A fresh question for `GET /v1/hello`.
pub fn hello_nonce() -> String {
    to_hex(&crate::store::seal::random::<16>())
}

/// The token a request presents in `Authorization: Bearer`.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Every value of the cookie `name` the request carries. All are looked at, not the first:
/// another program on the host may set a cookie of the same name with a narrower path,
/// which the browser sends first.
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// A token derived from the node's for one `purpose`: it opens that door only, and shows
/// nothing of the token.
fn purpose_token(token: &str, purpose: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token.as_bytes()).expect("any key");
    mac.update(b"tillmesh-purpose\0");
    mac.update(purpose.as_bytes());
    to_hex(&mac.finalize().into_bytes())
}

/// The scraper's token: derived from the node's, so it changes with it, and opens
/// `/metrics` on the scraper's address only.
pub fn metrics_token(token: &str) -> String {
    purpose_token(token, "metrics")
}

/// Writes `DIR/metrics.token` (owner-only) for `tillmesh run --metrics`, and returns it.
pub fn ensure_metrics_token(dir: &Path) -> Result<String, TokenError> {
    let token = metrics_token(&ensure_token(dir)?);
    let path = dir.join(METRICS_TOKEN_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == token) {
        check_private(&path)?;
        return Ok(token);
    }
    let placed = write_private(dir, METRICS_TOKEN_FILE, &token).and_then(|tmp| {
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    });
    placed.map_err(|source| TokenError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(token)
}

/// Browser sessions of one door (the console, the bridge's pages): random values held in
/// this process, each good for [`SESSION_TTL`] from its sign-in. A value that leaks (a
/// browser sends the cookie to every port of the host) opens the door for a working day at
/// most; a sign-out or a restart closes it at once.
#[derive(Default)]
pub struct Sessions(Mutex<Vec<(String, Instant)>>);

impl Sessions {
    /// A new session's value.
    pub fn open(&self) -> String {
        let value = to_hex(&crate::store::seal::random::<16>());
        let now = Instant::now();
        if let Ok(mut open) = self.0.lock() {
            open.retain(|(_, until)| *until > now);
            if open.len() >= SESSIONS_MAX {
                open.remove(0);
            }
            open.push((value.clone(), now + SESSION_TTL));
        }
        value
    }

    /// Whether any of `presented` is an open session.
    pub fn holds<'a>(&self, presented: impl IntoIterator<Item = &'a str>) -> bool {
        let now = Instant::now();
        let Ok(open) = self.0.lock() else {
            return false;
        };
        presented.into_iter().any(|p| {
            open.iter()
                .any(|(v, until)| *until > now && same(v.as_bytes(), p.as_bytes()))
        })
    }

    /// Ends every session among `presented`.
    pub fn close<'a>(&self, presented: impl IntoIterator<Item = &'a str>) {
        let presented: Vec<&str> = presented.into_iter().collect();
        if let Ok(mut open) = self.0.lock() {
            open.retain(|(v, _)| !presented.iter().any(|p| same(v.as_bytes(), p.as_bytes())));
        }
    }
}

/// `Set-Cookie` for a browser session: never sent by a page of another site, never readable
/// by script, and dropped by the browser when the session ends here.
pub fn session_cookie(name: &str, value: &str) -> String {
    format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// `Set-Cookie` that makes the browser forget a session.
pub fn cleared_cookie(name: &str) -> String {
    format!("{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The console's routes that need no token: its page (which holds nothing until signed in)
/// and the sign-in link that trades a one-time code for the session cookie.
pub const CONSOLE_PAGE_PATH: &str = "/";
pub const CONSOLE_SCRIPT_PATH: &str = "/console.js";
pub const CONSOLE_LOGIN_PATH: &str = "/login";
/// Where `tillmesh console` asks for a one-time sign-in code (with the token).
pub const CONSOLE_CODE_PATH: &str = "/v1/console/login";
/// Where the console signs out: its session ends here, and the browser forgets the cookie.
pub const CONSOLE_LOGOUT_PATH: &str = "/v1/console/logout";
/// The console's cookie is named for its port (`tillmesh_console_7420`): a browser keeps one
/// cookie of a name per host whatever the port, and two nodes, or a node and a bridge, may
/// share a host.
const CONSOLE_COOKIE_PREFIX: &str = "tillmesh_console_";
/// How long a sign-in link works, and how many may be open at once (the oldest go first).
const LOGIN_CODE_TTL: Duration = Duration::from_secs(300);
const LOGIN_CODES_MAX: usize = 16;

/// What a request must show.
#[derive(Clone)]
pub struct Guard(Arc<GuardInner>);

struct GuardInner {
    token: String,
    /// The console's browser sessions.
    sessions: Sessions,
    /// The console's cookie name, with this API's port.
    cookie: String,
    /// The address the API is bound to, as the hello proof names it.
    bound: String,
    /// `Host` values that name this API: its address, and `localhost` at its port.
    hosts: Vec<String>,
    origins: Vec<String>,
    /// One-time sign-in codes not used yet, with when each stops working.
    codes: Mutex<Vec<(String, Instant)>>,
}

impl Guard {
    pub fn new(token: String, bound: SocketAddr, origins: Vec<String>) -> Guard {
        let port = bound.port();
        let mut hosts = vec![bound.to_string(), format!("localhost:{port}")];
        if bound.ip().is_loopback() && bound.is_ipv4() {
            hosts.push(format!("127.0.0.1:{port}"));
        }
        // The console's own pages come from this API's origins: the browser names them on
        // every write (`Origin`), and a rebound name cannot (its origin is another host).
        let own = hosts.iter().map(|h| format!("http://{h}"));
        Guard(Arc::new(GuardInner {
            sessions: Sessions::default(),
            cookie: format!("{CONSOLE_COOKIE_PREFIX}{port}"),
            token,
            bound: bound.to_string(),
            origins: origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .chain(own)
                .collect(),
            hosts,
            codes: Mutex::new(Vec::new()),
        }))
    }

    fn allows(&self, origin: &str) -> bool {
        let o = origin.trim_end_matches('/').to_ascii_lowercase();
        self.0.origins.contains(&o)
    }

    /// A fresh one-time sign-in code for the console.
    fn new_code(&self) -> String {
        let code = to_hex(&crate::store::seal::random::<16>());
        let now = Instant::now();
        if let Ok(mut codes) = self.0.codes.lock() {
            codes.retain(|(_, until)| *until > now);
            if codes.len() >= LOGIN_CODES_MAX {
                codes.remove(0);
            }
            codes.push((code.clone(), now + LOGIN_CODE_TTL));
        }
        code
    }

    /// Whether `code` is an open sign-in code; it is used up either way.
    fn take_code(&self, code: &str) -> bool {
        let now = Instant::now();
        let Ok(mut codes) = self.0.codes.lock() else {
            return false;
        };
        match codes
            .iter()
            .position(|(c, _)| same(c.as_bytes(), code.as_bytes()))
        {
            Some(i) => codes.remove(i).1 > now,
            None => false,
        }
    }

    /// Host and Origin: who is asking, before what they present.
    fn check_caller(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let host = text(header::HOST).unwrap_or("");
        if !self.0.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_host",
                format!(
                    "this API answers to {} only, not to Host {host:?} (a name that resolves here is not enough)",
                    self.0.hosts[0]
                ),
            ));
        }
        if let Some(origin) = text(header::ORIGIN)
            && !self.allows(origin)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from the web page at {origin} are refused; allow a page you trust with `tillmesh run --allow-origin {origin}`"
                ),
            ));
        }
        Ok(())
    }

    /// What the request presents: the token, or a console session (the caller was checked
    /// first, by `guard`).
    fn check_credentials(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if presented(headers).is_none() && self.0.sessions.holds(cookies(headers, &self.0.cookie)) {
            return Ok(());
        }
        let given = presented(headers).unwrap_or("");
        if !same(given.as_bytes(), self.0.token.as_bytes()) {
            let what = if given.is_empty() {
                "no token"
            } else {
                "a wrong token"
            };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "this request carries {what}: send `Authorization: Bearer <token>`, the token in DIR/api.token (`tillmesh api-token --data DIR` prints it)"
                ),
            ));
        }
        Ok(())
    }
}

/// Equal in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A write whose body is declared as anything but JSON, even an empty one: a page's form post
/// always declares a type, and an endpoint that reads no body (a revocation) must not take it.
fn not_json(req: &Request) -> Option<ApiError> {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return None;
    }
    let declared = req.headers().get(header::CONTENT_TYPE)?;
    let media = declared
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (media != "application/json").then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a write's body must be JSON, sent as `Content-Type: application/json` (it came as {media:?}); send none with an empty body"
            ),
        )
    })
}

pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let path = req.uri().path();
    let mut response = if let Err(e) = g.check_caller(req.headers()) {
        // Who is asking comes first, a browser's preflight too: what it presents, after.
        e.into_response()
    } else if req.method() == Method::OPTIONS && origin.is_some() {
        // A preflight carries no token: it asks whether the real request may follow.
        preflight()
    } else if let Some(e) = not_json(&req) {
        e.into_response()
    } else if req.method() == Method::GET && path == HELLO_PATH {
        g.hello(req.uri().query().unwrap_or(""))
    } else if req.method() == Method::GET && path == CONSOLE_LOGIN_PATH {
        g.login(req.uri().query().unwrap_or(""))
    } else if req.method() == Method::GET && matches!(path, CONSOLE_PAGE_PATH | CONSOLE_SCRIPT_PATH)
    {
        next.run(req).await
    } else if req.method() == Method::POST && path == CONSOLE_LOGOUT_PATH {
        // Whoever holds the session may end it; a page of another site cannot ask (Origin).
        g.logout(req.headers())
    } else if req.method() == Method::POST && path == CONSOLE_CODE_PATH {
        // The token itself, not a session: a signed-in page cannot mint more sign-ins.
        match g.check_credentials(req.headers()) {
            Ok(()) if presented(req.headers()).is_some() => axum::Json(serde_json::json!({
                "code": g.new_code(),
                "path": format!("{CONSOLE_LOGIN_PATH}?code="),
                "expires_in_s": LOGIN_CODE_TTL.as_secs(),
            }))
            .into_response(),
            Ok(()) => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a sign-in link is made with the node's token (`tillmesh console`), not from the console",
            )
            .into_response(),
            Err(e) => e.into_response(),
        }
    } else {
        match g.check_credentials(req.headers()) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    };
    // An allowed origin may read every answer, a refusal too (so its page can say why);
    // no other origin may read any.
    if let Some(o) = origin.filter(|o| o.to_str().is_ok_and(|o| g.allows(o))) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_S),
    );
    r
}

impl Guard {
    /// `GET /login?code=`: a one-time code from `tillmesh console` becomes the session cookie,
    /// and the browser goes on to the console without the code in its address bar.
    fn login(&self, query: &str) -> Response {
        let code = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("code="))
            .unwrap_or("");
        if !self.take_code(code) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::response::Html(
                    "<!doctype html><meta charset=\"utf-8\"><title>tillmesh</title>\
                     <p>This sign-in link was used already or has expired (links last five minutes and work once). \
                     Run <code>tillmesh console</code> on this machine for a new one.</p>",
                ),
            )
                .into_response();
        }
        let mut r = axum::response::Redirect::to(CONSOLE_PAGE_PATH).into_response();
        let session = self.0.sessions.open();
        if let Ok(v) = HeaderValue::from_str(&session_cookie(&self.0.cookie, &session)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        no_store(&mut r);
        r
    }

    /// `POST /v1/console/logout`: the session ends here, and the browser forgets it.
    fn logout(&self, headers: &HeaderMap) -> Response {
        self.0.sessions.close(cookies(headers, &self.0.cookie));
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = HeaderValue::from_str(&cleared_cookie(&self.0.cookie)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    fn hello(&self, query: &str) -> Response {
        let nonce = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("nonce="))
            .unwrap_or("");
        // A nonce is the asker's random hex: anything else is not a question worth signing.
        if nonce.len() < 16 || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_nonce",
                "GET /v1/hello needs ?nonce= with 16 to 128 hex digits",
            )
            .into_response();
        }
        axum::Json(serde_json::json!({
            "address": self.0.bound,
            "proof": hello_proof(&self.0.token, &self.0.bound, nonce),
        }))
        .into_response()
    }
}

/// `Cache-Control: no-store`: a sign-in's answer is kept by no cache.
fn no_store(r: &mut Response) {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The guard of `tillmesh run --metrics ADDR`: the scraper's token alone
/// ([`metrics_token`], in `DIR/metrics.token`), never the node's. That address is for a
/// scraper (Prometheus sends `Authorization: Bearer` from its `credentials_file`), not a
/// browser, and may be on the LAN where a monitoring server reaches it and the token crosses
/// in the clear; it serves counts, nothing of the business's data, and nothing that writes.
pub async fn bearer_only(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if presented(req.headers()).is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send `Authorization: Bearer <token>`, the scraper's token in DIR/metrics.token (for Prometheus: `authorization: { credentials_file: DIR/metrics.token }`); the node's own token is not taken here",
    )
    .into_response()
}
