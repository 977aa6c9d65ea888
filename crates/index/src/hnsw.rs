//! HNSW (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search
//! using Hierarchical Navigable Small World graphs", 2016/2018).
//!
//! The index stores only the graph; the vectors stay in the segment, contiguous in
//! insertion order, and are passed to every call. Layer 0 links live in one flat array
//! (`2·M` slots plus a count per node) so a node's neighbours are one cache-friendly read;
//! the few nodes on upper layers keep `M` slots per layer in a second array.
//!
//! * **Build** inserts rows on every core. Links are `AtomicU32` written under a per-node
//!   lock and read without one: a reader may see a list mid-update, but every slot always
//!   holds a valid row offset, so a racing reader only explores a slightly stale graph.
//! * **Neighbour selection** uses the paper's heuristic (keep a candidate only if it is
//!   closer to the new node than to every neighbour already kept), for both the new
//!   node's links and the shrinking of a full neighbour list.
//! * **Repair**: that shrinking ignores in-links, so a few nodes lose all of theirs and
//!   no search can reach them; after each build the nodes a layer-0 walk from the entry
//!   point does not reach are linked back in (see `repair`).
//! * **Filtered search** (the `allow` bitset: deletes, visibility, partitions, filters):
//!   when few rows pass, an exact scan of the passing rows is cheaper and exact; when
//!   at least half pass, the walk navigates through every node and only collects passing
//!   ones; in between, it expands only passing nodes and, when a neighbour fails the
//!   filter, looks through it at the neighbour's own neighbours (two hops, as in ACORN-1)
//!   so the walk does not strand in a sparse subgraph.

use crate::codec::{self, Reader, Writer};
use crate::quant::{Sq8, Sq8Query};
use crate::recall::{self, FilteredCurves, Knob, RecallCurve};
use crate::space::{unit, Cand, Space, Visited, VisitedPool};
use crate::{
    Bitset, Cancel, FlatIndex, IndexError, Metric, Result, Scored, SearchParams, VectorIndexBuild,
    VectorIndexRead, VectorSlice,
};
use parking_lot::Mutex;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Format 2 adds the filtered recall curves at the end; format 1 files still open
/// (without them: their filtered searches use the unfiltered curve, as before).
const MAGIC: &[u8; 8] = b"MPHNSW02";
const MAGIC_V1: &[u8; 8] = b"MPHNSW01";
const MAX_LEVEL: usize = 15;
const NO_ENTRY: u32 = u32::MAX;

/// Entry points of the layer-0 walk in large graphs. The greedy descent ends at one row
/// of layer 1; in a graph of 1M+ rows drawn from clusters it often ends in the wrong
/// cluster, and a layer-0 walk of a fixed `ef` does not get out: recall at `ef` 128 fell
/// from 0.967 at 1M to 0.912 at 2M (`bench/scale/gen.py` data, M 16). Instead the
/// descent runs a search of width `beam` on layer 1 and seeds layer 0 with its best
/// `beam / ENTRY_SEEDS_PER` rows, where `beam` is one per `ENTRY_BEAM_ROWS` rows of
/// layer 1 (n / M), at most `ENTRY_BEAM_MAX`, and none below `ENTRY_BEAM_MIN`.
/// Measured with `examples/sweep.rs` on HNSW_SQ graphs, the same queries and graph, the
/// variants alternating (docs/BENCHMARKS.md, "Entry points of large graphs"):
/// - 2M (beam 61, 15 seeds): ef 64 reached 0.932 instead of 0.830, ef 128 0.965
///   instead of 0.912, at 0.63–0.94× the QPS of the same `ef`; at equal recall about
///   1.5× the QPS.
/// - 1M (beam 30, 7 seeds): ef 64 reached 0.954 instead of 0.915; for 0.95 1.27× the QPS.
/// - 100k × 128 and 50k × 384 (the shared sets): beams of 8 to 64 gained at most
///   0.017 and cost up to 58 % of the QPS at the same `ef`, so graphs under 8 × 2,048
///   rows on layer 1 (262k rows at M 16) keep the greedy descent.
///
/// Only M 16 was measured; the rule counts layer-1 rows so that other M scale with it.
const ENTRY_BEAM_ROWS: usize = 2048;
const ENTRY_BEAM_MIN: usize = 8;
const ENTRY_BEAM_MAX: usize = 64;
const ENTRY_SEEDS_PER: usize = 4;

/// The width of the layer-1 search of a graph of `n` rows, `m` links and `max_level`
/// (0: greedy descent, one entry point); see [`ENTRY_BEAM_ROWS`].
fn entry_beam(n: usize, m: usize, max_level: usize) -> usize {
    let beam = (n / m.max(1) / ENTRY_BEAM_ROWS).min(ENTRY_BEAM_MAX);
    if max_level == 0 || beam < ENTRY_BEAM_MIN {
        0
    } else {
        beam
    }
}

/// Build parameters (Milvus names: `M`, `efConstruction`).
#[derive(Clone, Debug)]
pub struct HnswParams {
    /// Links per node on upper layers; layer 0 keeps `2·M`.
    pub m: usize,
    pub ef_construction: usize,
    /// Build threads; 0 = every available core.
    pub threads: usize,
    pub seed: u64,
    /// Measure the recall curve after building (see [`crate::recall`]).
    pub measure_recall: bool,
    /// HNSW_SQ: also keep SQ8 codes of the rows, walk the graph over them and rescore
    /// the candidates with the raw vectors.
    pub sq8: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            threads: 0,
            seed: 0x6d61_6770_6965,
            measure_recall: true,
            sq8: false,
        }
    }
}

/// Fraction of passing rows below which the filtered walk uses two-hop expansion instead
/// of navigating through failing nodes (measured: see docs/BENCHMARKS.md, "filtered").
pub const TWO_HOP_BELOW: f64 = 0.5;

/// `ef` values the recall curve is measured at (the sweep stops at recall 0.999, so the
/// last rungs run only on large graphs: at 2M synthetic rows `ef` 768 measured 0.991, and
/// a 0.99 target had no rung that cleared it with the margin).
const CURVE_EFS: [u32; 16] = [
    10, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
];

/// Default `ef` when a search names neither `ef` nor a recall target and no curve exists.
pub const DEFAULT_EF: usize = 64;

pub struct HnswIndex {
    metric: Metric,
    n: usize,
    dim: usize,
    m: usize,
    m0: usize,
    entry: u32,
    max_level: usize,
    levels: Vec<u8>,
    links0: Vec<AtomicU32>,
    upper_start: Vec<u32>,
    upper: Vec<AtomicU32>,
    curve: RecallCurve,
    /// Curves of the filtered walks (see [`filter_curve_fractions`]).
    filtered: FilteredCurves,
    sq: Option<SqCodes>,
    /// Below this many passing rows a filtered search scans them exactly.
    exact_below: usize,
    pool: VisitedPool,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("metric", &self.metric)
            .field("n", &self.n)
            .field("m", &self.m)
            .field("max_level", &self.max_level)
            .finish()
    }
}

/// Where a walk gets distances from: the raw vectors, or SQ8 codes (HNSW_SQ).
trait DistSource {
    fn dist(&self, id: u32) -> f32;
    fn prefetch(&self, id: u32);
}

/// Exact distances from a prepared query to the raw rows.
struct RawDist<'a, 'q> {
    sp: &'a Space<'a>,
    q: &'q [f32],
}

impl DistSource for RawDist<'_, '_> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        self.sp.dist(self.q, id)
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        self.sp.prefetch(id, PREFETCH_LINES);
    }
}

/// Approximate distances from a prepared query to SQ8 codes of the rows (unit rows for
/// COSINE, so no norm correction is needed).
struct CodeDist<'a> {
    sq: &'a Sq8,
    codes: &'a [u8],
    dim: usize,
    q: Sq8Query,
}

impl DistSource for CodeDist<'_> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        let s = id as usize * self.dim;
        self.sq.dist(&self.q, &self.codes[s..s + self.dim])
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        let s = id as usize * self.dim;
        magpie_linalg::prefetch(&self.codes[s..s + self.dim], PREFETCH_LINES);
    }
}

/// Cache lines of each neighbour prefetched ahead of its distance computation.
const PREFETCH_LINES: usize = 2;
/// Cache lines of a failing neighbour's link list prefetched ahead of the two-hop
/// expansion (a layer-0 list is `m0 + 1` u32s: 132 bytes at M 16).
const LINK_LINES: usize = 3;

/// HNSW_SQ: 8-bit codes of every row, walked instead of the raw vectors.
#[derive(Debug)]
struct SqCodes {
    sq: Sq8,
    codes: Vec<u8>,
}

/// How a layer-0 walk treats the allow bitset.
#[derive(Clone, Copy)]
enum Filt<'a> {
    All,
    Navigate(&'a Bitset),
    TwoHop(&'a Bitset),
}

impl Filt<'_> {
    #[inline(always)]
    fn pass(&self, i: u32) -> bool {
        match self {
            Filt::All => true,
            Filt::Navigate(b) | Filt::TwoHop(b) => b.get(i as usize),
        }
    }
}

/// Build-only shared state.
struct BuildState {
    locks: Vec<Mutex<()>>,
    global: Mutex<(u32, usize)>,
}

