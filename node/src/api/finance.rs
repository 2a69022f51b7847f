//! The back office's documents: vendors, invoices, payments received and expenses paid.
//! Each is created once and never edited here; QuickBooks' figures come back in its `ledger`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{Body, fetch, parse_id, patched, present};
use crate::repo::requests::{
    CustomerPatch, ExpensePatch, NewExpense, NewInvoice, NewPayment, NewVendor,
};
use crate::repo::{Command, Repo};

async fn created(repo: &Repo, command: Command) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = repo.execute(command).await?;
    Ok((StatusCode::CREATED, Json(present(&w.doc_id, &w.doc))))
}

pub async fn create_vendor(
    State(repo): State<Repo>,
    Body(v): Body<NewVendor>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    created(&repo, Command::CreateVendor(v)).await
}

pub async fn create_invoice(
    State(repo): State<Repo>,
    Body(i): Body<NewInvoice>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    created(&repo, Command::CreateInvoice(i)).await
}

pub async fn record_payment(
    State(repo): State<Repo>,
    Body(p): Body<NewPayment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    created(&repo, Command::RecordPayment(p)).await
}

pub async fn record_expense(
    State(repo): State<Repo>,
    Body(e): Body<NewExpense>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    created(&repo, Command::RecordExpense(e)).await
}

/// `GET /v1/{vendors|invoices|payments|expenses}`.
pub fn list(
    doc_type: DocType,
) -> impl Fn(State<Repo>, Uri) -> std::future::Ready<Result<Json<Value>, ApiError>> + Clone {
    move |State(repo), uri| std::future::ready(super::list(&repo, doc_type, &uri).map(Json))
}

/// `GET /v1/{vendors|invoices|payments|expenses}/{id}`.
pub fn get(
    doc_type: DocType,
) -> impl Fn(State<Repo>, Path<String>) -> std::future::Ready<Result<Json<Value>, ApiError>> + Clone
{
    move |State(repo), Path(id)| {
        std::future::ready(fetch(&repo, doc_type, &id).map(|(_, v)| Json(v)))
    }
}

/// A vendor's descriptive fields, as a customer's (`PATCH /v1/customers/{id}`).
pub async fn patch_vendor(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(p): Body<CustomerPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let w = repo.execute(Command::PatchVendor { id, patch: p }).await?;
    patched(&repo, DocType::Vendor, w).map(Json)
}

/// An expense's memo (`{"memo": "..."}`, `null` clears it); its money never changes in place.
pub async fn patch_expense(
    State(repo): State<Repo>,
    Path(id): Path<String>,
    Body(p): Body<ExpensePatch>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let w = repo.execute(Command::PatchExpense { id, patch: p }).await?;
    patched(&repo, DocType::Expense, w).map(Json)
}
