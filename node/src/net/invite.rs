//! Invite codes, simple form: who owns the mesh and where to reach a member.
//!
//! `tm1:<owner device id>@<multiaddr>,<multiaddr>...`, each address ending in `/p2p/<PeerId>`.
//! Anyone holding the code can join; the trust issue replaces this with a short one-time code
//! checked by a password-authenticated key exchange.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use thiserror::Error;
use tillmesh_protocol::DeviceId;

const PREFIX: &str = "tm1:";
/// Addresses carried by one invite, at most.
pub const INVITE_ADDRS_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub owner: DeviceId,
    pub addrs: Vec<Multiaddr>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("an invite starts with '{PREFIX}'; copy the whole last line `tillmesh invite` printed")]
    Prefix,
    #[error("the invite has no '@' between the owner and the addresses")]
    Shape,
    #[error("the owner in the invite is not a device id: {0}")]
    Owner(String),
    #[error("address {0:?} in the invite is not a multiaddr ending in /p2p/<peer id>")]
    Addr(String),
    #[error("the invite carries no address to reach the mesh")]
    NoAddress,
}

impl Invite {
    pub fn encode(&self) -> String {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .take(INVITE_ADDRS_MAX)
            .map(|a| a.to_string())
            .collect();
        format!("{PREFIX}{}@{}", self.owner, addrs.join(","))
    }

    pub fn decode(code: &str) -> Result<Invite, InviteError> {
        let rest = code
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(InviteError::Prefix)?;
        let (owner, addrs) = rest.split_once('@').ok_or(InviteError::Shape)?;
        let owner: DeviceId = owner
            .parse()
            .map_err(|e: tillmesh_protocol::IdParseError| InviteError::Owner(e.to_string()))?;
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
        if addrs.is_empty() {
            return Err(InviteError::NoAddress);
        }
        Ok(Invite { owner, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_an_invite() {
        let owner = tillmesh_protocol::DeviceKey::from_secret([3; 32]).device_id();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let invite = Invite {
            owner,
            addrs: vec![addr],
        };
        assert_eq!(Invite::decode(&invite.encode()).unwrap(), invite);
        assert_eq!(Invite::decode("hello"), Err(InviteError::Prefix));
        assert_eq!(Invite::decode("tm1:abc"), Err(InviteError::Shape));
        assert!(matches!(
            Invite::decode("tm1:zz@/ip4/1.2.3.4/tcp/1"),
            Err(InviteError::Owner(_))
        ));
        assert!(matches!(
            Invite::decode(&format!("tm1:{owner}@/ip4/1.2.3.4/tcp/1")),
            Err(InviteError::Addr(_))
        ));
        assert_eq!(
            Invite::decode(&format!("tm1:{owner}@")),
            Err(InviteError::NoAddress)
        );
    }
}
