//! The writer thread: stages commands and ingested entries into one redb transaction per batch,
//! commits, then answers every caller of the batch.
//!
//! A command is checked completely before it touches a document, so a refused command changes
//! nothing; anything that fails after that point fails the whole batch, and the writer reloads
//! its in-memory state from the store (see `docs` for why dropping the cache is always safe).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{AutoCommit, Change, ChangeHash};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde_json::Value as Json;
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{
    Customer, Document, Expense, Invoice, Party, Payment, Product, Refund, RefundLineInput, Sale,
    SaleStatus, Settings, StockAdjustment, TaxRate, Vendor, VoidInfo,
};
use tillmesh_protocol::{
    AccessError, DeviceId, DocChanges, DocId, DocType, Entry, EntryHash, MemberOp, Membership,
    OpRecord, Payload, Role, SignedEntry,
};
use tokio::sync::{broadcast, mpsc};

use super::docs::DocCache;
use super::prepare::{Device, Prepared};
use super::requests::*;
use super::{
    DocEvent, IngestOutcome, Job, MemberCommand, Origin, Serial, WriteError, Written, new_doc_id,
    now_ms,
};
use crate::store::tables::{
    HEADS, MEMBER_OPS, META, QUARANTINE, SKUS, Sealed, Tables, VIEWS, meta_key, rejected_record,
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
}

/// How many times an ingested entry may crash the writer before it is refused.
const PANICS_PER_ENTRY_MAX: u32 = 2;
/// Entries remembered for crashing it: more are forgotten (a peer cannot grow this).
const PANICKED_ENTRIES_MAX: usize = 1024;

/// What a panic said, for the caller's error.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

fn panicked_error(p: &(dyn std::any::Any + Send)) -> WriteError {
    WriteError::Internal(format!(
        "a bug stopped this write ({}); nothing of its batch was stored, the node reloaded and goes on; try again, and report it if it happens again",
        panic_message(p)
    ))
}

pub(crate) struct Writer {
    hooks: Arc<CrashHooks>,
    /// Entries whose staging panicked, and how often: refused at the limit, so one bad entry
    /// cannot stop every batch it arrives in.
    panicked: HashMap<(DeviceId, u64), u32>,
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
}

