//! Entries that do not stand, and the documents rebuilt without them.
//!
//! An entry does not stand when
//! - the membership says so ([`strike_reason`]): its author was revoked before it, was not
//!   admitted (an admission that was itself struck), or had a role at that seq that may not
//!   write a document type it carries; or
//! - it builds on an entry that does not stand: one of its changes depends on a change of such
//!   an entry (Automerge cannot apply a change without the changes it builds on). Then none of
//!   its changes stands, in any document: an entry is one act (a refund is the refund document
//!   and the sale's list of refunds together), and half of it would move money twice; or
//! - it spends stock rights its author's standing entries before it do not cover (one that
//!   gave them does not stand): rights cross documents, so each entry's moves of its author's
//!   rights are kept as rows (`RIGHTS_MOVES`) and the author's log is replayed from them.
//!
//! The membership can change after the fact: a revocation reaches a node after the revoked
//! device's later entries did, a role change after entries the old role allowed, an admin's own
//! revocation strikes an operation it made (and what that operation struck stands again).
//! Every node must end with the same documents whatever the order, so:
//! - an entry that does not stand is still stored, chained, claimed and served, so every node
//!   holds the same log; it is listed in `UNDONE`, and none of its changes is in any document;
//! - at ingest, an entry whose changes build on changes of a listed entry is listed too
//!   ([`builds_on_undone`]);
//! - at ingest, a spend beyond its author's rights is listed, not refused: it stands once the
//!   entry that gave the rights does;
//! - when the membership changes, the entries whose standing it flips are found, then every
//!   entry connected to them through the documents they share (the region), and standing is
//!   worked out again across the region, in causal order (`Region::judge`); the region grows
//!   by every spend outside it whose verdict its authors' replayed rows change, until none
//!   does; every document of the region is rebuilt from the changes that stand. `finish`
//!   then moves views, stock levels and indexes from what the documents were to what they are.

use automerge::ActorId;
use redb::ReadableMultimapTable;

