use serde::{Deserialize, Serialize};

use super::{
    DocType, Document, LINES_MAX, Ledger, Product, QTY_MAX, SchemaError, Settings, check_amount,
    check_currency, check_priced_line, check_text, expect_eq, invalid, sum_minor,
};
use crate::ids::{DeviceId, DocId};
use crate::money::{Currency, Money, tax_on};

/// A payment towards a sale: `cash`, `card`, or another method the shop names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tender {
    pub method: String,
    pub amount_minor: i64,
}

impl Tender {
    fn is_cash(&self) -> bool {
        self.method == "cash"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    pub product_id: DocId,
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price_minor: i64,
    pub tax_code: String,
    pub tax_rate_ppm: u32,
    pub net_minor: i64,
    pub tax_minor: i64,
    /// The product is strict (recorded as the till judged it, like the tax rate): the units
    /// are spent from the selling till's rights.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Open,
    Completed,
    Voided,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidInfo {
    pub at_ms: u64,
    pub by: DeviceId,
    pub reason: String,
}

/// What one refund took back from one line of the sale, recorded on the sale so that no line is
/// refunded twice over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecordLine {
    pub line: u32,
    pub qty: i64,
    pub net_minor: i64,
    pub tax_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub refund_id: DocId,
    pub lines: Vec<RefundRecordLine>,
}

/// A sale. Its financial fields never change once completed: a correction is a void or a
/// refund document, as an accountant would book it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub receipt_number: String,
    pub till: DeviceId,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<DocId>,
    pub currency: Currency,
    pub lines: Vec<SaleLine>,
    pub payments: Vec<Tender>,
    pub subtotal: Money,
    pub tax: Money,
    pub total: Money,
    pub paid: Money,
    pub change: Money,
    pub status: SaleStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub void: Option<VoidInfo>,
    /// Always written, even empty: two tills recording their first refund of a sale offline
    /// must both append to one list, not each create a list of their own (one would be lost).
    #[serde(default)]
    pub refunds: Vec<RefundRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

/// One line as the till asks for it, with the product as the node knows it now.
#[derive(Debug, Clone)]
pub struct LineInput {
    pub product_id: DocId,
    pub product: Product,
    pub qty: i64,
    /// A price override (a discount at the till); the catalogue price otherwise.
    pub unit_price_minor: Option<i64>,
}

/// Everything needed to ring up a sale.
#[derive(Debug, Clone)]
pub struct RingUp {
    pub receipt_number: String,
    pub till: DeviceId,
    pub created_at_ms: u64,
    pub customer_id: Option<DocId>,
    pub lines: Vec<LineInput>,
    pub payments: Vec<Tender>,
    /// A method that pays whatever the other payments leave due (a card for the exact total).
    pub pay_rest: Option<String>,
}

impl Sale {
    /// Prices, taxes and totals a sale, and checks it is paid for.
    pub fn ring_up(r: RingUp, settings: &Settings) -> Result<Sale, SchemaError> {
        let currency = settings.currency;
        if r.lines.is_empty() {
            return Err(invalid("lines", "a sale needs at least one line"));
        }
        if r.lines.len() > LINES_MAX {
            return Err(invalid(
                "lines",
                format!("a sale has at most {LINES_MAX} lines"),
            ));
        }
        let mut lines = Vec::with_capacity(r.lines.len());
        for (i, l) in r.lines.into_iter().enumerate() {
            let p = &l.product;
            if !p.active {
                return Err(invalid(
                    format!("lines[{i}]"),
                    format!("product {} ({}) is not for sale", p.sku, p.name),
                ));
            }
            if !(1..=QTY_MAX).contains(&l.qty) {
                return Err(invalid(
                    format!("lines[{i}].qty"),
                    format!("must be between 1 and {QTY_MAX}"),
                ));
            }
            let unit = l.unit_price_minor.unwrap_or(p.price.amount_minor);
            check_amount(&format!("lines[{i}].unit_price_minor"), unit, false)?;
            check_currency(&format!("lines[{i}] price"), p.price.currency, currency)?;
            let rate = settings.tax_rate(&p.tax_code)?;
            let net = unit
                .checked_mul(l.qty)
                .ok_or_else(|| invalid(format!("lines[{i}]"), "amount overflows"))?;
            check_amount(&format!("lines[{i}] amount"), net, false)?;
            lines.push(SaleLine {
                product_id: l.product_id,
                sku: p.sku.clone(),
                name: p.name.clone(),
                qty: l.qty,
                unit_price_minor: unit,
                tax_code: p.tax_code.clone(),
                tax_rate_ppm: rate,
                net_minor: net,
                tax_minor: tax_on(net, rate)?,
                strict: p.stock_policy == super::StockPolicy::Strict,
            });
        }
        let subtotal = sum_minor("subtotal", lines.iter().map(|l| l.net_minor))?;
        let tax = sum_minor("tax", lines.iter().map(|l| l.tax_minor))?;
        let total = subtotal
            .checked_add(tax)
            .ok_or_else(|| invalid("total", "overflows"))?;
        let mut payments = r.payments;
        check_payments(&payments)?;
        if let Some(method) = r.pay_rest {
            let given = sum_minor("payments", payments.iter().map(|p| p.amount_minor))?;
            if given >= total {
                return Err(invalid(
                    "payments",
                    format!("nothing is left for {method} to pay"),
                ));
            }
            payments.push(Tender {
                method,
                amount_minor: total - given,
            });
        }
        let paid = sum_minor("payments", payments.iter().map(|p| p.amount_minor))?;
        let sale = Sale {
            receipt_number: r.receipt_number,
            till: r.till,
            created_at_ms: r.created_at_ms,
            customer_id: r.customer_id,
            currency,
            lines,
            payments,
            subtotal: Money::new(subtotal, currency),
            tax: Money::new(tax, currency),
            total: Money::new(total, currency),
            paid: Money::new(paid, currency),
            change: Money::new(paid - total, currency),
            status: SaleStatus::Completed,
            void: None,
            refunds: Vec::new(),
            ledger: None,
        };
        sale.validate(settings)?;
        Ok(sale)
    }

