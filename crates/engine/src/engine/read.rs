//! The read path: snapshots, query, search (dense, sparse, by text or image through
//! the schema's functions).

use super::{check_topk, compile_filter, Engine};
use super::{prefetch, rerank};
use crate::builder::CollRef;
use crate::collection::{Collection, Hit, Probe, ResolvedSearch};
use crate::collection::{OutputBudget, SearchKnobs, SearchOutcome};
use crate::error::{invalid, EngineError, Result};
use crate::function::{Embedder, FunctionKind, ImageInput};
use crate::schema::CollectionSchema;
use crate::types::{Consistency, PrimaryKey, Timestamp};
use magpie_index::{Cancel, Metric};
use serde_json::{Map, Value};
use std::sync::Arc;

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
    /// Stops the search once set (its caller's deadline passed, or its client went
    /// away): polled between segments and by every index and exact scan every few
    /// thousand rows, after which the search fails with [`EngineError::Cancelled`].
    pub cancel: Option<Arc<Cancel>>,
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
impl Engine {
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

    pub(super) fn read_snapshot(
        &self,
        c: &CollRef,
        level: Option<Consistency>,
    ) -> Result<Timestamp> {
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
        self.query_with(coll, q, None)
    }

    /// [`Engine::query`] that stops once `cancel` is set (its caller's deadline passed,
    /// or its client went away): polled before each segment's filter and every 1,024
    /// rows rendered, after which the query fails with [`EngineError::Cancelled`].
    pub fn query_with(
        &self,
        coll: &str,
        q: &QueryRequest,
        cancel: Option<&Cancel>,
    ) -> Result<Vec<Map<String, Value>>> {
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
            let n = g.count(snap, filter.as_ref(), ids.as_ref(), parts.as_ref(), cancel)?;
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
            cancel,
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
            cancel: r.cancel.as_deref(),
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
