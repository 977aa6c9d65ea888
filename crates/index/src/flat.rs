//! FLAT: exact brute-force search. Holds no data of its own; it scans the segment's
//! contiguous vectors with the SIMD kernels of `magpie-linalg`.

use crate::{
    Cancel, IndexError, Metric, Result, Scored, SearchParams, TopK, VectorIndexBuild,
    VectorIndexRead, VectorSlice,
};

#[derive(Debug, Clone)]
pub struct FlatIndex {
    metric: Metric,
}

impl FlatIndex {
    pub fn new(metric: Metric) -> Self {
        Self { metric }
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
}

impl VectorIndexBuild for FlatIndex {
    type Params = ();
    fn build(_: VectorSlice<'_>, metric: Metric, _: &(), _: &Cancel) -> Result<Self> {
        Ok(Self::new(metric))
    }
}

/// Rows scanned between two polls of the cancel flag.
const CANCEL_POLL: usize = 4096;

impl VectorIndexRead for FlatIndex {
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        p: &SearchParams<'_>,
    ) -> Result<Vec<Scored>> {
        if query.len() != vectors.dim {
            return Err(IndexError::Dimension {
                expected: vectors.dim,
                got: query.len(),
            });
        }
        let metric = self.metric;
        let mut q = query.to_vec();
        if metric == Metric::COSINE {
            magpie_linalg::normalize(&mut q);
        }
        // Binary rows under a binary metric: the query is packed once and rows are
        // scored with the popcount kernels (BIN_FLAT).
        let packed = (matches!(vectors.rows, crate::Rows::Bin(_)) && metric.is_binary())
            .then(|| crate::metric::pack_bytes(&q));
        let mut top = TopK::new(p.k);
        let in_range =
            |s: f32| p.min_score.is_none_or(|lo| s > lo) && p.max_score.is_none_or(|hi| s <= hi);
        let mut visit = |i: usize| {
            let inv = if metric == Metric::COSINE {
                inv_norms[i]
            } else {
                1.0
            };
            let s = match &packed {
                Some(qb) => -metric.binary_distance(qb, vectors.bin_row(i).unwrap_or_default()),
                None => vectors.score(metric, &q, i, inv),
            };
            if in_range(s) {
                top.push(i as u32, s);
            }
        };
        match p.allow {
            Some(bits) => {
                for (n, i) in bits.iter_ones().enumerate() {
                    if n.is_multiple_of(CANCEL_POLL) && p.cancel.is_some_and(|c| c.is_cancelled()) {
                        return Err(IndexError::Cancelled);
                    }
                    visit(i);
                }
            }
            None => {
                for i in 0..vectors.len() {
                    if i.is_multiple_of(CANCEL_POLL) && p.cancel.is_some_and(|c| c.is_cancelled()) {
                        return Err(IndexError::Cancelled);
                    }
                    visit(i);
                }
            }
        }
        Ok(top.into_sorted())
    }

    fn memory_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bitset;

    fn data() -> Vec<f32> {
        vec![0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 5.0, 5.0]
    }

    #[test]
    fn l2_exact_order_and_filter() {
        let d = data();
        let v = VectorSlice::new(&d, 2);
        let idx = FlatIndex::new(Metric::L2);
        let r = idx
            .search(v, &[], &[0.9, 0.0], &SearchParams::top_k(3))
            .unwrap();
        assert_eq!(
            r.iter().map(|s| s.offset).collect::<Vec<_>>(),
            vec![1, 0, 2]
        );
        assert!((Metric::L2.user_distance(r[0].score) - 0.01).abs() < 1e-6);
        let mut allow = Bitset::ones(4);
        allow.set(1, false);
        let p = SearchParams {
            allow: Some(&allow),
            ..SearchParams::top_k(2)
        };
        let r = idx.search(v, &[], &[0.9, 0.0], &p).unwrap();
        assert_eq!(r.iter().map(|s| s.offset).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn range_and_dimension_and_cancel() {
        let d = data();
        let v = VectorSlice::new(&d, 2);
        let idx = FlatIndex::new(Metric::L2);
        // user distance in [0, 2): rows 0 (0.81) and 1 (0.01); row 2 is 4.81.
        let p = SearchParams {
            min_score: Some(-2.0),
            max_score: Some(f32::INFINITY),
            ..SearchParams::top_k(10)
        };
        let r = idx.search(v, &[], &[0.9, 0.0], &p).unwrap();
        assert_eq!(r.len(), 2);
        assert!(matches!(
            idx.search(v, &[], &[1.0], &SearchParams::top_k(1)),
            Err(IndexError::Dimension {
                expected: 2,
                got: 1
            })
        ));
        let c = Cancel::new();
        c.cancel();
        let p = SearchParams {
            cancel: Some(&c),
            ..SearchParams::top_k(1)
        };
        assert!(matches!(
            idx.search(v, &[], &[0.0, 0.0], &p),
            Err(IndexError::Cancelled)
        ));
    }

    #[test]
    fn cosine_uses_inverse_norms() {
        let d = vec![10.0, 0.0, 1.0, 1.0];
        let v = VectorSlice::new(&d, 2);
        let inv: Vec<f32> = (0..2)
            .map(|i| 1.0 / magpie_linalg::norm(&v.row(i)))
            .collect();
        let r = FlatIndex::new(Metric::COSINE)
            .search(v, &inv, &[1.0, 0.9], &SearchParams::top_k(2))
            .unwrap();
        assert_eq!(r[0].offset, 1);
        assert!(r[0].score <= 1.0 && r[0].score > 0.99);
    }
}
