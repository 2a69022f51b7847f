//! Conflicts for people to review, and settling the ones a person decides.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tillmesh_protocol::{DocId, DocType};

use super::error::ApiError;
use super::{Body, fetch, present};
use crate::repo::{Command, Repo, member_name};

/// Documents of each resolvable type looked at for field conflicts (see
/// `Repo::field_conflicts`): a shop's customers and catalogue, with room to spare.
const FIELD_SCAN_DOCS_MAX: usize = 20_000;
/// Fields settled by one `POST /v1/conflicts/resolve` (bulk resolve from the console).
const RESOLUTIONS_MAX: usize = 500;

/// What people should review, newest first:
/// - `field`: devices set a field of a customer, vendor or product concurrently; every value
///   with who set it and when, and the one shown now (settled with `POST
///   /v1/conflicts/resolve`);
/// - `oversold`: a tracked product's level is below zero (tills sold apart what one had);
/// - `qbo_total`: QuickBooks holds another total than the till rang up (an accountant's edit, a
///   void or a deletion in QuickBooks); QuickBooks' figure wins in every view;
/// - `void_and_refund`: one till voided the sale while another refunded it, apart; the refunds
///   stand, the void gives back only the rest (see `Sale::stock_moves`), and this shows what
///   each till did.
pub async fn list(State(repo): State<Repo>) -> Result<Json<Value>, ApiError> {
    // Every part reads the store at length: off the async threads, which serve the API and
    // the network.
    let out = tokio::task::spawn_blocking(move || {
        let mut out = field_and_stock(&repo)?;
        out.extend(sale_conflicts(&repo)?);
        Ok::<_, ApiError>(out)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("listing conflicts failed: {e}"),
        )
    })??;
    Ok(Json(serde_json::json!({ "conflicts": out })))
}

/// Sales voided and refunded apart, and sales whose QuickBooks total overrode the till's.
fn sale_conflicts(repo: &Repo) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = repo.list(DocType::Sale, before, crate::repo::LIST_LIMIT_MAX)?;
        let Some(last) = page.last() else { break };
        before = Some(last.0);
        let n = page.len();
        for (id, view) in &page {
            let shown = super::present(id, view);
            if shown["void"].is_object()
                && shown["refunds"].as_array().is_some_and(|r| !r.is_empty())
            {
                out.push(void_and_refund(repo, id, &shown)?);
            }
            if let Some(till_total) = shown.get("till_total") {
                out.push(serde_json::json!({
                    "kind": "qbo_total",
                    "sale_id": id,
                    "receipt_number": shown["receipt_number"],
                    "till_total": till_total,
                    "qbo_total": shown["total"],
                    "qbo_id": shown["ledger"]["qbo_id"],
                    "pulled_at_ms": shown["ledger"]["pulled_at_ms"],
                }));
            }
        }
        if n < crate::repo::LIST_LIMIT_MAX {
            break;
        }
    }
    Ok(out)
}

/// A sale voided on one till and refunded on another: the void, and each refund as its till
/// recorded it.
fn void_and_refund(repo: &Repo, id: &DocId, sale: &Value) -> Result<Value, ApiError> {
    let mut refunds = Vec::new();
    for r in sale["refunds"].as_array().into_iter().flatten() {
        let refund_id = r["refund_id"].as_str().unwrap_or_default();
        // A refund whose own document has not arrived yet shows what the sale recorded.
        let refund = fetch(repo, DocType::Refund, refund_id)
            .map(|(_, v)| v)
            .unwrap_or(Value::Null);
        refunds.push(serde_json::json!({
            "refund_id": refund_id,
            "by": refund["by"],
            "at_ms": refund["at_ms"],
            "total": refund["total"],
            "restock": refund["restock"],
            "lines": r["lines"],
        }));
    }
    Ok(serde_json::json!({
        "kind": "void_and_refund",
        "sale_id": id,
        "receipt_number": sale["receipt_number"],
        "status": sale["status"],
        "void": sale["void"],
        "refunds": refunds,
        "resolution": "the refunds stand; the void gave back only what they did not",
    }))
}

