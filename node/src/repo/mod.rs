//! The document repo: the one way into and out of a node's store.
//!
//! Writes (till commands and entries from other devices) go to a single writer thread that
//! group-commits them: each command becomes one signed entry, a batch of entries becomes one
//! redb transaction, and each caller is answered only after that transaction has committed.
//! Reads go straight to redb's MVCC snapshots and never wait for the writer.

mod docs;
mod prepare;
pub mod requests;
mod verify;
mod writer;

pub use writer::{RECLAIMS_FROM_MEMBER, SPENDS_UNHELD_RIGHTS, UndoneRecord};

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use serde_json::Value as Json;
use tillmesh_protocol::docmap::DocError;
use tillmesh_protocol::schema::{Document, Settings};
use tillmesh_protocol::sync::wire;
use tillmesh_protocol::{
    Currency, DeviceId, DeviceKey, DocId, DocType, Membership, MeshId, Role, SchemaError,
    SignedEntry, VerifyError, VersionVector,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::tables::{
    BY_TYPE, COUNTS, DOC_CHUNKS, DOC_SNAPSHOTS, DOCS, ENTRIES, HEADS, REJECTED, SealedError,
    UNDONE, VIEWS, split_rejected,
};
use crate::store::{self, KeySource, OpenError};
use requests::*;

/// Jobs waiting for the writer; a full queue makes callers wait (backpressure), not fail.
const JOBS_QUEUED_MAX: usize = 8192;
/// Events kept for slow subscribers of the change stream before they are told they lagged.
const EVENTS_BUFFERED_MAX: usize = 16_384;
/// Listing pages are capped so one request can't pull a whole store into memory.
pub const LIST_LIMIT_MAX: usize = 1000;

/// Why a write was refused. Nothing of a refused write is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Invalid(#[from] SchemaError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    UnknownProduct(String),
    #[error("{0}")]
    Conflict(String),
    /// A strict product's units this device holds no rights to: how many it holds and where
    /// the rest are.
    #[error("{message}")]
    OutOfStock {
        message: String,
        product: DocId,
        /// Units more than this device holds.
        short: i64,
    },
    /// This device's role does not allow the write.
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "this device's admission to the mesh has not arrived yet, so it cannot write; let it sync with the device that invited it"
    )]
    NotAdmitted,
    #[error("the disk is full, so nothing was written; free some space and try again")]
    DiskFull,
    #[error(
        "the store could not write ({0}), so nothing was written; try again, and check the disk if it persists"
    )]
    Storage(String),
    /// The disk lost or changed what this device had acknowledged: the message says where
    /// and what to do. Nothing is written until that is put right.
    #[error("{0}")]
    Damaged(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "the node is shutting down, or its writer has stopped; nothing was written (restart the node if this persists)"
    )]
    ShuttingDown,
}

impl WriteError {
    /// The refusal of a strict product's sale: how many units this device holds rights to,
    /// and who holds the rest (`elsewhere`: each holder's name and units).
    pub(crate) fn out_of_stock(
        product: DocId,
        sku: &str,
        held: i64,
        spent: i64,
        elsewhere: &[(String, i64)],
    ) -> WriteError {
        let rest = if elsewhere.is_empty() {
            "no other device holds any: receive stock (a stock adjustment) before selling more"
                .to_owned()
        } else {
            let holders: Vec<String> = elsewhere
                .iter()
                .map(|(name, units)| format!("{name} ({units})"))
                .collect();
            format!("the rest are held by {}", holders.join(", "))
        };
        let held = held.max(0);
        WriteError::OutOfStock {
            message: format!(
                "out of stock: this device holds rights to {held} of {sku} and needs {spent}; {rest}"
            ),
            product,
            short: spent.saturating_sub(held),
        }
    }
}

/// A member's name as people know it, or the start of its id when it has none.
pub(crate) fn member_name(membership: &Membership, device: &DeviceId) -> String {
    membership
        .get(device)
        .map(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("device {}", device.short()))
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for WriteError {
            fn from(e: $t) -> Self {
                let e: redb::Error = e.into();
                match e {
                    redb::Error::Io(io) => {
                        let se = redb::StorageError::Io(io);
                        if store::is_disk_full(&se) { WriteError::DiskFull } else { WriteError::Storage(se.to_string()) }
                    }
                    other => WriteError::Storage(other.to_string()),
                }
            }
        }
    )*};
}
storage_errors!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl From<SealedError> for WriteError {
    fn from(e: SealedError) -> Self {
        match e {
            SealedError::Storage(e) => e.into(),
            SealedError::Unsealed(e) => WriteError::Storage(e.to_string()),
        }
    }
}

impl From<DocError> for WriteError {
    fn from(e: DocError) -> Self {
        WriteError::Internal(e.to_string())
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the store failed: {0}")]
    Storage(String),
    #[error("document {id} is not a readable {doc_type}: {reason}")]
    Unreadable {
        id: DocId,
        doc_type: DocType,
        reason: String,
    },
}

macro_rules! read_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for ReadError {
            fn from(e: $t) -> Self { ReadError::Storage(e.to_string()) }
        }
    )*};
}
read_errors!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    SealedError
);

