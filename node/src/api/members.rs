//! The mesh's membership: who belongs, with which role; invites, role changes, revocations.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tillmesh_protocol::membership::MEMBER_NAME_BYTES_MAX;
use tillmesh_protocol::{DeviceId, Role};

use super::error::ApiError;
use super::{AppState, Body};
use crate::net::pairing::{DEFAULT_TTL, TTL_MAX, display_code};
use crate::repo::{Command, MemberCommand, Repo};

/// Rejected entries one listing returns at most.
const REJECTED_LISTED_MAX: usize = 1000;

pub async fn list(State(repo): State<Repo>) -> Result<Json<Value>, ApiError> {
    let m = repo.membership();
    let members: Vec<Value> = m
        .members()
        .map(|(id, member)| {
            json!({
                "device_id": id,
                "name": member.name,
                "role": member.current_role().name(),
                "active": m.is_active(id),
                "revoked_after_seq": member.last_seq,
                "added_by": member.added_by,
            })
        })
        .collect();
    Ok(Json(json!({
        "owner": m.owner(),
        "this_device": { "id": repo.identity().device_id, "role": repo.role().map(Role::name) },
        "members": members,
        "quarantined": repo.quarantined()?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    device_id: DeviceId,
    role: String,
    name: String,
}

/// Admits a device whose id is known already (provisioning scripts); people pair instead.
pub async fn add(
    State(repo): State<Repo>,
    Body(body): Body<NewMember>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let role = parse_role(&body.role)?;
    if body.name.is_empty() || body.name.len() > MEMBER_NAME_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MEMBER_NAME_BYTES_MAX} bytes"
        )));
    }
    let w = repo
        .execute(Command::Member(MemberCommand::Add {
            device: body.device_id,
            role,
            name: body.name,
        }))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "device_id": body.device_id, "role": role.name(), "seq": w.seq })),
    ))
}

/// Finds one member by id, id prefix or name.
pub(crate) fn resolve(repo: &Repo, what: &str) -> Result<DeviceId, ApiError> {
    match repo.membership().find(what).as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::not_found("member", what)),
        _ => Err(ApiError::bad_request(format!(
            "{what:?} names more than one member (by name or by the start of an id); give more of the device id"
        ))),
    }
}

pub async fn revoke(
    State(repo): State<Repo>,
    Path(who): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = resolve(&repo, &who)?;
    let w = repo
        .execute(Command::Member(MemberCommand::Revoke { device }))
        .await?;
    let last = repo.membership().get(&device).and_then(|m| m.last_seq);
    Ok(Json(
        json!({ "revoked": device, "last_accepted_seq": last, "seq": w.seq }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    role: String,
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role {role:?}; roles are admin, manager, till, bridge and viewer"
        ))
    })
}

pub async fn set_role(
    State(repo): State<Repo>,
    Path(who): Path<String>,
    Body(body): Body<SetRole>,
) -> Result<Json<Value>, ApiError> {
    let device = resolve(&repo, &who)?;
    let role = parse_role(&body.role)?;
    repo.execute(Command::Member(MemberCommand::ChangeRole { device, role }))
        .await?;
    Ok(Json(json!({ "device_id": device, "role": role.name() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    role: String,
    /// Seconds; 600 unless given.
    expires_s: Option<u64>,
}

pub async fn invite(
    State(app): State<AppState>,
    Body(body): Body<NewInvite>,
) -> Result<Json<Value>, ApiError> {
    let role = parse_role(&body.role)?;
    if role == Role::Owner {
        return Err(ApiError::bad_request(
            "a mesh has one owner; invite an admin instead",
        ));
    }
    if !app.repo.role().is_some_and(Role::manages_members) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an owner or admin device can invite; run `tillmesh invite` on one",
        ));
    }
    let ttl = body.expires_s.map_or(DEFAULT_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > TTL_MAX {
        return Err(ApiError::bad_request(format!(
            "expires_s must be 1 to {}",
            TTL_MAX.as_secs()
        )));
    }
    let network = app.network.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_network",
            "this node runs without a network, so nobody could pair with it",
        )
    })?;
    let opened = network.open_invite(role, ttl).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_network",
            "the network is stopping",
        )
    })?;
    let status = network.status();
    let peer: libp2p::PeerId = status.peer_id.parse().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the network's peer id does not parse: {e}"),
        )
    })?;
    let whole = crate::net::invite::Invite {
        code: opened.code.clone(),
        addrs: crate::net::invite::dial_addrs(peer, &status.listen),
    }
    .encode();
    // The whole invite as a QR code, for a phone's camera: the console shows it.
    let qr_svg = qrcode::QrCode::new(whole.as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color>()
                .min_dimensions(240, 240)
                .build()
        })
        .ok();
    Ok(Json(json!({
        "code": display_code(&opened.code),
        "invite": whole,
        "qr_svg": qr_svg,
        "role": opened.role.name(),
        "expires_in_s": opened.expires_in.as_secs(),
    })))
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

pub async fn rejected(
    State(repo): State<Repo>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(REJECTED_LISTED_MAX);
    let (count, entries) = repo.rejected(limit)?;
    Ok(Json(json!({ "count": count, "entries": entries })))
}
