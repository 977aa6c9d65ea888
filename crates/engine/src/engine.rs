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

use crate::builder::{Builder, CollRef, InterimParams, Job, JobKey};
use crate::catalog::{CatalogFile, CollectionMeta, IndexMeta, PartitionMeta};
use crate::collection::{Collection, Hit, Probe, ResolvedSearch, SealPolicy, WalOp};
use crate::collection::{OutputBudget, SearchKnobs, SearchOutcome};
use crate::error::{invalid, EngineError, IoContext, Result};
use crate::filter::Filter;
use crate::function::{Embedder, FunctionKind, ImageInput};
use crate::indexspec;
use crate::schema::CollectionSchema;
use crate::segment::SegState;
use crate::storage::{LocalStorage, Storage};
use crate::types::{now_ms, Consistency, PrimaryKey, Timestamp};
use crate::wal::Wal;
use magpie_index::{Elem, Metric};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod hybrid;
mod import;
mod namespace;
pub mod rerank;
pub use hybrid::{check_rerank, fuse, HybridRequest, Rerank, MAX_HYBRID_SEARCHES};
pub use import::{ImportProgress, Importer, IMPORT_BATCH_ROWS};
pub use namespace::{qualified, split_qualified, DEFAULT_DATABASE};

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

/// Build progress of one index definition (`describe_index`).
#[derive(Debug, Clone)]
pub struct IndexProgress {
    pub meta: IndexMeta,
    /// A scalar index (no metric; served by a sorted order per segment).
    pub scalar: bool,
    /// Rows in flushed segments large enough to be indexed.
    pub total_rows: usize,
    pub indexed_rows: usize,
    /// Rows searched exactly for now: growing, sealed, or awaiting a build.
    pub pending_rows: usize,
    /// "Finished", "InProgress" or "Failed" (Milvus's names); FLAT is always finished.
    pub state: &'static str,
    pub fail_reason: String,
    pub segments: Vec<SegmentIndexState>,
}

/// One segment's index state.
#[derive(Debug, Clone)]
pub struct SegmentIndexState {
    pub segment: u64,
    pub rows: usize,
    /// "indexed", "building", "pending", "growing" or "small" (below `index_min_rows`).
    pub state: &'static str,
    pub index_bytes: u64,
    /// Sparse indexes: the (row, weight) postings held, 8 bytes each raw (0 for other
    /// indexes, and before a search built the segment's inverted index).
    pub postings: u64,
    pub build_ms: u64,
    /// Rows covered by the segment's interim graph, and its bytes (0 without one).
    pub interim_rows: usize,
    pub interim_bytes: u64,
}

/// A fresh, process-unique index definition id (time-based, so also unique across
/// restarts).
fn fresh_index_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let _ = NEXT.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed).max(1)
}

/// Result of an insert or upsert.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub count: usize,
    pub ids: Vec<PrimaryKey>,
    pub ts: Timestamp,
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

/// A search request with names unresolved.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub anns_field: Option<String>,
    pub vectors: Vec<Vec<f32>>,
    /// Search by the stored vectors of these primary keys instead of `vectors`.
    pub ids: Option<Vec<Value>>,
    /// Search by texts, embedded by the anns field's function (a TextEmbedding function,
    /// or an ImageEmbedding function whose model embeds text, such as ConSE).
    pub texts: Vec<String>,
    /// Search by encoded images, embedded by the anns field's ImageEmbedding function.
    pub images: Vec<Vec<u8>>,
    /// Sparse query vectors (either JSON form of [`crate::schema::parse_sparse`]), for a
    /// SparseFloatVector anns field.
    pub sparse: Vec<Value>,
    pub filter: Option<String>,
    pub limit: usize,
    pub offset: usize,
    pub output_fields: Vec<String>,
    pub partitions: Vec<String>,
    pub metric: Option<Metric>,
    pub radius: Option<f32>,
    pub range_filter: Option<f32>,
    pub group_by: Option<String>,
    pub group_size: Option<usize>,
    pub consistency: Option<Consistency>,
    /// `ef`, `nprobe`, `recall` target, `refine`.
    pub knobs: SearchKnobs,
    /// Read exactly this snapshot instead of the consistency level's (a hybrid search
    /// runs its sub-searches on one snapshot).
    pub snapshot: Option<Timestamp>,
    /// Rerank the hits by functions of the rows (decay, boost; see [`rerank`]).
    pub function_score: Option<rerank::FunctionScore>,
    /// A BM25 search weighs its terms by these statistics instead of the collection's
    /// own: a cluster proxy sums its shards' ([`Engine::bm25_stats`]) so that every
    /// shard scores as one standalone collection would.
    pub bm25_stats: Option<crate::collection::Bm25Stats>,
}

/// A query (or get) request.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub filter: Option<String>,
    pub ids: Option<Vec<Value>>,
    pub output_fields: Vec<String>,
    pub partitions: Vec<String>,
    pub limit: Option<usize>,
    pub offset: usize,
    pub consistency: Option<Consistency>,
    /// Read exactly this snapshot instead of the consistency level's.
    pub snapshot: Option<Timestamp>,
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

