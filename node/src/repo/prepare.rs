//! Preparing new documents on the caller's thread, outside the writer.
//!
//! A sale, a stock adjustment or a new customer only adds a document, and whether it is valid
//! depends on nothing a concurrent write could change (products and customers are never
//! deleted). So it is checked, priced and built here, against a read snapshot, on as many cores
//! as there are callers; the single writer thread then only orders it: next seq, signature,
//! commit. Commands that read and then change a document (void, refund, patch) or that must be
//! unique (a product's SKU) stay in the writer, where they are serialized.

use std::sync::atomic::{AtomicU64, Ordering};

use automerge::{ActorId, AutoCommit};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase};
use serde_json::Value as Json;
use tillmesh_protocol::docmap;
use tillmesh_protocol::schema::{
    Customer, Document, Expense, Invoice, InvoiceLine, InvoiceStatus, LineInput, Party, Payment,
    Product, RingUp, Sale, Settings, StockAdjustment, StockLine, StockPolicy, Tender, Vendor,
};
use tillmesh_protocol::{DeviceId, DocId, DocType};
use tillmesh_protocol::{Money, money::tax_on};

use super::requests::{
    NewCustomer, NewExpense, NewInvoice, NewPayment, NewSale, NewStockAdjustment, NewVendor,
};
use super::{WriteError, new_doc_id, now_ms};
use crate::store::seal::Sealer;
use crate::store::tables::{RIGHTS, SKUS, Sealed, SealedReadOnly, SkuKey, TRANSFERS_OPEN, VIEWS};

/// A document built and checked, ready to be ordered into the log.
pub(crate) struct NewDoc {
    pub id: DocId,
    pub doc_type: DocType,
    pub doc: AutoCommit,
    pub change: Vec<u8>,
    pub view: Json,
}

/// What a prepared command adds: one entry's worth of new documents.
pub(crate) struct Prepared {
    pub primary: DocId,
    pub docs: Vec<NewDoc>,
    /// The receipt number a sale took, so the writer can record the highest one issued.
    pub receipt_seq: Option<u64>,
}

/// What preparing needs to know about this device.
pub(crate) struct Device {
    pub id: DeviceId,
    pub actor: ActorId,
    pub receipt_prefix: String,
    pub settings_id: DocId,
    /// The last receipt number handed out. Numbers are taken only by sales that passed every
    /// check, so only a failed commit (a full disk) can leave a gap.
    pub receipts: AtomicU64,
    /// The membership as of the last commit: the writer publishes, readers and the network's
    /// connection gate watch.
    pub membership: tokio::sync::watch::Sender<std::sync::Arc<tillmesh_protocol::Membership>>,
}

/// A consistent read of the store for one preparation.
pub(crate) struct Snapshot {
    tx: ReadTransaction,
    views: SealedReadOnly<&'static [u8; 16]>,
    skus: SealedReadOnly<SkuKey>,
}

impl Snapshot {
    pub fn open(db: &Database, sealer: &Arc<Sealer>) -> Result<Snapshot, WriteError> {
        let tx = db.begin_read()?;
        Ok(Snapshot {
            views: Sealed::new(tx.open_table(VIEWS)?, sealer),
            skus: Sealed::new(tx.open_table(SKUS)?, sealer),
            tx,
        })
    }

