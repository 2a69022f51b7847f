//! Entries that do not stand, and the documents rebuilt without them.
//!
//! An entry does not stand when
//! - the membership says so ([`strike_reason`]): its author was revoked before it, was not
//!   admitted (an admission that was itself struck), or had a role at that seq that may not
//!   write a document type it carries; or
//! - it builds on an entry that does not stand: one of its changes depends on a change of such
//!   an entry (Automerge cannot apply a change without the changes it builds on). Then none of
//!   its changes stands, in any document: an entry is one act (a refund is the refund document
//!   and the sale's list of refunds together), and half of it would move money twice.
//!
//! The membership can change after the fact: a revocation reaches a node after the revoked
//! device's later entries did, a role change after entries the old role allowed, an admin's own
//! revocation strikes an operation it made (and what that operation struck stands again).
//! Every node must end with the same documents whatever the order, so:
//! - an entry that does not stand is still stored, chained, claimed and served, so every node
//!   holds the same log; it is listed in `UNDONE`, and none of its changes is in any document;
//! - at ingest, an entry whose changes build on changes of a listed entry is listed too
//!   ([`builds_on_undone`]);
//! - when the membership changes, the entries whose standing it flips are found, then every
//!   entry connected to them through the documents they share (the region), and standing is
//!   worked out again across the region; every document of the region is rebuilt from the
//!   changes that stand. `finish` then moves views, stock levels and indexes from what the
//!   documents were to what they are.

use automerge::ActorId;
use redb::ReadableMultimapTable;

use super::*;

/// Why `e` does not stand under `m`, or `None` if it does. A membership operation always
/// stands as an entry: whether it counts is `Membership::compute`'s to say.
pub(super) fn strike_reason(m: &Membership, e: &SignedEntry) -> Option<String> {
    if e.member_op().is_some() {
        return None;
    }
    let (device, seq) = (e.entry.author, e.entry.seq);
    match m.role_at(device, seq) {
        Err(err) => Some(err.to_string()),
        Ok(role) => e
            .docs()
            .iter()
            .find(|d| !role.may_write(d.doc_type))
            .map(|d| {
                AccessError::DocType {
                    device,
                    role,
                    doc_type: d.doc_type,
                }
                .to_string()
            }),
    }
}

/// What `GET /v1/status` lists of an undone entry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UndoneRecord {
    pub reason: String,
    /// The documents it touched, rebuilt without it.
    pub docs: Vec<DocId>,
    pub at_ms: u64,
}

impl Writer {
    /// Stores an entry that does not stand: chained and held like any other, never applied.
    pub(super) fn store_undone(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: String,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        tracing::warn!(author = %author.short(), seq, %reason, "entry held but not applied");
        self.hold(t, entry)?;
        self.record_undone(t, entry, &reason)?;
        Ok((
            IngestOutcome::Undone { reason },
            Some(Staged {
                primary: self.settings_id,
                docs: Vec::new(),
                author,
                seq,
                own: None,
            }),
        ))
    }

