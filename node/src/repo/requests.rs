//! What a till asks the node to do: the JSON bodies of the local API, also used by the CLI.
//!
//! Unknown fields are refused, so a typo such as `"quantity"` for `"qty"` is an error that
//! names the field instead of a silently different sale.

use serde::{Deserialize, Deserializer, Serialize};
use tillmesh_protocol::schema::Address;
use tillmesh_protocol::{DocId, Money};

/// A field that may be absent (leave as is), `null` (clear it) or a value (set it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub price: Money,
    #[serde(default = "non_taxable")]
    pub tax_code: String,
    #[serde(default)]
    pub stock: i64,
    #[serde(default = "yes")]
    pub active: bool,
    /// `strict`: the stock is held as rights per device and never oversold (see
    /// `tillmesh_protocol::rights`); `track` (the default): the level may go below zero.
    #[serde(default)]
    pub stock_policy: tillmesh_protocol::schema::StockPolicy,
    /// Raise an alert when the level falls to this or below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_stock_at: Option<i64>,
}

/// A change to a product (a manager's or an admin's): only the fields given change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// A new alert threshold, or `null` for none.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub low_stock_at: Option<Option<i64>>,
}

fn non_taxable() -> String {
    "NON".into()
}

fn yes() -> bool {
    true
}

/// A line of a sale: the product by id or by SKU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleLineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<DocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    pub qty: i64,
    /// Overrides the catalogue price for this line (a discount given at the till).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price_minor: Option<i64>,
}

/// A payment. Without an amount it pays the rest of the total (at most one such payment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenderRequest {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSale {
    pub lines: Vec<SaleLineRequest>,
    pub payments: Vec<TenderRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<DocId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidSale {
    #[serde(default)]
    pub reason: String,
}

/// A line to refund: by its index on the sale, or by product (id or SKU).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundLineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<DocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    pub qty: i64,
}

/// A refund. No lines: everything not yet refunded. No method: the sale's first payment method.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundSale {
    #[serde(default)]
    pub lines: Vec<RefundLineRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default)]
    pub reason: String,
    /// Whether the goods go back on the shelf (default: yes).
    #[serde(default = "yes")]
    pub restock: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// A partial update of a customer: only the fields present change; `null` clears one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub given_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub family_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub company_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub email: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub phone: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub notes: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<Option<Address>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockLineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<DocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    pub delta: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewStockAdjustment {
    pub lines: Vec<StockLineRequest>,
    pub reason: String,
}

/// Rights to a strict product's units, given by this device to another member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiveRights {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<DocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The receiving device's id (64 hex characters).
    pub to: tillmesh_protocol::DeviceId,
    pub qty: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTaxRate {
    pub name: String,
    /// Parts per million: 8.25 % is 82500.
    pub rate_ppm: u32,
}

/// A supplier: the same descriptive fields as a customer.
pub type NewVendor = NewCustomer;

/// An invoice to a customer, priced from the catalogue as a sale is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvoice {
    pub customer_id: DocId,
    /// The invoice's number; `INV-` and eight characters of its id when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub lines: Vec<SaleLineRequest>,
    /// Days until payment is due (default 30, at most 365).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_in_days: Option<u32>,
}

/// Money received from a customer, against one of their invoices or on account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPayment {
    pub customer_id: DocId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<DocId>,
    pub amount_minor: i64,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Money the shop paid out, booked to expense accounts by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExpense {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<DocId>,
    pub lines: Vec<tillmesh_protocol::schema::ExpenseLine>,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// A change to an expense's memo (its money never changes in place): `null` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpensePatch {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub memo: Option<Option<String>>,
}
