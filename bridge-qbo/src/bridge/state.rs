//! What the bridge keeps beside its node's store, in `DIR/bridge.redb`: the QuickBooks
//! connection and tokens (sealed with the device's storage key), and the map from mesh
//! documents to QBO objects, which is the outbox's memory of what is posted.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tillmesh_node::store::seal::Sealer;

/// Sealed JSON values: `connection`, `tokens`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Mesh document id (or `item/<sku>`) -> what it is in QBO (JSON).
const POSTED: TableDefinition<&str, &[u8]> = TableDefinition::new("posted");
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
}

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
        let bytes = serde_json::to_vec(p)?;
        let tx = self.db.begin_write()?;
        tx.open_table(POSTED)?.insert(key, bytes.as_slice())?;
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

    /// Every posted document, for the pull's map back from QBO ids.
    pub fn all_posted(&self) -> Result<Vec<(String, Posted)>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(POSTED)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
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
            let mut posted = tx.open_table(POSTED)?;
            for (key, p) in made {
                let bytes = serde_json::to_vec(p)?;
                posted.insert(key.as_str(), bytes.as_slice())?;
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
