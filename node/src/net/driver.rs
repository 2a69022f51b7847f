//! The network event loop: libp2p events and the store in, the sync core's outputs out.
//!
//! Nothing slow runs on the loop itself. Applying entries goes to one applier task, in order
//! (the core's parking relies on that order); serving a pull reads the store on a blocking
//! thread and hands the answer back. The loop only moves messages and keeps the peer table.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, gossipsub, identify, noise, ping,
    relay, tcp, yamux,
};
use tillmesh_protocol::sync::{Message, Output, Source, Sync, Verdict};

use super::codec::Framed;
use tillmesh_protocol::{DeviceId, Membership, SignedEntry, VersionVector};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::discovery::{self, Discovery, Found};
use super::gate::{self, Admission, Gate, SharedGate};
use super::pairing::{Inviter, PairRequest, PairResponse, Refusal};
use super::rights::RightsAnswer;
use super::targets::{Standing, TARGET_ADDRS_MAX, Target, Targets};
use super::{Command, FoundBy, HolePunch, NetConfig, NetError, NetStatus, PeerStatus};
use crate::replication;
use crate::repo::{Command as RepoCommand, MemberCommand, Repo};

/// How often the loop wakes with nothing else to do: timers of the core, dials, status.
const TICK: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a peer that misbehaved is refused.
const BAN: Duration = Duration::from_secs(60);
/// How often this node tells the mesh where it can be reached.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// Entries handed to the store in one go by the applier (more wait for the next group).
const APPLY_GROUP_ENTRIES_MAX: usize = 2048;
/// Applies waiting for the store, by count and by bytes; pushes beyond are dropped (pulls
/// find them later).
const APPLY_QUEUED_MAX: usize = 1024;
const APPLY_QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pulls from one peer being answered at once; more fail (the asker backs off).
const SERVES_PER_PEER_MAX: usize = 2;
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

struct Applied {
    bytes: usize,
    source: Source<PeerId>,
    results: Vec<(SignedEntry, Verdict)>,
    vv: VersionVector,
}

struct Connection {
    transport: &'static str,
    address: Multiaddr,
}

struct PeerInfo {
    device: Option<DeviceId>,
    found_by: FoundBy,
    connections: BTreeMap<ConnectionId, Connection>,
    rtt: Option<Duration>,
    /// How the last hole punch with it went, if one was tried.
    hole_punch: Option<HolePunch>,
    /// When it last answered a pull or pushed an entry.
    heard: Option<Instant>,
}

impl PeerInfo {
    /// A direct connection beats a relayed one, QUIC and TCP are equal.
    fn best(&self) -> Option<&Connection> {
        self.connections
            .values()
            .min_by_key(|c| u8::from(c.transport == "relay"))
    }
}

pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    repo: Repo,
    sync: Sync<PeerId>,
    started: Instant,
    protocol: StreamProtocol,
    push_topic: gossipsub::IdentTopic,
    announce_topic: gossipsub::IdentTopic,
    peers: BTreeMap<PeerId, PeerInfo>,
    targets: Targets,
    reserved_on: Vec<PeerId>,
    /// The pull in flight to each peer: answers to anything else are stale and ignored.
    pulls: HashMap<PeerId, request_response::OutboundRequestId>,
    /// Pulls from each peer being answered now.
    serving: Arc<Mutex<HashMap<PeerId, usize>>>,
    apply_queued_bytes: usize,
    discovery: Option<Discovery>,
    found: Option<mpsc::Receiver<Found>>,
    apply_tx: mpsc::UnboundedSender<(Source<PeerId>, Vec<SignedEntry>, usize)>,
    applied_rx: mpsc::UnboundedReceiver<Applied>,
    apply_queued: usize,
    served_tx: mpsc::UnboundedSender<(ResponseChannel<Framed>, Message)>,
    served_rx: mpsc::UnboundedReceiver<(ResponseChannel<Framed>, Message)>,
    committed: broadcast::Receiver<Arc<SignedEntry>>,
    status: Arc<Mutex<NetStatus>>,
    listen: Vec<Multiaddr>,
    reachability: &'static str,
    last_announce: Option<Instant>,
    relay: bool,
    /// Whether announced and mDNS-found devices are dialed (see `NetConfig::dial_found`).
    dial_found: bool,
    membership: watch::Receiver<Arc<Membership>>,
    /// Who may do what: shared with the swarm's protocols, which consult it as each
    /// connection is established.
    gate: SharedGate,
    inviter: Inviter,
    commands: mpsc::Receiver<Command>,
    /// Pairing answers that waited for the new device's admission to commit.
    paired_tx: mpsc::UnboundedSender<(ResponseChannel<PairResponse>, PairResponse)>,
    paired_rx: mpsc::UnboundedReceiver<(ResponseChannel<PairResponse>, PairResponse)>,
    /// Rights this node granted, answered once the transfer is written.
    granted_tx: mpsc::UnboundedSender<(ResponseChannel<RightsAnswer>, RightsAnswer)>,
    granted_rx: mpsc::UnboundedReceiver<(ResponseChannel<RightsAnswer>, RightsAnswer)>,
    /// This till's reserves, which it keeps when it grants rights.
    keeper: Arc<super::rights::Keeper>,
    /// Rights this node asked for, by request: who waits for the answer.
    asked: HashMap<request_response::OutboundRequestId, oneshot::Sender<RightsAnswer>>,
}

