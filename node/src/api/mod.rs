//! The local HTTP API a till's user interface talks to: JSON in and out, on loopback.
//!
//! Resources live in one module each: `catalog` (products, stock adjustments), `sales`,
//! `customers`, `node` (status, settings, the event stream). Every error is
//! `{"error": {"code", "message"}}`; see `error`.

pub mod auth;
mod catalog;
mod conflicts;
mod console;
mod customers;
pub mod error;
mod finance;
mod members;
mod node;
mod sales;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Query, Request};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};
use tillmesh_protocol::{DocId, DocType};

use crate::net::Network;
use crate::repo::Repo;
use error::ApiError;

/// Request bodies larger than this are refused before parsing.
const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Page size of listings when the caller gives none.
const LIST_LIMIT_DEFAULT: usize = 50;

/// What the handlers share: the repo, and the network when the node runs one.
#[derive(Clone)]
pub struct AppState {
    pub repo: Repo,
    pub network: Option<Network>,
}

impl FromRef<AppState> for Repo {
    fn from_ref(state: &AppState) -> Repo {
        state.repo.clone()
    }
}

/// `GET /metrics` alone, for `tillmesh run --metrics ADDR`: a scraper's own address.
pub fn metrics_router(repo: Repo) -> Router {
    Router::new()
        .route("/metrics", get(node::metrics))
        .with_state(AppState {
            repo,
            network: None,
        })
}

pub fn router(repo: Repo, network: Option<Network>) -> Router {
    Router::new()
        .route("/v1/products", post(catalog::create).get(catalog::list))
        .route("/v1/products/{id}", get(catalog::get).patch(catalog::patch))
        .route("/v1/stock-adjustments", post(catalog::adjust))
        .route("/v1/stock-transfers", post(catalog::give_rights))
        .route("/v1/stock-reclaims", post(catalog::reclaim_rights))
        .route("/v1/sales", post(sales::create).get(sales::list))
        .route("/v1/sales/{id}", get(sales::get))
        .route("/v1/sales/{id}/void", post(sales::void))
        .route("/v1/sales/{id}/refund", post(sales::refund))
        .route(
            "/v1/customers",
            post(customers::create).get(customers::list),
        )
        .route(
            "/v1/customers/{id}",
            get(customers::get).patch(customers::patch),
        )
        .route(
            "/v1/vendors",
            post(finance::create_vendor).get(finance::list(DocType::Vendor)),
        )
        .route(
            "/v1/vendors/{id}",
            get(finance::get(DocType::Vendor)).patch(finance::patch_vendor),
        )
        .route(
            "/v1/invoices",
            post(finance::create_invoice).get(finance::list(DocType::Invoice)),
        )
        .route("/v1/invoices/{id}", get(finance::get(DocType::Invoice)))
        .route(
            "/v1/payments",
            post(finance::record_payment).get(finance::list(DocType::Payment)),
        )
        .route("/v1/payments/{id}", get(finance::get(DocType::Payment)))
        .route(
            "/v1/expenses",
            post(finance::record_expense).get(finance::list(DocType::Expense)),
        )
        .route(
            "/v1/expenses/{id}",
            get(finance::get(DocType::Expense)).patch(finance::patch_expense),
        )
        .route("/v1/settings", get(node::settings))
        .route("/v1/settings/tax-rates/{code}", put(node::set_tax_rate))
        .route("/v1/settings/time-zone", put(node::set_time_zone))
        .route("/v1/status", get(node::status))
        .route("/v1/members", get(members::list).post(members::add))
        .route("/v1/members/{who}/revoke", post(members::revoke))
        .route("/v1/members/{who}/role", put(members::set_role))
        .route("/v1/invites", post(members::invite))
        .route("/v1/rejected", get(members::rejected))
        .route("/v1/conflicts", get(conflicts::list))
        .route("/v1/conflicts/resolve", post(conflicts::resolve))
        .route("/v1/events", get(node::events))
        .route("/metrics", get(node::metrics))
        .route(auth::CONSOLE_PAGE_PATH, get(console::page))
        .route(auth::CONSOLE_SCRIPT_PATH, get(console::script))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the API section of the README",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(AppState { repo, network })
}

