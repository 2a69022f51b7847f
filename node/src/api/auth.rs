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
//! and a body must be `application/json` (the body reader checks it). The console in a browser
//! has a session cookie instead (HttpOnly, SameSite=Strict, from a one-time sign-in link that
//! `tillmesh console` asks for with the token), checked here in place of the header, under
//! the same Host and Origin checks; the API's own origins are allowed for its pages.
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
/// The cookie a sign-in link sets (HttpOnly, SameSite=Strict). It holds a session value
/// derived from the token for one purpose ([`session_value`]), never the token itself: a
/// browser sends a cookie to every port of its host, so it must open nothing but its own door.
pub const SESSION_COOKIE: &str = "tillmesh_session";
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
    // Written whole under a fresh, unguessable name (never one someone else made first),
    // then linked into place: a reader never sees half a token, and of two processes making
    // one at once, the first link wins.
    let tmp = dir.join(format!(
        "{TOKEN_FILE}.{}.tmp",
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
        f.write_all(token.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
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

/// The session cookie's value, if the request carries one.
pub fn session_presented(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// A session's cookie value for `purpose` (the bridge's pages, later the console): an HMAC
/// under the token, so the cookie opens that door only, and shows nothing of the token.
pub fn session_value(token: &str, purpose: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token.as_bytes()).expect("any key");
    mac.update(b"tillmesh-session\0");
    mac.update(purpose.as_bytes());
    to_hex(&mac.finalize().into_bytes())
}

/// `Set-Cookie` for a browser session of `value`: never sent by a page of another site, never
/// readable by script.
pub fn session_cookie(value: &str) -> String {
    named_cookie(SESSION_COOKIE, value)
}

fn named_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/")
}

/// The console's routes that need no token: its page (which holds nothing until signed in)
/// and the sign-in link that trades a one-time code for the session cookie.
pub const CONSOLE_PAGE_PATH: &str = "/";
pub const CONSOLE_SCRIPT_PATH: &str = "/console.js";
pub const CONSOLE_LOGIN_PATH: &str = "/login";
/// Where `tillmesh console` asks for a one-time sign-in code (with the token).
pub const CONSOLE_CODE_PATH: &str = "/v1/console/login";
/// What the console's session cookie opens: this node's API, from its own pages.
const CONSOLE_PURPOSE: &str = "console";
/// The console's cookie: not the bridge's, since a browser keeps one cookie of a name per
/// host whatever the port, and the bridge's pages are on another port of the same host.
const CONSOLE_COOKIE: &str = "tillmesh_console";
/// How long a sign-in link works, and how many may be open at once (the oldest go first).
const LOGIN_CODE_TTL: Duration = Duration::from_secs(300);
const LOGIN_CODES_MAX: usize = 16;

/// What a request must show.
#[derive(Clone)]
pub struct Guard(Arc<GuardInner>);

struct GuardInner {
    token: String,
    /// The console's session cookie value: an HMAC of the token for the console only.
    session: String,
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
            session: session_value(&token, CONSOLE_PURPOSE),
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

    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check_caller(headers)?;
        if presented(headers).is_none()
            && cookie(headers, CONSOLE_COOKIE)
                .is_some_and(|s| same(s.as_bytes(), self.0.session.as_bytes()))
        {
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

pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = if req.method() == Method::OPTIONS && origin.is_some() {
        // A browser's preflight carries no token: it asks whether the real request may follow.
        match g.check_caller(req.headers()) {
            Ok(()) => preflight(),
            Err(e) => e.into_response(),
        }
    } else if req.method() == Method::GET && req.uri().path() == HELLO_PATH {
        match g.check_caller(req.headers()) {
            Ok(()) => g.hello(req.uri().query().unwrap_or("")),
            Err(e) => e.into_response(),
        }
    } else if req.method() == Method::GET
        && matches!(
            req.uri().path(),
            CONSOLE_PAGE_PATH | CONSOLE_SCRIPT_PATH | CONSOLE_LOGIN_PATH
        )
    {
        match g.check_caller(req.headers()) {
            Ok(()) if req.uri().path() == CONSOLE_LOGIN_PATH => {
                g.login(req.uri().query().unwrap_or(""))
            }
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    } else if req.method() == Method::POST && req.uri().path() == CONSOLE_CODE_PATH {
        // The token itself, not a session: a signed-in page cannot mint more sign-ins.
        match g.check(req.headers()) {
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
        match g.check(req.headers()) {
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
        if let Ok(v) = HeaderValue::from_str(&named_cookie(CONSOLE_COOKIE, &self.0.session)) {
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

/// The guard of `tillmesh run --metrics ADDR`: the token alone. That address is for a
/// scraper (Prometheus sends `Authorization: Bearer` from its `credentials_file`), not a
/// browser, and may be on the LAN where a monitoring server reaches it; it serves counts,
/// nothing of the business's data, and nothing that writes.
pub async fn bearer_only(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if presented(req.headers()).is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send `Authorization: Bearer <token>`, the token in DIR/api.token (for Prometheus: `authorization: { credentials_file: DIR/api.token }`)",
    )
    .into_response()
}
