//! Intuit's OAuth 2.0 endpoints, emulated: the authorize page (approved at once on this
//! machine), the token endpoint (`authorization_code` and `refresh_token` grants, refresh
//! tokens rotated on every use), revocation, and the discovery document.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use serde_json::{Value, json};

use super::clock;

/// Access tokens last an hour, as Intuit's do.
pub const ACCESS_TTL_S: i64 = 3600;
/// Refresh tokens last 100 days (Intuit's FAQ).
pub const REFRESH_TTL_S: i64 = 8_640_000;
/// An authorization code must be exchanged within 10 minutes.
const CODE_TTL_S: i64 = 600;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    /// `invalid_client`: wrong client id or secret.
    Client,
    /// `invalid_grant`: unknown, used, expired or revoked code or refresh token.
    Grant,
    /// `unsupported_grant_type`.
    GrantType,
    /// `invalid_request`: a field is missing.
    Request(&'static str),
    /// `server_error`: the emulator's store failed.
    Store(String),
}

impl TokenError {
    pub fn body(&self) -> Value {
        match self {
            TokenError::Client => {
                json!({"error": "invalid_client", "error_description": "Client authentication failed"})
            }
            TokenError::Grant => {
                json!({"error": "invalid_grant", "error_description": "Token invalid"})
            }
            TokenError::GrantType => {
                json!({"error": "unsupported_grant_type", "error_description": "grant_type is not supported"})
            }
            TokenError::Store(e) => {
                json!({"error": "server_error", "error_description": format!("the emulator's store failed: {e}")})
            }
            TokenError::Request(what) => {
                json!({"error": "invalid_request", "error_description": format!("{what} is missing")})
            }
        }
    }
}

/// `token` -> `(kind, expiry in ms)`: the tokens issued, so a restarted emulator still
/// honours them, as QBO does across its own restarts.
const TOKENS: TableDefinition<&str, (u8, i64)> = TableDefinition::new("oauth_tokens");
const ACCESS: u8 = 0;
const REFRESH: u8 = 1;

/// Authorization codes waiting to be exchanged, at most. Each lives 10 minutes, so only a
/// client that asks for codes and never exchanges them reaches this.
pub const CODES_MAX: usize = 1000;

/// Codes (in memory only: they live minutes) and tokens issued, with their expiry (ms).
#[derive(Default)]
pub struct Tokens {
    /// `None` in unit tests: memory only.
    db: Option<Arc<Database>>,
    codes: HashMap<String, i64>,
    access: HashMap<String, i64>,
    refresh: HashMap<String, i64>,
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the OS random source failed");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

/// An expired access token is still known for as long again as it lived, so a client is told
/// "Token expired" (and refreshes) rather than "Token invalid"; then it is dropped.
fn access_kept(exp: i64, now: i64) -> bool {
    exp > now - ACCESS_TTL_S * 1000
}

/// What one write to the store does: tokens to add (or re-date) and tokens to drop.
#[derive(Default)]
struct Changes {
    put: Vec<(String, u8, i64)>,
    drop: Vec<String>,
}

impl Tokens {
    /// The tokens kept in `db`, less those long expired.
    pub fn open(db: Arc<Database>) -> Result<Tokens, String> {
        let mut t = Tokens {
            db: None,
            ..Tokens::default()
        };
        let now = clock::now_ms();
        let mut stale = Changes::default();
        {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.open_table(TOKENS).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            let table = tx.open_table(TOKENS).map_err(|e| e.to_string())?;
            for item in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = item.map_err(|e| e.to_string())?;
                let (token, (kind, exp)) = (k.value().to_owned(), v.value());
                match kind {
                    ACCESS if access_kept(exp, now) => {
                        t.access.insert(token, exp);
                    }
                    REFRESH if exp > now => {
                        t.refresh.insert(token, exp);
                    }
                    _ => stale.drop.push(token),
                }
            }
        }
        t.db = Some(db);
        t.store(&stale)?;
        Ok(t)
    }

