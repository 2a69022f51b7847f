//! The node itself: status, mesh settings, and the stream of every document change.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::{AppState, Body, present};
use crate::repo::requests::SetTaxRate;
use crate::repo::{Command, Repo};

/// Rejected entries listed in the status; the rest are counted.
const STATUS_REJECTED_SHOWN_MAX: usize = 20;

pub async fn status(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let repo = &app.repo;
    let id = repo.identity();
    let vv = repo.version_vector()?;
    let counts = repo.counts()?;
    let (rejected_total, recent) = repo.rejected(STATUS_REJECTED_SHOWN_MAX)?;
    let (undone_total, undone) = repo.undone(STATUS_REJECTED_SHOWN_MAX)?;
    let mut alerts: Vec<Value> = repo.quarantined()?.iter().map(|q| json!({
        "kind": "fork",
        "device_id": q.device_id,
        "seq": q.seq,
        "message": format!("device {} signed two different entries {}; it is quarantined: revoke it with `tillmesh revoke`", q.device_id, q.seq),
    })).collect();
    // Every product's level against its alert (a shop's catalogue: thousands at most).
    for (id, p) in repo.list(tillmesh_protocol::DocType::Product, None, usize::MAX)? {
        alerts.extend(super::catalog::stock_alert(&id.to_string(), &p));
    }
    Ok(Json(json!({
        "device": { "id": id.device_id, "name": id.device_name },
        "mesh_id": id.mesh_id,
        "owner": id.root_id,
        "version_vector": vv.iter().map(|(a, s)| (a.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "entries": vv.total(),
        "documents": counts.iter().map(|(t, n)| (t.name().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "role": repo.role().map(|r| r.name()),
        "rejected": { "count": rejected_total, "recent": recent },
        // Entries held but not applied because the membership says they do not stand (a
        // revocation or role change that arrived after them): the documents they touched were
        // rebuilt without them, the same on every node.
        "undone": { "count": undone_total, "recent": undone },
        // Forks: a device signed two different entries at one position of its log (stolen,
        // cloned or broken). Its entries are refused until an admin revokes it.
        "alerts": alerts,
        "network": app.network.as_ref().map(|n| n.status()),
        "store": { "bytes": repo.store_bytes() },
    })))
}

pub async fn settings(State(repo): State<Repo>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(repo.settings()?).unwrap_or_default(),
    ))
}

pub async fn set_tax_rate(
    State(repo): State<Repo>,
    Path(code): Path<String>,
    Body(rate): Body<SetTaxRate>,
) -> Result<Json<Value>, ApiError> {
    let w = repo.execute(Command::SetTaxRate { code, rate }).await?;
    Ok(Json(present(&w.doc_id, &w.doc)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTimeZone {
    time_zone: String,
}

pub async fn set_time_zone(
    State(repo): State<Repo>,
    Body(body): Body<SetTimeZone>,
) -> Result<Json<Value>, ApiError> {
    let w = repo.execute(Command::SetTimeZone(body.time_zone)).await?;
    Ok(Json(present(&w.doc_id, &w.doc)))
}

/// Server-sent events: one `change` event per document changed, local or remote, after it is
/// committed. A subscriber too slow to keep up gets a `lagged` event and should re-read.
pub async fn events(
    State(repo): State<Repo>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = repo.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => {
                let doc = present(&e.doc_id, &e.doc);
                let mut data = json!({ "doc_id": e.doc_id, "type": e.doc_type, "origin": e.origin, "author": e.author, "seq": e.seq, "doc": doc });
                if e.doc_type == tillmesh_protocol::DocType::Product
                    && let Some(alert) = super::catalog::stock_alert(&e.doc_id.to_string(), &e.doc)
                {
                    data["alert"] = alert;
                }
                Event::default().event("change").data(data.to_string())
            }
            Err(RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(json!({ "missed": n }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /metrics`: the Prometheus text format (OpenMetrics), behind the token like the rest.
pub async fn metrics(State(repo): State<Repo>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (rejected, _) = repo.rejected(0)?;
    let m = repo.metrics();
    m.rejected_stored.set(rejected as i64);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response())
}
