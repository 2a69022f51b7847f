//! Invites as people pass them around: `tm2:<CODE>@<multiaddr>,<multiaddr>...`, or the short
//! code alone on a LAN, where mDNS finds the inviting device.
//!
//! Each address ends in `/p2p/<PeerId>` of the inviting device. The code is the secret; the
//! addresses are not (see `pairing` for why the code never crosses the network).

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use thiserror::Error;

use super::pairing::{display_code, normalize_code};

const PREFIX: &str = "tm2:";
/// Addresses carried by one invite, at most.
pub const INVITE_ADDRS_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Normalised (see `pairing::normalize_code`).
    pub code: String,
    /// Empty when only the code was given: the inviter is found by mDNS.
    pub addrs: Vec<Multiaddr>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InviteError {
    #[error(
        "{0:?} is not an invite: give the short code (like K7M2-9QXD) or the whole last line `tillmesh invite` printed (tm2:...)"
    )]
    Shape(String),
    #[error("address {0:?} in the invite is not a multiaddr ending in /p2p/<peer id>")]
    Addr(String),
    #[error("the addresses in the invite name more than one device")]
    TwoDevices,
}

impl Invite {
    pub fn encode(&self) -> String {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .take(INVITE_ADDRS_MAX)
            .map(|a| a.to_string())
            .collect();
        if addrs.is_empty() {
            display_code(&self.code)
        } else {
            format!("{PREFIX}{}@{}", display_code(&self.code), addrs.join(","))
        }
    }

    pub fn decode(text: &str) -> Result<Invite, InviteError> {
        let text = text.trim();
        let shape = || InviteError::Shape(text.chars().take(40).collect());
        let Some(rest) = text.strip_prefix(PREFIX) else {
            let code = normalize_code(text).ok_or_else(shape)?;
            return Ok(Invite {
                code,
                addrs: Vec::new(),
            });
        };
        let (code, addrs) = rest.split_once('@').ok_or_else(shape)?;
        let code = normalize_code(code).ok_or_else(shape)?;
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .take(INVITE_ADDRS_MAX)
            .map(|a| {
                a.parse::<Multiaddr>()
                    .ok()
                    .filter(|m| matches!(m.iter().last(), Some(Protocol::P2p(_))))
                    .ok_or_else(|| InviteError::Addr(a.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let invite = Invite { code, addrs };
        invite.inviter()?;
        Ok(invite)
    }

    /// The inviting device, if the invite names it.
    pub fn inviter(&self) -> Result<Option<PeerId>, InviteError> {
        let mut peers = self.addrs.iter().filter_map(|a| match a.iter().last() {
            Some(Protocol::P2p(p)) => Some(p),
            _ => None,
        });
        let first = peers.next();
        if peers.any(|p| Some(p) != first) {
            return Err(InviteError::TwoDevices);
        }
        Ok(first)
    }
}

/// Where a new device should dial the inviter: its listen addresses (`NetStatus::listen`)
/// that name a host, each ending in its peer id, those a new device is likely to reach first
/// first (the LAN before loopback, direct before relayed), at most [`INVITE_ADDRS_MAX`].
pub fn dial_addrs(peer: PeerId, listen: &[String]) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = listen
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| {
            !a.iter().any(|p| match p {
                Protocol::Ip4(ip) => ip.is_unspecified(),
                _ => false,
            })
        })
        .map(|a| {
            if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a
            } else {
                a.with(Protocol::P2p(peer))
            }
        })
        .collect();
    addrs.sort_by_key(|a| {
        let relayed = a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        let loopback = a
            .iter()
            .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()));
        (relayed, loopback)
    });
    addrs.truncate(INVITE_ADDRS_MAX);
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_an_invite() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let invite = Invite {
            code: "K7M29QXD".into(),
            addrs: vec![addr],
        };
        assert_eq!(Invite::decode(&invite.encode()).unwrap(), invite);
        assert_eq!(invite.inviter(), Ok(Some(peer)));
        let bare = Invite::decode(" k7m2-9qxd ").unwrap();
        assert_eq!(bare.code, "K7M29QXD");
        assert!(bare.addrs.is_empty());
        assert!(matches!(
            Invite::decode("hello"),
            Err(InviteError::Shape(_))
        ));
        assert!(matches!(
            Invite::decode("tm2:abc"),
            Err(InviteError::Shape(_))
        ));
        assert!(matches!(
            Invite::decode("tm2:K7M2-9QXD@/ip4/1.2.3.4/tcp/1"),
            Err(InviteError::Addr(_))
        ));
    }
}
