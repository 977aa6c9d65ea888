//! Bulk import (Milvus's `jobs/import`): rows from files written straight into sealed,
//! flushed segments instead of through the write-ahead log row batch by row batch.
//!
//! An [`Importer`] validates each batch exactly as an insert would (schema, dimensions,
//! NaN/Inf, primary keys: none repeated within the import, none already in the
//! collection), appends it to a segment of its own per partition, and writes a segment
//! to storage whenever it reaches the seal thresholds. Nothing is visible until
//! [`Importer::finish`]: under the collection's write lock it checks the keys once more
//! against rows inserted meanwhile, attaches every segment, flushes, and rewrites the
//! manifest, so an import is visible whole or not at all. Its rows carry the timestamp
//! of an empty log record written when the import starts (durable, so reads at any
//! consistency level see the rows once attached). A failed or abandoned import deletes
//! the segment files it wrote; a crash before the manifest names them leaves files
//! that the next open removes. Index builds of the new segments are queued as for any
//! flushed segment.
//!
//! [`ImportJobs`] runs imports in the background, one at a time, and keeps their
//! progress for `jobs/import/{list,get_progress}` (in memory: a restart forgets jobs,
//! not the rows of completed ones).

use super::Engine;
use crate::builder::CollRef;
use crate::collection::WalOp;
use crate::error::{invalid, EngineError, Result};
use crate::import::{self, ImportFile, ImportSource};
use crate::schema::CollectionSchema;
use crate::segment::Segment;
use crate::storage::Storage;
use crate::types::{PrimaryKey, Timestamp};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Rows handed to the importer at a time.
pub const IMPORT_BATCH_ROWS: usize = 8192;
/// Jobs remembered (the oldest finished ones are forgotten first).
const MAX_JOBS: usize = 1000;

/// Writes validated rows into new segments of one collection; see the module docs.
pub struct Importer<'e> {
    engine: &'e Engine,
    c: CollRef,
    name: String,
    schema: CollectionSchema,
    /// Target partition (a partition-key collection routes each row by its key).
    partition: u64,
    ts: Timestamp,
    store: Arc<dyn Storage>,
    /// Segment being filled, per partition.
    open: HashMap<u64, Segment>,
    written: Vec<Segment>,
    seen: HashSet<PrimaryKey>,
    rows: usize,
    finished: bool,
}

impl Engine {
    /// Starts an import into `coll` (and `partition`, default `_default`).
    pub fn importer(&self, coll: &str, partition: Option<&str>) -> Result<Importer<'_>> {
        let c = self.coll(coll)?;
        let (seq, ts, schema, part, store, name) = {
            let mut g = c.write();
            let part = g.write_partition(partition)?;
            // An empty delete: a durable timestamp for the imported rows.
            let (seq, ts) = self.log_and_apply(&mut g, WalOp::Delete { pks: Vec::new() })?;
            (
                seq,
                ts,
                g.meta.schema.clone(),
                part,
                g.store.clone(),
                g.meta.name.clone(),
            )
        };
        self.wal.sync_to(seq)?;
        Ok(Importer {
            engine: self,
            c,
            name,
            schema,
            partition: part,
            ts,
            store,
            open: HashMap::new(),
            written: Vec::new(),
            seen: HashSet::new(),
            rows: 0,
            finished: false,
        })
    }
}

