//! The joining device's side of pairing: find the inviter, prove the code, learn the mesh.
//!
//! Runs before the device has a store: a throwaway libp2p swarm that speaks only the pairing
//! protocol, under the device key the new store will keep (its PeerId is what the inviter
//! admits).

use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};
use tillmesh_protocol::{DeviceId, Role};
use tokio::time::Instant;

use super::behaviour::pairing_behaviour;
use super::discovery::{self, Found};
use super::invite::Invite;
use super::pairing::{Joiner, PairRequest, PairResponse, Refusal};

type PairBehaviour = request_response::json::Behaviour<PairRequest, PairResponse>;

/// What the inviter told the new device.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub owner: DeviceId,
    pub role: Role,
    pub inviter: PeerId,
    pub inviter_name: String,
    /// Where the inviter was reached, each ending in its PeerId: the new device's first peers.
    pub addrs: Vec<Multiaddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "no device with an open invite was found on the LAN within {0}s; check that the inviting device runs `tillmesh run` on this network, or give the whole invite line (tm2:...) instead of the code"
    )]
    NotFound(u64),
    #[error("could not reach the inviting device at {addrs}: {detail}")]
    Unreachable { addrs: String, detail: String },
    #[error(
        "the code is wrong (or the device answering is not the one that issued it); check it and try again; after 5 wrong tries the invite is burnt"
    )]
    WrongCode,
    #[error("the inviting device refused: {0}")]
    Refused(String),
    #[error("the inviting device did not answer within {0}s")]
    Timeout(u64),
    #[error("the inviting device answered nonsense: {0}")]
    Protocol(String),
    #[error("the network could not start: {0}")]
    Start(String),
}