    fn view(&self, id: &DocId) -> Result<Option<Json>, WriteError> {
        match self.views.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| WriteError::Internal(format!("view of {id}: {e}"))),
            None => Ok(None),
        }
    }

    fn typed<T: Document>(&self, id: &DocId, what: &'static str) -> Result<T, WriteError> {
        let view = self.view(id)?.ok_or_else(|| WriteError::NotFound {
            what,
            id: id.to_string(),
        })?;
        if view.get("type").and_then(Json::as_str) != Some(T::TYPE.name()) {
            return Err(WriteError::NotFound {
                what,
                id: id.to_string(),
            });
        }
        docmap::from_view(&view)
            .map_err(|e| WriteError::Conflict(format!("{what} {id} cannot be used: {e}")))
    }

    /// Whether this device holds rights (its own, or given to it and not yet taken) to the
    /// units a sale's strict lines need; the writer judges again, this only spares a receipt
    /// number for a sale that would be refused.
    fn check_rights(&self, device: &Device, sale: &Sale) -> Result<(), WriteError> {
        let mut need: Vec<(DocId, &str, i64)> = Vec::new();
        for l in sale.lines.iter().filter(|l| l.strict) {
            match need.iter_mut().find(|(p, _, _)| *p == l.product_id) {
                Some((_, _, q)) => *q += l.qty,
                None => need.push((l.product_id, &l.sku, l.qty)),
            }
        }
        if need.is_empty() {
            return Ok(());
        }
        let (Ok(rights), Ok(open)) = (
            self.tx.open_table(RIGHTS),
            self.tx.open_table(TRANSFERS_OPEN),
        ) else {
            // A store from before strict products: the writer decides.
            return Ok(());
        };
        let me = device.id.as_bytes();
        for (product, sku, qty) in need {
            let p = product.as_bytes();
            let mut held = rights.get((p, me))?.map(|v| v.value()).unwrap_or(0);
            for item in open.range((me, p, &[0u8; 16])..=(me, p, &[0xffu8; 16]))? {
                held += item?.1.value();
            }
            if held >= qty {
                continue;
            }
            let membership = device.membership.borrow().clone();
            let mut elsewhere = Vec::new();
            for item in rights.range((p, &[0u8; 32])..=(p, &[0xffu8; 32]))? {
                let (k, v) = item?;
                let holder = DeviceId(*k.value().1);
                if holder != device.id && v.value() > 0 {
                    elsewhere.push((super::member_name(&membership, &holder), v.value()));
                }
            }
            return Err(WriteError::out_of_stock(
                product, sku, held, qty, &elsewhere,
            ));
        }
        Ok(())
    }

    fn settings(&self, device: &Device) -> Result<Settings, WriteError> {
        self.typed(&device.settings_id, "mesh settings")
    }

    /// The product a line names, by id or SKU (the lowest id, when two share a SKU).
    fn product(
        &self,
        field: &str,
        id: Option<DocId>,
        sku: Option<&str>,
    ) -> Result<(DocId, Product), WriteError> {
        let by_sku = match sku {
            Some(s) => match self.skus.first_of(s)? {
                Some(id) => Some(id),
                None => {
                    return Err(WriteError::UnknownProduct(format!(
                        "{field}: no product has SKU '{s}'"
                    )));
                }
            },
            None => None,
        };
        let id = match (id, by_sku) {
            (Some(a), Some(b)) if a != b => {
                return Err(WriteError::BadRequest(format!(
                    "{field}: product_id {a} and sku '{}' name different products",
                    sku.unwrap_or("")
                )));
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => {
                return Err(WriteError::BadRequest(format!(
                    "{field}: give a product_id or a sku"
                )));
            }
        };
        match self.typed::<Product>(&id, "product") {
            Ok(p) => Ok((id, p)),
            Err(WriteError::NotFound { .. }) => Err(WriteError::UnknownProduct(format!(
                "{field}: no product has id {id}"
            ))),
            Err(e) => Err(e),
        }
    }
}

fn new_doc<T: Document>(
    device: &Device,
    id: DocId,
    value: &T,
    now: u64,
) -> Result<NewDoc, WriteError> {
    let (doc, change, view) = docmap::create(&device.actor, value, (now / 1000) as i64)?;
    Ok(NewDoc {
        id,
        doc_type: T::TYPE,
        doc,
        change,
        view,
    })
}

