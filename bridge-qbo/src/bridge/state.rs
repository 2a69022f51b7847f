//! What the bridge keeps beside its node's store, in `DIR/bridge.redb`: the QuickBooks
//! connection and tokens (sealed with the device's storage key), and the map from mesh
//! documents to QBO objects, which is the outbox's memory of what is posted.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tillmesh_node::store::seal::Sealer;

/// Sealed JSON values: `connection`, `tokens`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Mesh document id (or `item/<sku>`) -> what it is in QBO (JSON).
const POSTED: TableDefinition<&str, &[u8]> = TableDefinition::new("posted");
/// QBO's objects back to their keys in `posted` (`Entity/Id` → key), for the pull. Sales in a
/// summary share its receipt and are left out: the summary's own key is listed.
const BY_QBO: TableDefinition<&str, &str> = TableDefinition::new("by_qbo");
/// In `notes` once `by_qbo` holds everything in `posted`.
const BY_QBO_NOTE: &str = "by_qbo_indexed";
/// Plain counters and times: last pull, pushes, failures.
const NOTES: TableDefinition<&str, &[u8]> = TableDefinition::new("notes");
/// Batch `requestid` -> the creates it carries (sealed JSON: names and amounts), written
/// before the batch is sent and removed in the transaction that records its answer. One
/// left behind means a batch whose fate is unknown: it is settled before anything new goes.
const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("intents");

/// Where the realm is and who the bridge is to Intuit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub base_url: String,
    /// Intuit's consent page, for connecting again from the bridge's connect page.
    #[serde(default)]
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub realm_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// The app's webhook verifier token, to check `intuit-signature` on notifications.
    #[serde(default)]
    pub verifier_token: Option<String>,
    /// A root to trust beside the platform's (`--qbo-ca`), kept so `run` uses what
    /// `connect` did.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub access_expires_ms: i64,
    pub refresh_token: String,
    pub refresh_expires_ms: i64,
}

/// A mesh document as posted to QBO.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Posted {
    pub entity: String,
    pub qbo_id: String,
    pub sync_token: String,
    /// The total QBO holds (minor units), for transactions.
    #[serde(default)]
    pub total_minor: Option<i64>,
    /// The tax QBO holds (minor units), for transactions.
    #[serde(default)]
    pub tax_minor: Option<i64>,
    /// A customer's open balance in QBO (minor units).
    #[serde(default)]
    pub balance_minor: Option<i64>,
    #[serde(default)]
    pub voided: bool,
    /// In summary mode, the summary receipt (its key) a sale went into. A sale voided before
    /// its summary is recorded with it and an empty `qbo_id`: nothing of it is in QBO.
    #[serde(default)]
    pub summary: Option<String>,
    /// A refund that reached the bridge after its sale's void went to QBO: the void already
    /// gave all of the sale's money back (or the rest no refund then took), so the refund is
    /// not booked again. Names the sale; `qbo_id` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by_void_of: Option<String>,
    /// For customers, vendors and items: their edited fields as the mesh and QuickBooks last
    /// agreed (see `edits`), the base of the three-way merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Fields>,
}

/// Edited fields by name, in the mesh's terms (see `edits::fields_of`).
pub type Fields = std::collections::BTreeMap<String, serde_json::Value>;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the bridge's store could not be used: {0}")]
    Store(String),
    #[error(
        "the bridge's QuickBooks secrets do not open with this device's storage key; run `tillmesh-bridge connect` again"
    )]
    Sealed,
}

macro_rules! store_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self { StateError::Store(e.to_string()) }
        }
    )*};
}
store_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

fn qbo_key(entity: &str, qbo_id: &str) -> String {
    format!("{entity}/{qbo_id}")
}

fn insert_posted(tx: &WriteTransaction, key: &str, p: &Posted) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(p)?;
    tx.open_table(POSTED)?.insert(key, bytes.as_slice())?;
    index_posted(tx, key, p)
}