/// A till command, executed as one signed entry.
#[derive(Debug, Clone)]
pub enum Command {
    InitSettings(Settings),
    SetTaxRate {
        code: String,
        rate: SetTaxRate,
    },
    /// The shop's time zone (an IANA name this node's time zone database knows).
    SetTimeZone(String),
    CreateProduct(NewProduct),
    Sell(NewSale),
    Void {
        sale_id: DocId,
        request: VoidSale,
    },
    Refund {
        sale_id: DocId,
        request: RefundSale,
    },
    CreateCustomer(NewCustomer),
    CreateVendor(NewVendor),
    CreateInvoice(NewInvoice),
    RecordPayment(NewPayment),
    RecordExpense(NewExpense),
    PatchCustomer {
        id: DocId,
        patch: CustomerPatch,
    },
    /// A vendor's descriptive fields, as a customer's.
    PatchVendor {
        id: DocId,
        patch: CustomerPatch,
    },
    PatchProduct {
        id: DocId,
        patch: ProductPatch,
    },
    PatchExpense {
        id: DocId,
        patch: ExpensePatch,
    },
    AdjustStock(NewStockAdjustment),
    /// Gives rights to a strict product's units to another member.
    GiveRights(GiveRights),
    /// Takes back the rights a revoked device held to a strict product (admins and the owner).
    ReclaimRights {
        product_id: DocId,
        from: DeviceId,
    },
    /// Takes into this device's own rights the transfers of a strict product given to it.
    AcceptRights {
        product_id: DocId,
    },
    /// Changes who belongs to the mesh (owners and admins only).
    Member(MemberCommand),
    /// Records what QuickBooks holds for a sale, product or customer (the bridge only).
    SetLedger {
        doc_id: DocId,
        ledger: tillmesh_protocol::schema::Ledger,
    },
    /// Settles a field two devices set concurrently: `value`, one of those it holds, over all
    /// of them (owners, admins and managers).
    ResolveField {
        doc_id: DocId,
        path: Vec<String>,
        value: Json,
    },
}

/// The commands the writer runs itself: they read a document and change it, or must be unique.
// Travels boxed (`Job::Command`), so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Serial {
    InitSettings(Settings),
    SetTaxRate {
        code: String,
        rate: SetTaxRate,
    },
    SetTimeZone(String),
    CreateProduct(NewProduct),
    Void {
        sale_id: DocId,
        request: VoidSale,
    },
    Refund {
        sale_id: DocId,
        request: RefundSale,
    },
    PatchParty {
        doc_type: DocType,
        id: DocId,
        patch: CustomerPatch,
    },
    PatchProduct {
        id: DocId,
        patch: ProductPatch,
    },
    PatchExpense {
        id: DocId,
        patch: ExpensePatch,
    },
    Member(MemberCommand),
    SetLedger {
        doc_id: DocId,
        ledger: tillmesh_protocol::schema::Ledger,
    },
    ResolveField {
        doc_id: DocId,
        path: Vec<String>,
        value: Json,
    },
    GiveRights(GiveRights),
    ReclaimRights {
        product_id: DocId,
        from: DeviceId,
    },
    AcceptRights {
        product_id: DocId,
    },
}

/// A membership command, completed by the writer with what this node holds of the target.
#[derive(Debug, Clone)]
pub enum MemberCommand {
    /// Admits a device to the mesh with a role.
    Add {
        device: DeviceId,
        role: Role,
        name: String,
    },
    /// Gives a member another role for its entries from the next one this node has not seen.
    ChangeRole { device: DeviceId, role: Role },
    /// Cuts a member off: its entries this node holds stay accepted, later ones are refused.
    Revoke { device: DeviceId },
}

/// What a committed command wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The document the command is about (the sale, the product, the refund...).
    pub doc_id: DocId,
    pub doc: Arc<Json>,
    pub author: DeviceId,
    pub seq: u64,
}

/// What became of an entry from another device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IngestOutcome {
    Applied,
    /// Already held: nothing to do.
    Duplicate,
    /// Earlier entries of this author are missing; send those first. Nothing was stored.
    Gap {
        have: u64,
    },
    /// It builds on changes from other devices that are not held yet; send their entries
    /// first. Nothing was stored, and nothing is held against the author.
    Deferred {
        reason: String,
    },
    /// Refused, kept aside with the reason, never applied.
    Rejected {
        reason: String,
    },
    /// Held (stored, chained, served) but not applied: the membership says it does not
    /// stand, say its author was revoked before it. Listed in the status as undone.
    Undone {
        reason: String,
    },
    /// Its signature does not hold (or it was signed for another mesh): refused and kept
    /// aside like a rejected entry, and whoever sent it is not an honest peer.
    Forged {
        reason: String,
    },
}

impl IngestOutcome {
    /// Its name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestOutcome::Applied => "applied",
            IngestOutcome::Duplicate => "duplicate",
            IngestOutcome::Gap { .. } => "gap",
            IngestOutcome::Deferred { .. } => "deferred",
            IngestOutcome::Rejected { .. } => "rejected",
            IngestOutcome::Undone { .. } => "undone",
            IngestOutcome::Forged { .. } => "forged",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Written by this device.
    Local,
    /// Received from another device.
    Remote,
    /// A product's stock level moved because a sale, refund or adjustment did.
    Stock,
}

/// A committed change to a document, for the event stream.
#[derive(Debug, Clone)]
pub struct DocEvent {
    pub doc_id: DocId,
    pub doc_type: DocType,
    pub origin: Origin,
    /// The entry that changed the document; none for a stock level that moved.
    pub author: Option<DeviceId>,
    pub seq: Option<u64>,
    pub doc: Arc<Json>,
}

pub(crate) enum Job {
    Command(Box<Serial>, Answer<Written>),
    Prepared(Box<prepare::Prepared>, Answer<Written>),
    /// An entry from another device, with what was checked of it already (see `verify`).
    Ingest(Box<verify::Ahead>, Answer<IngestOutcome>),
}

/// Where the writer answers a job. One dropped unanswered while the writer unwinds from a
/// panic answers that a bug stopped the batch: the caller must hear "not written, try again",
/// not "shutting down", since the writer goes on.
pub(crate) struct Answer<T>(Option<oneshot::Sender<Result<T, WriteError>>>);

