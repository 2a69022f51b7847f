//! Edits, both ways, of the records the mesh and QuickBooks both change: customers, vendors,
//! items, and an expense's memo. The mesh's money never changes in place (a correction is a
//! new document), so only these have edits to carry.
//!
//! Each posted record keeps in `bridge.redb` the fields as both sides last agreed: the base
//! ([`Posted::fields`]). Then, field by field:
//! - changed in the mesh only: a sparse update goes to QuickBooks under the SyncToken the
//!   bridge last saw;
//! - changed in QuickBooks (whatever the mesh did): QuickBooks' value comes into the mesh. It
//!   wins where both changed, as it does on money;
//! - a stale SyncToken (5010) means QuickBooks changed since the bridge last looked: the record
//!   is read and merged as above, and what the mesh still holds of its own goes in the next
//!   round, under the new SyncToken.
//!
//! Both sides end equal. An update is a write of values, not a create: sending it twice sets
//! the same values, so it needs no `requestid`.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{CustomerPatch, ExpensePatch, ProductPatch};
use tillmesh_protocol::schema::TEXT_CHARS_MAX;
use tillmesh_protocol::schema::{Customer, Expense, Product, Vendor};
use tillmesh_protocol::{Currency, DocId, DocType, Money};

use super::client::QboError;
use super::mapping::{self, item_create, party_create, party_name_key};
use super::state::{Fields, Posted};
use super::{Bridge, amounts};

/// The fields of a customer or vendor the mesh and QuickBooks both edit, by their name here
/// and their path in QuickBooks' record.
const PARTY_FIELDS: [(&str, &[&str]); 7] = [
    ("DisplayName", &["DisplayName"]),
    ("GivenName", &["GivenName"]),
    ("FamilyName", &["FamilyName"]),
    ("CompanyName", &["CompanyName"]),
    ("Notes", &["Notes"]),
    ("Email", &["PrimaryEmailAddr", "Address"]),
    ("Phone", &["PrimaryPhone", "FreeFormNumber"]),
];

/// The fields of a QuickBooks-shaped record (a create's body, or QuickBooks' own) that the
/// merge compares, in the mesh's terms: an empty text is no value, money is minor units.
/// `None` for records with nothing edited both ways.
pub(super) fn fields_of(entity: &str, row: &Value, currency: Currency) -> Option<Fields> {
    // As the mesh keeps text (at most 500 characters, no control characters but new lines),
    // so a value QuickBooks holds and the mesh cannot is not read as changed for ever.
    let text = |v: &Value| match v.as_str().map(str::trim) {
        Some("") | None => Value::Null,
        Some(s) => json!(
            s.chars()
                .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
                .take(TEXT_CHARS_MAX)
                .collect::<String>()
                .trim()
        ),
    };
    match entity {
        "Customer" | "Vendor" => Some(
            PARTY_FIELDS
                .iter()
                .map(|(name, path)| {
                    let v = path.iter().fold(row, |v, p| &v[*p]);
                    ((*name).to_owned(), text(v))
                })
                .collect(),
        ),
        // Only the memo: a purchase's money is QuickBooks' (pulled into the ledger).
        "Purchase" => Some(BTreeMap::from([(
            "Memo".to_owned(),
            row["PrivateNote"]
                .as_str()
                .and_then(mapping::memo_of)
                .map_or(Value::Null, Value::from),
        )])),
        "Item" => Some(BTreeMap::from([
            ("Description".to_owned(), text(&row["Description"])),
            (
                "UnitPrice".to_owned(),
                // QuickBooks keeps finer prices than the currency's minor unit; the mesh, the
                // nearest one (else each side would read the other as changed for ever).
                amounts::from_qbo_nearest(&row["UnitPrice"], currency)
                    .map_or(Value::Null, Value::from),
            ),
            // A record says `Active: false` to be inactive; no word is active.
            ("Active".to_owned(), json!(row["Active"] != false)),
        ])),
        _ => None,
    }
}

/// A sparse update of `changed` fields of the record posted for `doc`, in QuickBooks' shape.
fn sparse_update(
    entity: &str,
    doc: DocId,
    posted: &Posted,
    changed: &Fields,
    currency: Currency,
) -> Value {
    let mut body = json!({"Id": posted.qbo_id, "SyncToken": posted.sync_token, "sparse": true});
    for (name, value) in changed {
        if name == "Memo" {
            // The note keeps the line that names the expense, by which it is found.
            body["PrivateNote"] = json!(mapping::memo_note(value.as_str(), doc));
            continue;
        }
        let path: &[&str] = match entity {
            "Item" => &[],
            _ => PARTY_FIELDS
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[], |(_, p)| *p),
        };
        // QuickBooks clears a text sent empty.
        let wire = match (name.as_str(), value) {
            ("UnitPrice", Value::Number(n)) => amounts::to_qbo(n.as_i64().unwrap_or(0), currency),
            (_, Value::Null) => json!(""),
            (_, v) => v.clone(),
        };
        match path {
            [outer, inner] => body[*outer] = json!({ *inner: wire }),
            _ => body[name.as_str()] = wire,
        }
    }
    body
}