use super::rights;
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
            // A reclaim of its rights stands only while it is revoked (`Region::judge`).
            let cutoff = |m: &Membership| m.get(&author).and_then(|x| x.last_seq);
            if cutoff(old) != cutoff(&new) {
                let reclaims = self.reclaims_of(t, &author)?;
                flipped += reclaims.len();
                queue.extend(reclaims);
            }
        }
        if flipped == 0 {
            return Ok(());
        }
        self.rebuild_region(t, queue, touched)
    }

    /// The reclaim documents held of `device`'s rights, one per product at most.
    fn reclaims_of(&self, t: &Tables<'_>, device: &DeviceId) -> Result<Vec<DocId>, WriteError> {
        let code = DocType::Product.code();
        let (lo, hi) = ([0u8; 16], [0xffu8; 16]);
        let mut out = Vec::new();
        for item in t.by_type.range((code, &lo)..=(code, &hi))? {
            let product = DocId(*item?.0.value().1);
            let id = tillmesh_protocol::rights::reclaim_id(&self.id.mesh_id, device, &product);
            if t.doc_entries.get(id.as_bytes())?.next().is_some() {
                out.push(id);
            }
        }
        Ok(out)
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
        let mut queued: BTreeSet<DocId> = queue.into_iter().collect();
        // Grown until no spend outside it changes its verdict: each round adds the documents
        // of those that do, so it ends (at worst with every document held).
        let (region, judged) = loop {
            let region = Region::gather(t, queued.iter().copied().collect())?;
            let judged = region.judge(t, &new)?;
            let before = queued.len();
            for key in judged.outside_flips(t, &region)? {
                if let Some(bytes) = t.entries.get((&key.0, key.1))? {
                    queued.extend(decode_held(bytes.value())?.docs().iter().map(|d| d.doc_id));
                }
            }
            if queued.len() == before {
                break (region, judged);
            }
        };
        let undone = judged.undone;
        for (key, rows) in &judged.computed {
            let moves = rows
                .iter()
                .map(|(product, units)| ((*product, DeviceId(key.0)), *units))
                .collect();
            rights::write_rows(t, DeviceId(key.0), key.1, &moves)?;
        }
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

/// An entry of the log: `(author, seq)`.
type Key = ([u8; 32], u64);

/// How one entry moves its author's rights: per product, units.
type Rows = Vec<(DocId, i64)>;

/// The entries connected to some documents through the documents they share, and those
/// documents: everything whose standing can depend on theirs through Automerge (its
/// dependencies never cross documents, and an entry stands or falls whole). Standing can also
/// depend on an author's rights, which cross documents: `Writer::rebuild_region` grows the
/// region until the spends outside it keep their verdict.
struct Region {
    entries: BTreeMap<Key, (SignedEntry, ChangesByDoc)>,
    docs: BTreeMap<DocId, DocType>,
}

/// What `Region::judge` found.
struct Judged {
    /// The region's entries that do not stand, and why.
    undone: BTreeMap<Key, String>,
    /// Rows worked out here for entries that had none: written once, they never change.
    computed: BTreeMap<Key, Rows>,
    /// Per author of the region: its rows, by seq.
    ledgers: BTreeMap<[u8; 32], BTreeMap<u64, Rows>>,
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

    /// Which entries of the region do not stand under `m`, and why. Judged in causal order
    /// (an entry after every entry it builds on, and after its author's earlier entries), so
    /// each verdict rests on verdicts already reached, and the result is the one every node
    /// reaches whatever order its entries came in:
    /// - the membership strikes it; else
    /// - it waits for changes not held; else
    /// - a change of it builds on a change of an entry that does not stand; else
    /// - it reclaims the rights of a device the membership does not revoke; else
    /// - it spends rights its author's standing entries before it do not cover.
    fn judge(&self, t: &Tables<'_>, m: &Membership) -> Result<Judged, WriteError> {
        let keys: Vec<Key> = self.entries.keys().copied().collect();
        let index: HashMap<Key, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        // A change held twice (an author may carry one of its own again) is owned by the first
        // entry that holds it: the one it was made in. (A change of another device's actor is
        // refused at ingest, so only its author's entries can hold it.)
        let mut owner: HashMap<ChangeHash, usize> = HashMap::new();
        for (i, (_, changes)) in self.entries.values().enumerate() {
            for c in changes.values().flatten() {
                owner.entry(c.hash()).or_insert(i);
            }
        }
        // An entry held without being applied (it did not stand when it came) was never
        // checked for what it builds on. Its changes may build on changes of entries not held
        // here yet: applied now, Automerge would queue them out of sight, and they would slip
        // in, unchecked and counted as the next entry's, when those arrive. It waits instead,
        // as an entry that builds on what is not held waits at ingest. (Automerge dependencies
        // never leave a document, and every held entry touching the region's documents is in
        // the region, so a dependency not here is not held.)
        let mut waits = vec![false; keys.len()];
        let mut builds_on: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); keys.len()];
        for (i, (_, changes)) in self.entries.values().enumerate() {
            for d in changes.values().flatten().flat_map(|c| c.deps()) {
                match owner.get(d) {
                    Some(j) if *j != i => {
                        builds_on[i].insert(*j);
                    }
                    Some(_) => {}
                    None => waits[i] = true,
                }
            }
        }
        // Kahn's order over what each entry builds on and its author's previous entry here
        // (keys are sorted by author, then seq).
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
        let mut before_count = vec![0usize; keys.len()];
        for i in 0..keys.len() {
            let mut preds = builds_on[i].clone();
            if i > 0 && keys[i - 1].0 == keys[i].0 {
                preds.insert(i - 1);
            }
            before_count[i] = preds.len();
            for j in preds {
                after[j].push(i);
            }
        }
        let mut ready: std::collections::VecDeque<usize> =
            (0..keys.len()).filter(|i| before_count[*i] == 0).collect();
        let mut ledgers: BTreeMap<[u8; 32], BTreeMap<u64, Rows>> = BTreeMap::new();
        for key in &keys {
            if let std::collections::btree_map::Entry::Vacant(v) = ledgers.entry(key.0) {
                v.insert(rights::read_ledger(t, &DeviceId(key.0))?);
            }
        }
        // Per author: the rows counted so far (every seq below `.0`), and the balance per product.
        let mut cursors: HashMap<[u8; 32], (u64, HashMap<DocId, i64>)> = HashMap::new();
        let mut judged = Judged {
            undone: BTreeMap::new(),
            computed: BTreeMap::new(),
            ledgers: BTreeMap::new(),
        };
        let mut done = vec![false; keys.len()];
        while let Some(i) = ready.pop_front() {
            done[i] = true;
            for &j in &after[i] {
                before_count[j] -= 1;
                if before_count[j] == 0 {
                    ready.push_back(j);
                }
            }
            let key = keys[i];
            let (e, _) = &self.entries[&key];
            let ledger = ledgers
                .get_mut(&key.0)
                .expect("every author's ledger is read");
            let (next, balance) = cursors.entry(key.0).or_default();
            // The author's rows before this entry, each counted if its entry stands: one of the
            // region (judged already: it comes before in the order) or one outside it, as
            // recorded.
            for (seq, rows) in ledger.range(*next..key.1) {
                let stands = match index.get(&(key.0, *seq)) {
                    Some(_) => !judged.undone.contains_key(&(key.0, *seq)),
                    None => t.undone.get((&key.0, *seq))?.is_none(),
                };
                if stands {
                    credit(balance, rows);
                }
            }
            *next = key.1 + 1;
            let reason = if let Some(reason) = strike_reason(m, e) {
                Some(reason)
            } else if waits[i] {
                Some(WAITS_FOR_CHANGES.to_owned())
            } else if builds_on[i]
                .iter()
                .any(|j| judged.undone.contains_key(&keys[*j]))
            {
                Some(BUILDS_ON_UNDONE.to_owned())
            } else if self
                .reclaims_from(&key)
                .is_some_and(|d| m.get(&d).and_then(|x| x.last_seq).is_none())
            {
                Some(RECLAIMS_FROM_MEMBER.to_owned())
            } else {
                let rows = match ledger.get(&key.1) {
                    Some(rows) => rows.clone(),
                    // Standing, it was judged against its rights, and has no row: it moves none.
                    None if t.undone.get((&key.0, key.1))?.is_none() => Rows::new(),
                    None => {
                        // What it saw is made of entries judged standing already: those it
                        // builds on come before it, and nothing unchecked goes into a document.
                        let stands =
                            |k: &Key| *k != key && done[index[k]] && !judged.undone.contains_key(k);
                        let rows = self.moves_as_seen(&key, stands)?;
                        judged.computed.insert(key, rows.clone());
                        if !rows.is_empty() {
                            ledger.insert(key.1, rows.clone());
                        }
                        rows
                    }
                };
                if short(balance, &rows) {
                    Some(SPENDS_UNHELD_RIGHTS.to_owned())
                } else {
                    credit(balance, &rows);
                    None
                }
            };
            if let Some(reason) = reason {
                judged.undone.insert(key, reason);
            }
        }
        // Left over only by a cycle, which honest logs never make: nothing of it can stand.
        for (i, key) in keys.iter().enumerate() {
            if !done[i] {
                judged.undone.insert(*key, WAITS_FOR_CHANGES.to_owned());
            }
        }
        judged.ledgers = ledgers;
        Ok(judged)
    }

    /// The device whose rights entry `key` reclaims, if it creates a reclaim (in one change
    /// building on nothing, as `docmap::create` makes a document).
    fn reclaims_from(&self, key: &Key) -> Option<DeviceId> {
        let (e, changes) = &self.entries[key];
        let created = e
            .docs()
            .iter()
            .filter(|d| d.doc_type == DocType::StockTransfer)
            .filter_map(|d| changes.get(&d.doc_id))
            .flatten()
            .filter(|c| c.deps().is_empty());
        for c in created {
            let mut doc = AutoCommit::new();
            if doc.apply_changes([c.clone()]).is_err() {
                continue;
            }
            let view = docmap::read_json(&doc);
            if tillmesh_protocol::rights::is_reclaim(DocType::StockTransfer, &view) {
                return view.get("from")?.as_str()?.parse().ok();
            }
        }
        None
    }

    /// How entry `key` moves its author's rights, as its author saw the documents: each
    /// document forked at what the entry's changes build on, then the changes applied, as
    /// ingest judges them. The documents are made of the changes of the entries `stands`
    /// names, which hold everything the entry builds on.
    fn moves_as_seen(&self, key: &Key, stands: impl Fn(&Key) -> bool) -> Result<Rows, WriteError> {
        let (e, changes) = &self.entries[key];
        let author = e.entry.author;
        let mut moves = rights::RightsMoves::new();
        for dc in e.docs() {
            let Some(own) = changes.get(&dc.doc_id) else {
                continue;
            };
            if !matches!(
                dc.doc_type,
                DocType::Product
                    | DocType::Sale
                    | DocType::Refund
                    | DocType::StockAdjustment
                    | DocType::StockTransfer
            ) {
                continue;
            }
            let failed = |e: automerge::AutomergeError| {
                WriteError::Internal(format!("document {}: {e}", dc.doc_id))
            };
            let seen = docmap::seen_heads(own);
            let (mut fork, before) = if seen.is_empty() {
                (AutoCommit::new(), None)
            } else {
                let mut doc = AutoCommit::new();
                doc.apply_changes(
                    self.entries
                        .iter()
                        .filter(|(k, _)| stands(k))
                        .filter_map(|(_, (_, c))| c.get(&dc.doc_id))
                        .flatten()
                        .cloned(),
                )
                .map_err(failed)?;
                let fork = doc.fork_at(&seen).map_err(failed)?;
                let before = docmap::read_json(&fork);
                (fork, Some(before))
            };
            fork.apply_changes(own.iter().cloned()).map_err(failed)?;
            let after = docmap::read_json(&fork);
            rights::add_moves(
                &mut moves,
                rights::delta(dc.doc_type, &dc.doc_id, before.as_ref(), Some(&after)),
            );
        }
        Ok(moves
            .into_iter()
            .filter(|((_, device), _)| *device == author)
            .map(|((product, _), units)| (product, units))
            .collect())
    }
}

