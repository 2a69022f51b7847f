//! Who may do what on this node's connections: members sync, devices come to pair while an
//! invite is open (guests) may only pair, banned peers and everyone else are turned away.
//!
//! The driver changes the [`Gate`]; the swarm reads it through [`MembersOnly`], which wraps each
//! protocol only members may speak (sync, gossip). A connection is judged when it is
//! established, before any protocol handler exists: a refused one is denied there, and a
//! guest's gets no handler for those protocols at all, so nothing a non-member sends on them
//! is ever read into a buffer. Only the pairing protocol (4 KiB requests) is open to guests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use either::Either;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Devices that are not members connected at once to pair; more are turned away.
pub(super) const GUESTS_MAX: usize = 16;
/// A guest is disconnected after this long.
pub(super) const GUEST_TTL: Duration = Duration::from_secs(60);

/// How the gate judges a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Member,
    /// Not a member, come while an invite is open: it may pair, nothing else.
    Guest,
    Refused(&'static str),
}

#[derive(Default)]
pub(super) struct Gate {
    /// PeerIds of the active members.
    members: HashSet<PeerId>,
    /// Whether this device's own admission is held. Until then it is bootstrapping: it talks
    /// to any peer of its mesh, since it cannot tell members yet, and trusts only what entries
    /// prove (every entry is checked against the membership from the owner down).
    admitted: bool,
    /// Non-members connected while an invite is open, and since when.
    guests: HashMap<PeerId, Instant>,
    /// Until when guests may connect (an invite is open); none: they may not.
    guests_until: Option<Instant>,
    /// Peers that misbehaved, refused until then.
    banned: HashMap<PeerId, Instant>,
    /// Connections refused because the peer is not a member.
    pub refused: u64,
}

pub(super) type SharedGate = Arc<Mutex<Gate>>;

/// The gate, whatever a panic elsewhere left: its state is a set of facts, each whole.
pub(super) fn lock(g: &SharedGate) -> std::sync::MutexGuard<'_, Gate> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    pub fn set_members(&mut self, members: HashSet<PeerId>, admitted: bool) {
        self.members = members;
        self.admitted = admitted;
        let members = &self.members;
        self.guests.retain(|p, _| !members.contains(p));
    }

    /// Whether `peer` may sync with this node.
    pub fn allowed(&self, peer: &PeerId) -> bool {
        !self.admitted || self.members.contains(peer)
    }

    /// Whether this node answers `peer`'s pulls: only once it knows who the members are, since
    /// a device bootstrapping its membership cannot tell who may read.
    pub fn serves(&self, peer: &PeerId) -> bool {
        self.admitted && self.members.contains(peer)
    }

    pub fn is_guest(&self, peer: &PeerId) -> bool {
        self.guests.contains_key(peer)
    }

    pub fn welcome_guests_until(&mut self, until: Option<Instant>) {
        self.guests_until = until;
    }

    pub fn ban(&mut self, peer: PeerId, until: Instant) {
        self.banned.insert(peer, until);
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// Forgets bans that have run out.
    pub fn expire_bans(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
    }

    /// How a connection from `peer` is judged now. Changes nothing: every protocol behind
    /// the gate asks, and all must get the same answer.
    pub fn judge(&self, peer: &PeerId, now: Instant) -> Admission {
        if self.is_banned(peer, now) {
            return Admission::Refused("it misbehaved and is banned for a while");
        }
        if self.allowed(peer) {
            return Admission::Member;
        }
        let welcome = self.guests_until.is_some_and(|t| now < t);
        if welcome && (self.guests.contains_key(peer) || self.guests.len() < GUESTS_MAX) {
            Admission::Guest
        } else {
            Admission::Refused("it is not a member of this mesh")
        }
    }

    /// Records a guest's connection.
    pub fn guest_arrived(&mut self, peer: PeerId, now: Instant) {
        self.guests.entry(peer).or_insert(now);
    }

    pub fn guest_left(&mut self, peer: &PeerId) {
        self.guests.remove(peer);
    }

    /// Guests that stayed past their time, forgotten here; the caller disconnects them.
    pub fn expire_guests(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> = self
            .guests
            .iter()
            .filter(|(_, since)| now.duration_since(**since) > GUEST_TTL)
            .map(|(p, _)| *p)
            .collect();
        for p in &expired {
            self.guests.remove(p);
        }
        expired
    }
}

/// A protocol only members may speak, behind the gate (see the module's doc).
pub struct MembersOnly<B> {
    inner: B,
    gate: SharedGate,
    /// Connections given no handler here (guests'): `inner` never hears of them, so it never
    /// addresses them.
    shut: HashSet<ConnectionId>,
    /// Connections per peer that `inner` knows of: the counts it is told are these, not the
    /// swarm's, which include the hidden ones (a peer may hold a guest's connection and a
    /// member's at once while its membership changes).
    open: HashMap<PeerId, usize>,
}

