//! The redb tables of a node's store, and the fixed-width records some of them hold.
//!
//! Keys are big-endian fixed-width, so ranges follow author/seq and document-id order (document
//! ids are UUIDv7: id order is creation order).
//!
//! Business data is sealed (see `seal`): the values of `ENTRIES`, `DOC_SNAPSHOTS`,
//! `DOC_CHUNKS`, `VIEWS` and `REJECTED`, the SKUs (kept as keyed tags), and the device's secret,
//! name and receipt prefix in `META`. Ids, heads, counts, stock sums and sizes stay plain: the
//! store orders and counts by them without the key.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::sync::Arc;

use redb::{
    AccessGuard, Key, MultimapTableDefinition, ReadableTable, TableDefinition, TableHandle,
};
use tillmesh_protocol::DocId;

use super::seal::{SealError, Sealer};

/// Identity and counters: see the `meta_key` constants.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Every signed entry held, by `(author, seq)`: the log replication serves from. Sealed.
pub const ENTRIES: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("entries");
/// Per author: the highest contiguous seq held and that entry's hash (version vector + chain tip).
pub const HEADS: TableDefinition<&[u8; 32], (u64, [u8; 32])> = TableDefinition::new("heads");
/// Which entries touched a document.
pub const DOC_ENTRIES: MultimapTableDefinition<&[u8; 16], (&[u8; 32], u64)> =
    MultimapTableDefinition::new("doc_entries");
/// Per document: its type and how its Automerge state is split between snapshot and chunks.
pub const DOCS: TableDefinition<&[u8; 16], (u8, u32, u64, u64)> = TableDefinition::new("docs");
/// A document's last compacted Automerge save.
pub const DOC_SNAPSHOTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("doc_snapshots");
/// Automerge changes to a document since its snapshot, in order.
pub const DOC_CHUNKS: TableDefinition<(&[u8; 16], u32), &[u8]> = TableDefinition::new("doc_chunks");
/// The materialized JSON of each document, so reads and listings never load Automerge.
pub const VIEWS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("views");
/// Documents by type code, in id (creation) order.
pub const BY_TYPE: TableDefinition<(u8, &[u8; 16]), ()> = TableDefinition::new("by_type");
/// Products by SKU: `(index tag of the SKU, product id)` -> the SKU, sealed. The tag (see
/// `Sealer::index_tag`) finds a SKU's products without the SKU being readable in the file.
pub const SKUS: TableDefinition<SkuKey, &[u8]> = TableDefinition::new("skus");
pub type SkuKey = (&'static [u8; 32], &'static [u8; 16]);
/// Per product: the sum of the stock movements recorded by the sales, refunds and stock
/// adjustments held. A product's level is its `opening_stock` plus this; kept apart from the
/// product so movements that arrive before their product are not lost.
pub const STOCK: TableDefinition<&[u8; 16], i64> = TableDefinition::new("stock");
/// Per strict product and device: the rights to units it holds (see
/// `tillmesh_protocol::rights`), the sum of the rights moves of the documents held; plain, like
/// the stock sums. A device's row changes only by its own entries.
pub const RIGHTS: TableDefinition<RightsKey, i64> = TableDefinition::new("rights");
pub type RightsKey = (&'static [u8; 16], &'static [u8; 32]);
/// Per entry and strict product: how the entry moved its author's rights, as its author saw
/// the documents: `(author, seq, product)` -> units. Written when an entry is applied or judged
/// against its author's rights, never changed (it is a fact about the entry and what it builds
/// on). An entry that stands and has no row moves no rights. When what stands changes, the
/// author's log is replayed from these rows (see `writer::undo`): a spend that its author's
/// standing entries do not cover does not stand.
pub const RIGHTS_MOVES: TableDefinition<RightsMoveKey, i64> = TableDefinition::new("rights_moves");
pub type RightsMoveKey = (&'static [u8; 32], u64, &'static [u8; 16]);
/// Transfers of rights given but not yet accepted: `(receiver, product, transfer)` -> units.
/// What a till short of rights takes into its next sale.
pub const TRANSFERS_OPEN: TableDefinition<OpenTransferKey, i64> =
    TableDefinition::new("transfers_open");
