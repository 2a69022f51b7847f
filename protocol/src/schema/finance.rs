//! Back-office documents: invoices, payments received, expenses. They replicate and validate like
//! sales; the till API does not create them yet.

use serde::{Deserialize, Serialize};

use super::{
    DocType, Document, LINES_MAX, Ledger, SchemaError, Settings, check_amount, check_currency,
    check_priced_line, check_text, expect_eq, invalid, sum_minor,
};
use crate::ids::DocId;
use crate::money::Money;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<DocId>,
    pub description: String,
    pub qty: i64,
    pub unit_price_minor: i64,
    pub tax_code: String,
    pub tax_rate_ppm: u32,
    pub net_minor: i64,
    pub tax_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Sent,
    Paid,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub number: String,
    pub customer_id: DocId,
    pub issued_at_ms: u64,
    pub due_at_ms: u64,
    pub lines: Vec<InvoiceLine>,
    pub subtotal: Money,
    pub tax: Money,
    pub total: Money,
    pub status: InvoiceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

impl Document for Invoice {
    const TYPE: DocType = DocType::Invoice;

    fn validate(&self, settings: &Settings) -> Result<(), SchemaError> {
        check_text("number", &self.number, true)?;
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(invalid(
                "lines",
                format!("an invoice has 1 to {LINES_MAX} lines"),
            ));
        }
        if self.due_at_ms < self.issued_at_ms {
            return Err(invalid("due_at_ms", "is before the issue date"));
        }
        for (i, l) in self.lines.iter().enumerate() {
            check_text(&format!("lines[{i}].description"), &l.description, true)?;
            check_priced_line(
                &format!("lines[{i}]"),
                l.qty,
                l.unit_price_minor,
                l.net_minor,
                l.tax_minor,
                l.tax_rate_ppm,
                self.total.currency,
            )?;
        }
        for (f, m) in [
            ("subtotal", &self.subtotal),
            ("tax", &self.tax),
            ("total", &self.total),
        ] {
            check_currency(f, m.currency, settings.currency)?;
        }
        let subtotal = sum_minor("subtotal", self.lines.iter().map(|l| l.net_minor))?;
        let tax = sum_minor("tax", self.lines.iter().map(|l| l.tax_minor))?;
        expect_eq("subtotal", &self.subtotal, subtotal, "the sum of the lines")?;
        expect_eq("tax", &self.tax, tax, "the sum of the lines' tax")?;
        expect_eq(
            "total",
            &self.total,
            subtotal
                .checked_add(tax)
                .ok_or_else(|| invalid("total", "overflows"))?,
            "subtotal plus tax",
        )
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

/// Money received from a customer, usually against an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub customer_id: DocId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<DocId>,
    pub amount: Money,
    pub method: String,
    pub received_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

impl Document for Payment {
    const TYPE: DocType = DocType::Payment;

    fn validate(&self, settings: &Settings) -> Result<(), SchemaError> {
        if self.amount.amount_minor <= 0 {
            return Err(invalid("amount", "must be more than zero"));
        }
        check_amount("amount", self.amount.amount_minor, false)?;
        check_currency("amount.currency", self.amount.currency, settings.currency)?;
        check_text("method", &self.method, true)
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpenseLine {
    pub description: String,
    /// The expense account (category) it is booked to, as the accountant names it.
    pub account: String,
    pub amount_minor: i64,
}

/// Money the shop spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expense {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<DocId>,
    pub lines: Vec<ExpenseLine>,
    pub total: Money,
    pub method: String,
    pub paid_at_ms: u64,
    /// What it was for, in the shop's words (QuickBooks' memo); a manager may change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

impl Document for Expense {
    const TYPE: DocType = DocType::Expense;

    fn validate(&self, settings: &Settings) -> Result<(), SchemaError> {
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(invalid(
                "lines",
                format!("an expense has 1 to {LINES_MAX} lines"),
            ));
        }
        for (i, l) in self.lines.iter().enumerate() {
            check_text(&format!("lines[{i}].description"), &l.description, true)?;
            check_text(&format!("lines[{i}].account"), &l.account, true)?;
            check_amount(&format!("lines[{i}].amount_minor"), l.amount_minor, false)?;
        }
        check_currency("total.currency", self.total.currency, settings.currency)?;
        let total = sum_minor("total", self.lines.iter().map(|l| l.amount_minor))?;
        expect_eq("total", &self.total, total, "the sum of the lines")?;
        if let Some(memo) = &self.memo {
            check_text("memo", memo, false)?;
        }
        check_text("method", &self.method, true)
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}
