//! The domain schema: typed values for every document type, their Automerge layout and the rules
//! a shop would expect of them.
//!
//! Every document's root map holds `"type"` and `"schema"` (this crate's [`SCHEMA_VERSION`]) next
//! to the type's fields. Money is integer minor units. Stock levels are derived from the
//! documents that move stock (see [`Product`]), so concurrent sales on different tills add up.
//! The `ledger` map is written only by the QuickBooks bridge and wins over what tills wrote.

mod catalog;
mod finance;
mod party;
mod sale;
mod settings;

pub use catalog::{Product, StockAdjustment, StockLine, StockPolicy, StockTransfer};
pub use finance::{Expense, ExpenseLine, Invoice, InvoiceLine, InvoiceStatus, Payment};
pub use party::{Address, Customer, Party, Vendor};
pub use sale::{
    LineInput, Refund, RefundLine, RefundLineInput, RefundRecord, RefundRecordLine, RingUp, Sale,
    SaleLine, SaleStatus, Tender, VoidInfo,
};
pub use settings::{Settings, TaxRate, check_time_zone};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money, MoneyError};

/// Written into every document; bumped when a document's layout changes incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

/// Bounds that keep one document a sensible size.
pub const LINES_MAX: usize = 500;
pub const QTY_MAX: i64 = 1_000_000;
pub const TEXT_CHARS_MAX: usize = 500;
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocType {
    Settings,
    Product,
    Sale,
    Customer,
    Vendor,
    Invoice,
    Payment,
    Expense,
    StockAdjustment,
    Refund,
    StockTransfer,
}

impl DocType {
    pub const ALL: [DocType; 11] = [
        DocType::Settings,
        DocType::Product,
        DocType::Sale,
        DocType::Customer,
        DocType::Vendor,
        DocType::Invoice,
        DocType::Payment,
        DocType::Expense,
        DocType::StockAdjustment,
        DocType::Refund,
        DocType::StockTransfer,
    ];

    /// The byte used in the entry encoding. Stable forever: never renumber.
    pub fn code(self) -> u8 {
        match self {
            DocType::Settings => 1,
            DocType::Product => 2,
            DocType::Sale => 3,
            DocType::Customer => 4,
            DocType::Vendor => 5,
            DocType::Invoice => 6,
            DocType::Payment => 7,
            DocType::Expense => 8,
            DocType::StockAdjustment => 9,
            DocType::Refund => 10,
            DocType::StockTransfer => 11,
        }
    }

    pub fn from_code(code: u8) -> Option<DocType> {
        DocType::ALL.into_iter().find(|t| t.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            DocType::Settings => "settings",
            DocType::Product => "product",
            DocType::Sale => "sale",
            DocType::Customer => "customer",
            DocType::Vendor => "vendor",
            DocType::Invoice => "invoice",
            DocType::Payment => "payment",
            DocType::Expense => "expense",
            DocType::StockAdjustment => "stock_adjustment",
            DocType::Refund => "refund",
            DocType::StockTransfer => "stock_transfer",
        }
    }

    pub fn from_name(name: &str) -> Option<DocType> {
        DocType::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for DocType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What QuickBooks says about a document. Written only by the bridge; where it disagrees with
/// what tills wrote, it wins in every view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qbo_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_token: Option<String>,
    /// The total QBO holds for a transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Money>,
    /// The tax QBO holds for a transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<Money>,
    /// A customer's or vendor's open balance in QBO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Money>,
    /// An inventory item's quantity on hand in QBO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qty_on_hand: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_at_ms: Option<u64>,
}

/// Why a document value breaks the schema rules. The message is meant for the till's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field} is {got} but must be {expected}: {why}")]
    Mismatch {
        field: String,
        got: String,
        expected: String,
        why: String,
    },
    #[error("payments of {paid} do not cover the total of {total}")]
    Underpaid { paid: String, total: String },
    #[error("{0}")]
    Immutable(String),
    #[error("{0}")]
    Money(#[from] MoneyError),
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn check_text(field: &str, value: &str, required: bool) -> Result<(), SchemaError> {
    if required && value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > TEXT_CHARS_MAX {
        return Err(invalid(
            field,
            format!("is longer than {TEXT_CHARS_MAX} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn check_amount(
    field: &str,
    minor: i64,
    allow_negative: bool,
) -> Result<(), SchemaError> {
    if !allow_negative && minor < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if minor.unsigned_abs() > AMOUNT_MINOR_MAX as u64 {
        return Err(invalid(
            field,
            "is beyond the largest amount tillmesh records",
        ));
    }
    Ok(())
}

pub(crate) fn check_currency(
    field: &str,
    got: Currency,
    expected: Currency,
) -> Result<(), SchemaError> {
    if got != expected {
        return Err(SchemaError::Mismatch {
            field: field.into(),
            got: got.to_string(),
            expected: expected.to_string(),
            why: "the shop trades in one currency".into(),
        });
    }
    Ok(())
}

pub(crate) fn sum_minor(
    field: &str,
    items: impl IntoIterator<Item = i64>,
) -> Result<i64, SchemaError> {
    items
        .into_iter()
        .try_fold(0i64, |acc, x| acc.checked_add(x))
        .ok_or_else(|| invalid(field, "overflows"))
}

pub(crate) fn expect_eq(
    field: &str,
    got: &Money,
    expected_minor: i64,
    why: &str,
) -> Result<(), SchemaError> {
    if got.amount_minor != expected_minor {
        return Err(SchemaError::Mismatch {
            field: field.into(),
            got: got.currency.format_amount(got.amount_minor),
            expected: got.currency.format_amount(expected_minor),
            why: why.into(),
        });
    }
    Ok(())
}

/// Checks a priced line as stored: a sensible quantity and price, `net = unit price × qty`, and
/// the tax its recorded rate gives (rates are the line's own, not today's settings, so a
/// document written before a tax change stays valid).
pub(crate) fn check_priced_line(
    field: &str,
    qty: i64,
    unit_price_minor: i64,
    net_minor: i64,
    tax_minor: i64,
    tax_rate_ppm: u32,
    currency: Currency,
) -> Result<(), SchemaError> {
    if !(1..=QTY_MAX).contains(&qty) {
        return Err(invalid(
            format!("{field}.qty"),
            format!("must be between 1 and {QTY_MAX}"),
        ));
    }
    check_amount(
        &format!("{field}.unit_price_minor"),
        unit_price_minor,
        false,
    )?;
    let net = unit_price_minor
        .checked_mul(qty)
        .ok_or_else(|| invalid(field, "amount overflows"))?;
    expect_eq(
        &format!("{field}.net_minor"),
        &Money::new(net_minor, currency),
        net,
        "unit price × qty",
    )?;
    let tax = crate::money::tax_on(net, tax_rate_ppm)?;
    expect_eq(
        &format!("{field}.tax_minor"),
        &Money::new(tax_minor, currency),
        tax,
        "the line's tax rate",
    )
}

/// A typed document value with a fixed Automerge layout.
pub trait Document: Serialize + DeserializeOwned + Clone {
    const TYPE: DocType;
    /// Checks the rules that hold for any value of this type, given the mesh settings.
    fn validate(&self, settings: &Settings) -> Result<(), SchemaError>;

    fn ledger(&self) -> Option<&Ledger>;
}
