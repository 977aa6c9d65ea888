//! The engine: every collection, the shared WAL, the catalog.
//!
//! # Write path
//! `insert`/`upsert`/`delete` take the collection's write lock, validate the whole batch,
//! append one WAL record (which assigns the timestamp), apply it to the growing segment,
//! release the lock, and then wait for the record to be fsynced (group commit) before
//! returning. Log order is timestamp order, and per collection it is also apply order.
//!
//! # Read path and consistency
//! A read picks a snapshot timestamp by its consistency level (see [`Consistency`]), takes
//! the collection's read lock, and sees rows with `insert_ts <= snapshot < delete_ts`.
//!
//! # Layout
//! This file holds the [`Engine`] itself: opening and recovery, the catalog, and
//! maintenance (flush, compaction, WAL trimming). The rest of its methods live by
//! concern in submodules:
//! - `collections.rs`: collections and partitions (DDL, load and release);
//! - `indexing.rs`: index definitions, the build queues, build progress;
//! - `functions.rs`: the schema's functions (embedding models, BM25 term counts);
//! - `write.rs`: insert, upsert, delete;
//! - `read.rs`: snapshots, query and search;
//! - `hybrid.rs`, `rerank.rs`: hybrid search and its fusion, rerank functions;
//! - `import.rs`: bulk-import jobs; `namespace.rs`: databases and aliases.

use crate::builder::{Builder, CollRef, InterimParams};
use crate::catalog::{CatalogFile, CollectionMeta};
use crate::collection::{Collection, SealPolicy, WalOp};
use crate::error::{invalid, EngineError, IoContext, Result};
use crate::filter::Filter;
use crate::function::Embedder;
use crate::schema::CollectionSchema;
use crate::storage::{LocalStorage, Storage};
use crate::types::{now_ms, Timestamp};
use crate::wal::Wal;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod collections;
mod functions;
mod hybrid;
mod import;
mod indexing;
mod namespace;
mod read;
pub mod rerank;
mod write;
pub use hybrid::{check_rerank, fuse, HybridRequest, Rerank, MAX_HYBRID_SEARCHES};
pub use import::{ImportProgress, Importer, IMPORT_BATCH_ROWS};
use indexing::fresh_index_id;
pub use indexing::{IndexProgress, SegmentIndexState};
pub use namespace::{qualified, split_qualified, DEFAULT_DATABASE};
pub use read::{QueryRequest, SearchRequest};
pub use write::WriteResult;

/// Largest `limit + offset` of a search or query (Milvus's bound).
pub const MAX_TOPK: usize = 16384;
/// Most partitions per collection.
pub const MAX_PARTITIONS: usize = 1024;
/// efConstruction of interim graphs (M is 16): lower than a built index's 200, since an
/// interim graph is grown while rows stream in and lives only until the segment's real
/// index replaces it; a recall target still holds through its measured curve.
const INTERIM_EF_CONSTRUCTION: usize = 100;