pub type OpenTransferKey = (&'static [u8; 32], &'static [u8; 16], &'static [u8; 16]);
/// Documents held, per type code.
pub const COUNTS: TableDefinition<u8, u64> = TableDefinition::new("counts");
/// Entries refused on ingest, by arrival number: `reason length u32 BE | reason | entry bytes`
/// (see [`rejected_record`]), sealed. Never applied.
pub const REJECTED: TableDefinition<u64, &[u8]> = TableDefinition::new("rejected");

/// Entries held that do not stand: their author was revoked before them, was not admitted, or
/// had a role then that may not write what they carry (a membership operation arrived after
/// them, or with them); or they build on one that does not stand, wait for changes not held,
/// spend rights their author's standing entries do not cover, or reclaim from a device not
/// revoked (see `writer::undo`). Kept, served and counted like any entry, so every node holds the same
/// log; never part of a document. `(author, seq)` -> sealed JSON `{reason, docs, at_ms}`.
/// Rewritten whenever the membership changes, so it always matches it.
pub const UNDONE: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("undone");

/// Membership operations held, by the `(author, seq)` of their entry: the operation's bytes,
/// sealed (they name devices). Small (tens of rows), read whole to compute the membership.
pub const MEMBER_OPS: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("member_ops");
/// Devices proven to have forked their log: `(author)` -> `(seq, first hash, second hash)`.
pub const QUARANTINE: TableDefinition<&[u8; 32], ForkProof> = TableDefinition::new("quarantine");

/// `(seq, hash of the entry held, hash of the other entry)`.
pub type ForkProof = (u64, [u8; 32], [u8; 32]);

pub mod meta_key {
    /// Marks the file as a tillmesh store and names its layout version.
    pub const FORMAT: &str = "format";
    /// Sealed.
    pub const DEVICE_SECRET: &str = "device_secret";
    /// Sealed.
    pub const DEVICE_NAME: &str = "device_name";
    pub const MESH_ID: &str = "mesh_id";
    pub const ROOT_ID: &str = "root_id";
    /// Sealed.
    pub const RECEIPT_PREFIX: &str = "receipt_prefix";
    /// Where the storage key comes from: `KEY_SOURCE_FILE` or `KEY_SOURCE_PASSPHRASE`.
    pub const KEY_SOURCE: &str = "key_source";
    /// For a passphrase: the Argon2id salt and parameters (`KdfParams::to_bytes`), in plain.
    pub const KDF_SALT: &str = "kdf_salt";
    pub const KDF_PARAMS: &str = "kdf_params";
    /// A fixed text sealed under the storage key: a wrong key is told at open, not later.
    pub const KEY_CHECK: &str = "key_check";
    /// The last receipt number this till issued.
    pub const RECEIPT_SEQ: &str = "receipt_seq";
    pub const REJECTED_SEQ: &str = "rejected_seq";
}

/// The value of `meta["format"]`: bump when the table layout changes incompatibly.
/// Version 2 seals business data at rest; version 3 records each entry's moves of stock
/// rights (`RIGHTS_MOVES`), which a version 2 store lacks for the entries it holds.
pub const FORMAT_V3: &[u8] = b"tillmesh-store/3";
pub const KEY_SOURCE_FILE: &[u8] = b"file";
pub const KEY_SOURCE_PASSPHRASE: &[u8] = b"argon2id";

/// `DOCS` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocRecord {
    pub doc_type: u8,
    /// Changes stored in `DOC_CHUNKS` after the snapshot.
    pub chunks: u32,
    pub chunk_bytes: u64,
    pub snapshot_bytes: u64,
}

impl DocRecord {
    pub fn to_tuple(self) -> (u8, u32, u64, u64) {
        (
            self.doc_type,
            self.chunks,
            self.chunk_bytes,
            self.snapshot_bytes,
        )
    }

    pub fn from_tuple(
        (doc_type, chunks, chunk_bytes, snapshot_bytes): (u8, u32, u64, u64),
    ) -> Self {
        DocRecord {
            doc_type,
            chunks,
            chunk_bytes,
            snapshot_bytes,
        }
    }
}

/// Creates every table, so readers never meet a missing one.
pub fn create_all(tx: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(META)?;
    tx.open_table(ENTRIES)?;
    tx.open_table(HEADS)?;
    tx.open_multimap_table(DOC_ENTRIES)?;
    tx.open_table(DOCS)?;
    tx.open_table(DOC_SNAPSHOTS)?;
    tx.open_table(DOC_CHUNKS)?;
    tx.open_table(VIEWS)?;
    tx.open_table(BY_TYPE)?;
    tx.open_table(SKUS)?;
    tx.open_table(REJECTED)?;
    tx.open_table(COUNTS)?;
    tx.open_table(STOCK)?;
    tx.open_table(RIGHTS)?;
    tx.open_table(RIGHTS_MOVES)?;
    tx.open_table(TRANSFERS_OPEN)?;
    tx.open_table(MEMBER_OPS)?;
    tx.open_table(QUARANTINE)?;
    tx.open_table(UNDONE)?;
    Ok(())
}