impl Importer<'_> {
    pub fn schema(&self) -> &CollectionSchema {
        &self.schema
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Validates and stages a batch: `rows` as for an insert, vector fields optionally as
    /// columns (`rows × dim` floats per named field). Errors name the row by its
    /// position in the import.
    pub fn push(&mut self, rows: &[Value], vectors: &[(String, Vec<f32>)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let filled;
        let rows = if self.schema.functions.is_empty() {
            rows
        } else {
            filled = self.engine.apply_functions(&self.schema, rows)?;
            &filled
        };
        let base = self.rows;
        let at = |e: EngineError| match e {
            EngineError::Row { row, field, msg } => EngineError::Row {
                row: base + row,
                field,
                msg,
            },
            e => e,
        };
        let batch = if self.schema.pk().auto_id {
            let start = self.engine.wal.alloc_ts(rows.len() as u64) as i64;
            let mut ids = start..;
            self.schema
                .validate_columns(rows, vectors, Some(&mut ids), false)
        } else {
            self.schema.validate_columns(rows, vectors, None, false)
        }
        .map_err(at)?;
        {
            let g = self.c.read();
            for (i, pk) in batch.pks.iter().enumerate() {
                let msg = if g.pk_index.contains_key(pk) {
                    "already exists in the collection"
                } else if !self.seen.insert(pk.clone()) {
                    "appears twice in the import"
                } else {
                    continue;
                };
                return Err(EngineError::Row {
                    row: base + i,
                    field: self.schema.pk().name.clone(),
                    msg: format!("primary key {pk} {msg}"),
                });
            }
        }
        let dims: Vec<usize> = self.schema.vector_fields().map(|f| f.vec_len()).collect();
        let routes = self.c.read().key_routes(&batch);
        let parts: Vec<(u64, crate::schema::RowBatch)> = match routes {
            None => vec![(self.partition, batch)],
            Some(routes) => routes
                .iter()
                .map(|(id, rows)| (*id, batch.select(rows, &dims)))
                .collect(),
        };
        let policy = self.engine.config.policy();
        let dynamic = self.schema.enable_dynamic_field;
        for (part, b) in parts {
            let seg = match self.open.entry(part) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.c.write().new_segment(part))
                }
            };
            seg.append(&b, self.ts, dynamic);
            if seg.len() >= policy.max_rows || seg.approx_bytes() >= policy.max_bytes {
                let seg = self.open.remove(&part).expect("just filled");
                self.write(seg)?;
            }
        }
        self.rows += rows.len();
        Ok(())
    }

    /// Seals a segment and writes its files (not yet listed anywhere).
    fn write(&mut self, mut seg: Segment) -> Result<()> {
        let prefix = self.c.read().seg_prefix(seg.id);
        let id = seg.id;
        // A failed write may leave part of the files behind: removed here.
        if let Err(e) = seg.persist(&*self.store, &prefix) {
            let _ = self.store.delete_prefix(&prefix);
            return Err(e);
        }
        tracing::debug!(segment = id, rows = seg.len(), "import segment written");
        self.written.push(seg);
        Ok(())
    }

    /// Writes what is staged and makes every imported row visible at once. Returns the
    /// number of rows imported.
    pub fn finish(mut self) -> Result<usize> {
        let open: Vec<Segment> = self.open.drain().map(|(_, s)| s).collect();
        for s in open {
            self.write(s)?;
        }
        let c = self.c.clone();
        // The collection may have been dropped (or dropped and re-created) meanwhile.
        if !self
            .engine
            .coll(&self.name)
            .is_ok_and(|now| Arc::ptr_eq(&now, &c))
        {
            return Err(invalid(format!(
                "collection '{}' was dropped during the import",
                self.name
            )));
        }
        let mut g = c.write();
        let parts: HashSet<u64> = g.meta.partitions.iter().map(|p| p.id).collect();
        if let Some(s) = self.written.iter().find(|s| !parts.contains(&s.partition)) {
            return Err(invalid(format!(
                "partition {} was dropped during the import",
                s.partition
            )));
        }
        for s in &self.written {
            if let Some(pk) = s.pks.iter().find(|pk| g.pk_index.contains_key(*pk)) {
                return Err(invalid(format!(
                    "primary key {pk} was inserted while the import ran; nothing was imported"
                )));
            }
        }
        let before = g.segments.len();
        let rows = self.rows;
        for s in self.written.drain(..) {
            for (i, pk) in s.pks.iter().enumerate() {
                g.pk_index.insert(pk.clone(), (s.id, i as u32));
            }
            g.segments.push(s);
        }
        // A flush first: a delete logged during the import, of a key it brings, found
        // nothing to delete; replay after a restart must not apply it to these rows.
        let r = self.engine.persist(&mut g, |g| {
            g.flush()?;
            let ts = g.flushed_ts;
            g.save_manifest(ts)
        });
        if let Err(e) = r {
            let gone: Vec<u64> = g.segments[before..].iter().map(|s| s.id).collect();
            g.segments.truncate(before);
            g.rebuild_pk_index();
            for id in gone {
                let _ = self.store.delete_prefix(&g.seg_prefix(id));
            }
            self.finished = true;
            return Err(e);
        }
        self.finished = true;
        drop(g);
        self.engine.schedule(&c);
        tracing::info!(collection = %self.name, rows, "import attached");
        Ok(rows)
    }
}

impl Drop for Importer<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let g = self.c.read();
        for s in &self.written {
            let _ = self.store.delete_prefix(&g.seg_prefix(s.id));
        }
    }
}

// ------------------------------------------------------------------ background jobs

/// One file (or NumPy file group) of a job and its progress.
#[derive(Debug)]
pub struct ImportFileState {
    pub name: String,
    pub bytes: u64,
    pub imported_rows: AtomicU64,
    pub total_rows: AtomicU64,
    /// 0 pending, 1 importing, 2 read, 3 failed.
    state: AtomicU64,
}

