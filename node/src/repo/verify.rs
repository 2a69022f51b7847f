//! What can be checked of an entry before the writer takes it, so its one thread does not
//! spend time on it: the signature (entries a pull delivers are verified on every core at
//! once, and one the network layer verified already, a push before gossip forwards it, is not
//! verified again), and the parse of its Automerge changes.
//!
//! Soundness: an entry's hash covers all its bytes, signature included, and the mesh is fixed
//! for the life of a store, so an entry with a hash this node has seen verify verifies. An
//! entry that fails here goes to the writer unproven; it verifies again there and is kept
//! aside with the reason, the one place refusals are recorded.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use automerge::Change;
use tillmesh_protocol::{EntryHash, MeshId, SignedEntry, VersionVector, docmap};

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

/// What is known of an entry when the writer takes it.
pub(crate) struct Ahead {
    pub entry: Arc<SignedEntry>,
    /// Its signature is proven (verified here or by the network layer).
    pub verified: bool,
    /// Its changes, parsed; `None` when not parsed here (the writer parses them, and refuses
    /// the entry with the reason if they are not Automerge changes).
    pub changes: Option<Vec<Vec<Change>>>,
}

/// Every change an entry carries, parsed as an Automerge change; the error says which is not.
pub(crate) fn parse_changes(entry: &SignedEntry) -> Result<Vec<Vec<Change>>, String> {
    let mut parsed = Vec::with_capacity(entry.docs().len());
    for dc in entry.docs() {
        let mut changes = Vec::with_capacity(dc.changes.len());
        for (n, bytes) in dc.changes.iter().enumerate() {
            match docmap::parse_change(bytes) {
                Ok(c) => changes.push(c),
                Err(e) => {
                    return Err(format!(
                        "document {}: change {n} is not an Automerge change: {e}",
                        dc.doc_id
                    ));
                }
            }
        }
        parsed.push(changes);
    }
    Ok(parsed)
}

/// Checks the signatures of `entries` that need it and parses their changes, spread over the
/// cores. Not done here: entries at a position `held` already covers (nearly all are copies,
/// which the writer finds by comparing bytes, with nothing else to check). A signature the
/// memo holds is not verified again; that entry's changes are parsed on this task, which is
/// cheaper than handing one push to another thread.
pub(crate) async fn check_ahead(
    entries: Vec<SignedEntry>,
    held: Option<&VersionVector>,
    memo: &VerifiedMemo,
    mesh: MeshId,
) -> Vec<Ahead> {
    let mut out = Vec::with_capacity(entries.len());
    let mut todo = Vec::new();
    for e in entries {
        let verified = memo.take(&e.hash());
        let copy = held.is_some_and(|vv| vv.get(&e.entry.author) >= e.entry.seq);
        let changes = (verified && !copy)
            .then(|| parse_changes(&e).ok())
            .flatten();
        if !verified && !copy {
            todo.push(out.len());
        }
        out.push(Ahead {
            entry: Arc::new(e),
            verified,
            changes,
        });
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
            chunk.iter().map(|&i| (i, out[i].entry.clone())).collect();
        handles.push(tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(i, e)| {
                    let verified = e.verify(&mesh).is_ok();
                    let changes = verified.then(|| parse_changes(&e).ok()).flatten();
                    (i, verified, changes)
                })
                .collect::<Vec<_>>()
        }));
    }
    for h in handles {
        // A task that died proves nothing: the writer checks its entries itself.
        if let Ok(results) = h.await {
            for (i, verified, changes) in results {
                out[i].verified = verified;
                out[i].changes = changes;
            }
        }
    }
    out
}