/// Engine tunables.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A growing segment seals at this many rows...
    pub seal_rows: usize,
    /// ...or this many bytes of row data...
    pub seal_bytes: usize,
    /// ...or this age (seconds); sealed segments are flushed by [`Engine::maintain`].
    pub seal_age_secs: u64,
    /// Staleness bound of the Bounded consistency level, milliseconds: the most a
    /// Bounded read may trail the latest acknowledged write. A standalone engine never
    /// trails (see [`Engine::snapshot`]), so only configurations read it today.
    pub bounded_staleness_ms: u64,
    /// Compaction rewrites a segment once more than this fraction of it is deleted.
    pub compact_delete_ratio: f64,
    /// Flushed segments with fewer rows are searched exactly instead of getting an index
    /// (Milvus's `minSegmentNumRowsToEnableIndex`).
    pub index_min_rows: usize,
    /// Threads per index build (0 = every core).
    pub index_build_threads: usize,
    /// Threads one search may use (0 = every core, 1 = only the request's own): a large
    /// exact scan is split by segment, and the index searches of many queries by query
    /// and segment, among cores that are idle at the time (`par.rs`). Process-wide.
    pub search_threads: usize,
    /// A growing segment of a field with a graph or IVF index gets an interim HNSW graph
    /// once it holds this many rows (0 = never): searched with an exact scan of the
    /// rows after it, grown in the background every `interim_step_rows` new rows, and
    /// replaced by the built index after the segment flushes
    /// ([`crate::segment::Interim`]).
    pub interim_min_rows: usize,
    pub interim_step_rows: usize,
    /// Nice value of the index and interim builder threads (and of the threads a build
    /// starts): 10 by default, so that on a busy machine inserts and searches go first
    /// and builds use what they leave; 0 builds at the same priority. Linux only.
    pub build_nice: i32,
    /// Folder that bulk-import paths are resolved in (`None`: `<data dir>/import`, or
    /// the `import/` prefix of the engine's store when that is remote).
    pub import_root: Option<PathBuf>,
    /// A store (e.g. an S3 prefix opened with `open_s3_source`) whose keys bulk-import
    /// paths name instead; only read. Wins over `import_root`.
    pub import_store: Option<Arc<dyn Storage>>,
    /// Most query vectors (or texts, images, ids) in one search.
    pub max_nq: usize,
    /// Most hits one search may produce, all queries together: nq × (limit + offset).
    /// Bounds a search's memory whatever its shape.
    pub max_result_rows: usize,
    /// [`Engine::maintain`] compacts a collection on its own (small segments, heavily
    /// deleted ones) at most once per this many seconds; 0 turns it off.
    pub auto_compact_secs: u64,
    /// Most bytes (as JSON, approximately) one query or search may return; a read past
    /// it fails with a 400 (Milvus's `maxOutputSize`).
    pub max_output_bytes: usize,
    /// On a remote store, fetch the vector and index files of loaded collections in the
    /// background after open (otherwise each is fetched by the first search that needs
    /// it, or by `collections/load`).
    pub prefetch_on_open: bool,
    /// Rows may arrive with their embedding functions' outputs already computed, and
    /// those are stored as given instead of running the model again. Only for an engine
    /// whose writes come from a trusted writer that ran the functions itself (a cluster
    /// shard: its proxy embeds each row once and logs the vector); never for one that
    /// takes users' rows, which must not supply a function's output.
    pub function_outputs_given: bool,
    /// Segment ids this engine allocates start at least here. A cluster gives each
    /// owner of a shard's storage a range of its own (`epoch << 32`), so a former owner
    /// that is still running can never write or remove files under the new owner's
    /// segment ids (`magpie_objstore::fence`).
    pub first_segment_id: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            seal_rows: 100_000,
            seal_bytes: 64 << 20,
            seal_age_secs: 300,
            bounded_staleness_ms: 5_000,
            compact_delete_ratio: 0.2,
            index_min_rows: 1024,
            index_build_threads: 0,
            search_threads: 0,
            interim_min_rows: 4096,
            interim_step_rows: 1024,
            build_nice: crate::builder::DEFAULT_BUILD_NICE,
            import_root: None,
            import_store: None,
            max_nq: 1024,
            max_result_rows: 65_536,
            auto_compact_secs: 60,
            max_output_bytes: 64 << 20,
            prefetch_on_open: true,
            function_outputs_given: false,
            first_segment_id: 0,
        }
    }
}

impl EngineConfig {
    fn policy(&self) -> SealPolicy {
        SealPolicy {
            max_rows: self.seal_rows.max(1),
            max_bytes: self.seal_bytes.max(1),
            max_age_ms: self.seal_age_secs * 1000,
        }
    }
}

pub struct Engine {
    /// Held (locked) for the engine's lifetime; see [`Engine::open`].
    _lock: std::fs::File,
    /// The background prefetch after open (remote stores): told to stop and joined when
    /// the engine is dropped, so nothing of it outlives the engine.
    prefetcher: Mutex<Option<Prefetcher>>,
    root: PathBuf,
    /// Catalog, manifests, segments and index files (the WAL stays under `root`).
    store: Arc<dyn Storage>,
    config: EngineConfig,
    wal: Wal,
    /// Serialises DDL and catalog rewrites.
    catalog: Mutex<CatalogFile>,
    collections: RwLock<HashMap<String, CollRef>>,
    /// Alias → collection (qualified names), mirrored from the catalog for lookups
    /// without the catalog lock. Lock order: catalog, collections, aliases.
    aliases: RwLock<HashMap<String, String>>,
    builder: Builder,
    /// Grows interim graphs of growing segments (its own thread and queue).
    interim: Builder,
    /// Bulk-import jobs (`engine/import.rs`).
    imports: import::ImportJobs,
    embedder: RwLock<Option<Arc<dyn Embedder>>>,
    /// When [`Engine::maintain`] last compacted each collection (ms; rate limit).
    last_compact: Mutex<HashMap<u64, u64>>,
    /// Held for reading by whatever deletes live segment objects (compaction, drops),
    /// for writing by a backup while it copies them.
    gc: RwLock<()>,
}