/// A JSON body whose errors come back in the API's error shape, naming what is wrong.
/// An empty body reads as `{}`, so `POST /v1/sales/{id}/void` needs none.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // JSON only: a page's `text/plain` form post (which needs no preflight) is not a body.
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                e.status(),
                "bad_body",
                format!("could not read the request body (at most {BODY_BYTES_MAX} bytes): {e}"),
            )
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if json.as_deref() != Some("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON, sent as `Content-Type: application/json` (it came as {})",
                    json.as_deref().unwrap_or("no type")
                ),
            ));
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(Body).map_err(|e| {
            let kind = if e.is_syntax() || e.is_eof() {
                "invalid_json"
            } else {
                "bad_request"
            };
            let what = if kind == "invalid_json" {
                "the body is not valid JSON"
            } else {
                "the body does not fit this endpoint"
            };
            ApiError::new(StatusCode::BAD_REQUEST, kind, format!("{what}: {e}"))
        })
    }
}

pub(crate) fn parse_id(s: &str) -> Result<DocId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("bad id: {e}")))
}

/// `?limit=&after=` of listings: `after` is the last id of the previous page.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

pub(crate) fn page_query(uri: &Uri) -> Result<(usize, Option<DocId>), ApiError> {
    let Query(page) = Query::<Page>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let limit = page.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > crate::repo::LIST_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            crate::repo::LIST_LIMIT_MAX
        )));
    }
    let after = page
        .after
        .filter(|a| !a.is_empty())
        .map(|a| parse_id(&a))
        .transpose()?;
    Ok((limit, after))
}

/// A stored document as the API shows it: `id` first, then its fields, without the storage
/// keys `type` and `schema`. QBO's total and tax (the ledger's) win over the till's, which
/// show as `till_total` and `till_tax`.
pub fn present(id: &DocId, json: &Json) -> Json {
    let mut out = Map::new();
    out.insert("id".into(), Json::String(id.to_string()));
    if let Some(fields) = json.as_object() {
        for (k, v) in fields {
            if k != "type" && k != "schema" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for field in ["total", "tax"] {
        if let Some(ledger) = out.get("ledger").and_then(|l| l.get(field)).cloned()
            && out.get(field).is_some_and(|till| *till != ledger)
            && let Some(till) = out.insert(field.into(), ledger)
        {
            out.insert(format!("till_{field}"), till);
        }
    }
    Json::Object(out)
}

/// Fetches one document of a type, or a 404 naming it.
pub(crate) fn fetch(repo: &Repo, doc_type: DocType, id: &str) -> Result<(DocId, Json), ApiError> {
    let id = parse_id(id)?;
    match repo.view(&id)? {
        Some(json) if json.get("type").and_then(Json::as_str) == Some(doc_type.name()) => {
            Ok((id, present(&id, &json)))
        }
        _ => Err(ApiError::not_found(doc_type.name(), id)),
    }
}

/// A patch's answer: the document as it now is. A patch that changed nothing wrote no entry,
/// so that is the stored document.
pub(crate) fn patched(
    repo: &Repo,
    doc_type: DocType,
    w: crate::repo::Written,
) -> Result<Json, ApiError> {
    if w.doc.is_null() {
        return fetch(repo, doc_type, &w.doc_id.to_string()).map(|(_, v)| v);
    }
    Ok(present(&w.doc_id, &w.doc))
}

pub(crate) fn list(repo: &Repo, doc_type: DocType, uri: &Uri) -> Result<Json, ApiError> {
    let (limit, after) = page_query(uri)?;
    let items = repo.list(doc_type, after, limit)?;
    let next_after = (items.len() == limit)
        .then(|| items.last().map(|(id, _)| id.to_string()))
        .flatten();
    Ok(serde_json::json!({
        "items": items.iter().map(|(id, j)| present(id, j)).collect::<Vec<_>>(),
        "next_after": next_after,
    }))
}
