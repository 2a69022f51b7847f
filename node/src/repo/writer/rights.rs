//! Stock rights in the writer (see `tillmesh_protocol::rights`): each entry's moves of rights
//! are its author's own and never spend more than the author holds at that point of its log;
//! transfers given, and accepted by the till that takes them into a sale.

pub(super) use tillmesh_protocol::rights::delta;
use tillmesh_protocol::rights::{self, RightsError};

use redb::ReadableMultimapTable;

use super::checks::Halt;
use super::*;

/// Moves of rights per `(product, device)`.
pub(super) type RightsMoves = BTreeMap<(DocId, DeviceId), i64>;

/// Adds `more` to `into`, dropping what cancels out.
pub(super) fn add_moves(into: &mut RightsMoves, more: RightsMoves) {
    for (key, units) in more {
        let v = into.entry(key).or_default();
        *v = v.saturating_add(units);
    }
    into.retain(|_, v| *v != 0);
}

/// An entry that spends rights its author does not hold.
pub(super) struct Shortfall {
    pub product: DocId,
    pub spent: i64,
    pub held: i64,
}

impl Writer {
    /// Rights `device` holds to `product` now: the store's count plus what entries staged
    /// earlier in this batch moved.
    pub(super) fn rights_of(
        &self,
        t: &Tables<'_>,
        product: &DocId,
        device: &DeviceId,
    ) -> Result<i64, WriteError> {
        let stored = t
            .rights
            .get((product.as_bytes(), device.as_bytes()))?
            .map(|v| v.value())
            .unwrap_or(0);
        let staged = self
            .rights_staged
            .get(&(*product, *device))
            .copied()
            .unwrap_or(0);
        Ok(stored.saturating_add(staged))
    }

    /// Checks an entry's moves of rights: every one its author's own, and none leaving the
    /// author below zero at this point of its log. Nothing is counted; see `count_rights`.
    pub(super) fn check_rights(
        &self,
        t: &Tables<'_>,
        author: DeviceId,
        moves: &RightsMoves,
    ) -> Result<Result<(), Result<Shortfall, RightsError>>, WriteError> {
        if let Err(e) = rights::check_author(author, moves) {
            return Ok(Err(Err(e)));
        }
        for ((product, device), units) in moves.iter().filter(|(_, u)| **u < 0) {
            let held = self.rights_of(t, product, device)?;
            if held.saturating_add(*units) < 0 {
                return Ok(Err(Ok(Shortfall {
                    product: *product,
                    spent: -units,
                    held,
                })));
            }
        }
        Ok(Ok(()))
    }

    /// Counts a checked entry's moves for the entries after it in this batch (the store's
    /// count follows from the views in `finish`).
    pub(super) fn count_rights(&mut self, moves: RightsMoves) {
        for (key, units) in moves {
            let v = self.rights_staged.entry(key).or_default();
            *v = v.saturating_add(units);
        }
    }

    /// An ingested entry's moves of rights, checked and recorded as its rows. Moves of another
    /// device's rights are refused. A spend beyond what its author holds is held undone, not
    /// refused: the author's own node judged it on entries of its log that stood there, and one
    /// of them may not stand here yet, or any more (see `undo`); it stands once they do.
    pub(super) fn take_remote_rights(
        &mut self,
        t: &mut Tables<'_>,
        (author, seq): (DeviceId, u64),
        moves: RightsMoves,
    ) -> Result<(), Halt> {
        match self.check_rights(t, author, &moves)? {
            Ok(()) => {
                write_rows(t, author, seq, &moves)?;
                self.count_rights(moves);
                Ok(())
            }
            Err(Err(e)) => Err(Halt::Refuse(e.to_string())),
            Err(Ok(s)) => {
                write_rows(t, author, seq, &moves)?;
                let detail = RightsError::Exceeded {
                    sku: self.sku_of(t, &s.product),
                    spent: s.spent,
                    held: s.held,
                };
                tracing::warn!(author = %author.short(), seq, %detail, "entry spends rights its author does not hold here");
                Err(Halt::Undone(super::undo::SPENDS_UNHELD_RIGHTS.to_owned()))
            }
        }
    }