/// The background prefetch thread and its stop flag.
type Prefetcher = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.prefetcher.lock().take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = handle.join();
        }
        self.builder.shutdown();
        self.interim.shutdown();
    }
}
/// Per-collection figures for `get_stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct CollectionStats {
    pub row_count: usize,
    pub segments_growing: usize,
    pub segments_sealed: usize,
    pub segments_flushed: usize,
    pub disk_bytes: u64,
    /// Vector and index files on a remote store, and how many of them are not fetched
    /// into memory yet.
    pub files_remote: usize,
    pub files_unfetched: usize,
}

/// Engine-wide figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub collections: usize,
    pub rows: usize,
    pub segments: usize,
    pub wal_bytes: u64,
    pub disk_bytes: u64,
}

/// Ties a data directory to one store. Its WAL holds writes of the store's collections
/// that may not be flushed yet; replayed against another store's catalog they would be
/// skipped and then trimmed as covered, i.e. lost. So `STORAGE` records the store's
/// identity on first open, and any other store is refused with what to pass instead.
fn check_storage_identity(root: &Path, store: &dyn Storage) -> Result<()> {
    let path = root.join("STORAGE");
    let want = store.identity();
    match std::fs::read_to_string(&path) {
        Ok(have) if have.trim() == want => Ok(()),
        Ok(have) => Err(EngineError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "this data directory belongs to the storage '{}', not '{want}' (its log may hold writes not yet in that storage); {}",
                    have.trim(),
                    if have.trim() == "local" {
                        "start without --storage".to_string()
                    } else {
                        format!("start with --storage {}", have.trim())
                    }
                ),
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A data directory from before this file existed held a local database.
            let local_db = root.join("catalog.json").exists();
            if local_db && want != "local" {
                return Err(EngineError::Io {
                    path: root.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("this data directory holds a local database; use an empty data directory with '{want}' (or back up and restore into it)"),
                    ),
                });
            }
            crate::fsutil::write_atomic(&path, format!("{want}\n").as_bytes())
        }
        Err(e) => Err(EngineError::Io { path, source: e }),
    }
}

/// The catalog's key in the engine's storage.
use crate::storage::CATALOG_KEY;

/// Key prefix of collection `id`'s manifest and segments.
fn coll_prefix(id: u64) -> String {
    format!("collections/{id}/")
}

/// `limit + offset`, checked against [`MAX_TOPK`] without overflowing.
fn check_topk(limit: usize, offset: usize) -> Result<usize> {
    match limit.checked_add(offset) {
        Some(n) if n <= MAX_TOPK => Ok(n),
        _ => Err(invalid(format!(
            "limit + offset must be at most {MAX_TOPK}, got {limit} + {offset}"
        ))),
    }
}

/// Compiles an optional filter; empty or blank text means no filter.
fn compile_filter(text: Option<&str>, schema: &CollectionSchema) -> Result<Option<Filter>> {
    match text.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => Ok(Some(Filter::compile(f, schema)?)),
        None => Ok(None),
    }
}

/// A valid collection, alias, database or field name (`kind` names which in the error).
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.chars().next().is_some_and(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {kind} name '{name}': use 1-255 ASCII letters, digits or '_', not starting with a digit"
        )))
    }
}

impl Engine {
    /// Opens (or creates) a database in `root` and recovers it: the catalog, every
    /// collection's flushed segments, then the WAL records newer than each collection's
    /// flushed timestamp.
    ///
    /// One process at a time: the directory's `LOCK` file is locked exclusively for the
    /// engine's lifetime (the OS releases it when the process dies), so a second opener
    /// gets an error instead of corrupting the data.
    pub fn open(root: &Path, config: EngineConfig) -> Result<Engine> {
        Self::open_with_storage(root, config, Arc::new(LocalStorage::new(root)))
    }

