//! The dial targets: who this node keeps trying to reach, each with its addresses and its
//! backoff. Targets come from the configuration, from mDNS on the LAN and from peers'
//! announcements; [`Targets::get_or_add`] is the one way in, and it holds the limit, so
//! nothing a LAN neighbour or a peer says can grow the set past it. Targets learned from peers
//! that keep failing are forgotten; mDNS finds are kept (mDNS may not tell of a till again
//! when it comes back), within the limit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::FoundBy;

/// Dial targets kept, and addresses per target.
pub(super) const TARGETS_MAX: usize = 256;
pub(super) const TARGET_ADDRS_MAX: usize = 8;
/// A target learned from another peer (not configured, not seen by mDNS) is forgotten after
/// this many dials in a row that did not connect.
const LEARNED_TARGET_FAILURES_MAX: u32 = 8;

pub(super) struct Target {
    pub peer: Option<PeerId>,
    pub addrs: Vec<Multiaddr>,
    pub found_by: FoundBy,
    pub next_dial: Instant,
    pub backoff: Duration,
    /// Dials in a row that did not connect.
    pub failures: u32,
}

impl Target {
    pub fn new(peer: Option<PeerId>, found_by: FoundBy, backoff: Duration) -> Target {
        Target {
            peer,
            addrs: Vec::new(),
            found_by,
            next_dial: Instant::now(),
            backoff,
            failures: 0,
        }
    }
}

#[derive(Default)]
pub(super) struct Targets {
    map: BTreeMap<String, Target>,
}

impl Targets {
    /// The target under `key`, made with `make` if it is new and there is room. A configured
    /// address (`FoundBy::Address`: the user's own, and few) always has room.
    pub fn get_or_add(
        &mut self,
        key: String,
        make: impl FnOnce() -> Target,
    ) -> Option<&mut Target> {
        if !self.map.contains_key(&key) {
            let target = make();
            if self.map.len() >= TARGETS_MAX && target.found_by != FoundBy::Address {
                return None;
            }
            self.map.insert(key.clone(), target);
        }
        self.map.get_mut(&key)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Target> {
        self.map.values_mut()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Forgets the learned targets that keep failing and are not connected.
    pub fn forget_failing(&mut self, connected: impl Fn(&PeerId) -> bool) {
        self.map.retain(|_, t| {
            !(matches!(t.found_by, FoundBy::Relay | FoundBy::Gossip)
                && t.failures >= LEARNED_TARGET_FAILURES_MAX
                && !t.peer.as_ref().is_some_and(&connected))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> (String, Target) {
        let peer = PeerId::random();
        (
            peer.to_string(),
            Target::new(Some(peer), FoundBy::Mdns, Duration::from_millis(500)),
        )
    }

    /// A LAN neighbour advertising ten thousand peer ids grows the set to its limit, no more;
    /// the user's own addresses still go in; learned targets that keep failing are forgotten.
    #[test]
    fn the_limit_holds_whatever_the_lan_says() {
        let mut t = Targets::default();
        for _ in 0..10_000 {
            let (key, target) = found();
            let _ = t.get_or_add(key, || target);
        }
        assert_eq!(t.len(), TARGETS_MAX);
        let configured = t.get_or_add("/ip4/10.0.0.1/tcp/7421".into(), || {
            Target::new(None, FoundBy::Address, Duration::from_millis(500))
        });
        assert!(configured.is_some(), "a configured address always has room");
        for target in t.values_mut() {
            target.failures = LEARNED_TARGET_FAILURES_MAX;
            if target.found_by == FoundBy::Mdns {
                target.found_by = FoundBy::Gossip;
            }
        }
        t.forget_failing(|_| false);
        assert_eq!(t.len(), 1, "only the configured address is kept");
    }
}
