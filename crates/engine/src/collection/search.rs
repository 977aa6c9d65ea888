//! Vector search over a collection's segments: through their indexes or interim
//! graphs, or exactly; dense and sparse (BM25); merged into one top-k per query.

use super::{Collection, OutputBudget, OutputSpec};
use crate::error::{invalid, EngineError, Result};
use crate::filter::Filter;
use crate::segment::{SegState, Segment};
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::{Bitset, Cancel, FlatIndex, Knob, Metric, SearchParams, VectorIndexRead};
use serde_json::{Map, Value};
use std::collections::HashSet;

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
        cancel: Option<&'a Cancel>,
    ) -> SearchParams<'a> {
        SearchParams {
            allow,
            min_score,
            max_score,
            cancel,
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
    /// Stops the search once set ([`crate::SearchRequest::cancel`]).
    pub cancel: Option<&'a Cancel>,
}

impl Collection {
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
                    // A filter over a large segment takes a while: poll before each.
                    check_cancel(r.cancel)?;
                    let (a, hit) = self.allowed_ex(s, r.snapshot, r.filter, None, &indexed);
                    cached += usize::from(hit);
                    Some(a)
                };
                Ok((s, allow))
            })
            .collect::<Result<_>>()?;
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
                    let params = r
                        .knobs
                        .params(allow.as_ref(), min_score, max_score, k, r.cancel);
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
                        check_cancel(r.cancel)?;
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
                    ..r.knobs.params(allow, min_score, max_score, k, r.cancel)
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
                    cancel: r.cancel,
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
}

/// Fails with [`EngineError::Cancelled`] once `cancel` is set.
pub(crate) fn check_cancel(cancel: Option<&Cancel>) -> Result<()> {
    match cancel {
        Some(c) if c.is_cancelled() => Err(EngineError::Cancelled),
        _ => Ok(()),
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
