//! The outbox: what the mesh holds that QuickBooks does not yet, in rounds.
//!
//! A round reads the documents the repo says changed (everything at start, and after missed
//! events), keeps those QBO lacks or whose ledger lacks QBO's id, and posts them in order:
//! customers, vendors, items and accounts first, then transactions once what they name
//! exists, payments last, then voids and the ledger write-backs. How each becomes a QBO
//! object is [`super::mapping`]; how it is sent exactly once, [`super::intents`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_protocol::schema::{
    Customer, Expense, Invoice, Ledger, Payment, Product, Refund, Sale, SaleStatus, Vendor,
};
use tillmesh_protocol::{DocId, DocType};

use super::client::QboError;
use super::edits::{Edit, MeshRecord};
use super::intents::Create;
use super::mapping::{account_create, account_key, item_create, item_key, party_create};
use super::state::Posted;
use super::{Bridge, dates, now_ms};

/// Documents listed per page in a full scan.
const PAGE: usize = 1000;
/// Transactions one round takes on by default; the rest wait for the next. A backlog of
/// thousands then goes in rounds of minutes, with pulls (and webhooks) served between them.
pub const ROUND_TRANSACTIONS_MAX: usize = 1_200;
/// Summary mode: sales per summary receipt at most, and how long after a period's end its
/// summary waits for tills that were offline (a day's waits an hour; shorter periods less).
const SUMMARY_SALES_MAX: usize = 500;
const SUMMARY_GRACE_MS_MAX: u64 = 3_600_000;
/// Undone entries looked at per round, newest first (there are normally none).
const UNDONE_SCANNED_MAX: usize = 1_000;