/// Streams one connection may hold open at once. yamux buffers up to 256 KiB for each
/// stream before anyone reads it, so this bounds what one peer's connection can make us hold
/// (16 MiB) where the default (512) would allow 128 MiB. Sync takes 8, pairing 4; gossip,
/// identify, ping, relay and hole punching a few each.
const STREAMS_PER_CONNECTION_MAX: usize = 64;

fn muxer() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(STREAMS_PER_CONNECTION_MAX);
    c
}

/// The PeerId of a device: its libp2p identity is its device key.
pub fn peer_of_device(device: &DeviceId) -> Option<PeerId> {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(device.as_bytes())
        .ok()
        .map(|k| libp2p::identity::PublicKey::from(k).to_peer_id())
}

/// How a dial target stands when the set is full (see `targets`). Before this node knows the
/// members (it is joining), every find may be one.
fn standing(gate: &Gate) -> impl Fn(&Target) -> Standing + '_ {
    move |t| {
        if t.found_by == FoundBy::Address {
            Standing::Configured
        } else if t.peer.is_some_and(|p| gate.allowed(&p)) {
            Standing::Member
        } else {
            Standing::Stranger
        }
    }
}

/// The device behind a PeerId, if it is an ed25519 key (every tillmesh device's is).
pub fn device_of_peer(peer: &PeerId) -> Option<DeviceId> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(DeviceId(key.try_into_ed25519().ok()?.to_bytes()))
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        "relay"
    } else if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "quic"
    } else {
        "tcp"
    }
}

/// Whether another device could reach this address: loopback reaches only ourselves,
/// unspecified reaches nobody.
fn is_routable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified() || ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_unspecified() || ip.is_loopback(),
        _ => false,
    })
}

/// The address without a trailing `/p2p/<id>`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

impl Driver {
    pub(super) fn new(
        repo: Repo,
        config: NetConfig,
        status: Arc<Mutex<NetStatus>>,
        commands: mpsc::Receiver<Command>,
        keeper: Arc<super::rights::Keeper>,
    ) -> Result<Driver, NetError> {
        let identity = repo.identity().clone();
        let key = libp2p::identity::Keypair::ed25519_from_bytes(repo.device_secret())
            .map_err(|e| NetError::Start(format!("the device key is not usable: {e}")))?;
        let local = key.public().to_peer_id();
        let tag = discovery::mesh_tag(&identity.mesh_id);
        let protocol = StreamProtocol::try_from_owned(format!("/tillmesh/sync/1/{tag}"))
            .map_err(|e| NetError::Start(e.to_string()))?;
        let relay_server = config.relay;
        let sync_protocol = protocol.clone();
        let rights_protocol = StreamProtocol::try_from_owned(format!("/tillmesh/rights/1/{tag}"))
            .map_err(|e| NetError::Start(e.to_string()))?;
        let gate = SharedGate::default();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                muxer,
            )
            .map_err(|e| NetError::Start(e.to_string()))?
            .with_quic()
            .with_relay_client(noise::Config::new, muxer)
            .map_err(|e| NetError::Start(e.to_string()))?
            .with_behaviour(|key, relay_client| {
                Behaviour::new(
                    key,
                    relay_client,
                    sync_protocol,
                    rights_protocol,
                    relay_server,
                    gate.clone(),
                )
                .map_err(Box::<dyn std::error::Error + Send + std::marker::Sync>::from)
            })
            .map_err(|e| NetError::Start(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();
        let push_topic = gossipsub::IdentTopic::new(format!("tillmesh/entries/{tag}"));
        let announce_topic = gossipsub::IdentTopic::new(format!("tillmesh/peers/{tag}"));
        for t in [&push_topic, &announce_topic] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(t)
                .map_err(|e| NetError::Start(e.to_string()))?;
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
        }
        let now = Instant::now();
        let mut targets = Targets::default();
        // One target per peer, with all its addresses: libp2p tries them together, where
        // separate dials of one peer would refuse each other.
        for addr in &config.peers {
            let peer = peer_of(addr);
            let key = peer.map_or_else(|| addr.to_string(), |p| p.to_string());
            if let Some(t) = targets.get_or_add(
                key,
                || {
                    let mut t = Target::new(peer, FoundBy::Address, DIAL_BACKOFF_MIN);
                    t.next_dial = now;
                    t
                },
                |_| Standing::Configured,
            ) {
                t.addrs.push(without_peer(addr));
            }
        }
        let (discovery, found) = if config.mdns {
            let (d, rx) = Discovery::start(&identity.mesh_id, local)
                .map_err(|e| NetError::Mdns(e.to_string()))?;
            (Some(d), Some(rx))
        } else {
            (None, None)
        };
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (applied_tx, applied_rx) = mpsc::unbounded_channel();
        tokio::spawn(applier(repo.clone(), apply_rx, applied_tx));
        let (served_tx, served_rx) = mpsc::unbounded_channel();
        let (paired_tx, paired_rx) = mpsc::unbounded_channel();
        let (granted_tx, granted_rx) = mpsc::unbounded_channel();
        let membership = repo.subscribe_membership();
        if let Ok(mut s) = status.lock() {
            s.peer_id = local.to_string();
            s.mdns = config.mdns;
            s.relay = config.relay;
            s.reachability = "unknown".into();
        }
        Ok(Driver {
            committed: repo.subscribe_committed(),
            swarm,
            repo,
            sync: Sync::new(config.sync),
            started: now,
            protocol,
            push_topic,
            announce_topic,
            peers: BTreeMap::new(),
            targets,
            reserved_on: Vec::new(),
            pulls: HashMap::new(),
            serving: Arc::default(),
            apply_queued_bytes: 0,
            discovery,
            found,
            apply_tx,
            applied_rx,
            apply_queued: 0,
            served_tx,
            served_rx,
            status,
            listen: Vec::new(),
            reachability: "unknown",
            last_announce: None,
            relay: config.relay,
            dial_found: config.dial_found,
            membership,
            gate,
            inviter: Inviter::default(),
            commands,
            paired_tx,
            paired_rx,
            granted_tx,
            granted_rx,
            keeper,
            asked: HashMap::new(),
        })
        .map(|mut d: Driver| {
            d.on_membership();
            d
        })
    }

