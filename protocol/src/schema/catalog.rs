use serde::{Deserialize, Serialize};

use super::{
    DocType, Document, Ledger, QTY_MAX, SchemaError, Settings, check_amount, check_currency,
    check_text, invalid,
};
use crate::ids::{DeviceId, DocId};
use crate::money::Money;

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
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub product_id: DocId,
    pub sku: String,
    /// Units added (positive) or removed (negative).
    pub delta: i64,
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
