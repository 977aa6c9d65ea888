//! One collection in memory: its segments, primary-key map, and the operations that run
//! under the collection's lock (apply a logged write, flush, compact, read).

use crate::catalog::{CollectionMeta, Manifest, ManifestSegment};
use crate::column::JsonCast;
use crate::error::{invalid, EngineError, Result};
use crate::filter::{Columns, Filter, JsonPath};
use crate::indexspec;
use crate::schema::{CollectionSchema, DataType, RowBatch};
use crate::segment::SegIndex;
use crate::segment::{SegState, Segment, LIVE};
use crate::storage::Storage;
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::{Bitset, Elem, FlatIndex, Knob, Metric, SearchParams, VectorIndexRead};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

use std::sync::Arc;

/// Sealing thresholds and other per-engine tunables.
#[derive(Clone, Debug)]
pub struct SealPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
}

/// A logged write. What the WAL stores (MessagePack) and replay re-applies.
#[derive(Debug, Serialize, Deserialize)]
pub enum WalOp {
    Insert { partition: u64, batch: RowBatch },
    Upsert { partition: u64, batch: RowBatch },
    Delete { pks: Vec<PrimaryKey> },
}

impl WalOp {
    /// Checks that a decoded record fits `schema`: one primary key of the right type
    /// per row, every vector column `rows × dim` long, one value per row in every scalar
    /// column, dynamic fields only where enabled. Replay runs this on every record, so a
    /// log written by another version, or damaged in a way its checksum cannot see, is
    /// skipped with an error instead of corrupting a segment (fuzzed: `fuzz/`, `wal`).
    pub fn check(&self, schema: &CollectionSchema) -> std::result::Result<(), String> {
        let batch = match self {
            WalOp::Insert { batch, .. } | WalOp::Upsert { batch, .. } => batch,
            WalOp::Delete { pks } => return check_pks(pks, schema),
        };
        let n = batch.len();
        check_pks(&batch.pks, schema)?;
        let dims: Vec<usize> = schema.vector_fields().map(|f| f.vec_len()).collect();
        if batch.vectors.len() != dims.len() {
            return Err(format!(
                "{} vector columns, the schema has {}",
                batch.vectors.len(),
                dims.len()
            ));
        }
        for (col, dim) in batch.vectors.iter().zip(&dims) {
            if n.checked_mul(*dim) != Some(col.len()) {
                return Err(format!(
                    "a vector column holds {} floats for {n} rows of dim {dim}",
                    col.len()
                ));
            }
        }
        let scalars = schema.scalar_fields().count();
        if batch.scalars.len() != scalars || batch.scalars.iter().any(|c| c.len() != n) {
            return Err("scalar columns do not match the schema or the row count".into());
        }
        let dynamic_ok = if schema.enable_dynamic_field {
            batch.dynamic.len() == n
        } else {
            batch.dynamic.is_empty()
        };
        if !dynamic_ok {
            return Err("dynamic fields do not match the schema or the row count".into());
        }
        Ok(())
    }
}

fn check_pks(pks: &[PrimaryKey], schema: &CollectionSchema) -> std::result::Result<(), String> {
    let int = schema.pk().data_type == DataType::Int64;
    if pks.iter().any(|pk| matches!(pk, PrimaryKey::Int(_)) != int) {
        return Err("a primary key has the wrong type".into());
    }
    Ok(())
}

pub struct Collection {
    pub meta: CollectionMeta,
    /// Where the collection's manifest and segments live, and its key prefix there
    /// (`collections/<id>/`).
    pub store: Arc<dyn Storage>,
    pub prefix: String,
    pub segments: Vec<Segment>,
    /// Live version of each primary key: (segment id, row offset).
    pub pk_index: HashMap<PrimaryKey, (u64, u32)>,
    pub flushed_ts: Timestamp,
    pub applied_ts: Timestamp,
    pub next_segment_id: u64,
}

/// Which fields a read returns.
pub struct OutputSpec {
    pk_name: String,
    scalars: Vec<(String, usize)>,
    vectors: Vec<(String, usize)>,
    dynamic_all: bool,
    dynamic_keys: Vec<String>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: PrimaryKey,
    /// Milvus semantics: squared L2 distance, or IP / cosine similarity.
    pub distance: f32,
    pub fields: Map<String, Value>,
}

/// Per-request index knobs (Milvus `searchParams.params`): `ef`, `nprobe`, and Magpie's
/// `recall` target; `refine` for quantized indexes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SearchKnobs {
    pub ef: Option<usize>,
    pub nprobe: Option<usize>,
    pub recall: Option<f32>,
    pub refine: Option<usize>,
    /// Sparse fields: the fraction of each query's smallest entries left out
    /// (`drop_ratio_search`, in `[0, 1)`).
    pub drop_ratio: Option<f32>,
}

impl SearchKnobs {
    /// Index search parameters for the top `k` of the `allow`ed rows within the score
    /// bounds, with these knobs.
    fn params<'a>(
        &self,
        allow: Option<&'a Bitset>,
        min_score: Option<f32>,
        max_score: Option<f32>,
        k: usize,
    ) -> SearchParams<'a> {
        SearchParams {
            allow,
            min_score,
            max_score,
            ef: self.ef,
            nprobe: self.nprobe,
            recall: self.recall,
            refine: self.refine,
            ..SearchParams::top_k(k)
        }
    }
}

/// What a search compares with: dense query vectors against a vector field, or sparse
/// ones against a sparse field (a scalar column).
#[derive(Clone, Copy)]
pub enum Probe<'a> {
    Dense {
        /// Position among the vector fields.
        field: usize,
        queries: &'a [Vec<f32>],
    },
    Sparse {
        /// Position among the scalar fields.
        field: usize,
        queries: &'a [magpie_index::SparseVector],
        algo: magpie_index::SparseAlgo,
        /// Whether the field has a sparse index (reported as indexed segments).
        indexed: bool,
        /// BM25 `(k1, b)` for a field filled by a BM25 function: `queries` then hold
        /// the query's term counts, weighted here by the collection's statistics.
        bm25: Option<(f32, f32)>,
        /// Statistics to weight by instead of this collection's own (a cluster shard
        /// scores with the whole collection's, summed over its shards).
        bm25_stats: Option<&'a Bm25Stats>,
    },
}

/// What BM25 weighs a query's terms by: the rows (`n`), their total length in terms
/// (`total`) and, per query term, the rows holding it (`df`). Sums over disjoint sets of
/// rows (a cluster's shards) are the statistics of their union.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bm25Stats {
    pub n: u64,
    pub total: f64,
    pub df: std::collections::BTreeMap<u32, u64>,
}

impl Bm25Stats {
    /// Adds `other`'s rows (disjoint from this one's).
    pub fn add(&mut self, other: &Bm25Stats) {
        self.n += other.n;
        self.total += other.total;
        for (t, c) in &other.df {
            *self.df.entry(*t).or_default() += c;
        }
    }
}

impl Probe<'_> {
    fn len(&self) -> usize {
        match self {
            Probe::Dense { queries, .. } => queries.len(),
            Probe::Sparse { queries, .. } => queries.len(),
        }
    }
}

