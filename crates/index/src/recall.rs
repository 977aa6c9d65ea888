//! Recall-targeted search. At build time an index measures, on a sample of its own rows
//! used as queries (each query's own row excluded from both the truth and the answer),
//! the recall@10 it reaches for a range of values of its search knob (`ef` for graphs,
//! `nprobe` for IVF), and stores that curve. A search may then ask for a recall instead
//! of a knob; the index picks the smallest knob whose measured recall clears the target
//! plus a safety margin.

use crate::space::{splitmix64, Space};
use crate::TopK;

/// Queries sampled per curve.
pub const CURVE_QUERIES: usize = 200;
/// Recall is measured at this k.
pub const CURVE_K: usize = 10;
/// Margin added to a requested target, because real queries are not rows of the index.
pub const CURVE_MARGIN: f32 = 0.01;

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

    pub(crate) fn write(&self, w: &mut crate::codec::Writer) {
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

/// Knob values in a row that may each add less than this to the recall before the
/// sweep stops: the codes of a quantized index (without `refine`) cap its recall below
/// 0.999, and probing on toward every list costs a full scan per query for nothing.
const PLATEAU_GAIN: f32 = 0.001;
const PLATEAU_STEPS: usize = 2;

/// Measures a curve on `threads` threads (0 = every core). `search(query, exclude, knob,
/// k)` runs the index with one knob value and must never return `exclude`. The sweep
/// stops at recall 0.999, or once [`PLATEAU_STEPS`] knob values in a row gained less than
/// [`PLATEAU_GAIN`] each.
pub(crate) fn measure(
    sp: &Space<'_>,
    knobs: &[u32],
    seed: u64,
    threads: usize,
    search: impl Fn(&[f32], u32, u32, usize) -> Vec<u32> + Sync,
) -> RecallCurve {
    let n = sp.v.len();
    if n <= CURVE_K + 1 {
        return RecallCurve::default();
    }
    let nq = CURVE_QUERIES.min(n / 2);
    let queries: Vec<u32> = (0..nq)
        .map(|i| (splitmix64(seed ^ (i as u64).wrapping_mul(0x2545_F491)) % n as u64) as u32)
        .collect();
    let t = crate::space::resolve_threads(threads).clamp(1, nq);
    // Runs `f` on every query, the queries split over the threads; results in order.
    let par = |f: &(dyn Fn(u32) -> Vec<u32> + Sync)| -> Vec<Vec<u32>> {
        let per = nq.div_ceil(t);
        std::thread::scope(|s| {
            let hs: Vec<_> = queries
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().map(|&q| f(q)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("recall curve thread"))
                .collect()
        })
    };
    // Exact truth, excluding the query's own row.
    let truth = par(&|qi| {
        let q = sp.node_query(qi);
        let mut top = TopK::new(CURVE_K);
        for j in 0..n as u32 {
            if j != qi {
                top.push(j, -sp.dist(&q, j));
            }
        }
        top.into_sorted().iter().map(|s| s.offset).collect()
    });
    let mut points: Vec<(u32, f32)> = Vec::new();
    let mut flat = 0;
    for &knob in knobs {
        let got = par(&|qi| search(&sp.node_query(qi), qi, knob, CURVE_K));
        let hit: usize = got
            .iter()
            .zip(&truth)
            .map(|(g, t)| g.iter().filter(|x| t.contains(x)).count())
            .sum();
        let total: usize = truth.iter().map(Vec::len).sum();
        let r = hit as f32 / total.max(1) as f32;
        let gain = points.last().map_or(1.0, |p| r - p.1);
        points.push((knob, r));
        if r >= 0.999 {
            break;
        }
        flat = if gain < PLATEAU_GAIN { flat + 1 } else { 0 };
        if flat >= PLATEAU_STEPS {
            break;
        }
    }
    RecallCurve { points }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = measure(&sp, &knobs, 1, 2, |q, ex, _, k| {
            calls.fetch_add(1, Relaxed);
            exact(q, ex, k)
        });
        assert_eq!(c.points, vec![(1, 1.0)]);
        assert_eq!(calls.load(Relaxed), CURVE_QUERIES);
        // Capped at 9 of 10 whatever the knob (as codes cap a quantized index): the first
        // point, then two that gain nothing, and the sweep stops.
        let c = measure(&sp, &knobs, 1, 2, |q, ex, _, k| {
            let mut r = exact(q, ex, k);
            r.truncate(k - 1);
            r
        });
        assert_eq!(c.points.len(), 1 + PLATEAU_STEPS, "{:?}", c.points);
        assert!(c.points.iter().all(|p| (p.1 - 0.9).abs() < 1e-6));
        // Rising by the knob: every point is measured, in order, on 1 or 3 threads alike.
        let rising = |q: &[f32], ex: u32, knob: u32, k: usize| {
            let mut r = exact(q, ex, k);
            r.truncate((knob as usize).min(k));
            r
        };
        let a = measure(&sp, &knobs, 1, 1, rising);
        let b = measure(&sp, &knobs, 1, 3, rising);
        assert_eq!(a.points, b.points);
        assert_eq!(
            a.points.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16]
        );
    }
}