    /// As [`Engine::open`], with the catalog, manifests, segments and index files in
    /// `store` (see [`crate::storage`]); `root` keeps the WAL and the `LOCK` file.
    pub fn open_with_storage(
        root: &Path,
        config: EngineConfig,
        store: Arc<dyn Storage>,
    ) -> Result<Engine> {
        std::fs::create_dir_all(root).at(root)?;
        let lock_path = root.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        if let Err(e) = lock.try_lock() {
            let msg = match e {
                std::fs::TryLockError::WouldBlock => {
                    "the data directory is in use by another Magpie process (stop it, or point this one at another --data-dir)".to_string()
                }
                std::fs::TryLockError::Error(e) => e.to_string(),
            };
            return Err(EngineError::Io {
                path: root.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::WouldBlock, msg),
            });
        }
        check_storage_identity(root, &*store)?;
        // Import files a crash left half-downloaded (see `import`).
        let tmp = root.join(crate::import::TMP_DIR);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        let catalog = CatalogFile::load(&*store, CATALOG_KEY)?;
        let mut by_id: HashMap<u64, Collection> = HashMap::new();
        let mut min_ts = 0;
        let live: HashSet<String> = catalog
            .collections
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        let mut dropped = HashSet::new();
        for key in store.list("collections/")? {
            let id = key["collections/".len()..].split('/').next().unwrap_or("");
            if !live.contains(id) {
                dropped.insert(id.to_string());
            }
        }
        for id in dropped {
            let p = format!("collections/{id}/");
            tracing::info!(path = %store.locate(&p).display(), "removing data of a dropped collection");
            let _ = store.delete_prefix(&p);
        }
        for meta in &catalog.collections {
            let mut c = Collection::open(meta.clone(), store.clone(), &coll_prefix(meta.id))?;
            c.next_segment_id = c.next_segment_id.max(config.first_segment_id);
            min_ts = min_ts.max(c.flushed_ts);
            for s in &c.segments {
                min_ts = min_ts.max(s.ts.iter().copied().max().unwrap_or(0));
            }
            by_id.insert(meta.id, c);
        }
        let (wal, replay) = Wal::open(&root.join("wal"), min_ts)?;
        let policy = config.policy();
        let mut replayed = 0usize;
        for rec in replay.records {
            let Some(c) = by_id.get_mut(&rec.collection) else {
                continue;
            };
            if rec.ts <= c.flushed_ts {
                continue;
            }
            let op: WalOp = match rmp_serde::from_slice(&rec.op) {
                Ok(op) => op,
                Err(e) => {
                    tracing::error!(
                        ts = rec.ts,
                        "WAL record with a valid checksum did not decode ({e}); skipped"
                    );
                    continue;
                }
            };
            if let Err(e) = op.check(&c.meta.schema) {
                tracing::error!(
                    ts = rec.ts,
                    collection = %c.meta.name,
                    "WAL record does not fit the collection's schema ({e}); skipped"
                );
                continue;
            }
            let part_ok = match &op {
                WalOp::Insert { partition, .. } | WalOp::Upsert { partition, .. } => {
                    c.meta.partitions.iter().any(|p| p.id == *partition)
                }
                WalOp::Delete { .. } => true,
            };
            if part_ok {
                c.apply(&op, rec.ts, &policy);
                replayed += 1;
            }
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed WAL");
        }
        let collections = by_id
            .into_values()
            .map(|c| (c.meta.name.clone(), Arc::new(RwLock::new(c))))
            .collect();
        crate::par::set_threads(config.search_threads);
        let interim = Builder::start_interim(
            config.index_build_threads,
            config.build_nice,
            InterimParams {
                min_rows: config.interim_min_rows.max(1),
                step_rows: config.interim_step_rows.max(1),
                m: 16,
                ef_construction: INTERIM_EF_CONSTRUCTION,
            },
        );
        let builder = Builder::start(config.index_build_threads, config.build_nice, &interim);
        let aliases = catalog
            .aliases
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        let e = Engine {
            root: root.to_path_buf(),
            store,
            config,
            wal,
            catalog: Mutex::new(catalog),
            collections: RwLock::new(collections),
            aliases: RwLock::new(aliases),
            builder,
            interim,
            imports: Default::default(),
            embedder: RwLock::new(None),
            last_compact: Mutex::new(HashMap::new()),
            gc: RwLock::new(()),
            _lock: lock,
            prefetcher: Mutex::new(None),
        };
        e.schedule_all();
        if e.store.is_remote() && e.config.prefetch_on_open {
            let loaded: Vec<CollRef> = e
                .collections
                .read()
                .values()
                .filter(|c| c.read().meta.loaded)
                .cloned()
                .collect();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("magpie-prefetch".into())
                .spawn(move || {
                    for c in loaded {
                        if let Err(err) = prefetch(&c, Some(&flag)) {
                            tracing::warn!("prefetch of '{}' failed ({err}); its files are fetched on first use", c.read().meta.name);
                        }
                    }
                });
            match spawned {
                Ok(h) => *e.prefetcher.lock() = Some((stop, h)),
                Err(err) => {
                    tracing::warn!("no prefetch thread ({err}); files are fetched on first use")
                }
            }
        }
        Ok(e)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn collection_ref(&self, name: &str) -> Result<CollRef> {
        self.coll(name)
    }

