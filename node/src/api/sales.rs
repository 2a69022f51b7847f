//! Sales: ring up, list, read, void, refund.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use tillmesh_protocol::DocType;

use super::error::ApiError;
use super::{AppState, Body, fetch, parse_id, present};
use crate::net::rights::{self, Unreached};
use crate::repo::requests::{NewSale, RefundSale, VoidSale};
use crate::repo::{Command, Repo, WriteError};

/// Strict products one sale asks peers for, one after another.
const ASKS_PER_SALE_MAX: usize = 4;

/// Rings up a sale. Short of rights to a strict product, the till asks the connected devices
/// that hold some (`net::rights`), waits for their transfers (bounded), and tries again (for
/// each strict product it is short of, up to a few); a till that reaches none says it is
/// offline and who holds the rest.
pub async fn create(
    State(app): State<AppState>,
    Body(s): Body<NewSale>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let repo = &app.repo;
    let mut asks = 0;
    let w = loop {
        let (message, product, short) = match repo.execute(Command::Sell(s.clone())).await {
            Err(WriteError::OutOfStock {
                message,
                product,
                short,
            }) => (message, product, short),
            other => break other?,
        };
        let refused = |why: &str| -> ApiError {
            WriteError::OutOfStock {
                message: format!("{message}{why}"),
                product,
                short,
            }
            .into()
        };
        let Some(network) = &app.network else {
            return Err(refused(
                "; this node runs without a network, so it sells only the rights it holds",
            ));
        };
        if asks == ASKS_PER_SALE_MAX {
            return Err(refused(""));
        }
        asks += 1;
        if asks == 1 {
            network.rights.waited();
        }
        network.rights.sold([product]);
        let reserve = network.rights.reserve();
        if let Err(why) = rights::ask(repo, network, product, short, reserve).await {
            return Err(refused(match why {
                Unreached::Offline => {
                    "; none of them is connected now (this till is offline from them), so it sells only the rights it holds"
                }
                Unreached::NoHolder => "",
                Unreached::NoAnswer => {
                    "; none of them answered in time (this till may be offline from them), so it sells only the rights it holds"
                }
                Unreached::Short => "; the devices asked gave too few (they sold them meanwhile)",
            }));
        }
    };
    if let Some(network) = &app.network {
        // Its strict products: this till keeps a reserve of them from now on.
        let strict = w.doc["lines"].as_array().into_iter().flatten();
        network.rights.sold(
            strict
                .filter(|l| l["strict"] == true)
                .filter_map(|l| l["product_id"].as_str()?.parse().ok()),
        );
    }
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