impl HnswIndex {
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn len(&self) -> usize {
        self.n
    }
    /// Rows and dimension the index was built over.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.dim)
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn m(&self) -> usize {
        self.m
    }
    pub fn curve(&self) -> &RecallCurve {
        &self.curve
    }

    pub fn filtered_curves(&self) -> &FilteredCurves {
        &self.filtered
    }

    /// True for HNSW_SQ (graph walked over SQ8 codes).
    pub fn has_codes(&self) -> bool {
        self.sq.is_some()
    }

    /// Overrides the passing-row count below which filtered searches scan exactly
    /// (benchmarks and tests use it to force the graph paths).
    /// The plan [`VectorIndexRead::search`] follows for `allowed` passing rows:
    /// `exact` (few pass: scan them), `walk` (at least [`TWO_HOP_BELOW`] pass: navigate
    /// through every node, collect passing ones), `twoHopWalk` (in between: expand
    /// passing nodes, look through failing neighbours), `unfiltered` (all pass).
    pub fn filter_plan(&self, allowed: usize) -> &'static str {
        if allowed >= self.n {
            "unfiltered"
        } else if allowed < self.exact_below.min(self.n) {
            "exact"
        } else if allowed as f64 >= TWO_HOP_BELOW * self.n as f64 {
            "walk"
        } else {
            "twoHopWalk"
        }
    }

    pub fn set_exact_below(&mut self, rows: usize) {
        self.exact_below = rows;
    }

    #[inline(always)]
    fn links(&self, id: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let s = id as usize * (self.m0 + 1);
            &self.links0[s..s + self.m0 + 1]
        } else {
            let s = self.upper_start[id as usize] as usize + (level - 1) * (self.m + 1);
            &self.upper[s..s + self.m + 1]
        }
    }

    #[inline(always)]
    fn neighbours(&self, id: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        let l = self.links(id, level);
        let c = (l[0].load(Relaxed) as usize).min(l.len() - 1);
        l[1..=c].iter().map(|a| a.load(Relaxed))
    }

    fn write_links(&self, id: u32, level: usize, ids: impl Iterator<Item = u32>) {
        let l = self.links(id, level);
        let mut c = 0;
        for (slot, v) in l[1..].iter().zip(ids) {
            slot.store(v, Relaxed);
            c += 1;
        }
        l[0].store(c, Relaxed);
    }

    /// Greedy descent on one upper layer.
    fn greedy<D: DistSource>(&self, ds: &D, mut cur: Cand, level: usize) -> Cand {
        loop {
            let mut changed = false;
            for nb in self.neighbours(cur.id, level) {
                let d = ds.dist(nb);
                if d < cur.d {
                    cur = Cand { d, id: nb };
                    changed = true;
                }
            }
            if !changed {
                return cur;
            }
        }
    }

    /// Best-first search of one layer; returns up to `ef` passing candidates sorted by
    /// ascending distance. Rows already marked in `vis` are never visited.
    #[allow(clippy::too_many_arguments)]
    fn search_layer<D: DistSource>(
        &self,
        ds: &D,
        eps: &[Cand],
        ef: usize,
        level: usize,
        filt: Filt<'_>,
        vis: &mut Visited,
    ) -> Vec<Cand> {
        // Neither heap can hold more than every node: capacities are bounded by `n`
        // whatever `ef` is (an `ef` read from a damaged recall curve once asked for
        // 137 GB here; found by fuzzing).
        let ef_cap = ef.min(self.n);
        let mut cand: BinaryHeap<std::cmp::Reverse<Cand>> =
            BinaryHeap::with_capacity((ef_cap * 4).min(self.n + 1));
        let mut res: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef_cap + 1);
        for &e in eps {
            // Entry points are always expanded; one already marked (the excluded row of a
            // recall-curve query, which the greedy descent lands on) is not a result.
            let seen = vis.check_set(e.id);
            cand.push(std::cmp::Reverse(e));
            if !seen && filt.pass(e.id) {
                res.push(e);
            }
        }
        while res.len() > ef {
            res.pop();
        }
        let mut buf: Vec<u32> = Vec::with_capacity(self.m0 * 2);
        let mut fail: Vec<u32> = Vec::new();
        while let Some(std::cmp::Reverse(c)) = cand.pop() {
            if res.len() >= ef && c.d > res.peek().map_or(f32::INFINITY, |w| w.d) {
                break;
            }
            buf.clear();
            let l = self.links(c.id, level);
            let cnt = (l[0].load(Relaxed) as usize).min(l.len() - 1);
            for a in &l[1..=cnt] {
                vis.prefetch(a.load(Relaxed));
            }
            match filt {
                Filt::All | Filt::Navigate(_) => {
                    for a in &l[1..=cnt] {
                        let nb = a.load(Relaxed);
                        if !vis.check_set(nb) {
                            ds.prefetch(nb);
                            buf.push(nb);
                        }
                    }
                }
                Filt::TwoHop(bits) => {
                    // Two passes: the passing neighbours first (their vectors
                    // prefetched), while the link lists of the failing ones are
                    // prefetched; then the failing ones' passing neighbours. Reading
                    // those lists one by one stalled on a cache miss each (~30 per
                    // expansion at 10 % passing).
                    fail.clear();
                    for a in &l[1..=cnt] {
                        let nb = a.load(Relaxed);
                        if vis.check_set(nb) {
                            continue;
                        }
                        if bits.get(nb as usize) {
                            ds.prefetch(nb);
                            buf.push(nb);
                        } else {
                            magpie_linalg::prefetch(self.links(nb, level), LINK_LINES);
                            fail.push(nb);
                        }
                    }
                    'hop: for &nb in &fail {
                        for nb2 in self.neighbours(nb, level) {
                            if buf.len() >= self.m0 * 2 {
                                break 'hop;
                            }
                            if bits.get(nb2 as usize) && !vis.check_set(nb2) {
                                ds.prefetch(nb2);
                                buf.push(nb2);
                            }
                        }
                    }
                }
            }
            for &nb in &buf {
                let d = ds.dist(nb);
                let worst = res.peek().map_or(f32::INFINITY, |w| w.d);
                if res.len() < ef || d < worst {
                    cand.push(std::cmp::Reverse(Cand { d, id: nb }));
                    if filt.pass(nb) {
                        res.push(Cand { d, id: nb });
                        if res.len() > ef {
                            res.pop();
                        }
                    }
                }
            }
        }
        res.into_sorted_vec()
    }

    /// The paper's neighbour-selection heuristic over candidates sorted by distance.
    fn select(&self, sp: &Space<'_>, cands: &[Cand], m: usize) -> Vec<Cand> {
        let mut out: Vec<Cand> = Vec::with_capacity(m);
        for &c in cands {
            if out.len() >= m {
                break;
            }
            if out.iter().all(|s| sp.dist_nodes(c.id, s.id) >= c.d) {
                out.push(c);
            }
        }
        out
    }

    /// Adds `new` to `node`'s list at `level`, shrinking with the heuristic when full.
    fn add_link(&self, sp: &Space<'_>, st: &BuildState, node: u32, new: u32, d: f32, level: usize) {
        let _g = st.locks[node as usize].lock();
        let max = if level == 0 { self.m0 } else { self.m };
        let l = self.links(node, level);
        let c = l[0].load(Relaxed) as usize;
        if c < max {
            l[1 + c].store(new, Relaxed);
            l[0].store(c as u32 + 1, Relaxed);
            return;
        }
        let mut cands: Vec<Cand> = l[1..=c]
            .iter()
            .map(|a| {
                let id = a.load(Relaxed);
                Cand {
                    d: sp.dist_nodes(node, id),
                    id,
                }
            })
            .collect();
        cands.push(Cand { d, id: new });
        cands.sort_unstable();
        let sel = self.select(sp, &cands, max);
        self.write_links(node, level, sel.iter().map(|c| c.id));
    }

    fn insert(&self, sp: &Space<'_>, st: &BuildState, i: u32, efc: usize, vis: &mut Visited) {
        let level = self.levels[i as usize] as usize;
        let q = sp.node_query(i);
        let g = st.global.lock();
        let (ep, maxl) = *g;
        let hold = if level > maxl {
            Some(g)
        } else {
            drop(g);
            None
        };
        let ds = RawDist { sp, q: &q };
        let mut cur = Cand {
            d: ds.dist(ep),
            id: ep,
        };
        for l in (level + 1..=maxl).rev() {
            cur = self.greedy(&ds, cur, l);
        }
        let mut eps = vec![cur];
        for l in (0..=level.min(maxl)).rev() {
            vis.reset(self.n);
            vis.check_set(i);
            let w = self.search_layer(&ds, &eps, efc, l, Filt::All, vis);
            let sel = self.select(sp, &w, self.m);
            {
                let _g = st.locks[i as usize].lock();
                self.write_links(i, l, sel.iter().map(|c| c.id));
            }
            for s in &sel {
                self.add_link(sp, st, s.id, i, s.d, l);
            }
            if !w.is_empty() {
                eps = w;
            }
        }
        if let Some(mut g) = hold {
            *g = (i, level);
        }
    }

    /// Builds the graph. `inv_norms` (1/‖x‖ per row) is required for COSINE.
    pub fn build_with(
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        metric: Metric,
        p: &HnswParams,
        cancel: &Cancel,
    ) -> Result<Self> {
        Self::grow(None, vectors, inv_norms, metric, p, cancel)
    }

    /// A copy of this graph with rows `self.len()..vectors.len()` inserted: what an
    /// index over a growing segment does as rows arrive, at the cost of inserting only
    /// the new rows (and copying the links). The first `self.len()` rows of `vectors`
    /// must be the rows this graph was built over, unchanged. `M` and the metric are
    /// this graph's; `efConstruction`, `threads` and `sq8` come from `p`. With
    /// `p.measure_recall` false the recall curve is this graph's (measured on fewer
    /// rows: an estimate that errs high as the graph grows).
    pub fn extend(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        p: &HnswParams,
        cancel: &Cancel,
    ) -> Result<Self> {
        if vectors.dim != self.dim || vectors.len() < self.n {
            return Err(IndexError::Param(format!(
                "extending an HNSW graph over {} rows of dim {} needs at least as many rows of that dim, got {} of dim {}",
                self.n,
                self.dim,
                vectors.len(),
                vectors.dim
            )));
        }
        let p = HnswParams {
            m: self.m,
            ..p.clone()
        };
        Self::grow(Some(self), vectors, inv_norms, self.metric, &p, cancel)
    }

    /// Builds the graph over `vectors`, starting from `base` (a graph over a prefix of
    /// them) when given.
    fn grow(
        base: Option<&HnswIndex>,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        metric: Metric,
        p: &HnswParams,
        cancel: &Cancel,
    ) -> Result<Self> {
        if p.m < 2 || p.m > 128 {
            return Err(IndexError::Param(format!(
                "M must be in 2..=128, got {}",
                p.m
            )));
        }
        if p.ef_construction < 1 || p.ef_construction > 4096 {
            return Err(IndexError::Param(format!(
                "efConstruction must be in 1..=4096, got {}",
                p.ef_construction
            )));
        }
        crate::check_dense("HNSW", &vectors, metric)?;
        if metric == Metric::COSINE && inv_norms.len() != vectors.len() {
            return Err(IndexError::Param(
                "COSINE needs the rows' inverse norms".into(),
            ));
        }
        let n = vectors.len();
        if n > u32::MAX as usize - 1 {
            return Err(IndexError::Param("too many rows for one index".into()));
        }
        // An empty base is no base: the first row becomes the entry point.
        let base = base.filter(|b| b.n > 0 && b.entry != NO_ENTRY);
        let old = base.map_or(0, |b| b.n);
        let m = p.m;
        let m0 = 2 * m;
        let ml = 1.0 / (m as f64).ln();
        // A row's level depends only on its offset and the seed, so a graph grown in
        // steps draws the same levels as one built at once.
        let levels: Vec<u8> = base
            .map_or(&[][..], |b| &b.levels[..])
            .iter()
            .copied()
            .chain((old..n).map(|i| {
                let u = unit(p.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                ((-u.ln() * ml).floor() as usize).min(MAX_LEVEL) as u8
            }))
            .collect();
        let mut upper_start = Vec::with_capacity(n + 1);
        let mut acc = 0usize;
        for &l in &levels {
            upper_start.push(acc as u32);
            acc += l as usize * (m + 1);
        }
        upper_start.push(acc as u32);
        let copy = |from: Option<&[AtomicU32]>, len: usize| -> Vec<AtomicU32> {
            let from = from.unwrap_or(&[]);
            from.iter()
                .map(|a| AtomicU32::new(a.load(Relaxed)))
                .chain((from.len()..len).map(|_| AtomicU32::new(0)))
                .collect()
        };
        let (entry, max_level) = match base {
            Some(b) => (b.entry, b.max_level),
            None if n == 0 => (NO_ENTRY, 0),
            None => (0, levels[0] as usize),
        };
        let mut idx = HnswIndex {
            metric,
            n,
            dim: vectors.dim,
            m,
            m0,
            entry,
            max_level,
            links0: copy(base.map(|b| &b.links0[..]), n * (m0 + 1)),
            upper: copy(base.map(|b| &b.upper[..]), acc),
            upper_start,
            levels,
            curve: base.map(|b| b.curve.clone()).unwrap_or_default(),
            filtered: base.map(|b| b.filtered.clone()).unwrap_or_default(),
            sq: None,
            exact_below: 0,
            pool: VisitedPool::default(),
        };
        idx.exact_below = exact_cutoff(n, vectors.dim);
        if n == 0 {
            return Ok(idx);
        }
        let sp = Space::new(vectors, inv_norms, metric);
        let st = BuildState {
            locks: (0..n).map(|_| Mutex::new(())).collect(),
            global: Mutex::new((idx.entry, idx.max_level)),
        };
        let first = old.max(1);
        // The recall curves' queries, when the graph is large enough to spare them: rows
        // inserted only after the curves are measured (see `crate::recall`).
        let held = if p.measure_recall {
            recall::hold_out(n, first, p.seed)
        } else {
            None
        };
        let cancelled = AtomicBool::new(false);
        let efc = p.ef_construction.max(m);
        // Inserts the rows `row(0..count)` (`None`: skipped) on the build threads.
        let insert_all =
            |idx: &HnswIndex, count: usize, row: &(dyn Fn(usize) -> Option<u32> + Sync)| {
                let threads = crate::space::resolve_threads(p.threads).clamp(1, count.max(1));
                let next = AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            let mut vis = Visited::new(n);
                            loop {
                                let j = next.fetch_add(1, Relaxed);
                                if j >= count {
                                    break;
                                }
                                if j.is_multiple_of(512) && cancel.is_cancelled() {
                                    cancelled.store(true, Relaxed);
                                    break;
                                }
                                if let Some(i) = row(j) {
                                    idx.insert(&sp, &st, i, efc, &mut vis);
                                }
                            }
                        });
                    }
                });
            };
        insert_all(&idx, n - first, &|j| {
            let i = first + j;
            held.as_ref()
                .is_none_or(|h| !h.set.get(i))
                .then_some(i as u32)
        });
        if cancelled.load(Relaxed) {
            return Err(IndexError::Cancelled);
        }
        let publish = |idx: &mut HnswIndex| {
            let (entry, maxl) = *st.global.lock();
            idx.entry = entry;
            idx.max_level = maxl;
        };
        publish(&mut idx);
        if n > old {
            idx.repair(&sp, efc, held.as_ref().map(|h| &h.set));
        }
        if p.sq8 {
            idx.sq = Some(encode_sq8(&sp));
        }
        if p.measure_recall {
            let queries = match &held {
                Some(h) => recall::Queries::HeldOut(h, recall::HELD_OUT_QUERIES),
                None => recall::Queries::InPlace(recall::CURVE_QUERIES),
            };
            idx.curve = idx.measure_curve(&sp, p.seed, p.threads, None, queries);
            let mut curves = Vec::new();
            for f in filter_curve_fractions(n, idx.exact_below) {
                if cancel.is_cancelled() {
                    return Err(IndexError::Cancelled);
                }
                let allow = recall::random_filter(n, f, p.seed ^ f.to_bits());
                curves.push((
                    f as f32,
                    idx.measure_curve(&sp, p.seed, p.threads, Some(&allow), queries),
                ));
            }
            idx.filtered = FilteredCurves { curves };
        }
        if let Some(h) = &held {
            insert_all(&idx, h.rows.len(), &|j| Some(h.rows[j]));
            if cancelled.load(Relaxed) {
                return Err(IndexError::Cancelled);
            }
            publish(&mut idx);
            idx.repair(&sp, efc, None);
        }
        Ok(idx)
    }

    /// Which layer-0 nodes the entry point reaches (`true`), following every link.
    fn reached_from_entry(&self) -> Vec<bool> {
        let mut seen = vec![false; self.n];
        if self.entry != NO_ENTRY {
            self.mark_reachable(self.entry, &mut seen);
        }
        seen
    }

    /// Marks everything reachable at layer 0 from `from` that is not marked yet.
    fn mark_reachable(&self, from: u32, seen: &mut [bool]) {
        if seen[from as usize] {
            return;
        }
        seen[from as usize] = true;
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            for nb in self.neighbours(x, 0) {
                if !seen[nb as usize] {
                    seen[nb as usize] = true;
                    stack.push(nb);
                }
            }
        }
    }

    /// Links every layer-0 node that a search cannot reach into the reachable graph;
    /// returns how many nodes it linked.
    ///
    /// The selection heuristic prunes a full neighbour list without regard to in-links,
    /// so a few nodes end up with none: no search ever returns them, whatever its `ef`
    /// (measured: 63 of the 100k synth-clustered rows at M 16, efConstruction 200; 0–3 of
    /// 325 sampled rows at M 8 on 16-d clusters; docs/BENCHMARKS.md). Each such
    /// node is found by a walk towards it (so only reachable nodes are candidates) and
    /// added to the list of the nearest candidate with a free slot. When every list is
    /// full, it replaces, in the nearest one, the link whose target has the most
    /// in-links, if that target keeps another. Linking a node also reaches whatever it
    /// links to, so an unreachable group is usually repaired through one of its nodes.
    /// Runs on one thread after the build, before anything reads the graph.
    /// Rows in `absent` (held out of the graph for now) are left alone.
    fn repair(&self, sp: &Space<'_>, efc: usize, absent: Option<&Bitset>) -> usize {
        let mut linked = 0;
        // A replaced link can strand its target when its other in-links come from nodes
        // that were unreachable themselves; another round links those.
        for _ in 0..3 {
            let mut seen = self.reached_from_entry();
            if let Some(a) = absent {
                for (i, s) in seen.iter_mut().enumerate() {
                    *s |= a.get(i);
                }
            }
            if seen.iter().all(|&r| r) {
                break;
            }
            let round = self.repair_round(sp, efc, &mut seen);
            linked += round;
            if round == 0 {
                break;
            }
        }
        linked
    }

    fn repair_round(&self, sp: &Space<'_>, efc: usize, seen: &mut [bool]) -> usize {
        let mut indeg = vec![0u32; self.n];
        for x in 0..self.n as u32 {
            for nb in self.neighbours(x, 0) {
                indeg[nb as usize] += 1;
            }
        }
        let mut linked = 0;
        for u in 0..self.n as u32 {
            if seen[u as usize] {
                continue;
            }
            let q = sp.node_query(u);
            let ds = RawDist { sp, q: &q };
            let cands = self.walk(&ds, efc, Filt::All, Some(u));
            let count = |id: u32| self.links(id, 0)[0].load(Relaxed) as usize;
            let reachable: Vec<u32> = cands
                .iter()
                .map(|c| c.id)
                .filter(|&id| seen[id as usize])
                .collect();
            if let Some(&v) = reachable.iter().find(|&&v| count(v) < self.m0) {
                let l = self.links(v, 0);
                let k = count(v);
                l[1 + k].store(u, Relaxed);
                l[0].store(k as u32 + 1, Relaxed);
            } else {
                // Every candidate's list is full: in the nearest that can spare one,
                // the link whose target keeps the most other in-links gives way.
                let spare = reachable.iter().find_map(|&v| {
                    let l = &self.links(v, 0)[1..=count(v)];
                    l.iter()
                        .filter(|a| indeg[a.load(Relaxed) as usize] >= 2)
                        .max_by_key(|a| indeg[a.load(Relaxed) as usize])
                });
                let Some(slot) = spare else {
                    continue;
                };
                let gone = slot.swap(u, Relaxed);
                indeg[gone as usize] -= 1;
            }
            indeg[u as usize] += 1;
            linked += 1;
            self.mark_reachable(u, seen);
        }
        linked
    }

    fn measure_curve(
        &self,
        sp: &Space<'_>,
        seed: u64,
        threads: usize,
        allow: Option<&Bitset>,
        queries: recall::Queries<'_>,
    ) -> RecallCurve {
        let stop = if allow.is_some() {
            recall::FILTERED_STOP
        } else {
            0.999
        };
        let allow = allow.map(|a| (a, a.count_ones()));
        recall::measure(
            sp,
            &CURVE_EFS,
            seed,
            threads,
            allow.map(|a| a.0),
            stop,
            queries,
            |q, exclude, ef, k| {
                self.search_prepared(sp, q, k, ef as usize, allow, Some(exclude))
                    .iter()
                    .map(|c| c.id)
                    .collect()
            },
        )
    }

    /// Unfiltered or filtered graph search over a prepared query.
    fn search_prepared(
        &self,
        sp: &Space<'_>,
        q: &[f32],
        k: usize,
        ef: usize,
        allow: Option<(&Bitset, usize)>,
        exclude: Option<u32>,
    ) -> Vec<Cand> {
        if self.entry == NO_ENTRY {
            return Vec::new();
        }
        let filt = match allow {
            None => Filt::All,
            Some((b, c)) if c as f64 >= TWO_HOP_BELOW * self.n as f64 => Filt::Navigate(b),
            Some((b, _)) => Filt::TwoHop(b),
        };
        match &self.sq {
            None => {
                let ds = RawDist { sp, q };
                let mut r = self.walk(&ds, ef.max(k), filt, exclude);
                r.truncate(k);
                r
            }
            Some(sc) => {
                let ds = CodeDist {
                    sq: &sc.sq,
                    codes: &sc.codes,
                    dim: self.dim,
                    q: sc.sq.prepare(self.metric, q),
                };
                // Walk the codes, then rescore every candidate with the raw vectors.
                // No `SearchParams::prefetch` here: HNSW_SQ rescores all `ef` candidates,
                // and announcing them cost ~30 % of its QPS on rows that were in memory
                // (docs/BENCHMARKS.md); the path for vectors on disk is IVF with `refine`.
                let mut r = self.walk(&ds, ef.max(k), filt, exclude);
                for c in &mut r {
                    c.d = sp.dist(q, c.id);
                }
                r.sort_unstable();
                r.truncate(k);
                r
            }
        }
    }

    /// Greedy descent through the upper layers (a beam on layer 1 in large graphs, see
    /// [`entry_beam`]), then the layer-0 walk from its best rows.
    fn walk<D: DistSource>(
        &self,
        ds: &D,
        ef: usize,
        filt: Filt<'_>,
        exclude: Option<u32>,
    ) -> Vec<Cand> {
        let beam = entry_beam(self.n, self.m, self.max_level);
        self.walk_from(ds, ef, filt, exclude, beam)
    }

    /// [`HnswIndex::walk`] with a given layer-1 beam (0: greedy).
    fn walk_from<D: DistSource>(
        &self,
        ds: &D,
        ef: usize,
        filt: Filt<'_>,
        exclude: Option<u32>,
        beam: usize,
    ) -> Vec<Cand> {
        let mut cur = Cand {
            d: ds.dist(self.entry),
            id: self.entry,
        };
        let beam = if self.max_level == 0 { 0 } else { beam };
        let stop = if beam > 0 { 2 } else { 1 };
        for l in (stop..=self.max_level).rev() {
            cur = self.greedy(ds, cur, l);
        }
        let mut vis = self.pool.get(self.n);
        // Greedy graphs (the common case) pass `cur` itself: no allocation per search.
        let seeds;
        let eps: &[Cand] = if beam > 0 {
            let mut r = self.search_layer(ds, &[cur], beam, 1, Filt::All, &mut vis);
            r.truncate(beam / ENTRY_SEEDS_PER);
            vis.reset(self.n);
            seeds = r;
            &seeds
        } else {
            std::slice::from_ref(&cur)
        };
        if let Some(x) = exclude {
            vis.check_set(x);
        }
        let r = self.search_layer(ds, eps, ef, 0, filt, &mut vis);
        self.pool.put(vis);
        r
    }

    /// The `ef` a search will use, and the recall the build-time curves predict for it.
    pub fn choose_ef(&self, p: &SearchParams<'_>) -> Knob {
        self.choose_ef_for(p, p.allow.map(|b| b.count_ones()))
    }

    /// As [`HnswIndex::choose_ef`], knowing that `allowed` rows pass the filter: a
    /// filtered walk takes its `ef` from the filtered curves around that fraction
    /// ([`FilteredCurves::choose`]), an unfiltered one (or one without filtered curves)
    /// from the unfiltered curve. An explicit `ef` wins either way.
    fn choose_ef_for(&self, p: &SearchParams<'_>, allowed: Option<usize>) -> Knob {
        let fraction = allowed
            .filter(|&c| c < self.n && !self.filtered.curves.is_empty())
            .map(|c| c as f64 / self.n.max(1) as f64);
        let recall_at = |ef: usize| match fraction {
            Some(f) => self.filtered.recall_at(f, TWO_HOP_BELOW, ef),
            None => self.curve.recall_at(ef),
        };
        // A target the filtered curves do not reach falls back to the unfiltered curve.
        let choose = |t: f32| {
            fraction
                .and_then(|f| self.filtered.choose(f, TWO_HOP_BELOW, t))
                .or_else(|| self.curve.choose(t))
        };
        let (ef, expected) = match (p.ef, p.recall) {
            (Some(ef), _) => (ef, recall_at(ef.max(p.k))),
            (None, t) => match choose(t.unwrap_or(0.95)) {
                Some((ef, r)) => (ef as usize, Some(r)),
                None => (DEFAULT_EF, None),
            },
        };
        let value = ef.max(p.k);
        Knob {
            name: "ef",
            value,
            expected_recall: if value == ef {
                expected
            } else {
                recall_at(value)
            },
        }
    }

    /// Writes the graph (not the vectors) to `out`: what [`Self::from_bytes`] reads.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut w = Writer::new(out, MAGIC);
        w.u8(codec::metric_code(self.metric));
        w.u64(self.n as u64);
        w.u32(self.dim as u32);
        w.u32(self.m as u32);
        w.u32(self.entry);
        w.u32(self.max_level as u32);
        w.bytes(&self.levels);
        w.u32s(self.upper_start.iter().copied());
        w.u32s(self.upper.iter().map(|a| a.load(Relaxed)));
        w.u32s(self.links0.iter().map(|a| a.load(Relaxed)));
        self.curve.write(&mut w);
        match &self.sq {
            None => w.u8(0),
            Some(sc) => {
                w.u8(1);
                sc.sq.write(&mut w);
                w.bytes(&sc.codes);
            }
        }
        self.filtered.write(&mut w);
        w.finish()
    }

    /// The index file in memory; see [`Self::write_to`].
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::to_vec(|out| self.write_to(out))
    }

    /// Parses [`HnswIndex::to_bytes`] output, checking every offset against `n`.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let v1 = b.starts_with(MAGIC_V1);
        let mut r = Reader::new(b, if v1 { MAGIC_V1 } else { MAGIC })?;
        let metric = codec::metric_from_code(r.u8()?)?;
        let n = r.u64()? as usize;
        let dim = r.u32()? as usize;
        let m = r.u32()? as usize;
        let entry = r.u32()?;
        let max_level = r.u32()? as usize;
        let levels = r.bytes()?;
        let upper_start = r.u32s()?;
        let upper = r.u32s()?;
        let links0 = r.u32s()?;
        let curve = RecallCurve::read(&mut r)?;
        let sq = match r.u8()? {
            0 => None,
            1 => Some(SqCodes {
                sq: Sq8::read(&mut r)?,
                codes: r.bytes()?,
            }),
            c => return Err(IndexError::Corrupt(format!("HNSW: unknown codes flag {c}"))),
        };
        let filtered = if v1 {
            FilteredCurves::default()
        } else {
            FilteredCurves::read(&mut r)?
        };
        r.finish()?;
        let bad = |m: &str| IndexError::Corrupt(format!("HNSW: {m}"));
        if let Some(sc) = &sq {
            if sc.sq.dim() != dim || n.checked_mul(dim) != Some(sc.codes.len()) {
                return Err(bad("SQ8 codes do not match the rows"));
            }
        }
        let m0 = 2 * m;
        if !(2..=128).contains(&m) || max_level > MAX_LEVEL {
            return Err(bad("bad header"));
        }
        if levels.len() != n
            || upper_start.len() != n.wrapping_add(1)
            || n.checked_mul(m0 + 1) != Some(links0.len())
        {
            return Err(bad("array sizes do not match the row count"));
        }
        if (n == 0) != (entry == NO_ENTRY) || (n > 0 && entry as usize >= n) {
            return Err(bad("bad entry point"));
        }
        for i in 0..n {
            let want = upper_start[i] as usize + levels[i] as usize * (m + 1);
            if upper_start[i + 1] as usize != want {
                return Err(bad("upper-layer offsets are inconsistent"));
            }
        }
        if upper_start[n] as usize != upper.len() {
            return Err(bad("upper-layer size mismatch"));
        }
        let check = |arr: &[u32], stride: usize| -> Result<()> {
            for block in arr.chunks_exact(stride) {
                let c = block[0] as usize;
                if c > stride - 1 || block[1..=c].iter().any(|&x| x as usize >= n) {
                    return Err(bad("link out of range"));
                }
            }
            Ok(())
        };
        check(&links0, m0 + 1)?;
        check(&upper, m + 1)?;
        // A walk on level l only reaches nodes that exist on level l: the entry point is
        // on the top level, and every upper-level link points to a node at least that
        // high (a damaged file broke this and sent the greedy descent out of bounds;
        // found by fuzzing).
        if n > 0 && (levels[entry as usize] as usize) < max_level {
            return Err(bad("the entry point is below the top level"));
        }
        for i in 0..n {
            for l in 1..=levels[i] as usize {
                let s = upper_start[i] as usize + (l - 1) * (m + 1);
                let block = &upper[s..s + m + 1];
                let c = block[0] as usize;
                if block[1..=c]
                    .iter()
                    .any(|&x| (levels[x as usize] as usize) < l)
                {
                    return Err(bad("an upper-level link points below its level"));
                }
            }
        }
        Ok(HnswIndex {
            metric,
            n,
            dim,
            m,
            m0,
            entry,
            max_level,
            levels,
            links0: links0.into_iter().map(AtomicU32::new).collect(),
            upper_start,
            upper: upper.into_iter().map(AtomicU32::new).collect(),
            curve,
            filtered,
            sq,
            exact_below: exact_cutoff(n, dim),
            pool: VisitedPool::default(),
        })
    }
}

