//! API errors: `{"error": {"code": "...", "message": "..."}}` with the fitting HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tillmesh_protocol::SchemaError;

use crate::repo::{ReadError, WriteError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} does not exist"),
        )
    }
}

impl ApiError {
    /// The error as the API shows it: `{"code", "message"}`.
    pub fn body(&self) -> serde_json::Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.body() });
        (self.status, Json(body)).into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            WriteError::Invalid(SchemaError::Underpaid { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "underpaid")
            }
            WriteError::Invalid(SchemaError::Immutable(_)) => (StatusCode::CONFLICT, "immutable"),
            WriteError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            WriteError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            WriteError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            WriteError::UnknownProduct(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_product"),
            WriteError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            WriteError::OutOfStock { .. } => (StatusCode::CONFLICT, "out_of_stock"),
            WriteError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            WriteError::NotAdmitted => (StatusCode::FORBIDDEN, "not_admitted"),
            WriteError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            WriteError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_error"),
            WriteError::Damaged(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_damaged"),
            WriteError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            WriteError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_error",
            e.to_string(),
        )
    }
}
