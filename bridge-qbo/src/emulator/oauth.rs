//! Intuit's OAuth 2.0 endpoints, emulated: the authorize page (approved at once on this
//! machine), the token endpoint (`authorization_code` and `refresh_token` grants, refresh
//! tokens rotated on every use), revocation, and the discovery document.

use std::collections::HashMap;

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
}

impl TokenError {
    pub fn body(&self) -> Value {
        match self {
            TokenError::Client => json!({"error": "invalid_client"}),
            TokenError::Grant => json!({"error": "invalid_grant"}),
            TokenError::GrantType => json!({"error": "unsupported_grant_type"}),
            TokenError::Request(what) => {
                json!({"error": "invalid_request", "error_description": format!("{what} is missing")})
            }
        }
    }
}

/// Codes and tokens issued, with their expiry (ms). In memory: a restarted emulator asks its
/// clients to connect again, as a revoked app would.
#[derive(Default)]
pub struct Tokens {
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

impl Tokens {
    pub fn new_code(&mut self) -> String {
        let code = random_token("AB11");
        self.codes
            .insert(code.clone(), clock::now_ms() + CODE_TTL_S * 1000);
        code
    }

    fn issue(&mut self) -> Value {
        let now = clock::now_ms();
        let access = random_token("eyJlbmMiOiJBMTI4Q0JDLUhTMjU2");
        let refresh = random_token("AB11");
        self.access
            .insert(access.clone(), now + ACCESS_TTL_S * 1000);
        self.refresh
            .insert(refresh.clone(), now + REFRESH_TTL_S * 1000);
        json!({
            "token_type": "bearer",
            "access_token": access,
            "expires_in": ACCESS_TTL_S,
            "refresh_token": refresh,
            "x_refresh_token_expires_in": REFRESH_TTL_S,
        })
    }

    /// `grant_type=authorization_code`: one use per code.
    pub fn exchange_code(&mut self, code: &str) -> Result<Value, TokenError> {
        match self.codes.remove(code) {
            Some(exp) if exp > clock::now_ms() => Ok(self.issue()),
            _ => Err(TokenError::Grant),
        }
    }

    /// `grant_type=refresh_token`: the old refresh token stops working (rotation).
    pub fn refresh(&mut self, token: &str) -> Result<Value, TokenError> {
        match self.refresh.remove(token) {
            Some(exp) if exp > clock::now_ms() => Ok(self.issue()),
            _ => Err(TokenError::Grant),
        }
    }

    pub fn revoke(&mut self, token: &str) {
        self.access.remove(token);
        self.refresh.remove(token);
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
    pub fn expire(&mut self, refresh_too: bool) {
        let past = clock::now_ms() - 1;
        self.access.values_mut().for_each(|e| *e = past);
        if refresh_too {
            self.refresh.values_mut().for_each(|e| *e = past);
        }
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
        let code = t.new_code();
        let first = t.exchange_code(&code).unwrap();
        assert_eq!(t.exchange_code(&code), Err(TokenError::Grant));
        let access = first["access_token"].as_str().unwrap();
        assert_eq!(t.check(access), None);
        let r1 = first["refresh_token"].as_str().unwrap().to_owned();
        let second = t.refresh(&r1).unwrap();
        assert_eq!(t.refresh(&r1), Err(TokenError::Grant), "rotated");
        assert_eq!(second["expires_in"], 3600);
        t.expire(false);
        assert!(t.check(second["access_token"].as_str().unwrap()).is_some());
        assert!(t.refresh(second["refresh_token"].as_str().unwrap()).is_ok());
    }
}