    pub(crate) fn gc_lock(&self) -> &RwLock<()> {
        &self.gc
    }

    /// The storage holding the catalog, manifests, segments and index files.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    /// A collection by name (for the builder's tests).
    #[cfg(test)]
    pub(crate) fn coll_ref(&self, name: &str) -> Result<CollRef> {
        self.coll(name)
    }

    /// A collection by name or alias.
    fn coll(&self, name: &str) -> Result<CollRef> {
        let colls = self.collections.read();
        if let Some(c) = colls.get(name) {
            return Ok(c.clone());
        }
        self.aliases
            .read()
            .get(name)
            .and_then(|target| colls.get(target))
            .cloned()
            .ok_or_else(|| EngineError::CollectionNotFound(name.to_string()))
    }

    fn save_catalog(&self, cat: &CatalogFile) -> Result<()> {
        cat.save(&*self.store, CATALOG_KEY)
    }

    /// Updates a collection's catalog entry (under the catalog lock) and persists it.
    fn update_meta(
        &self,
        c: &mut Collection,
        f: impl FnOnce(&mut CollectionMeta) -> Result<()>,
    ) -> Result<()> {
        let mut cat = self.catalog.lock();
        let mut meta = c.meta.clone();
        f(&mut meta)?;
        if let Some(m) = cat.collections.iter_mut().find(|m| m.id == meta.id) {
            *m = meta.clone();
        }
        self.save_catalog(&cat)?;
        c.meta = meta;
        Ok(())
    }

    // ---------------------------------------------------------------- maintenance

    /// Runs `f` (a flush or compaction of `g`) once every write applied to memory is
    /// durable in the log: under the collection's write lock every applied batch has been
    /// appended, so one sync covers them, and a batch whose log write then fails is never
    /// persisted from memory.
    fn persist<T>(
        &self,
        g: &mut Collection,
        f: impl FnOnce(&mut Collection) -> Result<T>,
    ) -> Result<T> {
        self.check_log()?;
        self.wal.sync_all()?;
        f(g)
    }

    /// Refuses to persist memory while the log is poisoned: memory may then hold a
    /// batch the log does not (its write failed after it was applied), and segment files
    /// must never hold a write that was reported as failed.
    fn check_log(&self) -> Result<()> {
        match self.wal.poisoned() {
            Some(p) => Err(EngineError::WalPoisoned(p)),
            None => Ok(()),
        }
    }

    /// The WAL's failure, if a write or fsync failed (the server must restart to
    /// recover: the next open rebuilds memory from segments and the log).
    pub fn wal_failure(&self) -> Option<String> {
        self.wal.poisoned()
    }

    /// Makes the WAL's next write fail (tests of the failure path).
    #[doc(hidden)]
    pub fn inject_wal_failure(&self) {
        self.wal.inject_failure();
    }

    /// Seals and persists everything in the collection, then trims the WAL.
    pub fn flush(&self, coll: &str) -> Result<()> {
        let c = self.coll(coll)?;
        self.persist(&mut c.write(), |g| g.flush())?;
        self.schedule(&c);
        self.trim_wal()
    }

    /// Flushes every collection and trims the WAL (used at shutdown).
    pub fn flush_all(&self) -> Result<()> {
        let all: Vec<CollRef> = self.collections.read().values().cloned().collect();
        for c in all {
            self.persist(&mut c.write(), |g| g.flush())?;
        }
        self.trim_wal()
    }

