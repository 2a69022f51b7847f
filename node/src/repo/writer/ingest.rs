//! Entries from other devices: each check of [`checks`](super::checks) in turn, then the
//! apply, whose result is checked again (ledger, schema); an entry halted anywhere changes no
//! document, and a refused one is kept aside with the reason.

use super::checks::{Halt, check_remote, parse_changes};
use super::undo;
use super::*;

impl Writer {
    /// Verifies (unless `verified`), checks and applies an entry. Its signature is proven
    /// already when the repo verified it before handing it over (see `repo::verify`), or when
    /// it is replayed from this node's own write-ahead log: checked when first stored, and
    /// guarded by the log's record hashes as redb's contents are by its checksums (which makes
    /// replay after a crash a third faster). `changes` are its changes when parsed already.
    pub(super) fn stage_ingest(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        touched: &mut BTreeSet<DocId>,
        verified: bool,
        changes: Option<Vec<Vec<Change>>>,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        match self.ingest_steps(t, entry, touched, verified, changes) {
            Ok(staged) => Ok(staged),
            Err(Halt::Outcome(outcome)) => Ok((outcome, None)),
            Err(Halt::Forged(reason)) => {
                self.keep_aside(t, entry, &reason)?;
                Ok((IngestOutcome::Forged { reason }, None))
            }
            Err(Halt::Refuse(reason)) => self.reject(t, entry, reason),
            Err(Halt::Undone(reason)) => self.store_undone(t, entry, reason),
            // The store, not the entry, failed: the batch fails and the entry can come again.
            Err(Halt::Store(e)) => Err(e),
        }
    }

    /// The checks in order (each in `checks`, each able to halt the entry), then the apply.
    fn ingest_steps(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        touched: &mut BTreeSet<DocId>,
        verified: bool,
        changes: Option<Vec<Vec<Change>>>,
    ) -> Result<(IngestOutcome, Option<Staged>), Halt> {
        let (have, tip) = t
            .heads
            .get(entry.entry.author.as_bytes())?
            .map(|v| v.value())
            .unwrap_or((0, [0; 32]));
        self.check_new(t, entry, have, verified)?;
        self.check_author(entry)?;
        self.check_chain(t, entry, have, EntryHash(tip))?;
        if let Some(op) = entry.member_op() {
            return self.stage_member_op(t, entry, op, touched);
        }
        // Bytes that are not Automerge changes are refused whatever the membership says: an
        // entry held but not applied may stand later, and is parsed then.
        let role = self.check_role(entry);
        let parsed = match changes {
            Some(parsed) => parsed,
            None => parse_changes(entry)?,
        };
        let role = role?;
        self.apply_docs(t, entry, parsed, role)?;
        Ok(self.store_applied(t, entry, touched)?)
    }

    /// A membership operation: kept unless it is wrong whatever else arrives. Whether it
    /// counts (its author may be revoked before it, its target admitted by another admin, two
    /// admins may revoke each other) is for `Membership::compute`, and every node must hold
    /// the same operations to decide alike.
    fn stage_member_op(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        op: &MemberOp,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(IngestOutcome, Option<Staged>), Halt> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        match self.membership.admissible_op(author, seq, op) {
            Err(AccessError::NotMember(_)) => Err(Halt::Outcome(IngestOutcome::Deferred {
                reason: AccessError::NotMember(author).to_string(),
            })),
            // Not an admin at that seq as the membership held here says; another node may hold
            // it before the role change that says so. Kept like any operation: `compute`
            // never counts it while its author is not an admin there, on every node alike.
            Err(e) if !matches!(e, AccessError::NotAdmin { .. }) => {
                Err(Halt::Refuse(e.to_string()))
            }
            Ok(()) | Err(_) => {
                self.hold(t, entry)?;
                self.record_member_op(t, entry, touched)?;
                Ok((
                    IngestOutcome::Applied,
                    Some(Staged {
                        primary: self.settings_id,
                        docs: Vec::new(),
                        author,
                        seq,
                        own: None,
                    }),
                ))
            }
        }
    }