    /// Units of a line already refunded, across every refund recorded on this sale.
    pub fn refunded_qty(&self, line: usize) -> i64 {
        self.refunded(line).0
    }

    /// What of a line no refund took back: units, net and tax, in minor units.
    pub fn unrefunded(&self, line: usize) -> (i64, i64, i64) {
        let Some(l) = self.lines.get(line) else {
            return (0, 0, 0);
        };
        let (q, n, t) = self.refunded(line);
        (
            l.qty.saturating_sub(q),
            l.net_minor.saturating_sub(n),
            l.tax_minor.saturating_sub(t),
        )
    }

    fn refunded(&self, line: usize) -> (i64, i64, i64) {
        self.refunds
            .iter()
            .flat_map(|r| &r.lines)
            .filter(|l| l.line as usize == line)
            // Saturating: records from other devices are checked by `validate`, which may be
            // the caller of this very sum.
            .fold((0i64, 0i64, 0i64), |(q, n, t), l| {
                (
                    q.saturating_add(l.qty),
                    n.saturating_add(l.net_minor),
                    t.saturating_add(l.tax_minor),
                )
            })
    }

    /// How this sale moves stock: its lines leave the shop. A voided sale gives back only
    /// what no refund took back already: two tills apart may void and refund one sale, and
    /// the refunded units were moved by their refund (restocked or kept out), so the void
    /// moves the rest and the goods come back once, on every node alike.
    pub fn stock_moves(&self) -> Vec<(DocId, i64)> {
        if self.status != SaleStatus::Voided {
            return self.lines.iter().map(|l| (l.product_id, -l.qty)).collect();
        }
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let q = self.refunded_qty(i).min(l.qty);
                (q > 0).then_some((l.product_id, -q))
            })
            .collect()
    }

    /// Whether this sale was voided on one till and refunded on another while they were apart
    /// (either alone is refused where the other is held): a conflict for people to review.
    pub fn voided_and_refunded(&self) -> bool {
        self.void.is_some() && !self.refunds.is_empty()
    }

    /// Checks that `next` is a lawful successor of this sale: financial fields unchanged,
    /// status moving only forward, refunds only appended.
    pub fn check_update(&self, next: &Sale) -> Result<(), SchemaError> {
        let frozen = |what: &str| {
            SchemaError::Immutable(format!(
                "the {what} of completed sale {} cannot change; void it or refund it instead",
                self.receipt_number
            ))
        };
        if self.void.is_none() && next.void.is_some() && self.lines.iter().any(|l| l.strict) {
            // A void gives goods back through the merged sale, whose restock a refund made
            // apart on another till can change after the fact; rights handed out against it
            // could then be spent twice. A refund is its own fact, credited to one till.
            return Err(SchemaError::Immutable(format!(
                "sale {} has lines of strict-stock products and cannot be voided; refund it instead (the units come back to the refunding till's rights)",
                self.receipt_number
            )));
        }
        if self.status != SaleStatus::Open {
            if self.lines != next.lines {
                return Err(frozen("lines"));
            }
            if self.payments != next.payments
                || self.paid != next.paid
                || self.change != next.change
            {
                return Err(frozen("payments"));
            }
            if (self.subtotal, self.tax, self.total, self.currency)
                != (next.subtotal, next.tax, next.total, next.currency)
            {
                return Err(frozen("totals"));
            }
            if (&self.receipt_number, self.till, self.created_at_ms)
                != (&next.receipt_number, next.till, next.created_at_ms)
            {
                return Err(frozen("receipt"));
            }
        }
        let allowed = matches!(
            (self.status, next.status),
            (a, b) if a == b
        ) || matches!(
            (self.status, next.status),
            (SaleStatus::Open, _)
                | (
                    SaleStatus::Completed,
                    SaleStatus::Voided | SaleStatus::Refunded
                )
        );
        if !allowed {
            return Err(SchemaError::Immutable(format!(
                "sale {} cannot go from {:?} to {:?}",
                self.receipt_number, self.status, next.status
            )));
        }
        if next.refunds.len() < self.refunds.len()
            || next.refunds[..self.refunds.len()] != self.refunds[..]
        {
            return Err(SchemaError::Immutable(
                "refunds already recorded on a sale cannot change".into(),
            ));
        }
        Ok(())
    }
}

