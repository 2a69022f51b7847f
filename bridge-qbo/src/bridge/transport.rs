//! How the bridge reaches QuickBooks: HTTPS through rustls, trusting the platform's roots
//! (Intuit's certificates chain to public CAs) and, with `--qbo-ca FILE`, one more root, for
//! the emulator or a company proxy. Plain `http://` only to loopback, where nothing crosses a
//! network: OAuth tokens and the books never travel in the clear.

use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "{what} {url} is plain http:// to another machine: tokens and the books would cross the network in the clear; use its https:// address (plain http is allowed to 127.0.0.1 and localhost only)"
    )]
    PlainHttp { what: &'static str, url: String },
    #[error("{what} {url} is not an http(s) URL: write it like https://quickbooks.api.intuit.com")]
    NotAUrl { what: &'static str, url: String },
    #[error("the CA file {path} (--qbo-ca) could not be used: {detail}")]
    CaFile { path: String, detail: String },
    #[error("the HTTPS client could not be built: {0}")]
    Client(String),
}

/// Refuses a URL the bridge must not send tokens to: `https://` anywhere, `http://` to
/// loopback only.
pub fn check_url(what: &'static str, url: &str) -> Result<(), TransportError> {
    // Parsed as the HTTP client parses it, so the host checked is the host reached.
    let parsed = url::Url::parse(url.trim()).map_err(|_| TransportError::NotAUrl {
        what,
        url: url.to_owned(),
    })?;
    let plain = || TransportError::PlainHttp {
        what,
        url: url.to_owned(),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            // A user name or password in the URL would cross in the clear too.
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(plain());
            }
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback { Ok(()) } else { Err(plain()) }
        }
        _ => Err(TransportError::NotAUrl {
            what,
            url: url.to_owned(),
        }),
    }
}

/// An HTTP client for QuickBooks' API and OAuth endpoints. Redirects are never followed: the
/// OAuth flow reads them, and the API does not send them.
pub fn client(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, TransportError> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    if let Some(path) = ca_file {
        let bad = |detail: String| TransportError::CaFile {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| TransportError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("QBO", "https://quickbooks.api.intuit.com").is_ok());
        assert!(check_url("QBO", "http://127.0.0.1:7430").is_ok());
        assert!(check_url("QBO", "http://localhost:7430/v3").is_ok());
        assert!(check_url("QBO", "http://[::1]:7430").is_ok());
        let e = check_url("QBO", "http://quickbooks.api.intuit.com").unwrap_err();
        assert!(e.to_string().contains("in the clear"), "{e}");
        assert!(check_url("QBO", "http://10.0.0.5:80").is_err());
        assert!(check_url("QBO", "http://127.0.0.1.evil.example").is_err());
        assert!(check_url("QBO", "HTTP://quickbooks.api.intuit.com").is_err());
        assert!(check_url("QBO", "HTTPS://quickbooks.api.intuit.com").is_ok());
        // Whatever comes before an `@` is a user name: the host is after it.
        assert!(check_url("QBO", "http://127.0.0.1:1@evil.example/").is_err());
        assert!(check_url("QBO", "http://[::1]@evil.example/").is_err());
        assert!(check_url("QBO", "http://localhost@evil.example/").is_err());
        assert!(check_url("QBO", "ftp://x").is_err());
        assert!(check_url("QBO", "quickbooks").is_err());
    }
}