/// Passing fractions the filtered recall curves of an `n`-row graph are measured at: for
/// the two-hop walk, its lowest fraction (`exact_below / n`, where its recall is lowest)
/// and then steps of [`recall::CURVE_FRACTION_STEP`]× up to [`TWO_HOP_BELOW`]; for the
/// navigating walk, 0.5 and 0.9. A search between two measured fractions interpolates their `ef`
/// ([`FilteredCurves::choose`]), so the steps bound how far it can be off: with one
/// two-hop curve (0.04 at 1M rows), 10 % passing took that curve's `ef` 192 and reached
/// recall 0.985 where 0.95 was asked (docs/BENCHMARKS.md, "1M × 128"). Each curve
/// costs a sweep of filtered searches at build time (on minilm 50k × 384 three curves
/// added about 3–6 s to a 15–23 s build); fractions an exact scan answers are left out.
/// Interim graphs measure them too, whenever they measure their unfiltered curve.
pub fn filter_curve_fractions(n: usize, exact_below: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let lo = (exact_below as f64 / n as f64).max(0.01);
    let mut out = recall::fraction_ladder(lo, TWO_HOP_BELOW);
    out.extend([TWO_HOP_BELOW, 0.9].into_iter().filter(|&f| f >= lo));
    out
}

/// Below this many passing rows an exact scan is faster than a filtered walk (measured
/// crossover: ~3,500 rows at 128-d, ~5,000 at 384-d; docs/BENCHMARKS.md, "Filtered").
pub const EXACT_BELOW_ROWS: usize = 4096;
/// Below this fraction of passing rows the filtered walk loses recall even with two-hop
/// expansion (measured: 0.77 at 2 %, 0.93 at 5 % with ef=32 on synth-clustered), so the
/// search scans the passing rows exactly whatever their number.
pub const EXACT_BELOW_FRACTION: f64 = 0.04;

