use serde::{Deserialize, Serialize};

use super::{
    DocType, Document, Ledger, QTY_MAX, SchemaError, Settings, check_amount, check_currency,
    check_text, invalid,
};
use crate::ids::{DeviceId, DocId};
use crate::money::Money;

/// How a product's stock is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockPolicy {
    /// The level is the sum of movements and may go below zero (an alert, not a refusal).
    #[default]
    Track,
    /// The level is held as rights per device (see [`crate::rights`]): a till sells only the
    /// units it holds rights for, so the mesh never sells more than it has, connected or not.
    Strict,
}

impl StockPolicy {
    pub fn is_track(&self) -> bool {
        *self == StockPolicy::Track
    }
}

/// A product in the catalogue.
///
/// Its stock level is not a field that tills overwrite: it is `opening_stock` plus every movement
/// recorded by sales, refunds and stock adjustments ([`Sale::stock_moves`] and friends). Each
/// movement is its own document, so concurrent sales on different tills add up, every node that
/// holds the same documents computes the same level, and a sale never has to touch the product's
/// document (a hot product's history would otherwise make every sale slower).
///
/// [`Sale::stock_moves`]: super::Sale::stock_moves
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub tax_code: String,
    pub active: bool,
    /// Units on hand when the product was added.
    pub opening_stock: i64,
    /// Fixed when the product is made: every sale's verdict depends on it.
    #[serde(default, skip_serializing_if = "StockPolicy::is_track")]
    pub stock_policy: StockPolicy,
    /// The device that made a strict product, and so holds the rights to its opening stock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<DeviceId>,
    /// An alert is raised when the level falls to this or below (and always below zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_stock_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

pub const SKU_CHARS_MAX: usize = 64;
/// Units on hand a product may start with, either way.
pub const OPENING_STOCK_MAX: i64 = 1_000_000_000;

impl Document for Product {
    const TYPE: DocType = DocType::Product;

