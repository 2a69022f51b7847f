//! The pull: what QuickBooks changed since the last look, written into the mesh.
//!
//! QBO is the authority on money. A receipt's total and tax as QBO holds them (after an
//! accountant's edit, a void, a deletion) go into the document's `ledger`, which every view
//! shows in place of the till's figures; where they differ from the till's, the sale is a
//! conflict for review. A customer made in QBO becomes a mesh customer; a known one's
//! balance is kept in its ledger.

use serde_json::Value;
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::NewCustomer;
use tillmesh_protocol::schema::{Customer, Ledger};
use tillmesh_protocol::{DocId, DocType, Money};

use super::client::{QboError, enc};
use super::edits::MeshRecord;
use super::state::Posted;
use super::{Bridge, dates, mapping, now_ms};

/// The entities the pull reads from QBO's change feed.
const PULLED: [&str; 8] = [
    "SalesReceipt",
    "RefundReceipt",
    "Invoice",
    "Payment",
    "Purchase",
    "Customer",
    "Vendor",
    "Item",
];
/// The next pull starts this long before QBO's time of the last, so nothing falls between.
const OVERLAP_MS: u64 = 2_000;
/// QBO's change feed reaches back 30 days, and answers at most 1,000 objects per entity.
const CDC_DAYS_MAX: u64 = 30;
const CDC_ROWS_MAX: usize = 1_000;
const DAY_MS: u64 = 86_400_000;

impl Bridge {
    /// Reads QBO's changes since the last pull. Returns how many documents it changed.
    pub async fn pull(&self) -> Result<usize, QboError> {
        if !self.admitted() {
            return Ok(0);
        }
        self.check_books().await?;
        let started = now_ms();
        // Older than QBO keeps (a first pull, or a bridge off for a month): from as far back as
        // it goes, a day inside the limit for the clocks' sake.
        let oldest = started.saturating_sub((CDC_DAYS_MAX - 1) * DAY_MS);
        let since_ms = self
            .state
            .note("pulled_since")?
            .and_then(|t| dates::parse(&t))
            .map_or(oldest, |ms| ms.max(oldest));
        let since = dates::utc(since_ms);
        let v = self
            .qbo
            .get(&format!(
                "cdc?entities={}&changedSince={}",
                PULLED.join(","),
                enc(&since)
            ))
            .await?;
        // QBO's own clock decides where the next pull starts: the bridge's may differ.
        let qbo_now = v["time"].as_str().and_then(dates::parse).unwrap_or(started);
        let mut rows: Vec<(&str, Value)> = Vec::new();
        // Where a full page came back, the next pull starts at its newest change, not at now.
        let mut resume: Option<u64> = None;
        for part in v["CDCResponse"][0]["QueryResponse"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for entity in PULLED {
                let page = part[entity].as_array().map(Vec::as_slice).unwrap_or(&[]);
                if page.len() >= CDC_ROWS_MAX {
                    let newest = page
                        .iter()
                        .filter_map(|r| r["MetaData"]["LastUpdatedTime"].as_str())
                        .filter_map(dates::parse)
                        .max()
                        .unwrap_or(since_ms);
                    resume = Some(resume.map_or(newest, |r| r.min(newest)));
                }
                rows.extend(page.iter().map(|row| (entity, row.clone())));
            }
        }
        // A row deferred or failed holds the cursor: the same changes come again next time.
        let mut hold = false;
        let mut changed = 0;
        if !rows.is_empty() {
            // A batch whose fate is unknown may have made some of these: settle it first, so
            // a customer it made is not taken for one made in QBO.
            let unsettled = !self.state.intents::<Value>()?.is_empty();
            for (entity, row) in rows {
                let Some(qbo_id) = row["Id"].as_str() else {
                    continue;
                };
                // A sale in a summary shares its receipt: QBO's figures are the summary's.
                let known = self.state.posted_by_qbo(entity, qbo_id)?;
                let outcome = match (entity, known) {
                    ("Customer", None) if unsettled => {
                        hold = true;
                        Ok(false)
                    }
                    ("Customer", None) if row["status"] != "Deleted" => {
                        self.customer_from_qbo(&row).await
                    }
                    (_, None) => Ok(false),
                    (_, Some((key, posted))) => self.pulled(&key, posted, &row).await,
                };
                match outcome {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(e @ (QboError::Reconnect(_) | QboError::State(_))) => return Err(e),
                    Err(e) => {
                        self.failed(format!("{entity} {qbo_id} from QuickBooks"), &e);
                        hold = true;
                    }
                }
            }
        }
        if !hold {
            let next = resume.unwrap_or_else(|| qbo_now.saturating_sub(OVERLAP_MS));
            self.state.set_note("pulled_since", &dates::utc(next))?;
        }
        self.update(|s| s.last_pull_ms = Some(now_ms()));
        Ok(changed)
    }

