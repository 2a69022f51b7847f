//! Signatures checked before the writer takes an entry, so its one thread never spends time on
//! them: entries a pull delivers are verified on every core at once, and one the network layer
//! verified already (a push, before gossip forwards it) is not verified again.
//!
//! Soundness: an entry's hash covers all its bytes, signature included, and the mesh is fixed
//! for the life of a store, so an entry with a hash this node has seen verify verifies. An
//! entry that fails here goes to the writer unproven; it verifies again there and is kept
//! aside with the reason, the one place refusals are recorded.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tillmesh_protocol::{EntryHash, MeshId, SignedEntry, VersionVector};

/// Hashes remembered as verified; older ones are forgotten (their entries then verify again).
const VERIFIED_MAX: usize = 16_384;
/// Below this many entries to check, one task does them all: spreading costs more.
const PER_TASK_MIN: usize = 16;

/// Entries whose signature this node verified and the writer has not taken yet.
#[derive(Default)]
pub(crate) struct VerifiedMemo {
    inner: Mutex<(HashSet<EntryHash>, VecDeque<EntryHash>)>,
}

impl VerifiedMemo {
    pub(crate) fn insert(&self, hash: EntryHash) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *g;
        if set.insert(hash) {
            order.push_back(hash);
            if order.len() > VERIFIED_MAX
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }

    /// Whether `hash` was verified; forgotten once asked (the writer takes it now).
    pub(crate) fn take(&self, hash: &EntryHash) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // The order queue keeps the hash until it ages out; the set is what is asked.
        g.0.remove(hash)
    }
}

/// Checks the signatures of `entries` that need it, spread over the cores. Returns each entry
/// with whether its signature is proven. Not checked here: entries at a position `held`
/// already covers (nearly all are copies, which the writer finds by comparing bytes, with no
/// signature to check) and those the memo holds.
pub(crate) async fn verify_ahead(
    entries: Vec<SignedEntry>,
    held: Option<&VersionVector>,
    memo: &VerifiedMemo,
    mesh: MeshId,
) -> Vec<(Arc<SignedEntry>, bool)> {
    let mut out = Vec::with_capacity(entries.len());
    let mut todo = Vec::new();
    for e in entries {
        let proven = memo.take(&e.hash());
        let copy = held.is_some_and(|vv| vv.get(&e.entry.author) >= e.entry.seq);
        if !proven && !copy {
            todo.push(out.len());
        }
        out.push((Arc::new(e), proven));
    }
    if todo.is_empty() {
        return out;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tasks = cores.min(todo.len().div_ceil(PER_TASK_MIN)).max(1);
    let per_task = todo.len().div_ceil(tasks);
    let mut handles = Vec::with_capacity(tasks);
    for chunk in todo.chunks(per_task) {
        let batch: Vec<(usize, Arc<SignedEntry>)> =
            chunk.iter().map(|&i| (i, out[i].0.clone())).collect();
        handles.push(tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(i, e)| (i, e.verify(&mesh).is_ok()))
                .collect::<Vec<_>>()
        }));
    }
    for h in handles {
        // A task that died proves nothing: its entries are verified by the writer.
        if let Ok(results) = h.await {
            for (i, ok) in results {
                out[i].1 = ok;
            }
        }
    }
    out
}