/// The documents that may need posting, fed by the repo's events.
pub(super) struct Outbox {
    dirty: Arc<Mutex<Dirty>>,
    /// When the earliest summary period waiting for its end is due (summary mode).
    summary_at_ms: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Dirty {
    docs: BTreeMap<DocId, DocType>,
    /// Events were missed (or the bridge just started): look at everything.
    rescan: bool,
}

impl Outbox {
    /// Starts listening to the repo; needs a tokio runtime.
    pub(super) fn watch(repo: &Repo) -> Outbox {
        let dirty = Arc::new(Mutex::new(Dirty {
            rescan: true,
            ..Dirty::default()
        }));
        let weak: Weak<Mutex<Dirty>> = Arc::downgrade(&dirty);
        let mut events = repo.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = events.recv().await;
                let Some(dirty) = weak.upgrade() else { break };
                let mut d = dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match event {
                    Ok(e) if POSTED_TYPES.contains(&e.doc_type) => {
                        d.docs.insert(e.doc_id, e.doc_type);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => d.rescan = true,
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Outbox {
            dirty,
            summary_at_ms: Mutex::new(None),
        }
    }

    /// Remembers that sales wait for a summary period due at `at_ms`.
    fn wake_at(&self, at_ms: u64) {
        let mut w = self
            .summary_at_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *w = Some(w.map_or(at_ms, |t| t.min(at_ms)));
    }

    /// Whether a summary period has come due (and forgets it: the rescan finds the rest).
    fn summary_due(&self, now_ms: u64) -> bool {
        let mut w = self
            .summary_at_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.is_some_and(|t| now_ms >= t) {
            *w = None;
            return true;
        }
        false
    }

    fn take(&self) -> (bool, BTreeMap<DocId, DocType>) {
        let mut d = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (std::mem::take(&mut d.rescan), std::mem::take(&mut d.docs))
    }

    /// Puts documents back for the next round (their post failed, or the round stopped).
    pub(super) fn again(&self, docs: impl IntoIterator<Item = (DocId, DocType)>) {
        let mut d = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        d.docs.extend(docs);
    }

    fn rescan_later(&self) {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rescan = true;
    }
}

/// The document types the bridge posts, references first.
const POSTED_TYPES: [DocType; 8] = [
    DocType::Product,
    DocType::Customer,
    DocType::Vendor,
    DocType::Sale,
    DocType::Invoice,
    DocType::Expense,
    DocType::Payment,
    DocType::Refund,
];

/// One round's work, read from the store: the documents QBO lacks, or whose ledger lacks
/// QBO's id.
#[derive(Default)]
struct Work {
    products: BTreeMap<String, (DocId, Product)>,
    customers: BTreeMap<DocId, Customer>,
    vendors: BTreeMap<DocId, Vendor>,
    sales: Vec<(DocId, Sale)>,
    invoices: Vec<(DocId, Invoice)>,
    expenses: Vec<(DocId, Expense)>,
    payments: Vec<(DocId, Payment)>,
    refunds: Vec<(DocId, Refund)>,
    /// Customers, vendors and items QuickBooks holds whose mesh fields changed.
    edits: Vec<Edit>,
    /// Everything read this round, to hand back if it does not finish.
    seen: BTreeMap<DocId, DocType>,
    /// Transactions left for later rounds (beyond the round's size).
    later: usize,
}

impl Work {
    fn len(&self) -> usize {
        self.products.len()
            + self.customers.len()
            + self.vendors.len()
            + self.sales.len()
            + self.invoices.len()
            + self.expenses.len()
            + self.payments.len()
            + self.refunds.len()
            + self.edits.len()
    }
}

/// A round's bookkeeping: what QBO refused (so what depends on it waits), what to look at
/// again next round, how much was made.
#[derive(Default)]
struct Round {
    missing: BTreeSet<String>,
    unfinished: BTreeSet<DocId>,
    /// Sales whose summary period is not over: looked at again when it is, not before.
    later: BTreeSet<DocId>,
    made: usize,
}

impl Bridge {
    /// One round of the outbox. Returns how many objects were created or voided in QBO.
    pub async fn push_all(&self) -> Result<usize, QboError> {
        if !self.admitted() {
            return Ok(0);
        }
        self.check_books().await?;
        if self.outbox.summary_due(now_ms()) {
            self.outbox.rescan_later();
        }
        let (rescan, docs) = self.outbox.take();
        let work = match self.read_work(rescan, docs) {
            Ok(w) => w,
            Err(e) => {
                self.outbox.rescan_later();
                return Err(e);
            }
        };
        let seen = work.seen.clone();
        let mut round = Round::default();
        let result = self.push_work(work, &mut round).await;
        match &result {
            Ok(_) => self.outbox.again(
                seen.into_iter()
                    .filter(|(id, _)| round.unfinished.contains(id)),
            ),
            Err(_) => self.outbox.again(seen),
        }
        result
    }

    fn read_work(&self, rescan: bool, docs: BTreeMap<DocId, DocType>) -> Result<Work, QboError> {
        // Classified page by page: of the store's documents, only those QBO lacks are held
        // (and the ids of all, to hand back if the round stops).
        let mut work = Work::default();
        if rescan {
            for t in POSTED_TYPES {
                let mut before = None;
                loop {
                    let page = self.repo.list(t, before, PAGE).map_err(store)?;
                    let Some(last) = page.last() else { break };
                    before = Some(last.0);
                    let n = page.len();
                    for (id, v) in page {
                        if work.seen.insert(id, t).is_none() {
                            self.classify(&mut work, id, t, v)?;
                        }
                    }
                    if n < PAGE {
                        break;
                    }
                }
            }
        }
        for (id, t) in docs {
            if !work.seen.contains_key(&id)
                && let Some(v) = self.repo.view(&id).map_err(store)?
            {
                work.seen.insert(id, t);
                self.classify(&mut work, id, t, v)?;
            }
        }
        // Oldest first: the list runs newest first, and ids are time-ordered.
        work.sales.sort_by_key(|(id, s)| (s.created_at_ms, *id));
        work.refunds.sort_by_key(|(id, r)| (r.at_ms, *id));
        work.invoices.sort_by_key(|(id, _)| *id);
        work.payments.sort_by_key(|(id, _)| *id);
        work.expenses.sort_by_key(|(id, _)| *id);
        let room = self.options.round_transactions_max.max(1);
        let lens = [
            work.sales.len(),
            work.invoices.len(),
            work.expenses.len(),
            work.payments.len(),
            work.refunds.len(),
        ];
        let keep = if lens.iter().sum::<usize>() <= room {
            lens
        } else {
            let refused = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
            let mut ranks = Ranks {
                bridge: self,
                refused,
                posted: HashMap::new(),
            };
            let summary = self.options.summary_period.is_some();
            let counts = [
                ranks.sort(&mut work.sales, |s| Ok(sale_refs(s, summary)))?,
                ranks.sort(&mut work.invoices, |i| self.invoice_refs(i))?,
                ranks.sort(&mut work.expenses, |e| Ok(expense_refs(e)))?,
                ranks.sort(&mut work.payments, |p| Ok(payment_refs(p)))?,
                ranks.sort(&mut work.refunds, |r| Ok(refund_refs(r)))?,
            ];
            shares(&counts, room)
        };
        let mut later = Vec::new();
        spill(&mut work.sales, DocType::Sale, keep[0], &mut later);
        spill(&mut work.invoices, DocType::Invoice, keep[1], &mut later);
        spill(&mut work.expenses, DocType::Expense, keep[2], &mut later);
        spill(&mut work.payments, DocType::Payment, keep[3], &mut later);
        spill(&mut work.refunds, DocType::Refund, keep[4], &mut later);
        for (id, _) in &later {
            work.seen.remove(id);
        }
        work.later = later.len();
        self.outbox.again(later);
        Ok(work)
    }

    /// What an invoice names: its customer, and the items of its catalogue lines.
    fn invoice_refs(&self, i: &Invoice) -> Result<Vec<String>, QboError> {
        let mut refs = vec![i.customer_id.to_string()];
        for pid in i.lines.iter().filter_map(|l| l.product_id) {
            if let Some(p) = self.repo.get::<Product>(&pid).map_err(store)? {
                refs.push(item_key(&p.sku));
            }
        }
        Ok(refs)
    }

    /// Keeps a document in the round's work if QBO lacks it, or its ledger lacks QBO's id.
    fn classify(&self, work: &mut Work, id: DocId, t: DocType, v: Value) -> Result<(), QboError> {
        fn typed<T: tillmesh_protocol::schema::Document>(id: &DocId, v: Value) -> Option<T> {
            tillmesh_node::repo::typed::<T>(id, v).ok()
        }
        let needed = |key: &str, ledger: Option<&Ledger>| -> Result<bool, QboError> {
            Ok(match self.state.posted(key)? {
                None => true,
                // Decided with nothing sent: a refund a void covered.
                Some(done) if done.covered_by_void_of.is_some() => false,
                Some(done) => {
                    ledger.and_then(|l| l.qbo_id.as_deref()) != Some(done.qbo_id.as_str())
                }
            })
        };
        let key = id.to_string();
        match t {
            DocType::Product => {
                if let Some(p) = typed::<Product>(&id, v) {
                    let item = item_key(&p.sku);
                    if needed(&item, p.ledger.as_ref())? {
                        work.products.insert(p.sku.clone(), (id, p));
                    } else if let Some(e) = self.edit_of(&item, id, &MeshRecord::Product(p))? {
                        work.edits.push(e);
                    }
                }
            }
            DocType::Customer => {
                if let Some(c) = typed::<Customer>(&id, v) {
                    if needed(&key, c.0.ledger.as_ref())? {
                        work.customers.insert(id, c);
                    } else if let Some(e) = self.edit_of(&key, id, &MeshRecord::Customer(c))? {
                        work.edits.push(e);
                    }
                }
            }
            DocType::Vendor => {
                if let Some(c) = typed::<Vendor>(&id, v) {
                    if needed(&key, c.0.ledger.as_ref())? {
                        work.vendors.insert(id, c);
                    } else if let Some(e) = self.edit_of(&key, id, &MeshRecord::Vendor(c))? {
                        work.edits.push(e);
                    }
                }
            }
            DocType::Sale => {
                if let Some(s) = typed::<Sale>(&id, v)
                    && s.status != SaleStatus::Open
                {
                    let posted = self.state.posted(&key)?;
                    let voiding = s.status == SaleStatus::Voided
                        && posted.as_ref().is_some_and(|p| !p.voided);
                    let nothing_in_qbo = posted.as_ref().is_some_and(|p| p.qbo_id.is_empty());
                    if voiding || (!nothing_in_qbo && needed(&key, s.ledger.as_ref())?) {
                        work.sales.push((id, s));
                    }
                }
            }
            DocType::Invoice => {
                if let Some(i) = typed::<Invoice>(&id, v)
                    && needed(&key, i.ledger.as_ref())?
                {
                    work.invoices.push((id, i));
                }
            }
            DocType::Payment => {
                if let Some(p) = typed::<Payment>(&id, v)
                    && needed(&key, p.ledger.as_ref())?
                {
                    work.payments.push((id, p));
                }
            }
            DocType::Expense => {
                if let Some(e) = typed::<Expense>(&id, v) {
                    if needed(&key, e.ledger.as_ref())? {
                        work.expenses.push((id, e));
                    } else if let Some(edit) = self.edit_of(&key, id, &MeshRecord::Expense(e))? {
                        work.edits.push(edit);
                    }
                }
            }
            DocType::Refund => {
                if let Some(r) = typed::<Refund>(&id, v)
                    && needed(&key, r.ledger.as_ref())?
                {
                    work.refunds.push((id, r));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn push_work(&self, work: Work, round: &mut Round) -> Result<usize, QboError> {
        let started = std::time::Instant::now();
        let made = self.push_work_timed(work, round).await?;
        if made > 0 {
            self.metrics
                .push_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(made)
    }

    async fn push_work_timed(&self, mut work: Work, round: &mut Round) -> Result<usize, QboError> {
        self.settle_intents().await?;
        self.reverse_undone(round).await?;
        let waiting = work.len() + work.later;
        self.update(|s| s.outbox = waiting);
        // Read from the mesh settings by `check_books` at the start of this round.
        let currency = self.books().currency;

        // Parties: those changed, and those the new transactions name.
        let fresh = |key: &str| -> Result<bool, QboError> { Ok(self.state.posted(key)?.is_none()) };
        let named_customers: BTreeSet<DocId> = work
            .sales
            .iter()
            .filter_map(|(_, s)| s.customer_id)
            .chain(work.invoices.iter().map(|(_, i)| i.customer_id))
            .chain(work.payments.iter().map(|(_, p)| p.customer_id))
            .collect();
        for id in named_customers {
            if !work.customers.contains_key(&id)
                && fresh(&id.to_string())?
                && let Some(c) = self.repo.get::<Customer>(&id).map_err(store)?
            {
                work.customers.insert(id, c);
            }
        }
        let named_vendors: BTreeSet<DocId> = work
            .expenses
            .iter()
            .filter_map(|(_, e)| e.vendor_id)
            .collect();
        for id in named_vendors {
            if !work.vendors.contains_key(&id)
                && fresh(&id.to_string())?
                && let Some(v) = self.repo.get::<Vendor>(&id).map_err(store)?
            {
                work.vendors.insert(id, v);
            }
        }
        let mut creates = Vec::new();
        for (id, c) in &work.customers {
            if fresh(&id.to_string())? {
                let name = self.party_name(*id, &c.0)?;
                creates.push(party_create("Customer", *id, &c.0, &name));
            }
        }
        for (id, v) in &work.vendors {
            if fresh(&id.to_string())? {
                let name = self.party_name(*id, &v.0)?;
                creates.push(party_create("Vendor", *id, &v.0, &name));
            }
        }

        // Items: the products changed, and the SKUs the new transactions sell.
        let mut lines: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for (_, s) in &work.sales {
            for l in &s.lines {
                lines
                    .entry(l.sku.clone())
                    .or_insert((l.name.clone(), l.unit_price_minor));
            }
        }
        let mut invoice_skus: BTreeMap<DocId, String> = BTreeMap::new();
        for (_, i) in &work.invoices {
            for l in &i.lines {
                let Some(pid) = l.product_id else { continue };
                if let Some(p) = self.repo.get::<Product>(&pid).map_err(store)? {
                    invoice_skus.insert(pid, p.sku.clone());
                    lines
                        .entry(p.sku)
                        .or_insert((l.description.clone(), l.unit_price_minor));
                }
            }
        }
        if !work.products.is_empty() || !lines.is_empty() {
            let income = self.account("Income").await?;
            for (sku, (_, p)) in &work.products {
                if fresh(&item_key(sku))? {
                    creates.push(item_create(
                        sku,
                        &p.name,
                        p.price.amount_minor,
                        p.price.currency,
                        &income,
                        // Active in QuickBooks whatever the till says (see `edits`).
                        true,
                    ));
                }
            }
            for (sku, (name, unit)) in &lines {
                if !work.products.contains_key(sku) && fresh(&item_key(sku))? {
                    creates.push(item_create(
                        sku,
                        name,
                        *unit,
                        self.books().currency,
                        &income,
                        true,
                    ));
                }
            }
        }
        // Expense accounts, by the names the shop books to.
        let accounts: BTreeSet<&str> = work
            .expenses
            .iter()
            .flat_map(|(_, e)| e.lines.iter().map(|l| l.account.as_str()))
            .collect();
        for name in accounts {
            if fresh(&account_key(name))? {
                creates.push(account_create(name));
            }
        }
        self.create_noting(creates, round).await?;
        // Edits of what QuickBooks holds already.
        round.made += self.push_edits(std::mem::take(&mut work.edits)).await?;

        // Transactions, once what they name exists.
        let mut creates = Vec::new();
        if let Some(period) = self.options.summary_period {
            self.summaries(&work.sales, period, round, &mut creates)?;
        } else {
            for (id, s) in &work.sales {
                if self.ready(*id, sale_refs(s, false), round)? {
                    creates.push(self.receipt_create(*id, s)?);
                }
            }
        }
        for (id, i) in &work.invoices {
            let refs = std::iter::once(i.customer_id.to_string()).chain(
                i.lines
                    .iter()
                    .filter_map(|l| l.product_id.and_then(|p| invoice_skus.get(&p)))
                    .map(|sku| item_key(sku)),
            );
            if self.ready(*id, refs, round)? {
                creates.push(self.invoice_create(*id, i, &invoice_skus)?);
            }
        }
        for (id, e) in &work.expenses {
            if self.ready(*id, expense_refs(e), round)? {
                creates.push(self.expense_create(*id, e).await?);
            }
        }
        for (id, r) in &work.refunds {
            if self.covered_by_void(*id, r)? {
                continue;
            }
            if self.ready(*id, refund_refs(r), round)? {
                creates.push(self.refund_create(*id, r).await?);
            }
        }
        self.create_noting(creates, round).await?;
        // Payments last: one that settles an invoice names it.
        let mut creates = Vec::new();
        for (id, p) in &work.payments {
            if self.ready(*id, payment_refs(p), round)? {
                creates.push(self.payment_create(*id, p)?);
            }
        }
        self.create_noting(creates, round).await?;

        // A sale voided after its summary went, or voided on one till while another refunded
        // part of it: its receipt stays, and a refund receipt takes back out what no refund
        // did, so the money moves once.
        let mut corrections = Vec::new();
        for (id, s) in &work.sales {
            if s.status == SaleStatus::Voided
                && let Some(mut p) = self.state.posted(&id.to_string())?
                && !p.voided
                && !p.qbo_id.is_empty()
            {
                // Made already (its answer settled, or a crash came before this mark).
                if self.state.posted(&format!("void/{id}"))?.is_some() {
                    p.voided = true;
                    self.state.set_posted(&id.to_string(), &p)?;
                    continue;
                }
                let Some(s) = self.void_basis(*id, round)? else {
                    continue;
                };
                if p.summary.is_none() && s.refunds.is_empty() {
                    // A whole void of its own receipt, below.
                    continue;
                }
                match self.void_correction_create(*id, &s).await? {
                    Some(c) => corrections.push(c),
                    // Refunded whole already: the void moves nothing more.
                    None => {
                        p.voided = true;
                        self.state.set_posted(&id.to_string(), &p)?;
                    }
                }
            }
        }
        for (c, outcome) in self.create_all(corrections).await? {
            let sale = c.key.trim_start_matches("void/").to_owned();
            match outcome {
                Ok(_) => {
                    if let Some(mut p) = self.state.posted(&sale)? {
                        p.voided = true;
                        self.state.set_posted(&sale, &p)?;
                    }
                    round.made += 1;
                }
                Err(e) => self.failed(format!("void of summarized sale {sale}"), &e),
            }
        }

        // Voids, and every ledger that does not yet name QBO's object.
        for (id, s) in &work.sales {
            if round.later.contains(id) {
                continue;
            }
            let Some(posted) = self.state.posted(&id.to_string())? else {
                round.unfinished.insert(*id);
                continue;
            };
            if posted.summary.is_some() {
                // In a summary (its ledger names the summary receipt), or voided before one
                // (nothing of it in QBO). A void after the summary was corrected above.
                if !posted.qbo_id.is_empty() {
                    self.link(*id, &id.to_string(), s.ledger.as_ref(), currency, round)
                        .await?;
                }
                if s.status == SaleStatus::Voided && !posted.voided {
                    round.unfinished.insert(*id);
                }
                continue;
            }
            let whole_void = s.status == SaleStatus::Voided
                && !posted.voided
                && self
                    .void_basis(*id, round)?
                    .is_some_and(|now| now.refunds.is_empty());
            if s.status == SaleStatus::Voided && !posted.voided && !whole_void {
                // Its correction above did not settle yet, or waits for its refunds.
                round.unfinished.insert(*id);
            } else if whole_void {
                // The void's record is stored before `link` reads it back for the ledger.
                match self.void_receipt(&id.to_string(), posted).await {
                    Ok(_) => round.made += 1,
                    Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                    Err(e) => {
                        self.failed(format!("void of sale {id}"), &e);
                        round.unfinished.insert(*id);
                    }
                }
            }
            self.link(*id, &id.to_string(), s.ledger.as_ref(), currency, round)
                .await?;
        }
        for (sku, (id, p)) in &work.products {
            self.link(*id, &item_key(sku), p.ledger.as_ref(), currency, round)
                .await?;
        }
        let mut links: Vec<(DocId, Option<&Ledger>)> = Vec::new();
        links.extend(
            work.customers
                .iter()
                .map(|(id, c)| (*id, c.0.ledger.as_ref())),
        );
        links.extend(
            work.vendors
                .iter()
                .map(|(id, v)| (*id, v.0.ledger.as_ref())),
        );
        links.extend(work.invoices.iter().map(|(id, i)| (*id, i.ledger.as_ref())));
        links.extend(work.expenses.iter().map(|(id, e)| (*id, e.ledger.as_ref())));
        links.extend(work.payments.iter().map(|(id, p)| (*id, p.ledger.as_ref())));
        links.extend(work.refunds.iter().map(|(id, r)| (*id, r.ledger.as_ref())));
        for (id, ledger) in links {
            self.link(id, &id.to_string(), ledger, currency, round)
                .await?;
        }
        if let Ok(mut refused) = self.refused.lock() {
            *refused = std::mem::take(&mut round.missing);
        }
        let posted_total = self.state.posted_count()?;
        let (made, waiting) = (round.made, round.unfinished.len() + work.later);
        self.update(|s| {
            s.outbox = waiting;
            s.posted = posted_total;
            if made > 0 {
                s.last_push_ms = Some(now_ms());
            }
            s.connected = true;
        });
        Ok(made)
    }

    /// Whether a transaction can be created now: not yet in QBO, and everything it names is.
    /// One that must wait is looked at again next round.
    fn ready(
        &self,
        id: DocId,
        refs: impl IntoIterator<Item = String>,
        round: &mut Round,
    ) -> Result<bool, QboError> {
        if self.state.posted(&id.to_string())?.is_some() {
            return Ok(false);
        }
        for key in refs {
            if round.missing.contains(&key) || self.state.posted(&key)?.is_none() {
                round.unfinished.insert(id);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Creates, noting each refusal for status and as missing for what depends on it.
    async fn create_noting(&self, creates: Vec<Create>, round: &mut Round) -> Result<(), QboError> {
        for (c, outcome) in self.create_all(creates).await? {
            match outcome {
                Ok(_) => {
                    self.resolved(&c.key);
                    round.made += 1;
                }
                Err(e) => {
                    self.failed_as(Some(&c.key), c.label(), &e);
                    round.missing.insert(c.key);
                }
            }
        }
        Ok(())
    }

    /// Writes QBO's id (and figures) into a posted document's ledger. A document not posted
    /// yet, or a write that fails, is looked at again next round; the post itself stands.
    async fn link(
        &self,
        id: DocId,
        key: &str,
        ledger: Option<&Ledger>,
        currency: tillmesh_protocol::Currency,
        round: &mut Round,
    ) -> Result<(), QboError> {
        let Some(posted) = self.state.posted(key)? else {
            round.unfinished.insert(id);
            return Ok(());
        };
        if posted.qbo_id.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .write_ledger(id, ledger, &posted, currency, false)
            .await
        {
            self.failed(format!("ledger of {id}"), &e);
            round.unfinished.insert(id);
        }
        Ok(())
    }

    /// Summary mode: the sales of each period that is over (and its grace with it) go into
    /// summary receipts, `SUMMARY_SALES_MAX` sales at most each; later sales of a period
    /// summarized already go into the next summary of that period. A sale voided before its
    /// summary is recorded as such, with nothing sent.
    fn summaries<'a>(
        &self,
        sales: &'a [(DocId, Sale)],
        period: std::time::Duration,
        round: &mut Round,
        creates: &mut Vec<Create>,
    ) -> Result<(), QboError> {
        let period_ms = (period.as_millis() as u64).max(1);
        let grace_ms = (period_ms / 24).min(SUMMARY_GRACE_MS_MAX);
        let zone = self.books().zone;
        let now = now_ms();
        let mut due: BTreeMap<u64, Vec<(DocId, &'a Sale)>> = BTreeMap::new();
        for (id, s) in sales {
            if self.state.posted(&id.to_string())?.is_some() {
                continue;
            }
            // Periods are cut on the shop's clock: a daily summary is the shop's day.
            let index = dates::local_ms(s.created_at_ms, &zone) / period_ms;
            let due_at = dates::instant_of_local((index + 1) * period_ms, &zone) + grace_ms;
            if now < due_at {
                self.outbox.wake_at(due_at);
                round.later.insert(*id);
                continue;
            }
            // Voided with refunds: its receipt goes in the summary like any other, since the
            // refunds are booked, and the void then takes back only the rest.
            if s.status == SaleStatus::Voided && s.refunds.is_empty() {
                self.state.set_posted(
                    &id.to_string(),
                    &Posted {
                        entity: "SalesReceipt".into(),
                        voided: true,
                        summary: Some(format!("summary/{index}")),
                        ..Posted::default()
                    },
                )?;
                continue;
            }
            if self.ready(*id, s.lines.iter().map(|l| item_key(&l.sku)), round)? {
                due.entry(index).or_default().push((*id, s));
            }
        }
        for (index, sales) in due {
            // After the highest number used, not the count: a refused summary leaves a gap.
            let used = self.state.highest_suffix(&format!("summary/{index}/"))?;
            for (k, chunk) in sales.chunks(SUMMARY_SALES_MAX).enumerate() {
                creates.push(self.summary_create(index, period_ms, used + k as u64 + 1, chunk)?);
            }
        }
        Ok(())
    }

    /// Sales and refunds posted to QBO that no longer stand in the mesh: an entry that made
    /// them was undone (a revocation that reached the mesh after the bridge had posted the
    /// revoked till's later sales and refunds). A sale's receipt is voided and a refund's
    /// receipt deleted in QBO, so the books hold what every till holds.
    async fn reverse_undone(&self, round: &mut Round) -> Result<(), QboError> {
        let (_, undone) = self.repo.undone(UNDONE_SCANNED_MAX).map_err(store)?;
        for id in undone.iter().flat_map(|u| &u.record.docs) {
            let key = id.to_string();
            let Some(posted) = self.state.posted(&key)? else {
                continue;
            };
            // Only a receipt of its own: a summary's share would need a correction, and
            // nothing else posted is made by a till alone.
            if !matches!(posted.entity.as_str(), "SalesReceipt" | "RefundReceipt")
                || posted.voided
                || posted.qbo_id.is_empty()
                || posted.summary.is_some()
                || self.repo.view(id).map_err(store)?.is_some()
            {
                continue;
            }
            tracing::warn!(document = %id, entity = %posted.entity, qbo_id = %posted.qbo_id, "posted, but no longer stands in the mesh (its entry was undone): taking it back out of QuickBooks");
            let reversed = if posted.entity == "SalesReceipt" {
                self.void_receipt(&key, posted).await.map(drop)
            } else {
                self.delete_refund_receipt(&key, posted).await
            };
            match reversed {
                Ok(()) => round.made += 1,
                Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                Err(e) => self.failed_as(Some(&key), format!("reversal of undone {id}"), &e),
            }
        }
        Ok(())
    }

    /// Deletes a refund receipt whose refund the mesh no longer holds.
    async fn delete_refund_receipt(&self, key: &str, mut posted: Posted) -> Result<(), QboError> {
        let token = match self
            .qbo
            .get(&format!("refundreceipt/{}", posted.qbo_id))
            .await
        {
            Ok(v) => Some(v["RefundReceipt"]["SyncToken"].clone()),
            // Deleted in QBO already.
            Err(e) if e.code() == Some("610") => None,
            Err(e) => return Err(e),
        };
        if let Some(token) = token {
            let body = json!({"Id": posted.qbo_id, "SyncToken": token});
            self.qbo
                .post("refundreceipt?operation=delete", &body)
                .await?;
        }
        posted.voided = true;
        posted.total_minor = Some(0);
        posted.tax_minor = Some(0);
        self.state.set_posted(key, &posted)?;
        Ok(())
    }

    /// The sale as the mesh holds it now, to decide how its void goes to QBO, or `None` while
    /// a refund of it is not in QBO yet. A void is booked once, against exactly the refunds
    /// posted when it goes: a whole void when there are none, else the rest no refund took.
    /// A refund that comes after it is covered by it (`covered_by_void`), never booked again.
    fn void_basis(&self, id: DocId, round: &mut Round) -> Result<Option<Sale>, QboError> {
        // Read again, not from the round's list: a refund may have arrived since.
        let Some(sale) = self.repo.get::<Sale>(&id).map_err(store)? else {
            return Ok(None);
        };
        for r in &sale.refunds {
            if self.state.posted(&r.refund_id.to_string())?.is_none() {
                round.unfinished.insert(id);
                return Ok(None);
            }
        }
        Ok(Some(sale))
    }

    /// Whether a refund's sale was voided in QBO before the refund reached the bridge: the
    /// void gave back what the refund did, so the refund is recorded as covered and not
    /// posted (the mesh lists the sale as a void-and-refund conflict for review).
    fn covered_by_void(&self, id: DocId, refund: &Refund) -> Result<bool, QboError> {
        let sale_key = refund.sale_id.to_string();
        if self.state.posted(&id.to_string())?.is_some()
            || !self.state.posted(&sale_key)?.is_some_and(|p| p.voided)
        {
            return Ok(false);
        }
        tracing::warn!(refund = %id, sale = %sale_key, "a refund arrived after its sale's void went to QuickBooks: the void gave that money back already, so the refund is not posted again");
        self.state.set_posted(
            &id.to_string(),
            &Posted {
                entity: "RefundReceipt".into(),
                covered_by_void_of: Some(sale_key),
                ..Posted::default()
            },
        )?;
        self.update(|s| s.refunds_covered_by_voids += 1);
        Ok(true)
    }

    async fn void_receipt(&self, key: &str, mut posted: Posted) -> Result<Posted, QboError> {
        let current = match self
            .qbo
            .get(&format!("salesreceipt/{}", posted.qbo_id))
            .await
        {
            Ok(v) => v["SalesReceipt"].clone(),
            // Deleted in QBO already: nothing left to void.
            Err(e) if e.code() == Some("610") => json!({"PrivateNote": "Voided"}),
            Err(e) => return Err(e),
        };
        if current["PrivateNote"] != "Voided" {
            let body =
                json!({"Id": posted.qbo_id, "SyncToken": current["SyncToken"], "sparse": true});
            // A stale SyncToken (5010: changed in QBO since the read) is an error for this
            // sale: the next round reads it again. Intuit documents a sales receipt's void as
            // a sparse update that includes the void.
            let voided = self
                .qbo
                .post("salesreceipt?operation=update&include=void", &body)
                .await?;
            posted.sync_token = voided["SalesReceipt"]["SyncToken"]
                .as_str()
                .unwrap_or(&posted.sync_token)
                .to_owned();
            posted.total_minor = self.minor(&voided["SalesReceipt"]["TotalAmt"]).or(Some(0));
            posted.tax_minor = self.minor(&voided["SalesReceipt"]["TxnTaxDetail"]["TotalTax"]);
        }
        posted.voided = true;
        self.state.set_posted(key, &posted)?;
        Ok(posted)
    }
}

/// What a transaction names, by its key in `bridge.redb`: QBO must hold these first. A
/// summary names items only (its sales' customers are not its).
fn sale_refs(s: &Sale, summary: bool) -> Vec<String> {
    s.customer_id
        .filter(|_| !summary)
        .map(|c| c.to_string())
        .into_iter()
        .chain(s.lines.iter().map(|l| item_key(&l.sku)))
        .collect()
}

fn expense_refs(e: &Expense) -> Vec<String> {
    e.vendor_id
        .map(|v| v.to_string())
        .into_iter()
        .chain(e.lines.iter().map(|l| account_key(&l.account)))
        .collect()
}

fn payment_refs(p: &Payment) -> Vec<String> {
    std::iter::once(p.customer_id.to_string())
        .chain(p.invoice_id.map(|i| i.to_string()))
        .collect()
}

fn refund_refs(r: &Refund) -> Vec<String> {
    r.lines.iter().map(|l| item_key(&l.sku)).collect()
}

/// How soon a transaction can go, when a backlog is more than a round takes: what it names
/// is all in QBO (0), some of it is yet to be tried (1), or QBO refused some of it last round
/// (2). Rounds take the lower ranks of every kind first, so transactions waiting on a refusal
/// never crowd out the rest, and one whose reference is new still gets that reference made.
const RANKS: usize = 3;

struct Ranks<'a> {
    bridge: &'a Bridge,
    refused: BTreeSet<String>,
    /// Whether QBO holds a key, looked up once a round: references repeat across sales.
    posted: HashMap<String, bool>,
}

impl Ranks<'_> {
    /// Orders `docs` by rank (oldest first within one) and counts each rank.
    fn sort<T>(
        &mut self,
        docs: &mut Vec<(DocId, T)>,
        refs: impl Fn(&T) -> Result<Vec<String>, QboError>,
    ) -> Result<[usize; RANKS], QboError> {
        let mut ranked = Vec::with_capacity(docs.len());
        for (id, doc) in std::mem::take(docs) {
            let mut rank = 0;
            for key in refs(&doc)? {
                if self.refused.contains(&key) {
                    rank = 2;
                    break;
                }
                let held = match self.posted.get(&key) {
                    Some(held) => *held,
                    None => {
                        let held = self.bridge.state.posted(&key)?.is_some();
                        self.posted.insert(key, held);
                        held
                    }
                };
                if !held {
                    rank = 1;
                }
            }
            ranked.push((rank, id, doc));
        }
        // Stable: age order holds within a rank.
        ranked.sort_by_key(|(rank, _, _)| *rank);
        let mut counts = [0; RANKS];
        for (rank, id, doc) in ranked {
            counts[rank] += 1;
            docs.push((id, doc));
        }
        Ok(counts)
    }
}

/// How many of each kind a round keeps: every kind's rank 0 first, then rank 1, then 2,
/// until `room` runs out. Each count is a prefix of its kind's ranked list.
fn shares<const N: usize>(counts: &[[usize; RANKS]; N], mut room: usize) -> [usize; N] {
    let mut keep = [0; N];
    for rank in 0..RANKS {
        for (k, c) in keep.iter_mut().zip(counts) {
            let take = c[rank].min(room);
            *k += take;
            room -= take;
        }
    }
    keep
}

/// Keeps the first `keep` of a kind's transactions and puts the rest aside for later rounds.
fn spill<T>(
    docs: &mut Vec<(DocId, T)>,
    doc_type: DocType,
    keep: usize,
    later: &mut Vec<(DocId, DocType)>,
) {
    let keep = keep.min(docs.len());
    later.extend(docs.drain(keep..).map(|(id, _)| (id, doc_type)));
}

fn store(e: tillmesh_node::repo::ReadError) -> QboError {
    QboError::Unavailable(format!("reading the store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_takes_every_kinds_lower_ranks_first() {
        // Sales: 5 ready, 0 untried, 9 behind a refusal; expenses: 0, 2, 0.
        let counts = [[5, 0, 9], [0, 2, 0]];
        assert_eq!(shares(&counts, 3), [3, 0]);
        assert_eq!(shares(&counts, 6), [5, 1]);
        assert_eq!(shares(&counts, 8), [6, 2]);
        assert_eq!(shares(&counts, 100), [14, 2]);
    }
}