impl<T> Answer<T> {
    fn channel() -> (Answer<T>, oneshot::Receiver<Result<T, WriteError>>) {
        let (tx, rx) = oneshot::channel();
        (Answer(Some(tx)), rx)
    }

    /// Answers; a caller that stopped waiting is not an error.
    pub(crate) fn send(mut self, result: Result<T, WriteError>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(tx) = self.0.take()
        {
            let _ = tx.send(Err(WriteError::Internal(
                "a bug stopped this write's batch; nothing of it was stored, the node reloaded and goes on; try again, and report it if it happens again".into(),
            )));
        }
    }
}

/// A device's identity as everyone may see it.
#[derive(Debug, Clone, Serialize)]
pub struct PublicIdentity {
    pub device_id: DeviceId,
    pub device_name: String,
    pub mesh_id: MeshId,
    pub root_id: DeviceId,
}

/// An entry held that does not stand (see `writer::undo`): what the status lists.
#[derive(Debug, Clone, Serialize)]
pub struct UndoneEntry {
    pub author: DeviceId,
    pub seq: u64,
    #[serde(flatten)]
    pub record: writer::UndoneRecord,
}

/// Rights to a strict product's units: per device, and given but not yet accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockRights {
    pub held: Vec<(DeviceId, i64)>,
    pub in_transit: i64,
    /// The transfers in transit, per receiver.
    pub open_to: Vec<(DeviceId, i64)>,
}

impl StockRights {
    /// Units `device` holds.
    pub fn held_by(&self, device: &DeviceId) -> i64 {
        units_of(&self.held, device)
    }

    /// Units given to `device` and not yet taken into its own rights.
    pub fn open_to(&self, device: &DeviceId) -> i64 {
        units_of(&self.open_to, device)
    }
}