pub(crate) fn sale(s: &Snapshot, device: &Device, req: NewSale) -> Result<Prepared, WriteError> {
    let now = now_ms();
    let settings = s.settings(device)?;
    let mut lines = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        let (product_id, product) =
            s.product(&format!("lines[{i}]"), l.product_id, l.sku.as_deref())?;
        lines.push(LineInput {
            product_id,
            product,
            qty: l.qty,
            unit_price_minor: l.unit_price_minor,
        });
    }
    if let Some(c) = req.customer_id {
        s.typed::<Customer>(&c, "customer")?;
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
    let ring = RingUp {
        receipt_number: device.receipt_prefix.clone(),
        till: device.id,
        created_at_ms: now,
        customer_id: req.customer_id,
        lines,
        payments,
        pay_rest,
    };
    let mut sale = Sale::ring_up(ring, &settings)?;
    s.check_rights(device, &sale)?;
    // Checked: only now does the sale take a receipt number.
    let n = device.receipts.fetch_add(1, Ordering::Relaxed) + 1;
    sale.receipt_number = format!("{}-{n:06}", device.receipt_prefix);
    let id = new_doc_id(now);
    Ok(Prepared {
        primary: id,
        docs: vec![new_doc(device, id, &sale, now)?],
        receipt_seq: Some(n),
    })
}

pub(crate) fn stock_adjustment(
    s: &Snapshot,
    device: &Device,
    req: NewStockAdjustment,
) -> Result<Prepared, WriteError> {
    let now = now_ms();
    let settings = s.settings(device)?;
    let mut lines = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        let (product_id, product) =
            s.product(&format!("lines[{i}]"), l.product_id, l.sku.as_deref())?;
        lines.push(StockLine {
            product_id,
            delta: l.delta,
            strict: product.stock_policy == StockPolicy::Strict,
            sku: product.sku,
        });
    }
    let adj = StockAdjustment {
        lines,
        reason: req.reason,
        at_ms: now,
        by: device.id,
    };
    adj.validate(&settings)?;
    let id = new_doc_id(now);
    Ok(Prepared {
        primary: id,
        docs: vec![new_doc(device, id, &adj, now)?],
        receipt_seq: None,
    })
}

pub(crate) fn customer(
    s: &Snapshot,
    device: &Device,
    c: NewCustomer,
) -> Result<Prepared, WriteError> {
    one(device, Customer(party(c)), s)
}

pub(crate) fn vendor(s: &Snapshot, device: &Device, c: NewVendor) -> Result<Prepared, WriteError> {
    one(device, Vendor(party(c)), s)
}

/// A document that stands alone, checked against the mesh settings.
fn one<T: Document>(device: &Device, doc: T, s: &Snapshot) -> Result<Prepared, WriteError> {
    doc.validate(&s.settings(device)?)?;
    let now = now_ms();
    let id = new_doc_id(now);
    Ok(Prepared {
        primary: id,
        docs: vec![new_doc(device, id, &doc, now)?],
        receipt_seq: None,
    })
}

/// Days an invoice may give before payment is due.
const DUE_DAYS_MAX: u32 = 365;
const DAY_MS: u64 = 86_400_000;

pub(crate) fn invoice(
    s: &Snapshot,
    device: &Device,
    req: NewInvoice,
) -> Result<Prepared, WriteError> {
    let now = now_ms();
    let settings = s.settings(device)?;
    s.typed::<Customer>(&req.customer_id, "customer")?;
    let days = req.due_in_days.unwrap_or(30);
    if days > DUE_DAYS_MAX {
        return Err(WriteError::BadRequest(format!(
            "due_in_days: at most {DUE_DAYS_MAX}"
        )));
    }
    let mut lines = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        let field = format!("lines[{i}]");
        let (product_id, p) = s.product(&field, l.product_id, l.sku.as_deref())?;
        let unit = l.unit_price_minor.unwrap_or(p.price.amount_minor);
        let rate = settings.tax_rate(&p.tax_code)?;
        let net = unit
            .checked_mul(l.qty)
            .ok_or_else(|| WriteError::BadRequest(format!("{field}: amount overflows")))?;
        let tax = tax_on(net, rate).map_err(|e| WriteError::BadRequest(format!("{field}: {e}")))?;
        lines.push(InvoiceLine {
            product_id: Some(product_id),
            description: p.name,
            qty: l.qty,
            unit_price_minor: unit,
            tax_code: p.tax_code,
            tax_rate_ppm: rate,
            net_minor: net,
            tax_minor: tax,
        });
    }
    let sum = |f: fn(&InvoiceLine) -> i64| -> Result<i64, WriteError> {
        lines.iter().try_fold(0i64, |a, l| {
            a.checked_add(f(l))
                .ok_or_else(|| WriteError::BadRequest("lines: the total overflows".into()))
        })
    };
    let (subtotal, tax) = (sum(|l| l.net_minor)?, sum(|l| l.tax_minor)?);
    if let Some(n) = &req.number
        && n.chars().count() > INVOICE_NUMBER_CHARS_MAX
    {
        return Err(WriteError::BadRequest(format!(
            "number: is longer than {INVOICE_NUMBER_CHARS_MAX} characters, the most QuickBooks keeps; choose a shorter one"
        )));
    }
    let currency = settings.currency;
    let id = new_doc_id(now);
    let invoice = Invoice {
        number: req
            .number
            .unwrap_or_else(|| format!("INV-{}", &id.to_string()[28..36]).to_uppercase()),
        customer_id: req.customer_id,
        issued_at_ms: now,
        due_at_ms: now + u64::from(days) * DAY_MS,
        lines,
        subtotal: Money::new(subtotal, currency),
        tax: Money::new(tax, currency),
        total: Money::new(subtotal.saturating_add(tax), currency),
        status: InvoiceStatus::Sent,
        ledger: None,
    };
    invoice.validate(&settings)?;
    Ok(Prepared {
        primary: id,
        docs: vec![new_doc(device, id, &invoice, now)?],
        receipt_seq: None,
    })
}

