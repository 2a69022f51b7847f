//! Connecting the bridge to a QuickBooks company: the OAuth 2.0 authorization-code flow.
//!
//! The bridge listens on a loopback port for Intuit's redirect. Against the emulator the
//! consent is given at once (the authorize page redirects straight back), so connecting needs
//! no browser; against Intuit the bridge prints the URL to open and waits for the redirect.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{enc, tokens_from};
use super::state::{Connection, Tokens};
use super::transport::{self, check_url};

/// How long to wait for a person to approve in a browser.
const CONSENT_TIMEOUT: Duration = Duration::from_secs(600);
const SCOPE: &str = "com.intuit.quickbooks.accounting";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("QuickBooks refused the connection: {0}")]
    Refused(String),
    #[error("no approval arrived within {} minutes; run connect again", CONSENT_TIMEOUT.as_secs() / 60)]
    Timeout,
    #[error("the redirect did not carry what it should ({0})")]
    Redirect(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Transport(#[from] super::transport::TransportError),
}

/// Where to find Intuit's (or the emulator's) endpoints, and who the app is.
pub struct App {
    pub base_url: String,
    pub authorize_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub verifier_token: Option<String>,
    /// One more root to trust (`--qbo-ca`): the emulator's CA, or a company proxy's.
    pub ca_file: Option<std::path::PathBuf>,
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find_map(|(k, v)| (k == name).then(|| v.into_owned()))
}

/// A fresh `state` for one authorization: it ties the redirect to the request.
pub fn new_state() -> Result<String, ConnectError> {
    let mut state = [0u8; 12];
    getrandom::fill(&mut state).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(state.iter().map(|b| format!("{b:02x}")).collect())
}

/// Intuit's consent page for this app, coming back to `redirect`.
pub fn authorize_link(app: &App, redirect: &str, state: &str) -> String {
    format!(
        "{}?client_id={}&redirect_uri={}&response_type=code&scope={}&state={}",
        app.authorize_url,
        enc(&app.client_id),
        enc(redirect),
        enc(SCOPE),
        state
    )
}

fn http_client(app: &App) -> Result<reqwest::Client, ConnectError> {
    check_url("the QuickBooks API", &app.base_url)?;
    check_url("the authorize page", &app.authorize_url)?;
    check_url("the token endpoint", &app.token_url)?;
    Ok(transport::client(
        app.ca_file.as_deref(),
        Duration::from_secs(30),
    )?)
}

/// Runs the flow; returns the connection and the first tokens.
pub async fn connect(app: &App) -> Result<(Connection, Tokens), ConnectError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect = format!("http://{}/callback", listener.local_addr()?);
    let state = new_state()?;
    let url = authorize_link(app, &redirect, &state);
    let http = http_client(app)?;
    let unreachable = |e: reqwest::Error| ConnectError::Unreachable {
        url: app.authorize_url.clone(),
        detail: e.to_string(),
    };
    let resp = http.get(&url).send().await.map_err(unreachable)?;
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let query = match location.filter(|l| l.starts_with(&redirect)) {
        // Approved at once (the emulator).
        Some(l) => l
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default(),
        None => {
            println!("Open this address in a browser and approve the connection:\n{url}");
            let accepted = tokio::time::timeout(CONSENT_TIMEOUT, listener.accept())
                .await
                .map_err(|_| ConnectError::Timeout)??;
            let (mut sock, _) = accepted;
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await?;
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nConnected; you can close this page.\n")
                .await;
            head.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|p| p.split_once('?'))
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default()
        }
    };
    finish(app, &query, &state, &redirect).await
}

/// The redirect's query checked against the `state` sent, and its code exchanged for tokens.
pub async fn finish(
    app: &App,
    query: &str,
    state: &str,
    redirect: &str,
) -> Result<(Connection, Tokens), ConnectError> {
    if let Some(err) = param(query, "error") {
        return Err(ConnectError::Refused(err));
    }
    if param(query, "state").as_deref() != Some(state) {
        return Err(ConnectError::Redirect("state does not match".into()));
    }
    let code = param(query, "code").ok_or_else(|| ConnectError::Redirect("no code".into()))?;
    let realm =
        param(query, "realmId").ok_or_else(|| ConnectError::Redirect("no realmId".into()))?;
    let resp = http_client(app)?
        .post(&app.token_url)
        .basic_auth(&app.client_id, Some(&app.client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            enc(&code),
            enc(redirect)
        ))
        .send()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: app.token_url.clone(),
            detail: e.to_string(),
        })?;
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    let tokens = tokens_from(&answer).ok_or_else(|| {
        ConnectError::Refused(
            answer["error"]
                .as_str()
                .unwrap_or("the token endpoint gave no tokens")
                .to_owned(),
        )
    })?;
    Ok((
        Connection {
            base_url: app.base_url.clone(),
            authorize_url: Some(app.authorize_url.clone()),
            token_url: app.token_url.clone(),
            realm_id: realm,
            client_id: app.client_id.clone(),
            client_secret: app.client_secret.clone(),
            verifier_token: app.verifier_token.clone(),
            ca_file: app.ca_file.clone(),
        },
        tokens,
    ))
}

impl App {
    /// The app a stored connection was made with, to connect again.
    pub fn of(c: &Connection) -> App {
        App {
            authorize_url: c
                .authorize_url
                .clone()
                .unwrap_or_else(|| format!("{}/connect/oauth2", c.base_url.trim_end_matches('/'))),
            base_url: c.base_url.clone(),
            token_url: c.token_url.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            verifier_token: c.verifier_token.clone(),
            ca_file: c.ca_file.clone(),
        }
    }
}
