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
//! and a body must be `application/json` (the body reader checks it). A browser console later
//! gets a session cookie (HttpOnly, SameSite=Strict, from a one-time login link) checked here
//! in place of the header, under the same Host and Origin checks.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

pub const TOKEN_FILE: &str = "api.token";

pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The node's API token, made (owner-only) if the folder has none yet.
pub fn ensure_token(dir: &Path) -> std::io::Result<String> {
    let path = token_path(dir);
    if let Some(t) = read_token(dir) {
        return Ok(t);
    }
    let token: String = crate::store::seal::random::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Written whole under another name, then linked into place: a reader never sees half a
    // token, and of two processes making one at once, the first link wins.
    let tmp = dir.join(format!("{TOKEN_FILE}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(dir).ok_or(e),
        Err(e) => Err(e),
    }
}

/// The token in `DIR/api.token`, if there is one.
pub fn read_token(dir: &Path) -> Option<String> {
    std::fs::read_to_string(token_path(dir))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// What a request must show.
#[derive(Clone)]
pub struct Guard(Arc<GuardInner>);

struct GuardInner {
    token: String,
    /// `Host` values that name this API: its address, and `localhost` at its port.
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Guard {
    pub fn new(token: String, bound: SocketAddr, origins: Vec<String>) -> Guard {
        let port = bound.port();
        let mut hosts = vec![bound.to_string(), format!("localhost:{port}")];
        if bound.ip().is_loopback() && bound.is_ipv4() {
            hosts.push(format!("127.0.0.1:{port}"));
        }
        Guard(Arc::new(GuardInner {
            token,
            hosts,
            origins: origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }))
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
        if let Some(origin) = text(header::ORIGIN) {
            let o = origin.trim_end_matches('/').to_ascii_lowercase();
            if !self.0.origins.contains(&o) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    format!(
                        "requests from the web page at {origin} are refused; allow a page you trust with `tillmesh run --allow-origin {origin}`"
                    ),
                ));
            }
        }
        let given = text(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.trim().as_bytes(), self.0.token.as_bytes()) {
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
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