    /// Reads the membership anew and disconnects peers that are no longer members.
    fn on_membership(&mut self) {
        let m = self.membership.borrow_and_update().clone();
        let local = *self.swarm.local_peer_id();
        let members = m
            .members()
            .filter(|(id, _)| m.is_active(id))
            .filter_map(|(id, _)| peer_of_device(id))
            .collect();
        // Revoked or quarantined counts as admitted too: such a device trusts nobody anew.
        let admitted = device_of_peer(&local).is_some_and(|d| m.get(&d).is_some());
        // A guest admitted while connected keeps its pairing connection (its welcome is
        // answered on it after the admission commits); it syncs on its next connection.
        gate::lock(&self.gate).set_members(members, admitted);
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            let stays = {
                let g = gate::lock(&self.gate);
                g.allowed(&peer) || g.is_guest(&peer)
            };
            if !stays {
                tracing::warn!(%peer, "disconnecting a device that is not (or no longer) a member");
                self.sync.disconnected(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// Whether `peer` may sync with this node (see `Gate::allowed`).
    fn allowed(&self, peer: &PeerId) -> bool {
        gate::lock(&self.gate).allowed(peer)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::OpenInvite { role, ttl, reply } => {
                let opened = self.inviter.open(role, ttl, Instant::now());
                gate::lock(&self.gate).welcome_guests_until(self.inviter.guests_until());
                if let Some(d) = &mut self.discovery
                    && let Err(e) = d.advertise_pairing(true)
                {
                    tracing::warn!(error = %e, "cannot advertise the invite on mDNS");
                }
                let _ = reply.send(opened);
                self.publish_status();
            }
            Command::AskRights { peer, ask, reply } => {
                let id = self.swarm.behaviour_mut().rights.send_request(&peer, ask);
                self.asked.insert(id, reply);
            }
        }
    }

    /// A pairing request from a device that wants to join, answered with this device's open
    /// invite (if any; see `pairing`).
    fn on_pair_request(
        &mut self,
        peer: PeerId,
        request: PairRequest,
        channel: ResponseChannel<PairResponse>,
    ) {
        let now = Instant::now();
        let local = *self.swarm.local_peer_id();
        let refuse = |d: &mut Driver, r: Refusal, channel| {
            tracing::warn!(%peer, reason = %r, "pairing refused");
            let _ = d.swarm.behaviour_mut().pair.send_response(
                channel,
                PairResponse::Refused {
                    reason: r.to_string(),
                },
            );
        };
        match request {
            PairRequest::Start { spake, name } => {
                match self.inviter.start(peer, local, &spake, &name, now) {
                    Ok(answer) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .pair
                            .send_response(channel, answer);
                    }
                    Err(r) => refuse(self, r, channel),
                }
            }
            PairRequest::Finish { confirm } => match self.inviter.finish(peer, &confirm, now) {
                Ok((role, name)) => {
                    let Some(device) = device_of_peer(&peer) else {
                        return refuse(
                            self,
                            Refusal::Malformed("not an ed25519 key".into()),
                            channel,
                        );
                    };
                    tracing::info!(%peer, %role, %name, "paired; admitting the device");
                    let repo = self.repo.clone();
                    let tx = self.paired_tx.clone();
                    let owner = repo.identity().root_id.to_string();
                    let inviter_name = repo.identity().device_name.clone();
                    tokio::spawn(async move {
                        let answer = match repo
                            .execute(RepoCommand::Member(MemberCommand::Add {
                                device,
                                role,
                                name,
                            }))
                            .await
                        {
                            Ok(_) => PairResponse::Welcome {
                                owner,
                                role: role.name().into(),
                                inviter_name,
                            },
                            Err(e) => PairResponse::Refused {
                                reason: format!("the device could not be admitted: {e}"),
                            },
                        };
                        let _ = tx.send((channel, answer));
                    });
                    self.publish_status();
                }
                Err(r) => refuse(self, r, channel),
            },
        }
        if !self.inviter.is_open(now)
            && let Some(d) = &mut self.discovery
        {
            let _ = d.advertise_pairing(false);
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.swarm.select_next_some() => self.on_swarm(event),
                Some(a) = self.applied_rx.recv() => {
                    self.apply_queued = self.apply_queued.saturating_sub(1);
                    self.apply_queued_bytes = self.apply_queued_bytes.saturating_sub(a.bytes);
                    let now = self.now_ms();
                    self.sync.applied(a.source, a.results, &a.vv, now);
                }
                Some((channel, answer)) = self.served_rx.recv() => {
                    if let Message::Entries { entries, .. } = &answer {
                        let bytes: usize = entries.iter().map(|e| e.encoded().len()).sum();
                        self.count_bytes("out", bytes);
                    }
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, Ok(answer));
                }
                Some((channel, answer)) = self.paired_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().pair.send_response(channel, answer);
                }
                Some((channel, answer)) = self.granted_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().rights.send_response(channel, answer);
                }
                Some(command) = self.commands.recv() => self.on_command(command),
                Ok(()) = self.membership.changed() => self.on_membership(),
                entry = self.committed.recv() => match entry {
                    Ok(e) => self.sync.committed((*e).clone()),
                    // Missed pushes are found by the next pull.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(found) = next_found(&mut self.found) => self.on_found(found),
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.sync.tick(now);
                    self.expire_guests();
                    self.dial_due();
                    self.announce();
                    self.publish_status();
                }
            }
            self.perform();
        }
        if let Some(d) = self.discovery.take() {
            d.stop();
        }
    }

    /// Carries out everything the core asked for.
    fn perform(&mut self) {
        while let Some(out) = self.sync.poll() {
            match out {
                Output::Pull {
                    peer,
                    entries_max,
                    bytes_max,
                } => match self.repo.version_vector() {
                    Ok(have) => {
                        let id = self.swarm.behaviour_mut().sync.send_request(
                            &peer,
                            Ok(Message::Pull {
                                have,
                                entries_max,
                                bytes_max,
                            }),
                        );
                        self.pulls.insert(peer, id);
                        self.repo.metrics().pulls.inc();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the version vector to pull");
                        let now = self.now_ms();
                        self.sync.pull_failed(&peer, now);
                    }
                },
                Output::Publish(message) => {
                    let data = message.encode();
                    self.repo.metrics().pushes.inc();
                    self.count_bytes("out", data.len());
                    // No peers subscribed yet is normal; pulls cover what a push misses.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(self.push_topic.clone(), data);
                }
                Output::Apply { source, entries } => {
                    let bytes: usize = entries.iter().map(|e| e.encoded().len()).sum();
                    if !matches!(source, Source::Parked) {
                        self.count_bytes("in", bytes);
                    }
                    if matches!(source, Source::Push(_))
                        && (self.apply_queued >= APPLY_QUEUED_MAX
                            || self.apply_queued_bytes + bytes > APPLY_QUEUED_BYTES_MAX)
                    {
                        continue;
                    }
                    self.apply_queued += 1;
                    self.apply_queued_bytes += bytes;
                    let _ = self.apply_tx.send((source, entries, bytes));
                }
                Output::Disconnect { peer, reason } => self.ban(peer, &reason),
            }
        }
    }

    fn ban(&mut self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, %reason, "disconnecting a misbehaving peer");
        gate::lock(&self.gate).ban(peer, Instant::now() + BAN);
        self.sync.disconnected(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if let Some(d) = &mut self.discovery
                    && let Some(Protocol::Tcp(port)) =
                        address.iter().find(|p| matches!(p, Protocol::Tcp(_)))
                    && transport_of(&address) == "tcp"
                    && let Err(e) = d.advertise(port)
                {
                    tracing::warn!(error = %e, "cannot advertise on mDNS");
                }
                // A relay is meant to be reachable at the addresses it is given: say so at once,
                // rather than waiting for AutoNAT to confirm before serving reservations.
                if self.relay && transport_of(&address) != "relay" && is_routable(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                if !self.listen.contains(&address) {
                    self.listen.push(address);
                }
                self.last_announce = None;
                self.publish_status();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen.retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(info) = self.peers.get_mut(&peer_id) {
                    info.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    gate::lock(&self.gate).guest_left(&peer_id);
                    self.peers.remove(&peer_id);
                    self.sync.disconnected(&peer_id);
                    self.pulls.remove(&peer_id);
                    // The reservation went with the connection; make one when it is back.
                    self.reserved_on.retain(|r| *r != peer_id);
                    tracing::info!(peer = %peer_id, "peer disconnected");
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let libp2p::swarm::DialError::Denied { cause } = &error {
                    self.on_denied(peer_id, cause);
                }
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                peer_id,
                ..
            } => self.on_denied(peer_id, &cause),
            // Frequent (every pushed entry): their effect on status waits for the next tick.
            SwarmEvent::Behaviour(event) => return self.on_behaviour(event),
            _ => return,
        }
        // Status readers see connections come and go at once, not at the next tick.
        self.publish_status();
    }

    /// A connection the gate refused as it was established: counted for the status.
    fn on_denied(&mut self, peer: Option<PeerId>, cause: &libp2p::swarm::ConnectionDenied) {
        if let Some(why) = cause.downcast_ref::<gate::Refused>() {
            gate::lock(&self.gate).refused += 1;
            tracing::info!(peer = ?peer, why = why.0, "refused a connection");
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        // The gate judged this connection as it was established (see `gate`); a refused one
        // never gets here. It is judged again in case the membership changed meanwhile.
        let now = Instant::now();
        let mut g = gate::lock(&self.gate);
        match g.judge(&peer, now) {
            Admission::Member => {}
            // It may have come to pair; it has no sync or gossip handler, and not for long.
            Admission::Guest => g.guest_arrived(peer, now),
            Admission::Refused(why) => {
                g.refused += 1;
                drop(g);
                tracing::info!(%peer, why, "closed a connection the gate refuses");
                let _ = self.swarm.close_connection(id);
                return;
            }
        }
        drop(g);
        // A relayed connection we accepted shows the circuit only in our own address.
        let (address, transport) = match endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), transport_of(address)),
            ConnectedPoint::Listener {
                send_back_addr,
                local_addr,
            } => (
                send_back_addr.clone(),
                match transport_of(local_addr) {
                    "relay" => "relay",
                    _ => transport_of(send_back_addr),
                },
            ),
        };
        let dialed = without_peer(&address);
        let mut found_by = if endpoint.is_dialer() {
            FoundBy::Address
        } else {
            FoundBy::Inbound
        };
        for t in self.targets.values_mut() {
            let ours = t.peer == Some(peer) || (t.peer.is_none() && t.addrs.contains(&dialed));
            if ours {
                t.peer = Some(peer);
                t.backoff = DIAL_BACKOFF_MIN;
                t.failures = 0;
                // Found here too, whichever side dialed first.
                found_by = t.found_by;
            }
        }
        if transport == "relay" && found_by == FoundBy::Address {
            found_by = FoundBy::Relay;
        }
        tracing::info!(%peer, %address, "connected");
        let info = self.peers.entry(peer).or_insert(PeerInfo {
            device: None,
            found_by,
            connections: BTreeMap::new(),
            rtt: None,
            hole_punch: None,
            heard: None,
        });
        info.connections
            .insert(id, Connection { transport, address });
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        let now = self.now_ms();
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.swarm
                    .behaviour_mut()
                    .candidates
                    .translate(&info.observed_addr, &self.listen);
                let device = info
                    .public_key
                    .clone()
                    .try_into_ed25519()
                    .ok()
                    .map(|k| DeviceId(k.to_bytes()));
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.device = device;
                }
                if info.protocols.contains(&self.protocol) && self.allowed(&peer_id) {
                    self.sync.connected(peer_id, now);
                }
                // Only relays we were pointed at (by address or invite) get our reservation:
                // any peer can claim to be one.
                let pointed_at = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|p| p.found_by == FoundBy::Address);
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME)
                    && pointed_at
                    && !self.reserved_on.contains(&peer_id)
                {
                    self.reserve_on(peer_id, &info.listen_addrs);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error @ (ping::Failure::Timeout | ping::Failure::Other { .. })),
            }) => {
                // No pong twice (libp2p reports the second failure in a row): the link is dead (a pulled cable, a sleeping
                // phone), though TCP would hold the connection for many minutes more. Closed,
                // the peer shows offline and is dialed again with backoff. (A joining device's
                // throwaway swarm does not speak ping: `Unsupported` is no reason to close.)
                // A relayed circuit is left to the relay: closing it could cut a hole punch
                // short while the relay is merely slow, and it dies with the relay's own
                // connection, which this watches like any other.
                let relayed = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.connections.get(&connection))
                    .is_some_and(|c| c.transport == "relay");
                if !relayed {
                    tracing::info!(%peer, %error, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let accept = if !self.allowed(&propagation_source) {
                    false
                } else if message.topic == self.push_topic.hash() {
                    self.on_push(propagation_source, message.source, &message.data)
                } else if message.topic == self.announce_topic.hash()
                    && let Some(source) = message.source
                {
                    self.on_announce(source, &message.data)
                } else {
                    false
                };
                let acceptance = if accept {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let (allowed, serves) = {
                            let g = gate::lock(&self.gate);
                            (g.allowed(&peer), g.serves(&peer))
                        };
                        if !allowed {
                            gate::lock(&self.gate).refused += 1;
                            let _ = self.swarm.disconnect_peer_id(peer);
                            return;
                        }
                        if !serves {
                            // Dropping the channel fails the pull; the peer retries later.
                            return;
                        }
                        self.serve(peer, request, channel)
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if self.pulls.get(&peer) != Some(&request_id) {
                            return; // The answer to a pull already given up on.
                        }
                        self.pulls.remove(&peer);
                        if let Some(info) = self.peers.get_mut(&peer) {
                            info.heard = Some(Instant::now());
                        }
                        match response {
                            Ok(m) => self.sync.received(&peer, m, now),
                            Err(e) => self.ban(peer, &format!("answered a pull with {e}")),
                        }
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            }) => {
                tracing::debug!(%peer, %error, "pull failed");
                if self.pulls.get(&peer) != Some(&request_id) {
                    return;
                }
                self.pulls.remove(&peer);
                if let request_response::OutboundFailure::Io(e) = &error
                    && e.kind() == std::io::ErrorKind::InvalidData
                {
                    self.ban(peer, &format!("answered a pull with garbage: {error}"));
                } else {
                    self.sync.pull_failed(&peer, now);
                }
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                if let request_response::InboundFailure::Io(e) = &error
                    && e.kind() == std::io::ErrorKind::InvalidData
                {
                    self.ban(peer, &format!("sent a malformed pull: {error}"));
                }
            }
            BehaviourEvent::Pair(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.on_pair_request(peer, request, channel),
            BehaviourEvent::Rights(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                // Members only (the gate): the asker is a member, and the transfer names it.
                let Some(device) = device_of_peer(&peer) else {
                    return;
                };
                let (repo, tx) = (self.repo.clone(), self.granted_tx.clone());
                let keeper = self.keeper.clone();
                tokio::spawn(async move {
                    let answer = super::rights::grant(repo, keeper, device, request).await;
                    let _ = tx.send((channel, answer));
                });
            }
            BehaviourEvent::Rights(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(reply) = self.asked.remove(&request_id) {
                    let _ = reply.send(response);
                }
            }
            BehaviourEvent::Rights(request_response::Event::OutboundFailure {
                request_id, ..
            }) => {
                // The asker hears `None` and goes on without this holder.
                self.asked.remove(&request_id);
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.reachability = match new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                };
                tracing::info!(reachability = self.reachability, "AutoNAT");
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "reachable through relay");
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => self.on_hole_punch(remote_peer_id, result),
            _ => {}
        }
    }

    /// A hole punch (DCUtR) over a relayed connection finished. Punched: the relayed
    /// connection is closed, so sync runs on the direct one (and head office's relay carries
    /// nothing more). Not punched: the relayed connection keeps syncing, and the status says
    /// why there is no direct one.
    fn on_hole_punch(&mut self, peer: PeerId, result: Result<ConnectionId, dcutr::Error>) {
        let Some(info) = self.peers.get_mut(&peer) else {
            return;
        };
        match result {
            Ok(direct) => {
                tracing::info!(%peer, "hole punched: a direct connection through NAT");
                let relayed: Vec<ConnectionId> = info
                    .connections
                    .iter()
                    .filter(|(id, c)| c.transport == "relay" && **id != direct)
                    .map(|(id, _)| *id)
                    .collect();
                info.hole_punch = Some(HolePunch {
                    state: "direct",
                    detail: "hole punched through NAT: sync runs on a direct connection; the relayed one was closed".into(),
                });
                for id in relayed {
                    self.swarm.close_connection(id);
                }
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "hole punching failed; the relayed connection keeps syncing");
                info.hole_punch = Some(HolePunch {
                    state: "relayed",
                    detail: format!(
                        "hole punching failed ({e}); the relayed connection keeps syncing. A NAT that gives each destination its own port (symmetric NAT, as many mobile and corporate networks do) can't be punched: a router with port-preserving NAT, or a port forwarded to this node, would allow a direct connection"
                    ),
                });
            }
        }
        self.publish_status();
    }

    /// Guests that did not become members in time are disconnected, and an invite that
    /// lapsed stops being advertised.
    fn expire_guests(&mut self) {
        let now = Instant::now();
        if !self.inviter.is_open(now)
            && let Some(d) = &mut self.discovery
            && let Err(e) = d.advertise_pairing(false)
        {
            tracing::warn!(error = %e, "cannot withdraw the invite from mDNS");
        }
        let expired = gate::lock(&self.gate).expire_guests(now);
        for peer in expired {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Reads the answer to a pull off the loop, and refuses anything but a pull.
    fn serve(&mut self, peer: PeerId, request: Framed, channel: ResponseChannel<Framed>) {
        let (have, entries_max, bytes_max) = match request {
            Ok(Message::Pull {
                have,
                entries_max,
                bytes_max,
            }) => (have, entries_max, bytes_max),
            Ok(_) => return self.ban(peer, "sent a request that is not a pull"),
            Err(e) => return self.ban(peer, &format!("sent {e}")),
        };
        // An honest peer has one pull in flight; a few more are tolerated, not served.
        // Dropping the channel fails the peer's pull; it retries with backoff.
        {
            let Ok(mut serving) = self.serving.lock() else {
                return;
            };
            let n = serving.entry(peer).or_insert(0);
            if *n >= SERVES_PER_PEER_MAX {
                return;
            }
            *n += 1;
        }
        let repo = self.repo.clone();
        let tx = self.served_tx.clone();
        let serving = self.serving.clone();
        tokio::task::spawn_blocking(move || {
            match replication::serve(&repo, &have, entries_max, bytes_max) {
                Ok(answer) => {
                    let _ = tx.send((channel, answer));
                }
                Err(e) => tracing::warn!(error = %e, "cannot serve a pull"),
            }
            if let Ok(mut s) = serving.lock()
                && let Some(n) = s.get_mut(&peer)
            {
                *n -= 1;
                if *n == 0 {
                    s.remove(&peer);
                }
            }
        });
    }

    /// Listens through a relay, so peers that cannot reach us directly can through it.
    fn reserve_on(&mut self, relay: PeerId, listen_addrs: &[Multiaddr]) {
        let dialed = self
            .peers
            .get(&relay)
            .and_then(|p| p.connections.values().find(|c| c.transport != "relay"))
            .map(|c| without_peer(&c.address));
        let Some(base) = dialed.or_else(|| {
            listen_addrs
                .iter()
                .find(|a| transport_of(a) == "tcp")
                .cloned()
        }) else {
            return;
        };
        let circuit = base.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                tracing::info!(%circuit, "reserving a slot on a relay");
                self.reserved_on.push(relay);
            }
            Err(e) => tracing::warn!(%circuit, error = %e, "cannot listen through the relay"),
        }
    }

    fn on_found(&mut self, found: Found) {
        // Both sides of a LAN find each other; whichever dialed first, each found the other.
        if let Some(p) = self.peers.get_mut(&found.peer)
            && p.found_by == FoundBy::Inbound
        {
            p.found_by = FoundBy::Mdns;
        }
        if !self.dial_found {
            return;
        }
        let key = found.peer.to_string();
        {
            let g = gate::lock(&self.gate);
            let Some(target) = self.targets.get_or_add(
                key,
                || Target::new(Some(found.peer), FoundBy::Mdns, DIAL_BACKOFF_MIN),
                standing(&g),
            ) else {
                // Full of targets standing as high: a LAN cannot grow the set past its limit.
                return;
            };
            target.found_at(found.addrs);
            target.next_dial = Instant::now();
        }
        self.dial_due();
    }

    /// A pushed entry, checked before gossipsub may forward it. The blame for a bad one goes
    /// to its signed originator, never to the peer that relayed it. Returns whether to forward.
    fn on_push(&mut self, relayed_by: PeerId, source: Option<PeerId>, data: &[u8]) -> bool {
        let message = match Message::decode(data) {
            Ok(m @ Message::Push { .. }) => m,
            Ok(_) | Err(_) => {
                if let Some(origin) = source.filter(|s| self.swarm.is_connected(s)) {
                    self.ban(origin, "pushed something that is not an entry");
                }
                return false;
            }
        };
        let Message::Push { entry } = &message else {
            return false;
        };
        // Verified once here: the repo remembers it, and its writer does not verify it again.
        if self.repo.verify_signature(entry).is_ok() {
            // Only members' entries travel on: anything else would be parked and checked
            // again on every node for nothing. (A member admitted too recently for this node
            // to know is pulled later.)
            if !self.membership.borrow().is_active(&entry.entry.author) {
                return false;
            }
            if let Some(info) = self.peers.get_mut(&relayed_by) {
                info.heard = Some(Instant::now());
            }
            self.sync.pushed(&relayed_by, message);
            return true;
        }
        // Not forwarded. From a direct peer, the store keeps it aside and the core
        // disconnects that peer; from further away, only its originator's neighbours act.
        if let Some(origin) = source {
            self.sync.pushed(&origin, message);
        }
        false
    }

    /// Where another node says it can be reached. Returns whether to forward.
    fn on_announce(&mut self, source: PeerId, data: &[u8]) -> bool {
        if source == *self.swarm.local_peer_id() {
            return false;
        }
        let Ok(addrs) = serde_json::from_slice::<Vec<String>>(data) else {
            return false;
        };
        if !self.dial_found {
            // Forwarded for others; this node dials only the peers it was given.
            return true;
        }
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .take(TARGET_ADDRS_MAX)
            .filter_map(|a| a.parse().ok())
            .map(|a: Multiaddr| {
                if transport_of(&a) == "relay" && peer_of(&a).is_none() {
                    a.with(Protocol::P2p(source))
                } else {
                    a
                }
            })
            .collect();
        if addrs.is_empty() {
            return false;
        }
        let found_by = if addrs.iter().any(|a| transport_of(a) == "relay") {
            FoundBy::Relay
        } else {
            FoundBy::Gossip
        };
        let key = source.to_string();
        let g = gate::lock(&self.gate);
        let Some(t) = self.targets.get_or_add(
            key,
            || Target::new(Some(source), found_by, DIAL_BACKOFF_MIN),
            standing(&g),
        ) else {
            return true; // Still worth forwarding; we just keep no more dial targets.
        };
        // The latest announcement is the truth: addresses it no longer lists are gone. An
        // mDNS find is fresher than a peer's word, and the user's addresses stay.
        if t.found_by != FoundBy::Mdns {
            t.found_at(addrs);
        }
        true
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        gate::lock(&self.gate).expire_bans(now);
        let mut dials = Vec::new();
        let connected = |p: &PeerId| self.swarm.is_connected(p);
        self.targets.forget_failing(connected);
        for t in self.targets.values_mut() {
            if t.next_dial > now {
                continue;
            }
            if let Some(p) = t.peer
                && (self.swarm.is_connected(&p) || gate::lock(&self.gate).is_banned(&p, now))
            {
                t.failures = 0;
                continue;
            }
            t.failures = t.failures.saturating_add(1);
            t.next_dial = now + t.backoff;
            t.backoff = (t.backoff * 2).min(DIAL_BACKOFF_MAX);
            dials.push(match t.peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(t.addrs.clone())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(t.addrs[0].clone())
                    .build(),
            });
        }
        for d in dials {
            if let Err(e) = self.swarm.dial(d) {
                tracing::debug!(error = %e, "cannot dial");
            }
        }
    }

    fn announce(&mut self) {
        if self
            .last_announce
            .is_some_and(|t| t.elapsed() < ANNOUNCE_INTERVAL)
            || self.peers.is_empty()
        {
            return;
        }
        // Loopback addresses go too: they reach a peer on the same machine, and elsewhere
        // they fail harmlessly (the peer id does not match).
        let addrs: Vec<String> = self
            .listen
            .iter()
            .filter(|a| {
                !a.iter().any(|p| match p {
                    Protocol::Ip4(ip) => ip.is_unspecified(),
                    Protocol::Ip6(ip) => ip.is_unspecified(),
                    _ => false,
                })
            })
            .map(|a| a.to_string())
            .collect();
        let Ok(data) = serde_json::to_vec(&addrs) else {
            return;
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.announce_topic.clone(), data);
        self.last_announce = Some(Instant::now());
    }

    fn publish_status(&mut self) {
        let local = self.repo.version_vector().ok();
        let now = Instant::now();
        let peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .filter_map(|(id, info)| {
                let best = info.best()?;
                let sync = self.sync.peer(id);
                let apart = |a: &VersionVector, b: &VersionVector| -> u64 {
                    a.iter().map(|(d, s)| s.saturating_sub(b.get(d))).sum()
                };
                let holder = sync.as_ref().and_then(|s| s.holder.as_ref());
                let (behind_entries, lacks_entries) = match (holder, &local) {
                    (Some(h), Some(l)) => (Some(apart(h, l)), Some(apart(l, h))),
                    _ => (None, None),
                };
                Some(PeerStatus {
                    pull_failures: sync.as_ref().map_or(0, |s| s.failures),
                    behind_entries,
                    lacks_entries,
                    last_contact_ms_ago: info
                        .heard
                        .map(|t| now.duration_since(t).as_millis() as u64),
                    peer_id: id.to_string(),
                    device_id: info.device.map(|d| d.to_string()),
                    found_by: info.found_by,
                    transport: best.transport,
                    address: best.address.to_string(),
                    rtt_ms: info.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    hole_punch: info.hole_punch.clone(),
                    synced: sync.as_ref().is_some_and(|s| s.synced),
                    entries_received: sync.map(|s| s.entries_received).unwrap_or(0),
                })
            })
            .collect();
        let mut known = local.clone().unwrap_or_default();
        for (_, sync) in self.sync.peers() {
            for (author, seq) in sync.holder.iter().flat_map(VersionVector::iter) {
                known.advance(*author, seq);
            }
        }
        self.export_peers(&peers);
        if let Ok(mut s) = self.status.lock() {
            s.known_entries = known.total();
            s.listen = self.listen.iter().map(|a| a.to_string()).collect();
            s.reachability = self.reachability.into();
            s.parked = self.sync.parked();
            s.peers = peers;
            s.pairing_open = self.inviter.is_open(Instant::now());
            s.refused_connections = gate::lock(&self.gate).refused;
            s.dial_targets = self.targets.len();
        }
    }

    fn count_bytes(&self, direction: &'static str, bytes: usize) {
        self.repo
            .metrics()
            .sync_bytes
            .get_or_create(&crate::metrics::Direction { direction })
            .inc_by(bytes as u64);
    }

    /// The per-peer gauges, from the status just built: peers gone since drop out.
    fn export_peers(&self, peers: &[PeerStatus]) {
        let m = self.repo.metrics();
        m.peers_connected.set(peers.len() as i64);
        m.peer_behind_entries.clear();
        m.peer_lacks_entries.clear();
        m.peer_last_contact_seconds.clear();
        m.peer_rtt_seconds.clear();
        for p in peers {
            let label = crate::metrics::Peer {
                peer: p.device_id.clone().unwrap_or_else(|| p.peer_id.clone()),
            };
            if let Some(n) = p.behind_entries {
                m.peer_behind_entries.get_or_create(&label).set(n as i64);
            }
            if let Some(n) = p.lacks_entries {
                m.peer_lacks_entries.get_or_create(&label).set(n as i64);
            }
            if let Some(ms) = p.last_contact_ms_ago {
                m.peer_last_contact_seconds
                    .get_or_create(&label)
                    .set(ms as f64 / 1000.0);
            }
            if let Some(ms) = p.rtt_ms {
                m.peer_rtt_seconds.get_or_create(&label).set(ms / 1000.0);
            }
        }
    }
}