fn index_posted(tx: &WriteTransaction, key: &str, p: &Posted) -> Result<(), StateError> {
    if indexed_posted(p) {
        tx.open_table(BY_QBO)?
            .insert(qbo_key(&p.entity, &p.qbo_id).as_str(), key)?;
    }
    Ok(())
}

/// A sale in a summary shares its receipt (the summary's key stands for it), and a sale
/// voided before its summary has nothing in QBO.
fn indexed_posted(p: &Posted) -> bool {
    p.summary.is_none() && !p.qbo_id.is_empty()
}

pub struct State {
    db: Database,
    sealer: Arc<Sealer>,
}

impl State {
    pub fn open(dir: &Path, sealer: Arc<Sealer>) -> Result<State, StateError> {
        let db = Database::create(dir.join("bridge.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(SECRETS)?;
        tx.open_table(POSTED)?;
        tx.open_table(NOTES)?;
        tx.open_table(INTENTS)?;
        // A store written before the index (development builds only): index what is posted,
        // once; the note says it is done.
        let indexed = tx.open_table(NOTES)?.get(BY_QBO_NOTE)?.is_some();
        if !indexed {
            let posted = tx.open_table(POSTED)?;
            let mut index = tx.open_table(BY_QBO)?;
            for item in posted.iter()? {
                let (k, v) = item?;
                let p: Posted = serde_json::from_slice(v.value())?;
                if indexed_posted(&p) {
                    index.insert(qbo_key(&p.entity, &p.qbo_id).as_str(), k.value())?;
                }
            }
            tx.open_table(NOTES)?.insert(BY_QBO_NOTE, "1".as_bytes())?;
        }
        tx.commit()?;
        Ok(State { db, sealer })
    }

    fn secret<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SECRETS)?;
        let Some(v) = t.get(key)? else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open("bridge_secrets", key.as_bytes(), v.value())
            .map_err(|_| StateError::Sealed)?;
        Ok(Some(serde_json::from_slice(&plain)?))
    }

    /// Durable before it returns: a rotated refresh token is written before it is used.
    fn put_secret<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let plain = serde_json::to_vec(value)?;
        let sealed = self.sealer.seal("bridge_secrets", key.as_bytes(), &plain);
        let tx = self.db.begin_write()?;
        tx.open_table(SECRETS)?.insert(key, sealed.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn connection(&self) -> Result<Option<Connection>, StateError> {
        self.secret("connection")
    }

    pub fn set_connection(&self, c: &Connection) -> Result<(), StateError> {
        self.put_secret("connection", c)
    }

    pub fn tokens(&self) -> Result<Option<Tokens>, StateError> {
        self.secret("tokens")
    }

    pub fn set_tokens(&self, t: &Tokens) -> Result<(), StateError> {
        self.put_secret("tokens", t)
    }

    pub fn posted(&self, key: &str) -> Result<Option<Posted>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(POSTED)?;
        Ok(match t.get(key)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Durable before it returns: once recorded, a document is never posted again.
    pub fn set_posted(&self, key: &str, p: &Posted) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        insert_posted(&tx, key, p)?;
        tx.commit()?;
        Ok(())
    }

    /// The highest number after `prefix` among posted keys (the summaries of one period),
    /// or 0.
    pub fn highest_suffix(&self, prefix: &str) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(POSTED)?;
        let mut highest = 0;
        for item in t.range(prefix..)? {
            let item = item?;
            let Some(rest) = item.0.value().strip_prefix(prefix) else {
                break;
            };
            highest = highest.max(rest.parse().unwrap_or(0));
        }
        Ok(highest)
    }