/// Every table, opened once per write batch.
pub struct Tables<'t> {
    pub meta: redb::Table<'t, &'static str, &'static [u8]>,
    pub entries: SealedTable<'t, (&'static [u8; 32], u64)>,
    pub heads: redb::Table<'t, &'static [u8; 32], (u64, [u8; 32])>,
    pub doc_entries: redb::MultimapTable<'t, &'static [u8; 16], (&'static [u8; 32], u64)>,
    pub docs: redb::Table<'t, &'static [u8; 16], (u8, u32, u64, u64)>,
    pub snapshots: SealedTable<'t, &'static [u8; 16]>,
    pub chunks: SealedTable<'t, (&'static [u8; 16], u32)>,
    pub views: SealedTable<'t, &'static [u8; 16]>,
    pub by_type: redb::Table<'t, (u8, &'static [u8; 16]), ()>,
    pub skus: SealedTable<'t, SkuKey>,
    pub rejected: SealedTable<'t, u64>,
    pub counts: redb::Table<'t, u8, u64>,
    pub stock: redb::Table<'t, &'static [u8; 16], i64>,
    pub rights: redb::Table<'t, RightsKey, i64>,
    pub rights_moves: redb::Table<'t, RightsMoveKey, i64>,
    pub transfers_open: redb::Table<'t, OpenTransferKey, i64>,
    pub member_ops: SealedTable<'t, (&'static [u8; 32], u64)>,
    pub quarantine: redb::Table<'t, &'static [u8; 32], ForkProof>,
    pub undone: SealedTable<'t, (&'static [u8; 32], u64)>,
}

impl<'t> Tables<'t> {
    pub fn open(
        tx: &'t redb::WriteTransaction,
        sealer: &Arc<Sealer>,
    ) -> Result<Self, redb::TableError> {
        Ok(Tables {
            meta: tx.open_table(META)?,
            entries: Sealed::new(tx.open_table(ENTRIES)?, sealer),
            heads: tx.open_table(HEADS)?,
            doc_entries: tx.open_multimap_table(DOC_ENTRIES)?,
            docs: tx.open_table(DOCS)?,
            snapshots: Sealed::new(tx.open_table(DOC_SNAPSHOTS)?, sealer),
            chunks: Sealed::new(tx.open_table(DOC_CHUNKS)?, sealer),
            views: Sealed::new(tx.open_table(VIEWS)?, sealer),
            by_type: tx.open_table(BY_TYPE)?,
            skus: Sealed::new(tx.open_table(SKUS)?, sealer),
            rejected: Sealed::new(tx.open_table(REJECTED)?, sealer),
            counts: tx.open_table(COUNTS)?,
            stock: tx.open_table(STOCK)?,
            rights: tx.open_table(RIGHTS)?,
            rights_moves: tx.open_table(RIGHTS_MOVES)?,
            transfers_open: tx.open_table(TRANSFERS_OPEN)?,
            member_ops: Sealed::new(tx.open_table(MEMBER_OPS)?, sealer),
            quarantine: tx.open_table(QUARANTINE)?,
            undone: Sealed::new(tx.open_table(UNDONE)?, sealer),
        })
    }
}

/// A failure reading or writing a sealed table.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error(transparent)]
    Unsealed(#[from] SealError),
}

/// A write-side sealed table, as [`Tables`] holds them.
pub type SealedTable<'t, K> = Sealed<redb::Table<'t, K, &'static [u8]>, K>;
/// A read-side sealed table.
pub type SealedReadOnly<K> = Sealed<redb::ReadOnlyTable<K, &'static [u8]>, K>;

/// A table whose values are sealed: `get`, `insert` and `range` look like redb's but seal and
/// open on the way, so call sites read as they did before sealing.
pub struct Sealed<T, K> {
    table: T,
    name: String,
    sealer: Arc<Sealer>,
    key: PhantomData<K>,
}

/// An opened value.
pub struct Opened(Vec<u8>);

impl Opened {
    pub fn value(&self) -> &[u8] {
        &self.0
    }
}

impl<T: TableHandle, K> Sealed<T, K> {
    pub fn new(table: T, sealer: &Arc<Sealer>) -> Self {
        Sealed {
            name: table.name().to_owned(),
            table,
            sealer: sealer.clone(),
            key: PhantomData,
        }
    }
}

