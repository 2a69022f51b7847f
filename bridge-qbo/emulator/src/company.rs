//! One emulated QBO company: its entities, the rules QBO applies when they are written, and
//! their persistence in the emulator's redb file.
//!
//! Every entity is kept as the JSON QBO would return. Writes go through [`Company::create`],
//! [`Company::update`], [`Company::delete`] and [`Company::void`], each checked completely
//! before anything changes, then written through to redb in one transaction, so a restart
//! shows exactly what was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Map, Value, json};

use tillmesh_protocol::Currency;

use super::clock;
use super::fault::Fault;

/// The longest top-level strings QBO keeps, by field, from its entity reference for the
/// entities a shop's books use (Customer, Vendor, Item, Account and the transactions); longer
/// is refused with 2050. Some rarer entities keep less (a Term's `Name`, 31): not modelled.
const LENGTHS_MAX: &[(&str, usize)] = &[
    ("DocNumber", 21),
    ("Name", 100),
    ("Sku", 100),
    ("DisplayName", 500),
    ("GivenName", 100),
    ("MiddleName", 100),
    ("FamilyName", 100),
    ("CompanyName", 100),
    ("Title", 16),
    ("Suffix", 16),
    ("Notes", 2000),
    ("Description", 4000),
    ("PrivateNote", 4000),
];

/// `(entity, id)` -> the entity's JSON.
const ENTITIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entities");
/// `(entity, id)` -> when it was deleted (ms), for CDC.
const DELETED: TableDefinition<(&str, u64), i64> = TableDefinition::new("deleted");
/// Counters and settings: `next_id`, `docnumber/<Entity>`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `requestid` -> `(status, response body)`: a repeat gets the original answer.
const REQUESTS: TableDefinition<&str, (u16, &[u8])> = TableDefinition::new("requests");

/// Entities this emulator serves, by their canonical name.
pub const ENTITY_NAMES: [&str; 15] = [
    "Account",
    "Customer",
    "Vendor",
    "Employee",
    "Item",
    "SalesReceipt",
    "Invoice",
    "Payment",
    "Purchase",
    "RefundReceipt",
    "Estimate",
    "TaxCode",
    "PaymentMethod",
    "Attachable",
    "CreditMemo",
];

/// The canonical name of an entity from a path segment or a query (`salesreceipt`).
pub fn canonical(name: &str) -> Option<&'static str> {
    ENTITY_NAMES
        .iter()
        .copied()
        .find(|e| e.eq_ignore_ascii_case(name))
}

/// Name-list entities: deactivated (`Active: false`), never deleted.
fn is_name_list(entity: &str) -> bool {
    matches!(
        entity,
        "Account" | "Customer" | "Vendor" | "Employee" | "Item" | "TaxCode" | "PaymentMethod"
    )
}

/// Transactions that carry sales lines and may move inventory.
fn sells(entity: &str) -> bool {
    matches!(entity, "SalesReceipt" | "Invoice")
}

/// Customers, vendors and employees share one namespace of display names, as in QBO.
fn name_space(entity: &str) -> Option<(&'static [&'static str], &'static str)> {
    match entity {
        "Customer" | "Vendor" | "Employee" => {
            Some((&["Customer", "Vendor", "Employee"], "DisplayName"))
        }
        "Item" => Some((&["Item"], "Name")),
        "Account" => Some((&["Account"], "Name")),
        "PaymentMethod" => Some((&["PaymentMethod"], "Name")),
        _ => None,
    }
}

/// Why a write failed: QBO's answer, or the emulator's own store.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0:?}")]
    Fault(Fault),
    #[error("the emulator's store failed: {0}")]
    Store(String),
}

impl From<Fault> for WriteError {
    fn from(f: Fault) -> Self {
        WriteError::Fault(f)
    }
}

macro_rules! store_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for WriteError {
            fn from(e: $t) -> Self { WriteError::Store(e.to_string()) }
        }
    )*};
}
store_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a write did, for webhooks and CDC.
#[derive(Debug, Clone)]
pub struct Change {
    pub entity: &'static str,
    pub id: String,
    /// `Create`, `Update`, `Delete`, `Void`.
    pub operation: &'static str,
    pub at_ms: i64,
}