/// Hits plus how the search was carried out.
#[derive(Debug, Default)]
pub struct SearchOutcome {
    /// One list per query.
    pub hits: Vec<Vec<Hit>>,
    /// The metric the hits' distances are in.
    pub metric: Option<Metric>,
    /// Segments searched through a built index, and exactly.
    pub indexed_segments: usize,
    pub exact_segments: usize,
    /// Segments without a built index searched through their interim graph (over
    /// `interim_rows` rows), and rows scanned exactly (the exact segments' and the
    /// rows after each interim graph).
    pub interim_segments: usize,
    pub interim_rows: usize,
    /// Threads the dense searches ran on: 1, or more when many queries or a large exact
    /// scan were split among spare cores (`crate::par`; the more of the index searches
    /// and the exact scans); 0 when no dense segment was searched.
    pub scan_threads: usize,
    pub exact_rows: usize,
    /// The knob the (first) indexed segment resolved the request to.
    pub knob: Option<Knob>,
    /// With a filter: rows that passed it (and were visible) over rows searched, and how
    /// many segments each plan served (`exact`, `walk`, `twoHopWalk`, `widerProbe`,
    /// `unfiltered`; see the indexes' `filter_plan`).
    pub filter_passed: usize,
    pub filter_rows: usize,
    pub filter_plans: std::collections::BTreeMap<&'static str, usize>,
    /// Segments whose filter result came from their filter cache.
    pub filter_cached: usize,
}

/// What a search needs once names are resolved (built by the engine).
pub struct ResolvedSearch<'a> {
    pub knobs: SearchKnobs,
    pub probe: Probe<'a>,
    pub metric: Metric,
    pub filter: Option<&'a Filter>,
    pub partitions: Option<&'a HashSet<u64>>,
    pub limit: usize,
    pub offset: usize,
    pub radius: Option<f32>,
    pub range_filter: Option<f32>,
    pub group_by: Option<usize>,
    pub group_size: usize,
    pub output: &'a OutputSpec,
    pub snapshot: Timestamp,
    /// Most bytes of output fields the hits may carry (see [`OutputBudget`]).
    pub max_output_bytes: usize,
}

/// Bounds what one read returns: rows are charged their approximate JSON size as they
/// are rendered, and the read fails with a 400 naming the limit once the total passes
/// it (Milvus's `maxOutputSize`), instead of building an unbounded response.
pub struct OutputBudget {
    max: usize,
    used: usize,
}

impl OutputBudget {
    pub fn new(max: usize) -> Self {
        Self { max, used: 0 }
    }

    pub fn charge(&mut self, row: &Map<String, Value>) -> Result<()> {
        self.used += row
            .iter()
            .map(|(k, v)| k.len() + 4 + json_bytes(v))
            .sum::<usize>()
            + 2;
        if self.used > self.max {
            return Err(invalid(format!(
                "the result is over {} bytes (max_output_bytes); add a limit, page with offset, or ask for fewer output fields",
                self.max
            )));
        }
        Ok(())
    }
}

/// Approximate size of a value as JSON text (numbers count as ~10 bytes). Iterative, so
/// any depth is safe.
pub fn json_bytes(v: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 10,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len()
            }
            Value::Object(o) => {
                for (k, v) in o {
                    total += k.len() + 4;
                    stack.push(v);
                }
                2
            }
        };
    }
    total
}

impl Collection {
    /// Key prefix of segment `id`'s files.
    pub fn seg_prefix(&self, id: u64) -> String {
        format!("{}segments/{id}/", self.prefix)
    }

    fn manifest_key(&self) -> String {
        format!("{}{}", self.prefix, crate::storage::MANIFEST_FILE)
    }

    /// Opens a collection from its storage prefix (manifest + flushed segments).
    /// Segments of partitions that no longer exist, and segment files the manifest does
    /// not list (left by a crash mid-flush or mid-compaction), are removed.
    pub fn open(meta: CollectionMeta, store: Arc<dyn Storage>, prefix: &str) -> Result<Collection> {
        let manifest = Manifest::load(
            &*store,
            &format!("{prefix}{}", crate::storage::MANIFEST_FILE),
        )?;
        let parts: HashSet<u64> = meta.partitions.iter().map(|p| p.id).collect();
        let mut segments = Vec::new();
        let mut listed = HashSet::new();
        for ms in &manifest.segments {
            if !parts.contains(&ms.partition) {
                continue;
            }
            listed.insert(ms.id.to_string());
            let sp = format!("{prefix}segments/{}/", ms.id);
            let mut seg = Segment::load(&store, &sp, ms.deletes_gen)?;
            seg.check_schema(&meta.schema, &store.locate(&sp))?;
            Segment::remove_old_deletes(&*store, &sp, ms.deletes_gen);
            load_indexes(&meta, &store, &sp, &mut seg, &ms.indexes);
            segments.push(seg);
        }
        let seg_root = format!("{prefix}segments/");
        let mut unlisted = HashSet::new();
        for key in store.list(&seg_root)? {
            let id = key[seg_root.len()..].split('/').next().unwrap_or("");
            if !listed.contains(id) {
                unlisted.insert(id.to_string());
            }
        }
        for id in unlisted {
            let p = format!("{seg_root}{id}/");
            tracing::info!(path = %store.locate(&p).display(), "removing segment files not in the manifest");
            let _ = store.delete_prefix(&p);
        }
        segments.sort_by_key(|s| s.id);
        let mut c = Collection {
            meta,
            store,
            prefix: prefix.to_string(),
            segments,
            pk_index: HashMap::new(),
            flushed_ts: manifest.flushed_ts,
            applied_ts: manifest.flushed_ts,
            next_segment_id: manifest.next_segment_id.max(1),
        };
        c.rebuild_pk_index();
        Ok(c)
    }

    /// A new, empty growing segment of `partition` with the next segment id.
    pub(crate) fn new_segment(&mut self, partition: u64) -> Segment {
        let schema = &self.meta.schema;
        let dims: Vec<(usize, Elem)> = schema
            .vector_fields()
            .map(|f| (f.vec_len(), f.data_type.elem()))
            .collect();
        let n_scalars = schema.scalar_fields().count();
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        Segment::new_growing(id, partition, &dims, n_scalars)
    }

    pub fn rebuild_pk_index(&mut self) {
        self.pk_index.clear();
        for s in &self.segments {
            for (i, pk) in s.pks.iter().enumerate() {
                if s.deleted_at[i] == LIVE {
                    self.pk_index.insert(pk.clone(), (s.id, i as u32));
                }
            }
        }
    }

    fn seg_pos(&self, id: u64) -> Option<usize> {
        self.segments.binary_search_by_key(&id, |s| s.id).ok()
    }

