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
                // A change is its author's own: one of another device's would let an entry
                // claim that device's change as its own, and sit in its place in the
                // order the undo works standing out in (`writer::undo`).
                Ok(c) if docmap::series_of(&entry.entry.author, c.actor_id()).is_none() => {
                    return Err(format!(
                        "document {}: change {n} was made by actor {}, not by this entry's author or one of its actors",
                        dc.doc_id,
                        c.actor_id()
                    ));
                }
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
/// cores. Not done here: entries at a position `held` already covers, or seen earlier in
/// `entries` (nearly all are copies, which the writer finds by comparing bytes, with nothing
/// else to check). A signature the memo holds is not verified again; that entry's changes are
/// parsed on this task, which is cheaper than handing one push to another thread.
pub(crate) async fn check_ahead(
    entries: Vec<SignedEntry>,
    held: Option<&VersionVector>,
    memo: &VerifiedMemo,
    mesh: MeshId,
) -> Vec<Ahead> {
    let mut out = Vec::with_capacity(entries.len());
    let mut todo = Vec::new();
    // Two peers answering pulls at once send the same entries: a second copy in one call is
    // a copy too.
    let mut seen = HashSet::with_capacity(entries.len());
    for e in entries {
        let verified = memo.take(&e.hash());
        let copy =
            held.is_some_and(|vv| vv.get(&e.entry.author) >= e.entry.seq) || !seen.insert(e.hash());
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

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use tillmesh_protocol::{DeviceKey, DocChanges, DocId, DocType, Entry, Payload};

    const MESH: MeshId = MeshId([5; 32]);

    fn key() -> DeviceKey {
        DeviceKey::from_secret([1; 32])
    }

    /// An entry of `seq` carrying one real Automerge change, signed for this mesh.
    fn entry(seq: u64) -> SignedEntry {
        unsigned(seq).sign(&MESH, &key())
    }

    fn unsigned(seq: u64) -> Entry {
        let mut doc = automerge::AutoCommit::new()
            .with_actor(tillmesh_protocol::docmap::actor_for(&key().device_id()));
        doc.put(automerge::ROOT, "n", seq as i64).unwrap();
        doc.commit();
        let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        Entry {
            author: key().device_id(),
            seq,
            prev: EntryHash::ZERO,
            timestamp_ms: 1_700_000_000_000,
            payload: Payload::Changes(vec![DocChanges {
                doc_id: DocId([seq as u8; 16]),
                doc_type: DocType::Sale,
                changes: vec![change],
            }]),
        }
    }

    fn forged(seq: u64) -> SignedEntry {
        let good = entry(seq);
        let mut bytes = good.encoded().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        SignedEntry::decode(&bytes).unwrap()
    }

    async fn check(entries: Vec<SignedEntry>, held: Option<&VersionVector>) -> Vec<(bool, bool)> {
        check_ahead(entries, held, &VerifiedMemo::default(), MESH)
            .await
            .iter()
            .map(|a| (a.verified, a.changes.is_some()))
            .collect()
    }

    /// Proven ahead: good signatures, parsed changes, across tasks (more entries than one task
    /// takes). Never proven: a forged one, one signed for another mesh, and copies (held, or
    /// twice in one call), which the writer deals with itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_good_new_entries_are_proven_ahead() {
        let many: Vec<SignedEntry> = (1..=40).map(entry).collect();
        assert!(check(many, None).await.iter().all(|&p| p == (true, true)));

        let other_mesh = unsigned(3).sign(&MeshId([6; 32]), &key());
        // (Each `entry` call makes new bytes: an Automerge change carries its own time.)
        let one = entry(1);
        let got = check(vec![one.clone(), forged(2), other_mesh, one], None).await;
        assert_eq!(
            got,
            [(true, true), (false, false), (false, false), (false, false)]
        );

        let mut held = VersionVector::default();
        held.advance(key().device_id(), 5);
        let got = check(vec![entry(5), entry(6)], Some(&held)).await;
        assert_eq!(got, [(false, false), (true, true)]);
    }

    /// A signature the network layer proved is taken once, and its changes parsed here; a
    /// hash the memo does not hold proves nothing.
    #[tokio::test]
    async fn the_memo_proves_an_entry_once() {
        let memo = VerifiedMemo::default();
        let e = entry(1);
        memo.insert(e.hash());
        let first = check_ahead(vec![e.clone()], None, &memo, MESH).await;
        assert!(first[0].verified && first[0].changes.is_some());
        assert!(!memo.take(&e.hash()), "taken once");
        assert!(!memo.take(&entry(2).hash()));
    }
}
