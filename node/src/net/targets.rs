//! The dial targets: who this node keeps trying to reach, each with its addresses and its
//! backoff. Targets come from the configuration, from mDNS on the LAN and from peers'
//! announcements; [`Targets::get_or_add`] is the one way in, and it holds the limit, so
//! nothing a LAN neighbour or a peer says can grow the set past it. Targets learned from peers
//! that keep failing are forgotten; mDNS finds are kept (mDNS may not tell of a till again
//! when it comes back), within the limit.
//!
//! When the set is full, a newcomer takes the place of a target of lower [`Standing`]: a
//! member's find pushes out a stranger's, so a LAN neighbour advertising thousands of made-up
//! peer ids can fill the set, but cannot keep the shop's own tills out of it. The user's own
//! addresses always have room, and what mDNS says never replaces them.

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

/// Who gives way when the set is full: lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Standing {
    /// A peer id no member holds (or not known to be a member yet).
    Stranger,
    /// A member's device.
    Member,
    /// An address the user configured.
    Configured,
}

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

    /// Where a find (mDNS, an announcement) says the peer is now. A configured target keeps
    /// the user's addresses first and takes new ones only into the room left; any other
    /// believes the latest find.
    pub fn found_at(&mut self, addrs: Vec<Multiaddr>) {
        if self.found_by == FoundBy::Address {
            for a in addrs {
                if self.addrs.len() >= TARGET_ADDRS_MAX {
                    break;
                }
                if !self.addrs.contains(&a) {
                    self.addrs.push(a);
                }
            }
        } else {
            self.addrs = addrs;
            self.addrs.truncate(TARGET_ADDRS_MAX);
        }
    }
}

#[derive(Default)]
pub(super) struct Targets {
    map: BTreeMap<String, Target>,
}

impl Targets {
    /// The target under `key`, made with `make` if it is new and there is room, or if a
    /// target of lower standing can give it its place (the one that failed most goes). A
    /// configured address (the user's own, and few) always has room. Among equals, the first
    /// keeps its place: finds cannot churn the set.
    pub fn get_or_add(
        &mut self,
        key: String,
        make: impl FnOnce() -> Target,
        standing: impl Fn(&Target) -> Standing,
    ) -> Option<&mut Target> {
        if !self.map.contains_key(&key) {
            let target = make();
            let rank = standing(&target);
            if self.map.len() >= TARGETS_MAX && rank != Standing::Configured {
                let weakest = self
                    .map
                    .iter()
                    .map(|(k, t)| (standing(t), std::cmp::Reverse(t.failures), k))
                    .filter(|(s, _, _)| *s < rank)
                    .min()
                    .map(|(_, _, k)| k.clone());
                self.map.remove(&weakest?);
            }
            self.map.insert(key.clone(), target);
        }
        self.map.get_mut(&key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Target> {
        self.map.values_mut()
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

    /// Members are the peers in `members`; configured addresses are configured.
    fn standing_in(members: &[PeerId]) -> impl Fn(&Target) -> Standing + '_ {
        move |t| {
            if t.found_by == FoundBy::Address {
                Standing::Configured
            } else if t.peer.is_some_and(|p| members.contains(&p)) {
                Standing::Member
            } else {
                Standing::Stranger
            }
        }
    }

    /// A LAN neighbour advertising ten thousand peer ids grows the set to its limit, no more;
    /// the user's own addresses still go in; learned targets that keep failing are forgotten.
    #[test]
    fn the_limit_holds_whatever_the_lan_says() {
        let mut t = Targets::default();
        let strangers = standing_in(&[]);
        for _ in 0..10_000 {
            let (key, target) = found();
            let _ = t.get_or_add(key, || target, &strangers);
        }
        assert_eq!(t.len(), TARGETS_MAX);
        let configured = t.get_or_add(
            "/ip4/10.0.0.1/tcp/7421".into(),
            || Target::new(None, FoundBy::Address, Duration::from_millis(500)),
            &strangers,
        );
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

    /// A full set of strangers' finds gives way to a member's, one stranger at a time, the
    /// most failed first; members never give way to strangers, nor to each other.
    #[test]
    fn a_member_pushes_out_a_stranger_never_the_other_way() {
        let mut t = Targets::default();
        let (member_key, member) = found();
        let member_peer = member.peer.unwrap();
        let members = [member_peer];
        let standing = standing_in(&members);
        for _ in 0..TARGETS_MAX {
            let (key, target) = found();
            let _ = t.get_or_add(key, || target, &standing);
        }
        let (worst, _) = t.map.iter().next().map(|(k, _)| (k.clone(), ())).unwrap();
        t.map.get_mut(&worst).unwrap().failures = 5;
        assert!(
            t.get_or_add(member_key.clone(), || member, &standing)
                .is_some(),
            "a member's find gets in"
        );
        assert_eq!(t.len(), TARGETS_MAX);
        assert!(
            !t.map.contains_key(&worst),
            "the most failed stranger gave way"
        );
        // More strangers cannot push the member out.
        for _ in 0..1_000 {
            let (key, target) = found();
            let _ = t.get_or_add(key, || target, &standing);
        }
        assert!(t.map.contains_key(&member_key));
    }

    /// mDNS may say where a configured peer is too, but never takes the user's address away.
    #[test]
    fn a_find_adds_to_a_configured_target_and_replaces_a_found_one() {
        let configured: Multiaddr = "/ip4/10.0.0.1/tcp/7421".parse().unwrap();
        let lan: Multiaddr = "/ip4/192.168.1.9/tcp/7421".parse().unwrap();
        let mut t = Target::new(None, FoundBy::Address, Duration::from_millis(500));
        t.addrs.push(configured.clone());
        t.found_at(vec![lan.clone()]);
        assert_eq!(t.addrs, vec![configured.clone(), lan.clone()]);
        t.found_at(
            (0..20)
                .map(|i| format!("/ip4/10.9.0.{i}/tcp/1").parse().unwrap())
                .collect(),
        );
        assert_eq!(t.addrs.len(), TARGET_ADDRS_MAX);
        assert_eq!(t.addrs[0], configured, "the user's address stays first");
        let mut m = Target::new(None, FoundBy::Mdns, Duration::from_millis(500));
        m.found_at(vec![configured]);
        m.found_at(vec![lan.clone()]);
        assert_eq!(m.addrs, vec![lan], "a find believes the latest");
    }
}
