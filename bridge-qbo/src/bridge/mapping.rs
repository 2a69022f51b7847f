//! What each mesh document becomes in QBO: the bodies of the creates.
//!
//! Products become Items (named by SKU, the mesh's unique key), customers and vendors
//! Customers and Vendors, closed sales SalesReceipts (or summary receipts), refunds
//! RefundReceipts, invoices Invoices, payments Payments linked to their invoice, expenses
//! Purchases booked to expense accounts made by name. Every transaction carries a
//! `PrivateNote` naming its document, by which it is found again.

use std::collections::BTreeMap;

use serde_json::json;
use tillmesh_protocol::DocId;
use tillmesh_protocol::schema::{Expense, Invoice, Party, Payment, Refund, Sale};

use super::client::QboError;
use super::intents::{Create, Find};
use super::{Bridge, amounts, dates};

/// QBO's longest `DocNumber`.
pub(super) const DOC_NUMBER_CHARS_MAX: usize = 21;
pub(super) const DAY_MS: u64 = 86_400_000;

impl Bridge {
    pub(super) fn receipt_create(&self, id: DocId, sale: &Sale) -> Result<Create, QboError> {
        let mut lines = Vec::new();
        for l in &sale.lines {
            let item = self.item_id(&l.sku)?;
            lines.push(json!({
                "Amount": self.amount(l.net_minor),
                "Description": l.name,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": item},
                    "Qty": l.qty,
                    "UnitPrice": self.amount(l.unit_price_minor),
                    "TaxCodeRef": {"value": if l.tax_minor != 0 { "TAX" } else { "NON" }},
                },
            }));
        }
        let note = format!("tillmesh sale {id}");
        let mut body = json!({
            "DocNumber": sale.receipt_number,
            "TxnDate": self.date(sale.created_at_ms),
            "PrivateNote": note,
            "Line": lines,
            "TxnTaxDetail": {"TotalTax": self.amount(sale.tax.amount_minor)},
        });
        if let Some(customer) = sale.customer_id {
            body["CustomerRef"] = json!({"value": self.qbo_id(&customer.to_string())?});
        }
        Ok(Create {
            key: id.to_string(),
            covers: Vec::new(),
            entity: "SalesReceipt".into(),
            body,
            find: Find::Note {
                field: "DocNumber".into(),
                number: sale.receipt_number.clone(),
                note,
            },
        })
    }

    pub(super) async fn refund_create(
        &self,
        id: DocId,
        refund: &Refund,
    ) -> Result<Create, QboError> {
        let mut lines = Vec::new();
        for l in &refund.lines {
            let unit = if l.qty != 0 { l.net_minor / l.qty } else { 0 };
            lines.push(json!({
                "Amount": self.amount(l.net_minor),
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": self.item_id(&l.sku)?},
                    "Qty": l.qty,
                    "UnitPrice": self.amount(unit),
                    "TaxCodeRef": {"value": if l.tax_minor != 0 { "TAX" } else { "NON" }},
                },
            }));
        }
        let tax: i64 = refund.lines.iter().map(|l| l.tax_minor).sum();
        let doc_number = last_chars(
            &format!("{}-R", refund.sale_receipt_number),
            DOC_NUMBER_CHARS_MAX,
        );
        let note = format!("tillmesh refund {id} of sale {}", refund.sale_id);
        let mut body = json!({
            "DocNumber": doc_number,
            "TxnDate": self.date(refund.at_ms),
            "PrivateNote": note,
            "Line": lines,
            "TxnTaxDetail": {"TotalTax": self.amount(tax)},
            "DepositToAccountRef": {"value": self.account("Bank").await?},
        });
        if let Ok(Some(sale)) = self.repo.get::<Sale>(&refund.sale_id)
            && let Some(customer) = sale.customer_id
            && let Some(p) = self.state.posted(&customer.to_string())?
        {
            body["CustomerRef"] = json!({"value": p.qbo_id});
        }
        Ok(Create {
            key: id.to_string(),
            covers: Vec::new(),
            entity: "RefundReceipt".into(),
            body,
            find: Find::Note {
                field: "DocNumber".into(),
                number: doc_number,
                note,
            },
        })
    }

    pub(super) fn invoice_create(
        &self,
        id: DocId,
        invoice: &Invoice,
        skus: &BTreeMap<DocId, String>,
    ) -> Result<Create, QboError> {
        let mut lines = Vec::new();
        for l in &invoice.lines {
            let mut detail = json!({
                "Qty": l.qty,
                "UnitPrice": self.amount(l.unit_price_minor),
                "TaxCodeRef": {"value": if l.tax_minor != 0 { "TAX" } else { "NON" }},
            });
            if let Some(sku) = l.product_id.and_then(|p| skus.get(&p)) {
                detail["ItemRef"] = json!({"value": self.item_id(sku)?});
            }
            lines.push(json!({
                "Amount": self.amount(l.net_minor),
                "Description": l.description,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": detail,
            }));
        }
        let note = format!("tillmesh invoice {id}");
        Ok(Create {
            key: id.to_string(),
            covers: Vec::new(),
            entity: "Invoice".into(),
            body: json!({
                "DocNumber": invoice.number,
                "TxnDate": self.date(invoice.issued_at_ms),
                "DueDate": self.date(invoice.due_at_ms),
                "CustomerRef": {"value": self.qbo_id(&invoice.customer_id.to_string())?},
                "PrivateNote": note,
                "Line": lines,
                "TxnTaxDetail": {"TotalTax": self.amount(invoice.tax.amount_minor)},
            }),
            find: Find::Note {
                field: "DocNumber".into(),
                number: invoice.number.clone(),
                note,
            },
        })
    }

    pub(super) fn payment_create(&self, id: DocId, payment: &Payment) -> Result<Create, QboError> {
        let number = payment
            .reference
            .clone()
            .filter(|r| !r.is_empty() && r.chars().count() <= DOC_NUMBER_CHARS_MAX)
            .unwrap_or_else(|| short_number("PAY", id));
        let note = format!("tillmesh payment {id}");
        let mut body = json!({
            "CustomerRef": {"value": self.qbo_id(&payment.customer_id.to_string())?},
            "TotalAmt": self.amount(payment.amount.amount_minor),
            "TxnDate": self.date(payment.received_at_ms),
            "PaymentRefNum": number,
            "PrivateNote": note,
        });
        if let Some(invoice) = payment.invoice_id {
            body["Line"] = json!([{
                "Amount": self.amount(payment.amount.amount_minor),
                "LinkedTxn": [{"TxnId": self.qbo_id(&invoice.to_string())?, "TxnType": "Invoice"}],
            }]);
        }
        Ok(Create {
            key: id.to_string(),
            covers: Vec::new(),
            entity: "Payment".into(),
            body,
            // Payments are found by day and note: QBO does not filter on `PaymentRefNum`.
            find: Find::Note {
                field: "TxnDate".into(),
                number: self.date(payment.received_at_ms),
                note,
            },
        })
    }

    pub(super) async fn expense_create(
        &self,
        id: DocId,
        expense: &Expense,
    ) -> Result<Create, QboError> {
        let mut lines = Vec::new();
        for l in &expense.lines {
            lines.push(json!({
                "Amount": self.amount(l.amount_minor),
                "Description": l.description,
                "DetailType": "AccountBasedExpenseLineDetail",
                "AccountBasedExpenseLineDetail": {
                    "AccountRef": {"value": self.qbo_id(&account_key(&l.account))?},
                },
            }));
        }
        // Paid by card from the company's credit card account if it has one; anything else
        // (and a card, when it has none) as cash from its bank account.
        let card = if expense.method == "card" {
            self.account("Credit Card").await.ok()
        } else {
            None
        };
        let (payment_type, account) = match card {
            Some(a) => ("CreditCard", a),
            None => ("Cash", self.account("Bank").await?),
        };
        let number = short_number("EXP", id);
        let note = expense_tag(id);
        let mut body = json!({
            "PaymentType": payment_type,
            "AccountRef": {"value": account},
            "DocNumber": number,
            "TxnDate": self.date(expense.paid_at_ms),
            "PrivateNote": memo_note(expense.memo.as_deref(), id),
            "Line": lines,
        });
        if let Some(vendor) = expense.vendor_id {
            body["EntityRef"] =
                json!({"value": self.qbo_id(&vendor.to_string())?, "type": "Vendor"});
        }
        Ok(Create {
            key: id.to_string(),
            covers: Vec::new(),
            entity: "Purchase".into(),
            body,
            find: Find::Note {
                field: "DocNumber".into(),
                number,
                note,
            },
        })
    }

    pub(super) fn summary_create(
        &self,
        index: u64,
        period_ms: u64,
        n: u64,
        sales: &[(DocId, &Sale)],
    ) -> Result<Create, QboError> {
        // One line per item, price and tax: QBO wants a line's amount to be its price × qty.
        let mut lines: BTreeMap<(String, i64, bool), (String, i64, i64)> = BTreeMap::new();
        let mut tax = 0i64;
        for (_, s) in sales {
            for l in &s.lines {
                let e = lines
                    .entry((l.sku.clone(), l.unit_price_minor, l.tax_minor != 0))
                    .or_insert((l.name.clone(), 0, 0));
                e.1 += l.qty;
                e.2 += l.net_minor;
            }
            tax += s.tax.amount_minor;
        }
        let mut body_lines = Vec::new();
        for ((sku, unit, taxed), (name, qty, net)) in &lines {
            body_lines.push(json!({
                "Amount": self.amount(*net),
                "Description": name,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": self.item_id(sku)?},
                    "Qty": qty,
                    "UnitPrice": self.amount(*unit),
                    "TaxCodeRef": {"value": if *taxed { "TAX" } else { "NON" }},
                },
            }));
        }
        // The index counts periods of the shop's own clock (see `summaries`): its start, read
        // as if it were UTC, is the shop's local date.
        let day = dates::local_date(index * period_ms, &jiff::tz::TimeZone::UTC);
        let number = if period_ms == DAY_MS {
            format!("DAY-{}-{n}", day.replace('-', ""))
        } else {
            format!("SUM-{index}-{n}")
        };
        let key = format!("summary/{index}/{n}");
        // The first sale's id makes the note this summary's alone, whatever its number.
        let first = sales
            .first()
            .map(|(id, _)| id.to_string())
            .unwrap_or_default();
        let note = format!("tillmesh {key}: {} sales from {first}", sales.len());
        Ok(Create {
            key,
            entity: "SalesReceipt".into(),
            body: json!({
                "DocNumber": number,
                "TxnDate": day,
                "PrivateNote": note,
                "Line": body_lines,
                "TxnTaxDetail": {"TotalTax": self.amount(tax)},
            }),
            find: Find::Note {
                field: "DocNumber".into(),
                number,
                note,
            },
            covers: sales.iter().map(|(id, _)| id.to_string()).collect(),
        })
    }

    /// A refund receipt that takes a summarized sale back out of the books.
    pub(super) async fn void_correction_create(
        &self,
        id: DocId,
        sale: &Sale,
    ) -> Result<Option<Create>, QboError> {
        // What no refund took back: a sale voided on one till while another refunded part of
        // it keeps the refund, and the void returns only the rest. Nothing left, nothing to do.
        let mut lines = Vec::new();
        let mut tax_minor = 0i64;
        for (i, l) in sale.lines.iter().enumerate() {
            let (qty, net_minor, line_tax_minor) = sale.unrefunded(i);
            if qty <= 0 {
                continue;
            }
            tax_minor = tax_minor.saturating_add(line_tax_minor);
            lines.push(json!({
                "Amount": self.amount(net_minor),
                "Description": l.name,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": self.item_id(&l.sku)?},
                    "Qty": qty,
                    "UnitPrice": self.amount(l.unit_price_minor),
                    "TaxCodeRef": {"value": if l.tax_minor != 0 { "TAX" } else { "NON" }},
                },
            }));
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let number = last_chars(&format!("{}-V", sale.receipt_number), DOC_NUMBER_CHARS_MAX);
        let note = format!("tillmesh void of sale {id}");
        Ok(Some(Create {
            key: format!("void/{id}"),
            entity: "RefundReceipt".into(),
            body: json!({
                "DocNumber": number,
                "TxnDate": self.date(sale.void.as_ref().map_or(sale.created_at_ms, |v| v.at_ms)),
                "PrivateNote": note,
                "Line": lines,
                "TxnTaxDetail": {"TotalTax": self.amount(tax_minor)},
                "DepositToAccountRef": {"value": self.account("Bank").await?},
            }),
            find: Find::Note {
                field: "DocNumber".into(),
                number,
                note,
            },
            covers: Vec::new(),
        }))
    }

    /// The name a party goes to QuickBooks under: its own, unless another record was found
    /// to hold it (then [`distinct_name`], noted in `bridge.redb`). Renamed in the mesh since,
    /// it tries its new name first.
    pub(super) fn party_name(&self, id: DocId, p: &Party) -> Result<String, QboError> {
        let distinct = distinct_name(&p.display_name, id);
        let noted = self.state.note(&party_name_key(&id.to_string()))?;
        Ok(if noted.as_deref() == Some(distinct.as_str()) {
            distinct
        } else {
            p.display_name.clone()
        })
    }

    pub(super) fn item_id(&self, sku: &str) -> Result<String, QboError> {
        self.qbo_id(&item_key(sku))
    }

    pub(super) fn qbo_id(&self, key: &str) -> Result<String, QboError> {
        self.state
            .posted(key)?
            .map(|p| p.qbo_id)
            .ok_or_else(|| QboError::Unavailable(format!("{key} is not in QuickBooks yet")))
    }
}

