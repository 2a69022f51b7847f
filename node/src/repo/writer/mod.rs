//! The writer thread: stages commands and ingested entries into one redb transaction per batch,
//! commits, then answers every caller of the batch.
//!
//! A command is checked completely before it touches a document, so a refused command changes
//! nothing; anything that fails after that point fails the whole batch, and the writer reloads
//! its in-memory state from the store (see `docs` for why dropping the cache is always safe).
//!
//! - this file: the writer's state, opening (replay of the write-ahead log), checkpoints and
//!   recovery, and what the batches share;
//! - [`batch`]: the loop, one transaction per batch, the panic guard, views and stock;
//! - [`commands`]: this device's own commands;
//! - [`ingest`]: entries from other devices: the checks in order, then the apply;
//! - [`checks`]: each check an entry from another device must pass, one step each;
//! - [`undo`]: entries that do not stand (the membership says so, perhaps after the fact),
//!   and the documents rebuilt without them.

mod batch;
mod checks;
mod commands;
mod ingest;
mod rights;
mod undo;

pub use commands::RESOLVABLE;
pub use undo::{RECLAIMS_FROM_MEMBER, SPENDS_UNHELD_RIGHTS, UndoneRecord};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{AutoCommit, Change, ChangeHash};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde_json::Value as Json;
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{
    Customer, Document, Expense, Invoice, Party, Payment, Product, Refund, RefundLineInput, Sale,
    SaleStatus, Settings, StockAdjustment, StockPolicy, StockTransfer, TaxRate, Vendor, VoidInfo,
};
use tillmesh_protocol::{
    AccessError, DeviceId, DocChanges, DocId, DocType, Entry, EntryHash, Member, MemberOp,
    Membership, OpRecord, Payload, Role, SignedEntry,
};
use tokio::sync::{broadcast, mpsc};

use super::docs::DocCache;
use super::prepare::{Device, Prepared};
use super::requests::*;
use super::{
    Answer, DocEvent, IngestOutcome, Job, MemberCommand, Origin, Serial, WriteError, Written,
    new_doc_id, now_ms,
};
use crate::store::tables::{
    HEADS, MEMBER_OPS, META, QUARANTINE, SKUS, Sealed, Tables, UNDONE, VIEWS, meta_key,
    rejected_record,
};
use crate::store::wal::Wal;
use crate::store::{self, Identity};

/// Jobs taken into one transaction at most; more wait for the next commit.
const BATCH_JOBS_MAX: usize = 512;
/// Refused entries kept aside for people to look at; older ones are dropped.
const REJECTED_KEPT_MAX: u64 = 10_000;
/// How often redb is made durable (and the write-ahead log emptied) while writes come in.
/// It also bounds how much a restart after a crash has to replay. `TILLMESH_CHECKPOINT_MS`
/// overrides it (tests use that to hold everything in the log).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

