//! The checks an entry from another device passes before it touches a document, one step
//! each, in the order `ingest` runs them. Each either lets the entry on or halts it with a
//! [`Halt`] that says what becomes of it: a duplicate or a gap (nothing stored), a forgery
//! (kept aside), a refusal (kept aside, with the reason), a deferral (it waits for what it
//! builds on), or a failure of the store (the batch fails, the entry may come again).
//!
//! Every verdict depends only on the entry and what it builds on (its author's log, the
//! membership operations and settings in its past), never on arrival order, so every node
//! reaches the same one.

use super::*;

/// Why an entry goes no further now.
pub(super) enum Halt {
    /// Not applied, nothing kept: a duplicate, a gap, a deferral.
    Outcome(IngestOutcome),
    /// Its signature does not hold: kept aside, and the peer that sent it is blamed.
    Forged(String),
    /// Bad: kept aside with the reason, never applied.
    Refuse(String),
    /// Signed and chained, but the membership says it does not stand (its author revoked
    /// before it, or its role then may not write what it carries): held like any entry,
    /// never applied (see `undo`).
    Undone(String),
    /// Reading or writing the store failed: nothing is said about the entry.
    Store(WriteError),
}

impl Halt {
    /// Good as far as can be told, but it builds on what is not held yet: not stored, not
    /// held against its author; accepted when sent again after it.
    pub fn defer(reason: impl Into<String>) -> Halt {
        Halt::Outcome(IngestOutcome::Deferred {
            reason: reason.into(),
        })
    }
}

impl From<WriteError> for Halt {
    fn from(e: WriteError) -> Halt {
        Halt::Store(e)
    }
}

impl From<redb::StorageError> for Halt {
    fn from(e: redb::StorageError) -> Halt {
        Halt::Store(e.into())
    }
}

impl From<crate::store::tables::SealedError> for Halt {
    fn from(e: crate::store::tables::SealedError) -> Halt {
        Halt::Store(e.into())
    }
}

impl Writer {
    /// Not held yet, and signed by its author. A byte-identical copy of a stored entry is a
    /// duplicate whatever its signature (the stored one was verified); that is looked up
    /// first, because peers send copies often and verifying costs more. The signature is not
    /// checked when `verified` says it is proven already (see `stage_ingest`).
    pub(super) fn check_new(
        &self,
        t: &Tables<'_>,
        entry: &SignedEntry,
        have: u64,
        verified: bool,
    ) -> Result<(), Halt> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        let stored_same = seq <= have
            && t.entries
                .get((author.as_bytes(), seq))?
                .is_some_and(|v| v.value() == entry.encoded());
        if stored_same {
            return Err(Halt::Outcome(IngestOutcome::Duplicate));
        }
        if !verified && let Err(e) = entry.verify(&self.id.mesh_id) {
            return Err(Halt::Forged(e.to_string()));
        }
        Ok(())
    }

    /// Its author is not quarantined (proven to have forked its log).
    pub(super) fn check_author(&self, entry: &SignedEntry) -> Result<(), Halt> {
        let author = entry.entry.author;
        if self.quarantined.contains(&author) {
            return Err(Halt::Refuse(format!(
                "device {author} is quarantined: it signed two different entries at one position of its log; an admin should revoke it"
            )));
        }
        Ok(())
    }

    /// It is the next entry of its author's log, and names the one held before it. Anything
    /// else signed at a position already held proves a fork: the author is quarantined.
    pub(super) fn check_chain(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        have: u64,
        tip: EntryHash,
    ) -> Result<(), Halt> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        if seq <= have {
            let stored = t
                .entries
                .get((author.as_bytes(), seq))?
                .map(|v| EntryHash::of(v.value()))
                .unwrap_or(EntryHash::ZERO);
            self.quarantine(t, author, seq, stored, entry.hash())?;
            return Err(Halt::Refuse(format!(
                "fork: device {author} signed two different entries {seq}; it is quarantined"
            )));
        }
        if seq > have + 1 {
            return Err(Halt::Outcome(IngestOutcome::Gap { have }));
        }
        if entry.entry.prev != tip {
            // Signed by its author, yet it names another entry `have` than the one held: the
            // author signed two, which proves a fork as surely as seeing both.
            self.quarantine(t, author, have, tip, entry.entry.prev)?;
            return Err(Halt::Refuse(format!(
                "broken hash chain: entry {seq} does not follow entry {have} of device {author} (a fork: the device is quarantined)"
            )));
        }
        Ok(())
    }

    /// Its author was a member at that position of its log, with a role that may write every
    /// kind of document the entry touches. An author whose admission is not held yet waits;
    /// one the membership does not allow is held but not applied (see `undo`).
    pub(super) fn check_role(&self, entry: &SignedEntry) -> Result<Role, Halt> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        // Not admitted (yet): it waits for its admission. Admitted but not allowed: held, not
        // applied, since a membership operation arriving later may change that (`undo`).
        if let Err(e @ AccessError::NotMember(_)) = self.membership.role_at(author, seq) {
            // Its admission is held but does not count (whoever admitted it was revoked
            // first): held, not applied, as on a node that applied it before that revocation.
            // With no admission held, it waits for one.
            let admitted = self
                .member_ops
                .iter()
                .any(|o| matches!(&o.op, MemberOp::Add { device, .. } if *device == author));
            return Err(if admitted {
                Halt::Undone(e.to_string())
            } else {
                Halt::defer(e.to_string())
            });
        }
        if let Some(reason) = undo::strike_reason(&self.membership, entry) {
            return Err(Halt::Undone(reason));
        }
        self.membership
            .role_at(author, seq)
            .map_err(|e| Halt::Undone(e.to_string()))
    }
}

/// Every change the entry carries is an Automerge change.
pub(super) fn parse_changes(entry: &SignedEntry) -> Result<Vec<Vec<Change>>, Halt> {
    crate::repo::verify::parse_changes(entry).map_err(Halt::Refuse)
}

/// The schema rules an ingested document must keep, after its changes are applied.
pub(super) fn check_remote(
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
        DocType::Settings => {
            let after = check::<Settings>(doc, settings)?;
            // Every amount is judged against the currency: it is fixed by the owner's first
            // entry, in the past of everything, so every node judges alike.
            match earlier::<Settings>(before) {
                Some(b) if b.currency != after.currency => Err(format!(
                    "the mesh's currency is {} and can't change",
                    b.currency
                )),
                _ => Ok(()),
            }
        }
        DocType::Product => {
            let p = docmap::from_view::<Product>(doc).map_err(|e| e.to_string())?;
            p.check_fields(settings).map_err(|e| e.to_string())?;
            earlier::<Product>(before)
                .map_or(Ok(()), |b| b.check_update(&p).map_err(|e| e.to_string()))
        }
        DocType::StockTransfer => {
            let after = check::<StockTransfer>(doc, settings)?;
            earlier::<StockTransfer>(before).map_or(Ok(()), |b| {
                b.check_update(&after).map_err(|e| e.to_string())
            })
        }
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
