//! Exactly once: every create QBO is sent, alone or in a batch, as an [`Intent`].
//!
//! A document's record in `bridge.redb` ([`Posted`]) means it is in QBO and is never created
//! again; it is committed before the document's `ledger` is written back into the mesh.
//! - Every create is first written down as an intent under a fresh `requestid`, and sent
//!   with it. Its answer's records and the intent's removal are one transaction.
//! - An intent without a recorded answer (no answer came, QBO failed, the bridge crashed) is
//!   settled before the next round sends anything: if QBO holds every object (a transaction
//!   found by its number and its own note, a name-list entity by its name), that is the
//!   answer; otherwise the same request goes again under the same `requestid`, which QBO
//!   answers with its first answer if it had one. A document is never sent under a second
//!   `requestid` while an earlier one may still be made.
//! - A duplicate name (6240) maps to the object that holds the name.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::QboError;
use super::state::Posted;
use super::{Bridge, amounts, mapping, quoted};

/// Batches, or single creates, in flight at once; the client's own cap is the hard limit.
const BATCHES_IN_FLIGHT: usize = 4;
const CREATES_IN_FLIGHT: usize = 8;
/// The most rows QBO answers a query with.
const QUERY_ROWS_MAX: usize = 1000;

/// How a created object is found in QBO when its create got no answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Find {
    /// A transaction: by a field QBO filters on (`DocNumber`, or a payment's `TxnDate`), whose
    /// value may repeat, then by its own note.
    Note {
        field: String,
        number: String,
        note: String,
    },
    /// A name-list entity by its unique name (`Name` for items, `DisplayName` for parties).
    Name { field: String, value: String },
}

/// One object to create in QBO exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Create {
    /// Its key in the posted map: a document id, or `item/<sku>`.
    pub key: String,
    pub entity: String,
    pub body: Value,
    pub find: Find,
    /// Other keys the same object stands for: the sales a summary receipt carries.
    #[serde(default)]
    pub covers: Vec<String>,
}

impl Create {
    /// How a person finds it: its name or number, then its key (`Customer 'Dee's Deli'
    /// (01J…)`, `SalesReceipt TILL1-000004 (01J…)`).
    pub(super) fn label(&self) -> String {
        match &self.find {
            Find::Name { value, .. } => format!("{} '{value}' ({})", self.entity, self.key),
            Find::Note { field, number, .. } if field == "DocNumber" => {
                format!("{} {number} ({})", self.entity, self.key)
            }
            // A payment is found by its date: `Payment of 2026-11-22 (01J…)`.
            Find::Note { number, .. } => format!("{} of {number} ({})", self.entity, self.key),
        }
    }
}

/// A create (one, or a batch) written down before it is sent, under a `requestid` fresh for
/// each intent: in `bridge.redb` until its answer is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Intent {
    /// Sent on its own (`POST /<entity>`) rather than as a batch (`POST /batch`).
    single: bool,
    creates: Vec<Create>,
    /// Each create's `bId` in the first request, when the intent has shrunk since (what a
    /// settling found made is taken out): a repeat of the request is answered with the first
    /// answer, whose items keep their first `bId`s. Empty: the positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    bids: Vec<String>,
}

impl Intent {
    fn bid(&self, i: usize) -> String {
        self.bids.get(i).cloned().unwrap_or_else(|| i.to_string())
    }
}

/// What became of one create.
type Outcome = (Create, Result<Posted, QboError>);

