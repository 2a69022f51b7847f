//! How CLI commands reach a node: over HTTP when one runs on the data folder, otherwise by
//! opening the store and calling the same API router in-process. Either way the command gets
//! the same answers and the same errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::api;
use crate::repo::Repo;
use crate::store::{KeySource, OpenError};

/// File in the data folder where a running node writes its API address.
pub const API_ADDR_FILE: &str = "api.addr";

/// How long the CLI waits for a running node's API before deciding none is there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn api_addr_path(data: &Path) -> PathBuf {
    data.join(API_ADDR_FILE)
}

/// What a running node writes to `api.addr`: its API address and its device id, so a client
/// can tell its node from another that took the same port after a crash left the file behind.
pub fn write_api_addr(
    data: &Path,
    addr: &std::net::SocketAddr,
    device: &str,
) -> std::io::Result<()> {
    let file = api_addr_path(data);
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr} {device}\n"))?;
    std::fs::rename(&tmp, &file)
}

/// The `(address, device id)` in a data folder's `api.addr`, if there is one.
pub fn read_api_addr(data: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(api_addr_path(data)).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// Whether the API at `base` answers the hello question as only the holder of `token`, bound
/// to `addr`, can (see `api::auth`).
async fn proves_token(http: &reqwest::Client, base: &str, addr: &str, token: &str) -> bool {
    let nonce = api::auth::hello_nonce();
    let answer = http
        .get(format!("{base}{}?nonce={nonce}", api::auth::HELLO_PATH))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await;
    let proof = match answer {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        _ => None,
    };
    let expected = api::auth::hello_proof(token, addr, &nonce);
    proof
        .as_ref()
        .and_then(|p| p["proof"].as_str())
        .is_some_and(|p| api::auth::same(p.as_bytes(), expected.as_bytes()))
}

pub enum Client {
    Http {
        base: String,
        http: reqwest::Client,
    },
    /// No node serves the folder: the same router, called in this process (whoever can open
    /// the store needs no token).
    Local {
        repo: Repo,
    },
}

/// An API error answer, kept whole so the CLI can print its code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Client {
    /// Connects to the node serving `data`, or opens its store when no node runs.
    pub async fn connect(data: &Path, keys: &KeySource) -> anyhow::Result<Client> {
        let addr_file = api_addr_path(data);
        if let Some((addr, device)) = read_api_addr(data)
            && let Some(token) = api::auth::read_token(data)
        {
            let base = format!("http://{addr}");
            let bare = reqwest::Client::builder().no_proxy().build()?;
            // The token goes only to a node that proves it holds it, at this very address:
            // after a crash, another program may hold the port `api.addr` names.
            if proves_token(&bare, &base, &addr, &token).await {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(reqwest::header::AUTHORIZATION, v);
                }
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .default_headers(headers)
                    .build()?;
                let status: Option<Value> = match http
                    .get(format!("{base}/v1/status"))
                    .timeout(PROBE_TIMEOUT)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
                // This folder's own node, not another of the same mesh's (they share no token,
                // but a restored copy of the folder would).
                if status.is_some_and(|s| s["device"]["id"].as_str() == Some(device.as_str())) {
                    return Ok(Client::Http { base, http });
                }
            }
        }
        match Repo::open_with(data, keys) {
            Ok(repo) => Ok(Client::Local { repo }),
            Err(OpenError::Locked(_)) => bail!(
                "the store in {} is in use by another process, and no node answered at the address in {}; \
                 if `tillmesh run` is starting, wait a moment; otherwise stop the other process",
                data.display(),
                addr_file.display()
            ),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(serde_json::to_value(body)?))
            .await
    }

    pub async fn put(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.call(Method::PUT, path, Some(serde_json::to_value(body)?))
            .await
    }

    pub async fn patch(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.call(Method::PATCH, path, Some(serde_json::to_value(body)?))
            .await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, bytes) = match self {
            Client::Http { base, http } => {
                let mut req = http.request(method.clone(), format!("{base}{path}"));
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let resp = req.send().await.with_context(|| {
                    format!("the node at {base} did not answer {method} {path}")
                })?;
                (resp.status().as_u16(), resp.bytes().await?.to_vec())
            }
            Client::Local { repo } => {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", "application/json")
                    .body(
                        body.map(|b| Body::from(b.to_string()))
                            .unwrap_or_else(Body::empty),
                    )?;
                let resp = api::router(repo.clone(), None).oneshot(req).await?;
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
                (status, bytes.to_vec())
            }
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if StatusCode::from_u16(status).is_ok_and(|s| s.is_success()) {
            return Ok(value);
        }
        let err = value.get("error");
        Err(ApiFailure {
            status,
            code: err
                .and_then(|e| e.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
            message: err
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        }
        .into())
    }
}
