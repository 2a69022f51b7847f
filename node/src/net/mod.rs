//! The network edge: libp2p transports, discovery and the driver that runs the sync core.
//!
//! - [`behaviour`]: the protocols spoken (identify, ping, gossipsub for push, request-response
//!   for pulls, relay server and client, DCUtR, AutoNAT).
//! - `candidates`: our public address on each transport, offered for hole punching.
//! - [`codec`]: the sync protocol's framing on a request-response stream.
//! - [`discovery`]: mDNS advertising and browsing, filtered by mesh.
//! - `driver`: the event loop. It feeds connections, messages and time to
//!   [`tillmesh_protocol::sync::Sync`] and performs what it asks, with the store at hand.
//!
//! The PeerId is the device key: one ed25519 key names the device in the log and on the wire.

pub mod behaviour;
mod candidates;
pub mod codec;
pub mod discovery;
mod driver;
mod gate;
pub mod invite;
pub mod join;
pub mod pairing;
pub mod rights;
mod targets;

use std::future::Future;
use std::sync::{Arc, Mutex};

use libp2p::Multiaddr;
use serde::Serialize;
use thiserror::Error;
use tillmesh_protocol::sync;

use crate::repo::Repo;

/// Where a node listens unless told otherwise: every interface, TCP and QUIC on one port.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7421", "/ip4/0.0.0.0/udp/7421/quic-v1"];

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    /// Addresses to dial and keep dialing (with backoff) whenever not connected.
    pub peers: Vec<Multiaddr>,
    /// Advertise and browse on the LAN. Off for anything on the host's own interfaces in tests.
    pub mdns: bool,
    /// Serve as a libp2p relay for nodes behind NAT (head office runs one).
    pub relay: bool,
    /// Dial the devices other nodes announce (and those found by mDNS). Off, a node dials
    /// only `peers`: a hub and spokes, every till connected to head office alone.
    pub dial_found: bool,
    /// Units of each strict product this till tries to hold, so a sale need not wait for a
    /// transfer (see `rights`).
    pub rights_reserve: i64,
    pub sync: sync::Config,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: DEFAULT_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            peers: Vec::new(),
            mdns: true,
            relay: false,
            dial_found: true,
            rights_reserve: rights::RESERVE_UNITS_DEFAULT,
            sync: sync::Config::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {detail}; choose another address with --listen")]
    Listen { addr: Multiaddr, detail: String },
    #[error("the network could not start: {0}")]
    Start(String),
    #[error("mDNS discovery could not start: {0}; run with --no-mdns and give --peer addresses")]
    Mdns(String),
}

/// How a peer came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// mDNS on the LAN.
    Mdns,
    /// A `--peer` address or an invite.
    Address,
    /// An address through a relay, learned from another peer.
    Relay,
    /// A direct address learned from another peer.
    Gossip,
    /// It dialed us.
    Inbound,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub peer_id: String,
    /// The device this peer is (its key is the PeerId's).
    pub device_id: Option<String>,
    pub found_by: FoundBy,
    /// `tcp`, `quic` or `relay` (a circuit through a relay); the best of its connections.
    pub transport: &'static str,
    pub address: String,
    pub rtt_ms: Option<f64>,
    /// Set once a hole punch through NAT was tried on a relayed connection to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hole_punch: Option<HolePunch>,
    /// Our last pull from it covered everything it held.
    pub synced: bool,
    pub entries_received: u64,
    /// Entries it held that this node lacked, when it last answered a pull.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind_entries: Option<u64>,
    /// Entries this node holds that it lacked when it last answered a pull (it catches up by
    /// pulling them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lacks_entries: Option<u64>,
    /// Pulls from it that failed in a row (no answer, or one that did not decode).
    pub pull_failures: u32,
    /// Milliseconds since it last answered a pull or pushed an entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact_ms_ago: Option<u64>,
}

/// How a hole punch through NAT (DCUtR) went.
#[derive(Debug, Clone, Serialize)]
pub struct HolePunch {
    /// `direct` (punched: the direct connection carries sync) or `relayed` (it failed; the
    /// relayed connection carries it).
    pub state: &'static str,
    /// What happened, and for a failure why and what would help.
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetStatus {
    pub peer_id: String,
    pub listen: Vec<String>,
    /// What AutoNAT found: `public`, `private` or `unknown`.
    pub reachability: String,
    pub mdns: bool,
    pub relay: bool,
    /// Entries waiting for other authors' entries.
    pub parked: usize,
    /// Entries this node knows exist: per author, the most it or any connected peer held at
    /// its last answer. With the store's count, how far a catch-up has come.
    pub known_entries: u64,
    /// Whether a pairing invite is open on this device.
    pub pairing_open: bool,
    /// Connections closed because the peer is not a member of the mesh.
    pub refused_connections: u64,
    /// Peers and addresses this node keeps trying to reach (at most 256, see `targets`).
    pub dial_targets: usize,
    pub peers: Vec<PeerStatus>,
    /// Stock rights asked of peers, and how sales fared.
    pub rights: rights::RightsStats,
}

/// A handle on the running network, for status.
#[derive(Clone)]
pub struct Network {
    status: Arc<Mutex<NetStatus>>,
    commands: tokio::sync::mpsc::Sender<Command>,
    pub(crate) rights: Arc<rights::Keeper>,
}

/// What the API asks of the running network.
pub(crate) enum Command {
    OpenInvite {
        role: tillmesh_protocol::Role,
        ttl: std::time::Duration,
        reply: tokio::sync::oneshot::Sender<pairing::Opened>,
    },
    AskRights {
        peer: libp2p::PeerId,
        ask: rights::RightsAsk,
        reply: tokio::sync::oneshot::Sender<rights::RightsAnswer>,
    },
}

impl Network {
    pub fn status(&self) -> NetStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.rights = self.rights.stats();
        s
    }

    /// Opens a pairing invite on this device (replacing any open one). The caller checks
    /// that this device may admit members.
    pub async fn open_invite(
        &self,
        role: tillmesh_protocol::Role,
        ttl: std::time::Duration,
    ) -> Option<pairing::Opened> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::OpenInvite { role, ttl, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Whether the network has stopped (its driver ended).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    /// Asks one connected member for stock rights (see `rights::ask`); `None` when it did not
    /// answer.
    pub(crate) async fn ask_rights(
        &self,
        peer: libp2p::PeerId,
        ask: rights::RightsAsk,
    ) -> Option<rights::RightsAnswer> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::AskRights { peer, ask, reply })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// Starts listening and replicating; runs until `shutdown` resolves. Listening is set up
/// before this returns, so a bad address is an error here and not a log line later.
pub async fn start(
    repo: Repo,
    config: NetConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Network, tokio::task::JoinHandle<()>), NetError> {
    let status = Arc::new(Mutex::new(NetStatus::default()));
    let (commands, commands_rx) = tokio::sync::mpsc::channel(16);
    let keeper = Arc::new(rights::Keeper::new(config.rights_reserve));
    let driver = driver::Driver::new(
        repo.clone(),
        config,
        status.clone(),
        commands_rx,
        keeper.clone(),
    )?;
    let task = tokio::spawn(driver.run(shutdown));
    // The listeners report their addresses on the first turns of the loop.
    for _ in 0..50 {
        if !status.lock().map(|s| s.listen.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let network = Network {
        status,
        commands,
        rights: keeper,
    };
    tokio::spawn(rights::keep_reserve(repo, network.clone()));
    Ok((network, task))
}
