//! Customers: descriptive fields that merge one by one across devices.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{Body, fetch, parse_id, patched, present};
use crate::repo::requests::{CustomerPatch, NewCustomer};
use crate::repo::{Command, Repo};

pub async fn create(
    State(repo): State<Repo>,
    Body(c): Body<NewCustomer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = repo.execute(Command::CreateCustomer(c)).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

pub async fn list(State(repo): State<Repo>, uri: Uri) -> Result<Json<Value>, ApiError> {
    super::list(&repo, DocType::Customer, &uri).map(Json)
}

pub async fn get(
    State(repo): State<Repo>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    fetch(&repo, DocType::Customer, &id).map(|(_, v)| Json(v))
}

pub async fn patch(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(p): Body<CustomerPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let w = repo
        .execute(Command::PatchCustomer { id, patch: p })
        .await?;
    patched(&repo, DocType::Customer, w).map(Json)
}