    pub fn posted_count(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(POSTED)?.len()?)
    }

    /// The posted document a QBO object stands for (not a sale inside a summary), and its
    /// record: the pull's way back from QBO's ids.
    pub fn posted_by_qbo(
        &self,
        entity: &str,
        qbo_id: &str,
    ) -> Result<Option<(String, Posted)>, StateError> {
        let tx = self.db.begin_read()?;
        let Some(key) = tx
            .open_table(BY_QBO)?
            .get(qbo_key(entity, qbo_id).as_str())?
            .map(|k| k.value().to_owned())
        else {
            return Ok(None);
        };
        let Some(v) = tx.open_table(POSTED)?.get(key.as_str())? else {
            return Ok(None);
        };
        let p: Posted = serde_json::from_slice(v.value())?;
        Ok((p.entity == entity && p.qbo_id == qbo_id && p.summary.is_none()).then_some((key, p)))
    }

    /// Records a batch about to be sent; durable before it returns.
    pub fn set_intent<T: Serialize>(
        &self,
        request_id: &str,
        creates: &T,
    ) -> Result<(), StateError> {
        let plain = serde_json::to_vec(creates)?;
        let sealed = self
            .sealer
            .seal("bridge_intents", request_id.as_bytes(), &plain);
        let tx = self.db.begin_write()?;
        tx.open_table(INTENTS)?
            .insert(request_id, sealed.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Batches sent whose answers were never recorded.
    pub fn intents<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<(String, T)>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INTENTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let plain = self
                .sealer
                .open("bridge_intents", k.value().as_bytes(), v.value())
                .map_err(|_| StateError::Sealed)?;
            out.push((k.value().to_owned(), serde_json::from_slice(&plain)?));
        }
        Ok(out)
    }

    /// Records what a batch made and forgets the batch, in one transaction: a crash leaves
    /// either both or neither.
    pub fn finish_intent(
        &self,
        request_id: &str,
        made: &[(String, Posted)],
    ) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            for (key, p) in made {
                insert_posted(&tx, key, p)?;
            }
            tx.open_table(INTENTS)?.remove(request_id)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn note(&self, key: &str) -> Result<Option<String>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(NOTES)?;
        Ok(t.get(key)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    pub fn set_note(&self, key: &str, value: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(NOTES)?.insert(key, value.as_bytes())?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillmesh_node::store::seal::StorageKey;

    fn posted(entity: &str, qbo_id: &str, summary: Option<&str>) -> Posted {
        Posted {
            entity: entity.into(),
            qbo_id: qbo_id.into(),
            sync_token: "0".into(),
            summary: summary.map(Into::into),
            ..Posted::default()
        }
    }

    #[test]
    fn qbo_ids_lead_back_to_their_documents_but_not_to_the_sales_inside_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(Sealer::new(&StorageKey::random()));
        let state = State::open(dir.path(), sealer.clone()).unwrap();
        state
            .set_posted("sale-a", &posted("SalesReceipt", "7", None))
            .unwrap();
        state
            .finish_intent(
                "rid",
                &[
                    ("summary/1".into(), posted("SalesReceipt", "8", None)),
                    (
                        "sale-b".into(),
                        posted("SalesReceipt", "8", Some("summary/1")),
                    ),
                    ("cust".into(), posted("Customer", "7", None)),
                ],
            )
            .unwrap();
        let key = |entity, id| state.posted_by_qbo(entity, id).unwrap().map(|(k, _)| k);
        assert_eq!(key("SalesReceipt", "7").as_deref(), Some("sale-a"));
        assert_eq!(key("SalesReceipt", "8").as_deref(), Some("summary/1"));
        assert_eq!(key("Customer", "7").as_deref(), Some("cust"));
        assert_eq!(key("Invoice", "7"), None);

        // A store written before the index had it: the index is built when it opens.
        drop(state);
        let db = Database::create(dir.path().join("bridge.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(BY_QBO).unwrap();
        tx.open_table(NOTES).unwrap().remove(BY_QBO_NOTE).unwrap();
        tx.commit().unwrap();
        drop(db);
        let state = State::open(dir.path(), sealer).unwrap();
        assert_eq!(
            state
                .posted_by_qbo("SalesReceipt", "8")
                .unwrap()
                .map(|(k, _)| k)
                .as_deref(),
            Some("summary/1")
        );
    }
}
