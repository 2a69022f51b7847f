//! Entries from other devices: verified, then checked (chain, membership and role, ledger,
//! schema) before they touch a document; refused ones are kept aside with the reason.

use super::*;

impl Writer {
    /// Verifies (unless `from_log`), checks and applies an entry. Entries replayed from this
    /// node's own write-ahead log were checked when first stored and are guarded by the log's
    /// record hashes, as redb's contents are by its checksums: their signatures are not checked
    /// again, which makes replay after a crash a third faster.
    pub(super) fn stage_ingest(
        &mut self,
        t: &mut Tables<'_>,
        entry: SignedEntry,
        touched: &mut BTreeSet<DocId>,
        from_log: bool,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        let (have, tip) = t
            .heads
            .get(author.as_bytes())?
            .map(|v| v.value())
            .unwrap_or((0, [0; 32]));
        // A byte-identical copy of a stored entry is a duplicate whatever its signature: the
        // stored one was verified. Checked first, because peers send copies often (a push from
        // each of them, then pulls) and verifying costs more than looking up.
        let stored_same = seq <= have
            && t.entries
                .get((author.as_bytes(), seq))?
                .is_some_and(|v| v.value() == entry.encoded());
        if stored_same {
            return Ok((IngestOutcome::Duplicate, None));
        }
        if !from_log && let Err(e) = entry.verify(&self.id.mesh_id) {
            let reason = e.to_string();
            self.keep_aside(t, &entry, &reason)?;
            return Ok((IngestOutcome::Forged { reason }, None));
        }
        if self.quarantined.contains(&author) {
            return self.reject(
                t,
                &entry,
                format!(
                    "device {author} is quarantined: it signed two different entries at one position of its log; an admin should revoke it"
                ),
            );
        }
        if seq <= have {
            let stored = t
                .entries
                .get((author.as_bytes(), seq))?
                .map(|v| EntryHash::of(v.value()))
                .unwrap_or(EntryHash::ZERO);
            let reason = format!(
                "fork: device {author} signed two different entries {seq}; it is quarantined"
            );
            self.quarantine(t, author, seq, stored, entry.hash())?;
            return self.reject(t, &entry, reason);
        }
        if seq > have + 1 {
            return Ok((IngestOutcome::Gap { have }, None));
        }
        if entry.entry.prev != EntryHash(tip) {
            // Signed by its author, yet it names another entry `have` than the one held: the
            // author signed two, which proves a fork as surely as seeing both.
            let reason = format!(
                "broken hash chain: entry {seq} does not follow entry {have} of device {author} (a fork: the device is quarantined)"
            );
            self.quarantine(t, author, have, EntryHash(tip), entry.entry.prev)?;
            return self.reject(t, &entry, reason);
        }
        if let Some(op) = entry.member_op() {
            // Kept unless it is wrong whatever else arrives: whether it counts (its author may
            // be revoked before it, its target admitted by another admin, two admins may revoke
            // each other) is for `Membership::compute`, and every node must hold the same
            // operations to decide alike.
            return match self.membership.admissible_op(author, seq, op) {
                Err(AccessError::NotMember(_)) => Ok((
                    IngestOutcome::Deferred {
                        reason: AccessError::NotMember(author).to_string(),
                    },
                    None,
                )),
                Err(e) => self.reject(t, &entry, e.to_string()),
                Ok(()) => {
                    store_entry(t, &entry)?;
                    self.wal_batch.push(entry.encoded().to_vec());
                    self.record_member_op(t, &entry)?;
                    if author == self.id.device_id {
                        self.head = (seq, entry.hash());
                    }
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
            };
        }
        let role = match self.membership.role_at(author, seq) {
            Ok(role) => role,
            // Its admission may still be on its way: it waits, as an entry with missing
            // dependencies does.
            Err(e @ AccessError::NotMember(_)) => {
                return Ok((
                    IngestOutcome::Deferred {
                        reason: e.to_string(),
                    },
                    None,
                ));
            }
            Err(e) => return self.reject(t, &entry, e.to_string()),
        };
        if let Some(dc) = entry.docs().iter().find(|d| !role.may_write(d.doc_type)) {
            let reason = AccessError::DocType {
                device: author,
                role,
                doc_type: dc.doc_type,
            }
            .to_string();
            return self.reject(t, &entry, reason);
        }
        let mut parsed = Vec::with_capacity(entry.docs().len());
        for dc in entry.docs() {
            let mut changes = Vec::with_capacity(dc.changes.len());
            for (n, bytes) in dc.changes.iter().enumerate() {
                match Change::from_bytes(bytes.clone()) {
                    Ok(c) => changes.push(c),
                    Err(e) => {
                        return self.reject(
                            t,
                            &entry,
                            format!(
                                "document {}: change {n} is not an Automerge change: {e}",
                                dc.doc_id
                            ),
                        );
                    }
                }
            }
            parsed.push(changes);
        }
        // Apply to the cached documents (new ones aside); on any refusal, evict what was touched
        // so the next load reads the transaction's state from before this entry.
        let mut fresh: HashMap<DocId, (AutoCommit, Option<Json>)> = HashMap::new();
        let mut refusal = None;
        for (dc, changes) in entry.docs().iter().zip(parsed) {
            if let Err(reason) = self.apply_remote(
                t,
                dc.doc_id,
                dc.doc_type,
                changes,
                &mut fresh,
                (author, role),
            ) {
                refusal = Some(reason);
                break;
            }
        }
        if let Some(refusal) = refusal {
            for dc in entry.docs() {
                self.cache.evict(&dc.doc_id);
            }
            return match refusal {
                Refusal::Reject(reason) => self.reject(t, &entry, reason),
                Refusal::Defer(reason) => Ok((IngestOutcome::Deferred { reason }, None)),
                // The store, not the entry, failed: the batch fails and the entry can come again.
                Refusal::Fail(e) => Err(e),
            };
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
            touched.insert(dc.doc_id);
        }
        store_entry(t, &entry)?;
        self.wal_batch.push(entry.encoded().to_vec());
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
            // Its own entries coming back (from the log after a crash, or from peers to a till
            // restored from an old backup): its next entry must follow the last one.
            self.head = (seq, entry.hash());
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

    /// Applies one document's changes and checks the result against the schema.
    fn apply_remote(
        &mut self,
        t: &Tables<'_>,
        id: DocId,
        doc_type: DocType,
        changes: Vec<Change>,
        fresh: &mut HashMap<DocId, (AutoCommit, Option<Json>)>,
        (author, role): (DeviceId, Role),
    ) -> Result<(), Refusal> {
        let actor = self.cache.actor().clone();
        let settings = self.settings.clone();
        let existing = self.cache.get(t, &id).map_err(Refusal::Fail)?;
        let (doc, before, ledger_before, existed) = match existing {
            Some(c) => {
                if c.record.doc_type != doc_type.code() {
                    return Err(Refusal::Reject(format!(
                        "document {id} is a {}, not a {doc_type}",
                        DocType::from_code(c.record.doc_type)
                            .map(|t| t.name())
                            .unwrap_or("?")
                    )));
                }
                // Facts that must not change are compared with their stored state (stored
                // documents are complete: entries with missing dependencies are deferred).
                let before =
                    matches!(doc_type, DocType::Sale | DocType::Refund).then(|| c.view().clone());
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
        let own: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
        let mut seen: Vec<ChangeHash> = changes
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|h| !own.contains(h))
            .collect();
        seen.sort();
        seen.dedup();
        let concurrent = existed && seen != heads_before;
        let entry_changes = concurrent.then(|| changes.clone());
        doc.apply_changes(changes)
            .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
        let missing = doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            // It builds on another device's changes not held here. Applying it now would let it
            // slip in unchecked when those arrive; it waits for them instead.
            return Err(Refusal::Defer(format!(
                "document {id}: builds on {} change(s) from other devices not held yet; send their entries first",
                missing.len()
            )));
        }
        // Read once: checked here, then kept as the document's view for `finish`.
        let view = docmap::read_json(doc);
        if let Some(found) = view.get("type").and_then(Json::as_str)
            && found != doc_type.name()
        {
            return Err(Refusal::Reject(format!(
                "document {id} says it is a {found}, but the entry files it as a {doc_type}"
            )));
        }
        if !self.settings_received && doc_type != DocType::Settings {
            // Judged against default settings, a lawful entry could be refused here and
            // accepted everywhere else; it waits until the settings arrive (they come first:
            // the owner's first entry).
            return Err(Refusal::Defer(
                "the mesh settings have not arrived yet; send the owner's first entry first".into(),
            ));
        }
        match entry_changes {
            // The author's change is judged on the document as the author saw it, not as
            // merged with concurrent changes held here: the verdict then depends only on the
            // entry and its history, so every node reaches the same one in whatever order
            // entries arrive. (A merge of two lawful changes may still break a rule, say two
            // tills refunding the last unit at once; it is kept, as every node keeps it.)
            Some(changes) => {
                let mut as_seen = doc
                    .fork_at(&seen)
                    .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
                let seen_view = docmap::read_json(&as_seen);
                as_seen
                    .apply_changes(changes)
                    .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
                let after = docmap::read_json(&as_seen);
                if ledger_of(&seen_view) != ledger_of(&after) && !role.may_write_ledger() {
                    return Err(Refusal::Reject(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                check_remote(doc_type, &after, &settings, Some(&seen_view))
            }
            None => {
                if ledger_before.as_ref() != ledger_of(&view) && !role.may_write_ledger() {
                    return Err(Refusal::Reject(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                check_remote(doc_type, &view, &settings, before.as_ref())
            }
        }
        .map_err(|e| Refusal::Reject(format!("{doc_type} {id}: {e}")))?;
        match fresh.get_mut(&id) {
            Some(f) => f.1 = Some(view),
            None => {
                if let Ok(Some(c)) = self.cache.get(t, &id) {
                    c.set_view(view);
                }
            }
        }
        Ok(())
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

/// Why an ingested entry is not applied now.
enum Refusal {
    /// Bad: kept aside with the reason, never applied.
    Reject(String),
    /// Good as far as can be told, but it builds on changes not held yet: not stored, and not
    /// held against its author; it is accepted when sent again after them.
    Defer(String),
    /// Reading the store failed: nothing is said about the entry.
    Fail(WriteError),
}

/// The schema rules an ingested document must keep.
fn check_remote(
    doc_type: DocType,
    doc: &Json,
    settings: &Settings,
    before: Option<&Json>,
) -> Result<(), String> {
    fn check<T: Document>(doc: &Json, settings: &Settings) -> Result<T, String> {
        let v = docmap::from_view::<T>(doc).map_err(|e| e.to_string())?;
        v.validate(settings).map_err(|e| e.to_string())?;
        Ok(v)
    }
    fn earlier<T: Document>(before: Option<&Json>) -> Option<T> {
        before.and_then(|b| docmap::from_view::<T>(b).ok())
    }
    match doc_type {
        DocType::Settings => check::<Settings>(doc, settings).map(drop),
        DocType::Product => check::<Product>(doc, settings).map(drop),
        DocType::Sale => {
            let after = check::<Sale>(doc, settings)?;
            earlier::<Sale>(before).map_or(Ok(()), |b| {
                b.check_update(&after).map_err(|e| e.to_string())
            })
        }
        DocType::Refund => {
            let after = check::<Refund>(doc, settings)?;
            earlier::<Refund>(before).map_or(Ok(()), |b| {
                b.check_update(&after).map_err(|e| e.to_string())
            })
        }
        DocType::Customer => check::<Customer>(doc, settings).map(drop),
        DocType::Vendor => check::<Vendor>(doc, settings).map(drop),
        DocType::Invoice => check::<Invoice>(doc, settings).map(drop),
        DocType::Payment => check::<Payment>(doc, settings).map(drop),
        DocType::Expense => check::<Expense>(doc, settings).map(drop),
        DocType::StockAdjustment => check::<StockAdjustment>(doc, settings).map(drop),
    }
}