/// SQ8 codes of every row (unit rows for COSINE), for HNSW_SQ. Two passes over the rows,
/// one to fit the ranges and one to encode, each reading a row at a time: the only
/// buffer the size of the collection is the codes themselves (a quarter of the raw
/// rows), not a prepared copy of every row as well (512 MB at 1M × 128).
fn encode_sq8(sp: &Space<'_>) -> SqCodes {
    let n = sp.v.len();
    let dim = sp.v.dim;
    let sq = Sq8::train_rows((0..n as u32).map(|i| sp.node_query(i)), dim);
    let mut codes = vec![0u8; n * dim];
    for (i, c) in codes.chunks_exact_mut(dim).enumerate() {
        sq.encode(&sp.node_query(i as u32), c);
    }
    SqCodes { sq, codes }
}

/// Passing-row count below which a filtered search scans the passing rows exactly.
fn exact_cutoff(n: usize, _dim: usize) -> usize {
    ((n as f64 * EXACT_BELOW_FRACTION) as usize).max(EXACT_BELOW_ROWS)
}

impl VectorIndexBuild for HnswIndex {
    type Params = HnswParams;
    /// Builds without inverse norms; use [`HnswIndex::build_with`] for COSINE.
    fn build(v: VectorSlice<'_>, metric: Metric, p: &HnswParams, cancel: &Cancel) -> Result<Self> {
        let inv = if metric == Metric::COSINE {
            v.inv_norms()
        } else {
            Vec::new()
        };
        Self::build_with(v, &inv, metric, p, cancel)
    }
}