    /// This device's own write: its moves of rights are checked like anyone's. Short of rights,
    /// transfers given to it and not yet accepted are taken into the same entry first.
    pub(super) fn take_own_rights(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        mut moves: RightsMoves,
        now: u64,
    ) -> Result<(), WriteError> {
        let me = self.id.device_id;
        if moves.is_empty() {
            return Ok(());
        }
        if let Err(Ok(short)) = self.check_rights(t, me, &moves)? {
            let open = self.open_transfers(t, &short.product)?;
            let incoming: i64 = open.iter().map(|(_, q)| q).sum();
            if short.held.saturating_add(incoming) >= short.spent {
                add_moves(&mut moves, self.accept_open(t, ops, &short.product, now)?);
            }
        }
        match self.check_rights(t, me, &moves)? {
            Ok(()) => {
                self.count_own_rights(moves);
                Ok(())
            }
            Err(Err(e)) => Err(WriteError::Internal(e.to_string())),
            Err(Ok(s)) => Err(self.out_of_stock(t, s)?),
        }
    }

    /// Counts a checked own move, and keeps it for the rows of the entry being written
    /// (`sign_and_store`).
    fn count_own_rights(&mut self, moves: RightsMoves) {
        add_moves(&mut self.own_moves, moves.clone());
        self.count_rights(moves);
    }

    /// Accepts every transfer of `product`'s rights given to this device.
    pub(super) fn accept_open(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        product: &DocId,
        now: u64,
    ) -> Result<RightsMoves, WriteError> {
        let mut moves = RightsMoves::new();
        for (transfer, _) in self.open_transfers(t, product)? {
            add_moves(&mut moves, self.accept(t, ops, transfer, now)?);
        }
        Ok(moves)
    }

    /// Transfers of `product`'s rights given to this device and not accepted yet.
    fn open_transfers(
        &self,
        t: &Tables<'_>,
        product: &DocId,
    ) -> Result<Vec<(DocId, i64)>, WriteError> {
        let me = self.id.device_id;
        let (lo, hi) = ([0u8; 16], [0xffu8; 16]);
        let mut out = Vec::new();
        for item in t.transfers_open.range(
            (me.as_bytes(), product.as_bytes(), &lo)..=(me.as_bytes(), product.as_bytes(), &hi),
        )? {
            let (k, v) = item?;
            let id = DocId(*k.value().2);
            if !self.accepted_in_held_entry(t, &id)? {
                out.push((id, v.value()));
            }
        }
        Ok(out)
    }