fn units_of(list: &[(DeviceId, i64)], device: &DeviceId) -> i64 {
    list.iter()
        .filter(|(d, _)| d == device)
        .map(|(_, u)| u)
        .sum()
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedEntry {
    pub number: u64,
    pub author: Option<DeviceId>,
    pub seq: Option<u64>,
    pub reason: String,
}

/// A handle on an open node store. Cheap to clone; the writer stops when the last clone drops.
#[derive(Clone)]
pub struct Repo {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<store::Shared>,
    identity: PublicIdentity,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    device: Arc<prepare::Device>,
    writer: Option<std::thread::JoinHandle<()>>,
    events: broadcast::Sender<DocEvent>,
    committed: broadcast::Sender<Arc<SignedEntry>>,
    /// The device key's secret, for the network identity (the PeerId is the device key).
    secret: [u8; 32],
    /// What simulations of crashes ask of the writer.
    hooks: Arc<writer::CrashHooks>,
    /// Entries whose signatures the network layer verified, for the writer not to again.
    verified: verify::VerifiedMemo,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Inner {
    /// The last handle closes the store: the writer finishes its batch and exits, and the file
    /// lock is released before this returns, so the folder can be reopened at once.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Repo {
    /// Creates a new mesh with this device as its owner, in an empty or new folder.
    pub async fn init(
        dir: &Path,
        device_name: &str,
        currency: Currency,
    ) -> Result<Repo, InitError> {
        Repo::init_with(dir, device_name, currency, &KeySource::KeyFile).await
    }

    /// [`Repo::init`] with the storage key from `keys`.
    pub async fn init_with(
        dir: &Path,
        device_name: &str,
        currency: Currency,
        keys: &KeySource,
    ) -> Result<Repo, InitError> {
        let key = DeviceKey::from_secret(random_bytes());
        Repo::init_keyed(dir, device_name, currency, key, keys).await
    }

    /// [`Repo::init`] with a given device key (the simulation derives keys from its seed).
    pub async fn init_with_key(
        dir: &Path,
        device_name: &str,
        currency: Currency,
        key: DeviceKey,
    ) -> Result<Repo, InitError> {
        Repo::init_keyed(dir, device_name, currency, key, &KeySource::KeyFile).await
    }

    async fn init_keyed(
        dir: &Path,
        device_name: &str,
        currency: Currency,
        key: DeviceKey,
        keys: &KeySource,
    ) -> Result<Repo, InitError> {
        let mesh = MeshId::from_root(&key.device_id());
        let root = key.device_id();
        let db = store::create_with(dir, device_name, key, mesh, root, keys)?;
        drop(db);
        let repo = Repo::open_with(dir, keys)?;
        repo.execute(Command::InitSettings(Settings::new(device_name, currency)))
            .await?;
        Ok(repo)
    }

    /// Makes a new device of the mesh whose owner is `root`, in an empty or new folder. It
    /// holds nothing until it syncs; the mesh settings arrive with the first sync.
    pub fn join(dir: &Path, device_name: &str, root: DeviceId) -> Result<Repo, OpenError> {
        Repo::join_with(dir, device_name, root, &KeySource::KeyFile)
    }

    /// [`Repo::join`] with the storage key from `keys`.
    pub fn join_with(
        dir: &Path,
        device_name: &str,
        root: DeviceId,
        keys: &KeySource,
    ) -> Result<Repo, OpenError> {
        let key = DeviceKey::from_secret(random_bytes());
        Repo::join_keyed(dir, device_name, root, key, keys)
    }

    /// [`Repo::join`] with a given device key.
    pub fn join_with_key(
        dir: &Path,
        device_name: &str,
        root: DeviceId,
        key: DeviceKey,
    ) -> Result<Repo, OpenError> {
        Repo::join_keyed(dir, device_name, root, key, &KeySource::KeyFile)
    }

    pub fn join_keyed(
        dir: &Path,
        device_name: &str,
        root: DeviceId,
        key: DeviceKey,
        keys: &KeySource,
    ) -> Result<Repo, OpenError> {
        let mesh = MeshId::from_root(&root);
        let db = store::create_with(dir, device_name, key, mesh, root, keys)?;
        drop(db);
        Repo::open_with(dir, keys)
    }

    /// Opens an existing store sealed with a key file and starts its writer.
    pub fn open(dir: &Path) -> Result<Repo, OpenError> {
        Repo::open_with(dir, &KeySource::KeyFile)
    }

    /// Opens an existing store and starts its writer. Reads nothing but the identity and the
    /// writer's counters, so a store of any size opens in constant time.
    pub fn open_with(dir: &Path, keys: &KeySource) -> Result<Repo, OpenError> {
        let (db, identity, sealer) = store::open(dir, keys)?;
        let db = Arc::new(store::Shared::new(dir, db, sealer));
        let secret = identity.key.secret();
        let hooks = Arc::new(writer::CrashHooks::default());
        let writer_hooks = hooks.clone();
        let public = PublicIdentity {
            device_id: identity.device_id,
            device_name: identity.device_name.clone(),
            mesh_id: identity.mesh_id,
            root_id: identity.root_id,
        };
        let (jobs, rx) = mpsc::channel(JOBS_QUEUED_MAX);
        let (events, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let (committed, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let device = Arc::new(prepare::Device {
            id: identity.device_id,
            actor: tillmesh_protocol::docmap::actor_for(&identity.device_id),
            receipt_prefix: identity.receipt_prefix.clone(),
            settings_id: DocId::derived(&identity.mesh_id, "settings"),
            receipts: Default::default(),
            membership: tokio::sync::watch::Sender::new(Arc::new(
                tillmesh_protocol::Membership::new(identity.root_id),
            )),
        });
        let state = writer::Writer::load(db.clone(), identity, device.clone()).map_err(|e| {
            OpenError::Storage {
                path: store::store_path(dir),
                detail: e.to_string(),
            }
        })?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let outlets = writer::Outlets {
            events: events.clone(),
            committed: committed.clone(),
            metrics: metrics.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("tillmesh-writer".into())
            .spawn(move || state.run(rx, outlets, writer_hooks))
            .map_err(|e| OpenError::Io {
                path: dir.to_owned(),
                source: e,
            })?;
        Ok(Repo {
            inner: Arc::new(Inner {
                db,
                identity: public,
                jobs: Some(jobs),
                device,
                writer: Some(writer),
                events,
                committed,
                secret,
                hooks,
                verified: Default::default(),
                metrics,
            }),
        })
    }

    /// The store's size on disk: its file and its write-ahead log.
    pub fn store_bytes(&self) -> u64 {
        let dir = self.dir();
        [store::store_path(dir), dir.join(store::wal::WAL_FILE)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// What this node counts for monitoring (`GET /metrics`).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    pub fn identity(&self) -> &PublicIdentity {
        &self.inner.identity
    }

    /// The sealer of this device's storage key: the bridge seals its QuickBooks tokens with it.
    pub fn sealer(&self) -> Arc<store::seal::Sealer> {
        self.inner.db.sealer().clone()
    }

    /// The mesh's membership as of the last commit.
    pub fn membership(&self) -> Arc<Membership> {
        self.inner.device.membership.borrow().clone()
    }

    /// Follows the membership: the network closes connections of devices that leave it.
    pub fn subscribe_membership(&self) -> tokio::sync::watch::Receiver<Arc<Membership>> {
        self.inner.device.membership.subscribe()
    }

    /// This device's role, if its admission is held.
    pub fn role(&self) -> Option<Role> {
        let m = self.membership();
        m.get(&self.inner.identity.device_id)
            .filter(|m| m.last_seq.is_none())
            .map(|m| m.current_role())
    }

    /// Closes the store as a power cut would: no closing checkpoint, so the next open recovers
    /// from the write-ahead log. For simulations of crashes inside one process; takes effect
    /// when the last handle drops.
    ///
    /// redb still writes out what it holds in memory when the handle closes, so to lose what a
    /// real power cut loses, a simulation also restores the copy that
    /// [`Repo::copy_at_checkpoints`] keeps.
    pub fn power_cut(self) {
        self.inner
            .hooks
            .power_cut
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &std::path::Path {
        self.inner.db.dir()
    }

    /// Tests of the writer's panic guard: the next `n` local commands panic while staged.
    #[doc(hidden)]
    pub fn inject_command_panics(&self, n: u32) {
        self.inner
            .hooks
            .panic_commands
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tests of the writer's panic guard: staging the entry `(author, seq)` panics, every time.
    #[doc(hidden)]
    pub fn inject_ingest_panic(&self, author: DeviceId, seq: u64) {
        if let Ok(mut k) = self.inner.hooks.panic_ingest.lock() {
            *k = Some((author, seq));
        }
    }

    /// Tests of the writer's panic guard: every batch holding the entry `(author, seq)`
    /// panics while its views are rebuilt, outside any one job.
    #[doc(hidden)]
    pub fn inject_finish_panic(&self, author: DeviceId, seq: u64) {
        if let Ok(mut k) = self.inner.hooks.panic_finish.lock() {
            *k = Some((author, seq));
        }
    }

    /// Tests of batching: while the guard lives, the writer waits before gathering its next
    /// batch, so every job sent meanwhile is staged in one.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .hooks
            .hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Tests of batching: whether the writer, held by [`Repo::hold_writer`], has taken one
    /// job and how many more wait behind it.
    #[doc(hidden)]
    pub fn held_jobs(&self) -> Option<usize> {
        let parked = self
            .inner
            .hooks
            .parked
            .load(std::sync::atomic::Ordering::SeqCst);
        let queued = self
            .jobs()
            .map(|j| j.max_capacity() - j.capacity())
            .unwrap_or(0);
        parked.then_some(queued)
    }

    /// Tests of the writer's panic guard: the next `n` batches panic after their log append,
    /// before redb commits them.
    #[doc(hidden)]
    pub fn inject_panics_after_append(&self, n: u32) {
        self.inner
            .hooks
            .panic_after_append
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on, after every checkpoint, copies the store file to
    /// [`store::checkpoint_copy_path`]: the state a power cut would leave, for simulations.
    pub fn copy_at_checkpoints(&self) {
        self.inner
            .hooks
            .copy_at_checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn device_secret(&self) -> [u8; 32] {
        self.inner.secret
    }

    /// Runs a command; answers once its entry is durably committed.
    pub async fn execute(&self, command: Command) -> Result<Written, WriteError> {
        let (tx, rx) = Answer::channel();
        let job = match command {
            Command::InitSettings(s) => Job::Command(Box::new(Serial::InitSettings(s)), tx),
            Command::SetTaxRate { code, rate } => {
                Job::Command(Box::new(Serial::SetTaxRate { code, rate }), tx)
            }
            Command::SetTimeZone(z) => Job::Command(Box::new(Serial::SetTimeZone(z)), tx),
            Command::CreateProduct(p) => Job::Command(Box::new(Serial::CreateProduct(p)), tx),
            Command::Void { sale_id, request } => {
                Job::Command(Box::new(Serial::Void { sale_id, request }), tx)
            }
            Command::Refund { sale_id, request } => {
                Job::Command(Box::new(Serial::Refund { sale_id, request }), tx)
            }
            Command::PatchCustomer { id, patch } => Job::Command(
                Box::new(Serial::PatchParty {
                    doc_type: DocType::Customer,
                    id,
                    patch,
                }),
                tx,
            ),
            Command::PatchVendor { id, patch } => Job::Command(
                Box::new(Serial::PatchParty {
                    doc_type: DocType::Vendor,
                    id,
                    patch,
                }),
                tx,
            ),
            Command::PatchProduct { id, patch } => {
                Job::Command(Box::new(Serial::PatchProduct { id, patch }), tx)
            }
            Command::PatchExpense { id, patch } => {
                Job::Command(Box::new(Serial::PatchExpense { id, patch }), tx)
            }
            Command::Member(m) => Job::Command(Box::new(Serial::Member(m)), tx),
            Command::GiveRights(g) => Job::Command(Box::new(Serial::GiveRights(g)), tx),
            Command::ReclaimRights { product_id, from } => {
                Job::Command(Box::new(Serial::ReclaimRights { product_id, from }), tx)
            }
            Command::AcceptRights { product_id } => {
                Job::Command(Box::new(Serial::AcceptRights { product_id }), tx)
            }
            Command::SetLedger { doc_id, ledger } => {
                Job::Command(Box::new(Serial::SetLedger { doc_id, ledger }), tx)
            }
            Command::ResolveField {
                doc_id,
                path,
                value,
            } => Job::Command(
                Box::new(Serial::ResolveField {
                    doc_id,
                    path,
                    value,
                }),
                tx,
            ),
            Command::Sell(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::sale(s, d, r)).await?),
                tx,
            ),
            Command::AdjustStock(r) => Job::Prepared(
                Box::new(
                    self.prepare(move |s, d| prepare::stock_adjustment(s, d, r))
                        .await?,
                ),
                tx,
            ),
            Command::CreateCustomer(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::customer(s, d, r)).await?),
                tx,
            ),
            Command::CreateVendor(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::vendor(s, d, r)).await?),
                tx,
            ),
            Command::CreateInvoice(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::invoice(s, d, r)).await?),
                tx,
            ),
            Command::RecordPayment(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::payment(s, d, r)).await?),
                tx,
            ),
            Command::RecordExpense(r) => Job::Prepared(
                Box::new(self.prepare(move |s, d| prepare::expense(s, d, r)).await?),
                tx,
            ),
        };
        self.jobs()?
            .send(job)
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Runs a preparation on a blocking thread, against a fresh read snapshot. (Running it on
    /// the caller's task measured slower: it holds up the runtime's workers, which also serve
    /// HTTP.)
    async fn prepare(
        &self,
        f: impl FnOnce(&prepare::Snapshot, &prepare::Device) -> Result<prepare::Prepared, WriteError>
        + Send
        + 'static,
    ) -> Result<prepare::Prepared, WriteError> {
        let db = self
            .inner
            .db
            .get()
            .map_err(|e| WriteError::Storage(e.to_string()))?;
        let device = self.inner.device.clone();
        let sealer = self.inner.db.sealer().clone();
        tokio::task::spawn_blocking(move || f(&prepare::Snapshot::open(&db, &sealer)?, &device))
            .await
            .map_err(|e| WriteError::Internal(format!("preparing the write failed: {e}")))?
    }

    /// Verifies, applies and stores an entry from another device.
    pub async fn ingest(&self, entry: SignedEntry) -> Result<IngestOutcome, WriteError> {
        let mut done = self.ingest_many(vec![entry]).await?;
        Ok(done.pop().map(|(_, o)| o).expect("one outcome per entry"))
    }

    /// Verifies an entry's signature for the network layer, which must know before gossip
    /// forwards it; the writer then takes it without verifying it again.
    pub fn verify_signature(&self, entry: &SignedEntry) -> Result<(), VerifyError> {
        entry.verify(&self.inner.identity.mesh_id)?;
        self.inner.verified.insert(entry.hash());
        Ok(())
    }

    fn jobs(&self) -> Result<&mpsc::Sender<Job>, WriteError> {
        self.inner.jobs.as_ref().ok_or(WriteError::ShuttingDown)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<DocEvent> {
        self.inner.events.subscribe()
    }

    /// This device's own entries, as each is committed. A receiver that lags misses some;
    /// anti-entropy finds them.
    pub fn subscribe_committed(&self) -> broadcast::Receiver<Arc<SignedEntry>> {
        self.inner.committed.subscribe()
    }

    /// Ingests entries in order, letting the writer batch them; each comes back with its
    /// outcome. Their signatures are checked first, on every core (see `verify`).
    pub async fn ingest_many(
        &self,
        entries: Vec<SignedEntry>,
    ) -> Result<Vec<(SignedEntry, IngestOutcome)>, WriteError> {
        let jobs = self.jobs()?;
        let held = self.version_vector().ok();
        let checked = verify::check_ahead(
            entries,
            held.as_ref(),
            &self.inner.verified,
            self.inner.identity.mesh_id,
        )
        .await;
        let mut replies = Vec::with_capacity(checked.len());
        for ahead in checked {
            let (tx, rx) = Answer::channel();
            let entry = ahead.entry.clone();
            jobs.send(Job::Ingest(Box::new(ahead), tx))
                .await
                .map_err(|_| WriteError::ShuttingDown)?;
            replies.push((entry, rx));
        }
        let mut out = Vec::with_capacity(replies.len());
        for (entry, rx) in replies {
            let outcome = rx.await.map_err(|_| WriteError::ShuttingDown)??;
            // The writer has let go of it once it answered.
            let entry = Arc::try_unwrap(entry).unwrap_or_else(|e| (*e).clone());
            out.push((entry, outcome));
        }
        Ok(out)
    }

    /// Reads the entries of `ranges` until a limit is reached; the flag says whether any were
    /// left out. One entry larger than `bytes_max` goes alone.
    ///
    /// Authors are interleaved. An entry may need another author's entries first; were a batch
    /// filled by one author, an asker missing the other would get the same unusable batch
    /// forever. So the first missing entry of every author comes first (up to `entries_max`
    /// authors, and under [`wire::BATCH_BYTES_MAX`] whatever smaller `bytes_max` the asker
    /// set): the causally earliest of them always applies, and each pull makes progress. Then
    /// every author gets an equal share, then the rest fills in author order.
    pub fn entries_in(
        &self,
        ranges: &[(DeviceId, RangeInclusive<u64>)],
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<SignedEntry>, bool), ReadError> {
        let tx = self.db()?.begin_read()?;
        let table = self.inner.db.sealed(tx.open_table(ENTRIES)?);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next: Vec<u64> = ranges.iter().map(|(_, r)| *r.start()).collect();
        let share = (entries_max / ranges.len().max(1)).max(1) as u64;
        for pass in 0..3 {
            let bytes_limit = if pass == 0 {
                wire::BATCH_BYTES_MAX.max(bytes_max)
            } else {
                bytes_max
            };
            for (i, (author, range)) in ranges.iter().enumerate() {
                let last = match pass {
                    0 => next[i],
                    1 => (*range.end()).min(next[i].saturating_add(share - 1)),
                    _ => *range.end(),
                };
                let last = last.min(*range.end());
                if next[i] > last {
                    continue;
                }
                let from = (author.as_bytes(), next[i]);
                let to = (author.as_bytes(), last);
                for item in table.range(from..=to)? {
                    let (_, v) = item?;
                    let raw = v.value();
                    if out.len() >= entries_max
                        || (!out.is_empty() && bytes + raw.len() > bytes_limit)
                    {
                        return Ok((out, true));
                    }
                    bytes += raw.len();
                    out.push(SignedEntry::decode(raw).map_err(|e| {
                        ReadError::Storage(format!(
                            "a stored entry of device {author} does not decode: {e}"
                        ))
                    })?);
                    next[i] += 1;
                }
            }
        }
        Ok((out, false))
    }

    fn db(&self) -> Result<Arc<Database>, ReadError> {
        self.inner
            .db
            .get()
            .map_err(|e| ReadError::Storage(e.to_string()))
    }

    /// A document's materialized JSON (with its `type`), if held.
    pub fn view(&self, id: &DocId) -> Result<Option<Json>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let views = self.inner.db.sealed(tx.open_table(VIEWS)?);
        let Some(v) = views.get(id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| ReadError::Storage(format!("view of {id}: {e}")))
    }

    /// Fields of customers, vendors and products that devices set concurrently, with every
    /// value (see `tillmesh_protocol::conflicts`), newest documents first. Reads each
    /// document's Automerge state, so it looks at `docs_max` documents of each type at most.
    pub fn field_conflicts(
        &self,
        docs_max: usize,
    ) -> Result<
        Vec<(
            DocId,
            DocType,
            Vec<tillmesh_protocol::conflicts::FieldConflict>,
        )>,
        ReadError,
    > {
        let tx = self.db()?.begin_read()?;
        let by_type = tx.open_table(BY_TYPE)?;
        let docs = tx.open_table(DOCS)?;
        let snapshots = self.inner.db.sealed(tx.open_table(DOC_SNAPSHOTS)?);
        let chunks = self.inner.db.sealed(tx.open_table(DOC_CHUNKS)?);
        let damaged = |id: &DocId, e: &dyn std::fmt::Display| {
            ReadError::Storage(format!("document {id} in the store is damaged: {e}"))
        };
        let mut out = Vec::new();
        for doc_type in writer::RESOLVABLE {
            let code = doc_type.code();
            let range = by_type.range((code, &[0u8; 16])..=(code, &[0xffu8; 16]))?;
            for item in range.rev().take(docs_max) {
                let id = DocId(*item?.0.value().1);
                let Some(record) = docs.get(id.as_bytes())? else {
                    continue;
                };
                let record = store::tables::DocRecord::from_tuple(record.value());
                let mut doc = match snapshots.get(id.as_bytes())? {
                    Some(s) => {
                        automerge::AutoCommit::load(s.value()).map_err(|e| damaged(&id, &e))?
                    }
                    None => automerge::AutoCommit::new(),
                };
                for n in 0..record.chunks {
                    if let Some(c) = chunks.get((id.as_bytes(), n))? {
                        doc.load_incremental(c.value())
                            .map_err(|e| damaged(&id, &e))?;
                    }
                }
                let found = tillmesh_protocol::conflicts::field_conflicts(&mut doc);
                if !found.is_empty() {
                    out.push((id, doc_type, found));
                }
            }
        }
        Ok(out)
    }

    /// A document as a typed value, if held and of type `T`.
    pub fn get<T: Document>(&self, id: &DocId) -> Result<Option<T>, ReadError> {
        match self.view(id)? {
            Some(json) if json.get("type").and_then(Json::as_str) == Some(T::TYPE.name()) => {
                typed(id, json).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Documents of one type, newest first, strictly older than `before` when given.
    pub fn list(
        &self,
        doc_type: DocType,
        before: Option<DocId>,
        limit: usize,
    ) -> Result<Vec<(DocId, Json)>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let by_type = tx.open_table(BY_TYPE)?;
        let views = self.inner.db.sealed(tx.open_table(VIEWS)?);
        let code = doc_type.code();
        let end = before.map(|b| b.0).unwrap_or([0xff; 16]);
        let mut out = Vec::new();
        for item in by_type.range((code, &[0u8; 16])..(code, &end))?.rev() {
            if out.len() >= limit.min(LIST_LIMIT_MAX) {
                break;
            }
            let id = DocId(*item?.0.value().1);
            if let Some(v) = views.get(id.as_bytes())? {
                let json = serde_json::from_slice(v.value())
                    .map_err(|e| ReadError::Storage(format!("view of {id}: {e}")))?;
                out.push((id, json));
            }
        }
        // `before` = [0xff; 16] excludes that one id; no real UUID is all ones.
        Ok(out)
    }

    pub fn settings(&self) -> Result<Settings, ReadError> {
        let id = DocId::derived(&self.inner.identity.mesh_id, "settings");
        self.get::<Settings>(&id)?
            .ok_or_else(|| ReadError::Storage("the mesh settings document is missing".into()))
    }

    pub fn version_vector(&self) -> Result<VersionVector, ReadError> {
        let tx = self.db()?.begin_read()?;
        let heads = tx.open_table(HEADS)?;
        let mut vv = VersionVector::new();
        // Entries that do not stand are held, claimed and served like any other (a revoked
        // device's past its cutoff included), so every node holds the same log and builds its
        // documents from the same entries (see `writer::undo`).
        for item in heads.iter()? {
            let (k, v) = item?;
            vv.advance(DeviceId(*k.value()), v.value().0);
        }
        Ok(vv)
    }

    /// How many documents of each type are held.
    pub fn counts(&self) -> Result<Vec<(DocType, u64)>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let counts = tx.open_table(COUNTS)?;
        let mut out = Vec::new();
        for t in DocType::ALL {
            out.push((t, counts.get(t.code())?.map(|v| v.value()).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Who holds rights to a strict product's units (see `tillmesh_protocol::rights`), and
    /// how many were given and not yet accepted. Together they make the product's level.
    pub fn rights(&self, product: &DocId) -> Result<StockRights, ReadError> {
        let tx = self.db()?.begin_read()?;
        let (rights, open) = match (
            tx.open_table(crate::store::tables::RIGHTS),
            tx.open_table(crate::store::tables::TRANSFERS_OPEN),
        ) {
            (Ok(r), Ok(o)) => (r, o),
            // A store from before strict products, not written to since.
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(StockRights::default());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let mut out = StockRights::default();
        for item in
            rights.range((product.as_bytes(), &[0u8; 32])..=(product.as_bytes(), &[0xffu8; 32]))?
        {
            let (k, v) = item?;
            out.held.push((DeviceId(*k.value().1), v.value()));
        }
        // Open transfers are few (each lives until its receiver's next sale needs it).
        for item in open.iter()? {
            let (k, v) = item?;
            if k.value().1 == product.as_bytes() {
                out.in_transit += v.value();
                let to = DeviceId(*k.value().0);
                match out.open_to.iter_mut().find(|(d, _)| *d == to) {
                    Some((_, units)) => *units += v.value(),
                    None => out.open_to.push((to, v.value())),
                }
            }
        }
        Ok(out)
    }

    /// What the rows of the entries that stand (see `RIGHTS_MOVES`) add up to for `product`,
    /// per device: a device's rights as its own log gives them, before any reclaim of them. An
    /// audit (the simulation compares it with `rights`): it reads every row.
    pub fn rights_from_rows(
        &self,
        product: &DocId,
    ) -> Result<std::collections::BTreeMap<DeviceId, i64>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let rows = tx.open_table(crate::store::tables::RIGHTS_MOVES)?;
        let undone = tx.open_table(UNDONE)?;
        let mut out = std::collections::BTreeMap::<DeviceId, i64>::new();
        for item in rows.iter()? {
            let (k, v) = item?;
            let (author, seq, p) = k.value();
            if p == product.as_bytes() && undone.get((author, seq))?.is_none() {
                *out.entry(DeviceId(*author)).or_default() += v.value();
            }
        }
        out.retain(|_, units| *units != 0);
        Ok(out)
    }

    /// Strict products with transfers given to `device` and not yet accepted, and how many
    /// units they carry.
    pub fn open_transfers_to(&self, device: &DeviceId) -> Result<Vec<(DocId, i64)>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let open = match tx.open_table(crate::store::tables::TRANSFERS_OPEN) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let (lo, hi) = ([0u8; 16], [0xffu8; 16]);
        let mut out: Vec<(DocId, i64)> = Vec::new();
        for item in open.range((device.as_bytes(), &lo, &lo)..=(device.as_bytes(), &hi, &hi))? {
            let (k, v) = item?;
            let product = DocId(*k.value().1);
            match out.last_mut() {
                Some((p, units)) if *p == product => *units += v.value(),
                _ => out.push((product, v.value())),
            }
        }
        Ok(out)
    }

    /// The product with this SKU (the lowest id, when two share it).
    pub fn product_by_sku(&self, sku: &str) -> Result<Option<DocId>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let skus = self
            .inner
            .db
            .sealed(tx.open_table(crate::store::tables::SKUS)?);
        Ok(skus.first_of(sku.trim())?)
    }

    /// The stored entry `(author, seq)`, as its signed bytes.
    pub fn entry(&self, author: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let entries = self.inner.db.sealed(tx.open_table(ENTRIES)?);
        Ok(entries
            .get((author.as_bytes(), seq))?
            .map(|v| v.value().to_vec()))
    }

    /// Entries refused on ingest, newest first.
    pub fn rejected(&self, limit: usize) -> Result<(u64, Vec<RejectedEntry>), ReadError> {
        let tx = self.db()?.begin_read()?;
        let table = self.inner.db.sealed(tx.open_table(REJECTED)?);
        let total = table.raw().len()?;
        let mut out = Vec::new();
        for item in table.iter()?.rev().take(limit) {
            let (k, v) = item?;
            let (reason, bytes) = split_rejected(v.value()).ok_or_else(|| {
                ReadError::Storage(format!("rejected entry {} is damaged", k.value()))
            })?;
            // Rejected bytes may be anything; show the author and seq only if they decode.
            let decoded = SignedEntry::decode(bytes).ok();
            out.push(RejectedEntry {
                number: k.value(),
                author: decoded.as_ref().map(|e| e.entry.author),
                seq: decoded.as_ref().map(|e| e.entry.seq),
                reason: reason.to_owned(),
            });
        }
        Ok((total, out))
    }

    /// Entries held that do not stand, newest first by author and seq: how many, and up to
    /// `limit` of them with why and the documents rebuilt without them.
    pub fn undone(&self, limit: usize) -> Result<(u64, Vec<UndoneEntry>), ReadError> {
        let tx = self.db()?.begin_read()?;
        let table = match tx.open_table(UNDONE) {
            Ok(t) => self.inner.db.sealed(t),
            // A store made before the table existed: nothing was undone in it.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, Vec::new())),
            Err(e) => return Err(e.into()),
        };
        let total = table.raw().len()?;
        let mut out = Vec::new();
        for item in table.iter()?.rev().take(limit) {
            let (k, v) = item?;
            let (author, seq) = k.value();
            let record = serde_json::from_slice(v.value()).map_err(|e| {
                ReadError::Storage(format!("an undone entry's record is damaged: {e}"))
            })?;
            out.push(UndoneEntry {
                author: DeviceId(*author),
                seq,
                record,
            });
        }
        Ok((total, out))
    }

    /// Devices proven to have forked their log, with the seq where the two entries differ.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, ReadError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(crate::store::tables::QUARANTINE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (seq, held, other) = v.value();
            out.push(Quarantined {
                device_id: DeviceId(*k.value()),
                seq,
                held: tillmesh_protocol::EntryHash(held),
                other: tillmesh_protocol::EntryHash(other),
            });
        }
        Ok(out)
    }
}

/// Proof that a device signed two different entries at one position of its log.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub device_id: DeviceId,
    pub seq: u64,
    pub held: tillmesh_protocol::EntryHash,
    pub other: tillmesh_protocol::EntryHash,
}

/// Parses a stored view as a typed document.
pub fn typed<T: Document>(id: &DocId, mut json: Json) -> Result<T, ReadError> {
    if let Some(map) = json.as_object_mut() {
        map.remove("type");
        map.remove("schema");
    }
    serde_json::from_value(json).map_err(|e| ReadError::Unreadable {
        id: *id,
        doc_type: T::TYPE,
        reason: e.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the new store could not record its settings: {0}")]
    Write(#[from] WriteError),
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new UUIDv7 document id. Ids this process hands out increase even within one millisecond
/// (the 12 bits UUIDv7 calls `rand_a` carry a counter), so newest-first listings, which sort by
/// id, show a till's sales in the order it rang them up.
pub(crate) fn new_doc_id(now: u64) -> DocId {
    static LAST: std::sync::Mutex<(u64, u16)> = std::sync::Mutex::new((0, 0));
    const COUNTER_MAX: u16 = 0x0fff;
    let (ms, n) = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        *last = if now > last.0 {
            (now, 0)
        } else if last.1 < COUNTER_MAX {
            (last.0, last.1 + 1)
        } else {
            // 4096 ids in one millisecond: borrow the next millisecond rather than lose order.
            (last.0 + 1, 0)
        };
        *last
    };
    let mut random: [u8; 10] = random_bytes();
    random[..2].copy_from_slice(&n.to_be_bytes());
    DocId::new_v7(ms, random)
}

pub(crate) use crate::store::seal::random as random_bytes;

#[cfg(test)]
mod tests {
    use super::new_doc_id;

    #[test]
    fn ids_increase_within_a_millisecond() {
        let ids: Vec<_> = (0..10_000).map(|_| new_doc_id(1_700_000_000_000)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
