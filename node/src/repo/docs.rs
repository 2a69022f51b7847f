//! The writer's working set of Automerge documents.
//!
//! Invariant: the open write transaction holds every change staged so far (chunks and the doc
//! record are written as each change is staged). The cache only saves re-loading; dropping any
//! entry, or all of them, at any moment loses nothing. That is how a refused ingest and a failed
//! commit roll back: evict, and the next load reads the transaction's (or the disk's) truth.

use std::collections::HashMap;

use automerge::{ActorId, AutoCommit};
use redb::ReadableTable;
use serde_json::Value as Json;
use tillmesh_protocol::docmap;
use tillmesh_protocol::{DocId, DocType};

use crate::store::tables::{DocRecord, Tables};

use super::WriteError;

/// Changes kept beside a snapshot before it is rewritten. With the size rule below this makes
/// compaction cost amortised O(1) per change, even for a product sold a million times.
const CHUNKS_BEFORE_COMPACT: u32 = 64;
/// Documents kept loaded between batches; beyond it the cache drops what is not a product.
/// Small: a sale is written once and rarely touched again (a void or a refund loads it in
/// well under a millisecond), while a loaded document takes tens of KiB. At 4,096 the cache
/// held most of a node's memory, and emptying it stalled the writer.
const CACHED_DOCS_MAX: usize = 256;

pub struct CachedDoc {
    pub doc: AutoCommit,
    pub record: DocRecord,
    /// The document's JSON as `docmap::read_json` would give it. Local writes keep it current
    /// (they know what they wrote); `None` means "read it from the document when asked".
    view: Option<Json>,
}

impl CachedDoc {
    /// The current JSON of the document.
    pub fn view(&mut self) -> &Json {
        self.view
            .get_or_insert_with(|| docmap::read_json(&self.doc))
    }

    /// Records what a local write made the document read as.
    pub fn set_view(&mut self, view: Json) {
        self.view = Some(view);
    }

    /// After changes whose result is not known without reading the document (remote ones).
    pub fn forget_view(&mut self) {
        self.view = None;
    }
}

pub struct DocCache {
    actor: ActorId,
    docs: HashMap<DocId, CachedDoc>,
}

impl DocCache {
    pub fn new(actor: ActorId) -> Self {
        DocCache {
            actor,
            docs: HashMap::new(),
        }
    }

    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub fn clear(&mut self) {
        self.docs.clear();
    }

    pub fn evict(&mut self, id: &DocId) {
        self.docs.remove(id);
    }

    /// Loads a document (from the cache, or from the transaction's view of the store).
    pub fn get(
        &mut self,
        t: &Tables<'_>,
        id: &DocId,
    ) -> Result<Option<&mut CachedDoc>, WriteError> {
        if !self.docs.contains_key(id) {
            let Some(doc) = load(t, id, &self.actor)? else {
                return Ok(None);
            };
            self.docs.insert(*id, doc);
        }
        Ok(self.docs.get_mut(id))
    }

    /// Takes a freshly created document into the store: its first change becomes chunk 0.
    pub fn insert_new(
        &mut self,
        t: &mut Tables<'_>,
        id: DocId,
        doc_type: DocType,
        doc: AutoCommit,
        first_change: &[u8],
        view: Option<Json>,
    ) -> Result<(), WriteError> {
        let mut cached = CachedDoc {
            doc,
            record: DocRecord {
                doc_type: doc_type.code(),
                chunks: 0,
                chunk_bytes: 0,
                snapshot_bytes: 0,
            },
            view,
        };
        append_chunk(t, &id, &mut cached.record, first_change)?;
        t.by_type.insert((doc_type.code(), id.as_bytes()), ())?;
        let n = t
            .counts
            .get(doc_type.code())?
            .map(|v| v.value())
            .unwrap_or(0);
        t.counts.insert(doc_type.code(), n + 1)?;
        self.docs.insert(id, cached);
        Ok(())
    }

    /// Records a change already applied to a cached document.
    pub fn record_change(
        &mut self,
        t: &mut Tables<'_>,
        id: &DocId,
        change: &[u8],
    ) -> Result<(), WriteError> {
        let cached = self.docs.get_mut(id).ok_or_else(|| {
            WriteError::Internal(format!("document {id} changed while not loaded"))
        })?;
        append_chunk(t, id, &mut cached.record, change)
    }