impl VectorIndexRead for HnswIndex {
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        p: &SearchParams<'_>,
    ) -> Result<Vec<Scored>> {
        crate::check_search("HNSW", self.dim, self.n, vectors, query, p)?;
        let allow = match p.allow {
            Some(b) => {
                let c = b.count_ones();
                if c == 0 {
                    return Ok(Vec::new());
                }
                if c < self.exact_below.min(self.n)
                    || p.min_score.is_some()
                    || p.max_score.is_some()
                {
                    return FlatIndex::new(self.metric).search(vectors, inv_norms, query, p);
                }
                if c == self.n {
                    None
                } else {
                    Some((b, c))
                }
            }
            None if p.min_score.is_some() || p.max_score.is_some() => {
                return FlatIndex::new(self.metric).search(vectors, inv_norms, query, p);
            }
            None => None,
        };
        let sp = Space::new(vectors, inv_norms, self.metric);
        let q = sp.prepare(query);
        let ef = self.choose_ef_for(p, allow.map(|a| a.1)).value;
        Ok(self
            .search_prepared(&sp, &q, p.k, ef, allow, None)
            .into_iter()
            .map(|c| Scored {
                offset: c.id,
                score: -c.d,
            })
            .collect())
    }

    fn memory_bytes(&self) -> usize {
        self.links0.len() * 4
            + self.upper.len() * 4
            + self.upper_start.len() * 4
            + self.levels.len()
            + self
                .sq
                .as_ref()
                .map_or(0, |s| s.codes.len() + s.sq.dim() * 8)
    }

    fn knob(&self, p: &SearchParams<'_>) -> Option<Knob> {
        Some(self.choose_ef(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{clustered, exact_topk, recall_of};

    fn build(n: usize, dim: usize, metric: Metric) -> (Vec<f32>, Vec<f32>, HnswIndex) {
        build_sq(n, dim, metric, false)
    }

    fn build_sq(
        n: usize,
        dim: usize,
        metric: Metric,
        sq8: bool,
    ) -> (Vec<f32>, Vec<f32>, HnswIndex) {
        let data = clustered(n, dim, 20, 7);
        let v = VectorSlice::new(&data, dim);
        let inv: Vec<f32> = (0..n)
            .map(|i| 1.0 / magpie_linalg::norm(&v.row(i)))
            .collect();
        let p = HnswParams {
            m: 12,
            ef_construction: 100,
            threads: 2,
            sq8,
            ..Default::default()
        };
        let idx = HnswIndex::build_with(v, &inv, metric, &p, &Cancel::new()).unwrap();
        (data, inv, idx)
    }

    /// The streamed two-pass encoding fits the ranges of the prepared rows (unit rows for
    /// COSINE, the rows as given otherwise) and codes every row within half a step of it.
    #[test]
    fn sq8_codes_cover_the_prepared_rows() {
        let (n, dim) = (700, 10);
        let data = clustered(n, dim, 6, 3);
        let v = VectorSlice::new(&data, dim);
        let inv = v.inv_norms();
        for metric in [Metric::L2, Metric::COSINE] {
            let sp = Space::new(v, &inv, metric);
            let SqCodes { sq, codes } = encode_sq8(&sp);
            assert_eq!(codes.len(), n * dim);
            let rows: Vec<Vec<f32>> = (0..n)
                .map(|i| {
                    let r = v.row(i).into_owned();
                    match metric {
                        Metric::COSINE => r.iter().map(|x| x * inv[i]).collect(),
                        _ => r,
                    }
                })
                .collect();
            for d in 0..dim {
                let lo = rows.iter().map(|r| r[d]).fold(f32::INFINITY, f32::min);
                let hi = rows.iter().map(|r| r[d]).fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(sq.min[d], lo, "{metric:?} dim {d}");
                assert!((sq.min[d] + 255.0 * sq.step[d] - hi).abs() <= 1e-5 * hi.abs().max(1.0));
            }
            for (r, c) in rows.iter().zip(codes.chunks_exact(dim)) {
                for (d, (x, y)) in r.iter().zip(sq.decode(c)).enumerate() {
                    assert!((x - y).abs() <= sq.step[d] * 0.5 + 1e-6, "{metric:?}");
                }
            }
        }
    }

    /// The rule's thresholds at M 16: greedy below 262,144 rows, then one beam row per
    /// 2,048 rows of layer 1, at most 64; a graph of one layer has no layer 1.
    #[test]
    fn the_entry_beam_grows_with_layer_one() {
        assert_eq!(entry_beam(262_143, 16, 3), 0);
        assert_eq!(entry_beam(262_144, 16, 3), 8);
        assert_eq!(entry_beam(1_000_000, 16, 4), 30);
        assert_eq!(entry_beam(2_000_000, 16, 4), 61);
        assert_eq!(entry_beam(10_000_000, 16, 5), 64);
        assert_eq!(entry_beam(2_000_000, 32, 4), 30);
        assert_eq!(entry_beam(2_000_000, 16, 0), 0);
    }

    /// Where the greedy descent ends in the wrong cluster (many small clusters, few
    /// links, a narrow layer-0 walk), seeding layer 0 from a beam on layer 1 finds more
    /// of the true neighbours; and the walk stays correct with more seeds than `ef`.
    #[test]
    fn a_layer_one_beam_finds_what_the_greedy_descent_misses() {
        let (n, dim) = (20_000, 16);
        let data = clustered(n, dim, 400, 5);
        let v = VectorSlice::new(&data, dim);
        let inv = v.inv_norms();
        let p = HnswParams {
            m: 4,
            ef_construction: 40,
            threads: 1,
            ..Default::default()
        };
        let idx = HnswIndex::build_with(v, &inv, Metric::L2, &p, &Cancel::new()).unwrap();
        assert!(idx.max_level >= 1);
        let sp = Space::new(v, &inv, Metric::L2);
        let queries = clustered(300, dim, 400, 77);
        let recall = |beam: usize, ef: usize| {
            let mut hit = 0;
            for q in queries.chunks_exact(dim) {
                let qp = sp.prepare(q);
                let got = idx.walk_from(&RawDist { sp: &sp, q: &qp }, ef, Filt::All, None, beam);
                assert!(got.len() <= ef && got.windows(2).all(|w| w[0].d <= w[1].d));
                let want = exact_topk(v, &inv, Metric::L2, q, 10, None);
                hit += got.iter().take(10).filter(|c| want.contains(&c.id)).count();
            }
            hit as f64 / (queries.len() / dim * 10) as f64
        };
        let (greedy, wide) = (recall(0, 10), recall(32, 10));
        eprintln!("recall@10 at ef 10: greedy {greedy:.4}, beam 32 {wide:.4}");
        assert!(wide >= greedy + 0.1, "greedy {greedy}, beam {wide}");
        // Eight seeds into a walk of ef 4: still at most ef results, sorted.
        assert!(recall(32, 4) > 0.0);
    }

    #[test]
    fn recall_per_metric() {
        for metric in [Metric::L2, Metric::IP, Metric::COSINE] {
            let (data, inv, idx) = build(3000, 24, metric);
            let v = VectorSlice::new(&data, 24);
            let queries = clustered(50, 24, 20, 99);
            let r = recall_of(&idx, v, &inv, metric, &queries, 10, |k| SearchParams {
                ef: Some(64),
                ..SearchParams::top_k(k)
            });
            assert!(r >= 0.95, "{metric:?}: recall {r}");
            assert!(!idx.curve().points.is_empty());
        }
    }

    #[test]
    fn a_graph_grown_in_steps_finds_what_one_built_at_once_finds() {
        let (n, dim) = (3000, 24);
        let data = clustered(n, dim, 20, 7);
        let queries = clustered(50, dim, 20, 99);
        // One build thread inserts in a fixed order, so its graph (and this test's
        // verdict) is the same on every run. Two threads interleave differently on each
        // run; their graphs are checked with a margin (across 40 measured local runs and one CI
        // run, 97.2-100 % of rows found themselves).
        for (metric, threads) in [
            (Metric::L2, 1),
            (Metric::COSINE, 1),
            (Metric::L2, 2),
            (Metric::COSINE, 2),
        ] {
            let all = VectorSlice::new(&data, dim);
            let inv: Vec<f32> = (0..n)
                .map(|i| 1.0 / magpie_linalg::norm(&all.row(i)))
                .collect();
            let p = HnswParams {
                m: 12,
                ef_construction: 100,
                threads,
                measure_recall: false,
                ..Default::default()
            };
            let c = Cancel::new();
            let first =
                HnswIndex::build_with(all.rows_range(0, 400), &inv[..400], metric, &p, &c).unwrap();
            let mut g = first;
            for end in [401, 1200, n] {
                g = g
                    .extend(all.rows_range(0, end), &inv[..end], &p, &c)
                    .unwrap();
                assert_eq!(g.shape(), (end, dim));
            }
            // Nothing to add: the same graph.
            let same = g.extend(all, &inv, &p, &c).unwrap();
            assert_eq!(same.to_bytes(), g.to_bytes());
            let r = recall_of(&g, all, &inv, metric, &queries, 10, |k| SearchParams {
                ef: Some(64),
                ..SearchParams::top_k(k)
            });
            assert!(
                r >= 0.95,
                "{metric:?}, {threads} threads: recall {r} of a graph grown in steps"
            );
            // Every row is reachable as its own nearest neighbour.
            let sp = SearchParams {
                ef: Some(64),
                ..SearchParams::top_k(1)
            };
            let found = (0..n)
                .step_by(7)
                .filter(|&i| g.search(all, &inv, &all.row(i), &sp).unwrap()[0].offset as usize == i)
                .count();
            let want = if threads == 1 { 98 } else { 95 };
            assert!(
                found * 100 >= want * n.div_ceil(7),
                "{metric:?}, {threads} threads: {found} of {} rows found themselves",
                n.div_ceil(7)
            );
        }
        // The rows must be the graph's rows and more, of its dimension.
        let p = HnswParams::default();
        let v = VectorSlice::new(&data, dim);
        let g = HnswIndex::build_with(v.rows_range(0, 100), &[], Metric::L2, &p, &Cancel::new())
            .unwrap();
        let e = g
            .extend(v.rows_range(0, 50), &[], &p, &Cancel::new())
            .unwrap_err();
        assert!(e.to_string().contains("at least as many rows"), "{e}");
        let other = clustered(200, 12, 4, 1);
        let e = g
            .extend(VectorSlice::new(&other, 12), &[], &p, &Cancel::new())
            .unwrap_err();
        assert!(e.to_string().contains("of dim 24"), "{e}");
    }

    #[test]
    fn every_node_is_reachable_after_a_build_or_an_extension() {
        // Small M on tight clusters: the pruning heuristic leaves nodes without in-links
        // here.
        let (n, dim) = (6000, 16);
        let data = clustered(n, dim, 20, 9);
        let all = VectorSlice::new(&data, dim);
        let inv: Vec<f32> = (0..n)
            .map(|i| 1.0 / magpie_linalg::norm(&all.row(i)))
            .collect();
        let c = Cancel::new();
        for (metric, threads) in [(Metric::L2, 1), (Metric::L2, 2), (Metric::COSINE, 2)] {
            let p = HnswParams {
                m: 4,
                ef_construction: 32,
                threads,
                measure_recall: false,
                ..Default::default()
            };
            let built = HnswIndex::build_with(all, &inv, metric, &p, &c).unwrap();
            let first =
                HnswIndex::build_with(all.rows_range(0, 500), &inv[..500], metric, &p, &c).unwrap();
            let grown = first.extend(all, &inv, &p, &c).unwrap();
            for (how, g) in [("built", &built), ("extended", &grown)] {
                let lost = g.reached_from_entry().iter().filter(|&&r| !r).count();
                assert_eq!(
                    lost, 0,
                    "{metric:?}, {threads} threads, {how}: {lost} nodes unreachable"
                );
                // A search as wide as the graph finds every row as its own nearest.
                let sp = SearchParams {
                    ef: Some(n),
                    ..SearchParams::top_k(1)
                };
                let missed: Vec<usize> = (0..n)
                    .step_by(17)
                    .filter(|&i| {
                        g.search(all, &inv, &all.row(i), &sp).unwrap()[0].offset as usize != i
                    })
                    .collect();
                assert!(
                    missed.is_empty(),
                    "{metric:?}, {threads} threads, {how}: missed {missed:?}"
                );
            }
        }
    }

    #[test]
    fn repair_links_a_node_when_every_list_is_full() {
        // Every layer-0 list filled to 2·M with the node's nearest rows, and every link
        // to one node removed: the repair must give up a link whose target keeps another.
        let (n, dim) = (400, 8);
        let data = clustered(n, dim, 4, 3);
        let all = VectorSlice::new(&data, dim);
        let p = HnswParams {
            m: 2,
            ef_construction: 16,
            threads: 1,
            measure_recall: false,
            ..Default::default()
        };
        let g = HnswIndex::build_with(all, &[], Metric::L2, &p, &Cancel::new()).unwrap();
        let u = (n / 2) as u32;
        assert_ne!(g.entry, u);
        for x in 0..n as u32 {
            if x == u {
                continue;
            }
            let mut list: Vec<u32> = g.neighbours(x, 0).filter(|&y| y != u).collect();
            for y in exact_topk(all, &[], Metric::L2, &all.row(x as usize), g.m0 + 2, None) {
                if list.len() < g.m0 && y != x && y != u && !list.contains(&y) {
                    list.push(y);
                }
            }
            assert_eq!(list.len(), g.m0);
            g.write_links(x, 0, list.into_iter());
        }
        assert!(!g.reached_from_entry()[u as usize]);
        let sp = Space::new(all, &[], Metric::L2);
        assert!(g.repair(&sp, 16, None) >= 1);
        assert!(g.reached_from_entry().iter().all(|&r| r));
        assert!((0..n as u32).all(|x| x == u || g.neighbours(x, 0).count() == g.m0));
        let hit = g
            .search(
                all,
                &[],
                &all.row(u as usize),
                &SearchParams {
                    ef: Some(n),
                    ..SearchParams::top_k(1)
                },
            )
            .unwrap();
        assert_eq!(hit[0].offset, u);
    }

    #[test]
    fn graphs_do_not_announce_rescores() {
        // HNSW_SQ rescores every ef candidate; a prefetch per row cost more than it saved
        // on rows in memory, so neither graph index calls the hook (IVF's refine does).
        #[derive(Default)]
        struct Recorder(std::sync::Mutex<Vec<Vec<u32>>>);
        impl crate::RowPrefetch for Recorder {
            fn will_read(&self, rows: &[u32]) {
                self.0.lock().unwrap().push(rows.to_vec());
            }
        }
        for sq in [true, false] {
            let (data, inv, idx) = build_sq(3000, 24, Metric::L2, sq);
            let v = VectorSlice::new(&data, 24);
            let q = &data[24 * 5..24 * 6];
            let rec = Recorder::default();
            let p = SearchParams {
                ef: Some(40),
                prefetch: Some(&rec),
                ..SearchParams::top_k(10)
            };
            let hits = idx.search(v, &inv, q, &p).unwrap();
            assert_eq!(hits[0].offset, 5);
            assert!(rec.0.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn hnsw_sq_recall_per_metric_and_round_trip() {
        for metric in [Metric::L2, Metric::IP, Metric::COSINE] {
            let (data, inv, idx) = build_sq(3000, 24, metric, true);
            assert!(idx.has_codes());
            let v = VectorSlice::new(&data, 24);
            let queries = clustered(50, 24, 20, 99);
            let r = recall_of(&idx, v, &inv, metric, &queries, 10, |k| SearchParams {
                ef: Some(64),
                ..SearchParams::top_k(k)
            });
            assert!(r >= 0.93, "HNSW_SQ {metric:?}: recall {r}");
            // Scores are exact (rescored with the raw vectors).
            let q = &queries[..24];
            let got = idx.search(v, &inv, q, &SearchParams::top_k(3)).unwrap();
            for s in got {
                let want = metric.score(
                    &{
                        let mut x = q.to_vec();
                        if metric == Metric::COSINE {
                            magpie_linalg::normalize(&mut x);
                        }
                        x
                    },
                    &v.row(s.offset as usize),
                    inv[s.offset as usize],
                );
                assert!((s.score - want).abs() <= 1e-4 * want.abs().max(1.0));
            }
            let back = HnswIndex::from_bytes(&idx.to_bytes()).unwrap();
            assert!(back.has_codes());
            let p = SearchParams::top_k(5);
            assert_eq!(
                idx.search(v, &inv, q, &p).unwrap(),
                back.search(v, &inv, q, &p).unwrap()
            );
        }
    }

    #[test]
    fn filtered_search_returns_only_allowed_with_recall() {
        let (data, inv, mut idx) = build(4000, 16, Metric::L2);
        // Keep the fraction rule but drop the absolute floor, so this small index takes
        // the graph paths (two-hop below 50 %, navigate above) where a big one would.
        idx.set_exact_below((4000.0 * EXACT_BELOW_FRACTION) as usize);
        // The plan searchInfo reports for each passing count.
        for (allowed, plan) in [
            (0, "exact"),
            (159, "exact"),
            (160, "twoHopWalk"),
            (1999, "twoHopWalk"),
            (2000, "walk"),
            (3999, "walk"),
            (4000, "unfiltered"),
        ] {
            assert_eq!(idx.filter_plan(allowed), plan, "{allowed} of 4000");
        }
        let v = VectorSlice::new(&data, 16);
        let queries = clustered(30, 16, 20, 5);
        for frac in [0.01, 0.06, 0.1, 0.3, 0.5, 0.9] {
            let mut allow = Bitset::zeros(4000);
            for i in 0..4000 {
                if crate::space::unit(i as u64 * 31 + 7) < frac {
                    allow.set(i, true);
                }
            }
            let mut hit = 0;
            let mut tot = 0;
            for q in queries.chunks_exact(16) {
                let p = SearchParams {
                    allow: Some(&allow),
                    ef: Some(64),
                    ..SearchParams::top_k(10)
                };
                let got = idx.search(v, &inv, q, &p).unwrap();
                assert!(got.iter().all(|s| allow.get(s.offset as usize)));
                let want = exact_topk(v, &inv, Metric::L2, q, 10, Some(&allow));
                hit += got.iter().filter(|g| want.contains(&g.offset)).count();
                tot += want.len();
            }
            let r = hit as f64 / tot as f64;
            assert!(r >= 0.95, "frac {frac}: recall {r}");
        }
    }

    #[test]
    fn serialise_round_trip_and_corruption() {
        // Enough rows that some filters take the graph (and have measured curves).
        let (data, inv, idx) = build(6000, 8, Metric::COSINE);
        let v = VectorSlice::new(&data, 8);
        let bytes = idx.to_bytes();
        let back = HnswIndex::from_bytes(&bytes).unwrap();
        let q = &data[..8];
        let p = SearchParams {
            ef: Some(40),
            ..SearchParams::top_k(5)
        };
        assert_eq!(
            idx.search(v, &inv, q, &p).unwrap(),
            back.search(v, &inv, q, &p).unwrap()
        );
        assert_eq!(back.curve(), idx.curve());
        assert_eq!(back.filtered_curves(), idx.filtered_curves());
        assert!(!idx.filtered_curves().curves.is_empty());
        assert!(HnswIndex::from_bytes(&bytes[..bytes.len() - 3]).is_err());
        // The filtered curves' bytes at the end: a count, then fraction, count, points.
        let filtered = 4 + idx
            .filtered_curves()
            .curves
            .iter()
            .map(|(_, c)| 4 + 4 + c.points.len() * 8)
            .sum::<usize>();
        // A format-1 file (no filtered curves) still opens, without them.
        let mut v1 = bytes[..bytes.len() - filtered].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        let old = HnswIndex::from_bytes(&v1).unwrap();
        assert!(old.filtered_curves().curves.is_empty());
        assert_eq!(old.curve(), idx.curve());
        let mut evil = bytes.clone();
        // Point the first layer-0 link of some node far out of range.
        let pos =
            evil.len() - filtered - 1 - 4 - idx.curve().points.len() * 8 - (idx.links0.len() * 4)
                + 4;
        evil[pos..pos + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        evil[pos - 4..pos].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            HnswIndex::from_bytes(&evil),
            Err(IndexError::Corrupt(_))
        ));
    }

    #[test]
    fn cancel_and_params_and_empty() {
        let data = clustered(5000, 8, 4, 1);
        let v = VectorSlice::new(&data, 8);
        let c = Cancel::new();
        c.cancel();
        assert!(matches!(
            HnswIndex::build(v, Metric::L2, &HnswParams::default(), &c),
            Err(IndexError::Cancelled)
        ));
        let bad = HnswParams {
            m: 1,
            ..Default::default()
        };
        assert!(matches!(
            HnswIndex::build(v, Metric::L2, &bad, &Cancel::new()),
            Err(IndexError::Param(_))
        ));
        let empty = HnswIndex::build(
            VectorSlice::new(&[], 8),
            Metric::L2,
            &HnswParams::default(),
            &Cancel::new(),
        )
        .unwrap();
        assert!(empty
            .search(
                VectorSlice::new(&[], 8),
                &[],
                &[0.0; 8],
                &SearchParams::top_k(3)
            )
            .unwrap()
            .is_empty());
        let back = HnswIndex::from_bytes(&empty.to_bytes()).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn recall_target_is_honoured_on_held_out_queries() {
        let (data, inv, idx) = build(4000, 24, Metric::L2);
        let v = VectorSlice::new(&data, 24);
        // 400 queries: fewer are too noisy a sample for the 0.01 tolerance (ten sets of
        // 200 on similar data spread over 0.027; see `recall::HELD_OUT_QUERIES`).
        let queries = clustered(400, 24, 20, 1234);
        for target in [0.9f32, 0.95, 0.99] {
            let r = recall_of(&idx, v, &inv, Metric::L2, &queries, 10, |k| SearchParams {
                recall: Some(target),
                ..SearchParams::top_k(k)
            });
            assert!(r + 0.01 >= target as f64, "target {target}: measured {r}");
        }
    }

    /// The build measures its curves with rows held out of the graph, so they predict
    /// the recall of fresh queries from the same data. Measured in place (each row a
    /// query with itself excluded) on the same finished graph, the curve under-predicts
    /// them by 0.015–0.036 at `ef` 16–48 on this data.
    #[test]
    fn the_curve_predicts_fresh_queries_from_held_out_rows() {
        let (n, dim) = (20_000, 24);
        let (data, inv, idx) = build(n, dim, Metric::L2);
        let v = VectorSlice::new(&data, dim);
        let sp = Space::new(v, &inv, Metric::L2);
        let in_place = idx.measure_curve(&sp, 5, 2, None, recall::Queries::InPlace(200));
        let queries = clustered(400, dim, 20, 4321);
        let truth: Vec<Vec<u32>> = queries
            .chunks_exact(dim)
            .map(|q| exact_topk(v, &inv, Metric::L2, q, 10, None))
            .collect();
        let (mut held_err, mut in_place_err, mut points) = (0.0, 0.0, 0);
        for (&(ef, held), &(ef2, place)) in idx.curve().points.iter().zip(&in_place.points) {
            assert_eq!(ef, ef2);
            let p = SearchParams {
                ef: Some(ef as usize),
                ..SearchParams::top_k(10)
            };
            let hit: usize = queries
                .chunks_exact(dim)
                .zip(&truth)
                .map(|(q, t)| {
                    let got = idx.search(v, &inv, q, &p).unwrap();
                    got.iter().filter(|g| t.contains(&g.offset)).count()
                })
                .sum();
            let fresh = hit as f32 / (10 * truth.len()) as f32;
            // The part of the curve a target picks from: below it the sample of 200
            // queries is noisy, above it every curve is close to 1.
            if (0.85..=0.995).contains(&fresh) {
                held_err += (held - fresh).abs();
                in_place_err += (place - fresh).abs();
                points += 1;
            }
        }
        assert!(points >= 3, "{:?}", idx.curve());
        let (held_err, in_place_err) = (held_err / points as f32, in_place_err / points as f32);
        assert!(held_err <= 0.012, "held out: mean error {held_err}");
        assert!(
            in_place_err > 2.0 * held_err,
            "in place {in_place_err} against held out {held_err}"
        );
    }

    /// The rows held out while the curves are measured are inserted after: every one is
    /// reachable and found by its own vector, as every other row is.
    #[test]
    fn held_out_rows_are_in_the_finished_graph() {
        let n = recall::HOLD_OUT_MIN_ROWS + 1000;
        let (data, inv, idx) = build(n, 16, Metric::L2);
        let held = recall::hold_out(n, 1, HnswParams::default().seed).unwrap();
        assert_eq!(held.rows.len(), n / 20);
        assert!(idx.reached_from_entry().iter().all(|&r| r));
        let v = VectorSlice::new(&data, 16);
        for &r in &held.rows {
            assert!(
                idx.neighbours(r, 0).next().is_some(),
                "row {r} has no links"
            );
            let got = idx.search_prepared(
                &Space::new(v, &inv, Metric::L2),
                &v.row(r as usize),
                1,
                32,
                None,
                None,
            );
            assert_eq!(got[0].id, r);
        }
        assert!(!idx.curve().points.is_empty());
    }

    /// The two-hop range gets a curve every 2.5× from its lowest fraction, so a search
    /// in it is never more than one step from a measured fraction.
    #[test]
    fn filtered_curves_step_through_the_two_hop_range() {
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        let at_1m = filter_curve_fractions(1_000_000, exact_cutoff(1_000_000, 128));
        assert!(close(&at_1m, &[0.04, 0.1, 0.25, 0.5, 0.9]), "{at_1m:?}");
        let at_50k = filter_curve_fractions(50_000, exact_cutoff(50_000, 384));
        assert!(close(&at_50k, &[0.08192, 0.2048, 0.5, 0.9]), "{at_50k:?}");
        // Small graphs: the exact scan covers everything below half.
        assert_eq!(filter_curve_fractions(6_000, 4096), vec![0.9]);
        assert!(filter_curve_fractions(0, 4096).is_empty());
    }

    /// Under a filter, a recall target takes `ef` from the filtered curves (measured at
    /// build for the two-hop and the navigating walk) and still holds on held-out queries
    /// and another random filter.
    #[test]
    fn filtered_recall_target_uses_the_filtered_curves_and_holds() {
        let n = 30_000;
        let (data, inv, idx) = build(n, 16, Metric::L2);
        let fr: Vec<f32> = idx.filtered_curves().curves.iter().map(|c| c.0).collect();
        // Two-hop curves at the lowest fraction and 2.5× it, then 0.5 and 0.9.
        let lo = EXACT_BELOW_ROWS as f32 / n as f32;
        assert_eq!(fr.len(), 4, "{fr:?}");
        assert!(
            (fr[0] - lo).abs() < 1e-6
                && (fr[1] - lo * 2.5).abs() < 1e-6
                && fr[2] == 0.5
                && fr[3] == 0.9,
            "{fr:?}"
        );
        let v = VectorSlice::new(&data, 16);
        // 400 queries, as in `recall_target_is_honoured_on_held_out_queries`.
        let queries = clustered(400, 16, 20, 99);
        for frac in [0.2, 0.45, 0.7] {
            let mut allow = Bitset::zeros(n);
            for i in 0..n {
                if crate::space::unit(i as u64 * 131 + 11) < frac {
                    allow.set(i, true);
                }
            }
            for target in [0.9f32, 0.95] {
                let p = SearchParams {
                    allow: Some(&allow),
                    recall: Some(target),
                    ..SearchParams::top_k(10)
                };
                let knob = idx.choose_ef(&p);
                let f = allow.count_ones() as f64 / n as f64;
                // The filtered curves, or the unfiltered one for a target they do not
                // reach (on this data the filtered walks level off near 0.96).
                let filtered = idx.filtered_curves().choose(f, TWO_HOP_BELOW, target);
                if target == 0.9 {
                    assert!(filtered.is_some(), "{frac}: {:?}", idx.filtered_curves());
                }
                let want = filtered.or(idx.curve().choose(target)).unwrap();
                assert_eq!(knob.value, (want.0 as usize).max(10), "{frac} {target}");
                assert_eq!(knob.expected_recall, Some(want.1));
                let (mut hit, mut tot) = (0, 0);
                for q in queries.chunks_exact(16) {
                    let got = idx.search(v, &inv, q, &p).unwrap();
                    let truth = exact_topk(v, &inv, Metric::L2, q, 10, Some(&allow));
                    hit += got.iter().filter(|g| truth.contains(&g.offset)).count();
                    tot += truth.len();
                }
                let r = hit as f64 / tot as f64;
                assert!(
                    r + 0.01 >= target as f64,
                    "{frac} passing, target {target}: measured {r} at ef {}",
                    knob.value
                );
            }
        }
        // Without a filter, the unfiltered curve as before.
        let p = SearchParams {
            recall: Some(0.95),
            ..SearchParams::top_k(10)
        };
        assert_eq!(
            idx.choose_ef(&p).value,
            (idx.curve().choose(0.95).unwrap().0 as usize).max(10)
        );
    }
}
