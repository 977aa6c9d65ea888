//! Test data: deterministic clustered vectors and exact ground truth.

use crate::space::unit;
use crate::{Bitset, FlatIndex, Metric, SearchParams, VectorIndexRead, VectorSlice};

/// `n` vectors of `dim` around `clusters` random centres (spread 1.0 vs centre range 10).
/// The centres depend only on `dim` and `clusters`, so data and queries drawn with
/// different seeds share a distribution.
pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let centres: Vec<f32> = (0..clusters * dim)
        .map(|i| (unit(0x5EED_C0DE ^ i as u64) as f32 - 0.5) * 10.0)
        .collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (unit(seed ^ 0xABCD ^ (i as u64) << 20) * clusters as f64) as usize % clusters;
        for d in 0..dim {
            let r = (0..3)
                .map(|j| unit(seed ^ ((i * dim + d) as u64) << 3 ^ j) as f32 - 0.5)
                .sum::<f32>();
            out.push(centres[c * dim + d] + r);
        }
    }
    out
}

pub fn exact_topk(
    v: VectorSlice<'_>,
    inv: &[f32],
    metric: Metric,
    q: &[f32],
    k: usize,
    allow: Option<&Bitset>,
) -> Vec<u32> {
    let p = SearchParams {
        allow,
        ..SearchParams::top_k(k)
    };
    FlatIndex::new(metric)
        .search(v, inv, q, &p)
        .unwrap()
        .iter()
        .map(|s| s.offset)
        .collect()
}

/// Mean recall@k of `idx` over `queries` against exact search.
pub fn recall_of(
    idx: &dyn VectorIndexRead,
    v: VectorSlice<'_>,
    inv: &[f32],
    metric: Metric,
    queries: &[f32],
    k: usize,
    params: impl Fn(usize) -> SearchParams<'static>,
) -> f64 {
    let mut hit = 0;
    let mut tot = 0;
    for q in queries.chunks_exact(v.dim) {
        let got = idx.search(v, inv, q, &params(k)).unwrap();
        let want = exact_topk(v, inv, metric, q, k, None);
        hit += got.iter().filter(|g| want.contains(&g.offset)).count();
        tot += want.len();
    }
    hit as f64 / tot as f64
}
