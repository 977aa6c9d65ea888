//! Recall-targeted search. At build time an index measures the recall@10 it reaches for
//! a range of values of its search knob (`ef` for graphs, `nprobe` for IVF), and stores
//! that curve. A search may then ask for a recall instead of a knob; the index picks the
//! smallest knob whose measured recall clears the target plus a safety margin.
//!
//! The queries are a sample of the index's own rows, so they come from the data's
//! distribution. Two ways of using them:
//! - **held out** ([`HeldOut`], graphs over [`HOLD_OUT_MIN_ROWS`] rows or more): the
//!   sampled rows are left out of the graph while the curves are measured and inserted
//!   after, so each query is a fresh point to the graph, as a user's query is. The truth
//!   is the nearest rows that are in the graph;
//! - **in place** (IVF, and graphs too small to spare the rows): each query's own row is
//!   excluded from both the truth and the answer.
//!
//! In place, a graph's curve was wrong in both directions (measured on 200k synthetic
//! rows; docs/BENCHMARKS.md, "Graph curves on held-out rows"): below recall 0.99 it
//! under-predicted fresh queries (0.928 against 0.957 at `ef` 32), so a target paid for
//! more `ef` than it needed; near the top it over-predicted them (0.999 against 0.996 at
//! `ef` 256), and at 2M rows the 0.95 target reached 0.948. A row's neighbourhood was
//! linked around that row at insertion, which a fresh query's was not.

use crate::space::{splitmix64, Space};
use crate::{Bitset, TopK};

/// Queries sampled per curve.
pub const CURVE_QUERIES: usize = 200;
/// Recall is measured at this k.
pub const CURVE_K: usize = 10;
/// Margin added to a requested target: the curve is measured on a sample of queries.
pub const CURVE_MARGIN: f32 = 0.01;
/// A graph over fewer rows measures its curves in place: holding out [`CURVE_QUERIES`]
/// rows would take more than 5 % of it (and searches under 4,096 rows are exact scans).
pub const HOLD_OUT_MIN_ROWS: usize = 20 * CURVE_QUERIES;
/// Rows a large graph holds out for its curves (at most 5 % of its rows). Per-query
/// recall has a heavy tail, so 200 queries are a noisy sample: on 30k clustered 16-d
/// rows, ten sets of 200 fresh queries measured 0.960–0.987 at the same `ef` and
/// filter, and at 2M synthetic rows a curve of 200 held-out rows sat 0.007–0.017 above
/// 1,000 fresh queries' recall at every `ef` from 96 to 384 (there, 44 of the 1,000
/// found fewer than 8 of their 10 neighbours at `ef` 192). Five times the sample is √5
/// times less noise, for one exact scan of the (passing) rows per extra query at build
/// time.
pub const HELD_OUT_QUERIES: usize = 1000;

/// Rows left out of a graph while its curves are measured, and inserted after: the
/// curves' queries.
pub(crate) struct HeldOut {
    /// Distinct rows, in sampling order.
    pub rows: Vec<u32>,
    /// The same rows as a set over every row of the index.
    pub set: Bitset,
}

/// Distinct rows of `first..n` to hold out of a graph over `n` rows (rows before
/// `first` are already in it): [`HELD_OUT_QUERIES`], or fewer so that they stay within
/// 5 % of the graph and half of the new rows. `None` when that leaves fewer than
/// [`CURVE_QUERIES`] (a graph under [`HOLD_OUT_MIN_ROWS`], or one grown by few rows).
pub(crate) fn hold_out(n: usize, first: usize, seed: u64) -> Option<HeldOut> {
    let span = n.checked_sub(first)?;
    let count = HELD_OUT_QUERIES.min(n / 20).min(span / 2);
    if count < CURVE_QUERIES {
        return None;
    }
    let mut set = Bitset::zeros(n);
    let mut rows = Vec::with_capacity(count);
    // At most half the span is ever taken, so each draw is new with probability ≥ 1/2;
    // the bound on draws only guards the loop.
    for i in 0..64 * count as u64 {
        if rows.len() == count {
            break;
        }
        let r = first + (splitmix64(seed ^ i.wrapping_mul(0x2545_F491)) % span as u64) as usize;
        if !set.get(r) {
            set.set(r, true);
            rows.push(r as u32);
        }
    }
    Some(HeldOut { rows, set })
}