/// Field conflicts and oversold products: read from the store, off the async threads.
fn field_and_stock(repo: &Repo) -> Result<Vec<Value>, ApiError> {
    let membership = repo.membership();
    let me = repo.identity();
    // The owner is known to the membership by key alone; this device knows its own name.
    let name_of = |d: &tillmesh_protocol::DeviceId| {
        if *d == me.device_id {
            me.device_name.clone()
        } else {
            member_name(&membership, d)
        }
    };
    let mut out = Vec::new();
    for (id, doc_type, fields) in repo.field_conflicts(FIELD_SCAN_DOCS_MAX)? {
        let view = repo.view(&id)?.unwrap_or(Value::Null);
        let name = view
            .get("display_name")
            .or_else(|| view.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        // QuickBooks' figures (the ledger, written by the bridge alone) are not a person's
        // pick; a pick there would be refused, so it is not offered.
        for f in fields.into_iter().filter(|f| f.path[0] != "ledger") {
            let values: Vec<Value> = f
                .values
                .iter()
                .map(|v| {
                    json!({
                        "value": v.value,
                        "device_id": v.device,
                        "device_name": v.device.map(|d| name_of(&d)),
                        "at_ms": v.at_s.map(|s| s.saturating_mul(1000)),
                        "shown": v.shown,
                    })
                })
                .collect();
            out.push(json!({
                "kind": "field",
                "doc_id": id,
                "doc_type": doc_type,
                "name": name,
                "path": f.path,
                "values": values,
                "resolution": "pick a value: POST /v1/conflicts/resolve (a manager, an admin or the owner)",
            }));
        }
    }
    for (id, p) in repo.list(DocType::Product, None, usize::MAX)? {
        let stock = p.get("stock").and_then(Value::as_i64).unwrap_or(0);
        if stock < 0 {
            out.push(json!({
                "kind": "oversold",
                "product_id": id,
                "sku": p["sku"],
                "name": p["name"],
                "stock": stock,
                "resolution": "tills sold apart more than the shop had: count the shelf and adjust the stock (or make the product strict)",
            }));
        }
    }
    Ok(out)
}

/// `POST /v1/conflicts/resolve`: `{"resolutions": [{"doc_id", "path", "value"}]}`, each a
/// signed entry of its own. Answers, for each, the value the field showed before (what an
/// undo writes back) or why it could not be settled; the others are settled regardless.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    resolutions: Vec<Resolution>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolution {
    doc_id: DocId,
    path: Vec<String>,
    value: Value,
}

pub async fn resolve(
    State(repo): State<Repo>,
    Body(body): Body<Resolve>,
) -> Result<Json<Value>, ApiError> {
    if body.resolutions.is_empty() || body.resolutions.len() > RESOLUTIONS_MAX {
        return Err(ApiError::bad_request(format!(
            "resolutions must hold 1 to {RESOLUTIONS_MAX} picks"
        )));
    }
    let mut results = Vec::with_capacity(body.resolutions.len());
    let mut settled = 0usize;
    for r in body.resolutions {
        let previous = repo
            .view(&r.doc_id)?
            .map(|v| r.path.iter().fold(&v, |at, k| &at[k.as_str()]).clone());
        let done = repo
            .execute(Command::ResolveField {
                doc_id: r.doc_id,
                path: r.path.clone(),
                value: r.value.clone(),
            })
            .await;
        results.push(match done {
            Ok(w) => {
                settled += 1;
                json!({
                    "doc_id": r.doc_id, "path": r.path, "value": r.value,
                    "previous": previous, "seq": w.seq,
                    "doc": present(&w.doc_id, &w.doc),
                })
            }
            Err(e) => {
                let e = ApiError::from(e);
                json!({ "doc_id": r.doc_id, "path": r.path, "error": e.body() })
            }
        });
    }
    Ok(Json(json!({ "settled": settled, "results": results })))
}