/// A background import and its progress.
#[derive(Debug)]
pub struct ImportJob {
    pub id: String,
    pub collection: String,
    pub files: Vec<ImportFileState>,
    state: Mutex<(&'static str, String, u64)>,
}

/// A job's progress as `jobs/import/get_progress` reports it.
#[derive(Debug, Clone)]
pub struct ImportProgress {
    pub id: String,
    pub collection: String,
    /// `Pending`, `Importing`, `Completed` or `Failed` (Milvus's names).
    pub state: &'static str,
    pub reason: String,
    /// 0–100.
    pub progress: u64,
    pub imported_rows: u64,
    pub total_rows: u64,
    pub bytes: u64,
    pub complete_ms: u64,
    /// Per file: (name, bytes, state, imported rows, total rows).
    pub files: Vec<(String, u64, &'static str, u64, u64)>,
}

impl ImportJob {
    pub fn progress(&self) -> ImportProgress {
        let (state, reason, complete_ms) = self.state.lock().clone();
        let files: Vec<(String, u64, &'static str, u64, u64)> = self
            .files
            .iter()
            .map(|f| {
                let s = match (f.state.load(Relaxed), state) {
                    (3, _) => "Failed",
                    (2, "Completed") => "Completed",
                    (2, _) | (1, _) => "Importing",
                    _ => "Pending",
                };
                (
                    f.name.clone(),
                    f.bytes,
                    s,
                    f.imported_rows.load(Relaxed),
                    f.total_rows.load(Relaxed),
                )
            })
            .collect();
        let bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        // Progress by bytes of files read (a file's share by its rows while it is read);
        // 100 only once the rows are attached.
        let read: f64 = self
            .files
            .iter()
            .map(|f| {
                let (i, t) = (f.imported_rows.load(Relaxed), f.total_rows.load(Relaxed));
                match f.state.load(Relaxed) {
                    2 => f.bytes as f64,
                    1 if t > 0 => f.bytes as f64 * i as f64 / t as f64,
                    _ => 0.0,
                }
            })
            .sum();
        let progress = match state {
            "Completed" => 100,
            _ => ((read / bytes.max(1) as f64) * 99.0) as u64,
        };
        ImportProgress {
            id: self.id.clone(),
            collection: self.collection.clone(),
            state,
            reason,
            progress,
            imported_rows: files.iter().map(|f| f.3).sum(),
            total_rows: files.iter().map(|f| f.4).sum(),
            bytes,
            complete_ms,
            files,
        }
    }

    fn set(&self, state: &'static str, reason: String) {
        let done = if matches!(state, "Completed" | "Failed") {
            crate::types::now_ms()
        } else {
            0
        };
        *self.state.lock() = (state, reason, done);
    }
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The engine's import jobs: one runs at a time, the others wait as `Pending`.
#[derive(Default)]
pub struct ImportJobs {
    jobs: Mutex<Vec<Arc<ImportJob>>>,
    run: Mutex<()>,
}

impl Engine {
    /// Checks an import's files (paths inside the import root, readable formats) and
    /// starts it in the background; returns the job id. `files` are Milvus's file
    /// groups: one JSON file, or the NumPy files of one set of rows (one per field).
    pub fn create_import_job(
        self: &Arc<Self>,
        coll: &str,
        partition: Option<&str>,
        files: &[Vec<String>],
    ) -> Result<String> {
        let c = self.coll(coll)?;
        c.read().write_partition(partition)?;
        let source = self.import_source();
        let groups = import::resolve(&source, files)?;
        let id = super::fresh_index_id().to_string();
        let job = Arc::new(ImportJob {
            id: id.clone(),
            collection: coll.to_string(),
            files: groups
                .iter()
                .map(|g| ImportFileState {
                    name: g.name(),
                    bytes: g.bytes(),
                    imported_rows: AtomicU64::new(0),
                    total_rows: AtomicU64::new(0),
                    state: AtomicU64::new(0),
                })
                .collect(),
            state: Mutex::new(("Pending", String::new(), 0)),
        });
        {
            let mut jobs = self.imports.jobs.lock();
            if jobs.len() >= MAX_JOBS {
                if let Some(i) = jobs
                    .iter()
                    .position(|j| matches!(j.state.lock().0, "Completed" | "Failed"))
                {
                    jobs.remove(i);
                } else {
                    return Err(invalid(format!(
                        "{MAX_JOBS} import jobs are pending or running; wait for some to finish"
                    )));
                }
            }
            jobs.push(job.clone());
        }
        let e = Arc::downgrade(self);
        let coll = coll.to_string();
        let partition = partition.map(String::from);
        std::thread::Builder::new()
            .name("magpie-import".into())
            .spawn(move || {
                let Some(e) = e.upgrade() else { return };
                let _one = e.imports.run.lock();
                job.set("Importing", String::new());
                // A bug must fail the job, not leave it "Importing" forever; the
                // importer's drop removes what it wrote either way.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    e.run_import(&job, &coll, partition.as_deref(), &groups)
                }))
                .unwrap_or_else(|_| Err(invalid("internal error: the import panicked")));
                match r {
                    Ok(rows) => {
                        tracing::info!(job = %job.id, rows, "import completed");
                        job.set("Completed", String::new());
                    }
                    Err(err) => {
                        tracing::warn!(job = %job.id, "import failed: {err}");
                        job.set("Failed", err.to_string());
                    }
                }
            })
            .map_err(|e| invalid(format!("cannot start the import: {e}")))?;
        Ok(id)
    }