/// Where a curve's queries come from.
#[derive(Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// This many rows sampled from the index, each excluded from its own truth and answer.
    InPlace(usize),
    /// Rows that are not in the index while it is measured (up to this many of them).
    HeldOut(&'a HeldOut, usize),
}

/// Measured (knob, recall@10) points, knob ascending.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecallCurve {
    pub points: Vec<(u32, f32)>,
}

/// The knob value a search used and the recall the curve predicts for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knob {
    pub name: &'static str,
    pub value: usize,
    /// Recall@10 measured at build time for this value (None when it was not measured).
    pub expected_recall: Option<f32>,
}

impl RecallCurve {
    /// Smallest measured knob whose recall is at least `target + CURVE_MARGIN`. When no
    /// knob reaches it (the target is out of reach, e.g. for quantized codes), the
    /// smallest knob within 0.001 of the best measured recall: the start of the plateau,
    /// not a full scan that buys nothing. The returned recall says what to expect.
    pub fn choose(&self, target: f32) -> Option<(u32, f32)> {
        let want = (target + CURVE_MARGIN).min(1.0);
        if let Some(p) = self.points.iter().find(|p| p.1 >= want) {
            return Some(*p);
        }
        let best = self
            .points
            .iter()
            .map(|p| p.1)
            .fold(f32::NEG_INFINITY, f32::max);
        self.points.iter().find(|p| p.1 >= best - 0.001).copied()
    }

    /// The recall measured for `knob`, interpolating between neighbours.
    pub fn recall_at(&self, knob: usize) -> Option<f32> {
        let pts = &self.points;
        let first = pts.first()?;
        if knob as u32 <= first.0 {
            return Some(first.1);
        }
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            if (knob as u32) <= b.0 {
                let t = (knob as f32 - a.0 as f32) / (b.0 as f32 - a.0 as f32);
                return Some(a.1 + t * (b.1 - a.1));
            }
        }
        pts.last().map(|p| p.1)
    }

    pub(crate) fn write(&self, w: &mut crate::codec::Writer<'_>) {
        w.u32(self.points.len() as u32);
        for &(k, r) in &self.points {
            w.u32(k);
            w.f32(r);
        }
    }

    pub(crate) fn read(r: &mut crate::codec::Reader<'_>) -> crate::Result<Self> {
        let n = r.u32()? as usize;
        let mut points = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            points.push((r.u32()?, r.f32()?));
        }
        Ok(Self { points })
    }
}

/// Recall curves of filtered graph walks, each measured with a random filter that passes
/// a fraction of the rows (fraction ascending). A filter changes how far a walk must go
/// for the same recall: a two-hop walk over 10 % of the rows reached 0.95 at a third of
/// the `ef` that unfiltered search needed (docs/BENCHMARKS.md, "Filtered search"), so a
/// recall target under a filter picks its knob from these instead of the unfiltered
/// curve.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FilteredCurves {
    pub curves: Vec<(f32, RecallCurve)>,
}

impl FilteredCurves {
    /// The knob for `target` when `fraction` of the rows pass, from the curves measured
    /// on the same side of `split` (the fraction where the walk changes plan). Between
    /// two measured fractions, each curve's smallest knob reaching the target is found
    /// and the two are interpolated geometrically in the log of the fraction (a knob
    /// grows about as a power of the fraction between neighbours; the larger knob of the
    /// two, as before, took the lower fraction's knob for a fraction just under the upper
    /// one: 10 % passing against curves at 4.1 % and 10.2 % asked for twice the `ef`
    /// and overshot to recall 0.99); the recall reported is the lower of the two curves'.
    /// On a measured fraction or beyond the last one of its plan, that curve. `None` when
    /// no curve of that plan was measured, or one of them does not reach the target
    /// (the caller then uses the unfiltered curve).
    pub fn choose(&self, fraction: f64, split: f64, target: f32) -> Option<(u32, f32)> {
        let want = (target + CURVE_MARGIN).min(1.0);
        let mut pts: [Option<(f32, u32, f32)>; 2] = [None, None];
        for (slot, (f, c)) in pts.iter_mut().zip(self.around(fraction, split)) {
            // A curve that never reaches the target (its sweep stopped at
            // FILTERED_STOP) says nothing about the knob that would: `None`.
            let p = c.points.iter().find(|p| p.1 >= want)?;
            *slot = Some((f, p.0, p.1));
        }
        match pts {
            [Some((_, k, r)), None] => Some((k, r)),
            [Some((f0, k0, r0)), Some((f1, k1, r1))] => {
                let t = ((fraction as f32 / f0).ln() / (f1 / f0).ln()).clamp(0.0, 1.0);
                let k = ((k0 as f32).ln() * (1.0 - t) + (k1 as f32).ln() * t).exp();
                // Rounded up, and never outside the two measured knobs.
                let k = (k - 1e-3)
                    .ceil()
                    .clamp(k0.min(k1) as f32, k0.max(k1) as f32);
                Some((k as u32, r0.min(r1)))
            }
            _ => None,
        }
    }

