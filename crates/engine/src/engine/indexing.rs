//! Index definitions and their builds: `create_index` / `drop_index`, the queues of
//! the index builder and the interim builder, and build progress.

use super::Engine;
use crate::builder::{CollRef, Job, JobKey};
use crate::catalog::IndexMeta;
use crate::collection::Collection;
use crate::error::{invalid, Result};
use crate::function::FunctionKind;
use crate::indexspec;
use crate::schema::CollectionSchema;
use crate::segment::SegState;
use magpie_index::{Elem, Metric};

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
pub(super) fn fresh_index_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let _ = NEXT.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed).max(1)
}

impl Engine {
    /// Queues an index build for every flushed segment that lacks one.
    pub(super) fn schedule(&self, c: &CollRef) {
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
    pub(super) fn schedule_interim(&self, c: &CollRef) {
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

    pub(super) fn schedule_all(&self) {
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
    pub(super) fn check_index(schema: &CollectionSchema, ix: &IndexMeta) -> Result<()> {
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
}