    /// Writes `changes` in one transaction. Memory changes only after this succeeded, so
    /// what a client was told always matches what a restart finds.
    fn store(&self, changes: &Changes) -> Result<(), String> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        if changes.put.is_empty() && changes.drop.is_empty() {
            return Ok(());
        }
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = tx.open_table(TOKENS).map_err(|e| e.to_string())?;
            for (token, kind, exp) in &changes.put {
                t.insert(token.as_str(), (*kind, *exp))
                    .map_err(|e| e.to_string())?;
            }
            for token in &changes.drop {
                t.remove(token.as_str()).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    fn apply(&mut self, changes: Changes) {
        for token in changes.drop {
            self.access.remove(&token);
            self.refresh.remove(&token);
        }
        for (token, kind, exp) in changes.put {
            if kind == ACCESS {
                self.access.insert(token, exp);
            } else {
                self.refresh.insert(token, exp);
            }
        }
    }

    /// Tokens past keeping, to be dropped with the next write.
    fn expired(&self, now: i64) -> Vec<String> {
        let access = self.access.iter().filter(|(_, e)| !access_kept(**e, now));
        let refresh = self.refresh.iter().filter(|(_, e)| **e <= now);
        access.chain(refresh).map(|(t, _)| t.clone()).collect()
    }

    /// A new authorization code, or `None` when [`CODES_MAX`] are already waiting.
    pub fn new_code(&mut self) -> Option<String> {
        let now = clock::now_ms();
        self.codes.retain(|_, exp| *exp > now);
        if self.codes.len() >= CODES_MAX {
            return None;
        }
        let code = random_token("AB11");
        self.codes.insert(code.clone(), now + CODE_TTL_S * 1000);
        Some(code)
    }

    /// Issues a new pair, dropping `spent` (a refresh token used up) and whatever expired.
    fn issue(&mut self, spent: Option<&str>) -> Result<Value, TokenError> {
        let now = clock::now_ms();
        let access = random_token("eyJlbmMiOiJBMTI4Q0JDLUhTMjU2");
        let refresh = random_token("AB11");
        let mut changes = Changes {
            put: vec![
                (access.clone(), ACCESS, now + ACCESS_TTL_S * 1000),
                (refresh.clone(), REFRESH, now + REFRESH_TTL_S * 1000),
            ],
            drop: self.expired(now),
        };
        changes.drop.extend(spent.map(str::to_owned));
        self.store(&changes).map_err(TokenError::Store)?;
        self.apply(changes);
        Ok(json!({
            "token_type": "bearer",
            "access_token": access,
            "expires_in": ACCESS_TTL_S,
            "refresh_token": refresh,
            "x_refresh_token_expires_in": REFRESH_TTL_S,
        }))
    }

    /// `grant_type=authorization_code`: one use per code.
    pub fn exchange_code(&mut self, code: &str) -> Result<Value, TokenError> {
        match self.codes.remove(code) {
            Some(exp) if exp > clock::now_ms() => self.issue(None),
            _ => Err(TokenError::Grant),
        }
    }

    /// `grant_type=refresh_token`: the old refresh token stops working (rotation).
    pub fn refresh(&mut self, token: &str) -> Result<Value, TokenError> {
        match self.refresh.get(token) {
            Some(exp) if *exp > clock::now_ms() => self.issue(Some(token)),
            _ => Err(TokenError::Grant),
        }
    }

    pub fn revoke(&mut self, token: &str) -> Result<(), TokenError> {
        let changes = Changes {
            put: Vec::new(),
            drop: vec![token.to_owned()],
        };
        self.store(&changes).map_err(TokenError::Store)?;
        self.apply(changes);
        Ok(())
    }

    /// `None` if the access token is good, else why not (for the 401's detail).
    pub fn check(&self, token: &str) -> Option<String> {
        match self.access.get(token) {
            Some(exp) if *exp > clock::now_ms() => None,
            Some(_) => Some(format!("Token expired: {}", &token[..token.len().min(50)])),
            None => Some("Token invalid".into()),
        }
    }

    /// For tests: every access token expires now (`refresh` too if asked).
    pub fn expire(&mut self, refresh_too: bool) -> Result<(), TokenError> {
        let past = clock::now_ms() - 1;
        let mut put: Vec<(String, u8, i64)> = self
            .access
            .keys()
            .map(|t| (t.clone(), ACCESS, past))
            .collect();
        if refresh_too {
            put.extend(self.refresh.keys().map(|t| (t.clone(), REFRESH, past)));
        }
        let changes = Changes {
            put,
            drop: Vec::new(),
        };
        self.store(&changes).map_err(TokenError::Store)?;
        self.apply(changes);
        Ok(())
    }
}

/// The discovery document, with this emulator's URLs in place of Intuit's.
pub fn discovery(base: &str) -> Value {
    json!({
        "issuer": format!("{base}/op/v1"),
        "authorization_endpoint": format!("{base}/connect/oauth2"),
        "token_endpoint": format!("{base}/oauth2/v1/tokens/bearer"),
        "userinfo_endpoint": format!("{base}/v1/openid_connect/userinfo"),
        "revocation_endpoint": format!("{base}/v2/oauth2/tokens/revoke"),
        "jwks_uri": format!("{base}/op/v1/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile", "address", "phone"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": ["aud", "exp", "iat", "iss", "realmid", "sub"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_rotate_and_codes_are_single_use() {
        let mut t = Tokens::default();
        let code = t.new_code().unwrap();
        let first = t.exchange_code(&code).unwrap();
        assert_eq!(t.exchange_code(&code), Err(TokenError::Grant));
        let access = first["access_token"].as_str().unwrap();
        assert_eq!(t.check(access), None);
        let r1 = first["refresh_token"].as_str().unwrap().to_owned();
        let second = t.refresh(&r1).unwrap();
        assert_eq!(t.refresh(&r1), Err(TokenError::Grant), "rotated");
        assert_eq!(second["expires_in"], 3600);
        t.expire(false).unwrap();
        assert!(t.check(second["access_token"].as_str().unwrap()).is_some());
        assert!(t.refresh(second["refresh_token"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn codes_are_capped_and_tokens_outlive_a_restart() {
        let mut t = Tokens::default();
        for _ in 0..CODES_MAX {
            assert!(t.new_code().is_some());
        }
        assert_eq!(t.new_code(), None, "capped");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let mut t = Tokens::open(db).unwrap();
        let code = t.new_code().unwrap();
        let first = t.exchange_code(&code).unwrap();
        drop(t);
        let mut t = Tokens::open(Arc::new(Database::create(&path).unwrap())).unwrap();
        assert_eq!(t.check(first["access_token"].as_str().unwrap()), None);
        let r = first["refresh_token"].as_str().unwrap();
        let second = t.refresh(r).unwrap();
        drop(t);
        let mut t = Tokens::open(Arc::new(Database::create(&path).unwrap())).unwrap();
        assert_eq!(
            t.refresh(r),
            Err(TokenError::Grant),
            "rotated, across restarts"
        );
        assert!(t.refresh(second["refresh_token"].as_str().unwrap()).is_ok());
    }
}
