//! The writer thread: stages commands and ingested entries into one redb transaction per batch,
//! commits, then answers every caller of the batch.
//!
//! A command is checked completely before it touches a document, so a refused command changes
//! nothing; anything that fails after that point fails the whole batch, and the writer reloads
//! its in-memory state from the store (see `docs` for why dropping the cache is always safe).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::{AutoCommit, Change};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::Value as Json;
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{
    Customer, Document, Expense, Invoice, LineInput, Party, Payment, Product, Refund,
    RefundLineInput, RingUp, Sale, SaleStatus, Settings, StockAdjustment, StockLine, TaxRate,
    Tender, Vendor, VoidInfo,
};
use tillmesh_protocol::{DocChanges, DocId, DocType, Entry, EntryHash, Payload, SignedEntry};
use tokio::sync::{broadcast, mpsc};

use super::docs::DocCache;
use super::requests::*;
use super::{Command, DocEvent, IngestOutcome, Job, Origin, WriteError, Written, random_bytes};
use crate::store::Identity;
use crate::store::tables::{HEADS, META, SKUS, Tables, VIEWS, meta_key};

/// Jobs taken into one transaction at most; more wait for the next commit.
const BATCH_JOBS_MAX: usize = 512;

pub(crate) struct Writer {
    db: Arc<Database>,
    id: Identity,
    settings_id: DocId,
    // Everything below is a cache of the store, reloaded after any failed batch.
    head: (u64, EntryHash),
    receipt_seq: u64,
    rejected_seq: u64,
    settings: Settings,
    skus: HashMap<String, DocId>,
    cache: DocCache,
}

enum Reply {
    Command(
        tokio::sync::oneshot::Sender<Result<Written, WriteError>>,
        Result<Staged, WriteError>,
    ),
    Ingest(
        tokio::sync::oneshot::Sender<Result<IngestOutcome, WriteError>>,
        Result<(IngestOutcome, Option<Staged>), WriteError>,
    ),
}

/// What a staged entry wrote, for the answer and the event stream once committed.
struct Staged {
    primary: DocId,
    docs: Vec<(DocId, DocType)>,
    author: tillmesh_protocol::DeviceId,
    seq: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_fatal(e: &WriteError) -> bool {
    matches!(
        e,
        WriteError::Storage(_) | WriteError::DiskFull | WriteError::Internal(_)
    )
}

impl Writer {
    pub(crate) fn load(db: Arc<Database>, id: Identity) -> Result<Writer, WriteError> {
        let settings_id = DocId::derived(&id.mesh_id, "settings");
        let actor = actor_for(&id.device_id);
        let mut w = Writer {
            db,
            id,
            settings_id,
            head: (0, EntryHash::ZERO),
            receipt_seq: 0,
            rejected_seq: 0,
            settings: Settings::new("", tillmesh_protocol::Currency::USD),
            skus: HashMap::new(),
            cache: DocCache::new(actor),
        };
        w.reload()?;
        Ok(w)
    }