    /// Replaces a document's stored state with `doc`, rebuilt from the entries that stand
    /// (see `writer::undo`), or removes it when nothing of it stands. Its view is left to
    /// `finish`, which reads the document (or finds it gone) and moves stock and indexes to
    /// match.
    pub fn replace(
        &mut self,
        t: &mut Tables<'_>,
        id: &DocId,
        doc_type: DocType,
        doc: Option<AutoCommit>,
    ) -> Result<(), WriteError> {
        self.docs.remove(id);
        let old = t
            .docs
            .get(id.as_bytes())?
            .map(|v| DocRecord::from_tuple(v.value()));
        if let Some(r) = old {
            for n in 0..r.chunks {
                t.chunks.remove((id.as_bytes(), n))?;
            }
            t.snapshots.remove(id.as_bytes())?;
        }
        let code = old.map_or(doc_type.code(), |r| r.doc_type);
        let count = t.counts.get(code)?.map(|v| v.value()).unwrap_or(0);
        let Some(mut doc) = doc else {
            if old.is_some() {
                t.docs.remove(id.as_bytes())?;
                t.by_type.remove((code, id.as_bytes()))?;
                t.counts.insert(code, count.saturating_sub(1))?;
            }
            return Ok(());
        };
        let snapshot = doc.save();
        t.snapshots.insert(id.as_bytes(), snapshot.as_slice())?;
        let record = DocRecord {
            doc_type: code,
            chunks: 0,
            chunk_bytes: 0,
            snapshot_bytes: snapshot.len() as u64,
        };
        t.docs.insert(id.as_bytes(), record.to_tuple())?;
        if old.is_none() {
            t.by_type.insert((code, id.as_bytes()), ())?;
            t.counts.insert(code, count + 1)?;
        }
        doc.set_actor(self.actor.clone());
        self.docs.insert(
            *id,
            CachedDoc {
                doc,
                record,
                view: None,
            },
        );
        Ok(())
    }

    /// Rewrites a document's snapshot when its chunks have grown large enough.
    pub fn maybe_compact(&mut self, t: &mut Tables<'_>, id: &DocId) -> Result<(), WriteError> {
        let Some(c) = self.docs.get_mut(id) else {
            return Ok(());
        };
        let r = c.record;
        if r.chunks < CHUNKS_BEFORE_COMPACT || r.chunk_bytes * 2 < r.snapshot_bytes {
            return Ok(());
        }
        let snapshot = c.doc.save();
        t.snapshots.insert(id.as_bytes(), snapshot.as_slice())?;
        for n in 0..r.chunks {
            t.chunks.remove((id.as_bytes(), n))?;
        }
        c.record = DocRecord {
            chunks: 0,
            chunk_bytes: 0,
            snapshot_bytes: snapshot.len() as u64,
            ..r
        };
        t.docs.insert(id.as_bytes(), c.record.to_tuple())?;
        Ok(())
    }

    /// Bounds memory between batches: sales and other one-off documents go first.
    pub fn trim(&mut self) {
        if self.docs.len() <= CACHED_DOCS_MAX {
            return;
        }
        let product = DocType::Product.code();
        let settings = DocType::Settings.code();
        self.docs
            .retain(|_, c| c.record.doc_type == product || c.record.doc_type == settings);
        if self.docs.len() > CACHED_DOCS_MAX {
            self.docs.clear();
        }
    }
}

fn append_chunk(
    t: &mut Tables<'_>,
    id: &DocId,
    record: &mut DocRecord,
    change: &[u8],
) -> Result<(), WriteError> {
    t.chunks.insert((id.as_bytes(), record.chunks), change)?;
    record.chunks += 1;
    record.chunk_bytes += change.len() as u64;
    t.docs.insert(id.as_bytes(), record.to_tuple())?;
    Ok(())
}

fn load(t: &Tables<'_>, id: &DocId, actor: &ActorId) -> Result<Option<CachedDoc>, WriteError> {
    let Some(record) = t
        .docs
        .get(id.as_bytes())?
        .map(|v| DocRecord::from_tuple(v.value()))
    else {
        return Ok(None);
    };
    let damaged = |e: automerge::AutomergeError| {
        WriteError::Internal(format!("document {id} in the store is damaged: {e}"))
    };
    let mut doc = match t.snapshots.get(id.as_bytes())? {
        Some(s) => AutoCommit::load(s.value()).map_err(damaged)?,
        None => AutoCommit::new(),
    };
    for n in 0..record.chunks {
        let chunk = t
            .chunks
            .get((id.as_bytes(), n))?
            .ok_or_else(|| WriteError::Internal(format!("document {id} is missing change {n}")))?;
        doc.load_incremental(chunk.value()).map_err(damaged)?;
    }
    doc.set_actor(actor.clone());
    Ok(Some(CachedDoc {
        doc,
        record,
        view: None,
    }))
}
