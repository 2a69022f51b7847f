//! Products and stock adjustments.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{Body, fetch, parse_id, patched, present};
use crate::repo::requests::{NewProduct, NewStockAdjustment, ProductPatch};
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

pub async fn get(
    State(repo): State<Repo>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    fetch(&repo, DocType::Product, &id).map(|(_, v)| Json(v))
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