    /// A posted object QBO changed: its figures go into the ledger if they moved.
    async fn pulled(&self, key: &str, mut posted: Posted, row: &Value) -> Result<bool, QboError> {
        let deleted = row["status"] == "Deleted";
        // Descriptive fields (and an item's price and flag) both sides edit: QuickBooks' edits
        // come into the mesh.
        let mut edited = false;
        if !deleted
            && matches!(
                posted.entity.as_str(),
                "Customer" | "Vendor" | "Item" | "Purchase"
            )
        {
            edited = self.merge_from_qbo(key, None, posted.clone(), row).await?;
            posted = self.state.posted(key)?.unwrap_or(posted);
        }
        let before = posted.clone();
        if deleted {
            posted.total_minor = Some(0);
            posted.tax_minor = Some(0);
        } else {
            posted.sync_token = row["SyncToken"]
                .as_str()
                .unwrap_or(&posted.sync_token)
                .to_owned();
            if matches!(posted.entity.as_str(), "Customer" | "Vendor" | "Invoice") {
                posted.balance_minor = self.minor(&row["Balance"]);
            }
            if !matches!(posted.entity.as_str(), "Customer" | "Vendor") {
                posted.total_minor = self.minor(&row["TotalAmt"]);
                posted.tax_minor = self
                    .minor(&row["TxnTaxDetail"]["TotalTax"])
                    .or(posted.tax_minor);
            }
        }
        let Ok(doc_id) = key.parse::<DocId>() else {
            // An item's key is its SKU: it has no figures of its own to pull.
            return Ok(edited);
        };
        let Some(view) = self
            .repo
            .view(&doc_id)
            .map_err(|e| QboError::Unavailable(format!("reading {doc_id}: {e}")))?
        else {
            return Ok(false);
        };
        let ledger: Option<Ledger> = serde_json::from_value(view["ledger"].clone()).ok();
        // A payment's figure is its `amount`; everything else's its `total`.
        let till_total: Option<Money> = serde_json::from_value(view["total"].clone())
            .or_else(|_| serde_json::from_value(view["amount"].clone()))
            .ok();
        let currency = till_total.map_or(self.books().currency, |m| m.currency);
        if posted != before {
            self.state.set_posted(key, &posted)?;
        }
        let ledger_total = ledger
            .as_ref()
            .and_then(|l| l.total)
            .map(|m| m.amount_minor);
        let ledger_tax = ledger.as_ref().and_then(|l| l.tax).map(|m| m.amount_minor);
        let moved = posted.total_minor.is_some() && ledger_total != posted.total_minor
            || posted.tax_minor.is_some() && ledger_tax != posted.tax_minor
            || posted.balance_minor.is_some()
                && ledger
                    .as_ref()
                    .and_then(|l| l.balance)
                    .map(|m| m.amount_minor)
                    != posted.balance_minor;
        if !moved {
            return Ok(edited);
        }
        let conflict = match (posted.total_minor, till_total) {
            (Some(qbo), Some(till)) => qbo != till.amount_minor && ledger_total != Some(qbo),
            _ => false,
        };
        self.write_ledger(doc_id, ledger.as_ref(), &posted, currency, true)
            .await?;
        if conflict {
            tracing::info!(doc = %doc_id, till = ?till_total, qbo = ?posted.total_minor, "QuickBooks holds another total: it wins");
            // Counted once the ledger holds it: a write that fails is tried, and counted,
            // again.
            let conflicts = conflicts_counted(&self.state)? + 1;
            self.state
                .set_note(CONFLICTS_NOTE, &conflicts.to_string())?;
            self.update(|s| s.conflicts = conflicts);
        }
        Ok(true)
    }