enum Reply {
    Command(
        tokio::sync::oneshot::Sender<Result<Written, WriteError>>,
        Result<Staged, WriteError>,
    ),
    Ingest(
        tokio::sync::oneshot::Sender<Result<IngestOutcome, WriteError>>,
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
        return WriteError::Storage(e.to_string());
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
        WriteError::Storage(_) | WriteError::DiskFull | WriteError::Internal(_)
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
        let mut touched = BTreeSet::new();
        let mut applied = 0usize;
        {
            let mut t = Tables::open(&tx, self.store.sealer())?;
            for (n, bytes) in records.iter().enumerate() {
                match SignedEntry::decode(bytes) {
                    Ok(entry) => {
                        if let (IngestOutcome::Applied, _) =
                            self.stage_ingest(&mut t, entry, &mut touched, true)?
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
        // An empty durable commit persists every non-durable one before it.
        let tx = db.begin_write()?;
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
        let recovered = (|| -> Result<(), WriteError> {
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
        })();
        self.needs_recovery = recovered.is_err();
        if let Err(e) = recovered {
            tracing::error!(error = %e, "recovering the store failed; writes are refused until it succeeds");
        }
    }

    /// Re-reads every cached counter from the store.
    fn reload(&mut self) -> Result<(), WriteError> {
        self.cache.clear();
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

    pub(crate) fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        events: Outlets,
        hooks: Arc<CrashHooks>,
    ) {
        self.hooks = hooks.clone();
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < BATCH_JOBS_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.run_batch(jobs, &events);
        }
        if hooks.power_cut.load(std::sync::atomic::Ordering::Relaxed) {
            // As if the power went: the log keeps what it synced, which must be everything
            // that was acknowledged.
            if let Err(e) = self.wal.power_cut() {
                tracing::warn!(error = %e, "cutting the log back to what was synced");
            }
            return;
        }
        // Closing: leave redb durable and the log empty, so the next open has nothing to replay.
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "final checkpoint failed; the write-ahead log will be replayed on the next open");
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>, events: &Outlets) {
        // A panic in a job is caught around the job (its caller hears why); this catches one
        // anywhere else in the batch, whose callers then hear the writer stopped. Either way
        // the batch is dropped whole, the writer reloads, and the next batch goes on.
        let staged =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stage_batch(jobs)));
        let staged = match staged {
            Ok(s) => s,
            Err(p) => {
                tracing::error!(panic = %panic_message(&*p), "a write batch panicked; nothing of it was stored; reloading");
                self.needs_recovery = true;
                self.recover();
                return;
            }
        };
        match staged {
            Ok((replies, finished)) => answer(replies, &finished, events),
            Err((replies, err)) => {
                tracing::warn!(error = %err, "write batch failed; nothing of it was stored");
                for r in replies {
                    match r {
                        Reply::Command(tx, _) => {
                            let _ = tx.send(Err(err.clone()));
                        }
                        Reply::Ingest(tx, _) => {
                            let _ = tx.send(Err(err.clone()));
                        }
                    }
                }
                self.recover();
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn stage_batch(
        &mut self,
        jobs: Vec<Job>,
    ) -> Result<(Vec<Reply>, Finished), (Vec<Reply>, WriteError)> {
        let mut replies: Vec<Reply> = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let fail = |replies: Vec<Reply>, rest: std::vec::IntoIter<Job>, err: WriteError| {
            let mut replies = replies;
            for j in rest {
                replies.push(match j {
                    Job::Command(_, tx) | Job::Prepared(_, tx) => {
                        Reply::Command(tx, Err(err.clone()))
                    }
                    Job::Ingest(_, tx) => Reply::Ingest(tx, Err(err.clone())),
                });
            }
            (replies, err)
        };
        if self.needs_recovery {
            self.recover();
            if self.needs_recovery {
                let e = WriteError::Storage("the store is recovering from a failed write".into());
                return Err(fail(replies, jobs, e));
            }
        }
        self.wal_batch.clear();
        let begun = self.db().and_then(|db| {
            let mut tx = db.begin_write()?;
            // Durability comes from the write-ahead log; see `store::wal`.
            tx.set_durability(Durability::None)
                .map_err(|e| WriteError::Storage(e.to_string()))?;
            Ok(tx)
        });
        let tx = match begun {
            Ok(tx) => tx,
            Err(e) => {
                self.redb_failed = true;
                return Err(fail(replies, jobs, e));
            }
        };
        let mut touched = BTreeSet::new();
        let views = {
            let mut t = match Tables::open(&tx, self.store.sealer()) {
                Ok(t) => t,
                Err(e) => return Err(fail(replies, jobs, e.into())),
            };
            for job in jobs.by_ref() {
                let reply = self.stage_job(&mut t, job, &mut touched);
                let fatal = reply.fatal_error();
                replies.push(reply);
                if let Some(e) = fatal {
                    return Err(fail(replies, jobs, e));
                }
            }
            match self.finish(&mut t, &touched) {
                Ok(v) => v,
                Err(e) => return Err(fail(replies, jobs, e)),
            }
        };
        // Durable first: once the log has the batch, a crash cannot lose it. A failed append
        // leaves the log as it was and the transaction is dropped, so nothing of the batch exists.
        // The callers of a failed batch hear "not written", so the log must never bring it
        // back: `recover` cuts it back to here before it reads the log again.
        let wal_before = self.wal.len();
        if let Err(e) = self.wal.append(self.wal_batch.iter().map(Vec::as_slice)) {
            self.wal_cut = Some(wal_before);
            return Err(fail(replies, jobs, io_error(e)));
        }
        if let Err(e) = tx.commit() {
            self.redb_failed = true;
            self.wal_cut = Some(wal_before);
            return Err(fail(replies, jobs, e.into()));
        }
        self.publish_membership();
        self.cache.trim();
        if self.last_checkpoint.elapsed() >= self.checkpoint_interval
            || self.wal.len() >= WAL_BYTES_MAX
        {
            // The batch is durable in the log already; a failed checkpoint only delays the next.
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "checkpoint failed; the write-ahead log keeps every write meanwhile");
                if self.redb_failed {
                    self.recover();
                }
            }
        }
        Ok((replies, views))
    }

    /// Stages one job, catching a panic in it: its caller hears what happened, and the batch
    /// fails whole (what the panic left half done is dropped with the transaction). An
    /// ingested entry that crashed the writer `PANICS_PER_ENTRY_MAX` times is refused.
    fn stage_job(&mut self, t: &mut Tables<'_>, job: Job, touched: &mut BTreeSet<DocId>) -> Reply {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        use std::sync::atomic::Ordering;
        let hooks = self.hooks.clone();
        let injected = || {
            hooks
                .panic_commands
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        };
        match job {
            Job::Command(cmd, tx) => {
                let staged = catch_unwind(AssertUnwindSafe(|| {
                    if injected() {
                        panic!("injected panic in a local command");
                    }
                    self.stage_command(t, *cmd, touched)
                }));
                Reply::Command(tx, staged.unwrap_or_else(|p| Err(panicked_error(&*p))))
            }
            Job::Prepared(p, tx) => {
                let staged = catch_unwind(AssertUnwindSafe(|| {
                    if injected() {
                        panic!("injected panic in a local command");
                    }
                    self.stage_prepared(t, *p, touched)
                }));
                Reply::Command(tx, staged.unwrap_or_else(|p| Err(panicked_error(&*p))))
            }
            Job::Ingest(e, tx) => {
                let key = (e.entry.author, e.entry.seq);
                if self.panicked.get(&key).copied().unwrap_or(0) >= PANICS_PER_ENTRY_MAX {
                    let reason = format!(
                        "applying it crashed this node's writer {PANICS_PER_ENTRY_MAX} times (a bug): refused, so the node keeps serving"
                    );
                    return Reply::Ingest(tx, self.reject(t, &e, reason));
                }
                let panics_here = hooks.panic_ingest.lock().is_ok_and(|k| *k == Some(key));
                let staged = catch_unwind(AssertUnwindSafe(|| {
                    if panics_here {
                        panic!("injected panic in an ingested entry");
                    }
                    self.stage_ingest(t, *e, touched, false)
                }));
                let staged = staged.unwrap_or_else(|p| {
                    if self.panicked.len() >= PANICKED_ENTRIES_MAX {
                        self.panicked.clear();
                    }
                    *self.panicked.entry(key).or_default() += 1;
                    Err(panicked_error(&*p))
                });
                Reply::Ingest(tx, staged)
            }
        }
    }

    /// Writes the views of the documents the batch touched, moves the stock levels their
    /// changes imply, and compacts where due. Returns the new views, and the products whose
    /// level moved without their own document changing.
    fn finish(
        &mut self,
        t: &mut Tables<'_>,
        touched: &BTreeSet<DocId>,
    ) -> Result<Finished, WriteError> {
        let mut views = HashMap::with_capacity(touched.len());
        let mut moves: BTreeMap<DocId, i64> = BTreeMap::new();
        let mut products = BTreeSet::new();
        for id in touched {
            let Some(c) = self.cache.get(t, id)? else {
                continue;
            };
            let doc_type = DocType::from_code(c.record.doc_type);
            let json = c.view().clone();
            if let Some(dt) = doc_type.filter(|d| {
                matches!(
                    d,
                    DocType::Sale | DocType::Refund | DocType::StockAdjustment
                )
            }) {
                // What the document moved before this batch is undone, what it moves now is done:
                // a sale voided in this batch gives its goods back, a new one takes them.
                if let Some(old) = t.views.get(id.as_bytes())? {
                    let old: Json = serde_json::from_slice(old.value())
                        .map_err(|e| WriteError::Internal(e.to_string()))?;
                    for (p, q) in docmap::stock_moves(dt, &old) {
                        let m = moves.entry(p).or_default();
                        *m = m.saturating_sub(q);
                    }
                }
                for (p, q) in docmap::stock_moves(dt, &json) {
                    let m = moves.entry(p).or_default();
                    *m = m.saturating_add(q);
                }
            }
            if doc_type == Some(DocType::Product) {
                self.index_sku(t, id, &json)?;
                products.insert(*id);
            } else {
                write_view(t, id, &json)?;
                if *id == self.settings_id
                    && let Ok(s) = docmap::from_view::<Settings>(&json)
                {
                    self.settings = s;
                    self.settings_received = true;
                }
                views.insert(*id, Arc::new(json));
            }
            self.cache.maybe_compact(t, id)?;
        }
        let mut stock_only = Vec::new();
        for (p, delta) in moves.into_iter().filter(|(_, d)| *d != 0) {
            let moved = t
                .stock
                .get(p.as_bytes())?
                .map(|v| v.value())
                .unwrap_or(0)
                .saturating_add(delta);
            t.stock.insert(p.as_bytes(), moved)?;
            if products.insert(p) {
                stock_only.push(p);
            }
        }
        for p in products {
            // A product's own changes come from the cache; a level that merely moved is patched
            // into the stored view, without loading the product's document.
            let base = if touched.contains(&p) {
                self.cache.get(t, &p)?.map(|c| c.view().clone())
            } else {
                t.views
                    .get(p.as_bytes())?
                    .and_then(|v| serde_json::from_slice::<Json>(v.value()).ok())
            };
            let Some(mut json) = base else { continue };
            let moved = t.stock.get(p.as_bytes())?.map(|v| v.value()).unwrap_or(0);
            if let Some(m) = json.as_object_mut() {
                let opening = m.get("opening_stock").and_then(Json::as_i64).unwrap_or(0);
                m.insert("stock".into(), Json::from(opening.saturating_add(moved)));
            }
            write_view(t, &p, &json)?;
            views.insert(p, Arc::new(json));
        }
        stock_only.retain(|p| views.contains_key(p));
        Ok(Finished { views, stock_only })
    }

    /// Keeps the SKU index in step with a product's view, whoever changed the product. When
    /// two products share a SKU (created on two tills apart), the lowest id wins everywhere.
    fn index_sku(&mut self, t: &mut Tables<'_>, id: &DocId, view: &Json) -> Result<(), WriteError> {
        let new = view.get("sku").and_then(Json::as_str).map(str::to_owned);
        let old = match t.views.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice::<Json>(v.value())
                .ok()
                .and_then(|j| j.get("sku").and_then(Json::as_str).map(str::to_owned)),
            None => None,
        };
        if old == new {
            return Ok(());
        }
        if let Some(old) = old {
            t.skus.remove_sku(&old, id)?;
            if self.skus.get(&old) == Some(id) {
                self.skus.remove(&old);
                if let Some(next) = t.skus.first_of(&old)? {
                    self.skus.insert(old.clone(), next);
                }
            }
        }
        if let Some(new) = new {
            t.skus.insert_sku(&new, id)?;
            let held = self.skus.entry(new).or_insert(*id);
            *held = (*held).min(*id);
        }
        Ok(())
    }

