//! Reads that return rows: output fields, filters over segments (with the scalar and
//! JSON path indexes), query, count, stored vectors, BM25 statistics.

use super::{Bm25Stats, Collection};
use crate::column::JsonCast;
use crate::error::{invalid, EngineError, Result};
use crate::filter::{Columns, Filter, JsonPath};
use crate::indexspec;
use crate::schema::DataType;
use crate::segment::{SegState, Segment};
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::{Bitset, Cancel, Elem};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// A query rendering its rows checks its cancel flag every this many rows (a row with
/// wide vectors or JSON costs microseconds to render; a page is at most 16,384 rows).
const CANCEL_POLL_ROWS: usize = 1024;

/// Which fields a read returns.
pub struct OutputSpec {
    pk_name: String,
    scalars: Vec<(String, usize)>,
    vectors: Vec<(String, usize)>,
    dynamic_all: bool,
    dynamic_keys: Vec<String>,
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

impl Collection {
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

    pub(super) fn render(
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

    /// Query: rows matching the filter/ids, in segment order, with limit/offset. Stops
    /// with [`EngineError::Cancelled`] once `cancel` is set: checked before each
    /// segment's filter and every [`CANCEL_POLL_ROWS`] rows rendered.
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
        cancel: Option<&Cancel>,
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
            super::search::check_cancel(cancel)?;
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
        for (n, &(_, si, i)) in hits.iter().skip(offset).enumerate() {
            if n % CANCEL_POLL_ROWS == 0 {
                super::search::check_cancel(cancel)?;
            }
            let row = self.render(&self.segments[si], i, spec, true)?;
            budget.charge(&row)?;
            out.push(row);
        }
        Ok(out)
    }

    /// Number of rows matching (for `count(*)`); stops between segments once `cancel`
    /// is set.
    pub fn count(
        &self,
        snap: Timestamp,
        filter: Option<&Filter>,
        ids: Option<&HashSet<PrimaryKey>>,
        parts: Option<&HashSet<u64>>,
        cancel: Option<&Cancel>,
    ) -> Result<usize> {
        let indexed = self.scalar_indexed();
        let mut n = 0;
        for s in &self.segments {
            if parts.is_none_or(|p| p.contains(&s.partition)) {
                super::search::check_cancel(cancel)?;
                n += self.allowed(s, snap, filter, ids, &indexed).count_ones();
            }
        }
        Ok(n)
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
