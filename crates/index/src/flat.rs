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

/// Bytes of queries (f32 rows) scored together against each row by
/// [`FlatIndex::search_batch`], and of half-precision rows per block: small enough to stay
/// in the core's L2 while the rows stream past.
const BATCH_BLOCK_BYTES: usize = 128 << 10;

impl FlatIndex {
    /// Exact top-`p.k` of every query in `queries`, with one pass over the rows. f32 rows
    /// are read once each and scored against a group of queries by the multi-query
    /// kernels (`magpie_linalg::dot_many` / `l2_sq_many`: four queries per load of the row
    /// on AVX-512); half-precision rows are read in blocks of about
    /// [`BATCH_BLOCK_BYTES`], each scored against every query while in cache. Either way
    /// `nq` queries over rows larger than the caches read them from memory once instead
    /// of `nq` times, and results (scores and ties included) are bit-identical to
    /// [`VectorIndexRead::search`] run per query. Binary rows under a binary metric are
    /// searched per query.
    pub fn search_batch<Q: AsRef<[f32]>>(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        queries: &[Q],
        p: &SearchParams<'_>,
    ) -> Result<Vec<Vec<Scored>>> {
        if let Some(q) = queries.iter().find(|q| q.as_ref().len() != vectors.dim) {
            return Err(IndexError::Dimension {
                expected: vectors.dim,
                got: q.as_ref().len(),
            });
        }
        let metric = self.metric;
        if queries.len() < 2 || matches!(vectors.rows, crate::Rows::Bin(_)) || metric.is_binary() {
            return queries
                .iter()
                .map(|q| self.search(vectors, inv_norms, q.as_ref(), p))
                .collect();
        }
        let qs: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| {
                let mut q = q.as_ref().to_vec();
                if metric == Metric::COSINE {
                    magpie_linalg::normalize(&mut q);
                }
                q
            })
            .collect();
        let mut tops: Vec<TopK> = qs.iter().map(|_| TopK::new(p.k)).collect();
        let in_range =
            |s: f32| p.min_score.is_none_or(|lo| s > lo) && p.max_score.is_none_or(|hi| s <= hi);
        if let crate::Rows::F32(data) = vectors.rows {
            // Row by row, each row scored against a group of queries by the multi-query
            // kernels (bit-identical to the one-query ones); groups small enough to stay
            // in L2 while the rows stream past.
            let dim = vectors.dim;
            let group = (BATCH_BLOCK_BYTES / (dim * 4)).max(4);
            for (gq, gtops) in qs.chunks(group).zip(tops.chunks_mut(group)) {
                let mat = gq.concat();
                let mut out = vec![0f32; gq.len()];
                let visit = |i: usize| {
                    let row = &data[i * dim..(i + 1) * dim];
                    if metric == Metric::L2 {
                        magpie_linalg::l2_sq_many(&mat, row, &mut out);
                    } else {
                        magpie_linalg::dot_many(&mat, row, &mut out);
                    }
                    for (&v, top) in out.iter().zip(gtops.iter_mut()) {
                        let s = match metric {
                            Metric::L2 => -v,
                            Metric::COSINE => v * inv_norms[i],
                            _ => v,
                        };
                        if in_range(s) {
                            top.push(i as u32, s);
                        }
                    }
                };
                each_row(vectors.len(), p, visit)?;
            }
            return Ok(tops.into_iter().map(TopK::into_sorted).collect());
        }
        // Half-precision rows: blocks of rows, each scored against every query while in
        // cache.
        let block = (BATCH_BLOCK_BYTES / (vectors.dim * 2)).clamp(8, CANCEL_POLL);
        let mut score_block = |rows: &[usize]| {
            for (q, top) in qs.iter().zip(tops.iter_mut()) {
                for &i in rows {
                    let inv = if metric == Metric::COSINE {
                        inv_norms[i]
                    } else {
                        1.0
                    };
                    let s = vectors.score(metric, q, i, inv);
                    if in_range(s) {
                        top.push(i as u32, s);
                    }
                }
            }
        };
        let mut rows = Vec::with_capacity(block);
        each_row(vectors.len(), p, |i| {
            rows.push(i);
            if rows.len() == block {
                score_block(&rows);
                rows.clear();
            }
        })?;
        score_block(&rows);
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }
}