    // ---- local commands --------------------------------------------------------------------

    fn stage_command(
        &mut self,
        t: &mut Tables<'_>,
        cmd: Serial,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let now = now_ms();
        let mut ops = Ops::default();
        if let Serial::Member(m) = cmd {
            return self.stage_member(t, m, now);
        }
        if let Serial::SetLedger { doc_id, ledger } = cmd {
            return self.set_ledger(t, doc_id, ledger, now, touched);
        }
        let writes: &[DocType] = match &cmd {
            Serial::InitSettings(_) | Serial::SetTaxRate { .. } | Serial::SetTimeZone(_) => {
                &[DocType::Settings]
            }
            Serial::CreateProduct(_) => &[DocType::Product],
            Serial::Void { .. } => &[DocType::Sale],
            Serial::Refund { .. } => &[DocType::Refund],
            Serial::PatchParty {
                doc_type: DocType::Vendor,
                ..
            } => &[DocType::Vendor],
            Serial::PatchParty { .. } => &[DocType::Customer],
            Serial::PatchProduct { .. } => &[DocType::Product],
            Serial::PatchExpense { .. } => &[DocType::Expense],
            Serial::Member(_) | Serial::SetLedger { .. } => unreachable!("handled above"),
        };
        self.check_own_write(writes)?;
        let primary = match cmd {
            Serial::Member(_) | Serial::SetLedger { .. } => unreachable!("handled above"),
            Serial::InitSettings(s) => {
                s.validate(&s)?;
                let id = self.settings_id;
                if self.cache.get(t, &id)?.is_some() {
                    return Err(WriteError::Conflict(
                        "the mesh settings already exist".into(),
                    ));
                }
                self.create_doc(t, &mut ops, id, &s, now)?;
                self.settings = s;
                self.settings_received = true;
                id
            }
            Serial::SetTaxRate { code, rate } => {
                let id = self.settings_id;
                let current: Settings = self.typed(t, &id, "mesh settings")?;
                let mut next = current.clone();
                next.tax_rates.insert(
                    code,
                    TaxRate {
                        name: rate.name,
                        rate_ppm: rate.rate_ppm,
                    },
                );
                next.validate(&next)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                self.settings = next;
                self.settings_received = true;
                id
            }
            Serial::SetTimeZone(zone) => {
                tillmesh_protocol::schema::check_time_zone(&zone)?;
                // The protocol checks the shape; whether the zone exists needs a database.
                if jiff::tz::TimeZone::get(&zone).is_err() {
                    return Err(WriteError::Invalid(
                        tillmesh_protocol::schema::SchemaError::Invalid {
                            field: "time_zone".into(),
                            reason: format!(
                                "{zone:?} is not a time zone this node knows; write an IANA name such as Europe/London or America/Los_Angeles"
                            ),
                        },
                    ));
                }
                let id = self.settings_id;
                let current: Settings = self.typed(t, &id, "mesh settings")?;
                let mut next = current.clone();
                next.time_zone = Some(zone);
                next.validate(&next)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                self.settings = next;
                self.settings_received = true;
                id
            }
            Serial::CreateProduct(p) => self.create_product(t, &mut ops, p, now)?,
            Serial::Void { sale_id, request } => self.void(t, &mut ops, sale_id, request, now)?,
            Serial::Refund { sale_id, request } => {
                self.refund(t, &mut ops, sale_id, request, now)?
            }
            Serial::PatchProduct { id, patch } => {
                let current: Product = self.typed(t, &id, "product")?;
                let mut next = current.clone();
                if let Some(v) = patch.name {
                    next.name = v;
                }
                if let Some(v) = patch.price {
                    next.price = v;
                }
                if let Some(v) = patch.tax_code {
                    next.tax_code = v;
                }
                if let Some(v) = patch.active {
                    next.active = v;
                }
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchExpense { id, patch } => {
                let current: Expense = self.typed(t, &id, "expense")?;
                let mut next = current.clone();
                if let Some(memo) = patch.memo {
                    next.memo = memo.filter(|m| !m.trim().is_empty());
                }
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchParty {
                doc_type: DocType::Vendor,
                id,
                patch,
            } => {
                let current: Vendor = self.typed(t, &id, "vendor")?;
                let next = Vendor(patched(current.0.clone(), patch));
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
            Serial::PatchParty { id, patch, .. } => {
                let current: Customer = self.typed(t, &id, "customer")?;
                let next = Customer(patched(current.0.clone(), patch));
                next.validate(&self.settings)?;
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
                id
            }
        };
        if ops.docs.is_empty() {
            // Nothing changed (a patch that set fields to what they were): no entry to write.
            return Ok(Staged {
                primary,
                docs: Vec::new(),
                author: self.id.device_id,
                seq: self.head.0,
                own: None,
            });
        }
        let staged = self.seal(t, ops, primary, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }
}

/// A customer's or vendor's fields with a patch applied: only the fields it names change.
fn patched(mut p: Party, patch: CustomerPatch) -> Party {
    if let Some(v) = patch.display_name {
        p.display_name = v;
    }
    for (field, value) in [
        (&mut p.given_name, patch.given_name),
        (&mut p.family_name, patch.family_name),
        (&mut p.company_name, patch.company_name),
        (&mut p.email, patch.email),
        (&mut p.phone, patch.phone),
        (&mut p.notes, patch.notes),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(a) = patch.address {
        p.address = a;
    }
    if let Some(a) = patch.active {
        p.active = a;
    }
    p
}

impl Writer {
    /// Orders a document prepared outside the writer (see `prepare`) into this device's log.
    fn stage_prepared(
        &mut self,
        t: &mut Tables<'_>,
        p: Prepared,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let now = now_ms();
        let mut ops = Ops::default();
        let types: Vec<DocType> = p.docs.iter().map(|d| d.doc_type).collect();
        self.check_own_write(&types)?;
        for d in p.docs {
            self.cache
                .insert_new(t, d.id, d.doc_type, d.doc, &d.change, Some(d.view))?;
            ops.push(d.id, d.doc_type, d.change);
        }
        if let Some(n) = p.receipt_seq.filter(|n| *n > self.receipt_seq) {
            self.receipt_seq = n;
            t.meta.insert(meta_key::RECEIPT_SEQ, &n.to_be_bytes()[..])?;
        }
        let staged = self.seal(t, ops, p.primary, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    fn create_product(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        p: NewProduct,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let product = Product {
            sku: p.sku.trim().to_owned(),
            name: p.name,
            price: p.price,
            tax_code: p.tax_code,
            active: p.active,
            opening_stock: p.stock,
            ledger: None,
        };
        product.validate(&self.settings)?;
        if let Some(existing) = self.skus.get(&product.sku) {
            return Err(WriteError::Conflict(format!(
                "a product with SKU '{}' already exists ({existing})",
                product.sku
            )));
        }
        let id = new_doc_id(now);
        self.create_doc(t, ops, id, &product, now)?;
        // Claimed now so a second product with this SKU in the same batch is refused; the
        // index row is written with the view (see `index_sku`).
        self.skus.insert(product.sku, id);
        Ok(id)
    }

    fn void(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        req: VoidSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let sale: Sale = self.typed(t, &id, "sale")?;
        match sale.status {
            SaleStatus::Voided => {
                return Err(WriteError::Conflict(format!(
                    "sale {} is already voided",
                    sale.receipt_number
                )));
            }
            SaleStatus::Refunded => {
                return Err(WriteError::Conflict(format!(
                    "sale {} is refunded; it cannot also be voided",
                    sale.receipt_number
                )));
            }
            _ if !sale.refunds.is_empty() => {
                return Err(WriteError::Conflict(format!(
                    "sale {} has refunds; refund the rest instead of voiding it",
                    sale.receipt_number
                )));
            }
            _ => {}
        }
        let mut next = sale.clone();
        next.status = SaleStatus::Voided;
        next.void = Some(VoidInfo {
            at_ms: now,
            by: self.id.device_id,
            reason: req.reason,
        });
        sale.check_update(&next)?;
        next.validate(&self.settings)?;
        // A voided sale moves no stock: its goods are back in stock once this is committed.
        self.update_doc(t, ops, id, &sale, &next, now)?;
        Ok(id)
    }

    fn refund(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        sale_id: DocId,
        req: RefundSale,
        now: u64,
    ) -> Result<DocId, WriteError> {
        let sale: Sale = self.typed(t, &sale_id, "sale")?;
        if matches!(sale.status, SaleStatus::Voided | SaleStatus::Refunded) {
            let status = if sale.status == SaleStatus::Voided {
                "voided"
            } else {
                "already fully refunded"
            };
            return Err(WriteError::Conflict(format!(
                "sale {} is {status}; there is nothing to refund",
                sale.receipt_number
            )));
        }
        let mut wanted = Vec::with_capacity(req.lines.len());
        for (k, l) in req.lines.iter().enumerate() {
            let line = match (l.line, l.product_id, l.sku.as_deref()) {
                (Some(i), None, None) => i,
                (None, pid, sku) if pid.is_some() || sku.is_some() => sale
                    .lines
                    .iter()
                    .enumerate()
                    .position(|(i, s)| {
                        pid.is_none_or(|p| p == s.product_id)
                            && sku.is_none_or(|k| k == s.sku)
                            && s.qty > sale.refunded_qty(i)
                    })
                    .ok_or_else(|| {
                        WriteError::BadRequest(format!(
                            "lines[{k}]: sale {} has no unrefunded line for that product",
                            sale.receipt_number
                        ))
                    })?,
                _ => {
                    return Err(WriteError::BadRequest(format!(
                        "lines[{k}]: give the sale's line number, or a product_id or sku"
                    )));
                }
            };
            wanted.push(RefundLineInput { line, qty: l.qty });
        }
        let method = req
            .method
            .or_else(|| sale.payments.first().map(|p| p.method.clone()))
            .unwrap_or_else(|| "cash".into());
        let refund_id = new_doc_id(now);
        let (refund, record) = Refund::against(
            &sale,
            sale_id,
            refund_id,
            &wanted,
            method,
            req.reason,
            req.restock,
            now,
            self.id.device_id,
        )?;
        refund.validate(&self.settings)?;
        let mut next = sale.clone();
        next.refunds.push(record);
        if next
            .lines
            .iter()
            .enumerate()
            .all(|(i, l)| next.refunded_qty(i) == l.qty)
        {
            next.status = SaleStatus::Refunded;
        }
        sale.check_update(&next)?;
        next.validate(&self.settings)?;
        self.create_doc(t, ops, refund_id, &refund, now)?;
        self.update_doc(t, ops, sale_id, &sale, &next, now)?;
        Ok(refund_id)
    }

    fn typed<T: Document>(
        &mut self,
        t: &Tables<'_>,
        id: &DocId,
        what: &'static str,
    ) -> Result<T, WriteError> {
        let not_found = || WriteError::NotFound {
            what,
            id: id.to_string(),
        };
        let c = self.cache.get(t, id)?.ok_or_else(not_found)?;
        if c.record.doc_type != T::TYPE.code() {
            return Err(not_found());
        }
        docmap::from_view::<T>(c.view())
            .map_err(|e| WriteError::Conflict(format!("{what} {id} cannot be used: {e}")))
    }

    fn create_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        value: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let (doc, change, view) = docmap::create(self.cache.actor(), value, (now / 1000) as i64)?;
        self.cache
            .insert_new(t, id, T::TYPE, doc, &change, Some(view))?;
        ops.push(id, T::TYPE, change);
        Ok(())
    }

    fn update_doc<T: Document>(
        &mut self,
        t: &mut Tables<'_>,
        ops: &mut Ops,
        id: DocId,
        from: &T,
        to: &T,
        now: u64,
    ) -> Result<(), WriteError> {
        let c = self
            .cache
            .get(t, &id)?
            .ok_or_else(|| WriteError::Internal(format!("{id} vanished during a write")))?;
        if let Some(change) = docmap::update(&mut c.doc, from, to, (now / 1000) as i64)? {
            c.set_view(docmap::view_of(to)?);
            self.cache.record_change(t, &id, &change)?;
            ops.push(id, T::TYPE, change);
        }
        Ok(())
    }

    /// Signs the entry for `ops` as this device's next and stores it.
    /// Writes the `ledger` part of a sale, product or customer: what QuickBooks holds.
    fn set_ledger(
        &mut self,
        t: &mut Tables<'_>,
        id: DocId,
        ledger: tillmesh_protocol::schema::Ledger,
        now: u64,
        touched: &mut BTreeSet<DocId>,
    ) -> Result<Staged, WriteError> {
        let doc_type = self
            .cache
            .get(t, &id)?
            .and_then(|c| DocType::from_code(c.record.doc_type))
            .ok_or_else(|| WriteError::NotFound {
                what: "document",
                id: id.to_string(),
            })?;
        let me = self.id.device_id;
        self.membership
            .check_write(me, self.head.0 + 1, doc_type, true)
            .map_err(|e| match e {
                AccessError::NotMember(_) => WriteError::NotAdmitted,
                e => WriteError::Forbidden(e.to_string()),
            })?;
        let mut ops = Ops::default();
        macro_rules! with_ledger {
            ($t:ty, $what:literal, |$v:ident| $field:expr) => {{
                let current: $t = self.typed(t, &id, $what)?;
                let mut next = current.clone();
                {
                    let $v = &mut next;
                    *$field = Some(ledger);
                }
                self.update_doc(t, &mut ops, id, &current, &next, now)?;
            }};
        }
        match doc_type {
            DocType::Sale => with_ledger!(Sale, "sale", |v| &mut v.ledger),
            DocType::Product => with_ledger!(Product, "product", |v| &mut v.ledger),
            DocType::Customer => with_ledger!(Customer, "customer", |v| &mut v.0.ledger),
            DocType::Vendor => with_ledger!(Vendor, "vendor", |v| &mut v.0.ledger),
            DocType::Refund => with_ledger!(Refund, "refund", |v| &mut v.ledger),
            DocType::Invoice => with_ledger!(Invoice, "invoice", |v| &mut v.ledger),
            DocType::Payment => with_ledger!(Payment, "payment", |v| &mut v.ledger),
            DocType::Expense => with_ledger!(Expense, "expense", |v| &mut v.ledger),
            other => {
                return Err(WriteError::BadRequest(format!(
                    "a {other} has no ledger this node writes"
                )));
            }
        }
        if ops.docs.is_empty() {
            return Ok(Staged {
                primary: id,
                docs: Vec::new(),
                author: me,
                seq: self.head.0,
                own: None,
            });
        }
        let staged = self.seal(t, ops, id, now)?;
        touched.extend(staged.docs.iter().map(|(id, _)| *id));
        Ok(staged)
    }

    /// Refuses a local write this device's role does not allow, before anything is touched,
    /// so every write this device signs is one its peers accept.
    fn check_own_write(&self, doc_types: &[DocType]) -> Result<(), WriteError> {
        let me = self.id.device_id;
        for doc_type in doc_types {
            match self
                .membership
                .check_write(me, self.head.0 + 1, *doc_type, false)
            {
                Ok(()) => {}
                Err(AccessError::NotMember(_)) => return Err(WriteError::NotAdmitted),
                Err(e) => return Err(WriteError::Forbidden(e.to_string())),
            }
        }
        Ok(())
    }

    /// Signs a membership operation, completed with what this node holds of its target.
    fn stage_member(
        &mut self,
        t: &mut Tables<'_>,
        cmd: MemberCommand,
        now: u64,
    ) -> Result<Staged, WriteError> {
        let held = |t: &Tables<'_>, device: &DeviceId| -> Result<u64, WriteError> {
            Ok(t.heads
                .get(device.as_bytes())?
                .map(|v| v.value().0)
                .unwrap_or(0))
        };
        let op = match cmd {
            MemberCommand::Add { device, role, name } => MemberOp::Add { device, role, name },
            MemberCommand::ChangeRole { device, role } => MemberOp::ChangeRole {
                device,
                role,
                from_seq: held(t, &device)? + 1,
            },
            MemberCommand::Revoke { device } => MemberOp::Revoke {
                device,
                last_seq: held(t, &device)?,
            },
        };
        let (me, seq) = (self.id.device_id, self.head.0 + 1);
        self.membership
            .check_op(me, seq, &op)
            .map_err(|e| WriteError::Forbidden(e.to_string()))?;
        let staged =
            self.sign_and_store(t, Payload::Membership(Box::new(op)), self.settings_id, now)?;
        self.record_member_op(t, &staged.own.clone().expect("own entry"))?;
        Ok(staged)
    }

    /// Indexes a stored membership operation and recomputes the membership.
    fn record_member_op(&mut self, t: &mut Tables<'_>, e: &SignedEntry) -> Result<(), WriteError> {
        let Some(op) = e.member_op() else {
            return Ok(());
        };
        let (author, seq) = (e.entry.author, e.entry.seq);
        t.member_ops
            .insert((author.as_bytes(), seq), op.to_bytes().as_slice())?;
        self.member_ops.push(OpRecord {
            author,
            seq,
            op: op.clone(),
        });
        self.recompute_membership();
        Ok(())
    }

    fn seal(
        &mut self,
        t: &mut Tables<'_>,
        ops: Ops,
        primary: DocId,
        now: u64,
    ) -> Result<Staged, WriteError> {
        self.sign_and_store(t, Payload::Changes(ops.docs), primary, now)
    }

    fn sign_and_store(
        &mut self,
        t: &mut Tables<'_>,
        payload: Payload,
        primary: DocId,
        now: u64,
    ) -> Result<Staged, WriteError> {
        let entry = Entry {
            author: self.id.device_id,
            seq: self.head.0 + 1,
            prev: self.head.1,
            timestamp_ms: now,
            payload,
        };
        entry
            .check_limits()
            .map_err(|e| WriteError::Internal(format!("entry too large: {e}")))?;
        let signed = entry.sign(&self.id.mesh_id, &self.id.key);
        let docs: Vec<(DocId, DocType)> = signed
            .docs()
            .iter()
            .map(|d| (d.doc_id, d.doc_type))
            .collect();
        store_entry(t, &signed)?;
        self.wal_batch.push(signed.encoded().to_vec());
        self.head = (signed.entry.seq, signed.hash());
        Ok(Staged {
            primary,
            docs,
            author: signed.entry.author,
            seq: signed.entry.seq,
            own: Some(Arc::new(signed)),
        })
    }

    // ---- entries from other devices --------------------------------------------------------

    /// Verifies (unless `from_log`), checks and applies an entry. Entries replayed from this
    /// node's own write-ahead log were checked when first stored and are guarded by the log's
    /// record hashes, as redb's contents are by its checksums: their signatures are not checked
    /// again, which makes replay after a crash a third faster.
    fn stage_ingest(
        &mut self,
        t: &mut Tables<'_>,
        entry: SignedEntry,
        touched: &mut BTreeSet<DocId>,
        from_log: bool,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        let (have, tip) = t
            .heads
            .get(author.as_bytes())?
            .map(|v| v.value())
            .unwrap_or((0, [0; 32]));
        // A byte-identical copy of a stored entry is a duplicate whatever its signature: the
        // stored one was verified. Checked first, because peers send copies often (a push from
        // each of them, then pulls) and verifying costs more than looking up.
        let stored_same = seq <= have
            && t.entries
                .get((author.as_bytes(), seq))?
                .is_some_and(|v| v.value() == entry.encoded());
        if stored_same {
            return Ok((IngestOutcome::Duplicate, None));
        }
        if !from_log && let Err(e) = entry.verify(&self.id.mesh_id) {
            let reason = e.to_string();
            self.keep_aside(t, &entry, &reason)?;
            return Ok((IngestOutcome::Forged { reason }, None));
        }
        if self.quarantined.contains(&author) {
            return self.reject(
                t,
                &entry,
                format!(
                    "device {author} is quarantined: it signed two different entries at one position of its log; an admin should revoke it"
                ),
            );
        }
        if seq <= have {
            let stored = t
                .entries
                .get((author.as_bytes(), seq))?
                .map(|v| EntryHash::of(v.value()))
                .unwrap_or(EntryHash::ZERO);
            let reason = format!(
                "fork: device {author} signed two different entries {seq}; it is quarantined"
            );
            self.quarantine(t, author, seq, stored, entry.hash())?;
            return self.reject(t, &entry, reason);
        }
        if seq > have + 1 {
            return Ok((IngestOutcome::Gap { have }, None));
        }
        if entry.entry.prev != EntryHash(tip) {
            // Signed by its author, yet it names another entry `have` than the one held: the
            // author signed two, which proves a fork as surely as seeing both.
            let reason = format!(
                "broken hash chain: entry {seq} does not follow entry {have} of device {author} (a fork: the device is quarantined)"
            );
            self.quarantine(t, author, have, EntryHash(tip), entry.entry.prev)?;
            return self.reject(t, &entry, reason);
        }
        if let Some(op) = entry.member_op() {
            // Kept unless it is wrong whatever else arrives: whether it counts (its author may
            // be revoked before it, its target admitted by another admin, two admins may revoke
            // each other) is for `Membership::compute`, and every node must hold the same
            // operations to decide alike.
            return match self.membership.admissible_op(author, seq, op) {
                Err(AccessError::NotMember(_)) => Ok((
                    IngestOutcome::Deferred {
                        reason: AccessError::NotMember(author).to_string(),
                    },
                    None,
                )),
                Err(e) => self.reject(t, &entry, e.to_string()),
                Ok(()) => {
                    store_entry(t, &entry)?;
                    self.wal_batch.push(entry.encoded().to_vec());
                    self.record_member_op(t, &entry)?;
                    if author == self.id.device_id {
                        self.head = (seq, entry.hash());
                    }
                    Ok((
                        IngestOutcome::Applied,
                        Some(Staged {
                            primary: self.settings_id,
                            docs: Vec::new(),
                            author,
                            seq,
                            own: None,
                        }),
                    ))
                }
            };
        }
        let role = match self.membership.role_at(author, seq) {
            Ok(role) => role,
            // Its admission may still be on its way: it waits, as an entry with missing
            // dependencies does.
            Err(e @ AccessError::NotMember(_)) => {
                return Ok((
                    IngestOutcome::Deferred {
                        reason: e.to_string(),
                    },
                    None,
                ));
            }
            Err(e) => return self.reject(t, &entry, e.to_string()),
        };
        if let Some(dc) = entry.docs().iter().find(|d| !role.may_write(d.doc_type)) {
            let reason = AccessError::DocType {
                device: author,
                role,
                doc_type: dc.doc_type,
            }
            .to_string();
            return self.reject(t, &entry, reason);
        }
        let mut parsed = Vec::with_capacity(entry.docs().len());
        for dc in entry.docs() {
            let mut changes = Vec::with_capacity(dc.changes.len());
            for (n, bytes) in dc.changes.iter().enumerate() {
                match Change::from_bytes(bytes.clone()) {
                    Ok(c) => changes.push(c),
                    Err(e) => {
                        return self.reject(
                            t,
                            &entry,
                            format!(
                                "document {}: change {n} is not an Automerge change: {e}",
                                dc.doc_id
                            ),
                        );
                    }
                }
            }
            parsed.push(changes);
        }
        // Apply to the cached documents (new ones aside); on any refusal, evict what was touched
        // so the next load reads the transaction's state from before this entry.
        let mut fresh: HashMap<DocId, (AutoCommit, Option<Json>)> = HashMap::new();
        let mut refusal = None;
        for (dc, changes) in entry.docs().iter().zip(parsed) {
            if let Err(reason) = self.apply_remote(
                t,
                dc.doc_id,
                dc.doc_type,
                changes,
                &mut fresh,
                (author, role),
            ) {
                refusal = Some(reason);
                break;
            }
        }
        if let Some(refusal) = refusal {
            for dc in entry.docs() {
                self.cache.evict(&dc.doc_id);
            }
            return match refusal {
                Refusal::Reject(reason) => self.reject(t, &entry, reason),
                Refusal::Defer(reason) => Ok((IngestOutcome::Deferred { reason }, None)),
                // The store, not the entry, failed: the batch fails and the entry can come again.
                Refusal::Fail(e) => Err(e),
            };
        }
        for dc in entry.docs() {
            let mut changes = dc.changes.iter();
            if let Some((doc, view)) = fresh.remove(&dc.doc_id) {
                let first = changes.next().map(Vec::as_slice).unwrap_or_default();
                self.cache
                    .insert_new(t, dc.doc_id, dc.doc_type, doc, first, view)?;
            }
            for c in changes {
                self.cache.record_change(t, &dc.doc_id, c)?;
            }
            touched.insert(dc.doc_id);
        }
        store_entry(t, &entry)?;
        self.wal_batch.push(entry.encoded().to_vec());
        if entry.docs().iter().any(|d| d.doc_id == self.settings_id) {
            // Later entries of this batch (a product with a new tax code) are checked against
            // the settings as they are now.
            let id = self.settings_id;
            if let Some(settings) = self
                .cache
                .get(t, &id)?
                .and_then(|c| docmap::from_view::<Settings>(c.view()).ok())
            {
                self.settings = settings;
                self.settings_received = true;
            }
        }
        if author == self.id.device_id {
            // Its own entries coming back (from the log after a crash, or from peers to a till
            // restored from an old backup): its next entry must follow the last one.
            self.head = (seq, entry.hash());
            // This device's own entries come back from the log after a crash: the receipt
            // counter follows the highest number its sales carry, so no number is issued twice.
            for d in entry.docs().iter().filter(|d| d.doc_type == DocType::Sale) {
                let n = self
                    .cache
                    .get(t, &d.doc_id)?
                    .and_then(|c| receipt_seq_of(c.view()));
                if let Some(n) = n.filter(|n| *n > self.receipt_seq) {
                    self.receipt_seq = n;
                    t.meta.insert(meta_key::RECEIPT_SEQ, &n.to_be_bytes()[..])?;
                    self.device
                        .receipts
                        .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let docs = entry
            .docs()
            .iter()
            .map(|d| (d.doc_id, d.doc_type))
            .collect::<Vec<_>>();
        let primary = docs[0].0;
        Ok((
            IngestOutcome::Applied,
            Some(Staged {
                primary,
                docs,
                author,
                seq,
                own: None,
            }),
        ))
    }

    /// Applies one document's changes and checks the result against the schema.
    fn apply_remote(
        &mut self,
        t: &Tables<'_>,
        id: DocId,
        doc_type: DocType,
        changes: Vec<Change>,
        fresh: &mut HashMap<DocId, (AutoCommit, Option<Json>)>,
        (author, role): (DeviceId, Role),
    ) -> Result<(), Refusal> {
        let actor = self.cache.actor().clone();
        let settings = self.settings.clone();
        let existing = self.cache.get(t, &id).map_err(Refusal::Fail)?;
        let (doc, before, ledger_before, existed) = match existing {
            Some(c) => {
                if c.record.doc_type != doc_type.code() {
                    return Err(Refusal::Reject(format!(
                        "document {id} is a {}, not a {doc_type}",
                        DocType::from_code(c.record.doc_type)
                            .map(|t| t.name())
                            .unwrap_or("?")
                    )));
                }
                // Facts that must not change are compared with their stored state (stored
                // documents are complete: entries with missing dependencies are deferred).
                let before =
                    matches!(doc_type, DocType::Sale | DocType::Refund).then(|| c.view().clone());
                let ledger_before = ledger_of(c.view()).cloned();
                // Remote changes: what the document reads as is known only by reading it.
                c.forget_view();
                (&mut c.doc, before, ledger_before, true)
            }
            None => (
                &mut fresh
                    .entry(id)
                    .or_insert_with(|| (AutoCommit::new().with_actor(actor), None))
                    .0,
                None,
                None,
                false,
            ),
        };
        // What the author saw: the heads its changes build on, outside the entry itself.
        let mut heads_before = doc.get_heads();
        heads_before.sort();
        let own: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
        let mut seen: Vec<ChangeHash> = changes
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|h| !own.contains(h))
            .collect();
        seen.sort();
        seen.dedup();
        let concurrent = existed && seen != heads_before;
        let entry_changes = concurrent.then(|| changes.clone());
        doc.apply_changes(changes)
            .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
        let missing = doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            // It builds on another device's changes not held here. Applying it now would let it
            // slip in unchecked when those arrive; it waits for them instead.
            return Err(Refusal::Defer(format!(
                "document {id}: builds on {} change(s) from other devices not held yet; send their entries first",
                missing.len()
            )));
        }
        // Read once: checked here, then kept as the document's view for `finish`.
        let view = docmap::read_json(doc);
        if let Some(found) = view.get("type").and_then(Json::as_str)
            && found != doc_type.name()
        {
            return Err(Refusal::Reject(format!(
                "document {id} says it is a {found}, but the entry files it as a {doc_type}"
            )));
        }
        if !self.settings_received && doc_type != DocType::Settings {
            // Judged against default settings, a lawful entry could be refused here and
            // accepted everywhere else; it waits until the settings arrive (they come first:
            // the owner's first entry).
            return Err(Refusal::Defer(
                "the mesh settings have not arrived yet; send the owner's first entry first".into(),
            ));
        }
        match entry_changes {
            // The author's change is judged on the document as the author saw it, not as
            // merged with concurrent changes held here: the verdict then depends only on the
            // entry and its history, so every node reaches the same one in whatever order
            // entries arrive. (A merge of two lawful changes may still break a rule, say two
            // tills refunding the last unit at once; it is kept, as every node keeps it.)
            Some(changes) => {
                let mut as_seen = doc
                    .fork_at(&seen)
                    .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
                let seen_view = docmap::read_json(&as_seen);
                as_seen
                    .apply_changes(changes)
                    .map_err(|e| Refusal::Reject(format!("document {id}: {e}")))?;
                let after = docmap::read_json(&as_seen);
                if ledger_of(&seen_view) != ledger_of(&after) && !role.may_write_ledger() {
                    return Err(Refusal::Reject(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                check_remote(doc_type, &after, &settings, Some(&seen_view))
            }
            None => {
                if ledger_before.as_ref() != ledger_of(&view) && !role.may_write_ledger() {
                    return Err(Refusal::Reject(
                        AccessError::Ledger {
                            device: author,
                            role,
                        }
                        .to_string(),
                    ));
                }
                check_remote(doc_type, &view, &settings, before.as_ref())
            }
        }
        .map_err(|e| Refusal::Reject(format!("{doc_type} {id}: {e}")))?;
        match fresh.get_mut(&id) {
            Some(f) => f.1 = Some(view),
            None => {
                if let Ok(Some(c)) = self.cache.get(t, &id) {
                    c.set_view(view);
                }
            }
        }
        Ok(())
    }

    fn reject(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: String,
    ) -> Result<(IngestOutcome, Option<Staged>), WriteError> {
        self.keep_aside(t, entry, &reason)?;
        Ok((IngestOutcome::Rejected { reason }, None))
    }

    /// Records proof that `author` signed two different entries at `seq`, and refuses its
    /// entries from now on. An alert for people: the device is stolen, cloned or broken.
    fn quarantine(
        &mut self,
        t: &mut Tables<'_>,
        author: DeviceId,
        seq: u64,
        held: EntryHash,
        other: EntryHash,
    ) -> Result<(), WriteError> {
        tracing::error!(device = %author, seq, "ALERT: device signed two different entries at one position of its log (a fork); it is quarantined, and an admin should revoke it");
        self.quarantined.insert(author);
        self.recompute_membership();
        t.quarantine
            .insert(author.as_bytes(), (seq, held.0, other.0))?;
        Ok(())
    }

    fn keep_aside(
        &mut self,
        t: &mut Tables<'_>,
        entry: &SignedEntry,
        reason: &str,
    ) -> Result<(), WriteError> {
        tracing::warn!(author = %entry.entry.author.short(), seq = entry.entry.seq, %reason, "entry refused");
        self.rejected_seq += 1;
        t.rejected
            .insert(self.rejected_seq, &rejected_record(reason, entry.encoded()))?;
        // Bounded: a peer sending refused entries again and again cannot fill the disk.
        if let Some(oldest) = self.rejected_seq.checked_sub(REJECTED_KEPT_MAX) {
            t.rejected.remove(oldest)?;
        }
        t.meta
            .insert(meta_key::REJECTED_SEQ, &self.rejected_seq.to_be_bytes()[..])?;
        Ok(())
    }
}

/// Why an ingested entry is not applied now.
enum Refusal {
    /// Bad: kept aside with the reason, never applied.
    Reject(String),
    /// Good as far as can be told, but it builds on changes not held yet: not stored, and not
    /// held against its author; it is accepted when sent again after them.
    Defer(String),
    /// Reading the store failed: nothing is said about the entry.
    Fail(WriteError),
}

/// The schema rules an ingested document must keep.
fn check_remote(
    doc_type: DocType,
    doc: &Json,
    settings: &Settings,
    before: Option<&Json>,
) -> Result<(), String> {
    fn check<T: Document>(doc: &Json, settings: &Settings) -> Result<T, String> {
        let v = docmap::from_view::<T>(doc).map_err(|e| e.to_string())?;
        v.validate(settings).map_err(|e| e.to_string())?;
        Ok(v)
    }
    fn earlier<T: Document>(before: Option<&Json>) -> Option<T> {
        before.and_then(|b| docmap::from_view::<T>(b).ok())
    }
    match doc_type {
        DocType::Settings => check::<Settings>(doc, settings).map(drop),
        DocType::Product => check::<Product>(doc, settings).map(drop),
        DocType::Sale => {
            let after = check::<Sale>(doc, settings)?;
            earlier::<Sale>(before).map_or(Ok(()), |b| {
                b.check_update(&after).map_err(|e| e.to_string())
            })
        }
        DocType::Refund => {
            let after = check::<Refund>(doc, settings)?;
            earlier::<Refund>(before).map_or(Ok(()), |b| {
                b.check_update(&after).map_err(|e| e.to_string())
            })
        }
        DocType::Customer => check::<Customer>(doc, settings).map(drop),
        DocType::Vendor => check::<Vendor>(doc, settings).map(drop),
        DocType::Invoice => check::<Invoice>(doc, settings).map(drop),
        DocType::Payment => check::<Payment>(doc, settings).map(drop),
        DocType::Expense => check::<Expense>(doc, settings).map(drop),
        DocType::StockAdjustment => check::<StockAdjustment>(doc, settings).map(drop),
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
}

/// What a batch's `finish` produced for the answers and the event stream.
struct Finished {
    views: HashMap<DocId, Arc<Json>>,
    /// Products whose stock level moved while their own document did not change.
    stock_only: Vec<DocId>,
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
    for r in &replies {
        match r {
            Reply::Command(_, Ok(s)) => {
                publish(s, Origin::Local);
                if let Some(e) = &s.own {
                    let _ = outlets.committed.send(e.clone());
                }
            }
            Reply::Ingest(_, Ok((_, Some(s)))) => publish(s, Origin::Remote),
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
                let _ = tx.send(result.map(|s| Written {
                    doc_id: s.primary,
                    doc: view(&s.primary),
                    author: s.author,
                    seq: s.seq,
                }));
            }
            Reply::Ingest(tx, result) => {
                let _ = tx.send(result.map(|(outcome, _)| outcome));
            }
        }
    }
}