fn checkpoint_interval() -> Duration {
    std::env::var("TILLMESH_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(CHECKPOINT_INTERVAL)
}
/// A log larger than this is checkpointed at once, so replay after a crash stays short.
const WAL_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Switches for simulations of crashes inside one process (see `Repo::power_cut`).
#[derive(Default)]
pub(crate) struct CrashHooks {
    /// Exit without the closing checkpoint.
    pub power_cut: std::sync::atomic::AtomicBool,
    /// Copy the store file after every checkpoint.
    pub copy_at_checkpoints: std::sync::atomic::AtomicBool,
    /// Local commands still to panic while staged (tests of the writer's panic guard).
    pub panic_commands: std::sync::atomic::AtomicU32,
    /// An entry `(author, seq)` whose staging panics every time (the same tests).
    pub panic_ingest: std::sync::Mutex<Option<(DeviceId, u64)>>,
    /// An entry `(author, seq)` whose batch panics after staging, while its views are
    /// rebuilt, every time (a panic no job's guard sees).
    pub panic_finish: std::sync::Mutex<Option<(DeviceId, u64)>>,
    /// Batches still to panic after their log append and before redb has them.
    pub panic_after_append: std::sync::atomic::AtomicU32,
    /// Held by a test to make the writer wait before it gathers a batch, so that jobs sent
    /// meanwhile are staged together.
    pub hold: std::sync::Mutex<()>,
    /// The writer holds a job and waits on `hold`.
    pub parked: std::sync::atomic::AtomicBool,
}

pub(crate) struct Writer {
    hooks: Arc<CrashHooks>,
    /// Entries whose staging panicked, and how often: refused at the limit, so one bad entry
    /// cannot stop every batch it arrives in.
    panicked: HashMap<(DeviceId, u64), u32>,
    /// Entries that were in a batch that panicked outside any one job: each is staged in a
    /// batch of its own from now on, so a panic can be laid at its door and no other's.
    suspects: HashSet<(DeviceId, u64)>,
    /// The batch being staged holds the entry of `CrashHooks::panic_finish`.
    finish_panics: bool,
    store: Arc<store::Shared>,
    id: Identity,
    settings_id: DocId,
    // Everything below is a cache of the store, reloaded after any failed batch.
    head: (u64, EntryHash),
    receipt_seq: u64,
    rejected_seq: u64,
    settings: Settings,
    /// Whether the mesh settings document is held: a device that just joined has none yet,
    /// and judges nothing that depends on them until it has.
    settings_received: bool,
    skus: HashMap<String, DocId>,
    /// Every membership operation held, and the membership they define.
    member_ops: Vec<OpRecord>,
    membership: Arc<Membership>,
    /// Devices proven to have signed two different entries at one seq: nothing more of them
    /// is accepted here.
    quarantined: HashSet<DeviceId>,
    cache: DocCache,
    /// Acknowledged entries redb holds only in memory, until the next checkpoint.
    wal: Wal,
    /// The entries the current batch stored, in order, for the log.
    wal_batch: Vec<Vec<u8>>,
    last_checkpoint: Instant,
    checkpoint_interval: Duration,
    /// redb failed a write: its handle refuses all further ones until reopened.
    redb_failed: bool,
    /// The log must be cut back to this length: it holds a batch its callers were told failed.
    wal_cut: Option<u64>,
    /// A recovery did not finish: no batch runs until `recover` succeeds, since writing on a
    /// rolled-back store would let a checkpoint empty the log of writes the store lacks.
    needs_recovery: bool,
    /// Shared with the preparers: the receipt counter they take numbers from.
    device: Arc<Device>,
    /// Rights moved by the entries staged in the current batch, which the store's count
    /// (written by `finish`) does not hold yet.
    rights_staged: HashMap<(DocId, DeviceId), i64>,
    /// This device's moves of its own rights in the command being staged: the rows of the
    /// entry it signs (`commands::sign_and_store`).
    own_moves: rights::RightsMoves,
    /// How long the last batch's write-ahead log append and sync took, for the metrics.
    wal_synced_in: Option<Duration>,
    /// Documents where a held entry waits for changes not held yet (`undo::retry_waiting`).
    waiting_docs: HashSet<DocId>,
}

enum Reply {
    Command(Answer<Written>, Result<Staged, WriteError>),
    Ingest(
        Answer<IngestOutcome>,
        Result<(IngestOutcome, Option<Staged>), WriteError>,
    ),
}

impl Reply {
    /// A failure of the store rather than of the job: the whole batch fails with it.
    fn fatal_error(&self) -> Option<WriteError> {
        let e = match self {
            Reply::Command(_, Err(e)) | Reply::Ingest(_, Err(e)) => e,
            _ => return None,
        };
        is_fatal(e).then(|| e.clone())
    }
}

/// What a staged entry wrote, for the answer and the event stream once committed.
struct Staged {
    primary: DocId,
    docs: Vec<(DocId, DocType)>,
    author: tillmesh_protocol::DeviceId,
    seq: u64,
    /// This device's own entry, for the peers; none for entries received from them.
    own: Option<Arc<SignedEntry>>,
}

fn io_error(e: std::io::Error) -> WriteError {
    // A damaged log says what and where, and what to do.
    if e.kind() == std::io::ErrorKind::InvalidData {
        return WriteError::Damaged(e.to_string());
    }
    if store::is_disk_full(&redb::StorageError::Io(e)) {
        WriteError::DiskFull
    } else {
        WriteError::Storage("the write-ahead log could not be written".into())
    }
}

fn is_fatal(e: &WriteError) -> bool {
    matches!(
        e,
        WriteError::Storage(_)
            | WriteError::Damaged(_)
            | WriteError::DiskFull
            | WriteError::Internal(_)
    )
}

impl Writer {
    pub(crate) fn load(
        store: Arc<store::Shared>,
        id: Identity,
        device: Arc<Device>,
    ) -> Result<Writer, WriteError> {
        let (wal, records) = Wal::open(store.dir(), store.sealer()).map_err(io_error)?;
        let settings_id = DocId::derived(&id.mesh_id, "settings");
        let membership = Arc::new(Membership::new(id.root_id));
        let actor = actor_for(&id.device_id);
        let mut w = Writer {
            hooks: Arc::default(),
            panicked: HashMap::new(),
            suspects: HashSet::new(),
            finish_panics: false,
            store,
            id,
            settings_id,
            head: (0, EntryHash::ZERO),
            receipt_seq: 0,
            rejected_seq: 0,
            settings: Settings::new("", tillmesh_protocol::Currency::USD),
            settings_received: false,
            skus: HashMap::new(),
            member_ops: Vec::new(),
            membership,
            quarantined: HashSet::new(),
            cache: DocCache::new(actor),
            wal,
            wal_batch: Vec::new(),
            last_checkpoint: Instant::now(),
            checkpoint_interval: checkpoint_interval(),
            redb_failed: false,
            wal_cut: None,
            needs_recovery: false,
            device,
            rights_staged: HashMap::new(),
            own_moves: rights::RightsMoves::new(),
            wal_synced_in: None,
            waiting_docs: HashSet::new(),
        };
        w.reload()?;
        w.replay(records)?;
        Ok(w)
    }

    /// Applies the write-ahead log's entries that redb does not hold (after a crash, or after
    /// reopening a failed handle). Entries it holds are duplicates and change nothing. The
    /// commit is not durable and the log is kept: the next checkpoint makes both moot, and a
    /// full disk does not stop the node from coming back with every acknowledged write.
    fn replay(&mut self, records: Vec<Vec<u8>>) -> Result<(), WriteError> {
        if records.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::None)
            .map_err(|e| WriteError::Storage(e.to_string()))?;
        self.rights_staged.clear();
        let mut touched = BTreeSet::new();
        let mut applied = 0usize;
        {
            let mut t = Tables::open(&tx, self.store.sealer())?;
            for (n, bytes) in records.iter().enumerate() {
                match SignedEntry::decode(bytes) {
                    Ok(entry) => {
                        if let (IngestOutcome::Applied, _) =
                            self.stage_ingest(&mut t, &entry, &mut touched, true, None)?
                        {
                            applied += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(record = n, error = %e, "write-ahead log record does not decode; skipped")
                    }
                }
            }
            self.finish(&mut t, &touched)?;
        }
        tx.commit()?;
        self.wal_batch.clear();
        tracing::info!(records = records.len(), applied, "write-ahead log replayed");
        self.reload()?;
        // Made durable at once, so the next open has nothing to replay. If that fails (a full
        // disk), the log keeps everything and is replayed again next time.
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "could not make the replayed log durable yet");
        }
        Ok(())
    }

    /// Makes every non-durable commit durable, then empties the log.
    fn checkpoint(&mut self) -> Result<(), WriteError> {
        if self.wal.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        // An empty durable commit persists every non-durable one before it. Quick repair
        // saves redb's allocator state with it: after a crash redb then opens at once,
        // where rebuilding that state walks the whole file (7.8 s at 1,000,000 sales).
        let mut tx = db.begin_write()?;
        tx.set_quick_repair(true);
        if let Err(e) = tx.commit() {
            self.redb_failed = true;
            return Err(e.into());
        }
        // Durable in redb now: a log that fails to empty is merely replayed (as duplicates).
        self.wal.truncate_to(0).map_err(io_error)?;
        self.last_checkpoint = Instant::now();
        if self
            .hooks
            .copy_at_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let dir = self.store.dir();
            std::fs::copy(store::store_path(dir), store::checkpoint_copy_path(dir))
                .map_err(io_error)?;
        }
        Ok(())
    }

    /// After a failed write: the log cut back to what callers were told was written, a fresh
    /// redb handle if the old one failed, the store's state re-read, and the log re-read from
    /// disk and applied again.
    fn recover(&mut self) {
        self.wal_batch.clear();
        self.finish_panics = false;
        // A panic here (replaying an entry, say) must not stop the writer either: writes are
        // refused until a later recovery succeeds.
        let recovered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_recover()))
                .unwrap_or_else(|p| {
                    Err(WriteError::Internal(format!(
                        "recovery panicked: {}",
                        batch::panic_message(&*p)
                    )))
                });
        self.needs_recovery = recovered.is_err();
        if let Err(e) = recovered {
            tracing::error!(error = %e, "recovering the store failed; writes are refused until it succeeds");
        }
    }

    fn try_recover(&mut self) -> Result<(), WriteError> {
        {
            if let Some(cut) = self.wal_cut {
                self.wal.truncate_to(cut).map_err(io_error)?;
                self.wal_cut = None;
            }
            if self.redb_failed {
                self.store
                    .reopen()
                    .map_err(|e| WriteError::Storage(e.to_string()))?;
                self.redb_failed = false;
            }
            // Whatever was cached came from the failed batch or the failed handle.
            self.reload()?;
            let (wal, records) =
                Wal::open(self.store.dir(), self.store.sealer()).map_err(io_error)?;
            self.wal = wal;
            self.replay(records)
        }
    }

    /// Re-reads every cached counter from the store.
    fn reload(&mut self) -> Result<(), WriteError> {
        self.cache.clear();
        self.rights_staged.clear();
        let tx = self.db()?.begin_read()?;
        let heads = tx.open_table(HEADS)?;
        self.head = heads
            .get(self.id.device_id.as_bytes())?
            .map(|v| {
                let (s, h) = v.value();
                (s, EntryHash(h))
            })
            .unwrap_or((0, EntryHash::ZERO));
        let meta = tx.open_table(META)?;
        let get = |k: &str| -> Result<u64, WriteError> {
            Ok(meta
                .get(k)?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0))
        };
        self.receipt_seq = get(meta_key::RECEIPT_SEQ)?;
        self.device
            .receipts
            .fetch_max(self.receipt_seq, std::sync::atomic::Ordering::Relaxed);
        self.rejected_seq = get(meta_key::REJECTED_SEQ)?;
        let views = Sealed::new(tx.open_table(VIEWS)?, self.store.sealer());
        self.settings_received = views.get(self.settings_id.as_bytes())?.is_some();
        self.settings = match views.get(self.settings_id.as_bytes())? {
            Some(v) => {
                let json: Json = serde_json::from_slice(v.value())
                    .map_err(|e| WriteError::Internal(e.to_string()))?;
                super::typed(&self.settings_id, json)
                    .map_err(|e| WriteError::Internal(e.to_string()))?
            }
            // Not received yet (a device that just joined): nothing priced can be checked.
            None => Settings::new("", tillmesh_protocol::Currency::USD),
        };
        self.skus.clear();
        for item in Sealed::new(tx.open_table(SKUS)?, self.store.sealer()).all()? {
            let (sku, id) = item?;
            // The first id per SKU in key order wins, the same rule `prepare::Snapshot` uses.
            self.skus.entry(sku).or_insert(id);
        }
        self.member_ops.clear();
        for item in Sealed::new(tx.open_table(MEMBER_OPS)?, self.store.sealer()).iter()? {
            let (k, v) = item?;
            let (author, seq) = k.value();
            let op = MemberOp::from_bytes(v.value()).map_err(|e| {
                WriteError::Internal(format!(
                    "a stored membership operation does not decode: {e}"
                ))
            })?;
            self.member_ops.push(OpRecord {
                author: DeviceId(*author),
                seq,
                op,
            });
        }
        self.quarantined.clear();
        for item in tx.open_table(QUARANTINE)?.iter()? {
            self.quarantined.insert(DeviceId(*item?.0.value()));
        }
        // Undone entries are few: those a late revocation struck, and those that wait.
        self.waiting_docs.clear();
        for item in Sealed::new(tx.open_table(UNDONE)?, self.store.sealer()).iter()? {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<UndoneRecord>(v.value())
                && r.reason == undo::WAITS_FOR_CHANGES
            {
                self.waiting_docs.extend(r.docs);
            }
        }
        self.recompute_membership();
        self.publish_membership();
        Ok(())
    }

    fn recompute_membership(&mut self) {
        let mut m = Membership::compute(self.id.root_id, &self.member_ops);
        m.quarantine(&self.quarantined);
        self.membership = Arc::new(m);
    }

    /// Tells readers and the network gate about the membership. Called after commits and
    /// reloads only, so nobody acts on a membership a failed batch produced.
    fn publish_membership(&self) {
        let current = self.membership.clone();
        self.device.membership.send_if_modified(|m| {
            // Recomputed only when an operation arrives, so the same Arc means no change.
            if Arc::ptr_eq(m, &current) || **m == *current {
                false
            } else {
                *m = current;
                true
            }
        });
    }

    fn db(&self) -> Result<Arc<Database>, WriteError> {
        self.store
            .get()
            .map_err(|e| WriteError::Storage(e.to_string()))
    }
}