    /// The lower recall the two curves around `fraction` predict for `knob`.
    pub fn recall_at(&self, fraction: f64, split: f64, knob: usize) -> Option<f32> {
        self.around(fraction, split)
            .filter_map(|(_, c)| c.recall_at(knob))
            .reduce(f32::min)
    }

    /// The curves (with their fractions, ascending) of the measured fractions just below
    /// and just above `fraction` on its plan's side of `split` (one when it lies past an
    /// end or on a measured fraction). Runs per filtered search, so it allocates nothing.
    fn around(&self, fraction: f64, split: f64) -> impl Iterator<Item = (f32, &RecallCurve)> {
        // Compared as stored (f32), so a fraction measured is found exactly.
        let (fraction, split) = (fraction as f32, split as f32);
        let side = |f: f32| f < split;
        let mut plan = self
            .curves
            .iter()
            .filter(move |(f, _)| side(*f) == side(fraction));
        let below = plan.clone().rev().find(|(f, _)| *f <= fraction);
        let above = plan.find(|(f, _)| *f >= fraction);
        let above = above.filter(|a| below.is_none_or(|b| !std::ptr::eq(*a, b)));
        below.into_iter().chain(above).map(|(f, c)| (*f, c))
    }

    pub(crate) fn write(&self, w: &mut crate::codec::Writer<'_>) {
        w.u32(self.curves.len() as u32);
        for (f, c) in &self.curves {
            w.f32(*f);
            c.write(w);
        }
    }

    pub(crate) fn read(r: &mut crate::codec::Reader<'_>) -> crate::Result<Self> {
        let n = r.u32()? as usize;
        let mut curves = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let f = r.f32()?;
            if !(f > 0.0 && f < 1.0) {
                return Err(crate::IndexError::Corrupt(format!(
                    "filtered recall curve at fraction {f}"
                )));
            }
            curves.push((f, RecallCurve::read(r)?));
        }
        Ok(Self { curves })
    }
}

/// A filter passing about `fraction` of `n` rows, chosen by a hash of the row and `seed`.
pub(crate) fn random_filter(n: usize, fraction: f64, seed: u64) -> Bitset {
    let mut b = Bitset::zeros(n);
    let cut = (fraction * u32::MAX as f64) as u64;
    for i in 0..n {
        if splitmix64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 0xFFFF_FFFF < cut {
            b.set(i, true);
        }
    }
    b
}

/// Ratio between consecutive passing fractions at which filtered curves are measured
/// (HNSW's two-hop range, IVF's whole range): 0.04, 0.1, 0.25 at 1M rows.
pub const CURVE_FRACTION_STEP: f64 = 2.5;

/// Passing fractions from `lo` up in steps of [`CURVE_FRACTION_STEP`], below `below`.
pub(crate) fn fraction_ladder(lo: f64, below: f64) -> Vec<f64> {
    std::iter::successors(Some(lo), |f| Some(f * CURVE_FRACTION_STEP))
        .take_while(|&f| f < below)
        .collect()
}

/// Where a filtered curve's sweep stops. Its last rungs are the costly ones (a two-hop walk
/// at `ef` 512 explores far more than an unfiltered one), so it ends at 0.99; a target
/// that needs more under a filter uses the unfiltered curve (see
/// [`FilteredCurves::choose`]).
pub const FILTERED_STOP: f32 = 0.99;

/// Knob values in a row that may each add less than this to the recall before the
/// sweep stops: the codes of a quantized index (without `refine`) cap its recall below
/// 0.999, and probing on toward every list costs a full scan per query for nothing.
const PLATEAU_GAIN: f32 = 0.001;
const PLATEAU_STEPS: usize = 2;