/// The fields that differ between two sets, with `to`'s values. Names compare as QuickBooks
/// compares them: "AMY LEE" is the name "Amy Lee" already.
fn changed(from: &Fields, to: &Fields) -> Fields {
    to.iter()
        .filter(|(k, v)| match (k.as_str(), from.get(*k)) {
            ("DisplayName", Some(Value::String(a))) => {
                !v.as_str().is_some_and(|b| mapping::same_name(a, b))
            }
            (_, before) => before != Some(*v),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A record whose mesh document changed since both sides last agreed.
pub(super) struct Edit {
    pub key: String,
    pub doc_id: DocId,
    pub posted: Posted,
    /// The mesh's fields now.
    pub mesh: Fields,
}

impl Bridge {
    /// The fields of a mesh document as QuickBooks would hold them.
    pub(super) fn mesh_fields(&self, id: DocId, doc: &MeshRecord) -> Result<Fields, QboError> {
        let currency = self.books().currency;
        let body = match doc {
            MeshRecord::Customer(c) => {
                party_create("Customer", id, &c.0, &self.party_name(id, &c.0)?).body
            }
            MeshRecord::Vendor(v) => {
                party_create("Vendor", id, &v.0, &self.party_name(id, &v.0)?).body
            }
            MeshRecord::Product(p) => {
                item_create(
                    &p.sku,
                    &p.name,
                    p.price.amount_minor,
                    currency,
                    "",
                    p.active,
                )
                .body
            }
            MeshRecord::Expense(e) => {
                json!({"PrivateNote": mapping::memo_note(e.memo.as_deref(), id)})
            }
        };
        Ok(fields_of(doc.entity(), &body, currency).unwrap_or_default())
    }

    /// Whether a posted record's mesh document holds fields QuickBooks has not been sent. A
    /// record posted before the base was kept takes the mesh's fields as its base.
    pub(super) fn edit_of(
        &self,
        key: &str,
        id: DocId,
        doc: &MeshRecord,
    ) -> Result<Option<Edit>, QboError> {
        let Some(mut posted) = self.state.posted(key)? else {
            return Ok(None);
        };
        let mut mesh = self.mesh_fields(id, doc)?;
        let Some(base) = &posted.fields else {
            posted.fields = Some(mesh);
            self.state.set_posted(key, &posted)?;
            return Ok(None);
        };
        // An item made inactive in QuickBooks refuses every transaction that names it, and
        // sales rung before a product went off sale (offline tills, a day's summary, refunds)
        // must still be booked: the mesh's flag stays the mesh's. QuickBooks' comes in.
        if let Some(active) = base.get("Active") {
            mesh.insert("Active".into(), active.clone());
        }
        if changed(base, &mesh).is_empty() {
            return Ok(None);
        }
        Ok(Some(Edit {
            key: key.to_owned(),
            doc_id: id,
            posted,
            mesh,
        }))
    }

    /// Sends each edit as a sparse update; on a stale SyncToken, merges QuickBooks' record
    /// first. Returns how many QuickBooks took.
    pub(super) async fn push_edits(&self, edits: Vec<Edit>) -> Result<usize, QboError> {
        let currency = self.books().currency;
        let mut sent = 0;
        for Edit {
            key,
            doc_id,
            mut posted,
            mesh,
        } in edits
        {
            let base = posted.fields.clone().unwrap_or_default();
            let delta = changed(&base, &mesh);
            let entity = posted.entity.clone();
            let mut body = sparse_update(&entity, doc_id, &posted, &delta, currency);
            let what = format!("{entity} {key}: the mesh's edit");
            let path = format!(
                "{}/{}?minorversion=75",
                entity.to_lowercase(),
                posted.qbo_id
            );
            if entity == "Purchase" {
                // QuickBooks wants a purchase's payment type and account even in a sparse
                // update: they are read, and sent back as they are. A record changed since is
                // merged at once, as a 5010 would have it.
                let row = match self.qbo.get(&path).await {
                    Ok(v) => v[&entity].clone(),
                    Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                    Err(e) => {
                        self.failed_as(Some(&key), what, &e);
                        continue;
                    }
                };
                if row["SyncToken"].as_str() != Some(posted.sync_token.as_str()) {
                    self.merge_from_qbo(&key, Some(doc_id), posted, &row)
                        .await?;
                    self.outbox.again([(doc_id, record_type(&entity))]);
                    continue;
                }
                body["PaymentType"] = row["PaymentType"].clone();
                body["AccountRef"] = row["AccountRef"].clone();
            }
            match self
                .qbo
                .post(&format!("{}?minorversion=75", entity.to_lowercase()), &body)
                .await
            {
                Ok(answer) => {
                    let row = &answer[&entity];
                    posted.sync_token = row["SyncToken"]
                        .as_str()
                        .unwrap_or(&posted.sync_token)
                        .to_owned();
                    posted.fields = fields_of(&entity, row, currency);
                    self.state.set_posted(&key, &posted)?;
                    self.resolved(&key);
                    sent += 1;
                }
                // QuickBooks changed it since: its record is merged, and what the mesh still
                // holds of its own goes next round, under the new SyncToken.
                Err(e) if e.code() == Some("5010") => {
                    tracing::info!(%key, "QuickBooks changed it too; merging before the edit goes again");
                    match self.qbo.get(&path).await {
                        Ok(row) => {
                            self.merge_from_qbo(&key, Some(doc_id), posted, &row[&entity])
                                .await?;
                            self.outbox.again([(doc_id, record_type(&entity))]);
                        }
                        Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                        Err(e) => self.failed_as(Some(&key), what, &e),
                    }
                }
                Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                // Refused (a name another record holds, a value QuickBooks does not take):
                // said in the status, and tried again when the document next changes, not in
                // a loop. Anything else (QuickBooks unavailable) is tried next round.
                Err(e @ QboError::Fault { .. }) => self.failed_as(Some(&key), what, &e),
                Err(e) => {
                    self.failed_as(Some(&key), what, &e);
                    self.outbox.again([(doc_id, record_type(&entity))]);
                }
            }
        }
        Ok(sent)
    }

    /// QuickBooks' record of a posted customer, vendor or item: every field it changed since
    /// both sides last agreed comes into the mesh (QuickBooks wins where both changed), and
    /// its record becomes the base. Returns whether the mesh changed.
    pub(super) async fn merge_from_qbo(
        &self,
        key: &str,
        doc_id: Option<DocId>,
        mut posted: Posted,
        row: &Value,
    ) -> Result<bool, QboError> {
        let currency = self.books().currency;
        let Some(theirs) = fields_of(&posted.entity, row, currency) else {
            return Ok(false);
        };
        posted.sync_token = row["SyncToken"]
            .as_str()
            .unwrap_or(&posted.sync_token)
            .to_owned();
        let incoming = match &posted.fields {
            Some(base) => changed(base, &theirs),
            // No base yet (posted before it was kept): QuickBooks' record becomes it.
            None => Fields::new(),
        };
        let doc_id = match doc_id {
            Some(id) => Some(id),
            None => self.doc_of(key, &posted)?,
        };
        let mut moved = false;
        if let (false, Some(id)) = (incoming.is_empty(), doc_id) {
            match self
                .patch_mesh(&posted.entity, key, id, &incoming, currency)
                .await
            {
                Ok(m) => moved = m,
                Err(e @ QboError::State(_)) => return Err(e),
                // The mesh refuses QuickBooks' value (an email it does not take, say): QuickBooks'
                // record still becomes the base, so the mesh's own value goes back to QuickBooks
                // and both sides end equal; the status says what was refused.
                Err(e) => self.failed_as(
                    Some(key),
                    format!("{} {key}: QuickBooks' edit", posted.entity),
                    &e,
                ),
            }
        }
        posted.fields = Some(theirs);
        self.state.set_posted(key, &posted)?;
        Ok(moved)
    }

    /// The mesh document a posted record stands for: its key, or for an item the product
    /// with its SKU.
    fn doc_of(&self, key: &str, posted: &Posted) -> Result<Option<DocId>, QboError> {
        if posted.entity != "Item" {
            return Ok(key.parse().ok());
        }
        let sku = key.trim_start_matches("item/");
        let mut before = None;
        loop {
            let page = self
                .repo
                .list(DocType::Product, before, 1000)
                .map_err(|e| QboError::Unavailable(format!("reading the catalogue: {e}")))?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            before = Some(last.0);
            let n = page.len();
            if let Some((id, _)) = page.iter().find(|(_, v)| v["sku"] == sku) {
                return Ok(Some(*id));
            }
            if n < 1000 {
                return Ok(None);
            }
        }
    }

    /// Writes QuickBooks' values of `fields` into the mesh document, for every till.
    async fn patch_mesh(
        &self,
        entity: &str,
        key: &str,
        id: DocId,
        fields: &Fields,
        currency: Currency,
    ) -> Result<bool, QboError> {
        let text = |name: &str| fields.get(name).map(|v| v.as_str().map(str::to_owned));
        let command = match entity {
            "Customer" | "Vendor" => {
                let patch = CustomerPatch {
                    display_name: text("DisplayName").flatten(),
                    given_name: text("GivenName"),
                    family_name: text("FamilyName"),
                    company_name: text("CompanyName"),
                    notes: text("Notes"),
                    email: text("Email"),
                    phone: text("Phone"),
                    ..CustomerPatch::default()
                };
                if entity == "Customer" {
                    Command::PatchCustomer { id, patch }
                } else {
                    Command::PatchVendor { id, patch }
                }
            }
            "Purchase" => Command::PatchExpense {
                id,
                patch: ExpensePatch {
                    memo: fields.get("Memo").map(|m| m.as_str().map(str::to_owned)),
                },
            },
            "Item" => Command::PatchProduct {
                id,
                patch: ProductPatch {
                    name: text("Description").flatten(),
                    price: fields
                        .get("UnitPrice")
                        .and_then(Value::as_i64)
                        .map(|m| Money::new(m, currency)),
                    tax_code: None,
                    active: fields.get("Active").and_then(Value::as_bool),
                    low_stock_at: None,
                },
            },
            _ => return Ok(false),
        };
        tracing::info!(%key, fields = ?fields.keys().collect::<Vec<_>>(), "QuickBooks' edit comes into the mesh");
        self.repo.execute(command).await.map_err(|e| {
            QboError::Unavailable(format!(
                "writing QuickBooks' edit of {key} into the mesh: {e}"
            ))
        })?;
        if matches!(entity, "Customer" | "Vendor") && fields.contains_key("DisplayName") {
            // QuickBooks' name is the record's now, whatever it went as before.
            self.state.set_note(&party_name_key(key), "")?;
        }
        Ok(true)
    }
}

fn record_type(entity: &str) -> DocType {
    match entity {
        "Vendor" => DocType::Vendor,
        "Item" => DocType::Product,
        "Purchase" => DocType::Expense,
        _ => DocType::Customer,
    }
}

/// A mesh document with fields edited both ways.
pub(super) enum MeshRecord {
    Customer(Customer),
    Vendor(Vendor),
    Product(Product),
    Expense(Expense),
}

impl MeshRecord {
    fn entity(&self) -> &'static str {
        match self {
            MeshRecord::Customer(_) => "Customer",
            MeshRecord::Vendor(_) => "Vendor",
            MeshRecord::Product(_) => "Item",
            MeshRecord::Expense(_) => "Purchase",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_compare_in_the_meshs_terms() {
        let usd = Currency::USD;
        let a = fields_of(
            "Customer",
            &json!({"DisplayName": "Amy", "PrimaryPhone": {"FreeFormNumber": "555"}, "Notes": ""}),
            usd,
        )
        .unwrap();
        assert_eq!(a["Phone"], "555");
        assert_eq!(a["Notes"], Value::Null, "an empty text is no value");
        let item = fields_of(
            "Item",
            &json!({"Description": "Tea", "UnitPrice": 3.5}),
            usd,
        )
        .unwrap();
        assert_eq!(item["UnitPrice"], 350);
        assert_eq!(item["Active"], true);
        let mut b = a.clone();
        b.insert("Phone".into(), json!("556"));
        b.insert("Email".into(), Value::Null);
        assert_eq!(
            changed(&a, &b),
            BTreeMap::from([("Phone".into(), json!("556"))])
        );
        let posted = Posted {
            entity: "Customer".into(),
            qbo_id: "7".into(),
            sync_token: "2".into(),
            ..Posted::default()
        };
        let body = sparse_update(
            "Customer",
            DocId::new_v7(0, [0; 10]),
            &posted,
            &BTreeMap::from([
                ("Phone".into(), json!("556")),
                ("Notes".into(), Value::Null),
            ]),
            usd,
        );
        assert_eq!(
            body,
            json!({"Id": "7", "SyncToken": "2", "sparse": true,
                "PrimaryPhone": {"FreeFormNumber": "556"}, "Notes": ""})
        );
        let price = sparse_update(
            "Item",
            DocId::new_v7(0, [0; 10]),
            &posted,
            &BTreeMap::from([("UnitPrice".into(), json!(375))]),
            usd,
        );
        assert_eq!(price["UnitPrice"].to_string(), "3.75");
    }
}