    /// Whether an entry of this device held undone touches transfer `id` (it accepted it, and
    /// was then undone, say for rights an undone entry gave). Accepting again would count the
    /// transfer twice in this device's rows were that entry to stand again; the rights wait
    /// in transit until it does.
    fn accepted_in_held_entry(&self, t: &Tables<'_>, id: &DocId) -> Result<bool, WriteError> {
        let me = self.id.device_id;
        for k in t.doc_entries.get(id.as_bytes())? {
            let k = k?;
            let (author, seq) = k.value();
            if author == me.as_bytes() && t.undone.get((author, seq))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Marks a transfer to this device accepted: its rights are this device's from this entry.
    fn accept(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        now: u64,
    ) -> Result<RightsMoves, WriteError> {
        let current: StockTransfer = self.typed(t, &id, "stock transfer")?;
        if current.accepted_at_ms.is_some() || current.to != self.id.device_id {
            return Ok(RightsMoves::new());
        }
        let mut next = current.clone();
        next.accepted_at_ms = Some(now);
        self.update_doc(t, ops, id, &current, &next, now)?;
        let before = docmap::view_of(&current)?;
        let after = docmap::view_of(&next)?;
        Ok(rights::delta(
            DocType::StockTransfer,
            &id,
            Some(&before),
            Some(&after),
        ))
    }

    /// Gives `qty` of this device's rights to `product` to another member.
    pub(super) fn give_rights(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        product_id: DocId,
        req: GiveRights,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let product: Product = self.typed(t, &product_id, "product")?;
        if product.stock_policy != StockPolicy::Strict {
            return Err(WriteError::BadRequest(format!(
                "product {} keeps its stock by tracking, not by rights; only a strict product's rights pass between devices",
                product.sku
            )));
        }
        if !self.membership.is_active(&req.to) {
            return Err(WriteError::BadRequest(format!(
                "device {} is not an active member of this mesh; rights go only to members",
                req.to
            )));
        }
        let transfer = StockTransfer {
            product_id,
            sku: product.sku,
            from: self.id.device_id,
            to: req.to,
            qty: req.qty,
            at_ms: now,
            accepted_at_ms: None,
            reclaim: false,
        };
        transfer.validate(&self.settings)?;
        let id = new_doc_id(now);
        let view = docmap::view_of(&transfer)?;
        let moves = rights::delta(DocType::StockTransfer, &id, None, Some(&view));
        match self.check_rights(t, self.id.device_id, &moves)? {
            Ok(()) => {}
            Err(Err(e)) => return Err(WriteError::Internal(e.to_string())),
            Err(Ok(s)) => return Err(self.out_of_stock(t, s)?),
        }
        self.create_doc(t, ops, id, &transfer, now)?;
        self.count_own_rights(moves);
        Ok(id)
    }

    /// The refusal a till shows: how many it holds, and where the rest are.
    fn out_of_stock(&mut self, t: &Tables<'_>, s: Shortfall) -> Result<WriteError, WriteError> {
        let sku = self.sku_of(t, &s.product);
        let me = self.id.device_id;
        let mut elsewhere = Vec::new();
        let (lo, hi) = ([0u8; 32], [0xffu8; 32]);
        for item in t
            .rights
            .range((s.product.as_bytes(), &lo)..=(s.product.as_bytes(), &hi))?
        {
            let (k, _) = item?;
            let device = DeviceId(*k.value().1);
            let held = self.rights_of(t, &s.product, &device)?;
            if device != me && held > 0 {
                elsewhere.push((crate::repo::member_name(&self.membership, &device), held));
            }
        }
        Ok(WriteError::out_of_stock(
            s.product, &sku, s.held, s.spent, &elsewhere,
        ))
    }

    fn sku_of(&mut self, t: &Tables<'_>, product: &DocId) -> String {
        self.typed::<Product>(t, product, "product")
            .map(|p| p.sku)
            .unwrap_or_else(|_| product.to_string())
    }

    /// Keeps `transfers_open` in step with a transfer's view.
    pub(super) fn note_open_transfer(
        &self,
        t: &mut Tables<'_>,
        dt: DocType,
        id: &DocId,
        old: Option<&Json>,
        new: Option<&Json>,
    ) -> Result<(), WriteError> {
        if dt != DocType::StockTransfer {
            return Ok(());
        }
        let open = |v: Option<&Json>| {
            let t: StockTransfer = docmap::from_view(v?).ok()?;
            t.accepted_at_ms.is_none().then_some(t)
        };
        if let Some(o) = open(old) {
            t.transfers_open
                .remove((o.to.as_bytes(), o.product_id.as_bytes(), id.as_bytes()))?;
        }
        if let Some(n) = open(new) {
            t.transfers_open.insert(
                (n.to.as_bytes(), n.product_id.as_bytes(), id.as_bytes()),
                n.qty,
            )?;
        }
        Ok(())
    }

    /// Applies a batch's moves of rights to the store's count.
    pub(super) fn store_rights(
        &self,
        t: &mut Tables<'_>,
        moves: BTreeMap<(DocId, DeviceId), i64>,
    ) -> Result<(), WriteError> {
        for ((product, device), units) in moves.into_iter().filter(|(_, u)| *u != 0) {
            let key = (product.as_bytes(), device.as_bytes());
            let now = t
                .rights
                .get(key)?
                .map(|v| v.value())
                .unwrap_or(0)
                .saturating_add(units);
            if now == 0 {
                t.rights.remove(key)?;
            } else {
                t.rights.insert(key, now)?;
            }
        }
        Ok(())
    }
}

/// Records how entry `seq` of `author` moves its author's rights (see `RIGHTS_MOVES`). Moves
/// of other devices' rights are not its author's ledger: a reclaim's, which its own rules judge.
pub(super) fn write_rows(
    t: &mut Tables<'_>,
    author: DeviceId,
    seq: u64,
    moves: &RightsMoves,
) -> Result<(), WriteError> {
    for ((product, device), units) in moves {
        if *device == author && *units != 0 {
            t.rights_moves
                .insert((author.as_bytes(), seq, product.as_bytes()), *units)?;
        }
    }
    Ok(())
}

/// Every row of `author`'s log: seq -> its moves.
pub(super) fn read_ledger(
    t: &Tables<'_>,
    author: &DeviceId,
) -> Result<BTreeMap<u64, Vec<(DocId, i64)>>, WriteError> {
    let (lo, hi) = ([0u8; 16], [0xffu8; 16]);
    let mut out: BTreeMap<u64, Vec<(DocId, i64)>> = BTreeMap::new();
    for item in t
        .rights_moves
        .range((author.as_bytes(), 0, &lo)..=(author.as_bytes(), u64::MAX, &hi))?
    {
        let (k, v) = item?;
        let (_, seq, product) = k.value();
        out.entry(seq)
            .or_default()
            .push((DocId(*product), v.value()));
    }
    Ok(out)
}

impl Writer {
    /// A reclaim of a revoked device's rights (see `tillmesh_protocol::rights`), from this
    /// device or another: by an admin or the owner, under its one document id, to the device
    /// every node names alike, for exactly what the revoked device's log leaves it, judged
    /// once that log is held up to its cutoff. `existing` is the document as held before this
    /// entry: a second admin's reclaim of the same rights must say the same, and moves nothing
    /// more. Returns the moves to count.
    pub(super) fn check_reclaim(
        &mut self,
        t: &Tables<'_>,
        id: DocId,
        role: Role,
        view: &Json,
        existing: Option<&Json>,
    ) -> Result<RightsMoves, Halt> {
        let r: StockTransfer =
            docmap::from_view(view).map_err(|e| Halt::Refuse(format!("reclaim {id}: {e}")))?;
        if !role.manages_members() {
            return Err(Halt::Refuse(format!(
                "only an admin or the owner reclaims a revoked device's rights; this is a {role}"
            )));
        }
        if id != rights::reclaim_id(&self.id.mesh_id, &r.from, &r.product_id) || !r.reclaim {
            return Err(Halt::Refuse(format!(
                "a reclaim of {}'s rights to {} must be its one document",
                r.from.short(),
                r.sku
            )));
        }
        let Some(cutoff) = self.membership.get(&r.from).and_then(|m| m.last_seq) else {
            // Its revocation is held but does not count (its revoker was revoked before it):
            // the reclaim stands nowhere, as on a node that applied it before that came
            // (`undo::Region::judge`). Not held at all, it may yet come.
            let revoked = self
                .member_ops
                .iter()
                .any(|o| matches!(o.op, MemberOp::Revoke { device, .. } if device == r.from));
            if revoked {
                return Err(Halt::Undone(super::undo::RECLAIMS_FROM_MEMBER.to_owned()));
            }
            return Err(Halt::defer(format!(
                "it reclaims the rights of device {}, whose revocation is not held here yet",
                r.from.short()
            )));
        };
        let held_to = t
            .heads
            .get(r.from.as_bytes())?
            .map(|v| v.value().0)
            .unwrap_or(0);
        if held_to < cutoff {
            return Err(Halt::defer(format!(
                "it reclaims the rights of device {} as of its entry {cutoff}; only {held_to} of its entries are held",
                r.from.short()
            )));
        }
        let Ok(product) = self.typed::<Product>(t, &r.product_id, "product") else {
            return Err(Halt::defer(format!(
                "it reclaims rights to product {}, not held here yet",
                r.product_id
            )));
        };
        let to = self.reclaim_target(&product, &r.from);
        // In transit, like any transfer: the receiver takes the rights into its own log by
        // accepting, so its later spends build on the reclaim and wait wherever it waits.
        if r.to != to || r.accepted_at_ms.is_some() {
            return Err(Halt::Refuse(format!(
                "a reclaim of {} rights goes to device {}, not accepted: that device takes them in by accepting",
                r.sku,
                to.short()
            )));
        }
        let fields = |t: &StockTransfer| (t.product_id, t.from, t.to, t.qty);
        if let Some(held) = existing.and_then(|e| docmap::from_view::<StockTransfer>(e).ok()) {
            return if fields(&held) == fields(&r) {
                Ok(RightsMoves::new())
            } else {
                Err(Halt::Refuse(format!(
                    "the rights of device {} to {} were reclaimed as {} units, not {}",
                    r.from.short(),
                    r.sku,
                    held.qty,
                    r.qty
                )))
            };
        }
        let left = self.rights_of(t, &r.product_id, &r.from)?;
        if r.qty != left || left <= 0 {
            return Err(Halt::Refuse(format!(
                "it reclaims {} units of {} but device {} held {left} at its cutoff",
                r.qty,
                r.sku,
                r.from.short()
            )));
        }
        Ok(rights::delta(DocType::StockTransfer, &id, None, Some(view)))
    }

    /// Who gets reclaimed rights: the product's maker, or the owner when the maker is the
    /// device revoked.
    fn reclaim_target(&self, product: &Product, revoked: &DeviceId) -> DeviceId {
        match product.created_by {
            Some(maker) if maker != *revoked => maker,
            _ => self.membership.owner(),
        }
    }

    /// This device (an admin or the owner) reclaims the rights a revoked device holds.
    pub(super) fn reclaim_rights(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        product_id: DocId,
        from: DeviceId,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let product: Product = self.typed(t, &product_id, "product")?;
        let role = self
            .membership
            .role_at(self.id.device_id, self.head.0 + 1)
            .map_err(|e| WriteError::Forbidden(e.to_string()))?;
        let id = rights::reclaim_id(&self.id.mesh_id, &from, &product_id);
        if self.cache.get(t, &id)?.is_some() {
            return Err(WriteError::Conflict(format!(
                "the rights of device {} to {} were reclaimed already",
                from.short(),
                product.sku
            )));
        }
        let reclaim = StockTransfer {
            product_id,
            sku: product.sku.clone(),
            from,
            to: self.reclaim_target(&product, &from),
            qty: self.rights_of(t, &product_id, &from)?,
            at_ms: now,
            accepted_at_ms: None,
            reclaim: true,
        };
        let view = docmap::view_of(&reclaim)?;
        let moves = match self.check_reclaim(t, id, role, &view, None) {
            Ok(m) => m,
            Err(Halt::Outcome(IngestOutcome::Deferred { reason })) => {
                return Err(WriteError::Conflict(format!(
                    "not yet: {reason}; let this device sync, then try again"
                )));
            }
            Err(Halt::Refuse(reason)) if !role.manages_members() => {
                return Err(WriteError::Forbidden(reason));
            }
            Err(Halt::Refuse(reason)) => return Err(WriteError::Conflict(reason)),
            Err(Halt::Store(e)) => return Err(e),
            Err(Halt::Undone(_)) => {
                return Err(WriteError::Conflict(format!(
                    "device {} is not revoked: its revocation does not count (whoever revoked it was revoked before it), so its rights to {} are its own",
                    from.short(),
                    product.sku
                )));
            }
            Err(_) => return Err(WriteError::Internal("a reclaim check halted".into())),
        };
        self.create_doc(t, ops, id, &reclaim, now)?;
        self.count_rights(moves);
        Ok(id)
    }
}