/// Calls `visit` on each row a search may return, in order: the rows of `p.allow`, or all
/// `n`. Polls the cancel flag every [`CANCEL_POLL`] rows.
fn each_row(n: usize, p: &SearchParams<'_>, mut visit: impl FnMut(usize)) -> Result<()> {
    let mut step = |k: usize, i: usize| {
        if k.is_multiple_of(CANCEL_POLL) && p.cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(IndexError::Cancelled);
        }
        visit(i);
        Ok(())
    };
    match p.allow {
        Some(bits) => bits
            .iter_ones()
            .enumerate()
            .try_for_each(|(k, i)| step(k, i)),
        None => (0..n).try_for_each(|i| step(i, i)),
    }
}

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
        let visit = |i: usize| {
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
        each_row(vectors.len(), p, visit)?;
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// One pass for many queries finds exactly what a search per query finds (order
        /// and ties included), for every float metric, f32 and half rows, filters and
        /// ranges, across block boundaries.
        #[test]
        fn a_batch_finds_what_searches_per_query_find(
            n in 0usize..3000,
            dim in 1usize..40,
            nq in 0usize..6,
            k in 0usize..20,
            metric in 0usize..3,
            half in proptest::bool::ANY,
            filter in proptest::option::of(1u64..7),
            range in proptest::bool::ANY,
            seed in 0u64..1000,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // Few distinct values, so ties are common.
            let data: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-2i8..3) as f32).collect();
            let bits: Vec<u16> = data.iter().map(|&x| magpie_linalg::f32_to_half(x, false).unwrap()).collect();
            let v = if half {
                VectorSlice::half(&bits, dim, false)
            } else {
                VectorSlice::new(&data, dim)
            };
            let metric = [Metric::L2, Metric::IP, Metric::COSINE][metric];
            let inv = VectorSlice::new(&data, dim).inv_norms();
            let queries: Vec<Vec<f32>> = (0..nq)
                .map(|_| (0..dim).map(|_| rng.gen_range(-2i8..3) as f32).collect())
                .collect();
            let allow = filter.map(|m| {
                let mut b = Bitset::zeros(n);
                for i in (0..n).filter(|i| (*i as u64 * 7 + seed).is_multiple_of(m)) {
                    b.set(i, true);
                }
                b
            });
            let p = SearchParams {
                allow: allow.as_ref(),
                min_score: range.then_some(-6.0),
                max_score: range.then_some(3.0),
                ..SearchParams::top_k(k)
            };
            let idx = FlatIndex::new(metric);
            let got = idx.search_batch(v, &inv, &queries, &p).unwrap();
            proptest::prop_assert_eq!(got.len(), nq);
            for (q, g) in queries.iter().zip(&got) {
                let want = idx.search(v, &inv, q, &p).unwrap();
                let key = |r: &[Scored]| r.iter().map(|s| (s.offset, s.score.to_bits())).collect::<Vec<_>>();
                proptest::prop_assert_eq!(key(g), key(&want));
            }
        }
    }

    #[test]
    fn a_batch_checks_dimensions_and_cancel() {
        let d = data();
        let v = VectorSlice::new(&d, 2);
        let idx = FlatIndex::new(Metric::L2);
        let qs = vec![vec![0.0, 0.0], vec![1.0]];
        assert!(matches!(
            idx.search_batch(v, &[], &qs, &SearchParams::top_k(1)),
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
        let qs = vec![vec![0.0, 0.0]; 3];
        assert!(matches!(
            idx.search_batch(v, &[], &qs, &p),
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