impl Document for Sale {
    const TYPE: DocType = DocType::Sale;

    fn validate(&self, _settings: &Settings) -> Result<(), SchemaError> {
        // Rules use the rates recorded on each line, not today's settings: a sale rung up before
        // a tax change stays valid.
        let cur = self.currency;
        check_text("receipt_number", &self.receipt_number, true)?;
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(invalid(
                "lines",
                format!("a sale has 1 to {LINES_MAX} lines"),
            ));
        }
        for (i, l) in self.lines.iter().enumerate() {
            check_priced_line(
                &format!("lines[{i}]"),
                l.qty,
                l.unit_price_minor,
                l.net_minor,
                l.tax_minor,
                l.tax_rate_ppm,
                cur,
            )?;
            let (q, n, t) = self.refunded(i);
            if q > l.qty || n > l.net_minor || t > l.tax_minor {
                return Err(invalid(
                    format!("lines[{i}]"),
                    "more refunded than was sold",
                ));
            }
        }
        for (k, r) in self.refunds.iter().enumerate() {
            for rl in &r.lines {
                if rl.line as usize >= self.lines.len() {
                    return Err(invalid(
                        format!("refunds[{k}]"),
                        format!("names line {}, which the sale does not have", rl.line),
                    ));
                }
                if !(1..=QTY_MAX).contains(&rl.qty) || rl.net_minor < 0 || rl.tax_minor < 0 {
                    return Err(invalid(
                        format!("refunds[{k}]"),
                        "refunds units and amounts must be positive",
                    ));
                }
            }
        }
        for (field, m) in [
            ("subtotal", &self.subtotal),
            ("tax", &self.tax),
            ("total", &self.total),
            ("paid", &self.paid),
            ("change", &self.change),
        ] {
            check_currency(field, m.currency, cur)?;
        }
        let subtotal = sum_minor("subtotal", self.lines.iter().map(|l| l.net_minor))?;
        let tax = sum_minor("tax", self.lines.iter().map(|l| l.tax_minor))?;
        expect_eq("subtotal", &self.subtotal, subtotal, "the sum of the lines")?;
        expect_eq("tax", &self.tax, tax, "the sum of the lines' tax")?;
        let total = subtotal
            .checked_add(tax)
            .ok_or_else(|| invalid("total", "overflows"))?;
        expect_eq("total", &self.total, total, "subtotal plus tax")?;
        check_payments(&self.payments)?;
        let paid = sum_minor("payments", self.payments.iter().map(|p| p.amount_minor))?;
        expect_eq("paid", &self.paid, paid, "the sum of the payments")?;
        if self.status != SaleStatus::Open {
            if paid < self.total.amount_minor {
                return Err(SchemaError::Underpaid {
                    paid: self.paid.to_string(),
                    total: self.total.to_string(),
                });
            }
            // `paid >= total >= 0` here (total was checked against the lines): no overflow.
            expect_eq("change", &self.change, paid - total, "paid minus total")?;
            let cash = sum_minor(
                "payments",
                self.payments
                    .iter()
                    .filter(|p| p.is_cash())
                    .map(|p| p.amount_minor),
            )?;
            if self.change.amount_minor > cash {
                return Err(invalid(
                    "payments",
                    "only cash can be overpaid; card and other payments must not exceed the total",
                ));
            }
        }
        if (self.status == SaleStatus::Voided) != self.void.is_some() {
            return Err(invalid(
                "void",
                "a voided sale carries its void record, and only a voided sale does",
            ));
        }
        Ok(())
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

/// Each payment names a method and pays a positive, sensible amount; a sale has a bounded
/// number of them. Checked before any payment is summed.
fn check_payments(payments: &[Tender]) -> Result<(), SchemaError> {
    if payments.len() > LINES_MAX {
        return Err(invalid(
            "payments",
            format!("a sale has at most {LINES_MAX} payments"),
        ));
    }
    for (i, p) in payments.iter().enumerate() {
        check_text(&format!("payments[{i}].method"), &p.method, true)?;
        if p.amount_minor <= 0 {
            return Err(invalid(
                format!("payments[{i}].amount_minor"),
                "must be more than zero",
            ));
        }
        check_amount(
            &format!("payments[{i}].amount_minor"),
            p.amount_minor,
            false,
        )?;
    }
    Ok(())
}

/// One line of a refund as the till asks for it: which line of the sale, how many units.
#[derive(Debug, Clone, Copy)]
pub struct RefundLineInput {
    pub line: usize,
    pub qty: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    pub line: u32,
    pub product_id: DocId,
    pub sku: String,
    pub qty: i64,
    pub net_minor: i64,
    pub tax_minor: i64,
    /// Copied from the sale's line: restocked units of a strict product come back as rights of
    /// the refunding till.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// Money given back against a sale: its own document, never an edit of the sale's amounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub sale_id: DocId,
    pub sale_receipt_number: String,
    pub lines: Vec<RefundLine>,
    pub total: Money,
    pub method: String,
    pub reason: String,
    pub restock: bool,
    pub at_ms: u64,
    pub by: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

impl Refund {
    /// Builds a refund of `lines` (all remaining units when empty) and the record the sale keeps
    /// of it. The last units of a line take back exactly the tax still unrefunded on it, so a
    /// line refunded in parts returns to the cent what was charged.
    #[allow(clippy::too_many_arguments)]
    pub fn against(
        sale: &Sale,
        sale_id: DocId,
        refund_id: DocId,
        lines: &[RefundLineInput],
        method: String,
        reason: String,
        restock: bool,
        at_ms: u64,
        by: DeviceId,
    ) -> Result<(Refund, RefundRecord), SchemaError> {
        match sale.status {
            SaleStatus::Voided => {
                return Err(invalid(
                    "sale",
                    format!(
                        "sale {} is voided; there is nothing to refund",
                        sale.receipt_number
                    ),
                ));
            }
            SaleStatus::Refunded => {
                return Err(invalid(
                    "sale",
                    format!("sale {} is already fully refunded", sale.receipt_number),
                ));
            }
            SaleStatus::Open => {
                return Err(invalid(
                    "sale",
                    format!("sale {} is not completed", sale.receipt_number),
                ));
            }
            SaleStatus::Completed => {}
        }
        check_text("method", &method, true)?;
        check_text("reason", &reason, false)?;
        let wanted: Vec<RefundLineInput> = if lines.is_empty() {
            (0..sale.lines.len())
                .map(|i| RefundLineInput {
                    line: i,
                    qty: sale.lines[i].qty - sale.refunded_qty(i),
                })
                .filter(|l| l.qty > 0)
                .collect()
        } else {
            lines.to_vec()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (k, w) in wanted.iter().enumerate() {
            let Some(l) = sale.lines.get(w.line) else {
                return Err(invalid(
                    format!("lines[{k}].line"),
                    format!("sale {} has no line {}", sale.receipt_number, w.line),
                ));
            };
            if wanted[..k].iter().any(|o| o.line == w.line) {
                return Err(invalid(
                    format!("lines[{k}]"),
                    "names the same sale line twice",
                ));
            }
            let (done_qty, done_net, done_tax) = sale.refunded(w.line);
            let remaining = l.qty - done_qty;
            if w.qty < 1 || w.qty > remaining {
                return Err(invalid(
                    format!("lines[{k}].qty"),
                    format!(
                        "{} of {} can be refunded ({} sold, {} already refunded)",
                        remaining, l.sku, l.qty, done_qty
                    ),
                ));
            }
            // Cumulative: after this refund, k units of the line are back, and together they
            // have returned exactly the tax on k units. Each refund's tax is that minus what was
            // returned before, so rounding never adds up across partial refunds, and the last
            // unit brings the line to exactly what was charged.
            let done_after = done_qty + w.qty;
            let net = l.unit_price_minor * done_after - done_net;
            let tax = tax_on(l.unit_price_minor * done_after, l.tax_rate_ppm)? - done_tax;
            out.push(RefundLine {
                line: w.line as u32,
                product_id: l.product_id,
                sku: l.sku.clone(),
                qty: w.qty,
                net_minor: net,
                tax_minor: tax,
                strict: l.strict,
            });
        }
        if out.is_empty() {
            return Err(invalid("lines", "nothing left to refund on this sale"));
        }
        let total = sum_minor("total", out.iter().map(|l| l.net_minor + l.tax_minor))?;
        let record = RefundRecord {
            refund_id,
            lines: out
                .iter()
                .map(|l| RefundRecordLine {
                    line: l.line,
                    qty: l.qty,
                    net_minor: l.net_minor,
                    tax_minor: l.tax_minor,
                })
                .collect(),
        };
        let refund = Refund {
            sale_id,
            sale_receipt_number: sale.receipt_number.clone(),
            lines: out,
            total: Money::new(total, sale.currency),
            method,
            reason,
            restock,
            at_ms,
            by,
            ledger: None,
        };
        Ok((refund, record))
    }
}

impl Refund {
    /// A refund is a booked fact: what it gives back, against which sale, never changes (only
    /// its reason text and the bridge's ledger may).
    pub fn check_update(&self, next: &Refund) -> Result<(), SchemaError> {
        let fixed = |r: &Refund| {
            (
                r.sale_id,
                r.lines.clone(),
                r.total,
                r.method.clone(),
                r.restock,
                r.at_ms,
                r.by,
            )
        };
        if fixed(self) != fixed(next) {
            return Err(SchemaError::Immutable(format!(
                "refund against sale {} cannot change; record another refund instead",
                self.sale_receipt_number
            )));
        }
        Ok(())
    }

