//! Products and stock adjustments.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::{Value, json};
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{Body, fetch, parse_id, patched, present};
use crate::repo::requests::{GiveRights, NewProduct, NewStockAdjustment, ProductPatch};
use crate::repo::{Command, Repo};

pub async fn create(
    State(repo): State<Repo>,
    Body(p): Body<NewProduct>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = repo.execute(Command::CreateProduct(p)).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

pub async fn list(State(repo): State<Repo>, uri: Uri) -> Result<Json<Value>, ApiError> {
    super::list(&repo, DocType::Product, &uri).map(Json)
}

/// The alert a product's level raises: below zero (a tracked product oversold, or a count
/// that found less), or at or below its `low_stock_at`.
pub(crate) fn stock_alert(id: &str, product: &Value) -> Option<Value> {
    let level = product.get("stock").and_then(Value::as_i64)?;
    let sku = product.get("sku").and_then(Value::as_str).unwrap_or("?");
    let low = product.get("low_stock_at").and_then(Value::as_i64);
    let (kind, message) = if level < 0 {
        (
            "negative_stock",
            format!(
                "{sku} is at {level}: more was sold than the shop had; count it and record a stock adjustment"
            ),
        )
    } else if low.is_some_and(|l| level <= l) {
        ("low_stock", format!("{sku} is down to {level}; reorder"))
    } else {
        return None;
    };
    Some(json!({"kind": kind, "product_id": id, "sku": sku, "level": level, "message": message}))
}

/// A product; a strict one shows who holds the rights to its units.
pub async fn get(
    State(repo): State<Repo>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, mut v) = fetch(&repo, DocType::Product, &id)?;
    if v.get("stock_policy").and_then(Value::as_str) == Some("strict") {
        let rights = repo.rights(&id)?;
        let members = repo.membership();
        let devices: Vec<Value> = rights
            .held
            .iter()
            .map(|(d, units)| {
                json!({
                    "device": d.to_string(),
                    "name": members.get(d).map(|m| m.name.as_str()),
                    "units": units,
                })
            })
            .collect();
        v["rights"] = json!({"devices": devices, "in_transit": rights.in_transit});
    }
    Ok(Json(v))
}

/// A transfer of rights as the API takes it: the receiver by name or id.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTransfer {
    #[serde(default)]
    product_id: Option<tillmesh_protocol::DocId>,
    #[serde(default)]
    sku: Option<String>,
    /// The receiving member's name, device id, or a unique start of its id.
    to: String,
    qty: i64,
}

/// A reclaim as the API takes it: the revoked device by name or id.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReclaim {
    #[serde(default)]
    product_id: Option<tillmesh_protocol::DocId>,
    #[serde(default)]
    sku: Option<String>,
    from: String,
}

/// Takes back the rights a revoked device held to a strict product (admins and the owner).
pub async fn reclaim_rights(
    State(repo): State<Repo>,
    Body(r): Body<NewReclaim>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let from = super::members::resolve(&repo, &r.from)?;
    let product_id = match (r.product_id, r.sku) {
        (Some(id), _) => id,
        (None, Some(sku)) => repo
            .product_by_sku(&sku)?
            .ok_or_else(|| ApiError::not_found("product", &sku))?,
        (None, None) => return Err(ApiError::bad_request("give a product_id or a sku")),
    };
    let w = repo
        .execute(Command::ReclaimRights { product_id, from })
        .await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

/// Gives rights to units of a strict product to another member.
pub async fn give_rights(
    State(repo): State<Repo>,
    Body(t): Body<NewTransfer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let to = super::members::resolve(&repo, &t.to)?;
    let g = GiveRights {
        product_id: t.product_id,
        sku: t.sku,
        to,
        qty: t.qty,
    };
    let w = repo.execute(Command::GiveRights(g)).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

/// Name, price, tax code or active flag (a manager's or an admin's right).
pub async fn patch(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(p): Body<ProductPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let w = repo.execute(Command::PatchProduct { id, patch: p }).await?;
    patched(&repo, DocType::Product, w).map(Json)
}

pub async fn adjust(
    State(repo): State<Repo>,
    Body(a): Body<NewStockAdjustment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = repo.execute(Command::AdjustStock(a)).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}