/// Measures a curve on `threads` threads (0 = every core). `search(query, exclude, knob,
/// k)` runs the index with one knob value and must never return `exclude` (the query's
/// own row); with `allow`, it searches under that filter and the truth is the nearest
/// passing rows. `queries` says which rows are the queries ([`CURVE_QUERIES`] of them
/// for most curves); held-out rows are never in the truth. The sweep
/// stops at recall `stop` (0.999 for the unfiltered curve, [`FILTERED_STOP`] for filtered
/// ones), or once [`PLATEAU_STEPS`] knob values in a row gained less than
/// [`PLATEAU_GAIN`] each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn measure(
    sp: &Space<'_>,
    knobs: &[u32],
    seed: u64,
    threads: usize,
    allow: Option<&Bitset>,
    stop: f32,
    queries: Queries<'_>,
    search: impl Fn(&[f32], u32, u32, usize) -> Vec<u32> + Sync,
) -> RecallCurve {
    let n = sp.v.len();
    if n <= CURVE_K + 1 {
        return RecallCurve::default();
    }
    let (queries, held): (Vec<u32>, _) = match queries {
        Queries::InPlace(nq) => {
            let nq = nq.max(1).min(n / 2);
            let q = (0..nq)
                .map(|i| {
                    (splitmix64(seed ^ (i as u64).wrapping_mul(0x2545_F491)) % n as u64) as u32
                })
                .collect();
            (q, None)
        }
        Queries::HeldOut(h, nq) => (h.rows.iter().copied().take(nq.max(1)).collect(), Some(h)),
    };
    let nq = queries.len();
    if nq == 0 {
        return RecallCurve::default();
    }
    let t = crate::space::resolve_threads(threads).clamp(1, nq);
    // Runs `f` on each thread's share of the queries; one answer per query, in order.
    let par = |f: &(dyn Fn(&[u32]) -> Vec<Vec<u32>> + Sync)| -> Vec<Vec<u32>> {
        let per = nq.div_ceil(t);
        std::thread::scope(|s| {
            let hs: Vec<_> = queries.chunks(per).map(|c| s.spawn(move || f(c))).collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("recall curve thread"))
                .collect()
        })
    };
    // Exact truth, excluding the query's own row and every held-out row; each thread
    // takes its share of the queries through every row, a cache-sized block at a time.
    let truth = par(&|c| exact_truth(*sp, c, allow, held.map(|h| &h.set)));
    let mut points: Vec<(u32, f32)> = Vec::new();
    let mut flat = 0;
    for &knob in knobs {
        let got = par(&|c| {
            c.iter()
                .map(|&qi| search(&sp.node_query(qi), qi, knob, CURVE_K))
                .collect()
        });
        let hit: usize = got
            .iter()
            .zip(&truth)
            .map(|(g, t)| g.iter().filter(|x| t.contains(x)).count())
            .sum();
        let total: usize = truth.iter().map(Vec::len).sum();
        let r = hit as f32 / total.max(1) as f32;
        let gain = points.last().map_or(1.0, |p| r - p.1);
        points.push((knob, r));
        if r >= stop {
            break;
        }
        flat = if gain < PLATEAU_GAIN { flat + 1 } else { 0 };
        if flat >= PLATEAU_STEPS {
            break;
        }
    }
    RecallCurve { points }
}

/// Bytes of rows a block of [`exact_truth`] holds: well inside a core's L2 (1 MiB on
/// Zen 4, 2 MiB on recent Xeons), with room for the queries and the heaps.
const TRUTH_BLOCK_BYTES: usize = 256 << 10;

