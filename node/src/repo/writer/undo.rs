//! Entries that do not stand, and the documents rebuilt without them.
//!
//! Whether an entry stands is a function of the membership: its author admitted, not revoked
//! before it, and allowed by its role at that seq to write every document type it carries
//! ([`strike_reason`]). The membership can change after the fact: a revocation reaches a node
//! after the revoked device's later entries did, a role change after entries the old role
//! allowed, or an admin's own revocation strikes an operation it made. Every node must end with
//! the same documents whatever the order, so:
//!
//! - an entry that does not stand is still stored, chained, claimed and served, so every node
//!   holds the same log; it is listed in `UNDONE` and none of its changes is in any document;
//! - a change that builds on an undone change cannot stand either (Automerge cannot apply a
//!   change without the changes it builds on), nor can the rest of that entry's changes to
//!   that document; the entry's other documents are untouched. The rule is the same at
//!   ingest ([`sets_aside`]) and in a rebuild ([`changes_of`]);
//! - when the membership changes, every stored entry whose standing changed is found, and each
//!   document they touched is rebuilt from the changes that stand. `finish` then moves views,
//!   stock levels and indexes from what the documents were to what they are.

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
        store_entry(t, entry)?;
        self.wal_batch.push(entry.encoded().to_vec());
        self.record_undone(t, entry, &reason)?;
        if author == self.id.device_id {
            self.head = (seq, entry.hash());
        }
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

    /// After the membership changed from `old` to `self.membership`: every stored entry whose
    /// standing changed is recorded (or cleared) in `UNDONE`, and the documents they touched
    /// are rebuilt from what stands.
    pub(super) fn restand(
        &mut self,
        t: &mut Tables<'_>,
        old: &Membership,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(), WriteError> {
        let new = self.membership.clone();
        let same = |a: Option<&Member>, b: Option<&tillmesh_protocol::Member>| {
            a.map(|m| (&m.roles, m.last_seq)) == b.map(|m| (&m.roles, m.last_seq))
        };
        let authors: BTreeSet<DeviceId> = new
            .members()
            .chain(old.members())
            .map(|(d, _)| *d)
            .filter(|d| !same(old.get(d), new.get(d)))
            .collect();
        let mut docs: BTreeMap<DocId, DocType> = BTreeMap::new();
        let mut flipped = 0usize;
        for author in authors {
            let head = t
                .heads
                .get(author.as_bytes())?
                .map(|v| v.value().0)
                .unwrap_or(0);
            let mut changed = Vec::new();
            for item in t
                .entries
                .range((author.as_bytes(), 1)..=(author.as_bytes(), head))?
            {
                let (_, bytes) = item?;
                let e = decode_held(bytes.value())?;
                let now = strike_reason(&new, &e);
                if strike_reason(old, &e).is_some() != now.is_some() {
                    changed.push((e, now));
                }
            }
            for (e, now) in changed {
                match &now {
                    Some(reason) => self.record_undone(t, &e, reason)?,
                    None => t.undone.remove((author.as_bytes(), e.entry.seq))?,
                }
                docs.extend(e.docs().iter().map(|d| (d.doc_id, d.doc_type)));
                flipped += 1;
            }
        }
        if flipped > 0 {
            tracing::warn!(
                entries = flipped,
                documents = docs.len(),
                "the membership changed what stands: documents rebuilt from the entries that do"
            );
        }
        for (id, doc_type) in docs {
            let (standing, _) = changes_of(t, &self.membership, &id)?;
            let doc = if standing.is_empty() {
                None
            } else {
                let mut doc = AutoCommit::new();
                doc.apply_changes(standing).map_err(|e| {
                    WriteError::Internal(format!("document {id} could not be rebuilt: {e}"))
                })?;
                Some(doc)
            };
            self.cache.replace(t, &id, doc_type, doc)?;
            touched.insert(id);
        }
        Ok(())
    }
}

/// The changes held of document `id` that stand, and the hashes of those that do not: the
/// changes of entries that do not stand, and every entry's changes to `id` of which any
/// builds on one of those, until nothing more builds on them.
pub(super) fn changes_of(
    t: &Tables<'_>,
    membership: &Membership,
    id: &DocId,
) -> Result<(Vec<Change>, HashSet<ChangeHash>), WriteError> {
    let mut keys = Vec::new();
    for k in t.doc_entries.get(id.as_bytes())? {
        let k = k?;
        let (author, seq) = k.value();
        keys.push((*author, seq));
    }
    let mut standing: Vec<Vec<Change>> = Vec::new();
    let mut aside: HashSet<ChangeHash> = HashSet::new();
    for (author, seq) in keys {
        let Some(bytes) = t.entries.get((&author, seq))? else {
            continue;
        };
        let e = decode_held(bytes.value())?;
        let Some(dc) = e.docs().iter().find(|d| d.doc_id == *id) else {
            continue;
        };
        let changes = dc
            .changes
            .iter()
            .map(|b| docmap::parse_change(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WriteError::Internal(format!("a stored change does not parse: {e}")))?;
        if strike_reason(membership, &e).is_some() {
            aside.extend(changes.iter().map(Change::hash));
        } else {
            standing.push(changes);
        }
    }
    loop {
        let before = aside.len();
        standing.retain(|changes| {
            let builds = changes
                .iter()
                .any(|c| c.deps().iter().any(|d| aside.contains(d)));
            if builds {
                aside.extend(changes.iter().map(Change::hash));
            }
            !builds
        });
        if aside.len() == before {
            break;
        }
    }
    Ok((standing.into_iter().flatten().collect(), aside))
}

/// Whether an ingested entry's changes to `id`, which build on `missing` changes not in the
/// document, are set aside: every one of them is a change held that does not stand (so it
/// will never come). Otherwise they wait for what they build on.
pub(super) fn sets_aside(
    t: &Tables<'_>,
    membership: &Membership,
    id: &DocId,
    missing: &[ChangeHash],
) -> Result<bool, WriteError> {
    let (_, aside) = changes_of(t, membership, id)?;
    Ok(missing.iter().all(|h| aside.contains(h)))
}

fn decode_held(bytes: &[u8]) -> Result<SignedEntry, WriteError> {
    SignedEntry::decode(bytes)
        .map_err(|e| WriteError::Internal(format!("a stored entry does not decode: {e}")))
}