async fn next_found(rx: &mut Option<mpsc::Receiver<Found>>) -> Option<Found> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies entries in the order the core asked for, one batch at a time.
async fn applier(
    repo: Repo,
    mut rx: mpsc::UnboundedReceiver<(Source<PeerId>, Vec<SignedEntry>, usize)>,
    tx: mpsc::UnboundedSender<Applied>,
) {
    while let Some(first) = rx.recv().await {
        // Everything queued meanwhile goes to the store together, in order: the writer then
        // makes it durable with one log sync, where one apply per push cost one sync each and
        // capped how many pushes a node could take in a second.
        let mut group = vec![first];
        let mut entries_n = group[0].1.len();
        while entries_n < APPLY_GROUP_ENTRIES_MAX
            && let Ok(more) = rx.try_recv()
        {
            entries_n += more.1.len();
            group.push(more);
        }
        let counts: Vec<usize> = group.iter().map(|(_, e, _)| e.len()).collect();
        let entries: Vec<SignedEntry> = group
            .iter_mut()
            .flat_map(|(_, e, _)| std::mem::take(e))
            .collect();
        let (results, vv) = match replication::apply(&repo, entries).await {
            Ok(r) => r,
            Err(e) => {
                // The store failed, not the entries: report nothing applied, so the core
                // backs off and pulls them again.
                tracing::warn!(error = %e, "cannot apply entries from a peer");
                (Vec::new(), repo.version_vector().unwrap_or_default())
            }
        };
        let mut results = results.into_iter();
        for ((source, _, bytes), n) in group.into_iter().zip(counts) {
            let applied = Applied {
                bytes,
                source,
                results: results.by_ref().take(n).collect(),
                vv: vv.clone(),
            };
            if tx.send(applied).is_err() {
                return;
            }
        }
    }
}