    fn record_undone(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: &str,
    ) -> Result<(), WriteError> {
        let record = UndoneRecord {
            reason: reason.to_owned(),
            docs: entry.docs().iter().map(|d| d.doc_id).collect(),
            at_ms: now_ms(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| WriteError::Internal(e.to_string()))?;
        t.undone.insert(
            (entry.entry.author.as_bytes(), entry.entry.seq),
            bytes.as_slice(),
        )?;
        Ok(())
    }

    /// After an entry was applied to documents where a held entry waits for changes not
    /// held (`WAITS_FOR_CHANGES`): the region is worked out again, and a waiting entry whose
    /// changes are now all held stands, with its documents rebuilt, as on every node that
    /// held them in the other order.
    pub(super) fn retry_waiting(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(), WriteError> {
        let queue: Vec<DocId> = entry
            .docs()
            .iter()
            .map(|d| d.doc_id)
            .filter(|id| self.waiting_docs.contains(id))
            .collect();
        if queue.is_empty() {
            return Ok(());
        }
        self.rebuild_region(t, queue, touched)
    }

    /// The actor this device writes `id` with: the first of its series (see
    /// [`docmap::actor_in_series`]) that none of its own changes to `id` which do not stand
    /// used. Every change of that actor is then in the document, so the seq Automerge gives
    /// the next one was never given before. Almost always the device's own key: its undone
    /// entries are few (those built on a revoked device's), and none is the common case.
    pub(super) fn write_actor(&self, t: &Tables<'_>, id: &DocId) -> Result<ActorId, WriteError> {
        let me = self.id.device_id;
        let mut used: BTreeSet<u32> = BTreeSet::new();
        for item in t
            .undone
            .range((me.as_bytes(), 0)..=(me.as_bytes(), u64::MAX))?
        {
            let seq = item?.0.value().1;
            let Some(bytes) = t.entries.get((me.as_bytes(), seq))? else {
                continue;
            };
            let e = decode_held(bytes.value())?;
            for dc in e.docs().iter().filter(|d| d.doc_id == *id) {
                used.extend(
                    dc.changes
                        .iter()
                        .filter_map(|b| docmap::parse_change(b).ok())
                        .filter_map(|c| docmap::series_of(&me, c.actor_id())),
                );
            }
        }
        let n = (0..=u32::MAX)
            .find(|n| !used.contains(n))
            .expect("fewer undone changes than actors");
        Ok(docmap::actor_in_series(&me, n))
    }

    /// After the membership changed from `old` to `self.membership`: the entries whose
    /// standing it flips, the region of entries and documents connected to them, standing
    /// worked out again across it (recorded in `UNDONE`), and every document of the region
    /// rebuilt from the changes that stand.
    pub(super) fn restand(
        &mut self,
        t: &mut Tables<'_>,
        old: &Membership,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(), WriteError> {
        let new = self.membership.clone();
        let same = |a: Option<&Member>, b: Option<&Member>| {
            a.map(|m| (&m.roles, m.last_seq)) == b.map(|m| (&m.roles, m.last_seq))
        };
        let authors: BTreeSet<DeviceId> = new
            .members()
            .chain(old.members())
            .map(|(d, _)| *d)
            .filter(|d| !same(old.get(d), new.get(d)))
            .collect();
        let mut queue: Vec<DocId> = Vec::new();
        let mut flipped = 0usize;
        for author in authors {
            let head = t
                .heads
                .get(author.as_bytes())?
                .map(|v| v.value().0)
                .unwrap_or(0);
            for item in t
                .entries
                .range((author.as_bytes(), 1)..=(author.as_bytes(), head))?
            {
                let (_, bytes) = item?;
                let Ok(e) = SignedEntry::decode(bytes.value()) else {
                    continue;
                };
                if strike_reason(old, &e).is_some() != strike_reason(&new, &e).is_some() {
                    queue.extend(e.docs().iter().map(|d| d.doc_id));
                    flipped += 1;
                }
            }
        }
        if flipped == 0 {
            return Ok(());
        }
        self.rebuild_region(t, queue, touched)
    }

    /// Works out again which entries stand across the region connected to `queue`'s documents
    /// (recorded in `UNDONE`), and rebuilds every document of it from the changes that stand.
    pub(super) fn rebuild_region(
        &mut self,
        t: &mut Tables<'_>,
        queue: Vec<DocId>,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(), WriteError> {
        let new = self.membership.clone();
        let region = Region::gather(t, queue)?;
        let undone = region.undone(&new);
        // Documents with an entry that waits for changes not held: an entry applied to one
        // of them later works the region out again (`retry_waiting`).
        for id in region.docs.keys() {
            self.waiting_docs.remove(id);
        }
        for (key, reason) in &undone {
            if reason == WAITS_FOR_CHANGES
                && let Some((e, _)) = region.entries.get(key)
            {
                self.waiting_docs.extend(e.docs().iter().map(|d| d.doc_id));
            }
        }
        for (key, (e, _)) in &region.entries {
            match undone.get(key) {
                Some(reason) => {
                    // Recorded again when the reason changed: a restart reads which entries
                    // wait for changes from it.
                    let recorded = t
                        .undone
                        .get((&key.0, key.1))?
                        .and_then(|r| serde_json::from_slice::<UndoneRecord>(r.value()).ok())
                        .map(|r| r.reason);
                    if recorded.as_deref() != Some(reason.as_str()) {
                        self.record_undone(t, e, reason)?;
                    }
                }
                None => t.undone.remove((&key.0, key.1))?,
            }
        }
        tracing::warn!(
            region_entries = region.entries.len(),
            documents = region.docs.len(),
            "what stands changed (the membership, or changes an entry waited for arrived): documents rebuilt from the entries that do"
        );
        for (id, recorded_type) in &region.docs {
            let standing: Vec<Change> = region
                .entries
                .iter()
                .filter(|(key, _)| !undone.contains_key(key))
                .flat_map(|(_, (_, changes))| changes.get(id).cloned().unwrap_or_default())
                .collect();
            let doc = if standing.is_empty() {
                None
            } else {
                let mut doc = AutoCommit::new();
                doc.apply_changes(standing).map_err(|e| {
                    WriteError::Internal(format!("document {id} could not be rebuilt: {e}"))
                })?;
                Some(doc)
            };
            // A document that did not exist takes the type its changes say it is, not the label
            // an entry gave it.
            let doc_type = doc
                .as_ref()
                .and_then(|d| {
                    docmap::read_json(d)
                        .get("type")
                        .and_then(Json::as_str)
                        .and_then(DocType::from_name)
                })
                .unwrap_or(*recorded_type);
            // What the rebuild moves of stock rights counts for the entries after it in this
            // batch, as their own moves do (the store's count follows in `finish`).
            let before = self.cache.get(t, id)?.map(|c| c.view().clone());
            self.cache.replace(t, id, doc_type, doc)?;
            let after = self.cache.get(t, id)?.map(|c| c.view().clone());
            self.count_rights(tillmesh_protocol::rights::delta(
                doc_type,
                id,
                before.as_ref(),
                after.as_ref(),
            ));
            touched.insert(*id);
        }
        Ok(())
    }
}

/// Whether an ingested entry's changes to `id`, which build on `missing` changes not in the
/// document, build on changes of entries held that do not stand (every missing change is
/// one): then the entry does not stand either. Otherwise they wait for what they build on.
pub(super) fn builds_on_undone(
    t: &Tables<'_>,
    id: &DocId,
    missing: &[ChangeHash],
) -> Result<bool, WriteError> {
    let mut undone = HashSet::new();
    for k in t.doc_entries.get(id.as_bytes())? {
        let k = k?;
        let (author, seq) = k.value();
        if t.undone.get((author, seq))?.is_none() {
            continue;
        }
        if let Some(bytes) = t.entries.get((author, seq))?
            && let Ok(e) = SignedEntry::decode(bytes.value())
        {
            for dc in e.docs().iter().filter(|d| d.doc_id == *id) {
                undone.extend(
                    dc.changes
                        .iter()
                        .filter_map(|b| docmap::parse_change(b).ok())
                        .map(|c| c.hash()),
                );
            }
        }
    }
    Ok(missing.iter().all(|h| undone.contains(h)))
}

/// Parsed changes of one entry, by document.
type ChangesByDoc = BTreeMap<DocId, Vec<Change>>;

/// The entries connected to some documents through the documents they share, and those
/// documents: everything whose standing can depend on theirs (Automerge dependencies never
/// cross documents, and an entry stands or falls whole).
struct Region {
    entries: BTreeMap<([u8; 32], u64), (SignedEntry, ChangesByDoc)>,
    docs: BTreeMap<DocId, DocType>,
}

impl Region {
    fn gather(t: &Tables<'_>, mut queue: Vec<DocId>) -> Result<Region, WriteError> {
        let mut region = Region {
            entries: BTreeMap::new(),
            docs: BTreeMap::new(),
        };
        let mut seen: BTreeSet<DocId> = queue.iter().copied().collect();
        while let Some(id) = queue.pop() {
            let mut keys = Vec::new();
            for k in t.doc_entries.get(id.as_bytes())? {
                let k = k?;
                let (author, seq) = k.value();
                keys.push((*author, seq));
            }
            for key in keys {
                if region.entries.contains_key(&key) {
                    continue;
                }
                let Some(bytes) = t.entries.get((&key.0, key.1))? else {
                    continue;
                };
                let e = decode_held(bytes.value())?;
                let mut changes = ChangesByDoc::new();
                for dc in e.docs() {
                    region.docs.entry(dc.doc_id).or_insert(dc.doc_type);
                    if seen.insert(dc.doc_id) {
                        queue.push(dc.doc_id);
                    }
                    // Changes that do not parse were never applied (such an entry is refused
                    // on ingest); one stored by an older version counts as building on nothing.
                    changes.entry(dc.doc_id).or_default().extend(
                        dc.changes
                            .iter()
                            .filter_map(|b| docmap::parse_change(b).ok()),
                    );
                }
                region.entries.insert(key, (e, changes));
            }
        }
        Ok(region)
    }

    /// Which entries of the region do not stand under `m`, and why: those the membership
    /// strikes, then every entry with a change that builds on one of theirs, until no more.
    fn undone(&self, m: &Membership) -> BTreeMap<([u8; 32], u64), String> {
        let mut undone = BTreeMap::new();
        let mut hashes: HashSet<ChangeHash> = HashSet::new();
        for (key, (e, changes)) in &self.entries {
            if let Some(reason) = strike_reason(m, e) {
                undone.insert(*key, reason);
                hashes.extend(changes.values().flatten().map(Change::hash));
            }
        }
        // An entry held without being applied (it did not stand when it came) was never
        // checked for what it builds on. Its changes may build on changes of entries not held
        // here yet: applied now, Automerge would queue them out of sight, and they would slip
        // in, unchecked and counted as the next entry's, when those arrive. It waits instead,
        // as an entry that builds on what is not held waits at ingest. (Automerge dependencies
        // never leave a document, and every held entry touching the region's documents is in
        // the region, so a dependency not here is not held.)
        let held: HashSet<ChangeHash> = self
            .entries
            .values()
            .flat_map(|(_, changes)| changes.values().flatten().map(Change::hash))
            .collect();
        for (key, (_, changes)) in &self.entries {
            let waits = changes
                .values()
                .flatten()
                .any(|c| c.deps().iter().any(|d| !held.contains(d)));
            if waits && !undone.contains_key(key) {
                undone.insert(*key, WAITS_FOR_CHANGES.to_owned());
                hashes.extend(changes.values().flatten().map(Change::hash));
            }
        }
        loop {
            let mut grew = false;
            for (key, (_, changes)) in &self.entries {
                if undone.contains_key(key) {
                    continue;
                }
                let builds = changes
                    .values()
                    .flatten()
                    .any(|c| c.deps().iter().any(|d| hashes.contains(d)));
                if builds {
                    undone.insert(*key, BUILDS_ON_UNDONE.to_owned());
                    hashes.extend(changes.values().flatten().map(Change::hash));
                    grew = true;
                }
            }
            if !grew {
                return undone;
            }
        }
    }
}

/// Why an entry held but never applied does not stand yet (see `Region::undone`).
pub(super) const WAITS_FOR_CHANGES: &str =
    "it builds on changes of entries not held here yet; it stands once they arrive";

/// Why an entry of a member in good standing does not stand.
pub(super) const BUILDS_ON_UNDONE: &str = "it builds on changes of an entry that does not stand (its author was revoked before it, or its role may not): none of its changes stands, so that what it did is not half done";

fn decode_held(bytes: &[u8]) -> Result<SignedEntry, WriteError> {
    SignedEntry::decode(bytes)
        .map_err(|e| WriteError::Internal(format!("a stored entry does not decode: {e}")))
}