    /// How this refund moves stock: restocked goods come back.
    pub fn stock_moves(&self) -> Vec<(DocId, i64)> {
        if !self.restock {
            return Vec::new();
        }
        self.lines.iter().map(|l| (l.product_id, l.qty)).collect()
    }
}

impl Document for Refund {
    const TYPE: DocType = DocType::Refund;

    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(invalid(
                "lines",
                format!("a refund has 1 to {LINES_MAX} lines"),
            ));
        }
        for (i, l) in self.lines.iter().enumerate() {
            if !(1..=QTY_MAX).contains(&l.qty) {
                return Err(invalid(
                    format!("lines[{i}].qty"),
                    format!("must be between 1 and {QTY_MAX}"),
                ));
            }
            check_amount(&format!("lines[{i}].net_minor"), l.net_minor, false)?;
            check_amount(&format!("lines[{i}].tax_minor"), l.tax_minor, false)?;
        }
        let total = sum_minor(
            "total",
            self.lines.iter().map(|l| l.net_minor + l.tax_minor),
        )?;
        expect_eq("total", &self.total, total, "the sum of the lines")?;
        check_text("method", &self.method, true)?;
        check_text("reason", &self.reason, false)
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut s = Settings::new("Shop", Currency::USD);
        s.tax_rates.insert(
            "TAX".into(),
            super::super::TaxRate {
                name: "Sales tax".into(),
                rate_ppm: 82_500,
            },
        );
        s
    }

