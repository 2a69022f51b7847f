//! Addresses this node may be reachable at that no protocol reports, handed to the swarm as
//! candidates so that hole punching (DCUtR) offers them to the other side.
//!
//! Why: a node reaches head office's relay over one transport, TCP or QUIC, whichever
//! connects first, so identify tells it its public address on that transport only. Two
//! shops that reached the relay over different transports then offer each other addresses
//! they cannot punch together (one dials UDP where the other opened a TCP mapping), and the
//! hole punch fails. Behind a port-preserving NAT, which is the kind that can be punched at
//! all, the public port of one transport is the other's too when the node listens on both at
//! one port (as it does by default): so each observed address is offered on both.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Candidates waiting for the swarm; more are dropped (identify reports few).
const QUEUED_MAX: usize = 16;

#[derive(Default)]
pub struct Candidates {
    queue: VecDeque<Multiaddr>,
    waker: Option<Waker>,
}

impl Candidates {
    /// Offers `observed` (our address as a peer saw it) on our other transport, if we listen
    /// on both at the observed port's number locally.
    pub fn translate(&mut self, observed: &Multiaddr, listen: &[Multiaddr]) {
        let Some(other) = other_transport(observed) else {
            return;
        };
        let port_of = |a: &Multiaddr| {
            a.iter().find_map(|p| match p {
                Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
                _ => None,
            })
        };
        let same_kind = |a: &Multiaddr, b: &Multiaddr| {
            a.iter().any(|p| matches!(p, Protocol::QuicV1))
                == b.iter().any(|p| matches!(p, Protocol::QuicV1))
        };
        let listens_there = listen
            .iter()
            .any(|l| same_kind(l, &other) && port_of(l) == port_of(&other));
        if listens_there && self.queue.len() < QUEUED_MAX {
            self.queue.push_back(other);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// `/ip4/A/tcp/P` <-> `/ip4/A/udp/P/quic-v1`; `None` for anything else (relayed included).
fn other_transport(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut parts = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_)));
    let ip = parts
        .next()
        .filter(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)))?;
    let mut out = Multiaddr::empty().with(ip);
    match (parts.next()?, parts.next(), parts.next()) {
        (Protocol::Tcp(port), None, None) => {
            out.push(Protocol::Udp(port));
            out.push(Protocol::QuicV1);
        }
        (Protocol::Udp(port), Some(Protocol::QuicV1), None) => out.push(Protocol::Tcp(port)),
        _ => return None,
    }
    Some(out)
}

impl NetworkBehaviour for Candidates {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.queue.pop_front() {
            Some(a) => Poll::Ready(ToSwarm::NewExternalAddrCandidate(a)),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observed_address_is_offered_on_the_other_transport_we_listen_on() {
        let listen: Vec<Multiaddr> = [
            "/ip4/192.168.1.2/tcp/7421",
            "/ip4/192.168.1.2/udp/7421/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let mut c = Candidates::default();
        c.translate(&"/ip4/203.0.113.1/tcp/7421".parse().unwrap(), &listen);
        c.translate(
            &"/ip4/203.0.113.1/udp/7421/quic-v1".parse().unwrap(),
            &listen,
        );
        // Another port than we listen on: a NAT that does not keep ports; nothing offered.
        c.translate(&"/ip4/203.0.113.1/tcp/40000".parse().unwrap(), &listen);
        // Relayed: never.
        c.translate(
            &"/ip4/203.0.113.10/tcp/7421/p2p/12D3KooWR65mrHugfht34DuxHbUTsqeTym9M9efiSQgxo8uf69ND/p2p-circuit"
                .parse()
                .unwrap(),
            &listen,
        );
        let offered: Vec<String> = c.queue.iter().map(ToString::to_string).collect();
        assert_eq!(
            offered,
            [
                "/ip4/203.0.113.1/udp/7421/quic-v1",
                "/ip4/203.0.113.1/tcp/7421"
            ]
        );
    }
}