impl<B> MembersOnly<B> {
    pub(super) fn new(inner: B, gate: SharedGate) -> Self {
        MembersOnly {
            inner,
            gate,
            shut: HashSet::new(),
            open: HashMap::new(),
        }
    }

    /// A handler for `inner`, none, or a denial.
    fn admit(&mut self, connection: ConnectionId, peer: &PeerId) -> Result<bool, ConnectionDenied> {
        match lock(&self.gate).judge(peer, Instant::now()) {
            Admission::Member => Ok(true),
            Admission::Guest => {
                self.shut.insert(connection);
                Ok(false)
            }
            Admission::Refused(why) => Err(ConnectionDenied::new(Refused(why))),
        }
    }
}

impl<B> std::ops::Deref for MembersOnly<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for MembersOnly<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

/// Why the gate denied a connection.
#[derive(Debug, thiserror::Error)]
#[error("refused by the gate: {0}")]
pub struct Refused(pub &'static str);

type Handler<B> = Either<THandler<B>, dummy::ConnectionHandler>;

impl<B: NetworkBehaviour> NetworkBehaviour for MembersOnly<B> {
    type ConnectionHandler = Handler<B>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.admit(connection_id, &peer)? {
            return Ok(Handler::<B>::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
            .map(Handler::<B>::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.admit(connection_id, &peer)? {
            return Ok(Handler::<B>::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
            .map(Handler::<B>::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) if self.shut.contains(&e.connection_id) => {}
            FromSwarm::ConnectionClosed(e) if self.shut.remove(&e.connection_id) => {}
            FromSwarm::AddressChange(e) if self.shut.contains(&e.connection_id) => {}
            // A connection denied by another protocol after this one let it through.
            FromSwarm::DialFailure(e) => {
                self.shut.remove(&e.connection_id);
                self.inner.on_swarm_event(FromSwarm::DialFailure(e));
            }
            FromSwarm::ListenFailure(e) => {
                self.shut.remove(&e.connection_id);
                self.inner.on_swarm_event(FromSwarm::ListenFailure(e));
            }
            FromSwarm::ConnectionEstablished(mut e) => {
                let open = self.open.entry(e.peer_id).or_default();
                e.other_established = *open;
                *open += 1;
                self.inner
                    .on_swarm_event(FromSwarm::ConnectionEstablished(e));
            }
            FromSwarm::ConnectionClosed(mut e) => {
                let remaining = match self.open.get_mut(&e.peer_id) {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n
                    }
                    None => 0,
                };
                if remaining == 0 {
                    self.open.remove(&e.peer_id);
                }
                e.remaining_established = remaining;
                self.inner.on_swarm_event(FromSwarm::ConnectionClosed(e));
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(e) => self
                .inner
                .on_connection_handler_event(peer_id, connection_id, e),
            Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members get in; a stranger is refused unless an invite is open, then at most
    /// `GUESTS_MAX` of them, each only as a guest; a banned member is refused until its ban
    /// runs out.
    #[test]
    fn the_gate_judges_members_guests_strangers_and_bans() {
        let now = Instant::now();
        let member = PeerId::random();
        let mut g = Gate::default();
        g.set_members([member].into(), true);
        assert_eq!(g.judge(&member, now), Admission::Member);
        let stranger = PeerId::random();
        assert!(matches!(g.judge(&stranger, now), Admission::Refused(_)));
        g.welcome_guests_until(Some(now + Duration::from_secs(60)));
        for _ in 0..GUESTS_MAX {
            let p = PeerId::random();
            assert_eq!(g.judge(&p, now), Admission::Guest);
            g.guest_arrived(p, now);
        }
        assert!(
            matches!(g.judge(&stranger, now), Admission::Refused(_)),
            "no room for more guests"
        );
        g.ban(member, now + Duration::from_secs(1));
        assert!(matches!(g.judge(&member, now), Admission::Refused(_)));
        assert_eq!(
            g.judge(&member, now + Duration::from_secs(2)),
            Admission::Member
        );
        // A guest admitted is a guest no more.
        let joined = PeerId::random();
        g.guest_arrived(joined, now);
        g.set_members([member, joined].into(), true);
        assert!(!g.is_guest(&joined));
        // A device still joining cannot tell members yet: it talks to anyone of its mesh.
        let mut joining = Gate::default();
        joining.set_members(HashSet::new(), false);
        assert_eq!(joining.judge(&stranger, now), Admission::Member);
    }
}