    /// Applies each document's changes to the cached documents (new ones held aside until all
    /// are checked) and checks each result; on any halt, evicts what was touched so the next
    /// load reads the transaction's state from before this entry.
    fn apply_docs(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        parsed: Vec<Vec<Change>>,
        role: Role,
    ) -> Result<(), Halt> {
        let mut fresh: HashMap<DocId, (AutoCommit, Option<Json>)> = HashMap::new();
        let mut moves = rights::RightsMoves::new();
        let mut reclaimed = rights::RightsMoves::new();
        for (dc, changes) in entry.docs().iter().zip(parsed) {
            let applied = self.apply_remote(
                t,
                dc.doc_id,
                dc.doc_type,
                changes,
                &mut fresh,
                (entry.entry.author, role),
            );
            // Builds on an entry that does not stand: neither does this one, whole (see `undo`).
            let applied = match applied {
                Ok(Some((m, r))) => {
                    rights::add_moves(&mut moves, m);
                    rights::add_moves(&mut reclaimed, r);
                    Ok(())
                }
                Ok(None) => Err(Halt::Undone(undo::BUILDS_ON_UNDONE.to_owned())),
                Err(halt) => Err(halt),
            };
            // Every document in: the entry's moves of rights, all its author's own and within
            // what it holds at this point of its log.
            let applied = match applied {
                Ok(()) if dc.doc_id == entry.docs()[entry.docs().len() - 1].doc_id => self
                    .take_remote_rights(
                        t,
                        (entry.entry.author, entry.entry.seq),
                        std::mem::take(&mut moves),
                    )
                    .map(|()| self.count_rights(std::mem::take(&mut reclaimed))),
                other => other,
            };
            if let Err(halt) = applied {
                // What the Automerge documents queued is dropped with them; the next load
                // reads them as they were.
                for dc in entry.docs() {
                    self.cache.evict(&dc.doc_id);
                }
                return Err(halt);
            }
        }
        for dc in entry.docs() {
            let mut changes = dc.changes.iter();
            if let Some((doc, view)) = fresh.remove(&dc.doc_id) {
                let first = changes.next().map(Vec::as_slice).unwrap_or_default();
                self.cache
                    .insert_new(t, dc.doc_id, dc.doc_type, doc, first, view)?;
            }
            for c in changes {
                self.cache.record_change(t, &dc.doc_id, c)?;
            }
        }
        Ok(())
    }