pub struct Company {
    /// Shared with the OAuth tokens, which are kept in the same file.
    db: Arc<Database>,
    entities: BTreeMap<(&'static str, u64), Value>,
    deleted: BTreeMap<(&'static str, u64), i64>,
    meta: HashMap<String, u64>,
    /// The home currency, chosen when the company is made; amounts keep its decimals.
    currency: Currency,
}

fn ref_value(v: &Value) -> Option<&str> {
    v.get("value").and_then(Value::as_str)
}

/// An amount in the company's home currency, rounded to its minor unit (cents for USD, yen
/// for JPY, fils for KWD) so sums never show float noise; a number, as QBO writes it.
fn money(v: f64, decimals: u32) -> Value {
    let scale = 10f64.powi(decimals as i32);
    let rounded = (v * scale).round();
    if decimals == 0 {
        json!(rounded as i64)
    } else {
        json!(rounded / scale)
    }
}

/// `meta` key of the company's home currency (its three letters packed into a number).
const HOME_CURRENCY: &str = "home_currency";

fn pack(c: Currency) -> u64 {
    c.as_str().bytes().fold(0, |n, b| n << 8 | u64::from(b))
}

fn unpack(n: u64) -> Option<Currency> {
    let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    std::str::from_utf8(&b).ok()?.parse().ok()
}

impl Company {
    /// Opens (or creates, with QBO's default accounts, tax codes and payment methods) the
    /// company kept in `dir`.
    pub fn open(dir: &Path, currency: Option<Currency>) -> Result<Company, WriteError> {
        std::fs::create_dir_all(dir).map_err(|e| WriteError::Store(e.to_string()))?;
        let db = Arc::new(Database::create(dir.join("qbo-emulator.redb"))?);
        {
            let tx = db.begin_write()?;
            tx.open_table(ENTITIES)?;
            tx.open_table(DELETED)?;
            tx.open_table(META)?;
            tx.open_table(REQUESTS)?;
            tx.commit()?;
        }
        let mut c = Company {
            db,
            entities: BTreeMap::new(),
            deleted: BTreeMap::new(),
            meta: HashMap::new(),
            currency: currency.unwrap_or(Currency::USD),
        };
        {
            let tx = c.db.begin_read()?;
            for item in tx.open_table(ENTITIES)?.iter()? {
                let (k, v) = item?;
                let (entity, id) = k.value();
                let Some(entity) = canonical(entity) else {
                    continue;
                };
                let json: Value = serde_json::from_slice(v.value())
                    .map_err(|e| WriteError::Store(e.to_string()))?;
                c.entities.insert((entity, id), json);
            }
            for item in tx.open_table(DELETED)?.iter()? {
                let (k, v) = item?;
                let (entity, id) = k.value();
                if let Some(entity) = canonical(entity) {
                    c.deleted.insert((entity, id), v.value());
                }
            }
            for item in tx.open_table(META)?.iter()? {
                let (k, v) = item?;
                c.meta.insert(k.value().to_owned(), v.value());
            }
        }
        match c.meta.get(HOME_CURRENCY).copied().and_then(unpack) {
            Some(kept) if currency.is_some_and(|asked| asked != kept) => {
                return Err(WriteError::Store(format!(
                    "this company keeps its books in {kept}, not {}: QuickBooks never changes a home currency; start with --currency {kept}, or make a new company in another --data folder",
                    c.currency
                )));
            }
            Some(kept) => c.currency = kept,
            None => {
                let n = pack(c.currency);
                c.meta.insert(HOME_CURRENCY.into(), n);
                let tx = c.db.begin_write()?;
                tx.open_table(META)?.insert(HOME_CURRENCY, n)?;
                tx.commit()?;
            }
        }
        if c.entities.is_empty() {
            c.seed()?;
        }
        Ok(c)
    }

    /// What a new QBO company holds: the accounts, tax codes and payment methods the bridge
    /// and a sales form refer to.
    fn seed(&mut self) -> Result<(), WriteError> {
        let accounts = [
            ("Checking", "Bank", "Checking"),
            (
                "Undeposited Funds",
                "Other Current Asset",
                "UndepositedFunds",
            ),
            ("Sales of Product Income", "Income", "SalesOfProductIncome"),
            ("Services", "Income", "ServiceFeeIncome"),
            ("Inventory Asset", "Other Current Asset", "Inventory"),
            (
                "Cost of Goods Sold",
                "Cost of Goods Sold",
                "SuppliesMaterialsCogs",
            ),
            (
                "Office Expenses",
                "Expense",
                "OfficeGeneralAdministrativeExpenses",
            ),
        ];
        let mut writes = Vec::new();
        for (name, kind, sub) in accounts {
            let body = json!({"Name": name, "AccountType": kind, "AccountSubType": sub});
            writes.push(self.stage_create("Account", body)?);
            self.commit_staged(&mut writes)?;
        }
        for (name, taxable) in [("TAX", true), ("NON", false)] {
            let body = json!({"Name": name, "Description": if taxable { "Taxable" } else { "Non-taxable" }, "Taxable": taxable, "TaxGroup": false});
            writes.push(self.stage_create("TaxCode", body)?);
            self.commit_staged(&mut writes)?;
        }
        for name in ["Cash", "Check", "Credit Card"] {
            let body = json!({"Name": name, "Type": if name == "Credit Card" { "CREDIT_CARD" } else { "NON_CREDIT_CARD" }});
            writes.push(self.stage_create("PaymentMethod", body)?);
            self.commit_staged(&mut writes)?;
        }
        // Last, so the ids above stay as they were: the account the preferences name for
        // discounts.
        let body = json!({"Name": "Discounts given", "AccountType": "Income", "AccountSubType": "DiscountsRefundsGiven"});
        writes.push(self.stage_create("Account", body)?);
        self.commit_staged(&mut writes)?;
        Ok(())
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    fn money(&self, v: f64) -> Value {
        money(v, self.currency.exponent())
    }

    fn next(&mut self, key: &str, first: u64) -> u64 {
        let n = self.meta.get(key).copied().unwrap_or(first - 1) + 1;
        self.meta.insert(key.to_owned(), n);
        n
    }

    /// The store, for what else the emulator keeps across restarts.
    pub fn db(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn get(&self, entity: &'static str, id: u64) -> Option<&Value> {
        self.entities.get(&(entity, id))
    }

    pub fn all(&self, entity: &'static str) -> impl Iterator<Item = &Value> {
        self.entities
            .range((entity, 0)..=(entity, u64::MAX))
            .map(|(_, v)| v)
    }

    /// Deleted objects of `entity` since `since_ms`, as CDC reports them.
    pub fn deleted_since(&self, entity: &'static str, since_ms: i64) -> Vec<(u64, i64)> {
        self.deleted
            .range((entity, 0)..=(entity, u64::MAX))
            .filter(|(_, at)| **at >= since_ms)
            .map(|((_, id), at)| (*id, *at))
            .collect()
    }

    pub fn account_named(&self, name: &str) -> Option<Value> {
        self.all("Account")
            .find(|a| a["Name"] == name)
            .map(|a| json!({"value": a["Id"], "name": a["Name"]}))
    }

    pub fn tax_code_named(&self, name: &str) -> Option<Value> {
        self.all("TaxCode")
            .find(|t| t["Name"] == name)
            .map(|t| json!({"value": t["Id"], "name": t["Name"]}))
    }

    fn id_of(&self, entity: &'static str, body: &Value) -> Result<u64, Fault> {
        let id = match body.get("Id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(Fault::required("Id")),
        };
        let n: u64 = id.parse().map_err(|_| Fault::invalid_id(&id))?;
        if !self.entities.contains_key(&(entity, n)) {
            return Err(Fault::not_found());
        }
        Ok(n)
    }

    // ---- writes -----------------------------------------------------------------------

    pub fn create(
        &mut self,
        entity: &'static str,
        body: Value,
    ) -> Result<(Value, Change), WriteError> {
        let mut staged = vec![self.stage_create(entity, body)?];
        let (value, change) = (staged[0].1.clone(), staged[0].2.clone());
        self.commit_staged(&mut staged)?;
        Ok((value, change))
    }

    /// Checks and builds a new object without storing it (the caller commits).
    #[allow(clippy::type_complexity)]
    fn stage_create(
        &mut self,
        entity: &'static str,
        body: Value,
    ) -> Result<((&'static str, u64), Value, Change, Vec<(u64, f64)>), WriteError> {
        let Value::Object(mut obj) = body else {
            return Err(Fault::bad_request("the request body is not a JSON object").into());
        };
        for server in ["Id", "SyncToken", "MetaData", "domain", "sparse"] {
            obj.remove(server);
        }
        let now = clock::now_ms();
        self.complete(entity, &mut obj, None, now)?;
        let moves = self.stock_moves(entity, &obj, 1.0);
        self.check_stock_items(&moves)?;
        let id = self.next("next_id", 1);
        let mut out = Map::new();
        out.insert("domain".into(), json!("QBO"));
        out.insert("sparse".into(), json!(false));
        out.insert("Id".into(), json!(id.to_string()));
        out.insert("SyncToken".into(), json!("0"));
        out.insert(
            "MetaData".into(),
            json!({"CreateTime": clock::datetime(now), "LastUpdatedTime": clock::datetime(now)}),
        );
        out.extend(obj);
        let change = Change {
            entity,
            id: id.to_string(),
            operation: "Create",
            at_ms: now,
        };
        Ok(((entity, id), Value::Object(out), change, moves))
    }

    #[allow(clippy::type_complexity)]
    fn commit_staged(
        &mut self,
        staged: &mut Vec<((&'static str, u64), Value, Change, Vec<(u64, f64)>)>,
    ) -> Result<(), WriteError> {
        let now = clock::now_ms();
        let mut touched: Vec<(&'static str, u64)> = Vec::new();
        for (key, value, _, moves) in staged.iter() {
            self.entities.insert(*key, value.clone());
            touched.push(*key);
            for (item, qty) in moves {
                self.move_stock(*item, *qty, now);
                touched.push(("Item", *item));
            }
        }
        self.persist(&touched, &[])?;
        staged.clear();
        Ok(())
    }

    /// Writes the given objects (and counters) through to redb in one transaction.
    fn persist(
        &self,
        touched: &[(&'static str, u64)],
        deleted: &[(&'static str, u64)],
    ) -> Result<(), WriteError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(ENTITIES)?;
            for key in touched {
                if let Some(v) = self.entities.get(key) {
                    let bytes =
                        serde_json::to_vec(v).map_err(|e| WriteError::Store(e.to_string()))?;
                    t.insert((key.0, key.1), bytes.as_slice())?;
                }
            }
            let mut d = tx.open_table(DELETED)?;
            for key in deleted {
                t.remove((key.0, key.1))?;
                if let Some(at) = self.deleted.get(key) {
                    d.insert((key.0, key.1), *at)?;
                }
            }
            let mut m = tx.open_table(META)?;
            for (k, v) in &self.meta {
                m.insert(k.as_str(), *v)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Full (`sparse` false or absent) or sparse update; the SyncToken must be current.
    pub fn update(
        &mut self,
        entity: &'static str,
        body: Value,
    ) -> Result<(Value, Change), WriteError> {
        let id = self.id_of(entity, &body)?;
        let current = self.entities[&(entity, id)].clone();
        let token = body.get("SyncToken").and_then(|t| match t {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let Some(token) = token else {
            return Err(Fault::required("SyncToken").into());
        };
        if current["SyncToken"] != json!(token) {
            return Err(Fault::stale().into());
        }
        let sparse = body.get("sparse").and_then(Value::as_bool).unwrap_or(false);
        let Value::Object(incoming) = body else {
            unreachable!("id_of read it as an object")
        };
        let mut obj: Map<String, Value> = if sparse {
            let mut base = current.as_object().cloned().unwrap_or_default();
            for (k, v) in incoming {
                base.insert(k, v);
            }
            base
        } else {
            incoming
        };
        for server in ["Id", "SyncToken", "MetaData", "domain", "sparse", "status"] {
            obj.remove(server);
        }
        // Computed again from what the update says.
        if sells(entity)
            || matches!(
                entity,
                "RefundReceipt" | "Purchase" | "Estimate" | "CreditMemo"
            )
        {
            obj.remove("TotalAmt");
            obj.remove("Balance");
            if let Some(Value::Array(lines)) = obj.get_mut("Line") {
                lines.retain(|l| l["DetailType"] != "SubTotalLineDetail");
                for l in lines.iter_mut() {
                    if let Some(m) = l.as_object_mut() {
                        m.remove("Id");
                        m.remove("LineNum");
                    }
                }
            }
        }
        let now = clock::now_ms();
        self.complete(entity, &mut obj, Some(id), now)?;
        // An update that changes nothing changes nothing: same SyncToken, same time.
        let unchanged = current.as_object().is_some_and(|cur| {
            obj.iter().all(|(k, v)| cur.get(k) == Some(v))
                && cur
                    .keys()
                    .filter(|k| {
                        !["Id", "SyncToken", "MetaData", "domain", "sparse"].contains(&k.as_str())
                    })
                    .all(|k| obj.contains_key(k))
        });
        if unchanged {
            return Ok((
                current,
                Change {
                    entity,
                    id: id.to_string(),
                    operation: "Update",
                    at_ms: now,
                },
            ));
        }
        // Stock: undo what the object moved, then do what it moves now.
        let mut moves = self.stock_moves(entity, current.as_object().unwrap_or(&Map::new()), -1.0);
        moves.extend(self.stock_moves(entity, &obj, 1.0));
        self.check_stock_items(&moves)?;
        let sync: u64 = token.parse().unwrap_or(0) + 1;
        let mut out = Map::new();
        out.insert("domain".into(), json!("QBO"));
        out.insert("sparse".into(), json!(false));
        out.insert("Id".into(), json!(id.to_string()));
        out.insert("SyncToken".into(), json!(sync.to_string()));
        out.insert(
            "MetaData".into(),
            json!({"CreateTime": current["MetaData"]["CreateTime"], "LastUpdatedTime": clock::datetime(now)}),
        );
        out.extend(obj);
        let value = Value::Object(out);
        let mut touched = vec![(entity, id)];
        self.entities.insert((entity, id), value.clone());
        for (item, qty) in moves {
            self.move_stock(item, qty, now);
            touched.push(("Item", item));
        }
        self.persist(&touched, &[])?;
        Ok((
            value,
            Change {
                entity,
                id: id.to_string(),
                operation: "Update",
                at_ms: now,
            },
        ))
    }

    /// `?operation=delete`: transactions only; name-list entities are deactivated instead.
    pub fn delete(
        &mut self,
        entity: &'static str,
        body: Value,
    ) -> Result<(Value, Change), WriteError> {
        if is_name_list(entity) {
            return Err(Fault::business(format!(
                "Operation Delete is not supported for {entity}; make it inactive instead (Active: false)"
            ))
            .into());
        }
        let id = self.id_of(entity, &body)?;
        let current = self.entities[&(entity, id)].clone();
        let token = body
            .get("SyncToken")
            .map(|t| t.as_str().map(str::to_owned).unwrap_or(t.to_string()));
        // QBO deletes an attachment named by its Id alone (recorded in `attachable-delete`);
        // a SyncToken, when sent, must still be current.
        let token_optional = entity == "Attachable" && token.is_none();
        if !token_optional && token.as_deref() != current["SyncToken"].as_str() {
            return Err(Fault::stale().into());
        }
        let now = clock::now_ms();
        let moves = self.stock_moves(entity, current.as_object().unwrap_or(&Map::new()), -1.0);
        let mut touched = Vec::new();
        for (item, qty) in moves {
            self.move_stock(item, qty, now);
            touched.push(("Item", item));
        }
        self.entities.remove(&(entity, id));
        self.deleted.insert((entity, id), now);
        self.persist(&touched, &[(entity, id)])?;
        Ok((
            json!({"domain": "QBO", "status": "Deleted", "Id": id.to_string()}),
            Change {
                entity,
                id: id.to_string(),
                operation: "Delete",
                at_ms: now,
            },
        ))
    }

    /// `?operation=void`: the amounts go to zero, the object stays; stock comes back.
    pub fn void(
        &mut self,
        entity: &'static str,
        body: Value,
    ) -> Result<(Value, Change), WriteError> {
        if !matches!(
            entity,
            "SalesReceipt" | "Invoice" | "Payment" | "RefundReceipt"
        ) {
            return Err(
                Fault::business(format!("Operation Void is not supported for {entity}")).into(),
            );
        }
        let id = self.id_of(entity, &body)?;
        let current = self.entities[&(entity, id)].clone();
        let token = body
            .get("SyncToken")
            .map(|t| t.as_str().map(str::to_owned).unwrap_or(t.to_string()));
        if token.as_deref() != current["SyncToken"].as_str() {
            return Err(Fault::stale().into());
        }
        let now = clock::now_ms();
        let moves = self.stock_moves(entity, current.as_object().unwrap_or(&Map::new()), -1.0);
        let mut v = current.clone();
        if let Some(Value::Array(lines)) = v.get_mut("Line") {
            for l in lines.iter_mut().filter(|l| l.is_object()) {
                l["Amount"] = json!(0);
                if let Some(d) = l
                    .get_mut("SalesItemLineDetail")
                    .and_then(Value::as_object_mut)
                {
                    d.insert("Qty".into(), json!(0));
                    d.insert("UnitPrice".into(), json!(0));
                }
            }
        }
        v["TotalAmt"] = json!(0);
        if v.get("Balance").is_some() {
            v["Balance"] = json!(0);
        }
        if let Some(t) = v.get_mut("TxnTaxDetail").and_then(Value::as_object_mut) {
            t.insert("TotalTax".into(), json!(0));
        }
        v["PrivateNote"] = json!("Voided");
        let sync: u64 = current["SyncToken"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
            + 1;
        v["SyncToken"] = json!(sync.to_string());
        v["MetaData"]["LastUpdatedTime"] = json!(clock::datetime(now));
        self.entities.insert((entity, id), v.clone());
        let mut touched = vec![(entity, id)];
        for (item, qty) in moves {
            self.move_stock(item, qty, now);
            touched.push(("Item", item));
        }
        self.persist(&touched, &[])?;
        Ok((
            v,
            Change {
                entity,
                id: id.to_string(),
                operation: "Void",
                at_ms: now,
            },
        ))
    }

    // ---- rules ------------------------------------------------------------------------

    /// Checks required fields and fills in what QBO computes or defaults.
    fn complete(
        &mut self,
        entity: &'static str,
        obj: &mut Map<String, Value>,
        id: Option<u64>,
        now: i64,
    ) -> Result<(), Fault> {
        let text = |obj: &Map<String, Value>, k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        // A name-list field sent empty is a field not set: QBO answers without it (no recorded
        // answer carries an empty string) and fills its default (PrintOnCheckName,
        // PreferredDeliveryMethod). python-quickbooks sends `""` for every field it was not
        // given (`Title`, `OpenBalanceDate`, `PrintOnCheckName`, ...); in a sparse update `""`
        // clears the field.
        if is_name_list(entity) {
            obj.retain(|_, v| v.as_str().is_none_or(|s| !s.trim().is_empty()));
        }
        for (field, max) in LENGTHS_MAX {
            if let Some(n) = obj
                .get(*field)
                .and_then(Value::as_str)
                .map(|v| v.chars().count())
                .filter(|n| n > max)
            {
                return Err(Fault::length(field, *max, n));
            }
        }
        match entity {
            "Customer" | "Vendor" | "Employee" => {
                let display = text(obj, "DisplayName").or_else(|| {
                    let parts: Vec<String> =
                        ["Title", "GivenName", "MiddleName", "FamilyName", "Suffix"]
                            .iter()
                            .filter_map(|k| text(obj, k))
                            .collect();
                    (!parts.is_empty())
                        .then(|| parts.join(" "))
                        .or_else(|| text(obj, "CompanyName"))
                });
                let Some(display) = display else {
                    return Err(Fault::business(
                        "You must fill out at least one of: Title, GivenName, MiddleName, FamilyName, Suffix, DisplayName or CompanyName",
                    ));
                };
                obj.insert("DisplayName".into(), json!(display));
                // QBO keeps addresses as objects of their own and answers with their Id.
                for addr in ["BillAddr", "ShipAddr", "PrimaryAddr", "OtherAddr"] {
                    if let Some(a) = obj.get_mut(addr).and_then(Value::as_object_mut)
                        && !a.contains_key("Id")
                    {
                        let n = self.next("next_addr_id", 1);
                        a.insert("Id".into(), json!(n.to_string()));
                    }
                }
                obj.entry("PrintOnCheckName").or_insert(json!(display));
                obj.insert(
                    "Active".into(),
                    obj.get("Active").cloned().unwrap_or(json!(true)),
                );
                obj.entry("CurrencyRef")
                    .or_insert(json!({"value": "USD", "name": "United States Dollar"}));
                if entity == "Customer" {
                    // A sub-customer (job) is named under its parent, one level down.
                    let parent = match obj.get("ParentRef") {
                        None | Some(Value::Null) => None,
                        Some(r) => {
                            let Some(n) = ref_value(r).and_then(|v| v.parse::<u64>().ok()) else {
                                return Err(Fault::required("ParentRef.value"));
                            };
                            if Some(n) == id {
                                return Err(Fault::business("A customer cannot be its own parent"));
                            }
                            Some(
                                self.get("Customer", n)
                                    .ok_or_else(Fault::not_found)?
                                    .clone(),
                            )
                        }
                    };
                    match parent {
                        Some(p) => {
                            let fqn = format!(
                                "{}:{display}",
                                p["FullyQualifiedName"].as_str().unwrap_or_default()
                            );
                            obj.insert("FullyQualifiedName".into(), json!(fqn));
                            obj.insert("Level".into(), json!(p["Level"].as_u64().unwrap_or(0) + 1));
                            obj.insert("Job".into(), json!(true));
                        }
                        None => {
                            obj.remove("ParentRef");
                            obj.remove("Level");
                            obj.insert("FullyQualifiedName".into(), json!(display));
                        }
                    }
                    if let Some(tax) = self.all("TaxCode").find(|t| t["Name"] == "TAX") {
                        let r = json!({"value": tax["Id"]});
                        obj.entry("DefaultTaxCodeRef").or_insert(r);
                    }
                    obj.entry("Taxable").or_insert(json!(true));
                    obj.entry("Job").or_insert(json!(false));
                    obj.entry("BillWithParent").or_insert(json!(false));
                    obj.entry("PreferredDeliveryMethod")
                        .or_insert(json!("Print"));
                    let balance = obj.get("Balance").cloned().unwrap_or(json!(0));
                    obj.insert("Balance".into(), balance.clone());
                    obj.insert("BalanceWithJobs".into(), balance);
                } else if entity == "Vendor" {
                    obj.entry("Balance").or_insert(json!(0));
                    obj.entry("Vendor1099").or_insert(json!(false));
                }
            }
            "Item" => {
                let Some(name) = text(obj, "Name") else {
                    return Err(Fault::required("Name"));
                };
                obj.insert("FullyQualifiedName".into(), json!(name));
                let kind = obj
                    .get("Type")
                    .and_then(Value::as_str)
                    .unwrap_or("NonInventory")
                    .to_owned();
                if !["Inventory", "NonInventory", "Service", "Group", "Category"]
                    .contains(&kind.as_str())
                {
                    return Err(Fault::business(format!("Invalid Type: {kind}")));
                }
                obj.insert("Type".into(), json!(kind));
                obj.insert(
                    "Active".into(),
                    obj.get("Active").cloned().unwrap_or(json!(true)),
                );
                obj.entry("Taxable").or_insert(json!(false));
                obj.entry("UnitPrice").or_insert(json!(0));
                obj.entry("PurchaseCost").or_insert(json!(0));
                obj.entry("Sku").or_insert(json!(null));
                if obj.get("Sku") == Some(&Value::Null) {
                    obj.remove("Sku");
                }
                if kind != "Category" && obj.get("IncomeAccountRef").is_none() {
                    return Err(Fault::required("IncomeAccountRef"));
                }
                if kind == "Inventory" {
                    for f in ["AssetAccountRef", "ExpenseAccountRef", "InvStartDate"] {
                        if obj.get(f).is_none() {
                            return Err(Fault::required(f));
                        }
                    }
                    if obj.get("QtyOnHand").and_then(Value::as_f64).is_none() {
                        return Err(Fault::required("QtyOnHand"));
                    }
                    obj.insert("TrackQtyOnHand".into(), json!(true));
                } else {
                    obj.insert("TrackQtyOnHand".into(), json!(false));
                }
                self.name_refs(obj);
            }
            "Account" => {
                if text(obj, "Name").is_none() {
                    return Err(Fault::required("Name"));
                }
                let name = text(obj, "Name").unwrap_or_default();
                obj.insert("FullyQualifiedName".into(), json!(name));
                if obj.get("AccountType").is_none() && obj.get("AccountSubType").is_none() {
                    return Err(Fault::required("AccountType"));
                }
                obj.entry("SubAccount").or_insert(json!(false));
                obj.insert(
                    "Active".into(),
                    obj.get("Active").cloned().unwrap_or(json!(true)),
                );
                let class = classify(obj.get("AccountType").and_then(Value::as_str).unwrap_or(""));
                obj.entry("Classification").or_insert(json!(class));
                obj.entry("CurrentBalance").or_insert(json!(0));
                obj.entry("CurrentBalanceWithSubAccounts")
                    .or_insert(json!(0));
                obj.entry("CurrencyRef")
                    .or_insert(json!({"value": "USD", "name": "United States Dollar"}));
            }
            "TaxCode" | "PaymentMethod" => {
                if text(obj, "Name").is_none() {
                    return Err(Fault::required("Name"));
                }
                obj.insert(
                    "Active".into(),
                    obj.get("Active").cloned().unwrap_or(json!(true)),
                );
            }
            "SalesReceipt" | "Invoice" | "RefundReceipt" | "Estimate" | "CreditMemo" => {
                if matches!(entity, "Invoice" | "Estimate" | "CreditMemo")
                    && obj.get("CustomerRef").and_then(ref_value).is_none()
                {
                    return Err(Fault::required("CustomerRef"));
                }
                self.sales_lines(obj)?;
                self.transaction_defaults(entity, obj, now);
                self.fill_customer(obj)?;
                if entity == "SalesReceipt" || entity == "RefundReceipt" {
                    let undeposited = self.account_named("Undeposited Funds");
                    let checking = self.account_named("Checking");
                    obj.entry("DepositToAccountRef").or_insert(
                        if entity == "SalesReceipt" {
                            undeposited
                        } else {
                            checking
                        }
                        .unwrap_or(Value::Null),
                    );
                    obj.insert("Balance".into(), json!(0));
                    obj.entry("PaymentRefNum").or_insert(json!(null));
                    if obj.get("PaymentRefNum") == Some(&Value::Null) {
                        obj.remove("PaymentRefNum");
                    }
                } else if entity == "Invoice" {
                    let total = obj["TotalAmt"].clone();
                    let paid = id.map(|id| self.paid_against(id)).unwrap_or(0.0);
                    obj.insert(
                        "Balance".into(),
                        self.money(total.as_f64().unwrap_or(0.0) - paid),
                    );
                    // Net 30, the default terms of a new company.
                    let due = obj["TxnDate"]
                        .as_str()
                        .and_then(clock::parse)
                        .map(|t| json!(clock::date(t + 30 * 86_400_000)))
                        .unwrap_or(Value::Null);
                    obj.entry("DueDate").or_insert(due);
                    obj.entry("LinkedTxn").or_insert(json!([]));
                    for allow in [
                        "AllowIPNPayment",
                        "AllowOnlinePayment",
                        "AllowOnlineCreditCardPayment",
                        "AllowOnlineACHPayment",
                    ] {
                        obj.entry(allow).or_insert(json!(false));
                    }
                }
            }
            "Payment" => {
                if obj.get("CustomerRef").and_then(ref_value).is_none() {
                    return Err(Fault::required("CustomerRef"));
                }
                let Some(total) = obj.get("TotalAmt").and_then(Value::as_f64) else {
                    return Err(Fault::required("TotalAmt"));
                };
                if obj.get("Line").is_some_and(|l| {
                    !l.as_array()
                        .is_some_and(|ls| ls.iter().all(Value::is_object))
                }) {
                    return Err(Fault::bad_request("Line must be a list of objects"));
                }
                let applied: f64 = obj
                    .get("Line")
                    .and_then(Value::as_array)
                    .map(|ls| ls.iter().filter_map(|l| l["Amount"].as_f64()).sum())
                    .unwrap_or(0.0);
                obj.insert("UnappliedAmt".into(), self.money(total - applied));
                obj.entry("Line").or_insert(json!([]));
                obj.entry("ProcessPayment").or_insert(json!(false));
                self.transaction_defaults(entity, obj, now);
                obj.insert("TotalAmt".into(), self.money(total));
                obj.entry("DepositToAccountRef").or_insert(
                    self.account_named("Undeposited Funds")
                        .unwrap_or(Value::Null),
                );
            }
            "Purchase" => {
                let Some(kind) = text(obj, "PaymentType") else {
                    return Err(Fault::required("PaymentType"));
                };
                if !["Cash", "Check", "CreditCard"].contains(&kind.as_str()) {
                    return Err(Fault::business(format!("Invalid PaymentType: {kind}")));
                }
                if obj.get("AccountRef").and_then(ref_value).is_none() {
                    return Err(Fault::required("AccountRef"));
                }
                let Some(Value::Array(lines)) = obj.get_mut("Line") else {
                    return Err(Fault::required("Line"));
                };
                if lines.iter().any(|l| !l.is_object()) {
                    return Err(Fault::bad_request("every Line must be an object"));
                }
                let mut total = 0.0;
                for (n, l) in lines.iter_mut().enumerate() {
                    if l.get("DetailType").and_then(Value::as_str).is_none() {
                        return Err(Fault::required("Line.DetailType"));
                    }
                    let Some(amount) = l.get("Amount").and_then(Value::as_f64) else {
                        return Err(Fault::required("Line.Amount"));
                    };
                    total += amount;
                    l["Id"] = json!((n + 1).to_string());
                    if let Some(d) = l
                        .get_mut("AccountBasedExpenseLineDetail")
                        .and_then(Value::as_object_mut)
                    {
                        d.entry("BillableStatus").or_insert(json!("NotBillable"));
                        d.entry("TaxCodeRef").or_insert(json!({"value": "NON"}));
                    }
                }
                obj.insert("TotalAmt".into(), self.money(total));
                self.transaction_defaults(entity, obj, now);
                obj.entry("PrintStatus").or_insert(json!("NotSet"));
                if kind == "Check" {
                    // QBO leaks this JAXB wrapper into its JSON for checks (recorded in
                    // `purchase-read-check`): TxnType 3 is a check. Clients must ignore it, so
                    // the emulator sends it too. For cash and card purchases no recording
                    // shows the number, so none is made up.
                    obj.entry("PurchaseEx").or_insert(json!({"any": [{
                        "name": "{http://schema.intuit.com/finance/v3}NameValue",
                        "declaredType": "com.intuit.schema.finance.v3.NameValue",
                        "scope": "javax.xml.bind.JAXBElement$GlobalScope",
                        "value": {"Name": "TxnType", "Value": "3"},
                        "nil": false, "globalScope": true, "typeSubstituted": false
                    }]}));
                }
                self.name_refs(obj);
            }
            _ => {}
        }
        if let Some((space, field)) = name_space(entity) {
            let name = text(obj, field).unwrap_or_default().to_lowercase();
            for other in space {
                let taken = self.all(canonical(other).unwrap_or("Customer")).any(|v| {
                    v[field].as_str().map(str::to_lowercase) == Some(name.clone())
                        && v["Id"].as_str().and_then(|s| s.parse().ok())
                            != id.filter(|_| *other == entity)
                });
                if taken {
                    return Err(Fault::duplicate_name());
                }
            }
        }
        Ok(())
    }

    /// Sales lines: each needs a DetailType; Amount is `Qty × UnitPrice` when not given; a
    /// SubTotalLineDetail line and TotalAmt (lines plus the tax the request states) follow.
    fn sales_lines(&self, obj: &mut Map<String, Value>) -> Result<(), Fault> {
        let Some(Value::Array(lines)) = obj.get_mut("Line") else {
            return Err(Fault::required("Line"));
        };
        if lines.iter().any(|l| !l.is_object()) {
            return Err(Fault::bad_request("every Line must be an object"));
        }
        lines.retain(|l| l["DetailType"] != "SubTotalLineDetail");
        let mut subtotal = 0.0;
        let mut n = 0;
        for l in lines.iter_mut() {
            let Some(kind) = l
                .get("DetailType")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return Err(Fault::required("Line.DetailType"));
            };
            if kind == "SalesItemLineDetail" {
                let d = l.get("SalesItemLineDetail").cloned().unwrap_or(json!({}));
                let Some(item) = d.get("ItemRef").and_then(ref_value) else {
                    return Err(Fault::required("Line.SalesItemLineDetail.ItemRef"));
                };
                let item_id: u64 = item.parse().map_err(|_| Fault::invalid_id(item))?;
                let Some(found) = self.get("Item", item_id) else {
                    return Err(Fault::not_found());
                };
                if found["Type"] == "Inventory" && d.get("Qty").is_none_or(Value::is_null) {
                    return Err(Fault::inventory_quantity());
                }
                let amount = match l.get("Amount").and_then(Value::as_f64) {
                    Some(a) => a,
                    None => {
                        let qty = d.get("Qty").and_then(Value::as_f64).unwrap_or(1.0);
                        let price = d
                            .get("UnitPrice")
                            .and_then(Value::as_f64)
                            .or_else(|| found["UnitPrice"].as_f64())
                            .unwrap_or(0.0);
                        qty * price
                    }
                };
                l["Amount"] = self.money(amount);
                let detail = l["SalesItemLineDetail"].as_object_mut();
                if let Some(detail) = detail {
                    detail.insert(
                        "ItemRef".into(),
                        json!({"value": item, "name": found["Name"]}),
                    );
                    detail
                        .entry("TaxCodeRef")
                        .or_insert(json!({"value": "NON"}));
                }
                subtotal += amount;
            } else if let Some(a) = l.get("Amount").and_then(Value::as_f64) {
                if kind == "DiscountLineDetail" {
                    subtotal -= a;
                } else {
                    subtotal += a;
                }
            } else {
                return Err(Fault::required("Line.Amount"));
            }
            n += 1;
            l["Id"] = json!(n.to_string());
            l["LineNum"] = json!(n);
        }
        lines.push(json!({"Amount": self.money(subtotal), "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}}));
        let tax = match obj.get("TxnTaxDetail") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Object(t)) => t.get("TotalTax").and_then(Value::as_f64).unwrap_or(0.0),
            Some(_) => return Err(Fault::bad_request("TxnTaxDetail must be an object")),
        };
        let mut detail = match obj.remove("TxnTaxDetail") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        detail.insert("TotalTax".into(), self.money(tax));
        obj.insert("TxnTaxDetail".into(), Value::Object(detail));
        obj.insert("TotalAmt".into(), self.money(subtotal + tax));
        Ok(())
    }

    /// A sales form names its customer in full and copies its addresses, as QBO does.
    fn fill_customer(&self, obj: &mut Map<String, Value>) -> Result<(), Fault> {
        let Some(id) = obj
            .get("CustomerRef")
            .and_then(ref_value)
            .map(str::to_owned)
        else {
            return Ok(());
        };
        let n: u64 = id.parse().map_err(|_| Fault::invalid_id(&id))?;
        let Some(c) = self.get("Customer", n) else {
            return Err(Fault::not_found());
        };
        obj.insert(
            "CustomerRef".into(),
            json!({"value": id, "name": c["FullyQualifiedName"]}),
        );
        for addr in ["BillAddr", "ShipAddr"] {
            if let Some(a) = c.get(addr) {
                obj.entry(addr).or_insert(a.clone());
            }
        }
        Ok(())
    }

    fn transaction_defaults(&mut self, entity: &str, obj: &mut Map<String, Value>, now: i64) {
        // QBO dates a transaction today when TxnDate is not given. An empty TxnDate is taken
        // as none: python-quickbooks sends `"TxnDate": ""` for every sales form whose date was
        // not set (its defaults, which its integration tests send to QBO and read back).
        if obj
            .get("TxnDate")
            .is_none_or(|d| d.is_null() || d.as_str() == Some(""))
        {
            obj.insert("TxnDate".into(), json!(clock::date(now)));
        }
        // In the company's home currency (a multicurrency company is not emulated).
        let home = self.currency.as_str();
        let name = match home {
            "USD" => "United States Dollar",
            "CAD" => "Canadian Dollar",
            "GBP" => "British Pound Sterling",
            "EUR" => "Euro",
            "AUD" => "Australian Dollar",
            "JPY" => "Japanese Yen",
            "KWD" => "Kuwaiti Dinar",
            "BHD" => "Bahraini Dinar",
            other => other,
        };
        obj.entry("CurrencyRef")
            .or_insert(json!({"value": home, "name": name}));
        if matches!(
            entity,
            "SalesReceipt" | "Invoice" | "RefundReceipt" | "Estimate" | "CreditMemo"
        ) {
            if obj.get("DocNumber").and_then(Value::as_str).is_none() {
                let n = self.next(&format!("docnumber/{entity}"), 1001);
                obj.insert("DocNumber".into(), json!(n.to_string()));
            }
            obj.entry("PrintStatus")
                .or_insert(json!(if entity == "Estimate" {
                    "NotSet"
                } else {
                    "NeedToPrint"
                }));
            obj.entry("EmailStatus").or_insert(json!("NotSet"));
            obj.entry("ApplyTaxAfterDiscount").or_insert(json!(false));
            obj.entry("CustomField").or_insert(json!([]));
        }
    }

    /// QBO answers account references with the account's name beside its id, whatever the
    /// request sent; a reference to no account is left as sent.
    fn name_refs(&self, obj: &mut Map<String, Value>) {
        let name = |r: &mut Value| {
            let found = ref_value(r)
                .and_then(|v| v.parse::<u64>().ok())
                .and_then(|id| self.get("Account", id))
                .map(|a| a["Name"].clone());
            if let (Some(n @ Value::String(_)), Some(m)) = (found, r.as_object_mut()) {
                m.insert("name".into(), n);
            }
        };
        for f in [
            "AccountRef",
            "IncomeAccountRef",
            "ExpenseAccountRef",
            "AssetAccountRef",
        ] {
            if let Some(r) = obj.get_mut(f) {
                name(r);
            }
        }
        for l in obj
            .get_mut("Line")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(r) = l.pointer_mut("/AccountBasedExpenseLineDetail/AccountRef") {
                name(r);
            }
        }
    }

    /// What payments applied to invoice `id`.
    fn paid_against(&self, id: u64) -> f64 {
        self.all("Payment")
            .flat_map(|p| p["Line"].as_array().cloned().unwrap_or_default())
            .filter(|l| {
                l["LinkedTxn"].as_array().is_some_and(|ls| {
                    ls.iter().any(|t| {
                        t["TxnType"] == "Invoice" && t["TxnId"].as_str() == Some(&id.to_string())
                    })
                })
            })
            .filter_map(|l| l["Amount"].as_f64())
            .sum()
    }

    /// `(item id, quantity change)` of the inventory items a transaction moves (`sign` 1 to
    /// apply, -1 to undo).
    fn stock_moves(&self, entity: &str, obj: &Map<String, Value>, sign: f64) -> Vec<(u64, f64)> {
        let direction = match entity {
            "SalesReceipt" | "Invoice" => -1.0,
            "RefundReceipt" | "CreditMemo" => 1.0,
            _ => return Vec::new(),
        };
        obj.get("Line")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let d = l.get("SalesItemLineDetail")?;
                let item: u64 = ref_value(d.get("ItemRef")?)?.parse().ok()?;
                let qty = d.get("Qty").and_then(Value::as_f64).unwrap_or(1.0);
                let tracked = self.get("Item", item)?["TrackQtyOnHand"] == json!(true);
                tracked.then_some((item, direction * sign * qty))
            })
            .collect()
    }

    fn check_stock_items(&self, moves: &[(u64, f64)]) -> Result<(), Fault> {
        // Inventory may go negative in QBO (it warns, it does not refuse).
        if moves.iter().any(|(i, _)| self.get("Item", *i).is_none()) {
            return Err(Fault::not_found());
        }
        Ok(())
    }

    fn move_stock(&mut self, item: u64, qty: f64, now: i64) {
        if let Some(v) = self.entities.get_mut(&("Item", item)) {
            let on_hand = v["QtyOnHand"].as_f64().unwrap_or(0.0) + qty;
            v["QtyOnHand"] = json!(on_hand);
            let sync: u64 = v["SyncToken"].as_str().unwrap_or("0").parse().unwrap_or(0) + 1;
            v["SyncToken"] = json!(sync.to_string());
            v["MetaData"]["LastUpdatedTime"] = json!(clock::datetime(now));
        }
    }

    // ---- idempotency ------------------------------------------------------------------

    pub fn remembered(&self, request_id: &str) -> Result<Option<(u16, Value)>, WriteError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REQUESTS)?;
        let Some(v) = t.get(request_id)? else {
            return Ok(None);
        };
        let (status, body) = v.value();
        let body = serde_json::from_slice(body).map_err(|e| WriteError::Store(e.to_string()))?;
        Ok(Some((status, body)))
    }

    pub fn remember(&self, request_id: &str, status: u16, body: &Value) -> Result<(), WriteError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(REQUESTS)?;
            let bytes = serde_json::to_vec(body).map_err(|e| WriteError::Store(e.to_string()))?;
            t.insert(request_id, (status, bytes.as_slice()))?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn classify(account_type: &str) -> &'static str {
    match account_type {
        "Income" | "Other Income" => "Revenue",
        "Expense" | "Other Expense" | "Cost of Goods Sold" => "Expense",
        "Equity" => "Equity",
        "Accounts Payable" | "Credit Card" | "Long Term Liability" | "Other Current Liability" => {
            "Liability"
        }
        _ => "Asset",
    }
}