/// The [`CURVE_K`] nearest rows to each of `queries` (rows of `sp`, each excluded from
/// its own answer), among the rows `allow` passes that `held` does not hold.
///
/// The rows are read in blocks of [`TRUTH_BLOCK_BYTES`], each scored against every
/// query while it is in cache. A pass over all rows per query (what this replaced) read
/// the rows from memory once per query: at 10M × 128 f32 that is 5 GB, 200 times per
/// curve. Each query still sees the rows in order through the same `Space::dist`, so its
/// answer, ties included, is that of its own pass.
fn exact_truth(
    sp: Space<'_>,
    queries: &[u32],
    allow: Option<&Bitset>,
    held: Option<&Bitset>,
) -> Vec<Vec<u32>> {
    let n = sp.v.len();
    let row_bytes = match sp.v.rows {
        crate::Rows::F32(_) => sp.v.dim * 4,
        crate::Rows::Half(..) => sp.v.dim * 2,
        crate::Rows::Bin(_) => sp.v.dim,
    };
    let block = (TRUTH_BLOCK_BYTES / row_bytes.max(1)).clamp(64, 1 << 16);
    let qs: Vec<Vec<f32>> = queries.iter().map(|&qi| sp.node_query(qi)).collect();
    let mut tops: Vec<TopK> = queries.iter().map(|_| TopK::new(CURVE_K)).collect();
    let mut rows: Vec<u32> = Vec::with_capacity(block);
    for start in (0..n).step_by(block) {
        rows.clear();
        rows.extend(
            (start..(start + block).min(n))
                .map(|j| j as u32)
                .filter(|&j| {
                    allow.is_none_or(|a| a.get(j as usize))
                        && held.is_none_or(|h| !h.get(j as usize))
                }),
        );
        for ((q, top), &qi) in qs.iter().zip(&mut tops).zip(queries) {
            for &j in &rows {
                if j != qi {
                    top.push(j, -sp.dist(q, j));
                }
            }
        }
    }
    tops.into_iter()
        .map(|t| t.into_sorted().iter().map(|s| s.offset).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked truth is the truth of a pass per query, ties included, across block
    /// edges, with held-out rows and a filter, for f32 and half-precision rows.
    #[test]
    fn blocked_truth_equals_a_pass_per_query() {
        let dim = 16;
        // Few distinct values: many ties, so the order of the pushes matters.
        let data: Vec<f32> = (0..20_000 * dim)
            .map(|i| (splitmix64(i as u64) % 5) as f32)
            .collect();
        let half: Vec<u16> = data
            .iter()
            .map(|&x| magpie_linalg::f32_to_half(x, false).unwrap())
            .collect();
        // Blocks of 4,096 f32 rows and 8,192 half rows at 16-d: several of each.
        let n = 20_000;
        let bits = |f: &dyn Fn(usize) -> bool| {
            let mut b = Bitset::zeros(n);
            (0..n).filter(|&i| f(i)).for_each(|i| b.set(i, true));
            b
        };
        let allow = bits(&|i| !splitmix64(i as u64 ^ 77).is_multiple_of(3));
        let held = bits(&|i| i % 97 == 5);
        let queries: Vec<u32> = (0..40)
            .map(|i| (splitmix64(i ^ 9) % n as u64) as u32)
            .collect();
        for rows in [crate::Rows::F32(&data), crate::Rows::Half(&half, false)] {
            let v = crate::VectorSlice { rows, dim };
            for metric in [crate::Metric::L2, crate::Metric::IP] {
                let sp = Space::new(v, &[], metric);
                for (a, h) in [(None, None), (Some(&allow), Some(&held))] {
                    let naive: Vec<Vec<u32>> = queries
                        .iter()
                        .map(|&qi| {
                            let q = sp.node_query(qi);
                            let mut top = TopK::new(CURVE_K);
                            for j in 0..n as u32 {
                                if j != qi
                                    && a.is_none_or(|a: &Bitset| a.get(j as usize))
                                    && h.is_none_or(|h: &Bitset| !h.get(j as usize))
                                {
                                    top.push(j, -sp.dist(&q, j));
                                }
                            }
                            top.into_sorted().iter().map(|s| s.offset).collect()
                        })
                        .collect();
                    assert_eq!(exact_truth(sp, &queries, a, h), naive, "{metric:?}");
                }
            }
        }
    }

    #[test]
    fn choose_and_interpolate() {
        let c = RecallCurve {
            points: vec![(10, 0.8), (20, 0.93), (40, 0.97), (80, 0.995)],
        };
        assert_eq!(c.choose(0.9), Some((20, 0.93)));
        assert_eq!(c.choose(0.95), Some((40, 0.97)));
        assert_eq!(c.choose(0.999), Some((80, 0.995)));
        let plateau = RecallCurve {
            points: vec![(1, 0.8), (2, 0.97), (4, 0.9805), (8, 0.981), (1024, 0.981)],
        };
        assert_eq!(plateau.choose(0.99), Some((4, 0.9805)));
        assert!((c.recall_at(30).unwrap() - 0.95).abs() < 1e-6);
        assert_eq!(c.recall_at(5), Some(0.8));
        assert_eq!(RecallCurve::default().choose(0.9), None);
    }

    #[test]
    fn filtered_curves_interpolate_between_neighbours_of_the_same_plan() {
        let c = |pts: &[(u32, f32)]| RecallCurve {
            points: pts.to_vec(),
        };
        let fc = FilteredCurves {
            curves: vec![
                (0.1, c(&[(16, 0.90), (32, 0.97), (64, 0.99)])),
                (0.3, c(&[(16, 0.97), (32, 0.99)])),
                (0.5, c(&[(16, 0.95), (32, 0.98)])),
                (0.9, c(&[(16, 0.93), (32, 0.965), (64, 0.99)])),
            ],
        };
        // Between 0.1 (ef 32) and 0.3 (ef 16): geometric in the log of the fraction,
        // 32^(1-t) · 16^t with t = ln 2 / ln 3, rounded up: 21.
        assert_eq!(fc.choose(0.2, 0.5, 0.95), Some((21, 0.97)));
        // Just under the upper fraction: nearly its knob, not the lower one's.
        assert_eq!(fc.choose(0.29, 0.5, 0.95), Some((17, 0.97)));
        assert_eq!(fc.choose(0.1001, 0.5, 0.95), Some((32, 0.97)));
        // Exactly on a measured fraction, or past the ends of its plan: that curve.
        assert_eq!(fc.choose(0.3, 0.5, 0.95), Some((16, 0.97)));
        assert_eq!(fc.choose(0.45, 0.5, 0.95), Some((16, 0.97)));
        assert_eq!(fc.choose(0.05, 0.5, 0.95), Some((32, 0.97)));
        // The other plan's curves are never used across the split.
        assert_eq!(fc.choose(0.6, 0.5, 0.95), Some((32, 0.965)));
        assert_eq!(fc.choose(0.95, 0.5, 0.95), Some((32, 0.965)));
        assert_eq!(fc.recall_at(0.2, 0.5, 16), Some(0.90));
        // Past what a neighbour measured: no filtered choice.
        assert_eq!(fc.choose(0.4, 0.5, 0.985), None);
        // 64 at 0.1, 32 at 0.3: 64^(1-t) · 32^t = 41.3, rounded up.
        assert_eq!(fc.choose(0.2, 0.5, 0.975), Some((42, 0.99)));
        assert_eq!(FilteredCurves::default().choose(0.2, 0.5, 0.95), None);
        let f = random_filter(100_000, 0.1, 3);
        let got = f.count_ones() as f64 / 100_000.0;
        assert!((got - 0.1).abs() < 0.005, "{got}");
    }

    #[test]
    fn held_out_rows_are_distinct_new_rows_and_never_in_the_truth() {
        assert!(hold_out(HOLD_OUT_MIN_ROWS - 1, 1, 7).is_none());
        // Growing a graph by fewer than twice the sample: measured in place.
        assert!(hold_out(10_000, 10_000 - 2 * CURVE_QUERIES + 1, 7).is_none());
        // 5 % of the graph, half of the new rows, at most HELD_OUT_QUERIES.
        let h = hold_out(10_000, 9_000, 7).unwrap();
        assert_eq!(h.rows.len(), 500);
        assert_eq!(h.set.count_ones(), 500);
        assert_eq!(hold_out(10_000, 9_400, 7).unwrap().rows.len(), 300);
        assert_eq!(
            hold_out(1_000_000, 1, 7).unwrap().rows.len(),
            HELD_OUT_QUERIES
        );
        assert!(h
            .rows
            .iter()
            .all(|&r| (9_000..10_000).contains(&r) && h.set.get(r as usize)));
        assert_ne!(
            hold_out(10_000, 1, 7).unwrap().rows,
            hold_out(10_000, 1, 8).unwrap().rows
        );

        use crate::{FlatIndex, Metric, SearchParams, VectorIndexRead, VectorSlice};
        let n = HOLD_OUT_MIN_ROWS;
        let data = crate::testutil::clustered(n, 8, 5, 9);
        let v = VectorSlice::new(&data, 8);
        let sp = Space::new(v, &[], Metric::L2);
        let h = hold_out(n, 1, 3).unwrap();
        // Exact answers over the rows left in the index: recall 1.
        let exact = |q: &[f32], skip: &dyn Fn(u32) -> bool| -> Vec<u32> {
            FlatIndex::new(Metric::L2)
                .search(v, &[], q, &SearchParams::top_k(CURVE_K + CURVE_QUERIES))
                .unwrap()
                .into_iter()
                .map(|s| s.offset)
                .filter(|&o| !skip(o))
                .take(CURVE_K)
                .collect()
        };
        let c = measure(
            &sp,
            &[8],
            1,
            2,
            None,
            0.999,
            Queries::HeldOut(&h, CURVE_QUERIES),
            |q, ex, _, _| exact(q, &|o| o == ex || h.set.get(o as usize)),
        );
        assert_eq!(c.points, vec![(8, 1.0)]);
        // Answers that include other held-out rows miss the truth there.
        let c = measure(
            &sp,
            &[8],
            1,
            2,
            None,
            0.999,
            Queries::HeldOut(&h, CURVE_QUERIES),
            |q, ex, _, _| {
                let mut r = exact(q, &|o| o == ex);
                // Put a held-out row first where none is among the answers, so the recall
                // falls whatever the data.
                if !r.iter().any(|&o| h.set.get(o as usize)) {
                    r.insert(0, h.rows.iter().copied().find(|&o| o != ex).unwrap());
                    r.truncate(CURVE_K);
                }
                r
            },
        );
        assert!(c.points[0].1 <= 0.9 + 1e-6, "{:?}", c.points);
    }

    #[test]
    fn the_sweep_stops_at_full_recall_or_on_a_plateau() {
        use crate::{FlatIndex, Metric, SearchParams, VectorIndexRead, VectorSlice};
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let data = crate::testutil::clustered(400, 8, 5, 9);
        let v = VectorSlice::new(&data, 8);
        let sp = Space::new(v, &[], Metric::L2);
        let exact = |q: &[f32], ex: u32, k: usize| -> Vec<u32> {
            FlatIndex::new(Metric::L2)
                .search(v, &[], q, &SearchParams::top_k(k + 1))
                .unwrap()
                .into_iter()
                .map(|s| s.offset)
                .filter(|&o| o != ex)
                .take(k)
                .collect()
        };
        let knobs = [1, 2, 4, 8, 16, 32, 64];
        // Exact answers: recall 1 at the first knob, nothing more is run.
        let calls = AtomicUsize::new(0);
        let c = measure(
            &sp,
            &knobs,
            1,
            2,
            None,
            0.999,
            Queries::InPlace(CURVE_QUERIES),
            |q, ex, _, k| {
                calls.fetch_add(1, Relaxed);
                exact(q, ex, k)
            },
        );
        assert_eq!(c.points, vec![(1, 1.0)]);
        assert_eq!(calls.load(Relaxed), CURVE_QUERIES);
        // Capped at 9 of 10 whatever the knob (as codes cap a quantized index): the first
        // point, then two that gain nothing, and the sweep stops.
        let c = measure(
            &sp,
            &knobs,
            1,
            2,
            None,
            0.999,
            Queries::InPlace(CURVE_QUERIES),
            |q, ex, _, k| {
                let mut r = exact(q, ex, k);
                r.truncate(k - 1);
                r
            },
        );
        assert_eq!(c.points.len(), 1 + PLATEAU_STEPS, "{:?}", c.points);
        assert!(c.points.iter().all(|p| (p.1 - 0.9).abs() < 1e-6));
        // Rising by the knob: every point is measured, in order, on 1 or 3 threads alike.
        let rising = |q: &[f32], ex: u32, knob: u32, k: usize| {
            let mut r = exact(q, ex, k);
            r.truncate((knob as usize).min(k));
            r
        };
        let a = measure(
            &sp,
            &knobs,
            1,
            1,
            None,
            0.999,
            Queries::InPlace(CURVE_QUERIES),
            rising,
        );
        let b = measure(
            &sp,
            &knobs,
            1,
            3,
            None,
            0.999,
            Queries::InPlace(CURVE_QUERIES),
            rising,
        );
        assert_eq!(a.points, b.points);
        assert_eq!(
            a.points.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16]
        );
    }
}