/// Pairs with the device that issued `invite`, as the device with key `secret` named `name`.
pub async fn pair(
    secret: [u8; 32],
    invite: &Invite,
    name: &str,
    timeout: Duration,
) -> Result<Welcome, JoinError> {
    let key = libp2p::identity::Keypair::ed25519_from_bytes(secret)
        .map_err(|e| JoinError::Start(e.to_string()))?;
    let local = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| JoinError::Start(e.to_string()))?
        .with_quic()
        .with_behaviour(|_| pairing_behaviour())
        .map_err(|e| JoinError::Start(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let deadline = Instant::now() + timeout;
    let candidates = match invite
        .inviter()
        .map_err(|e| JoinError::Protocol(e.to_string()))?
    {
        Some(peer) => vec![Found {
            peer,
            addrs: invite
                .addrs
                .iter()
                .map(|a| {
                    a.iter()
                        .filter(|p| !matches!(p, Protocol::P2p(_)))
                        .collect()
                })
                .collect(),
        }],
        None => find_on_lan(deadline, timeout).await?,
    };
    let mut last_error = None;
    for found in candidates {
        match pair_with(&mut swarm, local, &found, invite, name, deadline).await {
            Ok(w) => return Ok(w),
            // Another device's invite on the LAN: try the next.
            Err(
                e @ (JoinError::WrongCode | JoinError::Refused(_) | JoinError::Unreachable { .. }),
            ) if invite.addrs.is_empty() => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or(JoinError::NotFound(timeout.as_secs())))
}

/// Devices advertising an open invite, gathered for a moment once the first appears.
async fn find_on_lan(deadline: Instant, timeout: Duration) -> Result<Vec<Found>, JoinError> {
    let (daemon, mut rx) =
        discovery::browse_pairing().map_err(|e| JoinError::Start(format!("mDNS: {e}")))?;
    let mut found: Vec<Found> = Vec::new();
    let mut settle: Option<Instant> = None;
    loop {
        let until = settle.unwrap_or(deadline).min(deadline);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(f)) => {
                if !f.addrs.is_empty() && !found.iter().any(|g| g.peer == f.peer) {
                    found.push(f);
                    settle.get_or_insert(Instant::now() + Duration::from_millis(500));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = daemon.shutdown();
    if found.is_empty() {
        return Err(JoinError::NotFound(timeout.as_secs()));
    }
    Ok(found)
}

async fn pair_with(
    swarm: &mut Swarm<PairBehaviour>,
    local: PeerId,
    found: &Found,
    invite: &Invite,
    name: &str,
    deadline: Instant,
) -> Result<Welcome, JoinError> {
    let addrs_text = found
        .addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let peer = found.peer;
    swarm
        .dial(
            DialOpts::peer_id(peer)
                .addresses(found.addrs.clone())
                .build(),
        )
        .map_err(|e| JoinError::Unreachable {
            addrs: addrs_text.clone(),
            detail: e.to_string(),
        })?;
    // Wait for the connection, so the address that worked is known.
    let connected = loop {
        let event = next_event(swarm, deadline).await?;
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == peer => break endpoint.get_remote_address().clone(),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(p),
                error,
                ..
            } if p == peer => {
                return Err(JoinError::Unreachable {
                    addrs: addrs_text,
                    detail: error.to_string(),
                });
            }
            _ => {}
        }
    };
    let (mut joiner, start) = Joiner::start(&invite.code, local, peer, name);
    let (spake, confirm) = match request(swarm, peer, start, deadline).await? {
        PairResponse::Started { spake, confirm } => (spake, confirm),
        PairResponse::Refused { reason } => return Err(JoinError::Refused(reason)),
        other => {
            return Err(JoinError::Protocol(format!(
                "{other:?} in answer to a start"
            )));
        }
    };
    let finish = joiner.confirm(&spake, &confirm).map_err(|e| match e {
        Refusal::WrongCode => JoinError::WrongCode,
        other => JoinError::Protocol(other.to_string()),
    })?;
    match request(swarm, peer, finish, deadline).await? {
        PairResponse::Welcome {
            owner,
            role,
            inviter_name,
        } => {
            let owner = owner
                .parse()
                .map_err(|e| JoinError::Protocol(format!("owner {owner:?}: {e}")))?;
            let role =
                Role::parse(&role).ok_or_else(|| JoinError::Protocol(format!("role {role:?}")))?;
            let mut addrs: Vec<Multiaddr> = found
                .addrs
                .iter()
                .map(|a| a.clone().with(Protocol::P2p(peer)))
                .collect();
            let used = connected.with(Protocol::P2p(peer));
            addrs.retain(|a| *a != used);
            addrs.insert(0, used);
            Ok(Welcome {
                owner,
                role,
                inviter: peer,
                inviter_name,
                addrs,
            })
        }
        PairResponse::Refused { reason } if reason == Refusal::WrongCode.to_string() => {
            Err(JoinError::WrongCode)
        }
        PairResponse::Refused { reason } => Err(JoinError::Refused(reason)),
        other => Err(JoinError::Protocol(format!(
            "{other:?} in answer to a finish"
        ))),
    }
}

async fn next_event(
    swarm: &mut Swarm<PairBehaviour>,
    deadline: Instant,
) -> Result<SwarmEvent<request_response::Event<PairRequest, PairResponse>>, JoinError> {
    let secs = deadline.saturating_duration_since(Instant::now()).as_secs();
    tokio::time::timeout_at(deadline, swarm.select_next_some())
        .await
        .map_err(|_| JoinError::Timeout(secs))
}

async fn request(
    swarm: &mut Swarm<PairBehaviour>,
    peer: PeerId,
    req: PairRequest,
    deadline: Instant,
) -> Result<PairResponse, JoinError> {
    let id: OutboundRequestId = swarm.behaviour_mut().send_request(&peer, req);
    loop {
        match next_event(swarm, deadline).await? {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if request_id == id => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if request_id == id => {
                return Err(JoinError::Refused(format!(
                    "the exchange broke off ({error}); the device may have no open invite (it then closes the connection), or the network failed: try again, or ask for a new invite"
                )));
            }
            _ => {}
        }
    }
}