    pub fn partition_id(&self, name: Option<&str>) -> Result<u64> {
        let name = name.filter(|n| !n.is_empty()).unwrap_or("_default");
        self.meta
            .partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id)
            .ok_or_else(|| EngineError::PartitionNotFound {
                collection: self.meta.name.clone(),
                partition: name.to_string(),
            })
    }

    /// Refuses what names partitions in a partition-key collection (Milvus's rule: rows
    /// go where their key sends them).
    pub fn no_named_partitions(&self) -> Result<()> {
        match self.meta.schema.partition_key() {
            Some(k) => Err(EngineError::InvalidArgument(format!(
                "collection '{}' places rows in partitions by its partition key '{}': partitions cannot be created, dropped or named in a request; filter on '{}' instead",
                self.meta.name, k.name, k.name
            ))),
            None => Ok(()),
        }
    }

    /// The partitions a read looks at: the named ones (empty = all); in a partition-key
    /// collection, the partitions of the key values the filter pins down with a
    /// top-level `key == v` or `key in [...]` (all when it pins none).
    pub fn read_partitions(
        &self,
        names: &[String],
        filter: Option<&str>,
    ) -> Result<Option<HashSet<u64>>> {
        let Some(key) = self.meta.schema.partition_key() else {
            return self.partition_set(names);
        };
        if !names.is_empty() {
            self.no_named_partitions()?;
        }
        let Some(values) = filter
            .and_then(|f| crate::filter::parse(f).ok())
            .and_then(|e| key_values(&e, &key.name))
        else {
            return Ok(None);
        };
        let n = self.meta.partitions.len();
        Ok(Some(
            values
                .iter()
                .map(|v| self.meta.partitions[CollectionSchema::key_partition(v, n)].id)
                .collect(),
        ))
    }

    /// Resolves partition names (empty = all partitions).
    pub fn partition_set(&self, names: &[String]) -> Result<Option<HashSet<u64>>> {
        if names.is_empty() {
            return Ok(None);
        }
        names
            .iter()
            .map(|n| self.partition_id(Some(n)))
            .collect::<Result<HashSet<_>>>()
            .map(Some)
    }

    /// Applies a logged write at `ts`. Never fails: everything was validated before the
    /// write was logged, and replay re-applies exactly what was logged.
    pub fn apply(&mut self, op: &WalOp, ts: Timestamp, policy: &SealPolicy) {
        match op {
            WalOp::Insert { partition, batch } => self.route_insert(*partition, batch, ts, policy),
            WalOp::Upsert { partition, batch } => {
                self.apply_delete(&batch.pks, ts);
                self.route_insert(*partition, batch, ts, policy);
            }
            WalOp::Delete { pks } => self.apply_delete(pks, ts),
        }
        self.applied_ts = self.applied_ts.max(ts);
    }

    /// Inserts into `partition`, or, in a partition-key collection, into the partition
    /// of each row's key (deterministic, so replay puts every row where it was).
    fn route_insert(
        &mut self,
        partition: u64,
        batch: &RowBatch,
        ts: Timestamp,
        policy: &SealPolicy,
    ) {
        let Some(routes) = self.key_routes(batch) else {
            return self.apply_insert(partition, batch, ts, policy);
        };
        let dims: Vec<usize> = self
            .meta
            .schema
            .vector_fields()
            .map(|f| f.vec_len())
            .collect();
        for (id, rows) in routes {
            if rows.len() == batch.len() {
                self.apply_insert(id, batch, ts, policy);
            } else {
                let sub = batch.select(&rows, &dims);
                self.apply_insert(id, &sub, ts, policy);
            }
        }
    }

    /// In a partition-key collection, the rows of `batch` per partition their key
    /// places them in (partition id, row positions; partitions without rows left out);
    /// `None` in other collections.
    pub(crate) fn key_routes(&self, batch: &RowBatch) -> Option<Vec<(u64, Vec<usize>)>> {
        let schema = &self.meta.schema;
        let col = schema.scalar_index(&schema.partition_key()?.name)?;
        let n = self.meta.partitions.len();
        let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, v) in batch.scalars[col].iter().enumerate() {
            by_part[CollectionSchema::key_partition(v, n)].push(i);
        }
        Some(
            by_part
                .into_iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(p, rows)| (self.meta.partitions[p].id, rows))
                .collect(),
        )
    }

    /// The partition a write names: `partition` (default `_default`); in a
    /// partition-key collection, which routes each row by its key when it is applied,
    /// the first partition as a placeholder, and naming one is an error.
    pub(crate) fn write_partition(&self, partition: Option<&str>) -> Result<u64> {
        if self.meta.schema.partition_key().is_some() {
            if partition.is_some_and(|p| !p.is_empty()) {
                self.no_named_partitions()?;
            }
            Ok(self.meta.partitions[0].id)
        } else {
            self.partition_id(partition)
        }
    }

    fn apply_insert(
        &mut self,
        partition: u64,
        batch: &RowBatch,
        ts: Timestamp,
        policy: &SealPolicy,
    ) {
        if batch.is_empty() {
            return;
        }
        let pos = match self
            .segments
            .iter()
            .position(|s| s.state == SegState::Growing && s.partition == partition)
        {
            Some(p) => p,
            None => {
                let seg = self.new_segment(partition);
                self.segments.push(seg);
                self.segments.len() - 1
            }
        };
        let dynamic = self.meta.schema.enable_dynamic_field;
        let seg = &mut self.segments[pos];
        let start = seg.append(batch, ts, dynamic);
        let sid = seg.id;
        if seg.len() >= policy.max_rows || seg.approx_bytes() >= policy.max_bytes {
            seg.state = SegState::Sealed;
        }
        for (i, pk) in batch.pks.iter().enumerate() {
            self.pk_index.insert(pk.clone(), (sid, start + i as u32));
        }
    }

    fn apply_delete(&mut self, pks: &[PrimaryKey], ts: Timestamp) {
        for pk in pks {
            if let Some((sid, off)) = self.pk_index.remove(pk) {
                if let Some(p) = self.seg_pos(sid) {
                    let s = &mut self.segments[p];
                    s.mark_deleted(off as usize, ts);
                }
            }
        }
    }

    /// Seals segments older than the age limit; true if any segment awaits a flush.
    pub fn needs_flush(&mut self, policy: &SealPolicy, now_ms: u64) -> bool {
        let mut need = false;
        for s in &mut self.segments {
            if s.state == SegState::Growing
                && !s.is_empty()
                && now_ms.saturating_sub(s.created_ms) >= policy.max_age_ms
            {
                s.state = SegState::Sealed;
            }
            need |= s.state == SegState::Sealed;
        }
        // New tombstones alone do not seal growing rows into a tiny segment: they are
        // durable in the WAL and reach segment files with the next flush. Only when no
        // growing rows wait (so the flush makes no segment) are they written now.
        let dirty = self
            .segments
            .iter()
            .any(|s| s.state == SegState::Flushed && s.deletes_dirty);
        let growing = self
            .segments
            .iter()
            .any(|s| s.state == SegState::Growing && !s.is_empty());
        need || (dirty && !growing)
    }

    /// Whether [`Collection::compact`] would find work: two or more small flushed
    /// segments in one partition, or a flushed segment with more than `delete_ratio`
    /// of its rows deleted.
    pub fn wants_compaction(&self, delete_ratio: f64, small_rows: usize) -> bool {
        let mut small: HashMap<u64, usize> = HashMap::new();
        for s in &self.segments {
            if s.state != SegState::Flushed || s.is_empty() {
                continue;
            }
            let dead = s.len() - s.live_count();
            if dead as f64 > delete_ratio * s.len() as f64 {
                return true;
            }
            if s.len() < small_rows {
                let n = small.entry(s.partition).or_default();
                *n += 1;
                if *n >= 2 {
                    return true;
                }
            }
        }
        false
    }

    /// Seals every growing segment and persists all segments and tombstones not yet on
    /// disk, then replaces the manifest. On return, every write applied so far is durable
    /// in segment files and `flushed_ts == applied_ts`.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_inner(false)
    }

    fn flush_inner(&mut self, force_manifest: bool) -> Result<()> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let sp = |id: u64| format!("{prefix}segments/{id}/");
        self.segments
            .retain(|s| !(s.state == SegState::Growing && s.is_empty()));
        let mut changed = force_manifest;
        for s in &mut self.segments {
            if s.state != SegState::Flushed {
                s.persist(&*store, &sp(s.id))?;
                s.deletes_dirty = s.deleted_at.iter().any(|d| *d != LIVE);
                changed = true;
            }
            if s.deletes_dirty {
                s.write_deletes(&*store, &sp(s.id), s.deletes_gen + 1)?;
                s.deletes_gen += 1;
                s.deletes_dirty = false;
                changed = true;
            }
        }
        if changed || self.applied_ts > self.flushed_ts {
            self.save_manifest(self.applied_ts)?;
            for s in &self.segments {
                Segment::remove_old_deletes(&*store, &sp(s.id), s.deletes_gen);
            }
        }
        Ok(())
    }

    /// Replaces the manifest: every flushed segment, its tombstone generation and its
    /// index files, with `flushed_ts`. Durable on return.
    pub(crate) fn save_manifest(&mut self, flushed_ts: Timestamp) -> Result<()> {
        let m = Manifest {
            format: 1,
            flushed_ts,
            next_segment_id: self.next_segment_id,
            segments: self
                .segments
                .iter()
                .filter(|s| s.state == SegState::Flushed)
                .map(|s| ManifestSegment {
                    id: s.id,
                    partition: s.partition,
                    rows: s.len(),
                    deletes_gen: s.deletes_gen,
                    indexes: s.indexes.iter().flatten().map(|i| i.file.clone()).collect(),
                })
                .collect(),
        };
        m.save(&*self.store, &self.manifest_key())?;
        self.flushed_ts = flushed_ts;
        Ok(())
    }

    /// Drops a partition's segments (after the catalog no longer lists it).
    pub fn drop_partition_data(&mut self, partition: u64) -> Result<()> {
        let gone: Vec<u64> = self
            .segments
            .iter()
            .filter(|s| s.partition == partition)
            .map(|s| s.id)
            .collect();
        self.segments.retain(|s| s.partition != partition);
        self.rebuild_pk_index();
        // A full flush: the manifest's flushed_ts may only advance once every other
        // partition's growing rows are on disk too.
        self.flush_inner(true)?;
        for id in gone {
            let _ = self.store.delete_prefix(&self.seg_prefix(id));
        }
        Ok(())
    }

    /// Compaction: rewrites flushed segments whose deleted fraction exceeds
    /// `delete_ratio` or that are in an older segment format, and merges small flushed
    /// segments of the same partition, keeping only live rows. With `flush_first` (a user's `compact`) everything is flushed first;
    /// without (automatic compaction) growing rows stay growing. Either way the caller has
    /// synced the WAL, so every tombstone dropped is durable in the log; the manifest keeps
    /// its `flushed_ts`, and replaying a delete of a row compaction already dropped is a
    /// no-op. Returns (segments removed, segments written).
    pub fn compact(
        &mut self,
        delete_ratio: f64,
        small_rows: usize,
        flush_first: bool,
    ) -> Result<(usize, usize)> {
        if flush_first {
            self.flush()?;
        }
        let mut by_part: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, s) in self.segments.iter().enumerate() {
            if s.state != SegState::Flushed || s.is_empty() {
                continue;
            }
            let dead = s.len() - s.live_count();
            if dead as f64 > delete_ratio * s.len() as f64
                || s.len() < small_rows
                || s.format < crate::segment::FORMAT
            {
                by_part.entry(s.partition).or_default().push(i);
            }
        }
        let mut removed_ids = Vec::new();
        let mut written = Vec::new();
        for (part, idxs) in by_part {
            let any_dead = idxs
                .iter()
                .any(|&i| self.segments[i].live_count() < self.segments[i].len());
            let any_old = idxs
                .iter()
                .any(|&i| self.segments[i].format < crate::segment::FORMAT);
            if idxs.len() < 2 && !any_dead && !any_old {
                continue;
            }
            let dynamic = self.meta.schema.enable_dynamic_field;
            let mut out = self.new_segment(part);
            for &i in &idxs {
                let s = &self.segments[i];
                let vecs = s
                    .vectors
                    .iter()
                    .map(|c| c.get())
                    .collect::<Result<Vec<_>>>()?;
                for r in 0..s.len() {
                    if s.deleted_at[r] != LIVE {
                        continue;
                    }
                    let b = RowBatch {
                        pks: vec![s.pks[r].clone()],
                        vectors: vecs.iter().map(|c| c.slice().row(r).to_vec()).collect(),
                        scalars: s
                            .scalars
                            .iter()
                            .map(|c| vec![c.get(r).into_owned()])
                            .collect(),
                        dynamic: if dynamic {
                            vec![s.dynamic.get(r).into_owned()]
                        } else {
                            vec![]
                        },
                    };
                    out.append(&b, s.ts[r], dynamic);
                }
                removed_ids.push(s.id);
            }
            if !out.is_empty() {
                let sp = self.seg_prefix(out.id);
                out.seal_columns();
                out.write(&*self.store, &sp)?;
                out.state = SegState::Flushed;
                out.remap(&*self.store, &sp)?;
                written.push(out);
            }
        }
        if removed_ids.is_empty() {
            return Ok((0, 0));
        }
        let n_written = written.len();
        self.segments.retain(|s| !removed_ids.contains(&s.id));
        self.segments.extend(written);
        self.segments.sort_by_key(|s| s.id);
        self.rebuild_pk_index();
        self.save_manifest(self.flushed_ts)?;
        for id in &removed_ids {
            self.store.delete_prefix(&self.seg_prefix(*id))?;
        }
        Ok((removed_ids.len(), n_written))
    }

    /// Resolves output field names. `*` selects every field (vectors included) and all
    /// dynamic keys; other names are schema fields or, with dynamic fields on, dynamic keys.
    pub fn output_spec(&self, names: &[String]) -> Result<OutputSpec> {
        let schema = &self.meta.schema;
        let mut spec = OutputSpec {
            pk_name: schema.pk().name.clone(),
            scalars: Vec::new(),
            vectors: Vec::new(),
            dynamic_all: false,
            dynamic_keys: Vec::new(),
        };
        let mut seen = HashSet::new();
        for n in names {
            if !seen.insert(n.as_str()) {
                continue;
            }
            if n == "*" {
                spec.scalars = schema
                    .scalar_fields()
                    .enumerate()
                    .map(|(i, f)| (f.name.clone(), i))
                    .collect();
                spec.vectors = schema
                    .vector_fields()
                    .enumerate()
                    .map(|(i, f)| (f.name.clone(), i))
                    .collect();
                spec.dynamic_all = schema.enable_dynamic_field;
                continue;
            }
            if let Some(f) = schema.field(n) {
                if f.is_primary {
                    continue;
                }
                if f.is_vector() {
                    spec.vectors
                        .push((n.clone(), schema.vector_index(n).unwrap()));
                } else {
                    spec.scalars
                        .push((n.clone(), schema.scalar_index(n).unwrap()));
                }
            } else if n == crate::schema::DYNAMIC_FIELD && schema.enable_dynamic_field {
                spec.dynamic_all = true;
            } else if schema.enable_dynamic_field {
                spec.dynamic_keys.push(n.clone());
            } else {
                return Err(EngineError::FieldNotFound {
                    collection: self.meta.name.clone(),
                    field: n.clone(),
                });
            }
        }
        spec.scalars.dedup();
        spec.vectors.dedup();
        Ok(spec)
    }

    fn render(
        &self,
        seg: &Segment,
        i: usize,
        spec: &OutputSpec,
        with_pk: bool,
    ) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        if with_pk {
            m.insert(spec.pk_name.clone(), seg.pks[i].to_json());
        }
        for (name, si) in &spec.scalars {
            m.insert(name.clone(), seg.scalars[*si].get(i).into_owned());
        }
        for (name, vi) in &spec.vectors {
            let col = seg.vectors[*vi].get()?;
            let row = col.slice().row(i);
            // Binary vectors come back as their bytes (integers 0..=255).
            let bin = col.elem == Elem::Bin;
            m.insert(
                name.clone(),
                Value::Array(
                    row.iter()
                        .map(|&x| {
                            if bin {
                                Value::from(x as u8)
                            } else {
                                Value::from(x as f64)
                            }
                        })
                        .collect(),
                ),
            );
        }
        if spec.dynamic_all {
            if let Value::Object(d) = seg.dynamic.get(i).into_owned() {
                for (k, v) in d {
                    m.entry(k).or_insert(v);
                }
            }
        } else {
            for k in &spec.dynamic_keys {
                if let Some(v) = seg.dynamic.get_key(i, k) {
                    m.insert(k.clone(), v.into_owned());
                }
            }
        }
        Ok(m)
    }

    /// The collection's scalar indexes, as filters use them: per scalar field whether
    /// it has one, and the JSON path indexes.
    pub fn scalar_indexed(&self) -> ScalarIndexes {
        let schema = &self.meta.schema;
        let paths = self
            .meta
            .indexes
            .iter()
            .filter_map(|i| {
                let (path, cast) = indexspec::json_path_of(schema, i)?;
                Some(PathDef {
                    id: i.id,
                    path,
                    cast,
                })
            })
            .collect::<Vec<_>>();
        let fields = schema
            .scalar_fields()
            .map(|f| {
                f.data_type != DataType::JSON
                    && self.meta.indexes.iter().any(|i| i.field_name == f.name)
            })
            .collect();
        ScalarIndexes { fields, paths }
    }

    /// Rows of `seg` visible at `snap` matching `filter` and `ids`; `indexed` is
    /// [`Collection::scalar_indexed`], computed once per request by the caller.
    pub fn allowed(
        &self,
        seg: &Segment,
        snap: Timestamp,
        filter: Option<&Filter>,
        ids: Option<&HashSet<PrimaryKey>>,
        indexed: &ScalarIndexes,
    ) -> Bitset {
        self.allowed_ex(seg, snap, filter, ids, indexed).0
    }

    /// [`Collection::allowed`], and whether the filter's result came from the segment's
    /// filter cache. A flushed segment caches what a filter gives on all its rows
    /// (visibility is applied after), so deletes and upserts never make it stale.
    pub fn allowed_ex(
        &self,
        seg: &Segment,
        snap: Timestamp,
        filter: Option<&Filter>,
        ids: Option<&HashSet<PrimaryKey>>,
        indexed: &ScalarIndexes,
    ) -> (Bitset, bool) {
        let mut b = seg.visible(snap);
        if let (Some(f), None) = (filter, ids) {
            let n = seg.len();
            let prev = seg.cached_filter(&f.text).filter(|p| p.len() <= n);
            if let Some(bits) = prev.as_ref().filter(|p| p.len() == n) {
                b.and_with(bits);
                return (b, true);
            }
            // A growing segment's rows before `from` keep their cached result; only the
            // rows appended since run the filter.
            let from = prev.as_ref().map_or(0, |p| p.len());
            let mut all = Bitset::zeros(from).extended(n, true);
            self.eval_filter(seg, f, indexed, &mut all);
            if let Some(p) = prev {
                all.or_with(&p.extended(n, false));
            }
            b.and_with(&all);
            seg.cache_filter(&f.text, Arc::new(all));
            return (b, false);
        }
        if let Some(ids) = ids {
            let ones: Vec<usize> = b.iter_ones().collect();
            for i in ones {
                if !ids.contains(&seg.pks[i]) {
                    b.set(i, false);
                }
            }
        }
        if let Some(f) = filter {
            self.eval_filter(seg, f, indexed, &mut b);
        }
        (b, false)
    }

    /// Narrows `mask` to the rows of `seg` that pass `f`, through the scalar and JSON
    /// path indexes of `indexed`.
    fn eval_filter(&self, seg: &Segment, f: &Filter, indexed: &ScalarIndexes, mask: &mut Bitset) {
        let paths = if indexed.paths.is_empty() {
            Vec::new()
        } else {
            seg.path_indexes(&indexed.paths, &f.paths())
        };
        let cols = Columns {
            paths: &paths,
            ..seg.columns_indexed(&indexed.fields)
        };
        f.eval_columns(&cols, mask);
    }

    /// Query: rows matching the filter/ids, in segment order, with limit/offset.
    #[allow(clippy::too_many_arguments)]
    pub fn query(
        &self,
        snap: Timestamp,
        filter: Option<&Filter>,
        ids: Option<&HashSet<PrimaryKey>>,
        parts: Option<&HashSet<u64>>,
        spec: &OutputSpec,
        limit: Option<usize>,
        offset: usize,
        budget: &mut OutputBudget,
    ) -> Result<Vec<Map<String, Value>>> {
        // Rows come in primary-key order, so `limit`/`offset` pages are stable across
        // upserts, flushes and compaction (where a row lives says nothing of its order),
        // and pk-cursor iteration (pymilvus's query_iterator) sees every row once.
        // With a limit, only the `limit + offset` smallest keys are kept (a max-heap of
        // that size), so a broad filter with a small page costs no memory per match.
        let indexed = self.scalar_indexed();
        let keep = limit.map(|l| l.saturating_add(offset));
        let mut heap: std::collections::BinaryHeap<(&PrimaryKey, usize, usize)> =
            std::collections::BinaryHeap::new();
        let mut all: Vec<(&PrimaryKey, usize, usize)> = Vec::new();
        for (si, seg) in self.segments.iter().enumerate() {
            if parts.is_some_and(|p| !p.contains(&seg.partition)) {
                continue;
            }
            for i in self.allowed(seg, snap, filter, ids, &indexed).iter_ones() {
                let hit = (&seg.pks[i], si, i);
                match keep {
                    None => all.push(hit),
                    Some(0) => {}
                    Some(k) if heap.len() < k => heap.push(hit),
                    Some(_) => {
                        if heap.peek().is_some_and(|top| hit.0 < top.0) {
                            heap.pop();
                            heap.push(hit);
                        }
                    }
                }
            }
        }
        let mut hits = if keep.is_some() { heap.into_vec() } else { all };
        hits.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(hits.len().saturating_sub(offset));
        for &(_, si, i) in hits.iter().skip(offset) {
            let row = self.render(&self.segments[si], i, spec, true)?;
            budget.charge(&row)?;
            out.push(row);
        }
        Ok(out)
    }

    /// Number of rows matching (for `count(*)`).
    pub fn count(
        &self,
        snap: Timestamp,
        filter: Option<&Filter>,
        ids: Option<&HashSet<PrimaryKey>>,
        parts: Option<&HashSet<u64>>,
    ) -> usize {
        let indexed = self.scalar_indexed();
        self.segments
            .iter()
            .filter(|s| parts.is_none_or(|p| p.contains(&s.partition)))
            .map(|s| self.allowed(s, snap, filter, ids, &indexed).count_ones())
            .sum()
    }

    /// Vectors of the given primary keys (visible at `snap`), in the order given.
    pub fn vectors_of(
        &self,
        pks: &[PrimaryKey],
        field: usize,
        snap: Timestamp,
    ) -> Result<Vec<Vec<f32>>> {
        let visible = |s: &Segment, i: usize| s.ts[i] <= snap && s.deleted_at[i] > snap;
        pks.iter()
            .map(|pk| {
                // Fast path: the live version, through the pk map.
                if let Some(&(sid, off)) = self.pk_index.get(pk) {
                    if let Some(s) = self.seg_pos(sid).map(|p| &self.segments[p]) {
                        if visible(s, off as usize) {
                            return Ok(s.vectors[field].get()?.slice().row(off as usize).to_vec());
                        }
                    }
                }
                // An older version visible at an older snapshot.
                for s in &self.segments {
                    if let Some(i) = (0..s.len()).find(|&i| &s.pks[i] == pk && visible(s, i)) {
                        return Ok(s.vectors[field].get()?.slice().row(i).to_vec());
                    }
                }
                Err(invalid(format!(
                    "no entity with primary key {pk} to search by"
                )))
            })
            .collect()
    }

    /// Search over every segment, merged: a segment with a built index for the field is
    /// searched through it, others (growing, small, or not yet indexed) exactly. Group-by
    /// and range searches scan exactly, since they need every candidate. One result list
    /// per query.
    pub fn search(&self, r: &ResolvedSearch<'_>) -> Result<SearchOutcome> {
        // Counted while it runs, so concurrent searches leave each other's cores alone.
        let _active = crate::par::enter();
        let mut budget = OutputBudget::new(r.max_output_bytes);
        let flat = FlatIndex::new(r.metric);
        let (min_score, max_score) = range_bounds(r.metric, r.radius, r.range_filter);
        let exact_only = r.group_by.is_some();
        let indexed = self.scalar_indexed();
        let mut cached = 0;
        let allows: Vec<(&Segment, Option<Bitset>)> = self
            .segments
            .iter()
            .filter(|s| r.partitions.is_none_or(|p| p.contains(&s.partition)) && !s.is_empty())
            .map(|s| {
                let allow = if r.filter.is_none() && s.all_visible(r.snapshot) {
                    None
                } else {
                    let (a, hit) = self.allowed_ex(s, r.snapshot, r.filter, None, &indexed);
                    cached += usize::from(hit);
                    Some(a)
                };
                (s, allow)
            })
            .collect();
        let want = r.limit + r.offset;
        let mut outcome = SearchOutcome {
            metric: Some(r.metric),
            filter_cached: cached,
            ..Default::default()
        };
        // BM25: the query terms' weights and the average length come from the whole
        // collection at this snapshot, so scores do not depend on how rows fall into
        // segments or partitions.
        let bm25_queries;
        let mut scoring = magpie_index::Scoring::Ip;
        if let Probe::Sparse {
            field,
            queries,
            bm25: Some((k1, b)),
            bm25_stats,
            ..
        } = r.probe
        {
            let own;
            let stats = match bm25_stats {
                Some(s) => s,
                None => {
                    own = self.bm25_stats(field, queries, r.snapshot)?;
                    &own
                }
            };
            let (qs, p) = bm25_weights(queries, stats, k1, b)?;
            bm25_queries = qs;
            scoring = magpie_index::Scoring::Bm25(p);
        } else {
            bm25_queries = Vec::new();
        }
        let dense_field = match r.probe {
            Probe::Dense { field, .. } => Some(field),
            Probe::Sparse { .. } => None,
        };
        for (seg, allow) in &allows {
            let ix = dense_field
                .and_then(|f| seg.indexes.get(f))
                .and_then(|i| i.as_ref());
            let indexed = match r.probe {
                Probe::Dense { .. } => ix.is_some(),
                Probe::Sparse { indexed, .. } => indexed && seg.state != SegState::Growing,
            };
            let interim = dense_field
                .and_then(|f| seg.interim.get(f))
                .and_then(|i| i.as_ref())
                .filter(|_| ix.is_none());
            if indexed && !exact_only {
                outcome.indexed_segments += 1;
            } else if let Some(it) = interim.filter(|_| !exact_only) {
                outcome.interim_segments += 1;
                outcome.interim_rows += it.rows.min(seg.len());
                outcome.exact_rows += seg.len().saturating_sub(it.rows);
            } else {
                outcome.exact_segments += 1;
                outcome.exact_rows += seg.len();
            }
            if r.filter.is_some() {
                let passed = allow.as_ref().map_or(seg.len(), |a| a.count_ones());
                outcome.filter_passed += passed;
                outcome.filter_rows += seg.len();
                let plan = match ix.and_then(|i| i.get()) {
                    Some(i) if !exact_only => i.filter_plan(passed),
                    _ if indexed => "sparse-index",
                    _ if interim.is_some() && !exact_only => "interim",
                    _ => "exact",
                };
                *outcome.filter_plans.entry(plan).or_default() += 1;
            }
        }
        let nq = r.probe.len();
        let mut per_query: Vec<Vec<(&Segment, u32, f32)>> = (0..nq).map(|_| Vec::new()).collect();
        // Segments scanned exactly (dense probes): every query in one pass each, run
        // after the loop, split among spare cores when large (`crate::par`).
        let mut exact: Vec<(&Segment, Option<&Bitset>, usize)> = Vec::new();
        // Segments searched through an index or an interim graph: one search per query
        // and segment, run after the loop, split among spare cores when many.
        let mut graph: Vec<(&Segment, Option<&Bitset>, usize, Graph)> = Vec::new();
        for (seg, allow) in &allows {
            let k = if exact_only {
                allow.as_ref().map_or(seg.len(), |a| a.count_ones())
            } else {
                want
            };
            let mut add = |qi: usize, found: Vec<magpie_index::Scored>| {
                per_query[qi].extend(found.into_iter().map(|s| (*seg, s.offset, s.score)));
            };
            match r.probe {
                Probe::Dense { field, .. } => {
                    let params = r.knobs.params(allow.as_ref(), min_score, max_score, k);
                    let index = seg
                        .indexes
                        .get(field)
                        .and_then(|i| i.as_ref())
                        .filter(|_| !exact_only)
                        .and_then(|i| i.get());
                    let interim = seg.interim[field].as_ref().filter(|_| !exact_only);
                    if let Some(ix) = index {
                        if outcome.knob.is_none() {
                            outcome.knob = ix.knob(&params);
                        }
                    } else if let Some(it) = interim {
                        if outcome.knob.is_none() {
                            outcome.knob = it.graph.knob(&params);
                        }
                    }
                    match (index, interim) {
                        (Some(ix), _) => graph.push((seg, allow.as_ref(), k, Graph::Index(ix))),
                        (None, Some(it)) => {
                            graph.push((seg, allow.as_ref(), k, Graph::Interim(it)))
                        }
                        (None, None) => exact.push((seg, allow.as_ref(), k)),
                    }
                }
                Probe::Sparse {
                    field,
                    queries,
                    algo,
                    ..
                } => {
                    let params = magpie_index::SparseSearch {
                        scoring,
                        k,
                        allow: allow.as_ref(),
                        algo,
                        drop_ratio: r.knobs.drop_ratio.unwrap_or(0.0),
                        min_score,
                        max_score,
                    };
                    for qi in 0..nq {
                        let q = match scoring {
                            magpie_index::Scoring::Bm25(_) => &bm25_queries[qi],
                            magpie_index::Scoring::Ip => &queries[qi],
                        };
                        add(qi, sparse_search(seg, field, q, &params)?);
                    }
                }
            }
        }
        if let (Probe::Dense { field, queries }, false) = (r.probe, graph.is_empty()) {
            let jobs: Vec<(usize, usize)> = (0..graph.len())
                .flat_map(|gi| (0..nq).map(move |qi| (gi, qi)))
                .collect();
            let one = |&(gi, qi): &(usize, usize)| {
                let (seg, allow, k, via) = graph[gi];
                let col = seg.vectors[field].get()?;
                let params = SearchParams {
                    prefetch: col.prefetch(),
                    ..r.knobs.params(allow, min_score, max_score, k)
                };
                let q = &queries[qi];
                Ok::<_, EngineError>(match via {
                    Graph::Index(ix) => ix.search(col.slice(), &col.inv_norms, q, &params)?,
                    Graph::Interim(it) => it.search(col.slice(), &col.inv_norms, q, &params)?,
                })
            };
            let dim = queries.first().map_or(0, Vec::len);
            let work = jobs.len().saturating_mul(GRAPH_SEARCH_ROWS * dim);
            let (found, threads) = crate::par::map(&jobs, work, one);
            outcome.scan_threads = threads;
            for (&(gi, qi), found) in jobs.iter().zip(found) {
                let seg = graph[gi].0;
                per_query[qi].extend(found?.into_iter().map(|s| (seg, s.offset, s.score)));
            }
        }
        if let (Probe::Dense { field, queries }, false) = (r.probe, exact.is_empty()) {
            let scan = |&(seg, allow, k): &(&Segment, Option<&Bitset>, usize)| {
                let col = seg.vectors[field].get()?;
                let params = SearchParams {
                    allow,
                    min_score,
                    max_score,
                    prefetch: col.prefetch(),
                    ..SearchParams::top_k(k)
                };
                Ok::<_, EngineError>(flat.search_batch(
                    col.slice(),
                    &col.inv_norms,
                    queries,
                    &params,
                )?)
            };
            let dim = queries.first().map_or(0, Vec::len);
            let work = exact
                .iter()
                .map(|(s, a, _)| a.map_or(s.len(), |b| b.count_ones()))
                .sum::<usize>()
                .saturating_mul(nq * dim);
            let (found, threads) = crate::par::map(&exact, work, scan);
            outcome.scan_threads = outcome.scan_threads.max(threads);
            for ((seg, _, _), found) in exact.iter().zip(found) {
                for (qi, f) in found?.into_iter().enumerate() {
                    per_query[qi].extend(f.into_iter().map(|s| (*seg, s.offset, s.score)));
                }
            }
        }
        for mut cands in per_query {
            cands.sort_by(|a, b| {
                b.2.total_cmp(&a.2)
                    .then_with(|| a.0.pks[a.1 as usize].cmp(&b.0.pks[b.1 as usize]))
            });
            let chosen: Vec<(&Segment, u32, f32)> = match r.group_by {
                None => cands.into_iter().skip(r.offset).take(r.limit).collect(),
                Some(gi) => {
                    let mut groups: Vec<(Value, usize)> = Vec::new();
                    let mut out = Vec::new();
                    for c in cands {
                        let key = c.0.scalars[gi].get(c.1 as usize).into_owned();
                        match groups.iter().position(|(k, _)| *k == key) {
                            Some(gi) if groups[gi].1 < r.group_size => {
                                groups[gi].1 += 1;
                                out.push((c, gi));
                            }
                            Some(_) => {}
                            None if groups.len() < want => {
                                groups.push((key, 1));
                                out.push((c, groups.len() - 1));
                            }
                            None => {}
                        }
                    }
                    out.into_iter()
                        .filter(|(_, g)| *g >= r.offset)
                        .map(|(c, _)| c)
                        .collect()
                }
            };
            let mut hits = Vec::with_capacity(chosen.len());
            for (seg, off, score) in chosen {
                let fields = self.render(seg, off as usize, r.output, false)?;
                budget.charge(&fields)?;
                hits.push(Hit {
                    id: seg.pks[off as usize].clone(),
                    distance: r.metric.user_distance(score),
                    fields,
                });
            }
            outcome.hits.push(hits);
        }
        Ok(outcome)
    }

    /// BM25 statistics of sparse column `field` for the terms of `queries`: `n` the rows
    /// visible at `snap` in the whole collection, `total` their summed lengths, `df` per
    /// term the rows holding it.
    pub(crate) fn bm25_stats(
        &self,
        field: usize,
        queries: &[magpie_index::SparseVector],
        snap: Timestamp,
    ) -> Result<Bm25Stats> {
        let mut df: std::collections::BTreeMap<u32, u64> = queries
            .iter()
            .flat_map(|q| q.indices().iter().map(|&t| (t, 0)))
            .collect();
        let (mut n, mut total) = (0u64, 0f64);
        for seg in self.segments.iter().filter(|s| !s.is_empty()) {
            let vis = (!seg.all_visible(snap)).then(|| seg.visible(snap));
            if seg.state != SegState::Growing {
                let ix = seg.sparse_index(field)?;
                let (rn, rl) = ix.len_stats(vis.as_ref());
                n += rn as u64;
                total += rl;
                for (t, c) in df.iter_mut() {
                    *c += ix.doc_freq(*t, vis.as_ref()) as u64;
                }
                continue;
            }
            for i in 0..seg.len() {
                if vis.as_ref().is_some_and(|v| !v.get(i)) {
                    continue;
                }
                let Some(v) = seg.sparse_row(field, i)? else {
                    n += 1;
                    continue;
                };
                n += 1;
                total += v.len() as f64;
                for t in v.indices() {
                    if let Some(c) = df.get_mut(t) {
                        *c += 1;
                    }
                }
            }
        }
        Ok(Bm25Stats { n, total, df })
    }

    pub fn group_by_field(&self, name: &str) -> Result<usize> {
        let f = self
            .meta
            .schema
            .field(name)
            .ok_or_else(|| EngineError::FieldNotFound {
                collection: self.meta.name.clone(),
                field: name.to_string(),
            })?;
        if f.is_primary
            || f.is_vector()
            || f.is_sparse()
            || matches!(
                f.data_type,
                DataType::JSON | DataType::Array | DataType::Float | DataType::Double
            )
        {
            return Err(invalid(format!(
                "cannot group by '{name}' ({:?}); group by a Bool, Int or VarChar scalar field",
                f.data_type
            )));
        }
        Ok(self.meta.schema.scalar_index(name).unwrap())
    }

    pub fn row_count(&self, snap: Timestamp) -> usize {
        self.segments
            .iter()
            .map(|s| s.visible(snap).count_ones())
            .sum()
    }
}