    /// Stores an applied entry, and what it changes of the writer's own state: the settings
    /// later entries are judged by, and this device's own head and receipt counter.
    fn store_applied(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        touched.extend(entry.docs().iter().map(|d| d.doc_id));
        self.hold(t, entry)?;
        self.retry_waiting(t, entry, touched)?;
        if entry.docs().iter().any(|d| d.doc_id == self.settings_id) {
            // Later entries of this batch (a product with a new tax code) are checked against
            // the settings as they are now.
            let id = self.settings_id;
            if let Some(settings) = self
                .cache
                .get(t, &id)?
                .and_then(|c| docmap::from_view::<Settings>(c.view()).ok())
            {
                self.settings = settings;
                self.settings_received = true;
            }
        }
        if author == self.id.device_id {
            // This device's own entries come back from the log after a crash: the receipt
            // counter follows the highest number its sales carry, so no number is issued twice.
            for d in entry.docs().iter().filter(|d| d.doc_type == DocType::Sale) {
                let n = self
                    .cache
                    .get(t, &d.doc_id)?
                    .and_then(|c| receipt_seq_of(c.view()));
                if let Some(n) = n.filter(|n| *n > self.receipt_seq) {
                    self.receipt_seq = n;
                    t.meta.insert(meta_key::RECEIPT_SEQ, &n.to_be_bytes()[..])?;
                    self.device
                        .receipts
                        .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let docs = entry
            .docs()
            .iter()
            .map(|d| (d.doc_id, d.doc_type))
            .collect::<Vec<_>>();
        let primary = docs[0].0;
        Ok((
            IngestOutcome::Applied,
            Some(Staged {
                primary,
                docs,
                author,
                seq,
                own: None,
            }),
        ))
    }

    /// Applies one document's changes and checks the result against the schema. `false`:
    /// they build on changes of an entry that does not stand (see `undo`), so nothing of the
    /// entry is applied.
    fn apply_remote(
        &mut self,
        t: &Tables<'_>,
        id: DocId,
        doc_type: DocType,
        changes: Vec<Change>,
        fresh: &mut HashMap<DocId, (AutoCommit, Option<Json>)>,
        (author, role): (DeviceId, Role),
    ) -> Result<Option<(rights::RightsMoves, rights::RightsMoves)>, Halt> {
        let actor = self.cache.actor().clone();
        let settings = &self.settings;
        let root = self.id.root_id;
        let existing = self.cache.get(t, &id).map_err(Halt::Store)?;
        let (doc, before, ledger_before, existed) = match existing {
            Some(c) => {
                if c.record.doc_type != doc_type.code() {
                    return Err(Halt::Refuse(format!(
                        "document {id} is a {}, not a {doc_type}",
                        DocType::from_code(c.record.doc_type)
                            .map(|t| t.name())
                            .unwrap_or("?")
                    )));
                }
                // Facts that must not change are compared with their stored state (stored
                // documents are complete: entries with missing dependencies are deferred).
                let before = matches!(
                    doc_type,
                    DocType::Sale
                        | DocType::Refund
                        | DocType::Settings
                        | DocType::Product
                        | DocType::StockTransfer
                        | DocType::StockAdjustment
                )
                .then(|| c.view().clone());
                let ledger_before = ledger_of(c.view()).cloned();
                // Remote changes: what the document reads as is known only by reading it.
                c.forget_view();
                (&mut c.doc, before, ledger_before, true)
            }
            None => (
                &mut fresh
                    .entry(id)
                    .or_insert_with(|| (AutoCommit::new().with_actor(actor), None))
                    .0,
                None,
                None,
                false,
            ),
        };
        // What the author saw: the heads its changes build on, outside the entry itself.
        let mut heads_before = doc.get_heads();
        heads_before.sort();
        let seen = docmap::seen_heads(&changes);
        if doc_type == DocType::Settings && seen.is_empty() && author != root {
            // A second root would make the currency a matter of Automerge's tie-break, and
            // every amount is judged against it.
            return Err(Halt::Refuse(
                "the mesh settings are made by the owner's first entry, and a change to them must build on them".into(),
            ));
        }
        let concurrent = existed && seen != heads_before;
        let entry_changes = concurrent.then(|| changes.clone());
        doc.apply_changes(changes)
            .map_err(|e| Halt::Refuse(format!("document {id}: {e}")))?;
        let missing = doc.get_missing_deps(&[]);
        if !missing.is_empty() && undo::builds_on_undone(t, &id, &missing)? {
            return Ok(None);
        }
        if !missing.is_empty() {
            // It builds on another device's changes not held here. Applying it now would let it
            // slip in unchecked when those arrive; it waits for them instead.
            return Err(Halt::defer(format!(
                "document {id}: builds on {} change(s) from other devices not held yet; send their entries first",
                missing.len()
            )));
        }
        // Read once: checked here, then kept as the document's view for `finish`.
        let view = docmap::read_json(doc);
        if let Some(found) = view.get("type").and_then(Json::as_str)
            && found != doc_type.name()
        {
            return Err(Halt::Refuse(format!(
                "document {id} says it is a {found}, but the entry files it as a {doc_type}"
            )));
        }
        if !self.settings_received && doc_type != DocType::Settings {
            // Judged against default settings, a lawful entry could be refused here and
            // accepted everywhere else; it waits until the settings arrive (they come first:
            // the owner's first entry).
            return Err(Halt::defer(
                "the mesh settings have not arrived yet; send the owner's first entry first",
            ));
        }
        // What the entry moves of stock rights, as its author saw the document; a reclaim's
        // creation is judged by its own rules after the schema's (kept aside here, it is
        // rare). Its acceptance is the receiver's own move, judged like any transfer's.
        let moves: Result<rights::RightsMoves, Json>;
        match entry_changes {
            // The author's change is judged on the document as the author saw it, not as
            // merged with concurrent changes held here: the verdict then depends only on the
            // entry and its history, so every node reaches the same one in whatever order
            // entries arrive. (A merge of two lawful changes may still break a rule, say two
            // tills refunding the last unit at once; it is kept, as every node keeps it.)
            Some(changes) => {
                let mut as_seen = doc
                    .fork_at(&seen)
                    .map_err(|e| Halt::Refuse(format!("document {id}: {e}")))?;
                let seen_view = docmap::read_json(&as_seen);
                as_seen
                    .apply_changes(changes)
                    .map_err(|e| Halt::Refuse(format!("document {id}: {e}")))?;
                let after = docmap::read_json(&as_seen);
                if ledger_of(&seen_view) != ledger_of(&after) && !role.may_write_ledger() {
                    return Err(Halt::Refuse(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                moves = if tillmesh_protocol::rights::is_reclaim(doc_type, &after)
                    && !tillmesh_protocol::rights::is_reclaim(doc_type, &seen_view)
                {
                    Err(after.clone())
                } else {
                    Ok(rights::delta(doc_type, &id, Some(&seen_view), Some(&after)))
                };
                check_remote(doc_type, &after, settings, Some(&seen_view))
            }
            None => {
                if ledger_before.as_ref() != ledger_of(&view) && !role.may_write_ledger() {
                    return Err(Halt::Refuse(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                moves = if tillmesh_protocol::rights::is_reclaim(doc_type, &view)
                    && !before
                        .as_ref()
                        .is_some_and(|b| tillmesh_protocol::rights::is_reclaim(doc_type, b))
                {
                    Err(view.clone())
                } else {
                    Ok(rights::delta(doc_type, &id, before.as_ref(), Some(&view)))
                };
                check_remote(doc_type, &view, settings, before.as_ref())
            }
        }
        .map_err(|e| Halt::Refuse(format!("{doc_type} {id}: {e}")))?;
        let moves = match moves {
            Ok(moves) => (moves, rights::RightsMoves::new()),
            // Against the document as held before this entry (a second admin's reclaim).
            Err(reclaim) => {
                let held = before.as_ref().filter(|_| existed);
                let reclaimed = self.check_reclaim(t, id, role, &reclaim, held)?;
                (rights::RightsMoves::new(), reclaimed)
            }
        };
        match fresh.get_mut(&id) {
            Some(f) => f.1 = Some(view),
            None => {
                if let Ok(Some(c)) = self.cache.get(t, &id) {
                    c.set_view(view);
                }
            }
        }
        Ok(Some(moves))
    }

    pub(super) fn reject(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: String,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        self.keep_aside(t, entry, &reason)?;
        Ok((IngestOutcome::Rejected { reason }, None))
    }

    /// Records proof that `author` signed two different entries at `seq`, and refuses its
    /// entries from now on. An alert for people: the device is stolen, cloned or broken.
    pub(super) fn quarantine(
        &mut self,
        t: &mut Tables<'_>,
        author: DeviceId,
        seq: u64,
        held: EntryHash,
        other: EntryHash,
    ) -> Result<(), WriteError> {
        tracing::error!(device = %author, seq, "ALERT: device signed two different entries at one position of its log (a fork); it is quarantined, and an admin should revoke it");
        self.quarantined.insert(author);
        self.recompute_membership();
        t.quarantine
            .insert(author.as_bytes(), (seq, held.0, other.0))?;
        Ok(())
    }

    pub(super) fn keep_aside(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: &str,
    ) -> Result<(), WriteError> {
        tracing::warn!(author = %entry.entry.author.short(), seq = entry.entry.seq, %reason, "entry refused");
        self.rejected_seq += 1;
        t.rejected
            .insert(self.rejected_seq, &rejected_record(reason, entry.encoded()))?;
        // Bounded: a peer sending refused entries again and again cannot fill the disk.
        if let Some(oldest) = self.rejected_seq.checked_sub(REJECTED_KEPT_MAX) {
            t.rejected.remove(oldest)?;
        }
        t.meta
            .insert(meta_key::REJECTED_SEQ, &self.rejected_seq.to_be_bytes()[..])?;
        Ok(())
    }
}