    fn validate(&self, settings: &Settings) -> Result<(), SchemaError> {
        self.check_fields(settings)?;
        settings.tax_rate(&self.tax_code)?;
        Ok(())
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

impl Product {
    /// Every rule but the tax code's. A product from another device is judged by these alone:
    /// its tax code may have been added to the settings concurrently, so whether the settings
    /// held here know it depends on arrival order, and a verdict must not (every node must
    /// reach the same one). Its tax code is a reference resolved when it is sold, against the
    /// settings then: a till that does not know the code yet refuses the sale and says so,
    /// and the rate a sale used is recorded on its lines. A product made here is checked
    /// whole (`validate`).
    pub fn check_fields(&self, settings: &Settings) -> Result<(), SchemaError> {
        check_text("sku", &self.sku, true)?;
        if self.sku.chars().count() > SKU_CHARS_MAX || self.sku.chars().any(char::is_whitespace) {
            return Err(invalid(
                "sku",
                format!("must be 1 to {SKU_CHARS_MAX} characters without spaces"),
            ));
        }
        check_text("name", &self.name, true)?;
        check_amount("price.amount_minor", self.price.amount_minor, false)?;
        check_currency("price.currency", self.price.currency, settings.currency)?;
        check_text("tax_code", &self.tax_code, true)?;
        if self.opening_stock.unsigned_abs() > OPENING_STOCK_MAX as u64 {
            return Err(invalid(
                "opening_stock",
                format!("must be within ±{OPENING_STOCK_MAX}"),
            ));
        }
        if self.stock_policy == StockPolicy::Strict {
            if self.opening_stock < 0 {
                return Err(invalid(
                    "opening_stock",
                    "a strict product cannot start below zero",
                ));
            }
            if self.created_by.is_none() {
                return Err(invalid(
                    "created_by",
                    "a strict product names the device that holds its opening stock",
                ));
            }
        }
        Ok(())
    }

    /// What never changes once a product exists: its stock policy, who made it and, for a
    /// strict product, its opening stock (rights were handed out against them).
    pub fn check_update(&self, next: &Product) -> Result<(), SchemaError> {
        if self.stock_policy != next.stock_policy {
            return Err(SchemaError::Immutable(format!(
                "the stock policy of product {} is fixed when it is made; make a new product to change it",
                self.sku
            )));
        }
        if self.stock_policy == StockPolicy::Strict
            && (self.created_by, self.opening_stock) != (next.created_by, next.opening_stock)
        {
            return Err(SchemaError::Immutable(format!(
                "the opening stock of strict product {} and the device holding it cannot change; record a stock adjustment instead",
                self.sku
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub product_id: DocId,
    pub sku: String,
    /// Units added (positive) or removed (negative).
    pub delta: i64,
    /// The product is strict: the units move the rights of the device that records them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// A stock count correction or delivery: a record of why stock moved outside a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdjustment {
    pub lines: Vec<StockLine>,
    pub reason: String,
    pub at_ms: u64,
    pub by: DeviceId,
}

impl StockAdjustment {
    /// How this adjustment moves stock: each line's delta.
    pub fn stock_moves(&self) -> Vec<(DocId, i64)> {
        self.lines.iter().map(|l| (l.product_id, l.delta)).collect()
    }
}

impl Document for StockAdjustment {
    const TYPE: DocType = DocType::StockAdjustment;

    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        if self.lines.is_empty() {
            return Err(invalid(
                "lines",
                "a stock adjustment needs at least one line",
            ));
        }
        if self.lines.len() > super::LINES_MAX {
            return Err(invalid(
                "lines",
                format!("more than {} lines", super::LINES_MAX),
            ));
        }
        for (i, l) in self.lines.iter().enumerate() {
            if l.delta == 0 || l.delta.unsigned_abs() > QTY_MAX as u64 {
                return Err(invalid(
                    format!("lines[{i}].delta"),
                    format!("must be non-zero and within ±{QTY_MAX}"),
                ));
            }
        }
        check_text("reason", &self.reason, true)
    }

    fn ledger(&self) -> Option<&Ledger> {
        None
    }
}

/// Rights to units of a strict product, passed from one device to another (see
/// [`crate::rights`]). The giver's rights fall when it signs this; the receiver's rise only
/// when the receiver itself marks it accepted, so every right a device spends was counted in
/// its own log, and every node judges its entries alike in any arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockTransfer {
    pub product_id: DocId,
    pub sku: String,
    pub from: DeviceId,
    pub to: DeviceId,
    pub qty: i64,
    pub at_ms: u64,
    /// Set once, by the receiver, when it takes the rights into its own log (a reclaim's
    /// too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at_ms: Option<u64>,
    /// An admin's reclaim of a revoked device's rights (see [`crate::rights`]): `from` is the
    /// revoked device, and the document's id is [`crate::rights::reclaim_id`], so two admins
    /// reclaiming at once write one document.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reclaim: bool,
}

impl StockTransfer {
    /// Only the acceptance may be added; what was given, by whom and to whom never changes.
    pub fn check_update(&self, next: &StockTransfer) -> Result<(), SchemaError> {
        let fixed = |t: &StockTransfer| (t.product_id, t.from, t.to, t.qty, t.at_ms, t.reclaim);
        if fixed(self) != fixed(next)
            || (self.accepted_at_ms.is_some() && self.accepted_at_ms != next.accepted_at_ms)
        {
            return Err(SchemaError::Immutable(format!(
                "a transfer of {} rights cannot change once made; only its receiver accepts it, once",
                self.sku
            )));
        }
        Ok(())
    }
}

impl Document for StockTransfer {
    const TYPE: DocType = DocType::StockTransfer;

    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        if self.from == self.to {
            return Err(invalid("to", "a device cannot pass rights to itself"));
        }
        if !(1..=QTY_MAX).contains(&self.qty) {
            return Err(invalid("qty", format!("must be between 1 and {QTY_MAX}")));
        }
        check_text("sku", &self.sku, true)
    }

    fn ledger(&self) -> Option<&Ledger> {
        None
    }
}