    /// Compacts a collection; returns (segments removed, segments written).
    pub fn compact(&self, coll: &str) -> Result<(usize, usize)> {
        let c = self.coll(coll)?;
        let _gc = self.gc.read();
        let r = self.persist(&mut c.write(), |g| {
            g.compact(
                self.config.compact_delete_ratio,
                self.config.seal_rows / 4,
                true,
            )
        })?;
        self.schedule(&c);
        self.trim_wal()?;
        Ok(r)
    }

    fn trim_wal(&self) -> Result<()> {
        let flushed: HashMap<u64, Timestamp> = self
            .collections
            .read()
            .values()
            .map(|c| {
                let g = c.read();
                (g.meta.id, g.flushed_ts)
            })
            .collect();
        self.wal
            .trim(|id, ts| flushed.get(&id).is_none_or(|f| ts <= *f))?;
        Ok(())
    }

    /// Periodic work: seal aged segments, flush sealed ones, trim the WAL.
    pub fn maintain(&self) -> Result<()> {
        if self.wal.poisoned().is_some() {
            // Logged when it happened; nothing may be flushed until a restart.
            return Ok(());
        }
        let policy = self.config.policy();
        let all: Vec<CollRef> = self.collections.read().values().cloned().collect();
        let mut flushed = false;
        let small = self.config.seal_rows / 4;
        for c in all {
            let mut g = c.write();
            if g.needs_flush(&policy, now_ms()) {
                self.persist(&mut g, |g| g.flush())?;
                flushed = true;
            }
            let every = self.config.auto_compact_secs * 1000;
            let due = every > 0 && {
                let mut last = self.last_compact.lock();
                let t = last.entry(g.meta.id).or_insert(0);
                let due = now_ms().saturating_sub(*t) >= every
                    && g.wants_compaction(self.config.compact_delete_ratio, small);
                if due {
                    *t = now_ms();
                }
                due
            };
            let gc = if due { self.gc.try_read() } else { None };
            if gc.is_some() {
                // Without a flush first: growing rows stay growing (no tiny segment).
                // (Skipped while a backup copies; the next tick retries.)
                let (removed, written) = self.persist(&mut g, |g| {
                    g.compact(self.config.compact_delete_ratio, small, false)
                })?;
                tracing::info!(collection = %g.meta.name, removed, written, "compacted");
                flushed = true;
            }
            drop(g);
            self.schedule(&c);
            self.schedule_interim(&c);
        }
        if flushed {
            self.trim_wal()?;
        }
        Ok(())
    }

    pub fn stats(&self) -> EngineStats {
        let all: Vec<CollRef> = self.collections.read().values().cloned().collect();
        let mut st = EngineStats {
            collections: all.len(),
            wal_bytes: self.wal.bytes(),
            disk_bytes: crate::fsutil::dir_bytes(&self.root),
            ..Default::default()
        };
        for c in all {
            let g = c.read();
            st.rows += g.pk_index.len();
            st.segments += g.segments.len();
        }
        st
    }
}

/// Files fetched at once by [`prefetch`]: fetching is bound by the network's latency
/// and bandwidth, not by this machine's cores.
const PREFETCH_WORKERS: usize = 4;

/// Fetches the vector and index files of a collection's segments that are not in memory
/// yet (segments on a remote store), [`PREFETCH_WORKERS`] at a time and without holding
/// the collection's lock while fetching. An index that fails to fetch is logged and
/// searched exactly; the first vector file that fails is the error.
fn prefetch(c: &CollRef, stop: Option<&std::sync::atomic::AtomicBool>) -> Result<()> {
    enum Part {
        V(Arc<crate::segment::LazyVectors>),
        I(Arc<crate::segment::LazyIndex>),
    }
    let parts: Vec<Part> = c
        .read()
        .segments
        .iter()
        .flat_map(|s| {
            let (v, i) = s.unfetched();
            v.into_iter()
                .map(Part::V)
                .chain(i.into_iter().map(Part::I))
                .collect::<Vec<_>>()
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_err: Mutex<Option<EngineError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PREFETCH_WORKERS.min(parts.len()) {
            s.spawn(|| loop {
                if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
                    break;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = parts.get(i) else { break };
                match p {
                    Part::V(v) => {
                        if let Err(e) = v.get() {
                            first_err.lock().get_or_insert(e);
                        }
                    }
                    Part::I(ix) => {
                        ix.get();
                    }
                }
            });
        }
    });
    match first_err.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