    fn product(price: i64, tax: &str) -> Product {
        Product {
            sku: "TEA-1".into(),
            name: "Green tea".into(),
            price: Money::new(price, Currency::USD),
            tax_code: tax.into(),
            active: true,
            opening_stock: 40,
            stock_policy: Default::default(),
            created_by: None,
            low_stock_at: None,
            ledger: None,
        }
    }

    fn ring(lines: Vec<(i64, &str, i64)>, payments: Vec<(&str, i64)>) -> Result<Sale, SchemaError> {
        Sale::ring_up(
            RingUp {
                receipt_number: "T1-000001".into(),
                till: DeviceId([1; 32]),
                created_at_ms: 1,
                customer_id: None,
                lines: lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, (price, tax, qty))| LineInput {
                        product_id: DocId([i as u8; 16]),
                        product: product(price, tax),
                        qty,
                        unit_price_minor: None,
                    })
                    .collect(),
                payments: payments
                    .into_iter()
                    .map(|(m, a)| Tender {
                        method: m.into(),
                        amount_minor: a,
                    })
                    .collect(),
                pay_rest: None,
            },
            &settings(),
        )
    }

    /// Voided on one till while refunded in part on another: the refunded units stay moved
    /// (their refund moved them), the rest come back, so every unit comes back once. The view
    /// the writer reads says the same as the typed sale.
    #[test]
    fn a_voided_sale_gives_back_only_what_no_refund_took() {
        let mut s = ring(
            vec![(350, "NON", 3), (1000, "TAX", 2)],
            vec![("cash", 5000)],
        )
        .unwrap();
        let (a, b) = (DocId([0; 16]), DocId([1; 16]));
        assert_eq!(s.stock_moves(), vec![(a, -3), (b, -2)]);
        s.refunds.push(RefundRecord {
            refund_id: DocId([9; 16]),
            lines: vec![RefundRecordLine {
                line: 0,
                qty: 1,
                net_minor: 350,
                tax_minor: 0,
            }],
        });
        s.status = SaleStatus::Voided;
        s.void = Some(VoidInfo {
            at_ms: 2,
            by: DeviceId([2; 32]),
            reason: "wrong till".into(),
        });
        assert!(s.voided_and_refunded());
        assert_eq!(
            s.stock_moves(),
            vec![(a, -1)],
            "the void moves only the rest"
        );
        let view = serde_json::to_value(&s).unwrap();
        assert_eq!(
            crate::docmap::stock_moves(DocType::Sale, &view),
            s.stock_moves()
        );
        // A plain void gives everything back.
        s.refunds.clear();
        assert!(s.stock_moves().is_empty());
        let view = serde_json::to_value(&s).unwrap();
        assert!(crate::docmap::stock_moves(DocType::Sale, &view).is_empty());
    }

    #[test]
    fn totals_add_up_with_per_line_tax() {
        let s = ring(
            vec![(350, "NON", 2), (1000, "TAX", 1)],
            vec![("cash", 2000)],
        )
        .unwrap();
        assert_eq!(s.subtotal.amount_minor, 1700);
        assert_eq!(s.tax.amount_minor, 83);
        assert_eq!(s.total.amount_minor, 1783);
        assert_eq!(s.change.amount_minor, 217);
        assert_eq!(s.status, SaleStatus::Completed);
    }

    #[test]
    fn refuses_what_a_shop_would_refuse() {
        assert!(matches!(
            ring(vec![(350, "NON", 2)], vec![("cash", 699)]),
            Err(SchemaError::Underpaid { .. })
        ));
        assert!(ring(vec![(350, "NON", 0)], vec![("cash", 700)]).is_err());
        assert!(ring(vec![(350, "NON", -1)], vec![("cash", 700)]).is_err());
        assert!(ring(vec![], vec![("cash", 700)]).is_err());
        assert!(
            ring(vec![(350, "VAT", 1)], vec![("cash", 700)]).is_err(),
            "unknown tax code"
        );
        assert!(
            ring(vec![(350, "NON", 2)], vec![("card", 800)]).is_err(),
            "card overpaid"
        );
        assert!(
            ring(vec![(350, "NON", 2)], vec![("cash", 0), ("card", 700)]).is_err(),
            "zero tender"
        );
        assert!(ring(vec![(350, "NON", 2)], vec![("card", 700)]).is_ok());
    }

    #[test]
    fn completed_sales_are_frozen() {
        let s = ring(vec![(350, "NON", 2)], vec![("cash", 700)]).unwrap();
        let mut edited = s.clone();
        edited.lines[0].qty = 1;
        assert!(matches!(
            s.check_update(&edited),
            Err(SchemaError::Immutable(_))
        ));
        let mut voided = s.clone();
        voided.status = SaleStatus::Voided;
        voided.void = Some(VoidInfo {
            at_ms: 2,
            by: DeviceId([1; 32]),
            reason: "mistake".into(),
        });
        s.check_update(&voided).unwrap();
        let mut back = voided.clone();
        back.status = SaleStatus::Completed;
        assert!(voided.check_update(&back).is_err());
    }

    #[test]
    fn one_unit_at_a_time_never_returns_more_tax_than_was_charged() {
        // 4 × 0.07 at 8.25 %: 2¢ of tax charged; each unit alone would round to 1¢.
        let mut s = ring(vec![(7, "TAX", 4)], vec![("cash", 100)]).unwrap();
        assert_eq!(s.lines[0].tax_minor, 2);
        let mut back = (0, 0);
        for k in 0..4u8 {
            let (r, rec) = Refund::against(
                &s,
                DocId([9; 16]),
                DocId([k; 16]),
                &[RefundLineInput { line: 0, qty: 1 }],
                "cash".into(),
                String::new(),
                true,
                5,
                DeviceId([1; 32]),
            )
            .unwrap();
            r.validate(&settings()).unwrap();
            back = (back.0 + r.lines[0].net_minor, back.1 + r.lines[0].tax_minor);
            assert!(
                back.1 <= 2,
                "after {} units, {}¢ of tax returned",
                k + 1,
                back.1
            );
            s.refunds.push(rec);
            s.validate(&settings()).unwrap();
        }
        assert_eq!(back, (28, 2), "exactly what was charged");
        // 80 × 2.99: 19.73 charged; 79 single refunds and then the last one.
        let mut s = ring(vec![(299, "TAX", 80)], vec![("cash", 30_000)]).unwrap();
        let mut tax_back = 0;
        for k in 0..80u8 {
            let (r, rec) = Refund::against(
                &s,
                DocId([9; 16]),
                DocId([k; 16]),
                &[RefundLineInput { line: 0, qty: 1 }],
                "cash".into(),
                String::new(),
                true,
                5,
                DeviceId([1; 32]),
            )
            .unwrap();
            tax_back += r.lines[0].tax_minor;
            assert!(tax_back <= s.lines[0].tax_minor);
            s.refunds.push(rec);
        }
        assert_eq!(tax_back, s.lines[0].tax_minor);
    }

    #[test]
    fn refund_records_from_elsewhere_are_checked() {
        let s = ring(vec![(350, "NON", 2)], vec![("cash", 700)]).unwrap();
        let record = |line, qty, net, tax| RefundRecord {
            refund_id: DocId([3; 16]),
            lines: vec![RefundRecordLine {
                line,
                qty,
                net_minor: net,
                tax_minor: tax,
            }],
        };
        for bad in [
            record(0, -5, -1750, 0),
            record(7, 1, 350, 0),
            record(0, 1, 9_999, 0),
            record(0, i64::MAX, 0, 0),
        ] {
            let mut cooked = s.clone();
            cooked.refunds.push(bad.clone());
            cooked.refunds.push(bad);
            assert!(cooked.validate(&settings()).is_err());
        }
    }

    #[test]
    fn absurd_payments_are_refused_not_overflowed() {
        assert!(ring(vec![(350, "NON", 1)], vec![("cash", i64::MIN)]).is_err());
        assert!(
            ring(
                vec![(350, "NON", 1)],
                vec![("cash", i64::MAX), ("card", i64::MAX)]
            )
            .is_err()
        );
    }

    #[test]
    fn partial_refunds_return_exactly_what_was_charged() {
        // 3 × 0.99 at 8.25 %: line tax 24.5025 -> 25; one unit's tax 8.1675 -> 8.
        let mut s = ring(vec![(99, "TAX", 3)], vec![("cash", 400)]).unwrap();
        assert_eq!(s.lines[0].tax_minor, 25);
        let mut refunded_tax = 0;
        for k in 0..3u8 {
            let (r, rec) = Refund::against(
                &s,
                DocId([9; 16]),
                DocId([k; 16]),
                &[RefundLineInput { line: 0, qty: 1 }],
                "cash".into(),
                String::new(),
                true,
                5,
                DeviceId([1; 32]),
            )
            .unwrap();
            refunded_tax += r.lines[0].tax_minor;
            s.refunds.push(rec);
            s.validate(&settings()).unwrap();
        }
        assert_eq!(refunded_tax, 25);
        let err = Refund::against(
            &s,
            DocId([9; 16]),
            DocId([7; 16]),
            &[RefundLineInput { line: 0, qty: 1 }],
            "cash".into(),
            String::new(),
            true,
            5,
            DeviceId([1; 32]),
        );
        assert!(err.is_err(), "over-refund must be refused");
    }
}