pub(crate) fn payment(
    s: &Snapshot,
    device: &Device,
    req: NewPayment,
) -> Result<Prepared, WriteError> {
    s.typed::<Customer>(&req.customer_id, "customer")?;
    if let Some(i) = req.invoice_id {
        let invoice = s.typed::<Invoice>(&i, "invoice")?;
        if invoice.customer_id != req.customer_id {
            return Err(WriteError::BadRequest(format!(
                "invoice_id: invoice {} is not this customer's",
                invoice.number
            )));
        }
    }
    let currency = s.settings(device)?.currency;
    let payment = Payment {
        customer_id: req.customer_id,
        invoice_id: req.invoice_id,
        amount: Money::new(req.amount_minor, currency),
        method: req.method,
        received_at_ms: now_ms(),
        reference: req.reference,
        ledger: None,
    };
    one(device, payment, s)
}

/// Limits of the accounting package's, enforced where a document is written (not in the
/// schema, which also judges what other nodes wrote): a longer invoice number or account
/// name would be refused when the bridge posts it, long after the customer has the invoice.
const INVOICE_NUMBER_CHARS_MAX: usize = 21;
const ACCOUNT_CHARS_MAX: usize = 100;

pub(crate) fn expense(
    s: &Snapshot,
    device: &Device,
    req: NewExpense,
) -> Result<Prepared, WriteError> {
    if let Some(v) = req.vendor_id {
        s.typed::<Vendor>(&v, "vendor")?;
    }
    if let Some((i, l)) = req
        .lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.account.chars().count() > ACCOUNT_CHARS_MAX)
    {
        return Err(WriteError::BadRequest(format!(
            "lines[{i}].account: '{}' is longer than {ACCOUNT_CHARS_MAX} characters, the most QuickBooks keeps of an account's name; choose a shorter one",
            l.account
        )));
    }
    let currency = s.settings(device)?.currency;
    let total = req.lines.iter().try_fold(0i64, |a, l| {
        a.checked_add(l.amount_minor)
            .ok_or_else(|| WriteError::BadRequest("lines: the total overflows".into()))
    })?;
    let expense = Expense {
        vendor_id: req.vendor_id,
        lines: req.lines,
        total: Money::new(total, currency),
        method: req.method,
        paid_at_ms: now_ms(),
        memo: req.memo.filter(|m| !m.trim().is_empty()),
        ledger: None,
    };
    one(device, expense, s)
}

fn party(c: NewCustomer) -> Party {
    Party {
        given_name: c.given_name,
        family_name: c.family_name,
        company_name: c.company_name,
        email: c.email,
        phone: c.phone,
        notes: c.notes,
        address: c.address,
        ..Party::named(c.display_name)
    }
}
