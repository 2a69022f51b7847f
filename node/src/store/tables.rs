//! The redb tables of a node's store, and the fixed-width records some of them hold.
//!
//! Keys are big-endian fixed-width, so ranges follow author/seq and document-id order (document
//! ids are UUIDv7: id order is creation order).

use redb::{MultimapTableDefinition, TableDefinition};

/// Identity and counters: see the `meta_key` constants.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Every signed entry held, by `(author, seq)`: the log replication serves from.
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
/// Products by SKU.
pub const SKUS: TableDefinition<(&str, &[u8; 16]), ()> = TableDefinition::new("skus");
/// Per product: the sum of the stock movements recorded by the sales, refunds and stock
/// adjustments held. A product's level is its `opening_stock` plus this; kept apart from the
/// product so movements that arrive before their product are not lost.
pub const STOCK: TableDefinition<&[u8; 16], i64> = TableDefinition::new("stock");
/// Documents held, per type code.
pub const COUNTS: TableDefinition<u8, u64> = TableDefinition::new("counts");
/// Entries refused on ingest, by arrival number: `(reason, entry bytes)`. Never applied.
pub const REJECTED: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("rejected");

/// Membership operations held, by the `(author, seq)` of their entry: the operation's bytes.
/// Small (tens of rows), read whole to compute the membership.
pub const MEMBER_OPS: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("member_ops");
/// Devices proven to have forked their log: `(author)` -> `(seq, first hash, second hash)`.
pub const QUARANTINE: TableDefinition<&[u8; 32], (u64, [u8; 32], [u8; 32])> =
    TableDefinition::new("quarantine");

pub mod meta_key {
    /// Marks the file as a tillmesh store and names its layout version.
    pub const FORMAT: &str = "format";
    pub const DEVICE_SECRET: &str = "device_secret";
    pub const DEVICE_NAME: &str = "device_name";
    pub const MESH_ID: &str = "mesh_id";
    pub const ROOT_ID: &str = "root_id";
    pub const RECEIPT_PREFIX: &str = "receipt_prefix";
    /// The last receipt number this till issued.
    pub const RECEIPT_SEQ: &str = "receipt_seq";
    pub const REJECTED_SEQ: &str = "rejected_seq";
}

/// The value of `meta["format"]`: bump when the table layout changes incompatibly.
pub const FORMAT_V1: &[u8] = b"tillmesh-store/1";

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
    tx.open_table(MEMBER_OPS)?;
    tx.open_table(QUARANTINE)?;
    Ok(())
}

/// Every table, opened once per write batch.
pub struct Tables<'t> {
    pub meta: redb::Table<'t, &'static str, &'static [u8]>,
    pub entries: redb::Table<'t, (&'static [u8; 32], u64), &'static [u8]>,
    pub heads: redb::Table<'t, &'static [u8; 32], (u64, [u8; 32])>,
    pub doc_entries: redb::MultimapTable<'t, &'static [u8; 16], (&'static [u8; 32], u64)>,
    pub docs: redb::Table<'t, &'static [u8; 16], (u8, u32, u64, u64)>,
    pub snapshots: redb::Table<'t, &'static [u8; 16], &'static [u8]>,
    pub chunks: redb::Table<'t, (&'static [u8; 16], u32), &'static [u8]>,
    pub views: redb::Table<'t, &'static [u8; 16], &'static [u8]>,
    pub by_type: redb::Table<'t, (u8, &'static [u8; 16]), ()>,
    pub skus: redb::Table<'t, (&'static str, &'static [u8; 16]), ()>,
    pub rejected: redb::Table<'t, u64, (&'static str, &'static [u8])>,
    pub counts: redb::Table<'t, u8, u64>,
    pub stock: redb::Table<'t, &'static [u8; 16], i64>,
    pub member_ops: redb::Table<'t, (&'static [u8; 32], u64), &'static [u8]>,
    pub quarantine: redb::Table<'t, &'static [u8; 32], (u64, [u8; 32], [u8; 32])>,
}

impl<'t> Tables<'t> {
    pub fn open(tx: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Tables {
            meta: tx.open_table(META)?,
            entries: tx.open_table(ENTRIES)?,
            heads: tx.open_table(HEADS)?,
            doc_entries: tx.open_multimap_table(DOC_ENTRIES)?,
            docs: tx.open_table(DOCS)?,
            snapshots: tx.open_table(DOC_SNAPSHOTS)?,
            chunks: tx.open_table(DOC_CHUNKS)?,
            views: tx.open_table(VIEWS)?,
            by_type: tx.open_table(BY_TYPE)?,
            skus: tx.open_table(SKUS)?,
            rejected: tx.open_table(REJECTED)?,
            counts: tx.open_table(COUNTS)?,
            stock: tx.open_table(STOCK)?,
            member_ops: tx.open_table(MEMBER_OPS)?,
            quarantine: tx.open_table(QUARANTINE)?,
        })
    }
}