impl<T, K: Key + 'static> Sealed<T, K> {
    fn open_value<'a>(&self, key: &K::SelfType<'a>, sealed: &[u8]) -> Result<Opened, SealError>
    where
        K: 'a,
    {
        self.sealer
            .open(&self.name, K::as_bytes(key).as_ref(), sealed)
            .map(Opened)
    }

    /// The table itself, for what needs no values (lengths, keys).
    pub fn raw(&self) -> &T {
        &self.table
    }
}

impl<T: ReadableTable<K, &'static [u8]>, K: Key + 'static> Sealed<T, K> {
    pub fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<Opened>, SealedError>
    where
        K: 'a,
    {
        let key = key.borrow();
        match self.table.get(key)? {
            Some(v) => Ok(Some(self.open_value(key, v.value())?)),
            None => Ok(None),
        }
    }

    #[allow(clippy::type_complexity)]
    pub fn range<'a, KR>(
        &self,
        range: impl std::ops::RangeBounds<KR> + 'a,
    ) -> Result<
        impl DoubleEndedIterator<Item = Result<(AccessGuard<'_, K>, Opened), SealedError>> + '_,
        SealedError,
    >
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        Ok(self.table.range(range)?.map(move |item| {
            let (k, v) = item?;
            let opened = self.open_value(&k.value(), v.value())?;
            Ok((k, opened))
        }))
    }

    #[allow(clippy::type_complexity)]
    pub fn iter(
        &self,
    ) -> Result<
        impl DoubleEndedIterator<Item = Result<(AccessGuard<'_, K>, Opened), SealedError>> + '_,
        SealedError,
    > {
        Ok(self.table.iter()?.map(move |item| {
            let (k, v) = item?;
            let opened = self.open_value(&k.value(), v.value())?;
            Ok((k, opened))
        }))
    }
}

impl<K: Key + 'static> Sealed<redb::Table<'_, K, &'static [u8]>, K> {
    pub fn insert<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
        value: &[u8],
    ) -> Result<(), redb::StorageError>
    where
        K: 'a,
    {
        let key = key.borrow();
        let sealed = self
            .sealer
            .seal(&self.name, K::as_bytes(key).as_ref(), value);
        self.table.insert(key, sealed.as_slice())?;
        Ok(())
    }

    pub fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<(), redb::StorageError>
    where
        K: 'a,
    {
        self.table.remove(key)?;
        Ok(())
    }
}

/// The SKU index: lookups by tag, the SKU itself sealed in the value.
impl<T: ReadableTable<SkuKey, &'static [u8]>> Sealed<T, SkuKey> {
    /// The product with this SKU (the lowest id, when two share it).
    pub fn first_of(&self, sku: &str) -> Result<Option<DocId>, SealedError> {
        let tag = self.sealer.index_tag(sku);
        let first = self
            .table
            .range((&tag, &[0u8; 16])..=(&tag, &[0xffu8; 16]))?
            .next();
        Ok(match first {
            Some(item) => Some(DocId(*item?.0.value().1)),
            None => None,
        })
    }

    /// Every `(SKU, product)`, in tag order.
    pub fn all(
        &self,
    ) -> Result<impl Iterator<Item = Result<(String, DocId), SealedError>> + '_, SealedError> {
        Ok(self.iter()?.map(|item| {
            let (k, v) = item?;
            let sku = String::from_utf8(v.0).map_err(|_| SealError {
                table: self.name.clone(),
            })?;
            Ok((sku, DocId(*k.value().1)))
        }))
    }
}

impl Sealed<redb::Table<'_, SkuKey, &'static [u8]>, SkuKey> {
    pub fn insert_sku(&mut self, sku: &str, id: &DocId) -> Result<(), redb::StorageError> {
        let tag = self.sealer.index_tag(sku);
        self.insert((&tag, id.as_bytes()), sku.as_bytes())
    }

    pub fn remove_sku(&mut self, sku: &str, id: &DocId) -> Result<(), redb::StorageError> {
        let tag = self.sealer.index_tag(sku);
        self.remove((&tag, id.as_bytes()))
    }
}

/// A `REJECTED` value before sealing.
pub fn rejected_record(reason: &str, entry: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + reason.len() + entry.len());
    v.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    v.extend_from_slice(reason.as_bytes());
    v.extend_from_slice(entry);
    v
}

/// The `(reason, entry bytes)` of an opened `REJECTED` value.
pub fn split_rejected(v: &[u8]) -> Option<(&str, &[u8])> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let reason = std::str::from_utf8(v.get(4..4 + len)?).ok()?;
    Some((reason, &v[4 + len..]))
}
