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

/// Measures a curve. `search(query, exclude, knob, k)` runs the index with one knob value
/// and must never return `exclude`.
pub(crate) fn measure(
    sp: &Space<'_>,
    knobs: &[u32],
    seed: u64,
    mut search: impl FnMut(&[f32], u32, u32, usize) -> Vec<u32>,
) -> RecallCurve {
    let n = sp.v.len();
    if n <= CURVE_K + 1 {
        return RecallCurve::default();
    }
    let nq = CURVE_QUERIES.min(n / 2);
    let queries: Vec<u32> = (0..nq)
        .map(|i| (splitmix64(seed ^ (i as u64).wrapping_mul(0x2545_F491)) % n as u64) as u32)
        .collect();
    // Exact truth, excluding the query's own row.
    let truth: Vec<Vec<u32>> = queries
        .iter()
        .map(|&qi| {
            let q = sp.node_query(qi);
            let mut top = TopK::new(CURVE_K);
            for j in 0..n as u32 {
                if j != qi {
                    top.push(j, -sp.dist(&q, j));
                }
            }
            top.into_sorted().iter().map(|s| s.offset).collect()
        })
        .collect();
    let mut points = Vec::new();
    for &knob in knobs {
        let mut hit = 0usize;
        let mut total = 0usize;
        for (qi, t) in queries.iter().zip(&truth) {
            let q = sp.node_query(*qi);
            let got = search(&q, *qi, knob, CURVE_K);
            hit += got.iter().filter(|g| t.contains(g)).count();
            total += t.len();
        }
        let r = hit as f32 / total.max(1) as f32;
        points.push((knob, r));
        if r >= 0.999 {
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
}