    /// A customer an accountant made in QBO joins the mesh. One of the same name already in
    /// the mesh and not yet posted is taken to be it (QBO's names are unique), so a crash
    /// between the bridge's own create and its record never makes a second.
    async fn customer_from_qbo(&self, row: &Value) -> Result<bool, QboError> {
        let name = row["DisplayName"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Ok(false);
        }
        let store = |e: tillmesh_node::repo::ReadError| {
            QboError::Unavailable(format!("reading the store: {e}"))
        };
        let mut same_name = None;
        let mut before = None;
        'scan: loop {
            let page = self
                .repo
                .list(DocType::Customer, before, 1000)
                .map_err(store)?;
            let Some(last) = page.last() else { break };
            before = Some(last.0);
            let n = page.len();
            for (id, v) in page {
                // Compared as QuickBooks compares names, its own or the one it went as.
                let own = v["display_name"].as_str().unwrap_or_default();
                let named = mapping::same_name(own, &name)
                    || mapping::same_name(&mapping::distinct_name(own, id), &name);
                if named && self.state.posted(&id.to_string())?.is_none() {
                    same_name = Some(id);
                    break 'scan;
                }
            }
            if n < 1000 {
                break;
            }
        }
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let id = match same_name {
            Some(id) => id,
            None => {
                let made = self
                    .repo
                    .execute(Command::CreateCustomer(NewCustomer {
                        display_name: name.clone(),
                        given_name: text(&row["GivenName"]),
                        family_name: text(&row["FamilyName"]),
                        company_name: text(&row["CompanyName"]),
                        email: text(&row["PrimaryEmailAddr"]["Address"]),
                        phone: text(&row["PrimaryPhone"]["FreeFormNumber"]),
                        notes: text(&row["Notes"]),
                        address: None,
                    }))
                    .await
                    .map_err(|e| {
                        QboError::Unavailable(format!(
                            "adding QuickBooks customer {name} to the mesh: {e}"
                        ))
                    })?;
                tracing::info!(customer = %made.doc_id, %name, "a customer made in QuickBooks joins the mesh");
                made.doc_id
            }
        };
        let mut posted = Posted {
            entity: "Customer".into(),
            qbo_id: row["Id"].as_str().unwrap_or_default().to_owned(),
            sync_token: row["SyncToken"].as_str().unwrap_or("0").to_owned(),
            balance_minor: self.minor(&row["Balance"]),
            ..Posted::default()
        };
        let key = id.to_string();
        let read = |id| {
            self.repo
                .get::<Customer>(&id)
                .map_err(|e| QboError::Unavailable(format!("reading {id}: {e}")))
        };
        // The mesh's fields are the base, and QuickBooks' record is merged into them as an
        // edit from QuickBooks: its values win where the two differ, and what the mesh lacks
        // never erases what the accountant wrote.
        if let Some(c) = read(id)? {
            posted.fields = Some(self.mesh_fields(id, &MeshRecord::Customer(c))?);
        }
        self.state.set_posted(&key, &posted)?;
        self.merge_from_qbo(&key, Some(id), posted.clone(), row)
            .await?;
        let posted = self.state.posted(&key)?.unwrap_or(posted);
        let current: Option<Customer> = read(id)?;
        let currency = self.books().currency;
        self.write_ledger(
            id,
            current.as_ref().and_then(|c| c.0.ledger.as_ref()),
            &posted,
            currency,
            true,
        )
        .await?;
        Ok(true)
    }
}

/// Where the count of QuickBooks' overrides is kept, so the status's figure outlives a restart.
const CONFLICTS_NOTE: &str = "conflicts";

pub(super) fn conflicts_counted(
    state: &super::state::State,
) -> Result<u64, super::state::StateError> {
    Ok(state
        .note(CONFLICTS_NOTE)?
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