/// A document's `ledger` part, the bridge's alone to write; `null` and absent are the same.
fn ledger_of(view: &Json) -> Option<&Json> {
    view.get("ledger").filter(|l| !l.is_null())
}

/// The counter part of a sale's receipt number, `TILL1-000042` -> 42.
fn receipt_seq_of(view: &Json) -> Option<u64> {
    view.get("receipt_number")?
        .as_str()?
        .rsplit_once('-')?
        .1
        .parse()
        .ok()
}

fn write_view(t: &mut Tables<'_>, id: &DocId, json: &Json) -> Result<(), WriteError> {
    let bytes = serde_json::to_vec(json).map_err(|e| WriteError::Internal(e.to_string()))?;
    t.views.insert(id.as_bytes(), bytes.as_slice())?;
    Ok(())
}

/// Where the writer announces what it committed: document changes for the API's event
/// stream, and this device's own entries for the peers.
pub(crate) struct Outlets {
    pub events: broadcast::Sender<DocEvent>,
    pub committed: broadcast::Sender<Arc<SignedEntry>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What a batch's `finish` produced for the answers and the event stream.
struct Finished {
    views: HashMap<DocId, Arc<Json>>,
    /// Products whose stock level moved while their own document did not change.
    stock_only: Vec<DocId>,
}

impl Writer {
    /// Stores an entry from another device (or this one's own, coming back) that passed its
    /// checks: chained into its author's log, and into this batch's part of the write-ahead log.
    fn hold(&mut self, t: &mut Tables<'_>, entry: &SignedEntry) -> Result<(), WriteError> {
        store_entry(t, entry)?;
        self.wal_batch.push(entry.encoded().to_vec());
        if entry.entry.author == self.id.device_id {
            // Its own entries coming back (from the log after a crash, or from peers to a
            // till restored from an old backup): its next entry must follow the last one.
            self.head = (entry.entry.seq, entry.hash());
        }
        Ok(())
    }
}

fn store_entry(t: &mut Tables<'_>, e: &SignedEntry) -> Result<(), WriteError> {
    let author = e.entry.author;
    t.entries
        .insert((author.as_bytes(), e.entry.seq), e.encoded())?;
    t.heads
        .insert(author.as_bytes(), (e.entry.seq, e.hash().0))?;
    for d in e.docs() {
        t.doc_entries
            .insert(d.doc_id.as_bytes(), (author.as_bytes(), e.entry.seq))?;
    }
    Ok(())
}

/// The changes one command makes, grouped per document in the order first touched.
#[derive(Default)]
struct Ops {
    docs: Vec<DocChanges>,
}

impl Ops {
    fn push(&mut self, doc_id: DocId, doc_type: DocType, change: Vec<u8>) {
        match self.docs.iter_mut().find(|d| d.doc_id == doc_id) {
            Some(d) => d.changes.push(change),
            None => self.docs.push(DocChanges {
                doc_id,
                doc_type,
                changes: vec![change],
            }),
        }
    }
}

/// Publishes every event of the batch, then answers its callers, so a caller that hears back
/// can count on the events of its write being out.
fn answer(replies: Vec<Reply>, finished: &Finished, outlets: &Outlets) {
    let events = &outlets.events;
    let empty = Arc::new(Json::Null);
    let view = |id: &DocId| {
        finished
            .views
            .get(id)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    // No subscribers is not an error: sends below ignore it.
    let publish = |s: &Staged, origin: Origin| {
        for (doc_id, doc_type) in &s.docs {
            let _ = events.send(DocEvent {
                doc_id: *doc_id,
                doc_type: *doc_type,
                origin,
                author: Some(s.author),
                seq: Some(s.seq),
                doc: view(doc_id),
            });
        }
    };
    let m = &outlets.metrics;
    m.batch_jobs.observe(replies.len() as f64);
    for r in &replies {
        match r {
            Reply::Command(_, Ok(s)) => {
                publish(s, Origin::Local);
                if let Some(e) = &s.own {
                    m.entries_written.inc();
                    let _ = outlets.committed.send(e.clone());
                }
            }
            Reply::Ingest(_, Ok((outcome, staged))) => {
                let outcome = outcome.kind();
                m.entries_ingested
                    .get_or_create(&crate::metrics::Outcome { outcome })
                    .inc();
                if let Some(s) = staged {
                    publish(s, Origin::Remote);
                }
            }
            _ => {}
        }
    }
    for p in &finished.stock_only {
        let _ = events.send(DocEvent {
            doc_id: *p,
            doc_type: DocType::Product,
            origin: Origin::Stock,
            author: None,
            seq: None,
            doc: view(p),
        });
    }
    for r in replies {
        match r {
            Reply::Command(tx, result) => {
                tx.send(result.map(|s| Written {
                    doc_id: s.primary,
                    doc: view(&s.primary),
                    author: s.author,
                    seq: s.seq,
                }));
            }
            Reply::Ingest(tx, result) => {
                tx.send(result.map(|(outcome, _)| outcome));
            }
        }
    }
}