impl Judged {
    /// Entries outside the region whose verdict on their author's rights changes with the
    /// region's: a spend that stands and is now short, or one held short that is now covered.
    /// Each author's log is replayed from its rows, the region's entries as judged, the others
    /// as recorded.
    fn outside_flips(&self, t: &Tables<'_>, region: &Region) -> Result<Vec<Key>, WriteError> {
        let mut flips = Vec::new();
        for (author, ledger) in &self.ledgers {
            let mut balance: HashMap<DocId, i64> = HashMap::new();
            for (seq, rows) in ledger {
                let key = (*author, *seq);
                let stands = if region.entries.contains_key(&key) {
                    !self.undone.contains_key(&key)
                } else {
                    let recorded = t
                        .undone
                        .get((author, *seq))?
                        .and_then(|r| serde_json::from_slice::<UndoneRecord>(r.value()).ok())
                        .map(|r| r.reason);
                    match recorded.as_deref() {
                        None | Some(SPENDS_UNHELD_RIGHTS) => {
                            let short = short(&balance, rows);
                            if short == recorded.is_none() {
                                flips.push(key);
                            }
                            !short
                        }
                        Some(_) => false,
                    }
                };
                if stands {
                    credit(&mut balance, rows);
                }
            }
        }
        Ok(flips)
    }
}