/// The line of a purchase's `PrivateNote` (its memo in QuickBooks) that names its expense,
/// by which it is found again.
pub(super) fn expense_tag(id: DocId) -> String {
    format!("tillmesh expense {id}")
}

/// A purchase's `PrivateNote`: the expense's memo, then the line that names it.
pub(super) fn memo_note(memo: Option<&str>, id: DocId) -> String {
    match memo.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{m}\n{}", expense_tag(id)),
        None => expense_tag(id),
    }
}

/// The memo in a purchase's `PrivateNote`: all but the line that names its expense.
pub(super) fn memo_of(note: &str) -> Option<String> {
    let memo = note
        .lines()
        .filter(|l| !l.trim_start().starts_with("tillmesh expense "))
        .collect::<Vec<_>>()
        .join("\n");
    let memo = memo.trim();
    (!memo.is_empty()).then(|| memo.to_owned())
}

/// The last `n` characters: a number's distinguishing end, where QBO allows fewer.
pub(super) fn last_chars(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

/// Where a party's QuickBooks name is kept when it is not its own.
pub(super) fn party_name_key(key: &str) -> String {
    format!("name/{key}")
}

pub(super) fn item_key(sku: &str) -> String {
    format!("item/{sku}")
}

pub(super) fn account_key(name: &str) -> String {
    format!("account/{name}")
}

/// An expense account the shop books to, by name (QBO's account names are unique).
pub(super) fn account_create(name: &str) -> Create {
    Create {
        key: account_key(name),
        covers: Vec::new(),
        entity: "Account".into(),
        body: json!({ "Name": name, "AccountType": "Expense" }),
        find: Find::Name {
            field: "Name".into(),
            value: name.into(),
        },
    }
}

/// A short, fixed number for a document that has none of its own: QBO's numbers are at most
/// 21 characters.
pub(super) fn short_number(prefix: &str, id: DocId) -> String {
    format!("{prefix}-{}", &id.to_string()[28..36]).to_uppercase()
}

pub(super) fn item_create(
    sku: &str,
    name: &str,
    unit_minor: i64,
    currency: tillmesh_protocol::Currency,
    income_account: &str,
    active: bool,
) -> Create {
    Create {
        key: item_key(sku),
        covers: Vec::new(),
        entity: "Item".into(),
        body: json!({
            "Name": sku, "Sku": sku, "Description": name, "Type": "NonInventory",
            "UnitPrice": amounts::to_qbo(unit_minor, currency),
            "IncomeAccountRef": {"value": income_account},
            "Active": active,
        }),
        find: Find::Name {
            field: "Name".into(),
            value: sku.into(),
        },
    }
}

/// QBO's longest `DisplayName`.
const DISPLAY_NAME_CHARS_MAX: usize = 500;

/// Whether QuickBooks takes two names for the same: it ignores case and surrounding spaces.
pub(super) fn same_name(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// The name a customer or vendor takes in QuickBooks when another record holds its own
/// (QBO's names are unique; the mesh's are not): its name and the end of its id, the same
/// on every try and every bridge.
pub(super) fn distinct_name(name: &str, id: DocId) -> String {
    let id = id.to_string();
    let tag = id[id.len() - 6..].to_uppercase();
    let base: String = name
        .trim()
        .chars()
        .take(DISPLAY_NAME_CHARS_MAX - tag.len() - 3)
        .collect();
    format!("{base} ({tag})")
}

/// A customer or a vendor (QBO's names are unique across both, and employees), under `name`:
/// its own, or [`distinct_name`] once another record was found to hold that.
pub(super) fn party_create(entity: &str, id: DocId, p: &Party, name: &str) -> Create {
    // The mesh keeps up to 500 characters of each; QBO refuses (2050) more than the lengths
    // here. Descriptive fields are clipped, and an email too long to be real is left out,
    // rather than hold the customer back; the name, by which she is found, fits as it is.
    let clip = |v: &str, n: usize| v.chars().take(n).collect::<String>();
    let mut body = json!({ "DisplayName": name });
    for (field, value, max) in [
        ("GivenName", &p.given_name, 100),
        ("FamilyName", &p.family_name, 100),
        ("CompanyName", &p.company_name, 100),
        ("Notes", &p.notes, 2000),
    ] {
        if let Some(v) = value {
            body[field] = json!(clip(v, max));
        }
    }
    if let Some(e) = p.email.as_ref().filter(|e| e.chars().count() <= 100) {
        body["PrimaryEmailAddr"] = json!({ "Address": e });
    }
    if let Some(phone) = &p.phone {
        body["PrimaryPhone"] = json!({ "FreeFormNumber": clip(phone, 30) });
    }
    Create {
        key: id.to_string(),
        covers: Vec::new(),
        entity: entity.into(),
        body,
        find: Find::Name {
            field: "DisplayName".into(),
            value: name.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_rides_in_the_note_beside_the_expense_it_names() {
        let id = DocId::new_v7(0, [3; 10]);
        let note = memo_note(Some("tea for the week"), id);
        assert!(note.contains(&expense_tag(id)));
        assert_eq!(memo_of(&note).as_deref(), Some("tea for the week"));
        assert_eq!(memo_of(&memo_note(None, id)), None);
        assert_eq!(memo_of(&memo_note(Some("  "), id)), None);
    }

    #[test]
    fn names_compare_as_quickbooks_compares_them() {
        assert!(same_name(" Amy Lee ", "AMY LEE"));
        assert!(!same_name("Amy Lee", "Amy  Lee"));
        let id = DocId::new_v7(0, [7; 10]);
        let a = distinct_name("Amy Lee", id);
        assert_eq!(a, distinct_name("Amy Lee", id), "stable");
        assert!(a.starts_with("Amy Lee (") && a.ends_with(')'), "{a}");
        assert_ne!(a, distinct_name("Amy Lee", DocId::new_v7(0, [8; 10])));
        assert_eq!(distinct_name(&"x".repeat(600), id).chars().count(), 500);
    }

    #[test]
    fn a_party_fits_the_lengths_quickbooks_keeps() {
        let p: Party = serde_json::from_value(json!({
            "display_name": "Amy",
            "given_name": "G".repeat(300),
            "email": format!("{}@example.com", "a".repeat(200)),
            "phone": "5".repeat(40),
        }))
        .unwrap();
        let c = party_create("Customer", DocId::new_v7(0, [0; 10]), &p, &p.display_name);
        assert_eq!(c.body["DisplayName"], "Amy");
        assert_eq!(c.body["GivenName"].as_str().unwrap().len(), 100);
        assert_eq!(
            c.body["PrimaryPhone"]["FreeFormNumber"]
                .as_str()
                .unwrap()
                .len(),
            30
        );
        assert!(c.body.get("PrimaryEmailAddr").is_none(), "{}", c.body);
    }
}