    /// Re-reads every cached counter from the store.
    fn reload(&mut self) -> Result<(), WriteError> {
        self.cache.clear();
        let tx = self.db.begin_read()?;
        let heads = tx.open_table(HEADS)?;
        self.head = heads
            .get(self.id.device_id.as_bytes())?
            .map(|v| {
                let (s, h) = v.value();
                (s, EntryHash(h))
            })
            .unwrap_or((0, EntryHash::ZERO));
        let meta = tx.open_table(META)?;
        let get = |k: &str| -> Result<u64, WriteError> {
            Ok(meta
                .get(k)?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0))
        };
        self.receipt_seq = get(meta_key::RECEIPT_SEQ)?;
        self.rejected_seq = get(meta_key::REJECTED_SEQ)?;
        let views = tx.open_table(VIEWS)?;
        if let Some(v) = views.get(self.settings_id.as_bytes())? {
            let json: Json = serde_json::from_slice(v.value())
                .map_err(|e| WriteError::Internal(e.to_string()))?;
            self.settings = super::typed(&self.settings_id, json)
                .map_err(|e| WriteError::Internal(e.to_string()))?;
        }
        self.skus.clear();
        for item in tx.open_table(SKUS)?.iter()? {
            let (k, _) = item?;
            let (sku, id) = k.value();
            // The first id per SKU in key order wins, the same rule `Repo::product_by_sku` uses.
            self.skus.entry(sku.to_owned()).or_insert(DocId(*id));
        }
        Ok(())
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>, events: broadcast::Sender<DocEvent>) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < BATCH_JOBS_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.run_batch(jobs, &events);
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>, events: &broadcast::Sender<DocEvent>) {
        match self.stage_batch(jobs) {
            Ok((replies, views)) => answer(replies, &views, events),
            Err((replies, err)) => {
                tracing::warn!(error = %err, "write batch failed; nothing of it was stored");
                for r in replies {
                    match r {
                        Reply::Command(tx, _) => {
                            let _ = tx.send(Err(err.clone()));
                        }
                        Reply::Ingest(tx, _) => {
                            let _ = tx.send(Err(err.clone()));
                        }
                    }
                }
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "reloading the writer's state failed; will retry on the next batch");
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn stage_batch(
        &mut self,
        jobs: Vec<Job>,
    ) -> Result<(Vec<Reply>, HashMap<DocId, Arc<Json>>), (Vec<Reply>, WriteError)> {
        let mut replies: Vec<Reply> = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let fail = |replies: Vec<Reply>, rest: std::vec::IntoIter<Job>, err: WriteError| {
            let mut replies = replies;
            for j in rest {
                replies.push(match j {
                    Job::Command(_, tx) => Reply::Command(tx, Err(err.clone())),
                    Job::Ingest(_, tx) => Reply::Ingest(tx, Err(err.clone())),
                });
            }
            (replies, err)
        };
        let tx = match self.db.begin_write() {
            Ok(tx) => tx,
            Err(e) => return Err(fail(replies, jobs, e.into())),
        };
        let mut touched = BTreeSet::new();
        let views = {
            let mut t = match Tables::open(&tx) {
                Ok(t) => t,
                Err(e) => return Err(fail(replies, jobs, e.into())),
            };
            for job in jobs.by_ref() {
                match job {
                    Job::Command(cmd, reply) => {
                        let r = self.stage_command(&mut t, cmd, &mut touched);
                        if let Err(e) = &r
                            && is_fatal(e)
                        {
                            let e = e.clone();
                            replies.push(Reply::Command(reply, r));
                            return Err(fail(replies, jobs, e));
                        }
                        replies.push(Reply::Command(reply, r));
                    }
                    Job::Ingest(entry, reply) => {
                        let r = self.stage_ingest(&mut t, *entry, &mut touched);
                        if let Err(e) = &r
                            && is_fatal(e)
                        {
                            let e = e.clone();
                            replies.push(Reply::Ingest(reply, r));
                            return Err(fail(replies, jobs, e));
                        }
                        replies.push(Reply::Ingest(reply, r));
                    }
                }
            }
            match self.finish(&mut t, &touched) {
                Ok(v) => v,
                Err(e) => return Err(fail(replies, jobs, e)),
            }
        };
        if let Err(e) = tx.commit() {
            return Err(fail(replies, jobs, e.into()));
        }
        self.cache.trim();
        Ok((replies, views))
    }

    /// Writes the views of the documents the batch touched, and compacts where due.
    fn finish(
        &mut self,
        t: &mut Tables<'_>,
        touched: &BTreeSet<DocId>,
    ) -> Result<HashMap<DocId, Arc<Json>>, WriteError> {
        let mut views = HashMap::with_capacity(touched.len());
        for id in touched {
            let Some(c) = self.cache.get(t, id)? else {
                continue;
            };
            let json = docmap::read_json(&c.doc);
            let bytes =
                serde_json::to_vec(&json).map_err(|e| WriteError::Internal(e.to_string()))?;
            t.views.insert(id.as_bytes(), bytes.as_slice())?;
            if *id == self.settings_id
                && let Ok(s) = docmap::read::<Settings>(&c.doc)
            {
                self.settings = s;
            }
            self.cache.maybe_compact(t, id)?;
            views.insert(*id, Arc::new(json));
        }
        Ok(views)
    }

    // ---- local commands --------------------------------------------------------------------

    fn stage_command(
        &mut self,
        t: &mut Tables<'_>,
        cmd: Command,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let now = now_ms();
        let mut ops = Ops::default();
        let primary = match cmd {
            Command::InitSettings(s) => {
                s.validate(&s)?;
                let id = self.settings_id;
                if self.cache.get(t, &id)?.is_some() {
                    return Err(WriteError::Conflict(
                        "the mesh settings already exist".into(),
                    ));
                }
                self.create_doc(t, &mut ops, id, &s, now)?;
                self.settings = s;
                id
            }
            Command::SetTaxRate { code, rate } => {
                let mut next = self.settings.clone();
                next.tax_rates.insert(
                    code,
                    TaxRate {
                        name: rate.name,
                        rate_ppm: rate.rate_ppm,
                    },
                );
                next.validate(&next)?;
                let id = self.settings_id;
                let current = self.settings.clone();
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                self.settings = next;
                id
            }
            Command::CreateProduct(p) => self.create_product(t, &mut ops, p, now)?,
            Command::Sell(s) => self.sell(t, &mut ops, s, now)?,
            Command::Void { sale_id, request } => self.void(t, &mut ops, sale_id, request, now)?,
            Command::Refund { sale_id, request } => {
                self.refund(t, &mut ops, sale_id, request, now)?
            }
            Command::CreateCustomer(c) => {
                let party = Party {
                    given_name: c.given_name,
                    family_name: c.family_name,
                    company_name: c.company_name,
                    email: c.email,
                    phone: c.phone,
                    notes: c.notes,
                    address: c.address,
                    ..Party::named(c.display_name)
                };
                let customer = Customer(party);
                customer.validate(&self.settings)?;
                let id = new_doc_id(now);
                self.create_doc(t, &mut ops, id, &customer, now)?;
                id
            }
            Command::PatchCustomer { id, patch } => {
                let current: Customer = self.typed(t, &id, "customer")?;
                let mut p = current.0.clone();
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
                let next = Customer(p);
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Command::AdjustStock(a) => self.adjust_stock(t, &mut ops, a, now)?,
        };
        if ops.docs.is_empty() {
            // Nothing changed (a patch that set fields to what they were): no entry to write.
            return Ok(Staged {
                primary,
                docs: Vec::new(),
                author: self.id.device_id,
                seq: self.head.0,
            });
        }
        let staged = self.seal(t, ops, primary, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    fn create_product(
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
            stock: p.stock,
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
        t.skus.insert((product.sku.as_str(), id.as_bytes()), ())?;
        self.skus.insert(product.sku, id);
        Ok(id)
    }

    fn resolve_product(
        &mut self,
        t: &Tables<'_>,
        field: &str,
        id: Option<DocId>,
        sku: Option<&str>,
    ) -> Result<DocId, WriteError> {
        let by_sku = match sku {
            Some(s) => Some(*self.skus.get(s).ok_or_else(|| {
                WriteError::UnknownProduct(format!("{field}: no product has SKU '{s}'"))
            })?),
            None => None,
        };
        match (id, by_sku) {
            (Some(a), Some(b)) if a != b => Err(WriteError::BadRequest(format!(
                "{field}: product_id {a} and sku '{}' name different products",
                sku.unwrap_or("")
            ))),
            (Some(a), _) => match self.doc_type(t, &a)? {
                Some(DocType::Product) => Ok(a),
                _ => Err(WriteError::UnknownProduct(format!(
                    "{field}: no product has id {a}"
                ))),
            },
            (None, Some(b)) => Ok(b),
            (None, None) => Err(WriteError::BadRequest(format!(
                "{field}: give a product_id or a sku"
            ))),
        }
    }

    fn sell(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        req: NewSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let mut lines = Vec::with_capacity(req.lines.len());
        for (i, l) in req.lines.iter().enumerate() {
            let product_id =
                self.resolve_product(t, &format!("lines[{i}]"), l.product_id, l.sku.as_deref())?;
            let product: Product = self.typed(t, &product_id, "product")?;
            lines.push(LineInput {
                product_id,
                product,
                qty: l.qty,
                unit_price_minor: l.unit_price_minor,
            });
        }
        if let Some(c) = req.customer_id
            && self.doc_type(t, &c)? != Some(DocType::Customer)
        {
            return Err(WriteError::NotFound {
                what: "customer",
                id: c.to_string(),
            });
        }
        let (rest, given): (Vec<_>, Vec<_>) = req
            .payments
            .into_iter()
            .partition(|p| p.amount_minor.is_none());
        if rest.len() > 1 {
            return Err(WriteError::BadRequest(
                "payments: only one payment may leave out its amount (it pays the rest)".into(),
            ));
        }
        let payments = given
            .into_iter()
            .map(|p| Tender {
                method: p.method,
                amount_minor: p.amount_minor.unwrap_or_default(),
            })
            .collect();
        let pay_rest = rest.into_iter().next().map(|p| p.method);
        let receipt_number = format!("{}-{:06}", self.id.receipt_prefix, self.receipt_seq + 1);
        let sale = Sale::ring_up(
            RingUp {
                receipt_number,
                till: self.id.device_id,
                created_at_ms: now,
                customer_id: req.customer_id,
                lines,
                payments,
                pay_rest,
            },
            &self.settings,
        )?;
        // Checked; from here on only the store can fail.
        let id = new_doc_id(now);
        self.create_doc(t, ops, id, &sale, now)?;
        self.move_stock(
            t,
            ops,
            sale.lines.iter().map(|l| (l.product_id, -l.qty)),
            now,
        )?;
        self.receipt_seq += 1;
        t.meta
            .insert(meta_key::RECEIPT_SEQ, &self.receipt_seq.to_be_bytes()[..])?;
        Ok(id)
    }

    fn void(
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
        self.require_products(t, sale.lines.iter().map(|l| l.product_id))?;
        self.update_doc(t, ops, id, &sale, &next, now)?;
        // A voided sale never left the shop: its goods are back in stock.
        self.move_stock(
            t,
            ops,
            sale.lines.iter().map(|l| (l.product_id, l.qty)),
            now,
        )?;
        Ok(id)
    }

    fn refund(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        sale_id: DocId,
        req: RefundSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let sale: Sale = self.typed(t, &sale_id, "sale")?;
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
        if refund.restock {
            self.require_products(t, refund.lines.iter().map(|l| l.product_id))?;
        }
        self.create_doc(t, ops, refund_id, &refund, now)?;
        self.update_doc(t, ops, sale_id, &sale, &next, now)?;
        if refund.restock {
            self.move_stock(
                t,
                ops,
                refund.lines.iter().map(|l| (l.product_id, l.qty)),
                now,
            )?;
        }
        Ok(refund_id)
    }

    fn adjust_stock(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        req: NewStockAdjustment,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let mut lines = Vec::with_capacity(req.lines.len());
        for (i, l) in req.lines.iter().enumerate() {
            let product_id =
                self.resolve_product(t, &format!("lines[{i}]"), l.product_id, l.sku.as_deref())?;
            let product: Product = self.typed(t, &product_id, "product")?;
            lines.push(StockLine {
                product_id,
                sku: product.sku,
                delta: l.delta,
            });
        }
        let adj = StockAdjustment {
            lines,
            reason: req.reason,
            at_ms: now,
            by: self.id.device_id,
        };
        adj.validate(&self.settings)?;
        let id = new_doc_id(now);
        self.create_doc(t, ops, id, &adj, now)?;
        self.move_stock(
            t,
            ops,
            adj.lines.iter().map(|l| (l.product_id, l.delta)),
            now,
        )?;
        Ok(id)
    }

    fn require_products(
        &mut self,
        t: &Tables<'_>,
        ids: impl Iterator<Item = DocId>,
    ) -> Result<(), WriteError> {
        for id in ids {
            if self.doc_type(t, &id)? != Some(DocType::Product) {
                return Err(WriteError::Conflict(format!(
                    "product {id} is not held on this device yet; try again once it has synced"
                )));
            }
        }
        Ok(())
    }

    fn doc_type(&mut self, t: &Tables<'_>, id: &DocId) -> Result<Option<DocType>, WriteError> {
        Ok(self
            .cache
            .get(t, id)?
            .and_then(|c| DocType::from_code(c.record.doc_type)))
    }

    fn typed<T: Document>(
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
        docmap::read::<T>(&c.doc)
            .map_err(|e| WriteError::Conflict(format!("{what} {id} cannot be used: {e}")))
    }

    fn create_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        value: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let (doc, change) = docmap::create(self.cache.actor(), value, (now / 1000) as i64)?;
        self.cache.insert_new(t, id, T::TYPE, doc, &change)?;
        ops.push(id, T::TYPE, change);
        Ok(())
    }

    fn update_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        from: &T,
        to: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let c = self
            .cache
            .get(t, &id)?
            .ok_or_else(|| WriteError::Internal(format!("{id} vanished during a write")))?;
        if let Some(change) = docmap::update(&mut c.doc, from, to, (now / 1000) as i64)? {
            self.cache.record_change(t, &id, &change)?;
            ops.push(id, T::TYPE, change);
        }
        Ok(())
    }

    /// Moves stock by counter increments, one change per product however many lines name it.
    fn move_stock(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        moves: impl Iterator<Item = (DocId, i64)>,
        now: u64,
    ) -> Result<(), WriteError> {
        let mut per_product: BTreeMap<DocId, i64> = BTreeMap::new();
        for (id, delta) in moves {
            *per_product.entry(id).or_default() += delta;
        }
        for (id, delta) in per_product.into_iter().filter(|(_, d)| *d != 0) {
            let c = self.cache.get(t, &id)?.ok_or_else(|| {
                WriteError::Internal(format!("product {id} vanished during a sale"))
            })?;
            let change = docmap::increment(&mut c.doc, "stock", delta, (now / 1000) as i64)?;
            self.cache.record_change(t, &id, &change)?;
            ops.push(id, DocType::Product, change);
        }
        Ok(())
    }

    /// Signs the entry for `ops` as this device's next and stores it.
    fn seal(
        &mut self,
        t: &mut Tables<'_>,
        ops: Ops,
        primary: DocId,
        now: u64,
    ) -> Result<Staged, WriteError> {
        let docs: Vec<(DocId, DocType)> = ops.docs.iter().map(|d| (d.doc_id, d.doc_type)).collect();
        let entry = Entry {
            author: self.id.device_id,
            seq: self.head.0 + 1,
            prev: self.head.1,
            timestamp_ms: now,
            payload: Payload::Changes(ops.docs),
        };
        entry
            .check_limits()
            .map_err(|e| WriteError::Internal(format!("entry too large: {e}")))?;
        let signed = entry.sign(&self.id.mesh_id, &self.id.key);
        store_entry(t, &signed)?;
        self.head = (signed.entry.seq, signed.hash());
        Ok(Staged {
            primary,
            docs,
            author: signed.entry.author,
            seq: signed.entry.seq,
        })
    }

    // ---- entries from other devices --------------------------------------------------------

    fn stage_ingest(
        &mut self,
        t: &mut Tables<'_>,
        entry: SignedEntry,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        if let Err(e) = entry.verify(&self.id.mesh_id) {
            return self.reject(t, &entry, e.to_string());
        }
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        let (have, tip) = t
            .heads
            .get(author.as_bytes())?
            .map(|v| v.value())
            .unwrap_or((0, [0; 32]));
        if seq <= have {
            let same = t
                .entries
                .get((author.as_bytes(), seq))?
                .is_some_and(|v| v.value() == entry.encoded());
            if same {
                return Ok((IngestOutcome::Duplicate, None));
            }
            return self.reject(
                t,
                &entry,
                format!("fork: device {author} already signed a different entry {seq}"),
            );
        }
        if seq > have + 1 {
            return Ok((IngestOutcome::Gap { have }, None));
        }
        if entry.entry.prev != EntryHash(tip) {
            return self.reject(
                t,
                &entry,
                format!(
                    "broken hash chain: entry {seq} does not follow entry {have} of device {author}"
                ),
            );
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
        let mut fresh: HashMap<DocId, AutoCommit> = HashMap::new();
        let mut refusal = None;
        for (dc, changes) in entry.docs().iter().zip(parsed) {
            if let Err(reason) = self.apply_remote(t, dc.doc_id, dc.doc_type, changes, &mut fresh) {
                refusal = Some(reason);
                break;
            }
        }
        if let Some(reason) = refusal {
            for dc in entry.docs() {
                self.cache.evict(&dc.doc_id);
            }
            return self.reject(t, &entry, reason);
        }
        for dc in entry.docs() {
            let mut changes = dc.changes.iter();
            if let Some(doc) = fresh.remove(&dc.doc_id) {
                let first = changes.next().map(Vec::as_slice).unwrap_or_default();
                self.cache
                    .insert_new(t, dc.doc_id, dc.doc_type, doc, first)?;
            }
            for c in changes {
                self.cache.record_change(t, &dc.doc_id, c)?;
            }
            touched.insert(dc.doc_id);
        }
        store_entry(t, &entry)?;
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
        fresh: &mut HashMap<DocId, AutoCommit>,
    ) -> Result<(), String> {
        let actor = self.cache.actor().clone();
        let settings = self.settings.clone();
        let existing = self.cache.get(t, &id).map_err(|e| e.to_string())?;
        let (doc, before_sale) = match existing {
            Some(c) => {
                if c.record.doc_type != doc_type.code() {
                    return Err(format!(
                        "document {id} is a {}, not a {doc_type}",
                        DocType::from_code(c.record.doc_type)
                            .map(|t| t.name())
                            .unwrap_or("?")
                    ));
                }
                let before = (doc_type == DocType::Sale && c.doc.get_missing_deps(&[]).is_empty())
                    .then(|| docmap::read::<Sale>(&c.doc).ok())
                    .flatten();
                (&mut c.doc, before)
            }
            None => (
                fresh
                    .entry(id)
                    .or_insert_with(|| AutoCommit::new().with_actor(actor)),
                None,
            ),
        };
        doc.apply_changes(changes)
            .map_err(|e| format!("document {id}: {e}"))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            // Waiting for another device's earlier changes; judged once they arrive.
            return Ok(());
        }
        if let Some(found) = docmap::doc_type(doc)
            && found != doc_type
        {
            return Err(format!(
                "document {id} says it is a {found}, but the entry files it as a {doc_type}"
            ));
        }
        check_remote(doc_type, doc, &settings, before_sale.as_ref())
            .map_err(|e| format!("{doc_type} {id}: {e}"))
    }

    fn reject(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: String,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        tracing::warn!(author = %entry.entry.author.short(), seq = entry.entry.seq, %reason, "entry refused");
        self.rejected_seq += 1;
        t.rejected
            .insert(self.rejected_seq, (reason.as_str(), entry.encoded()))?;
        t.meta
            .insert(meta_key::REJECTED_SEQ, &self.rejected_seq.to_be_bytes()[..])?;
        Ok((IngestOutcome::Rejected { reason }, None))
    }
}

/// The schema rules an ingested document must keep.
fn check_remote(
    doc_type: DocType,
    doc: &AutoCommit,
    settings: &Settings,
    before_sale: Option<&Sale>,
) -> Result<(), String> {
    fn check<T: Document>(doc: &AutoCommit, settings: &Settings) -> Result<T, String> {
        let v = docmap::read::<T>(doc).map_err(|e| e.to_string())?;
        v.validate(settings).map_err(|e| e.to_string())?;
        Ok(v)
    }
    match doc_type {
        DocType::Settings => check::<Settings>(doc, settings).map(drop),
        DocType::Product => check::<Product>(doc, settings).map(drop),
        DocType::Sale => {
            let after = check::<Sale>(doc, settings)?;
            match before_sale {
                Some(before) => before.check_update(&after).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        }
        DocType::Customer => check::<Customer>(doc, settings).map(drop),
        DocType::Vendor => check::<Vendor>(doc, settings).map(drop),
        DocType::Invoice => check::<Invoice>(doc, settings).map(drop),
        DocType::Payment => check::<Payment>(doc, settings).map(drop),
        DocType::Expense => check::<Expense>(doc, settings).map(drop),
        DocType::StockAdjustment => check::<StockAdjustment>(doc, settings).map(drop),
        DocType::Refund => check::<Refund>(doc, settings).map(drop),
    }
}

fn store_entry(t: &mut Tables<'_>, e: &SignedEntry) -> Result<(), WriteError> {
    let author = e.entry.author;
    t.entries
        .insert((author.as_bytes(), e.entry.seq), e.encoded())?;
    t.heads
        .insert(author.as_bytes(), (e.entry.seq, e.hash().0))?;
    for d in e.docs() {
        t.doc_entries
            .insert(d.doc_id.as_bytes(), (author.as_bytes(), e.entry.seq))?;
    }
    Ok(())
}

fn new_doc_id(now: u64) -> DocId {
    DocId::new_v7(now, random_bytes())
}

/// The changes one command makes, grouped per document in the order first touched.
#[derive(Default)]
struct Ops {
    docs: Vec<DocChanges>,
}

impl Ops {
    fn push(&mut self, doc_id: DocId, doc_type: DocType, change: Vec<u8>) {
        match self.docs.iter_mut().find(|d| d.doc_id == doc_id) {
            Some(d) => d.changes.push(change),
            None => self.docs.push(DocChanges {
                doc_id,
                doc_type,
                changes: vec![change],
            }),
        }
    }
}

fn answer(
    replies: Vec<Reply>,
    views: &HashMap<DocId, Arc<Json>>,
    events: &broadcast::Sender<DocEvent>,
) {
    let empty = Arc::new(Json::Null);
    let view = |id: &DocId| views.get(id).cloned().unwrap_or_else(|| empty.clone());
    let publish = |s: &Staged, origin: Origin| {
        for (doc_id, doc_type) in &s.docs {
            // No subscribers is not an error.
            let _ = events.send(DocEvent {
                doc_id: *doc_id,
                doc_type: *doc_type,
                origin,
                author: s.author,
                seq: s.seq,
                doc: view(doc_id),
            });
        }
    };
    for r in replies {
        match r {
            Reply::Command(tx, result) => {
                let result = result.map(|s| {
                    publish(&s, Origin::Local);
                    Written {
                        doc_id: s.primary,
                        doc: view(&s.primary),
                        author: s.author,
                        seq: s.seq,
                    }
                });
                let _ = tx.send(result);
            }
            Reply::Ingest(tx, result) => {
                let result = result.map(|(outcome, staged)| {
                    if let Some(s) = &staged {
                        publish(s, Origin::Remote);
                    }
                    outcome
                });
                let _ = tx.send(result);
            }
        }
    }
}
