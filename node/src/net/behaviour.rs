//! The libp2p protocols a node speaks, in one composed behaviour.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, autonat, dcutr, gossipsub, identify, ping, relay, request_response};
use tillmesh_protocol::sync::wire::MESSAGE_BYTES_MAX;

use super::candidates::Candidates;
use super::codec::SyncCodec;
use super::gate::{MembersOnly, SharedGate};
use super::pairing::{self, PairRequest, PairResponse};
use super::rights::{ANSWER_BYTES_MAX, ASK_BYTES_MAX, RightsAnswer, RightsAsk};

/// A pull streams at most one batch; a slow disk on the other side gets this long.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(30);
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A peer that does not answer two pings in a row within this each is taken as gone and its
/// (direct) connection closed: about 35 s after a cable is pulled.
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// Sync streams open at once on one connection, both ways.
const SYNC_STREAMS_MAX: usize = 8;
/// Pairing messages are a SPAKE2 share, a MAC and a name: a few hundred bytes. What a device
/// that is not yet a member may make us read is bounded by these.
const PAIR_REQUEST_BYTES_MAX: u64 = 4 * 1024;
const PAIR_RESPONSE_BYTES_MAX: u64 = 16 * 1024;
const PAIR_STREAMS_MAX: usize = 4;
/// Rights asked or answered at once on one connection (a till asks once per product at a
/// time, see `rights::ask`).
const RIGHTS_STREAMS_MAX: usize = 16;
/// A relayed connection carries a full sync, so the relay's defaults (2 minutes, 128 KiB) are
/// far too small; these bound what one circuit may cost the relay.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(3600);
const RELAY_CIRCUIT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Members only (see `gate`): a guest's connection has no handler for these.
    pub gossipsub: MembersOnly<gossipsub::Behaviour>,
    pub sync: MembersOnly<request_response::Behaviour<SyncCodec>>,
    /// Stock rights asked of a holder (see `rights`).
    pub rights: MembersOnly<request_response::json::Behaviour<RightsAsk, RightsAnswer>>,
    /// Open to devices that are not members yet: only while an invite is open.
    pub pair: request_response::json::Behaviour<PairRequest, PairResponse>,
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    /// Our public addresses on both transports, for `dcutr` (see `candidates`).
    pub candidates: Candidates,
    pub autonat: autonat::Behaviour,
}

impl Behaviour {
    pub(super) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        sync_protocol: StreamProtocol,
        rights_protocol: StreamProtocol,
        relay_server: bool,
        gate: SharedGate,
    ) -> Result<Behaviour, String> {
        let peer_id = key.public().to_peer_id();
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Nothing is forwarded until the driver has checked it: a node must not relay
            // garbage or forgeries, and must not be blamed for what it only relayed.
            .validate_messages()
            .max_transmit_size(MESSAGE_BYTES_MAX)
            .heartbeat_interval(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )?;
        let relay = relay_server.then(|| {
            relay::Behaviour::new(
                peer_id,
                relay::Config {
                    max_circuit_duration: RELAY_CIRCUIT_DURATION,
                    max_circuit_bytes: RELAY_CIRCUIT_BYTES_MAX,
                    ..Default::default()
                },
            )
        });
        Ok(Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new("/tillmesh/1".into(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
            gossipsub: MembersOnly::new(gossipsub, gate.clone()),
            sync: MembersOnly::new(
                request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(sync_protocol, request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(PULL_TIMEOUT)
                        // One pull each way in flight, and a couple of answers being served: a
                        // peer cannot hold a hundred streams' buffers open on one connection.
                        .with_max_concurrent_streams(SYNC_STREAMS_MAX),
                ),
                gate.clone(),
            ),
            rights: MembersOnly::new(
                request_response::json::Behaviour::with_codec(
                    request_response::json::codec::Codec::default()
                        .set_request_size_maximum(ASK_BYTES_MAX)
                        .set_response_size_maximum(ANSWER_BYTES_MAX),
                    [(rights_protocol, request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(5))
                        .with_max_concurrent_streams(RIGHTS_STREAMS_MAX),
                ),
                gate.clone(),
            ),
            pair: pairing_behaviour(),
            relay_client,
            relay: relay.into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            candidates: Candidates::default(),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    // Shops and test networks use private addresses; they count here.
                    only_global_ips: false,
                    ..Default::default()
                },
            ),
        })
    }
}

/// The pairing protocol alone: what a joining device speaks before it is a member.
pub fn pairing_behaviour() -> request_response::json::Behaviour<PairRequest, PairResponse> {
    request_response::json::Behaviour::with_codec(
        request_response::json::codec::Codec::default()
            .set_request_size_maximum(PAIR_REQUEST_BYTES_MAX)
            .set_response_size_maximum(PAIR_RESPONSE_BYTES_MAX),
        [(
            StreamProtocol::new(pairing::PROTOCOL),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(PAIR_STREAMS_MAX),
    )
}
