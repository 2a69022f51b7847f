//! Version vectors: per author, the highest contiguous seq held.
//!
//! The summary two peers exchange is O(authors), never O(documents).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest contiguous seq held from `author` (0: nothing).
    pub fn get(&self, author: &DeviceId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Records that everything up to `seq` from `author` is held. Never goes backwards.
    pub fn advance(&mut self, author: DeviceId, seq: u64) {
        let e = self.0.entry(author).or_insert(0);
        *e = (*e).max(seq);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, u64)> {
        self.0.iter().map(|(a, s)| (a, *s))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total entries covered, across authors.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The entries `other` holds that `self` lacks, as per-author seq ranges in author order.
    pub fn missing_from(&self, other: &VersionVector) -> Vec<(DeviceId, RangeInclusive<u64>)> {
        other
            .iter()
            .filter_map(|(author, theirs)| {
                let ours = self.get(author);
                (theirs > ours).then(|| (*author, ours + 1..=theirs))
            })
            .collect()
    }

    /// True when `self` holds everything `other` does.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(a, s)| self.get(a) >= s)
    }

    pub fn merge(&mut self, other: &VersionVector) {
        for (a, s) in other.iter() {
            self.advance(*a, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(b: u8) -> DeviceId {
        DeviceId([b; 32])
    }

    #[test]
    fn missing_lists_exactly_the_gap() {
        let mut a = VersionVector::new();
        a.advance(dev(1), 5);
        a.advance(dev(2), 3);
        let mut b = VersionVector::new();
        b.advance(dev(1), 2);
        b.advance(dev(3), 4);
        assert_eq!(b.missing_from(&a), vec![(dev(1), 3..=5), (dev(2), 1..=3)]);
        assert_eq!(a.missing_from(&b), vec![(dev(3), 1..=4)]);
        assert!(!a.dominates(&b));
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.dominates(&a) && m.dominates(&b));
        assert!(m.missing_from(&a).is_empty());
        assert_eq!(m.total(), 5 + 3 + 4);
    }

    #[test]
    fn advance_never_goes_back() {
        let mut v = VersionVector::new();
        v.advance(dev(1), 9);
        v.advance(dev(1), 4);
        assert_eq!(v.get(&dev(1)), 9);
        assert_eq!(v.get(&dev(2)), 0);
    }
}