    fn run_import(
        &self,
        job: &ImportJob,
        coll: &str,
        partition: Option<&str>,
        groups: &[ImportFile],
    ) -> Result<usize> {
        let mut imp = self.importer(coll, partition)?;
        let source = self.import_source();
        for (n, (g, st)) in groups.iter().zip(&job.files).enumerate() {
            st.state.store(1, Relaxed);
            // Files in an object store are downloaded first, one group at a time; the
            // guard removes the copies however the group ends.
            let tmp = TempDir(self.import_tmp().join(format!("{}-{n}", job.id)));
            let local = g.localize(&source, &tmp.0).map_err(|e| {
                st.state.store(3, Relaxed);
                invalid(format!("{}: {e}", g.name()))
            })?;
            let g = &local;
            // The file is read (parsed, decoded) on a second thread while the batch
            // before is validated and staged here: two batches in flight at most.
            let (tx, rx) = std::sync::mpsc::sync_channel::<import::Batch>(2);
            let schema = imp.schema().clone();
            let (read, pushed) = std::thread::scope(|s| {
                // `move`: the reader owns the sender, so the loop below ends when it does.
                let reader = s.spawn(move || {
                    import::read(g, schema, IMPORT_BATCH_ROWS, &st.total_rows, &mut |b| {
                        tx.send(b).map_err(|_| invalid("the import stopped"))
                    })
                });
                let mut pushed = Ok(());
                for (rows, vectors) in rx.iter() {
                    if let Err(e) = imp.push(&rows, &vectors) {
                        pushed = Err(e);
                        break;
                    }
                    st.imported_rows.fetch_add(rows.len() as u64, Relaxed);
                }
                // A reader blocked on a full channel now gets an error and stops.
                drop(rx);
                let read = reader
                    .join()
                    .unwrap_or_else(|_| Err(invalid("the file reader panicked")));
                (read, pushed)
            });
            if let Err(e) = pushed.and(read) {
                st.state.store(3, Relaxed);
                return Err(invalid(format!("{}: {e}", g.name())));
            }
            st.total_rows.store(st.imported_rows.load(Relaxed), Relaxed);
            st.state.store(2, Relaxed);
        }
        imp.finish()
    }

    /// Import jobs, optionally of one collection, oldest first.
    pub fn import_jobs(&self, coll: Option<&str>) -> Vec<ImportProgress> {
        self.imports
            .jobs
            .lock()
            .iter()
            .filter(|j| coll.is_none_or(|c| c.is_empty() || j.collection == c))
            .map(|j| j.progress())
            .collect()
    }

    /// One import job's progress.
    pub fn import_job(&self, id: &str) -> Result<ImportProgress> {
        self.imports
            .jobs
            .lock()
            .iter()
            .find(|j| j.id == id)
            .map(|j| j.progress())
            .ok_or_else(|| invalid(format!("import job '{id}' does not exist")))
    }

    /// Where import file paths are looked up: `EngineConfig::import_store`, else
    /// `import_root`, else the `import/` prefix of a remote engine store, else the
    /// `import` folder of the data directory.
    pub fn import_source(&self) -> ImportSource {
        if let Some(store) = &self.config.import_store {
            return ImportSource::Store {
                store: store.clone(),
                prefix: String::new(),
            };
        }
        if self.config.import_root.is_none() && self.store.is_remote() {
            return ImportSource::Store {
                store: self.store.clone(),
                prefix: import::STORE_PREFIX.into(),
            };
        }
        ImportSource::Dir(self.import_root())
    }

    /// Where downloaded import files wait while they are read (emptied at open).
    pub(crate) fn import_tmp(&self) -> std::path::PathBuf {
        self.root.join(import::TMP_DIR)
    }

    /// Where import file paths are resolved: `EngineConfig::import_root`, or
    /// `<data dir>/import`.
    pub fn import_root(&self) -> std::path::PathBuf {
        self.config
            .import_root
            .clone()
            .unwrap_or_else(|| self.root.join("import"))
    }
}