/// Whether `rows` take a product's balance below zero. Saturating: the quantities of an
/// entry that was never checked (held undone when it came) are its author's word.
fn short(balance: &HashMap<DocId, i64>, rows: &[(DocId, i64)]) -> bool {
    rows.iter()
        .any(|(p, u)| *u < 0 && balance.get(p).copied().unwrap_or(0).saturating_add(*u) < 0)
}

fn credit(balance: &mut HashMap<DocId, i64>, rows: &[(DocId, i64)]) {
    for (product, units) in rows {
        let b = balance.entry(*product).or_default();
        *b = b.saturating_add(*units);
    }
}

/// Why an entry held but never applied does not stand yet (see `Region::judge`).
pub(super) const WAITS_FOR_CHANGES: &str =
    "it builds on changes of entries not held here yet; it stands once they arrive";

/// Why an entry that spends stock rights does not stand (see `Region::judge`).
pub const SPENDS_UNHELD_RIGHTS: &str = "it spends stock rights its author did not hold at that point of its log (an entry that gave them does not stand here); it stands once that entry does";

/// Why a reclaim does not stand: its device's revocation does not (its revoker was revoked
/// before it), so its rights are its own again.
pub const RECLAIMS_FROM_MEMBER: &str = "it reclaims the rights of a device that is not revoked (its revocation does not stand); they stay that device's";

/// Why an entry of a member in good standing does not stand.
pub(super) const BUILDS_ON_UNDONE: &str = "it builds on changes of an entry that does not stand (its author was revoked before it, or its role may not): none of its changes stands, so that what it did is not half done";

fn decode_held(bytes: &[u8]) -> Result<SignedEntry, WriteError> {
    SignedEntry::decode(bytes)
        .map_err(|e| WriteError::Internal(format!("a stored entry does not decode: {e}")))
}