/// Compiles an optional filter; empty or blank text means no filter.
/// `limit + offset`, checked against [`MAX_TOPK`] without overflowing.
fn check_topk(limit: usize, offset: usize) -> Result<usize> {
    match limit.checked_add(offset) {
        Some(n) if n <= MAX_TOPK => Ok(n),
        _ => Err(invalid(format!(
            "limit + offset must be at most {MAX_TOPK}, got {limit} + {offset}"
        ))),
    }
}

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

    /// Installs the embedding models that schema functions call (the server does this).
    pub fn set_embedder(&self, e: Arc<dyn Embedder>) {
        *self.embedder.write() = Some(e);
    }

    fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        self.embedder.read().clone().ok_or_else(|| {
            invalid("this collection has embedding functions, but no embedding models are available in this process")
        })
    }

    /// Checks each function's model against its output field (exists, right dimension).
    fn check_functions(&self, schema: &CollectionSchema) -> Result<()> {
        if self.config.function_outputs_given {
            // The writer checked the models when it created the collection, and runs them.
            return Ok(());
        }
        for f in schema
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::BM25)
        {
            let model = f.model().unwrap_or_default();
            let dim = self
                .embedder()?
                .dim(f.kind, model)
                .map_err(|m| invalid(format!("function '{}': {m}", f.name)))?;
            let want = schema.field(f.output()).and_then(|x| x.dim).unwrap_or(0);
            if dim != want {
                return Err(invalid(format!(
                    "function '{}': model '{model}' makes {dim}-d vectors, but field '{}' has dim {want}",
                    f.name,
                    f.output()
                )));
            }
        }
        Ok(())
    }

    /// `rows` with every function's output filled in (BM25 term counts; embeddings
    /// computed in one batch per function), as an insert stores them. Rows must not
    /// supply an output field themselves (unless the engine's `function_outputs_given`
    /// says they come computed). A cluster proxy fills rows in with it: it logs the
    /// embeddings, and validates the BM25 outputs that each shard computes again.
    pub fn apply_functions(&self, schema: &CollectionSchema, rows: &[Value]) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = rows.to_vec();
        for f in &schema.functions {
            let max = schema
                .field(f.input())
                .and_then(|x| x.max_length)
                .unwrap_or(usize::MAX);
            if self.config.function_outputs_given
                && f.kind != FunctionKind::BM25
                && rows
                    .iter()
                    .all(|r| r.get(f.output()).is_some_and(|v| !v.is_null()))
            {
                // Computed by the writer (see the setting); checked as any vector is by
                // the schema's validation.
                continue;
            }
            let mut texts = Vec::with_capacity(rows.len());
            for (i, r) in rows.iter().enumerate() {
                let obj = r.as_object().ok_or_else(|| EngineError::Row {
                    row: i,
                    field: String::new(),
                    msg: "a row must be a JSON object".into(),
                })?;
                if obj.get(f.output()).is_some_and(|v| !v.is_null()) {
                    return Err(EngineError::Row {
                        row: i,
                        field: f.output().to_string(),
                        msg: format!("is computed by function '{}'; do not supply it", f.name),
                    });
                }
                match obj.get(f.input()) {
                    Some(Value::String(t)) => {
                        // The input's own limit is checked before any model sees it, so
                        // an oversized text or data: URI costs nothing to refuse.
                        if t.len() > max {
                            return Err(EngineError::Row {
                                row: i,
                                field: f.input().to_string(),
                                msg: format!(
                                    "is {} bytes long; the field's max_length is {max}",
                                    t.len()
                                ),
                            });
                        }
                        texts.push(t.as_str())
                    }
                    _ => {
                        return Err(EngineError::Row {
                            row: i,
                            field: f.input().to_string(),
                            msg: format!("must be a string: function '{}' reads it", f.name),
                        })
                    }
                }
            }
            if f.kind == FunctionKind::BM25 {
                // Term frequencies, computed here (before the WAL) like embeddings.
                let analyzer = schema
                    .field(f.input())
                    .ok_or_else(|| invalid(format!("function '{}': no input field", f.name)))?
                    .analyzer()
                    .map_err(|m| invalid(format!("function '{}': {m}", f.name)))?;
                for (r, t) in out.iter_mut().zip(&texts) {
                    let tf = crate::analyzer::term_frequencies(&analyzer.analyze(t));
                    let v = magpie_index::SparseVector::from_pairs(tf).map_err(invalid)?;
                    r.as_object_mut()
                        .unwrap()
                        .insert(f.output().to_string(), crate::schema::sparse_to_json(&v));
                }
                continue;
            }
            let model = f.model().unwrap_or_default();
            let fail = |m: String| invalid(format!("function '{}': {m}", f.name));
            let vecs = match f.kind {
                FunctionKind::TextEmbedding => {
                    self.embedder()?.embed_texts(model, &texts).map_err(fail)?
                }
                FunctionKind::ImageEmbedding => {
                    let inputs: Vec<ImageInput> =
                        texts.iter().map(|t| ImageInput::Stored(t)).collect();
                    let res = self
                        .embedder()?
                        .embed_images(model, &inputs)
                        .map_err(fail)?;
                    let mut v = Vec::with_capacity(res.len());
                    for (i, r) in res.into_iter().enumerate() {
                        v.push(r.map_err(|msg| EngineError::Row {
                            row: i,
                            field: f.input().to_string(),
                            msg,
                        })?);
                    }
                    v
                }
                FunctionKind::BM25 => unreachable!("handled above"),
            };
            if vecs.len() != rows.len() {
                return Err(invalid(format!(
                    "function '{}': the model returned {} vectors for {} rows",
                    f.name,
                    vecs.len(),
                    rows.len()
                )));
            }
            for (r, v) in out.iter_mut().zip(vecs) {
                r.as_object_mut()
                    .unwrap()
                    .insert(f.output().to_string(), Value::from(v));
            }
        }
        Ok(out)
    }

    /// Queues an index build for every flushed segment that lacks one.
    fn schedule(&self, c: &CollRef) {
        let g = c.read();
        for def in &g.meta.indexes {
            let Some(field) = g.meta.schema.vector_index(&def.field_name) else {
                continue;
            };
            let dim = g.meta.schema.field(&def.field_name).and_then(|f| f.dim);
            match indexspec::parse(def, dim.unwrap_or(0), 0) {
                Ok(k) if k.is_built() => {}
                _ => continue,
            }
            for s in &g.segments {
                if s.state == SegState::Flushed
                    && s.len() >= self.config.index_min_rows.max(1)
                    && s.indexes.get(field).is_some_and(|i| i.is_none())
                {
                    self.builder.enqueue(Job {
                        key: JobKey {
                            coll: g.meta.id,
                            segment: s.id,
                            index: def.id,
                        },
                        coll: c.clone(),
                        field,
                    });
                }
            }
        }
    }

    /// Queues a step of the interim graph of every growing segment that has enough new
    /// rows for one (cheap: a look at each segment's row count).
    fn schedule_interim(&self, c: &CollRef) {
        let min = self.config.interim_min_rows;
        if min == 0 {
            return;
        }
        let step = self.config.interim_step_rows.max(1);
        let g = c.read();
        for def in &g.meta.indexes {
            let Some(field) = g.meta.schema.vector_index(&def.field_name) else {
                continue;
            };
            for s in &g.segments {
                if s.state != SegState::Growing || s.len() < min {
                    continue;
                }
                let have = s.interim[field]
                    .as_ref()
                    .filter(|i| i.index_id == def.id)
                    .map_or(0, |i| i.rows);
                if have > 0 && s.len() < have + step {
                    continue;
                }
                if !Self::wants_interim(&g, def, field) {
                    break;
                }
                self.interim.enqueue(Job {
                    key: JobKey {
                        coll: g.meta.id,
                        segment: s.id,
                        index: def.id,
                    },
                    coll: c.clone(),
                    field,
                });
            }
        }
    }

    /// Whether index `def` on vector field `field` stands for an approximate search that
    /// an interim graph can serve: a graph or IVF index on float rows (not FLAT, whose
    /// answers are exact, nor binary rows).
    fn wants_interim(g: &Collection, def: &IndexMeta, field: usize) -> bool {
        let elem = g
            .meta
            .schema
            .vector_fields()
            .nth(field)
            .map(|f| f.data_type.elem());
        let dim = g.meta.schema.field(&def.field_name).and_then(|f| f.dim);
        matches!(elem, Some(e) if e != Elem::Bin)
            && matches!(
                indexspec::parse(def, dim.unwrap_or(0), 0),
                Ok(k) if k.is_built() && !matches!(k, indexspec::IndexKind::BinIvf(_))
            )
    }

    fn schedule_all(&self) {
        let all: Vec<CollRef> = self.collections.read().values().cloned().collect();
        for c in all {
            self.schedule(&c);
            self.schedule_interim(&c);
        }
    }

    /// Blocks until no index build of `coll` is queued or running, or `timeout` passes.
    /// Returns true when the collection's indexes are complete. Builds run in the
    /// background regardless; this is for tools and tests that need a settled index.
    pub fn wait_for_indexes(&self, coll: &str, timeout: std::time::Duration) -> Result<bool> {
        let c = self.coll(coll)?;
        self.schedule(&c);
        self.schedule_interim(&c);
        let id = c.read().meta.id;
        let deadline = std::time::Instant::now() + timeout;
        Ok(self.builder.wait_idle(id, deadline) && self.interim.wait_idle(id, deadline))
    }

    /// Build progress of each index of a collection (optionally one, by name).
    pub fn index_progress(&self, coll: &str, name: Option<&str>) -> Result<Vec<IndexProgress>> {
        let c = self.coll(coll)?;
        let g = c.read();
        let pending_jobs = self.builder.pending(g.meta.id);
        let mut out = Vec::new();
        for def in &g.meta.indexes {
            if name.is_some_and(|n| !n.is_empty() && n != def.index_name) {
                continue;
            }
            let field = g.meta.schema.vector_index(&def.field_name);
            let scalar = g.meta.schema.scalar_index(&def.field_name);
            let dim = g.meta.schema.field(&def.field_name).and_then(|f| f.dim);
            let sparse_field = g
                .meta
                .schema
                .field(&def.field_name)
                .is_some_and(|f| f.is_sparse());

            let built = field.is_some()
                && indexspec::parse(def, dim.unwrap_or(0), 0).is_ok_and(|k| k.is_built());
            let path = def.params.contains_key("json_path");
            let mut p = IndexProgress {
                meta: def.clone(),
                scalar: scalar.is_some() || path,
                total_rows: 0,
                indexed_rows: 0,
                pending_rows: 0,
                state: "Finished",
                fail_reason: String::new(),
                segments: Vec::new(),
            };
            for s in &g.segments {
                let live = s.live_count();
                let ix = field
                    .and_then(|f| s.indexes.get(f))
                    .and_then(|i| i.as_ref());
                let interim = field
                    .and_then(|f| s.interim.get(f))
                    .and_then(|i| i.as_ref())
                    .filter(|i| i.index_id == def.id);
                // A scalar index: the bytes of its sorted order, once a filter built it.
                let scalar_bytes = scalar
                    .and_then(|si| s.sorted.get(si))
                    .and_then(|c| c.get())
                    .and_then(|x| x.as_ref())
                    .map_or(0, |x| x.bytes() as u64);
                // A JSON path index, once a filter built it.
                let scalar_bytes = if path {
                    s.path_index_bytes(def.id) as u64
                } else {
                    scalar_bytes
                };
                // A sparse field's inverted index, once a search built it.
                let sparse = scalar
                    .filter(|_| sparse_field)
                    .and_then(|si| s.sparse.get(si))
                    .and_then(|c| c.get());
                let scalar_bytes = sparse.map_or(scalar_bytes, |x| x.bytes() as u64);
                let state = if !built {
                    "indexed"
                } else if s.state != SegState::Flushed {
                    "growing"
                } else if ix.is_some() {
                    "indexed"
                } else if s.len() < self.config.index_min_rows.max(1) {
                    "small"
                } else if pending_jobs > 0 {
                    "building"
                } else {
                    "pending"
                };
                match state {
                    "indexed" => {
                        p.total_rows += live;
                        p.indexed_rows += live;
                    }
                    "building" | "pending" => {
                        p.total_rows += live;
                        p.pending_rows += live;
                    }
                    _ => p.pending_rows += live,
                }
                p.segments.push(SegmentIndexState {
                    segment: s.id,
                    rows: s.len(),
                    state,
                    index_bytes: ix.map_or(scalar_bytes, |i| i.file.bytes),
                    postings: sparse.map_or(0, |x| x.postings() as u64),
                    build_ms: ix.map_or(0, |i| i.file.build_ms),
                    interim_rows: interim.map_or(0, |i| i.rows),
                    interim_bytes: interim.map_or(0, |i| {
                        use magpie_index::VectorIndexRead;
                        i.graph.memory_bytes() as u64
                    }),
                });
            }
            let failure = self.builder.failure(g.meta.id, def.id);
            p.state = if failure.is_some() {
                "Failed"
            } else if p
                .segments
                .iter()
                .any(|s| matches!(s.state, "building" | "pending"))
            {
                "InProgress"
            } else {
                "Finished"
            };
            p.fail_reason = failure.unwrap_or_default();
            out.push(p);
        }
        Ok(out)
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

    // ---------------------------------------------------------------- collections

    /// Creates a collection. `indexes` may declare the metric per vector field.
    pub fn create_collection(
        &self,
        name: &str,
        schema: CollectionSchema,
        indexes: Vec<IndexMeta>,
        consistency: Consistency,
        description: &str,
    ) -> Result<()> {
        schema.check()?;
        self.check_functions(&schema)?;
        let mut indexes = indexes;
        for ix in &mut indexes {
            Self::check_index(&schema, ix)?;
            ix.id = fresh_index_id();
            ix.index_type = ix.index_type.to_ascii_uppercase();
        }
        let mut cat = self.catalog.lock();
        namespace::check_collection_name(&cat, name)?;
        let mut colls = self.collections.write();
        if colls.contains_key(name) {
            return Err(EngineError::CollectionExists(name.to_string()));
        }
        if let Some(target) = cat.aliases.get(name) {
            return Err(invalid(format!(
                "'{name}' is an alias of collection '{target}'; pick another collection name"
            )));
        }
        let id = cat.next_id;
        // Partition-key collections get their partitions now, `_default_0` and up (the
        // names Milvus uses); the others one partition, `_default`.
        let partitions: Vec<PartitionMeta> = match schema.partition_key() {
            Some(k) => (0..k.partition_key.unwrap_or(1) as u64)
                .map(|i| PartitionMeta {
                    id: id + 1 + i,
                    name: format!("_default_{i}"),
                })
                .collect(),
            None => vec![PartitionMeta {
                id: id + 1,
                name: "_default".into(),
            }],
        };
        cat.next_id += 1 + partitions.len() as u64;
        let meta = CollectionMeta {
            id,
            name: name.to_string(),
            schema,
            partitions,
            indexes,
            consistency,
            created_ms: now_ms(),
            loaded: true,
            description: description.to_string(),
        };
        cat.collections.push(meta.clone());
        if let Err(e) = self.save_catalog(&cat) {
            cat.collections.pop();
            return Err(e);
        }
        let mut c = Collection::open(meta, self.store.clone(), &coll_prefix(id))?;
        c.next_segment_id = c.next_segment_id.max(self.config.first_segment_id);
        colls.insert(name.to_string(), Arc::new(RwLock::new(c)));
        Ok(())
    }

    pub fn drop_collection(&self, name: &str) -> Result<()> {
        let _gc = self.gc.read();
        let mut cat = self.catalog.lock();
        let c = self.collections.read().get(name).cloned().ok_or_else(|| {
            match cat.aliases.get(name) {
                Some(t) => invalid(format!(
                    "'{name}' is an alias of collection '{t}'; drop the collection by its name"
                )),
                None => EngineError::CollectionNotFound(name.to_string()),
            }
        })?;
        let aliases: Vec<&String> = cat
            .aliases
            .iter()
            .filter(|(_, t)| t.as_str() == name)
            .map(|(a, _)| a)
            .collect();
        if !aliases.is_empty() {
            return Err(invalid(format!(
                "collection '{name}' has aliases {aliases:?}; drop them first (drop_alias)"
            )));
        }
        let id = c.read().meta.id;
        self.builder.cancel_where(|k| k.coll == id);
        self.interim.cancel_where(|k| k.coll == id);
        cat.collections.retain(|m| m.id != id);
        self.save_catalog(&cat)?;
        self.collections.write().remove(name);
        let _ = self.store.delete_prefix(&coll_prefix(id));
        Ok(())
    }

    pub fn rename_collection(&self, old: &str, new: &str) -> Result<()> {
        let mut cat = self.catalog.lock();
        namespace::check_collection_name(&cat, new)?;
        if cat.aliases.contains_key(new) {
            return Err(invalid(format!(
                "'{new}' is an alias; pick another collection name"
            )));
        }
        let mut colls = self.collections.write();
        let c = colls
            .get(old)
            .cloned()
            .ok_or_else(|| EngineError::CollectionNotFound(old.to_string()))?;
        if colls.contains_key(new) {
            return Err(EngineError::CollectionExists(new.to_string()));
        }
        let mut g = c.write();
        let id = g.meta.id;
        if let Some(m) = cat.collections.iter_mut().find(|m| m.id == id) {
            m.name = new.to_string();
        }
        // Aliases follow their collection (within its database).
        let old_aliases = cat.aliases.clone();
        for t in cat.aliases.values_mut() {
            if t == old {
                *t = new.to_string();
            }
        }
        if let Err(e) = self.save_catalog(&cat) {
            cat.aliases = old_aliases;
            if let Some(m) = cat.collections.iter_mut().find(|m| m.id == id) {
                m.name = old.to_string();
            }
            return Err(e);
        }
        *self.aliases.write() = cat
            .aliases
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        g.meta.name = new.to_string();
        drop(g);
        colls.remove(old);
        colls.insert(new.to_string(), c);
        Ok(())
    }

    /// Whether `name` is a collection or an alias of one.
    pub fn has_collection(&self, name: &str) -> bool {
        self.coll(name).is_ok()
    }

    pub fn list_collections(&self) -> Vec<String> {
        let mut v: Vec<String> = self.collections.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn describe_collection(&self, name: &str) -> Result<CollectionMeta> {
        Ok(self.coll(name)?.read().meta.clone())
    }

    pub fn collection_stats(&self, name: &str) -> Result<CollectionStats> {
        let c = self.coll(name)?;
        let g = c.read();
        let mut st = CollectionStats {
            row_count: g.row_count(Timestamp::MAX - 1),
            disk_bytes: g.store.bytes_under(&g.prefix).unwrap_or(0),
            ..Default::default()
        };
        for s in &g.segments {
            let (v, i) = s.unfetched();
            st.files_unfetched += v.len() + i.len();
            st.files_remote += s.remote_files();
            match s.state {
                crate::segment::SegState::Growing => st.segments_growing += 1,
                crate::segment::SegState::Sealed => st.segments_sealed += 1,
                crate::segment::SegState::Flushed => st.segments_flushed += 1,
            }
        }
        Ok(st)
    }

    /// `collections/load` (true) and `release` (false). Loading fetches what a search
    /// needs from a remote store (vector and index files) before it returns; releasing
    /// drops what was fetched from memory.
    pub fn set_loaded(&self, name: &str, loaded: bool) -> Result<()> {
        let c = self.coll(name)?;
        {
            let mut g = c.write();
            self.update_meta(&mut g, |m| {
                m.loaded = loaded;
                Ok(())
            })?;
            if !loaded {
                g.segments.iter_mut().for_each(|s| s.evict());
            }
        }
        if loaded {
            prefetch(&c, None)?;
        }
        Ok(())
    }

    /// Fetches every vector and index file of a loaded collection that is not in memory
    /// yet (on a remote store), and returns once they are (or the first error). A released
    /// collection fetches nothing.
    pub fn fetch_all(&self, name: &str) -> Result<()> {
        let c = self.coll(name)?;
        if c.read().meta.loaded {
            prefetch(&c, None)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- partitions

    pub fn create_partition(&self, coll: &str, name: &str) -> Result<()> {
        check_name("partition", name)?;
        let c = self.coll(coll)?;
        let mut g = c.write();
        g.no_named_partitions()?;
        if g.meta.partitions.iter().any(|p| p.name == name) {
            return Err(EngineError::PartitionExists(name.to_string()));
        }
        if g.meta.partitions.len() >= MAX_PARTITIONS {
            return Err(invalid(format!(
                "a collection holds at most {MAX_PARTITIONS} partitions"
            )));
        }
        let id = {
            let mut cat = self.catalog.lock();
            let id = cat.next_id;
            cat.next_id += 1;
            self.save_catalog(&cat)?;
            id
        };
        self.update_meta(&mut g, |m| {
            m.partitions.push(PartitionMeta {
                id,
                name: name.to_string(),
            });
            Ok(())
        })
    }

    pub fn drop_partition(&self, coll: &str, name: &str) -> Result<()> {
        let _gc = self.gc.read();
        if name == "_default" {
            return Err(invalid("the _default partition cannot be dropped"));
        }
        let c = self.coll(coll)?;
        let mut g = c.write();
        g.no_named_partitions()?;
        let id = g.partition_id(Some(name))?;
        self.update_meta(&mut g, |m| {
            m.partitions.retain(|p| p.id != id);
            Ok(())
        })?;
        g.drop_partition_data(id)
    }

    pub fn list_partitions(&self, coll: &str) -> Result<Vec<String>> {
        Ok(self
            .coll(coll)?
            .read()
            .meta
            .partitions
            .iter()
            .map(|p| p.name.clone())
            .collect())
    }

    pub fn has_partition(&self, coll: &str, name: &str) -> Result<bool> {
        Ok(self
            .coll(coll)?
            .read()
            .meta
            .partitions
            .iter()
            .any(|p| p.name == name))
    }

    // ---------------------------------------------------------------- indexes

    fn check_index(schema: &CollectionSchema, ix: &IndexMeta) -> Result<()> {
        let f = schema.field(&ix.field_name);
        let json = f.is_some_and(|f| f.data_type == crate::schema::DataType::JSON);
        if json
            || (f.is_none() && schema.enable_dynamic_field && ix.params.contains_key("json_path"))
        {
            return indexspec::check_json_path(schema, ix).map(|_| ());
        }
        let f =
            f.ok_or_else(|| invalid(format!("index field '{}' does not exist", ix.field_name)))?;
        if ix.params.contains_key("json_path") || ix.params.contains_key("json_cast_type") {
            return Err(invalid(format!(
                "json_path and json_cast_type are for JSON fields and dynamic keys; field '{}' is {:?}",
                f.name, f.data_type
            )));
        }
        if !f.is_vector() {
            indexspec::check_scalar(f, &ix.index_type)?;
            if f.is_sparse() {
                let bm25 = schema
                    .function_for_output(&f.name)
                    .is_some_and(|x| x.kind == FunctionKind::BM25);
                indexspec::check_sparse(ix, bm25)?;
            }
            return Ok(());
        }
        if ix.metric_type == Metric::BM25 {
            return Err(invalid(format!(
                "metric BM25 is for the sparse output of a BM25 function; vector field '{}' takes L2, IP or COSINE",
                ix.field_name
            )));
        }
        indexspec::check_vector(f, ix)?;
        let t = ix.index_type.to_ascii_uppercase();
        if indexspec::SCALAR_TYPES.contains(&t.as_str()) && t != "AUTOINDEX" {
            return Err(invalid(format!(
                "index type '{t}' is for scalar fields; vector field '{}' takes one of {}",
                ix.field_name,
                indexspec::SUPPORTED.join(", ")
            )));
        }
        indexspec::parse(ix, f.dim.unwrap_or(0), 0).map(|_| ())
    }

    pub fn create_index(&self, coll: &str, mut ix: IndexMeta) -> Result<()> {
        let c = self.coll(coll)?;
        let mut g = c.write();
        Self::check_index(&g.meta.schema, &ix)?;
        if ix.index_name.is_empty() {
            ix.index_name = ix.field_name.clone();
        }
        if let Some(same) = g
            .meta
            .indexes
            .iter()
            .find(|i| i.index_name == ix.index_name)
        {
            return Err(invalid(format!(
                "an index named '{}' already exists (on field '{}'; drop it first)",
                same.index_name, same.field_name
            )));
        }
        // One index per field, or per JSON path.
        let schema = &g.meta.schema;
        let path = indexspec::json_path_of(schema, &ix).map(|(p, _)| p);
        if let Some(same) = g.meta.indexes.iter().find(|i| {
            let other = indexspec::json_path_of(schema, i).map(|(p, _)| p);
            match (&path, &other) {
                (Some(p), Some(q)) => p == q,
                (None, None) => i.field_name == ix.field_name,
                _ => false,
            }
        }) {
            return Err(invalid(match &path {
                Some(p) => format!(
                    "index '{}' already covers the JSON path {} (drop it first)",
                    same.index_name,
                    p.display(&ix.field_name)
                ),
                None => format!(
                    "an index already exists on field '{}' (drop it first)",
                    ix.field_name
                ),
            }));
        }
        ix.index_type = ix.index_type.to_ascii_uppercase();
        ix.id = fresh_index_id();
        self.update_meta(&mut g, |m| {
            m.indexes.push(ix);
            Ok(())
        })?;
        drop(g);
        self.schedule(&c);
        Ok(())
    }

    pub fn drop_index(&self, coll: &str, index_name: &str) -> Result<()> {
        let _gc = self.gc.read();
        let c = self.coll(coll)?;
        let mut g = c.write();
        let Some(def) = g
            .meta
            .indexes
            .iter()
            .find(|i| i.index_name == index_name)
            .cloned()
        else {
            return Err(invalid(format!("index '{index_name}' does not exist")));
        };
        let coll_id = g.meta.id;
        self.builder
            .cancel_where(|k| k.coll == coll_id && k.index == def.id);
        self.interim
            .cancel_where(|k| k.coll == coll_id && k.index == def.id);
        for s in &mut g.segments {
            for slot in &mut s.interim {
                if slot.as_ref().is_some_and(|i| i.index_id == def.id) {
                    *slot = None;
                }
            }
        }
        self.update_meta(&mut g, |m| {
            m.indexes.retain(|i| i.index_name != index_name);
            Ok(())
        })?;
        // A scalar index: its in-memory sorted orders go.
        for s in &g.segments {
            s.paths.lock().remove(&def.id);
        }
        if let Some(si) = g.meta.schema.scalar_index(&def.field_name) {
            for s in &mut g.segments {
                if let Some(slot) = s.sorted.get_mut(si) {
                    *slot = once_cell::sync::OnceCell::new();
                }
            }
        }
        // Detach the built indexes, then forget their files: the manifest first, so a
        // crash in between leaves only orphan files (removed on open).
        let mut files = Vec::new();
        let prefix = g.prefix.clone();
        for s in &mut g.segments {
            for slot in &mut s.indexes {
                if slot.as_ref().is_some_and(|i| i.file.index_id == def.id) {
                    let ix = slot.take().unwrap();
                    files.push(format!("{prefix}segments/{}/{}", s.id, ix.file.file));
                }
            }
        }
        if !files.is_empty() {
            let ts = g.flushed_ts;
            g.save_manifest(ts)?;
            for f in files {
                let _ = g.store.delete(&f);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- writes

    fn log_and_apply(&self, g: &mut Collection, op: WalOp) -> Result<(u64, Timestamp)> {
        let bytes =
            rmp_serde::to_vec(&op).map_err(|e| invalid(format!("cannot encode write: {e}")))?;
        let (seq, ts) = self.wal.append(g.meta.id, &bytes)?;
        g.apply(&op, ts, &self.config.policy());
        Ok((seq, ts))
    }

    /// Inserts rows. The batch is validated whole (schema, dimensions, NaN/Inf, duplicate
    /// and existing primary keys) before anything is written; returns once durable.
    pub fn insert(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, &[], false)
    }

    /// Inserts rows, replacing any live rows with the same primary keys.
    pub fn upsert(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, &[], true)
    }

    /// Inserts (or upserts) rows whose vector fields come as columns, `rows × dim`
    /// floats per named field ([`CollectionSchema::validate_columns`]): the columnar
    /// protocols' path, which spares each float a JSON value.
    pub fn write_columns(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
        vectors: &[(String, Vec<f32>)],
        upsert: bool,
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, vectors, upsert)
    }

    fn write_rows(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
        vectors: &[(String, Vec<f32>)],
        upsert: bool,
    ) -> Result<WriteResult> {
        if rows.is_empty() {
            return Err(invalid("no rows given: 'data' must hold at least one row"));
        }
        let c = self.coll(coll)?;
        // Embedding is slow: done before the collection's write lock is taken. The schema
        // is copied only for collections that have functions (not on every insert).
        let with_functions = {
            let g = c.read();
            (!g.meta.schema.functions.is_empty()).then(|| g.meta.schema.clone())
        };
        let filled = match &with_functions {
            Some(schema) => Some(self.apply_functions(schema, rows)?),
            None => None,
        };
        let rows: &[Value] = filled.as_deref().unwrap_or(rows);
        let (seq, res) = {
            let mut g = c.write();
            // Partition-key collections route each row by its key when it is applied
            // (`Collection::apply`); the logged partition is only a placeholder.
            let part = g.write_partition(partition)?;
            let schema = &g.meta.schema;
            let batch = if schema.pk().auto_id && !upsert {
                let start = self.wal.alloc_ts(rows.len() as u64) as i64;
                let mut ids = start..;
                schema.validate_columns(rows, vectors, Some(&mut ids), false)?
            } else {
                schema.validate_columns(rows, vectors, None, upsert)?
            };
            if !upsert {
                if let Some((i, pk)) = batch
                    .pks
                    .iter()
                    .enumerate()
                    .find(|(_, pk)| g.pk_index.contains_key(pk))
                {
                    return Err(EngineError::Row {
                        row: i,
                        field: schema.pk().name.clone(),
                        msg: format!("primary key {pk} already exists; use upsert to replace it"),
                    });
                }
            }
            let ids = batch.pks.clone();
            let op = if upsert {
                WalOp::Upsert {
                    partition: part,
                    batch,
                }
            } else {
                WalOp::Insert {
                    partition: part,
                    batch,
                }
            };
            let (seq, ts) = self.log_and_apply(&mut g, op)?;
            (
                seq,
                WriteResult {
                    count: ids.len(),
                    ids,
                    ts,
                },
            )
        };
        self.wal.sync_to(seq)?;
        self.schedule_interim(&c);
        Ok(res)
    }

    /// Deletes by primary keys and/or filter; returns the number of rows deleted.
    pub fn delete(
        &self,
        coll: &str,
        partition: Option<&str>,
        ids: Option<&[Value]>,
        filter: Option<&str>,
    ) -> Result<usize> {
        let c = self.coll(coll)?;
        let (seq, n) = {
            let mut g = c.write();
            let parts = match partition.filter(|p| !p.is_empty()) {
                Some(p) => Some(HashSet::from([g.partition_id(Some(p))?])),
                None => None,
            };
            let filter = compile_filter(filter, &g.meta.schema)?;
            let idset = ids.map(|ids| self.parse_ids(&g, ids)).transpose()?;
            if filter.is_none() && idset.is_none() {
                return Err(invalid(
                    "delete needs 'filter' or 'ids' (to delete everything, drop the collection)",
                ));
            }
            let mut pks = Vec::new();
            let indexed = g.scalar_indexed();
            for s in &g.segments {
                if parts.as_ref().is_some_and(|p| !p.contains(&s.partition)) {
                    continue;
                }
                for i in g
                    .allowed(
                        s,
                        Timestamp::MAX - 1,
                        filter.as_ref(),
                        idset.as_ref(),
                        &indexed,
                    )
                    .iter_ones()
                {
                    pks.push(s.pks[i].clone());
                }
            }
            if pks.is_empty() {
                return Ok(0);
            }
            let n = pks.len();
            let (seq, _) = self.log_and_apply(&mut g, WalOp::Delete { pks })?;
            (seq, n)
        };
        self.wal.sync_to(seq)?;
        Ok(n)
    }

    fn parse_ids(&self, g: &Collection, ids: &[Value]) -> Result<HashSet<PrimaryKey>> {
        let pkf = g.meta.schema.pk();
        ids.iter()
            .map(|v| {
                PrimaryKey::from_json(v, pkf).map_err(|m| invalid(format!("invalid id {v}: {m}")))
            })
            .collect()
    }

    // ---------------------------------------------------------------- reads

    /// The snapshot timestamp a read at `level` uses (may wait, for Strong).
    pub fn snapshot(&self, level: Consistency) -> Result<Timestamp> {
        Ok(match level {
            Consistency::Strong => {
                self.wal.sync_all()?;
                self.wal.durable_ts()
            }
            Consistency::Session => self.wal.durable_ts(),
            // "At most the bound stale": Milvus's contract (a read waits only until the
            // data is no more than `bounded_staleness_ms` behind). A standalone engine
            // applies every write before acknowledging it, so its freshest state never
            // waits and is never behind: Bounded reads it, like Session.
            Consistency::Bounded => self.wal.durable_ts(),
            Consistency::Eventually => Timestamp::MAX - 1,
        })
    }

    fn read_snapshot(&self, c: &CollRef, level: Option<Consistency>) -> Result<Timestamp> {
        let level = level.unwrap_or_else(|| c.read().meta.consistency);
        self.snapshot(level)
    }

    fn check_loaded(g: &Collection) -> Result<()> {
        if g.meta.loaded {
            Ok(())
        } else {
            Err(invalid(format!(
                "collection '{}' is released; load it before searching or querying",
                g.meta.name
            )))
        }
    }

    /// Query by filter and/or ids. `output_fields == ["count(*)"]` returns the count.
    pub fn query(&self, coll: &str, q: &QueryRequest) -> Result<Vec<Map<String, Value>>> {
        let c = self.coll(coll)?;
        let snap = match q.snapshot {
            Some(s) => s,
            None => self.read_snapshot(&c, q.consistency)?,
        };
        let g = c.read();
        Self::check_loaded(&g)?;
        let filter = compile_filter(q.filter.as_deref(), &g.meta.schema)?;
        let ids = q
            .ids
            .as_deref()
            .map(|ids| self.parse_ids(&g, ids))
            .transpose()?;
        let parts = g.read_partitions(&q.partitions, q.filter.as_deref())?;
        let is_count = q
            .output_fields
            .iter()
            .any(|f| f.replace(' ', "").eq_ignore_ascii_case("count(*)"));
        if is_count {
            if q.output_fields.len() > 1 {
                return Err(invalid(
                    "count(*) cannot be combined with other output fields",
                ));
            }
            let n = g.count(snap, filter.as_ref(), ids.as_ref(), parts.as_ref());
            let mut m = Map::new();
            m.insert("count(*)".into(), Value::from(n));
            return Ok(vec![m]);
        }
        if filter.is_none() && ids.is_none() && q.limit.is_none() {
            return Err(invalid("query needs a 'filter', 'ids' or a 'limit'"));
        }
        if let Some(l) = q.limit {
            check_topk(l, q.offset)?;
        }
        let spec = g.output_spec(&q.output_fields)?;
        g.query(
            snap,
            filter.as_ref(),
            ids.as_ref(),
            parts.as_ref(),
            &spec,
            q.limit,
            q.offset,
            &mut OutputBudget::new(self.config.max_output_bytes),
        )
    }

    /// The metric of a vector field: from its index, else the request's, else COSINE
    /// (Milvus's AUTOINDEX default). A request metric that contradicts the index is an error.
    fn metric_for(g: &Collection, field: &str, requested: Option<Metric>) -> Result<Metric> {
        match (
            g.meta.indexes.iter().find(|i| i.field_name == field),
            requested,
        ) {
            (Some(ix), Some(m)) if ix.metric_type != m => Err(invalid(format!(
                "metric type mismatch: field '{field}' is indexed with {}, the search asked for {}",
                ix.metric_type.as_str(),
                m.as_str()
            ))),
            (Some(ix), _) => Ok(ix.metric_type),
            (None, Some(Metric::BM25)) => Err(invalid(format!(
                "metric BM25 is for BM25 fields; '{field}' is a FloatVector"
            ))),
            (None, m) => {
                let binary = g
                    .meta
                    .schema
                    .field(field)
                    .is_some_and(|f| f.data_type == crate::DataType::BinaryVector);
                match m {
                    Some(m) if m.is_binary() != binary => Err(invalid(format!(
                        "metric {} does not apply to field '{field}' ({})",
                        m.as_str(),
                        if binary {
                            "a BinaryVector takes HAMMING or JACCARD"
                        } else {
                            "HAMMING and JACCARD are for BinaryVector fields"
                        }
                    ))),
                    Some(m) => Ok(m),
                    // Milvus's defaults: COSINE for dense fields, HAMMING for binary.
                    None if binary => Ok(Metric::HAMMING),
                    None => Ok(Metric::COSINE),
                }
            }
        }
    }

    /// Vector search. One list of hits per query vector.
    pub fn search(&self, coll: &str, r: &SearchRequest) -> Result<Vec<Vec<Hit>>> {
        Ok(self.search_ex(coll, r)?.hits)
    }

    /// Whether [`Engine::search_ex`] of `r` may wait on something other than the CPU and
    /// the collection's lock: a text or image to embed (a model), a rerank function, the
    /// WAL's group commit (Strong consistency, asked for or the collection's default), or
    /// a segment file not yet fetched from remote storage, or a writer holding the
    /// collection's lock right now. A caller that runs searches on an event loop sends
    /// those elsewhere. An unknown collection answers `false` (the search fails at once).
    /// Never waits itself.
    pub fn search_may_block(&self, coll: &str, r: &SearchRequest) -> bool {
        if !r.texts.is_empty() || !r.images.is_empty() || r.function_score.is_some() {
            return true;
        }
        let Ok(c) = self.coll(coll) else {
            return false;
        };
        let Some(g) = c.try_read() else {
            return true;
        };
        let level = r.consistency.unwrap_or(g.meta.consistency);
        (level == Consistency::Strong && r.snapshot.is_none())
            || (self.store.is_remote()
                && g.segments.iter().any(|s| {
                    let (v, i) = s.unfetched();
                    !v.is_empty() || !i.is_empty()
                }))
    }

    /// The query vectors that a search's texts or images become under its anns field's
    /// embedding function, as [`Engine::search_ex`] computes them; `None` when the
    /// request carries neither, or its field is sparse (a BM25 search reads its texts
    /// itself). A cluster proxy embeds a query once with it and sends the vectors to
    /// the shards.
    pub fn embed_search_data(
        &self,
        coll: &str,
        r: &SearchRequest,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        if r.ids.is_some() || (r.texts.is_empty() && r.images.is_empty()) {
            return Ok(None);
        }
        if r.texts.len().max(r.images.len()) > self.config.max_nq {
            return Err(invalid(format!(
                "a search may carry at most {} queries (max_nq), got {}; split it",
                self.config.max_nq,
                r.texts.len().max(r.images.len())
            )));
        }
        let c = self.coll(coll)?;
        let g = c.read();
        let field = anns_field(&g.meta.name, &g.meta.schema, r)?;
        if field.is_sparse() {
            return Ok(None);
        }
        let plan = QueryEmbedding::plan(&g.meta.name, &g.meta.schema, field, r)?;
        drop(g);
        Ok(Some(plan.run(self.embedder()?.as_ref(), r)?))
    }

    /// Vector search, also reporting how it ran (indexed vs exact segments, the knob a
    /// recall target resolved to).
    pub fn search_ex(&self, coll: &str, r: &SearchRequest) -> Result<SearchOutcome> {
        if let Some(fs) = &r.function_score {
            return self.search_with_functions(coll, r, fs);
        }
        let c = self.coll(coll)?;
        let snap = match r.snapshot {
            Some(s) => s,
            None => self.read_snapshot(&c, r.consistency)?,
        };
        if self.store.is_remote() && c.read().meta.loaded {
            // Fetch what is not in memory yet before taking the lock for the search, so
            // that writers never wait for the network (a no-op once all is fetched).
            prefetch(&c, None)?;
        }
        let g = c.read();
        Self::check_loaded(&g)?;
        let schema = &g.meta.schema;
        if r.limit == 0 {
            return Err(invalid("limit must be at least 1"));
        }
        let topk = check_topk(r.limit, r.offset)?;
        let nq = match &r.ids {
            Some(ids) => ids.len(),
            None => r
                .vectors
                .len()
                .max(r.texts.len())
                .max(r.images.len())
                .max(r.sparse.len()),
        };
        if nq > self.config.max_nq {
            return Err(invalid(format!(
                "a search may carry at most {} queries (max_nq), got {nq}; split it",
                self.config.max_nq
            )));
        }
        if nq.saturating_mul(topk) > self.config.max_result_rows {
            return Err(invalid(format!(
                "{nq} queries × (limit + offset) {topk} = {} hits is over the {}-hit limit of one search (max_result_rows); lower the limit or split the queries",
                nq.saturating_mul(topk),
                self.config.max_result_rows
            )));
        }
        let field = anns_field(&g.meta.name, schema, r)?;
        if r.bm25_stats.is_some()
            && !(field.is_sparse()
                && !r.texts.is_empty()
                && schema
                    .function_for_output(&field.name)
                    .is_some_and(|f| f.kind == FunctionKind::BM25))
        {
            return Err(invalid(format!(
                "'bm25Stats' weighs the terms of a text search of a field filled by a BM25 function; this search of field '{}' is not one",
                field.name
            )));
        }
        if r.knobs.drop_ratio.is_some_and(|x| !(0.0..1.0).contains(&x)) {
            return Err(invalid("'drop_ratio_search' must be in [0, 1)"));
        }
        if field.is_sparse() {
            let field = field.clone();
            return self.search_sparse(&g, r, &field, snap);
        }
        if !r.sparse.is_empty() {
            return Err(invalid(format!(
                "'data' holds sparse vectors but field '{}' is a FloatVector; send lists of numbers",
                field.name
            )));
        }
        let vi = schema.vector_index(&field.name).unwrap();
        let dim = field.vec_len();
        let binary = field.data_type == crate::DataType::BinaryVector;
        let metric = Self::metric_for(&g, &field.name, r.metric)?;
        let queries = match &r.ids {
            None if !r.texts.is_empty() || !r.images.is_empty() => {
                let plan = QueryEmbedding::plan(&g.meta.name, schema, field, r)?;
                let emb = self.embedder()?;
                drop(g);
                let v = plan.run(emb.as_ref(), r)?;
                let mut r2 = r.clone();
                r2.texts.clear();
                r2.images.clear();
                r2.vectors = v;
                return self.search_ex(coll, &r2);
            }
            Some(ids) => {
                let pks: Vec<PrimaryKey> = ids
                    .iter()
                    .map(|v| {
                        PrimaryKey::from_json(v, schema.pk())
                            .map_err(|m| invalid(format!("invalid id {v}: {m}")))
                    })
                    .collect::<Result<_>>()?;
                g.vectors_of(&pks, vi, snap)?
            }
            None => {
                if r.vectors.is_empty() {
                    return Err(invalid("'data' must hold at least one query vector"));
                }
                for (i, q) in r.vectors.iter().enumerate() {
                    if binary && q.len() != dim {
                        return Err(invalid(format!(
                            "query vector {i} has {} bytes; field '{}' is a BinaryVector of {} bits, given as {dim} bytes",
                            q.len(),
                            field.name,
                            dim * 8
                        )));
                    }
                    if q.len() != dim {
                        return Err(invalid(format!(
                            "query vector {i} has dimension {}, field '{}' expects {dim}",
                            q.len(),
                            field.name
                        )));
                    }
                    if binary {
                        crate::schema::check_bytes(q, dim)
                            .map_err(|(_, m)| invalid(format!("query vector {i}: {m}")))?;
                    }
                    if let Some(j) = q.iter().position(|x| !x.is_finite()) {
                        return Err(invalid(format!(
                            "query vector {i} has a non-finite value at position {j}"
                        )));
                    }
                    crate::schema::check_magnitude(q)
                        .map_err(|m| invalid(format!("query vector {i}: {m}")))?;
                }
                r.vectors.clone()
            }
        };
        let k = r.knobs;
        if k.ef.is_some_and(|e| e == 0 || e > 32768) {
            return Err(invalid("'ef' must be in 1..=32768"));
        }
        if k.nprobe.is_some_and(|e| e == 0 || e > 65536) {
            return Err(invalid("'nprobe' must be in 1..=65536"));
        }
        if k.recall.is_some_and(|x| !(x > 0.0 && x <= 1.0)) {
            return Err(invalid("'recall' must be a target in (0, 1], e.g. 0.95"));
        }
        if k.refine.is_some_and(|e| e == 0 || e > 1000) {
            return Err(invalid("'refine' must be in 1..=1000"));
        }
        self.run_search(
            &g,
            r,
            Probe::Dense {
                field: vi,
                queries: &queries,
            },
            metric,
            snap,
        )
    }

    /// The part of a search both kinds share: filter, partitions, grouping and output
    /// fields resolved, then the collection searched with `probe`.
    fn run_search(
        &self,
        g: &Collection,
        r: &SearchRequest,
        probe: Probe<'_>,
        metric: Metric,
        snap: Timestamp,
    ) -> Result<SearchOutcome> {
        let filter = compile_filter(r.filter.as_deref(), &g.meta.schema)?;
        let parts = g.read_partitions(&r.partitions, r.filter.as_deref())?;
        let group_by = match &r.group_by {
            Some(f) if !f.is_empty() => Some(g.group_by_field(f)?),
            _ => None,
        };
        let group_size = r.group_size.unwrap_or(1);
        if group_size == 0 || group_size > 1024 {
            return Err(invalid("groupSize must be in 1..=1024"));
        }
        let spec = g.output_spec(&r.output_fields)?;
        g.search(&ResolvedSearch {
            knobs: r.knobs,
            probe,
            metric,
            filter: filter.as_ref(),
            partitions: parts.as_ref(),
            limit: r.limit,
            offset: r.offset,
            radius: r.radius,
            range_filter: r.range_filter,
            group_by,
            max_output_bytes: self.config.max_output_bytes,
            group_size,
            output: &spec,
            snapshot: snap,
        })
    }

    /// The BM25 statistics a search of `r.texts` on `r.anns_field` (a field filled by a
    /// BM25 function) weighs its terms by: the rows visible at the request's consistency
    /// level, their total length, and each query term's document frequency. A cluster
    /// proxy sums them over its shards and passes the sum in
    /// [`SearchRequest::bm25_stats`].
    pub fn bm25_stats(
        &self,
        coll: &str,
        r: &SearchRequest,
    ) -> Result<crate::collection::Bm25Stats> {
        if r.texts.len() > self.config.max_nq {
            return Err(invalid(format!(
                "a search may carry at most {} queries (max_nq), got {}; split it",
                self.config.max_nq,
                r.texts.len()
            )));
        }
        let c = self.coll(coll)?;
        let snap = match r.snapshot {
            Some(s) => s,
            None => self.read_snapshot(&c, r.consistency)?,
        };
        let g = c.read();
        Self::check_loaded(&g)?;
        let schema = &g.meta.schema;
        let name = r
            .anns_field
            .as_deref()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("BM25 statistics need 'annsField'"))?;
        let f = schema
            .function_for_output(name)
            .filter(|f| f.kind == FunctionKind::BM25)
            .ok_or_else(|| invalid(format!("field '{name}' is not filled by a BM25 function")))?;
        let queries = bm25_term_counts(schema, f, &r.texts)?;
        let field = schema
            .scalar_index(name)
            .ok_or_else(|| invalid(format!("field '{name}' is not a sparse field")))?;
        g.bm25_stats(field, &queries, snap)
    }

    /// [`Self::search_ex`] on a SparseFloatVector field: IP over sparse queries, or BM25
    /// over analyzed texts when a BM25 function fills the field.
    fn search_sparse(
        &self,
        g: &Collection,
        r: &SearchRequest,
        field: &crate::schema::FieldSchema,
        snap: Timestamp,
    ) -> Result<SearchOutcome> {
        let schema = &g.meta.schema;
        if r.ids.is_some() || !r.vectors.is_empty() || !r.images.is_empty() {
            return Err(invalid(format!(
                "field '{}' is a SparseFloatVector: 'data' must hold sparse vectors ({{\"17\": 0.5, ...}} or {{\"indices\": [...], \"values\": [...]}})",
                field.name
            )));
        }
        let bm25_fn = schema
            .function_for_output(&field.name)
            .filter(|f| f.kind == FunctionKind::BM25);
        let queries = match bm25_fn {
            Some(f) => {
                if r.texts.is_empty() {
                    return Err(invalid(format!(
                        "field '{}' is filled by the BM25 function '{}': search it with texts in 'data'",
                        field.name, f.name
                    )));
                }
                bm25_term_counts(schema, f, &r.texts)?
            }
            None => {
                if !r.texts.is_empty() {
                    return Err(invalid(format!(
                        "field '{}' has no BM25 function, so it cannot be searched by text; send sparse vectors",
                        field.name
                    )));
                }
                if r.sparse.is_empty() {
                    return Err(invalid("'data' must hold at least one sparse query vector"));
                }
                r.sparse
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        crate::schema::parse_sparse(v)
                            .map_err(|m| invalid(format!("query {i}: {m}")))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let def = g.meta.indexes.iter().find(|i| i.field_name == field.name);
        let default_metric = if bm25_fn.is_some() {
            Metric::BM25
        } else {
            Metric::IP
        };
        let metric = def.map_or(default_metric, |d| d.metric_type);
        let bm25 = match bm25_fn {
            Some(_) => {
                let p = |k: &str, d: f32| {
                    def.and_then(|d| d.params.get(k))
                        .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
                        .map_or(d, |x| x as f32)
                };
                Some((p("bm25_k1", 1.2), p("bm25_b", 0.75)))
            }
            None => None,
        };
        if let Some(m) = r.metric.filter(|m| *m != metric) {
            return Err(invalid(format!(
                "metric type mismatch: sparse field '{}' is searched with {}, the search asked for {}",
                field.name,
                metric.as_str(),
                m.as_str()
            )));
        }
        let algo = match def.and_then(|d| d.params.get("inverted_index_algo")) {
            Some(v) => v
                .as_str()
                .and_then(magpie_index::SparseAlgo::parse)
                .ok_or_else(|| invalid(format!("unknown inverted_index_algo {v}")))?,
            None => magpie_index::SparseAlgo::default(),
        };
        self.run_search(
            g,
            r,
            Probe::Sparse {
                field: schema.scalar_index(&field.name).unwrap(),
                queries: &queries,
                algo,
                indexed: def.is_some(),
                bm25,
                bm25_stats: r.bm25_stats.as_ref(),
            },
            metric,
            snap,
        )
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

/// The term counts of `texts` by the analyzer of BM25 function `f`'s input field.
fn bm25_term_counts(
    schema: &crate::schema::CollectionSchema,
    f: &crate::function::FunctionSchema,
    texts: &[String],
) -> Result<Vec<magpie_index::SparseVector>> {
    let analyzer = schema
        .field(f.input())
        .and_then(|x| x.analyzer().ok())
        .ok_or_else(|| invalid(format!("function '{}': no analyzer", f.name)))?;
    texts
        .iter()
        .map(|t| {
            let tf = crate::analyzer::term_frequencies(&analyzer.analyze(t));
            magpie_index::SparseVector::from_pairs(tf).map_err(invalid)
        })
        .collect()
}

/// The field a search ranks by: `annsField`, or the collection's only vector field.
fn anns_field<'a>(
    collection: &str,
    schema: &'a CollectionSchema,
    r: &SearchRequest,
) -> Result<&'a crate::schema::FieldSchema> {
    match &r.anns_field {
        Some(f) if !f.is_empty() => {
            let fs = schema.field(f).ok_or_else(|| EngineError::FieldNotFound {
                collection: collection.to_string(),
                field: f.clone(),
            })?;
            if !fs.is_vector() && !fs.is_sparse() {
                return Err(invalid(format!("annsField '{f}' is not a vector field")));
            }
            Ok(fs)
        }
        _ => {
            let v: Vec<_> = schema
                .fields
                .iter()
                .filter(|f| f.is_vector() || f.is_sparse())
                .collect();
            if v.len() != 1 {
                return Err(invalid(format!(
                    "the collection has {} vector fields ({}); name one in 'annsField'",
                    v.len(),
                    v.iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(v[0])
        }
    }
}

/// How a search's texts or images become query vectors: the embedding function that
/// fills the anns field, checked against the kind of data.
struct QueryEmbedding {
    function: String,
    model: String,
    by_text: bool,
}

impl QueryEmbedding {
    fn plan(
        collection: &str,
        schema: &CollectionSchema,
        field: &crate::schema::FieldSchema,
        r: &SearchRequest,
    ) -> Result<Self> {
        if !r.texts.is_empty() && !r.images.is_empty() {
            return Err(invalid("'data' holds both texts and images; send one kind"));
        }
        let by_text = !r.texts.is_empty();
        let f = schema.function_for_output(&field.name).ok_or_else(|| {
            invalid(format!(
                "field '{}' of collection '{collection}' has no embedding function, so it cannot be searched by {}; search with vectors",
                field.name,
                if by_text { "text" } else { "image" }
            ))
        })?;
        if !by_text && f.kind != FunctionKind::ImageEmbedding {
            return Err(invalid(format!(
                "field '{}' is filled by the TextEmbedding function '{}', so it cannot be searched by image",
                field.name, f.name
            )));
        }
        Ok(QueryEmbedding {
            function: f.name.clone(),
            model: f.model().unwrap_or_default().to_string(),
            by_text,
        })
    }

    fn run(&self, emb: &dyn Embedder, r: &SearchRequest) -> Result<Vec<Vec<f32>>> {
        let fail = |m: String| invalid(format!("function '{}': {m}", self.function));
        if self.by_text {
            let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
            emb.embed_queries(&self.model, &texts).map_err(fail)
        } else {
            let inputs: Vec<ImageInput> = r.images.iter().map(|b| ImageInput::Bytes(b)).collect();
            emb.embed_images(&self.model, &inputs)
                .map_err(fail)?
                .into_iter()
                .enumerate()
                .map(|(i, x)| x.map_err(|m| invalid(format!("query image {i}: {m}"))))
                .collect()
        }
    }
}