/// A `requestid` no other intent has. From the OS's random source only: a clock can repeat
/// (two bridges, a clock set back), and a repeated id would make QuickBooks answer a new
/// create with an old one's answer. Without randomness nothing is sent.
pub(super) fn fresh_request_id() -> Result<String, QboError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        QboError::Unavailable(format!(
            "the OS gave no randomness for a request id ({e}); nothing is sent until it does"
        ))
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Bridge {
    /// Creates each object once, in batches or one by one, and records what QBO made. An
    /// error that stops everything (the connection, the bridge's store) comes back as `Err`;
    /// anything else is that object's outcome, and it is tried again in a later round.
    pub(super) async fn create_all(&self, creates: Vec<Create>) -> Result<Vec<Outcome>, QboError> {
        let batching = self.options.batch_items_max > 1 && creates.len() > 1;
        let size = if batching {
            self.options
                .batch_items_max
                .min(super::client::BATCH_ITEMS_MAX)
        } else {
            1
        };
        let intents: Vec<Intent> = creates
            .chunks(size)
            .map(|chunk| Intent {
                single: !batching,
                creates: chunk.to_vec(),
                bids: Vec::new(),
            })
            .collect();
        let in_flight = if batching {
            BATCHES_IN_FLIGHT
        } else {
            CREATES_IN_FLIGHT
        };
        let mut answers = futures_util::stream::iter(intents)
            .map(|intent| async move {
                let result = self.create(&intent).await;
                (intent, result)
            })
            .buffer_unordered(in_flight);
        let mut outcomes = Vec::new();
        while let Some((intent, result)) = answers.next().await {
            match result {
                Ok(done) => outcomes.extend(done),
                Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                // Nothing recorded: each is tried again (an intent left behind is settled
                // first).
                Err(e) => {
                    let why = e.to_string();
                    outcomes.extend(
                        intent
                            .creates
                            .into_iter()
                            .map(|c| (c, Err(QboError::Unavailable(why.clone())))),
                    );
                }
            }
        }
        Ok(outcomes)
    }

    /// Writes an intent down under a fresh `requestid`, then sends it.
    pub(super) async fn create(&self, intent: &Intent) -> Result<Vec<Outcome>, QboError> {
        let rid = fresh_request_id()?;
        self.state.set_intent(&rid, intent)?;
        self.send(&rid, intent, false).await
    }

    /// Sends an intent under its `requestid` and records the answer, with the intent's
    /// removal, in one transaction. No answer: settled at once (unless this is already the
    /// settling); refused whole: nothing was written, the intent goes; anything else: the
    /// intent stays for the next round.
    pub(super) async fn send(
        &self,
        rid: &str,
        intent: &Intent,
        settling: bool,
    ) -> Result<Vec<Outcome>, QboError> {
        let sent = if intent.single {
            let c = &intent.creates[0];
            let path = format!(
                "{}?requestid={rid}&minorversion=75",
                c.entity.to_lowercase()
            );
            self.qbo.post(&path, &c.body).await.map(
                |v| json!({"BatchItemResponse": [{"bId": "0", c.entity.as_str(): v[&c.entity]}]}),
            )
        } else {
            let items: Vec<Value> = intent
                .creates
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"bId": intent.bid(i), "operation": "create", c.entity.as_str(): c.body}))
                .collect();
            self.qbo
                .post(
                    &format!("batch?requestid={rid}&minorversion=75"),
                    &json!({ "BatchItemRequest": items }),
                )
                .await
        };
        let answer = match sent {
            Ok(v) => v,
            Err(QboError::Uncertain(why)) if !settling => {
                tracing::info!(%why, "no answer; settling what was sent");
                return Box::pin(self.settle(rid, intent)).await;
            }
            // A single create refused: its fault is its outcome.
            Err(e @ QboError::Fault { .. }) if intent.single => {
                json!({"BatchItemResponse": [{"bId": "0", "Fault": fault_body(&e)}]})
            }
            Err(e @ QboError::Fault { .. }) => {
                self.state.finish_intent(rid, &[])?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let answers = answer["BatchItemResponse"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut outcomes = Vec::with_capacity(intent.creates.len());
        let mut unexplained = false;
        let mut taken = Vec::new();
        for (i, c) in intent.creates.iter().enumerate() {
            let bid = if intent.single {
                "0".to_owned()
            } else {
                intent.bid(i)
            };
            let outcome = match answers.iter().find(|a| a["bId"] == bid.as_str()) {
                Some(a) if a[&c.entity].is_object() => {
                    posted_from(c, &a[&c.entity], self.books().currency)
                }
                // A name taken already is the object, unless another document holds it:
                // settled once this answer's own records are in.
                Some(a) if a["Fault"]["Error"][0]["code"] == "6240" => {
                    taken.push(i);
                    Err(name_taken(c))
                }
                Some(a) if a["Fault"].is_object() => Err(fault_of(&a["Fault"])),
                // Answered without the object or a refusal: it may exist. The intent stays
                // (settled again next round) rather than risk making it twice.
                _ => {
                    unexplained = true;
                    Err(QboError::Uncertain(format!(
                        "QuickBooks' answer says nothing of item {bid} ({} {})",
                        c.entity, c.key
                    )))
                }
            };
            outcomes.push((c.clone(), outcome));
        }
        if !taken.is_empty() {
            // What this same request made holds its names first: two documents named alike
            // in one batch must not both become the record the first one made.
            for (key, p) in records(&outcomes) {
                self.state.set_posted(&key, &p)?;
            }
            for i in taken {
                outcomes[i].1 = self.name_taken(&outcomes[i].0).await?;
            }
        }
        let made = records(&outcomes);
        if unexplained {
            // In doubt, the intent stays, under the same `requestid`: it is settled again
            // next round (a look-up, then the same request). A new id could make twice what
            // QBO made once and did not say.
            if settling {
                tracing::warn!(request = %rid, "QuickBooks has not accounted for all of a request; it is asked again, under the same requestid");
            }
            for (key, p) in &made {
                self.state.set_posted(key, p)?;
            }
        } else {
            self.state.finish_intent(rid, &made)?;
        }
        Ok(outcomes)
    }

    /// Settles an intent whose answer never came. If QBO holds every object, that is the
    /// answer. Otherwise the same request goes again under its `requestid`: QBO answers a
    /// repeat with the first answer (waiting for one still being made), so nothing is made
    /// twice, and what the first attempt never made is made now.
    pub(super) async fn settle(
        &self,
        rid: &str,
        intent: &Intent,
    ) -> Result<Vec<Outcome>, QboError> {
        let found = self.find_many(&intent.creates).await?;
        if found.len() < intent.creates.len() {
            if found.is_empty() || intent.single {
                return self.send(rid, intent, true).await;
            }
            // What QuickBooks holds is recorded, and only the rest goes again, under the same
            // `requestid` and `bId`s: should QuickBooks no longer know the id, nothing it made
            // is made a second time.
            let mut made = Vec::new();
            let mut rest = Intent {
                single: false,
                creates: Vec::new(),
                bids: Vec::new(),
            };
            for (i, c) in intent.creates.iter().enumerate() {
                match found.get(&c.key) {
                    Some(row) => made.push((c.clone(), posted_from(c, row, self.books().currency))),
                    None => {
                        rest.creates.push(c.clone());
                        rest.bids.push(intent.bid(i));
                    }
                }
            }
            for (key, p) in records(&made) {
                self.state.set_posted(&key, &p)?;
            }
            self.state.set_intent(rid, &rest)?;
            let mut outcomes = made;
            outcomes.extend(self.send(rid, &rest, true).await?);
            return Ok(outcomes);
        }
        let outcomes: Vec<Outcome> = intent
            .creates
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    posted_from(c, &found[&c.key], self.books().currency),
                )
            })
            .collect();
        self.state.finish_intent(rid, &records(&outcomes))?;
        Ok(outcomes)
    }

    /// Intents left by an earlier round or run. Until each is settled nothing new goes, and
    /// the status says why: a new create of the same documents could make them twice.
    pub(super) async fn settle_intents(&self) -> Result<(), QboError> {
        for (rid, intent) in self.state.intents::<Intent>()? {
            tracing::info!(request = %rid, items = intent.creates.len(), "settling a request sent before");
            let settled = match self.settle(&rid, &intent).await {
                Ok(_) if self.state.intents::<Value>()?.iter().any(|(r, _)| *r == rid) => {
                    Err(QboError::Unavailable(
                        "QuickBooks' answer does not account for every object sent; nothing new is sent until it does".into(),
                    ))
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = settled {
                self.failed(
                    format!("request {rid}, sent before and not yet settled"),
                    &e,
                );
                return Err(e);
            }
        }
        Ok(())
    }

    /// A create refused because its name is taken (6240). The record holding the name is
    /// this document's when QBO's record of that name is nobody else's (a create whose answer
    /// was lost, or a record an accountant made); a customer or vendor whose name another
    /// document or another kind of record holds goes again under [`distinct_name`].
    async fn name_taken(&self, c: &Create) -> Result<Result<Posted, QboError>, QboError> {
        let found = self.find_one(c).await?;
        if !found.is_null() {
            return self.adopt(c, &found).await;
        }
        let (Find::Name { value, .. }, Ok(id)) =
            (&c.find, c.key.parse::<tillmesh_protocol::DocId>())
        else {
            return Ok(Err(name_taken(c)));
        };
        let key = mapping::party_name_key(&c.key);
        // Its distinct name taken too (it is what was tried): a person must sort that out.
        let tried_distinct = self.state.note(&key)?.as_deref() == Some(value.as_str());
        if matches!(c.entity.as_str(), "Customer" | "Vendor") && !tried_distinct {
            let renamed = mapping::distinct_name(value, id);
            self.state.set_note(&key, &renamed)?;
            return Ok(Err(QboError::Unavailable(format!(
                "another record in QuickBooks is named '{value}'; this one goes as '{renamed}'"
            ))));
        }
        Ok(Err(name_taken(c)))
    }

    /// A record QuickBooks held already becomes this document's: merged as an edit from
    /// QuickBooks would be (its values win where the two differ), never overwritten by what
    /// the mesh lacks, so an accountant's details are not erased.
    async fn adopt(&self, c: &Create, row: &Value) -> Result<Result<Posted, QboError>, QboError> {
        let currency = self.books().currency;
        let mut posted = match posted_from(c, row, currency) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let Some(mesh) = super::edits::fields_of(&c.entity, &c.body, currency) else {
            return Ok(Ok(posted));
        };
        posted.fields = Some(mesh);
        self.merge_from_qbo(&c.key, c.key.parse().ok(), posted.clone(), row)
            .await?;
        Ok(Ok(self.state.posted(&c.key)?.unwrap_or(posted)))
    }

    pub(super) async fn find_one(&self, c: &Create) -> Result<Value, QboError> {
        Ok(self
            .find_many(std::slice::from_ref(c))
            .await?
            .remove(&c.key)
            .unwrap_or(Value::Null))
    }

    /// The objects QBO holds for these creates, by key.
    pub(super) async fn find_many(
        &self,
        creates: &[Create],
    ) -> Result<HashMap<String, Value>, QboError> {
        let mut found = HashMap::new();
        let mut by_query: BTreeMap<(String, String), Vec<&Create>> = BTreeMap::new();
        for c in creates {
            let field = match &c.find {
                Find::Note { field, .. } => field.clone(),
                Find::Name { field, .. } => field.clone(),
            };
            by_query
                .entry((c.entity.clone(), field))
                .or_default()
                .push(c);
        }
        for ((entity, field), group) in by_query {
            for chunk in group.chunks(super::client::BATCH_ITEMS_MAX) {
                let values: BTreeSet<String> = chunk
                    .iter()
                    .map(|c| match &c.find {
                        Find::Note { number, .. } => quoted(number),
                        Find::Name { value, .. } => quoted(value),
                    })
                    .collect();
                let values: Vec<String> = values.into_iter().collect();
                // Inactive name-list entities too: a name stays taken when one is made inactive.
                let active = if matches!(chunk[0].find, Find::Name { .. }) {
                    " AND Active IN (true, false)"
                } else {
                    ""
                };
                // Every page: a day's payments, say, may number more than one answer holds.
                let mut rows = Vec::new();
                loop {
                    let v = self
                        .qbo
                        .query(&format!(
                            "select * from {entity} where {field} IN ({}){active} STARTPOSITION {} MAXRESULTS {QUERY_ROWS_MAX}",
                            values.join(", "),
                            rows.len() + 1,
                        ))
                        .await?;
                    let page = v["QueryResponse"][entity.as_str()]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let full = page.len() >= QUERY_ROWS_MAX;
                    rows.extend(page);
                    if !full {
                        break;
                    }
                }
                for c in chunk {
                    let mut matching = rows.iter().filter(|r| match &c.find {
                        Find::Note {
                            field,
                            number,
                            note,
                        } => {
                            // A note may carry more than the line that names its document (a
                            // purchase's memo): that line is what identifies it.
                            r[field.as_str()] == number.as_str()
                                && r["PrivateNote"]
                                    .as_str()
                                    .is_some_and(|n| n.lines().any(|l| l.trim() == note))
                        }
                        Find::Name { field, value } => r[field.as_str()]
                            .as_str()
                            .is_some_and(|n| mapping::same_name(n, value)),
                    });
                    // A record another document was posted as is never this one's.
                    let row = loop {
                        let Some(r) = matching.next() else { break None };
                        let theirs = match r["Id"].as_str() {
                            Some(id) => self
                                .state
                                .posted_by_qbo(&entity, id)?
                                .is_some_and(|(key, _)| key != c.key),
                            None => true,
                        };
                        if !theirs {
                            break Some(r);
                        }
                    };
                    if let Some(row) = row {
                        found.insert(c.key.clone(), row.clone());
                    }
                }
            }
        }
        Ok(found)
    }
}

pub(super) fn posted_from(
    c: &Create,
    made: &Value,
    currency: tillmesh_protocol::Currency,
) -> Result<Posted, QboError> {
    let minor = |v: &Value| amounts::from_qbo(v, currency);
    let qbo_id = made["Id"].as_str().ok_or_else(|| {
        QboError::Unavailable(format!("QuickBooks has no {} for {}", c.entity, c.key))
    })?;
    Ok(Posted {
        entity: c.entity.clone(),
        qbo_id: qbo_id.to_owned(),
        sync_token: made["SyncToken"].as_str().unwrap_or("0").to_owned(),
        total_minor: minor(&made["TotalAmt"]),
        tax_minor: minor(&made["TxnTaxDetail"]["TotalTax"]),
        balance_minor: minor(&made["Balance"])
            .filter(|_| matches!(c.entity.as_str(), "Customer" | "Vendor" | "Invoice")),
        fields: super::edits::fields_of(&c.entity, made, currency),
        ..Posted::default()
    })
}

/// What an answer's successes record: each key, and each key a summary stands for.
pub(super) fn records(outcomes: &[Outcome]) -> Vec<(String, Posted)> {
    let mut made = Vec::new();
    for (c, o) in outcomes {
        if let Ok(p) = o {
            made.push((c.key.clone(), p.clone()));
            for cover in &c.covers {
                made.push((
                    cover.clone(),
                    Posted {
                        summary: Some(c.key.clone()),
                        total_minor: None,
                        tax_minor: None,
                        ..p.clone()
                    },
                ));
            }
        }
    }
    made
}

/// A 6240 whose name no record of this kind holds: another kind has it (QBO's names are
/// unique across customers, vendors and employees).
pub(super) fn name_taken(c: &Create) -> QboError {
    let name = match &c.find {
        Find::Name { value, .. } => value.as_str(),
        Find::Note { number, .. } => number.as_str(),
    };
    QboError::Fault {
        status: 400,
        code: "6240".into(),
        message: "Duplicate Name Exists Error".into(),
        detail: format!(
            "QuickBooks already has another kind of record (a customer, vendor or employee) named '{name}'; rename one of them"
        ),
    }
}

/// A fault as QBO's batch answer carries it, for a single create's refusal.
pub(super) fn fault_body(e: &QboError) -> Value {
    match e {
        QboError::Fault {
            code,
            message,
            detail,
            ..
        } => json!({"Error": [{"code": code, "Message": message, "Detail": detail}]}),
        other => json!({"Error": [{"code": "", "Message": other.to_string(), "Detail": ""}]}),
    }
}

pub(super) fn fault_of(fault: &Value) -> QboError {
    let e = &fault["Error"][0];
    if e["code"].as_str().is_none_or(str::is_empty) {
        return QboError::Unavailable(format!(
            "QuickBooks answered with a fault it did not explain: {fault}"
        ));
    }
    QboError::Fault {
        status: 400,
        code: e["code"].as_str().unwrap_or("").to_owned(),
        message: e["Message"].as_str().unwrap_or("").to_owned(),
        detail: e["Detail"].as_str().unwrap_or("").to_owned(),
    }
}
