//! The writer's loop: jobs taken in batches, one redb transaction each, made durable in the
//! write-ahead log before anyone is answered; a panic in a job fails its batch, never the
//! writer; the views and stock levels a batch changed.

use super::*;

/// How many times an ingested entry may crash the writer before it is refused.
const PANICS_PER_ENTRY_MAX: u32 = 2;
/// Entries remembered for crashing it: more are forgotten (a peer cannot grow this).
const PANICKED_ENTRIES_MAX: usize = 1024;

/// What a panic said, for the caller's error.
pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
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

impl Writer {
    pub(crate) fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        events: Outlets,
        hooks: Arc<CrashHooks>,
    ) {
        self.hooks = hooks.clone();
        while let Some(first) = rx.blocking_recv() {
            hooks
                .parked
                .store(true, std::sync::atomic::Ordering::SeqCst);
            drop(hooks.hold.lock());
            hooks
                .parked
                .store(false, std::sync::atomic::Ordering::SeqCst);
            let mut jobs = vec![first];
            while jobs.len() < BATCH_JOBS_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            // A suspect goes alone, in its place: the jobs before it make one batch, those
            // after it the next.
            let mut run = Vec::with_capacity(jobs.len());
            for job in jobs {
                if self.is_suspect(&job) {
                    if !run.is_empty() {
                        self.run_batch(std::mem::take(&mut run), &events);
                    }
                    self.run_batch(vec![job], &events);
                } else {
                    run.push(job);
                }
            }
            if !run.is_empty() {
                self.run_batch(run, &events);
            }
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

    fn is_suspect(&self, job: &Job) -> bool {
        matches!(job, Job::Ingest(a, _) if self.suspects.contains(&(a.entry.entry.author, a.entry.entry.seq)))
    }

    pub(super) fn run_batch(&mut self, jobs: Vec<Job>, events: &Outlets) {
        // A panic in a job is caught around the job (its caller hears why); this catches one
        // anywhere else in the batch (rebuilding views, committing), whose callers hear it
        // from their `Answer` as it unwinds. Either way the batch is dropped whole, the log
        // is cut back (see `stage_batch`), the writer reloads, and the next batch goes on.
        let lone = jobs.len() == 1;
        let entries: Vec<(DeviceId, u64)> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Ingest(a, _) => Some((a.entry.entry.author, a.entry.entry.seq)),
                _ => None,
            })
            .collect();
        let started = Instant::now();
        let staged =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stage_batch(jobs)));
        let staged = match staged {
            Ok(s) => s,
            Err(p) => {
                tracing::error!(panic = %panic_message(&*p), "a write batch panicked; nothing of it was stored; reloading");
                self.finish_panics = false;
                if lone && let [key] = entries[..] {
                    // Alone in its batch, so the panic was its own.
                    self.count_panic(key);
                } else {
                    if self.suspects.len() + entries.len() > PANICKED_ENTRIES_MAX {
                        self.suspects.clear();
                    }
                    self.suspects.extend(entries);
                }
                // redb skips the transaction's abort while unwinding and stays usable (it leaks
                // the pages until the next open repairs them), so the handle is kept.
                self.recover();
                return;
            }
        };
        match staged {
            Ok((replies, finished)) => {
                let m = &events.metrics;
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
                if let Some(d) = self.wal_synced_in.take() {
                    m.wal_fsync_seconds.observe(d.as_secs_f64());
                }
                // Committed: whatever happens below, its callers hear it was written (a retry
                // of a write told "failed" would be written twice).
                let tidied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.publish_membership();
                    self.cache.trim();
                }));
                answer(replies, &finished, events);
                match tidied {
                    Ok(()) => self.checkpoint_if_due(),
                    Err(p) => {
                        tracing::error!(panic = %panic_message(&*p), "a panic after a commit; the batch is stored; reloading");
                        self.recover();
                    }
                }
            }
            Err((replies, err)) => {
                tracing::warn!(error = %err, "write batch failed; nothing of it was stored");
                for r in replies {
                    match r {
                        Reply::Command(tx, _) => tx.send(Err(err.clone())),
                        Reply::Ingest(tx, _) => tx.send(Err(err.clone())),
                    }
                }
                self.recover();
            }
        }
    }

    fn count_panic(&mut self, key: (DeviceId, u64)) {
        if self.panicked.len() >= PANICKED_ENTRIES_MAX {
            self.panicked.clear();
        }
        *self.panicked.entry(key).or_default() += 1;
    }

    /// Makes redb durable and empties the log when due. Runs after the batch was answered:
    /// the batch is durable in the log already, so neither a failure nor a panic here may
    /// tell its callers otherwise; either only delays the next checkpoint.
    fn checkpoint_if_due(&mut self) {
        if self.last_checkpoint.elapsed() < self.checkpoint_interval
            && self.wal.len() < WAL_BYTES_MAX
        {
            return;
        }
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.checkpoint()));
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checkpoint failed; the write-ahead log keeps every write meanwhile");
                if self.redb_failed {
                    self.recover();
                }
            }
            Err(p) => {
                tracing::error!(panic = %panic_message(&*p), "a checkpoint panicked; the write-ahead log keeps every write; reloading");
                self.recover();
            }
        }
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn stage_batch(
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
        self.rights_staged.clear();
        self.finish_panics = false;
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
        // back: until redb has committed it, `recover` cuts the log back to here before it
        // reads it again, whether the batch failed by an error or by a panic.
        self.wal_cut = Some(self.wal.len());
        let appending = Instant::now();
        if let Err(e) = self.wal.append(self.wal_batch.iter().map(Vec::as_slice)) {
            return Err(fail(replies, jobs, io_error(e)));
        }
        self.wal_synced_in = Some(appending.elapsed());
        let injected = self
            .hooks
            .panic_after_append
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if injected {
            panic!("injected panic between the log append and the commit");
        }
        if let Err(e) = tx.commit() {
            self.redb_failed = true;
            return Err(fail(replies, jobs, e.into()));
        }
        self.wal_cut = None;
        Ok((replies, views))
    }

    /// Stages one job, catching a panic in it: its caller hears what happened, and the batch
    /// fails whole (what the panic left half done is dropped with the transaction). An
    /// ingested entry that crashed the writer `PANICS_PER_ENTRY_MAX` times is refused.
    pub(super) fn stage_job(
        &mut self,
        t: &mut Tables<'_>,
        job: Job,
        touched: &mut BTreeSet<DocId>,
    ) -> Reply {
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
            Job::Ingest(ahead, tx) => {
                let crate::repo::verify::Ahead {
                    entry: e,
                    verified,
                    changes,
                } = *ahead;
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
                    self.stage_ingest(t, &e, touched, verified, changes)
                }));
                if hooks.panic_finish.lock().is_ok_and(|k| *k == Some(key)) {
                    self.finish_panics = true;
                }
                let staged = staged.unwrap_or_else(|p| {
                    self.count_panic(key);
                    Err(panicked_error(&*p))
                });
                Reply::Ingest(tx, staged)
            }
        }
    }

    /// Writes the views of the documents the batch touched, moves the stock levels their
    /// changes imply, and compacts where due. Returns the new views, and the products whose
    /// level moved without their own document changing.
    pub(super) fn finish(
        &mut self,
        t: &mut Tables<'_>,
        touched: &BTreeSet<DocId>,
    ) -> Result<Finished, WriteError> {
        let mut views = HashMap::with_capacity(touched.len());
        let mut moves: BTreeMap<DocId, i64> = BTreeMap::new();
        let mut rights: BTreeMap<(DocId, DeviceId), i64> = BTreeMap::new();
        let mut products = BTreeSet::new();
        for id in touched {
            let Some(c) = self.cache.get(t, id)? else {
                // Gone: nothing of it stands any more (see `undo`), or never held (changes set
                // aside). What its view moved is given back, and the view and index go.
                if let Some(old) = t.views.get(id.as_bytes())? {
                    let old: Json = serde_json::from_slice(old.value())
                        .map_err(|e| WriteError::Internal(e.to_string()))?;
                    let dt = old
                        .get("type")
                        .and_then(Json::as_str)
                        .and_then(DocType::from_name);
                    if let Some(dt) = dt {
                        moved(dt, id, Some(&old), None, &mut moves, &mut rights);
                        self.note_open_transfer(t, dt, id, Some(&old), None)?;
                    }
                    if dt == Some(DocType::Product) {
                        self.index_sku(t, id, &Json::Null)?;
                    }
                    t.views.remove(id.as_bytes())?;
                }
                continue;
            };
            let doc_type = DocType::from_code(c.record.doc_type);
            let json = c.view().clone();
            if let Some(dt) = doc_type.filter(|d| {
                matches!(
                    d,
                    DocType::Sale
                        | DocType::Refund
                        | DocType::StockAdjustment
                        | DocType::StockTransfer
                        | DocType::Product
                )
            }) {
                // What the document moved before this batch is undone, what it moves now is done:
                // a sale voided in this batch gives its goods back, a new one takes them.
                let old = match t.views.get(id.as_bytes())? {
                    Some(old) => Some(
                        serde_json::from_slice::<Json>(old.value())
                            .map_err(|e| WriteError::Internal(e.to_string()))?,
                    ),
                    None => None,
                };
                moved(dt, id, old.as_ref(), Some(&json), &mut moves, &mut rights);
                self.note_open_transfer(t, dt, id, old.as_ref(), Some(&json))?;
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
        if self.finish_panics {
            panic!("injected panic while rebuilding a batch's views");
        }
        self.store_rights(t, rights)?;
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
    pub(super) fn index_sku(
        &mut self,
        t: &mut Tables<'_>,
        id: &DocId,
        view: &Json,
    ) -> Result<(), WriteError> {
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
}

/// What a document moved, from its view before the batch to its view now: stock per product,
/// rights per product and device.
fn moved(
    dt: DocType,
    id: &DocId,
    old: Option<&Json>,
    new: Option<&Json>,
    moves: &mut BTreeMap<DocId, i64>,
    rights: &mut BTreeMap<(DocId, DeviceId), i64>,
) {
    for (view, sign) in [(old, -1i64), (new, 1)] {
        for (p, q) in view.map(|v| docmap::stock_moves(dt, v)).unwrap_or_default() {
            let m = moves.entry(p).or_default();
            *m = m.saturating_add(sign * q);
        }
    }
    for (key, units) in tillmesh_protocol::rights::delta(dt, id, old, new) {
        let r = rights.entry(key).or_default();
        *r = r.saturating_add(units);
    }
}
