//! This device's own commands: checked whole before they touch a document, then signed as one
//! entry of its log.

use super::*;

/// The documents whose concurrent fields a person settles by a pick.
pub const RESOLVABLE: [DocType; 3] = [DocType::Customer, DocType::Vendor, DocType::Product];

impl Writer {
    pub(super) fn stage_command(
        &mut self,
        t: &mut Tables<'_>,
        cmd: Serial,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let now = now_ms();
        let mut ops = Ops::default();
        // What a command refused after it counted its moves left behind is not this one's.
        self.own_moves.clear();
        if let Serial::Member(m) = cmd {
            return self.stage_member(t, m, now, touched);
        }
        if let Serial::SetLedger { doc_id, ledger } = cmd {
            return self.set_ledger(t, doc_id, ledger, now, touched);
        }
        if let Serial::ResolveField {
            doc_id,
            path,
            value,
        } = cmd
        {
            return self.resolve_field(t, doc_id, &path, &value, now, touched);
        }
        let writes: &[DocType] = match &cmd {
            Serial::InitSettings(_) | Serial::SetTaxRate { .. } | Serial::SetTimeZone(_) => {
                &[DocType::Settings]
            }
            Serial::CreateProduct(_) => &[DocType::Product],
            Serial::Void { .. } => &[DocType::Sale],
            Serial::Refund { .. } => &[DocType::Refund],
            Serial::PatchParty {
                doc_type: DocType::Vendor,
                ..
            } => &[DocType::Vendor],
            Serial::PatchParty { .. } => &[DocType::Customer],
            Serial::PatchProduct { .. } => &[DocType::Product],
            Serial::PatchExpense { .. } => &[DocType::Expense],
            Serial::GiveRights(_) | Serial::ReclaimRights { .. } | Serial::AcceptRights { .. } => {
                &[DocType::StockTransfer]
            }
            Serial::Member(_) | Serial::SetLedger { .. } | Serial::ResolveField { .. } => {
                unreachable!("handled above")
            }
        };
        self.check_own_write(writes)?;
        let primary = match cmd {
            Serial::Member(_) | Serial::SetLedger { .. } | Serial::ResolveField { .. } => {
                unreachable!("handled above")
            }
            Serial::InitSettings(s) => {
                s.validate(&s)?;
                let id = self.settings_id;
                if self.cache.get(t, &id)?.is_some() {
                    return Err(WriteError::Conflict(
                        "the mesh settings already exist".into(),
                    ));
                }
                self.create_doc(t, &mut ops, id, &s, now)?;
                self.settings = s;
                self.settings_received = true;
                id
            }
            Serial::SetTaxRate { code, rate } => {
                let id = self.settings_id;
                let current: Settings = self.typed(t, &id, "mesh settings")?;
                let mut next = current.clone();
                next.tax_rates.insert(
                    code,
                    TaxRate {
                        name: rate.name,
                        rate_ppm: rate.rate_ppm,
                    },
                );
                next.validate(&next)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                self.settings = next;
                self.settings_received = true;
                id
            }
            Serial::SetTimeZone(zone) => {
                tillmesh_protocol::schema::check_time_zone(&zone)?;
                // The protocol checks the shape; whether the zone exists needs a database.
                if jiff::tz::TimeZone::get(&zone).is_err() {
                    return Err(WriteError::Invalid(
                        tillmesh_protocol::schema::SchemaError::Invalid {
                            field: "time_zone".into(),
                            reason: format!(
                                "{zone:?} is not a time zone this node knows; write an IANA name such as Europe/London or America/Los_Angeles"
                            ),
                        },
                    ));
                }
                let id = self.settings_id;
                let current: Settings = self.typed(t, &id, "mesh settings")?;
                let mut next = current.clone();
                next.time_zone = Some(zone);
                next.validate(&next)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                self.settings = next;
                self.settings_received = true;
                id
            }
            Serial::CreateProduct(p) => self.create_product(t, &mut ops, p, now)?,
            Serial::AcceptRights { product_id } => {
                let moves = self.accept_open(t, &mut ops, &product_id, now)?;
                self.take_own_rights(t, &mut ops, moves, now)?;
                product_id
            }
            Serial::ReclaimRights { product_id, from } => {
                self.reclaim_rights(t, &mut ops, product_id, from, now)?
            }
            Serial::GiveRights(g) => {
                let product_id = match (g.product_id, g.sku.as_deref()) {
                    (Some(id), _) => id,
                    (None, Some(sku)) => *self.skus.get(sku.trim()).ok_or_else(|| {
                        WriteError::UnknownProduct(format!("no product has SKU '{sku}'"))
                    })?,
                    (None, None) => {
                        return Err(WriteError::BadRequest("give a product_id or a sku".into()));
                    }
                };
                let req = GiveRights {
                    product_id: Some(product_id),
                    ..g
                };
                self.give_rights(t, &mut ops, product_id, req, now)?
            }
            Serial::Void { sale_id, request } => self.void(t, &mut ops, sale_id, request, now)?,
            Serial::Refund { sale_id, request } => {
                self.refund(t, &mut ops, sale_id, request, now)?
            }
            Serial::PatchProduct { id, patch } => {
                let current: Product = self.typed(t, &id, "product")?;
                let mut next = current.clone();
                if let Some(v) = patch.name {
                    next.name = v;
                }
                if let Some(v) = patch.price {
                    next.price = v;
                }
                if let Some(v) = patch.tax_code {
                    next.tax_code = v;
                }
                if let Some(v) = patch.active {
                    next.active = v;
                }
                if let Some(v) = patch.low_stock_at {
                    next.low_stock_at = v;
                }
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchExpense { id, patch } => {
                let current: Expense = self.typed(t, &id, "expense")?;
                let mut next = current.clone();
                if let Some(memo) = patch.memo {
                    next.memo = memo.filter(|m| !m.trim().is_empty());
                }
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchParty {
                doc_type: DocType::Vendor,
                id,
                patch,
            } => {
                let current: Vendor = self.typed(t, &id, "vendor")?;
                let next = Vendor(patched(current.0.clone(), patch));
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchParty { id, patch, .. } => {
                let current: Customer = self.typed(t, &id, "customer")?;
                let next = Customer(patched(current.0.clone(), patch));
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
        };
        if ops.docs.is_empty() {
            // Nothing changed (a patch that set fields to what they were): no entry to write.
            return Ok(Staged {
                primary,
                docs: Vec::new(),
                author: self.id.device_id,
                seq: self.head.0,
                own: None,
            });
        }
        let staged = self.seal(t, ops, primary, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }
}

/// A customer's or vendor's fields with a patch applied: only the fields it names change.
fn patched(mut p: Party, patch: CustomerPatch) -> Party {
    if let Some(v) = patch.display_name {
        p.display_name = v;
    }
    for (field, value) in [
        (&mut p.given_name, patch.given_name),
        (&mut p.family_name, patch.family_name),
        (&mut p.company_name, patch.company_name),
        (&mut p.email, patch.email),
        (&mut p.phone, patch.phone),
        (&mut p.notes, patch.notes),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(a) = patch.address {
        p.address = a;
    }
    if let Some(a) = patch.active {
        p.active = a;
    }
    p
}

impl Writer {
    /// Orders a document prepared outside the writer (see `prepare`) into this device's log.
    pub(super) fn stage_prepared(
        &mut self,
        t: &mut Tables<'_>,
        p: Prepared,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let now = now_ms();
        let mut ops = Ops::default();
        self.own_moves.clear();
        let types: Vec<DocType> = p.docs.iter().map(|d| d.doc_type).collect();
        self.check_own_write(&types)?;
        let mut moves = rights::RightsMoves::new();
        for d in &p.docs {
            rights::add_moves(
                &mut moves,
                tillmesh_protocol::rights::delta(d.doc_type, &d.id, None, Some(&d.view)),
            );
        }
        // Before the documents go in: a refusal leaves nothing behind.
        self.take_own_rights(t, &mut ops, moves, now)?;
        for d in p.docs {
            self.cache
                .insert_new(t, d.id, d.doc_type, d.doc, &d.change, Some(d.view))?;
            ops.push(d.id, d.doc_type, d.change);
        }
        if let Some(n) = p.receipt_seq.filter(|n| *n > self.receipt_seq) {
            self.receipt_seq = n;
            t.meta.insert(meta_key::RECEIPT_SEQ, &n.to_be_bytes()[..])?;
        }
        let staged = self.seal(t, ops, p.primary, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    pub(super) fn create_product(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        p: NewProduct,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let product = Product {
            sku: p.sku.trim().to_owned(),
            name: p.name,
            price: p.price,
            tax_code: p.tax_code,
            active: p.active,
            opening_stock: p.stock,
            stock_policy: p.stock_policy,
            created_by: (p.stock_policy == StockPolicy::Strict).then_some(self.id.device_id),
            low_stock_at: p.low_stock_at,
            ledger: None,
        };
        product.validate(&self.settings)?;
        if let Some(existing) = self.skus.get(&product.sku) {
            return Err(WriteError::Conflict(format!(
                "a product with SKU '{}' already exists ({existing})",
                product.sku
            )));
        }
        let id = new_doc_id(now);
        self.create_doc(t, ops, id, &product, now)?;
        // Its maker holds the rights to a strict product's opening stock.
        let view = docmap::view_of(&product)?;
        let moves = tillmesh_protocol::rights::delta(DocType::Product, &id, None, Some(&view));
        self.take_own_rights(t, ops, moves, now)?;
        // Claimed now so a second product with this SKU in the same batch is refused; the
        // index row is written with the view (see `index_sku`).
        self.skus.insert(product.sku, id);
        Ok(id)
    }

    pub(super) fn void(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        req: VoidSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let sale: Sale = self.typed(t, &id, "sale")?;
        match sale.status {
            SaleStatus::Voided => {
                return Err(WriteError::Conflict(format!(
                    "sale {} is already voided",
                    sale.receipt_number
                )));
            }
            SaleStatus::Refunded => {
                return Err(WriteError::Conflict(format!(
                    "sale {} is refunded; it cannot also be voided",
                    sale.receipt_number
                )));
            }
            _ if !sale.refunds.is_empty() => {
                return Err(WriteError::Conflict(format!(
                    "sale {} has refunds; refund the rest instead of voiding it",
                    sale.receipt_number
                )));
            }
            _ => {}
        }
        let mut next = sale.clone();
        next.status = SaleStatus::Voided;
        next.void = Some(VoidInfo {
            at_ms: now,
            by: self.id.device_id,
            reason: req.reason,
        });
        sale.check_update(&next)?;
        next.validate(&self.settings)?;
        // A voided sale moves no stock: its goods are back in stock once this is committed.
        self.update_doc(t, ops, id, &sale, &next, now)?;
        Ok(id)
    }

    pub(super) fn refund(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        sale_id: DocId,
        req: RefundSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let sale: Sale = self.typed(t, &sale_id, "sale")?;
        if matches!(sale.status, SaleStatus::Voided | SaleStatus::Refunded) {
            let status = if sale.status == SaleStatus::Voided {
                "voided"
            } else {
                "already fully refunded"
            };
            return Err(WriteError::Conflict(format!(
                "sale {} is {status}; there is nothing to refund",
                sale.receipt_number
            )));
        }
        let mut wanted = Vec::with_capacity(req.lines.len());
        for (k, l) in req.lines.iter().enumerate() {
            let line = match (l.line, l.product_id, l.sku.as_deref()) {
                (Some(i), None, None) => i,
                (None, pid, sku) if pid.is_some() || sku.is_some() => sale
                    .lines
                    .iter()
                    .enumerate()
                    .position(|(i, s)| {
                        pid.is_none_or(|p| p == s.product_id)
                            && sku.is_none_or(|k| k == s.sku)
                            && s.qty > sale.refunded_qty(i)
                    })
                    .ok_or_else(|| {
                        WriteError::BadRequest(format!(
                            "lines[{k}]: sale {} has no unrefunded line for that product",
                            sale.receipt_number
                        ))
                    })?,
                _ => {
                    return Err(WriteError::BadRequest(format!(
                        "lines[{k}]: give the sale's line number, or a product_id or sku"
                    )));
                }
            };
            wanted.push(RefundLineInput { line, qty: l.qty });
        }
        let method = req
            .method
            .or_else(|| sale.payments.first().map(|p| p.method.clone()))
            .unwrap_or_else(|| "cash".into());
        let refund_id = new_doc_id(now);
        let (refund, record) = Refund::against(
            &sale,
            sale_id,
            refund_id,
            &wanted,
            method,
            req.reason,
            req.restock,
            now,
            self.id.device_id,
        )?;
        refund.validate(&self.settings)?;
        let mut next = sale.clone();
        next.refunds.push(record);
        if next
            .lines
            .iter()
            .enumerate()
            .all(|(i, l)| next.refunded_qty(i) == l.qty)
        {
            next.status = SaleStatus::Refunded;
        }
        sale.check_update(&next)?;
        next.validate(&self.settings)?;
        self.create_doc(t, ops, refund_id, &refund, now)?;
        self.update_doc(t, ops, sale_id, &sale, &next, now)?;
        // Restocked units of a strict product come back to this till's rights.
        let view = docmap::view_of(&refund)?;
        let moves =
            tillmesh_protocol::rights::delta(DocType::Refund, &refund_id, None, Some(&view));
        self.take_own_rights(t, ops, moves, now)?;
        Ok(refund_id)
    }

    pub(super) fn typed<T: Document>(
        &mut self,
        t: &Tables<'_>,
        id: &DocId,
        what: &'static str,
    ) -> Result<T, WriteError> {
        let not_found = || WriteError::NotFound {
            what,
            id: id.to_string(),
        };
        let c = self.cache.get(t, id)?.ok_or_else(not_found)?;
        if c.record.doc_type != T::TYPE.code() {
            return Err(not_found());
        }
        docmap::from_view::<T>(c.view())
            .map_err(|e| WriteError::Conflict(format!("{what} {id} cannot be used: {e}")))
    }

    pub(super) fn create_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        value: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let (doc, change, view) = docmap::create(self.cache.actor(), value, (now / 1000) as i64)?;
        self.cache
            .insert_new(t, id, T::TYPE, doc, &change, Some(view))?;
        ops.push(id, T::TYPE, change);
        Ok(())
    }

    pub(super) fn update_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        from: &T,
        to: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let actor = self.write_actor(t, &id)?;
        let c = self
            .cache
            .get(t, &id)?
            .ok_or_else(|| WriteError::Internal(format!("{id} vanished during a write")))?;
        c.doc.set_actor(actor);
        if let Some(change) = docmap::update(&mut c.doc, from, to, (now / 1000) as i64)? {
            c.set_view(docmap::view_of(to)?);
            self.cache.record_change(t, &id, &change)?;
            ops.push(id, T::TYPE, change);
        }
        Ok(())
    }

    /// Signs the entry for `ops` as this device's next and stores it.
    /// Writes the `ledger` part of a sale, product or customer: what QuickBooks holds.
    pub(super) fn set_ledger(
        &mut self,
        t: &mut Tables<'_>,
        id: DocId,
        ledger: tillmesh_protocol::schema::Ledger,
        now: u64,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let doc_type = self
            .cache
            .get(t, &id)?
            .and_then(|c| DocType::from_code(c.record.doc_type))
            .ok_or_else(|| WriteError::NotFound {
                what: "document",
                id: id.to_string(),
            })?;
        let me = self.id.device_id;
        self.membership
            .check_write(me, self.head.0 + 1, doc_type, true)
            .map_err(|e| match e {
                AccessError::NotMember(_) => WriteError::NotAdmitted,
                e => WriteError::Forbidden(e.to_string()),
            })?;
        let mut ops = Ops::default();
        macro_rules! with_ledger {
            ($t:ty, $what:literal, |$v:ident| $field:expr) => {{
                let current: $t = self.typed(t, &id, $what)?;
                let mut next = current.clone();
                {
                    let $v = &mut next;
                    *$field = Some(ledger);
                }
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
            }};
        }
        match doc_type {
            DocType::Sale => with_ledger!(Sale, "sale", |v| &mut v.ledger),
            DocType::Product => with_ledger!(Product, "product", |v| &mut v.ledger),
            DocType::Customer => with_ledger!(Customer, "customer", |v| &mut v.0.ledger),
            DocType::Vendor => with_ledger!(Vendor, "vendor", |v| &mut v.0.ledger),
            DocType::Refund => with_ledger!(Refund, "refund", |v| &mut v.ledger),
            DocType::Invoice => with_ledger!(Invoice, "invoice", |v| &mut v.ledger),
            DocType::Payment => with_ledger!(Payment, "payment", |v| &mut v.ledger),
            DocType::Expense => with_ledger!(Expense, "expense", |v| &mut v.ledger),
            other => {
                return Err(WriteError::BadRequest(format!(
                    "a {other} has no ledger this node writes"
                )));
            }
        }
        if ops.docs.is_empty() {
            return Ok(Staged {
                primary: id,
                docs: Vec::new(),
                author: me,
                seq: self.head.0,
                own: None,
            });
        }
        let staged = self.seal(t, ops, id, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    /// Settles a field two devices set concurrently (see `tillmesh_protocol::conflicts`).
    /// Only the descriptive documents people edit: money and stock are settled by their own
    /// rules (QuickBooks, voids and refunds, rights), never by a pick.
    pub(super) fn resolve_field(
        &mut self,
        t: &mut Tables<'_>,
        id: DocId,
        path: &[String],
        value: &Json,
        now: u64,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let not_found = || WriteError::NotFound {
            what: "document",
            id: id.to_string(),
        };
        let doc_type = self
            .cache
            .get(t, &id)?
            .and_then(|c| DocType::from_code(c.record.doc_type))
            .ok_or_else(not_found)?;
        if !RESOLVABLE.contains(&doc_type) {
            return Err(WriteError::BadRequest(format!(
                "a {doc_type}'s fields are not settled by a pick; only a customer's, a vendor's or a product's are"
            )));
        }
        if path.is_empty() || path.iter().any(|k| k.is_empty()) {
            return Err(WriteError::BadRequest(
                "path names the field: [\"phone\"], or [\"address\", \"city\"]".into(),
            ));
        }
        let me = self.id.device_id;
        let role = self
            .membership
            .role_at(me, self.head.0 + 1)
            .map_err(|_| WriteError::NotAdmitted)?;
        if !matches!(role, Role::Owner | Role::Admin | Role::Manager) {
            return Err(WriteError::Forbidden(format!(
                "settling a conflict is for a manager, an admin or the owner; this device is a {role}"
            )));
        }
        self.check_own_write(&[doc_type])?;
        if path
            .first()
            .is_some_and(|k| k == "ledger" || k == "type" || k == "schema")
        {
            return Err(WriteError::BadRequest(format!(
                "{} is not settled by a pick: QuickBooks' figures win, and the type and schema are fixed",
                path.join(".")
            )));
        }
        let actor = self.write_actor(t, &id)?;
        let c = self.cache.get(t, &id)?.ok_or_else(not_found)?;
        c.doc.set_actor(actor);
        let change =
            tillmesh_protocol::conflicts::resolve(&mut c.doc, path, value, (now / 1000) as i64)
                .map_err(|e| match e {
                    tillmesh_protocol::conflicts::ResolveError::Doc(d) => WriteError::from(d),
                    other => WriteError::Conflict(other.to_string()),
                })?;
        c.forget_view();
        self.cache.record_change(t, &id, &change)?;
        let mut ops = Ops::default();
        ops.push(id, doc_type, change);
        let staged = self.seal(t, ops, id, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    /// Refuses a local write this device's role does not allow, before anything is touched,
    /// so every write this device signs is one its peers accept.
    pub(super) fn check_own_write(&self, doc_types: &[DocType]) -> Result<(), WriteError> {
        let me = self.id.device_id;
        for doc_type in doc_types {
            match self
                .membership
                .check_write(me, self.head.0 + 1, *doc_type, false)
            {
                Ok(()) => {}
                Err(AccessError::NotMember(_)) => return Err(WriteError::NotAdmitted),
                Err(e) => return Err(WriteError::Forbidden(e.to_string())),
            }
        }
        Ok(())
    }

    /// Signs a membership operation, completed with what this node holds of its target.
    pub(super) fn stage_member(
        &mut self,
        t: &mut Tables<'_>,
        cmd: MemberCommand,
        now: u64,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let held = |t: &Tables<'_>, device: &DeviceId| -> Result<u64, WriteError> {
            Ok(t.heads
                .get(device.as_bytes())?
                .map(|v| v.value().0)
                .unwrap_or(0))
        };
        let op = match cmd {
            MemberCommand::Add { device, role, name } => MemberOp::Add { device, role, name },
            MemberCommand::ChangeRole { device, role } => MemberOp::ChangeRole {
                device,
                role,
                from_seq: held(t, &device)? + 1,
            },
            MemberCommand::Revoke { device } => MemberOp::Revoke {
                device,
                last_seq: held(t, &device)?,
            },
        };
        let (me, seq) = (self.id.device_id, self.head.0 + 1);
        self.membership
            .check_op(me, seq, &op)
            .map_err(|e| WriteError::Forbidden(e.to_string()))?;
        let staged =
            self.sign_and_store(t, Payload::Membership(Box::new(op)), self.settings_id, now)?;
        self.record_member_op(t, &staged.own.clone().expect("own entry"), touched)?;
        Ok(staged)
    }

    /// Indexes a stored membership operation and recomputes the membership; if that changed
    /// which entries stand, rebuilds the documents they touched (see `undo`).
    pub(super) fn record_member_op(
        &mut self,
        t: &mut Tables<'_>,
        e: &SignedEntry,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(), WriteError> {
        let Some(op) = e.member_op() else {
            return Ok(());
        };
        let (author, seq) = (e.entry.author, e.entry.seq);
        t.member_ops
            .insert((author.as_bytes(), seq), op.to_bytes().as_slice())?;
        self.member_ops.push(OpRecord {
            author,
            seq,
            op: op.clone(),
        });
        let old = self.membership.clone();
        self.recompute_membership();
        if *old != *self.membership {
            self.restand(t, &old, touched)?;
        }
        Ok(())
    }

    pub(super) fn seal(
        &mut self,
        t: &mut Tables<'_>,
        ops: Ops,
        primary: DocId,
        now: u64,
    ) -> Result<Staged, WriteError> {
        self.sign_and_store(t, Payload::Changes(ops.docs), primary, now)
    }

    pub(super) fn sign_and_store(
        &mut self,
        t: &mut Tables<'_>,
        payload: Payload,
        primary: DocId,
        now: u64,
    ) -> Result<Staged, WriteError> {
        let entry = Entry {
            author: self.id.device_id,
            seq: self.head.0 + 1,
            prev: self.head.1,
            timestamp_ms: now,
            payload,
        };
        entry
            .check_limits()
            .map_err(|e| WriteError::Internal(format!("entry too large: {e}")))?;
        let signed = entry.sign(&self.id.mesh_id, &self.id.key);
        let docs: Vec<(DocId, DocType)> = signed
            .docs()
            .iter()
            .map(|d| (d.doc_id, d.doc_type))
            .collect();
        store_entry(t, &signed)?;
        let moves = std::mem::take(&mut self.own_moves);
        rights::write_rows(t, signed.entry.author, signed.entry.seq, &moves)?;
        self.wal_batch.push(signed.encoded().to_vec());
        self.head = (signed.entry.seq, signed.hash());
        Ok(Staged {
            primary,
            docs,
            author: signed.entry.author,
            seq: signed.entry.seq,
            own: Some(Arc::new(signed)),
        })
    }
}