/// The best rows of `seg` for sparse query `q`: through the segment's sparse index once
/// it no longer grows, else by scoring each row (the same score, [`SparseVector::score`]).
///
/// [`SparseVector::score`]: magpie_index::SparseVector::score
fn sparse_search(
    seg: &Segment,
    field: usize,
    q: &magpie_index::SparseVector,
    p: &magpie_index::SparseSearch<'_>,
) -> Result<Vec<magpie_index::Scored>> {
    if seg.state != SegState::Growing {
        return Ok(seg.sparse_index(field)?.search(q, p)?);
    }
    let q = if p.drop_ratio > 0.0 {
        q.drop_smallest(p.drop_ratio)
    } else {
        q.clone()
    };
    let mut top = magpie_index::TopK::new(p.k);
    for i in 0..seg.len() {
        if p.allow.is_some_and(|a| !a.get(i)) {
            continue;
        }
        let Some(v) = seg.sparse_row(field, i)? else {
            continue;
        };
        if let Some(s) = q.score_with(&v, p.scoring) {
            if p.min_score.is_none_or(|m| s > m) && p.max_score.is_none_or(|m| s <= m) {
                top.push(i as u32, s);
            }
        }
    }
    Ok(top.into_sorted())
}

/// How a segment with a graph is searched: its built index, or the interim graph
/// that stands in for it until the index is attached.
#[derive(Clone, Copy)]
enum Graph<'a> {
    Index(&'a magpie_index::AnyIndex),
    Interim(&'a crate::segment::Interim),
}

/// Rows one index search scores, a rough and low figure, for deciding whether the
/// searches of a request of many queries are worth spare cores (`crate::par`): a graph
/// search scores about `ef` times its neighbours per node, an IVF search `nprobe`
/// lists. Low, so that only requests of many queries (tens at 128-d) take helpers.
const GRAPH_SEARCH_ROWS: usize = 1024;

/// Converts Milvus range-search parameters into internal score bounds:
/// distances (L2, HAMMING, JACCARD) keep `range_filter <= d < radius`, similarities
/// (IP/COSINE) keep `radius < s <= range_filter`.
fn range_bounds(
    metric: Metric,
    radius: Option<f32>,
    range_filter: Option<f32>,
) -> (Option<f32>, Option<f32>) {
    if metric.higher_is_closer() {
        (radius, range_filter)
    } else {
        (radius.map(|r| -r), range_filter.map(|f| -f))
    }
}

/// Attaches the index files a manifest lists for `seg`. An index is derived data: a
/// missing, corrupt or orphaned file is logged and dropped (the builder makes a new one),
/// never a reason to refuse to open. Index files the manifest does not list (left by a
/// crash between writing the file and the manifest) are removed.
fn load_indexes(
    meta: &CollectionMeta,
    store: &Arc<dyn Storage>,
    prefix: &str,
    seg: &mut Segment,
    listed: &[crate::catalog::ManifestIndex],
) {
    let mut keep = HashSet::new();
    for mi in listed {
        let key = format!("{prefix}{}", mi.file);
        let def = meta.indexes.iter().find(|i| i.id == mi.index_id);
        let Some(def) = def else {
            continue;
        };
        let dim = seg.vectors.get(mi.field).map_or(0, |c| c.dim);
        let shape = (seg.len(), dim);
        let loaded = (|| -> std::result::Result<SegIndex, String> {
            if mi.field >= seg.indexes.len() {
                return Err("field out of range".into());
            }
            let kind = indexspec::parse(def, dim, 0).map_err(|e| e.to_string())?;
            if store.is_remote() {
                // Fetched on first use (and checked then).
                return Ok(SegIndex::lazy(
                    mi.clone(),
                    store.clone(),
                    key.clone(),
                    kind,
                    shape,
                ));
            }
            let bytes = store.get(&key).map_err(|e| e.to_string())?;
            let ix = crate::segment::check_index(&kind, &bytes, mi.crc, shape)?;
            Ok(SegIndex::ready(mi.clone(), Arc::new(ix)))
        })();
        match loaded {
            Ok(index) => {
                keep.insert(key.clone());
                seg.indexes[mi.field] = Some(index);
            }
            Err(e) => {
                tracing::warn!(path = %store.locate(&key).display(), "index file not loaded ({e}); it will be rebuilt")
            }
        }
    }
    if let Ok(keys) = store.list(&format!("{prefix}index_")) {
        for key in keys {
            if !keep.contains(&key) {
                let _ = store.delete(&key);
            }
        }
    }
}

/// Key values a filter pins down at its top level: `key == v`, `v == key`,
/// `key in [..]`, any conjunct of an `and` that does, or an `or` all of whose branches do.
fn key_values(e: &crate::filter::Expr, key: &str) -> Option<Vec<Value>> {
    use crate::filter::{BinOp, Expr};
    let is_key = |e: &Expr| matches!(e, Expr::Ident { name, .. } if name == key);
    let lit = |e: &Expr| match e {
        Expr::Lit(v @ (Value::Number(_) | Value::String(_))) => Some(v.clone()),
        _ => None,
    };
    match e {
        Expr::Bin(BinOp::Eq, a, b) if is_key(a) => lit(b).map(|v| vec![v]),
        Expr::Bin(BinOp::Eq, a, b) if is_key(b) => lit(a).map(|v| vec![v]),
        Expr::In {
            e,
            list,
            negated: false,
        } if is_key(e) => list.iter().map(lit).collect(),
        Expr::And(v) => v.iter().find_map(|c| key_values(c, key)),
        Expr::Or(v) => v
            .iter()
            .map(|c| key_values(c, key))
            .collect::<Option<Vec<_>>>()
            .map(|vs| vs.concat()),
        _ => None,
    }
}

/// A JSON path index of a collection: its id, path and cast type.
#[derive(Clone, Debug)]
pub struct PathDef {
    pub id: u64,
    pub path: JsonPath,
    pub cast: JsonCast,
}

/// The scalar indexes of a collection, as filters use them
/// ([`Collection::scalar_indexed`], computed once per request).
#[derive(Clone, Debug, Default)]
pub struct ScalarIndexes {
    /// Per scalar field (schema order): whether it has a scalar index.
    pub fields: Vec<bool>,
    pub paths: Vec<PathDef>,
}

/// BM25 weights of `queries` (term counts): each term's count times its IDF
/// `ln(1 + (N − df + 0.5) / (df + 0.5))` by `stats`; and the scoring with their average
/// length. A term `stats` does not count is in no row (df 0).
fn bm25_weights(
    queries: &[magpie_index::SparseVector],
    stats: &Bm25Stats,
    k1: f32,
    b: f32,
) -> Result<(Vec<magpie_index::SparseVector>, magpie_index::Bm25)> {
    let n = stats.n as f64;
    let weighted = queries
        .iter()
        .map(|q| {
            let pairs = q
                .iter()
                .map(|(t, count)| {
                    let d = stats.df.get(&t).copied().unwrap_or(0) as f64;
                    let idf = (1.0 + (n - d + 0.5) / (d + 0.5)).ln();
                    (t, (count as f64 * idf) as f32)
                })
                .collect();
            magpie_index::SparseVector::from_pairs(pairs).map_err(invalid)
        })
        .collect::<Result<Vec<_>>>()?;
    let avgdl = if stats.n == 0 {
        1.0
    } else {
        (stats.total / n) as f32
    };
    Ok((weighted, magpie_index::Bm25 { k1, b, avgdl }))
}
