//! Sales: ring up, list, read, void, refund.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{Body, fetch, parse_id, present};
use crate::repo::requests::{NewSale, RefundSale, VoidSale};
use crate::repo::{Command, Repo};

pub async fn create(
    State(repo): State<Repo>,
    Body(s): Body<NewSale>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = repo.execute(Command::Sell(s)).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

pub async fn list(State(repo): State<Repo>, uri: Uri) -> Result<Json<Value>, ApiError> {
    super::list(&repo, DocType::Sale, &uri).map(Json)
}

pub async fn get(
    State(repo): State<Repo>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    fetch(&repo, DocType::Sale, &id).map(|(_, v)| Json(v))
}

/// Answers with the voided sale.
pub async fn void(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(v): Body<VoidSale>,
) -> Result<Json<Value>, ApiError> {
    let sale_id = parse_id(&id)?;
    let w = repo
        .execute(Command::Void {
            sale_id,
            request: v,
        })
        .await?;
    Ok(Json(present(&w.doc_id, &w.doc)))
}

/// Answers 201 with the new refund document; the sale records it too.
pub async fn refund(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(r): Body<RefundSale>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let sale_id = parse_id(&id)?;
    let w = repo
        .execute(Command::Refund {
            sale_id,
            request: r,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}
