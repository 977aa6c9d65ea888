//! k-means for IVF coarse quantizers and PQ codebooks: k-means++ initialisation (Arthur &
//! Vassilvitskii 2007) on a training sample, Lloyd iterations on every core, and repair of
//! empty clusters by splitting the largest one (as FAISS does).

use crate::space::{resolve_threads, sample, splitmix64, unit};
use crate::{Cancel, IndexError, Result};

/// How points are compared to centroids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KMeansMetric {
    /// Squared Euclidean distance.
    L2,
    /// Largest inner product (spherical k-means: centroids are re-normalised).
    Spherical,
}

#[derive(Clone, Debug)]
pub struct KMeansParams {
    pub k: usize,
    pub iters: usize,
    /// Training points per centroid (the sample is `k · per_centroid`, at most all).
    pub per_centroid: usize,
    pub seed: u64,
    pub threads: usize,
}

impl Default for KMeansParams {
    fn default() -> Self {
        Self {
            k: 256,
            iters: 12,
            per_centroid: 40,
            seed: 0x6b6d_6561_6e73,
            threads: 0,
        }
    }
}

/// Below this width the call into the SIMD dispatcher costs more than the arithmetic
/// (PQ sub-vectors are 2–16 wide), so the inlined portable kernel is used.
const SMALL_DIM: usize = 16;

#[inline(always)]
fn dist(m: KMeansMetric, a: &[f32], b: &[f32]) -> f32 {
    match m {
        KMeansMetric::L2 if a.len() < SMALL_DIM => magpie_linalg::scalar::l2_sq(a, b),
        KMeansMetric::L2 => magpie_linalg::l2_sq(a, b),
        KMeansMetric::Spherical if a.len() < SMALL_DIM => -magpie_linalg::scalar::dot(a, b),
        KMeansMetric::Spherical => -magpie_linalg::dot(a, b),
    }
}

/// Index and distance of the nearest of `centroids` (row-major, `dim` wide) to `x`.
#[inline(always)]
pub fn nearest(m: KMeansMetric, centroids: &[f32], dim: usize, x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (c, cv) in centroids.chunks_exact(dim).enumerate() {
        let d = dist(m, x, cv);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// Rows per matrix product in [`assign`]: the product block is `ASSIGN_BLOCK × k` f32
/// (1 MiB at k = 2048).
const ASSIGN_BLOCK: usize = 128;

/// Assigns every row of `data` to its nearest centroid, in parallel.
///
/// Wide rows and many centroids (IVF coarse quantizers) go through matrix products:
/// `‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖²`, and `‖x‖²` does not change which `c` is nearest, so
/// a block of rows times the transposed centroids (`magpie_linalg::matmul`) gives every
/// comparison at once with the cache reuse of a GEMM instead of one distance at a time
/// (docs/BENCHMARKS.md: the 10M build). Narrow rows (PQ sub-vectors) and few centroids
/// keep the direct loop. Ties between equidistant centroids may resolve differently.
pub fn assign(
    m: KMeansMetric,
    centroids: &[f32],
    dim: usize,
    data: &[f32],
    nthreads: usize,
) -> Vec<u32> {
    let n = data.len() / dim;
    let k = centroids.len() / dim;
    let mut out = vec![0u32; n];
    let t = resolve_threads(nthreads).clamp(1, n.max(1));
    let per = n.div_ceil(t).max(1);
    if dim < SMALL_DIM || k < 16 {
        std::thread::scope(|s| {
            for (ci, chunk) in out.chunks_mut(per).enumerate() {
                s.spawn(move || {
                    for (j, slot) in chunk.iter_mut().enumerate() {
                        let i = ci * per + j;
                        *slot = nearest(m, centroids, dim, &data[i * dim..(i + 1) * dim]).0 as u32;
                    }
                });
            }
        });
        return out;
    }
    let mut ct = vec![0f32; dim * k];
    for (c, cv) in centroids.chunks_exact(dim).enumerate() {
        for (d, &x) in cv.iter().enumerate() {
            ct[d * k + c] = x;
        }
    }
    // Per centroid, the part of the distance that does not depend on the row.
    let half_norm: Vec<f32> = match m {
        KMeansMetric::L2 => centroids
            .chunks_exact(dim)
            .map(|c| 0.5 * magpie_linalg::dot(c, c))
            .collect(),
        KMeansMetric::Spherical => vec![0.0; k],
    };
    let (ct, half_norm) = (&ct, &half_norm);
    std::thread::scope(|s| {
        for (ci, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                let mut prod = vec![0f32; ASSIGN_BLOCK.min(chunk.len()) * k];
                for (bi, slots) in chunk.chunks_mut(ASSIGN_BLOCK).enumerate() {
                    let first = ci * per + bi * ASSIGN_BLOCK;
                    let rows = &data[first * dim..(first + slots.len()) * dim];
                    magpie_linalg::matmul(rows, ct, &mut prod, slots.len(), dim, k, false);
                    for (slot, dots) in slots.iter_mut().zip(prod.chunks_exact(k)) {
                        // Smallest ½‖c‖² − x·c (L2) or −x·c (spherical).
                        let mut best = (0usize, f32::INFINITY);
                        for (c, (&h, &d)) in half_norm.iter().zip(dots).enumerate() {
                            let v = h - d;
                            if v < best.1 {
                                best = (c, v);
                            }
                        }
                        *slot = best.0 as u32;
                    }
                }
            });
        }
    });
    out
}

/// Trains `p.k` centroids on `data` (row-major, `dim` wide). Fewer rows than `k` is an
/// error naming both numbers.
pub fn train(
    data: &[f32],
    dim: usize,
    m: KMeansMetric,
    p: &KMeansParams,
    cancel: &Cancel,
) -> Result<Vec<f32>> {
    let n = data.len() / dim;
    let k = p.k;
    if k == 0 || n < k {
        return Err(IndexError::Param(format!(
            "k-means needs at least as many rows as clusters: {n} rows, {k} clusters"
        )));
    }
    // Training sample: a deterministic pseudo-random subset.
    let want = (k * p.per_centroid).min(n);
    let sample: Vec<f32> = if want == n {
        data.to_vec()
    } else {
        let mut s = Vec::with_capacity(want * dim);
        for i in sample(n, want, p.seed) {
            s.extend_from_slice(&data[i as usize * dim..(i as usize + 1) * dim]);
        }
        s
    };
    let sn = sample.len() / dim;
    let row = |i: usize| &sample[i * dim..(i + 1) * dim];

    // k-means++ seeding, keeping each point's distance to its nearest chosen centre.
    let mut cent = Vec::with_capacity(k * dim);
    let first = (splitmix64(p.seed) % sn as u64) as usize;
    cent.extend_from_slice(row(first));
    let mut best: Vec<f32> = (0..sn).map(|i| dist_pp(m, row(i), row(first))).collect();
    for c in 1..k {
        if c % 64 == 0 && cancel.is_cancelled() {
            return Err(IndexError::Cancelled);
        }
        let total: f64 = best.iter().map(|&d| d as f64).sum();
        let pick = if total <= 0.0 {
            (splitmix64(p.seed ^ c as u64) % sn as u64) as usize
        } else {
            let mut r = unit(p.seed ^ (c as u64) << 17) * total;
            let mut chosen = sn - 1;
            for (i, &d) in best.iter().enumerate() {
                r -= d as f64;
                if r <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        let cv = row(pick).to_vec();
        for (i, b) in best.iter_mut().enumerate() {
            let d = dist_pp(m, row(i), &cv);
            if d < *b {
                *b = d;
            }
        }
        cent.extend_from_slice(&cv);
    }
    if m == KMeansMetric::Spherical {
        cent.chunks_exact_mut(dim)
            .for_each(|c| _ = magpie_linalg::normalize(c));
    }

    // Lloyd iterations.
    for _ in 0..p.iters {
        if cancel.is_cancelled() {
            return Err(IndexError::Cancelled);
        }
        let a = assign(m, &cent, dim, &sample, p.threads);
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in a.iter().enumerate() {
            counts[c as usize] += 1;
            for (s, x) in sums[c as usize * dim..(c as usize + 1) * dim]
                .iter_mut()
                .zip(row(i))
            {
                *s += *x as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for d in 0..dim {
                    cent[c * dim + d] = (sums[c * dim + d] / counts[c] as f64) as f32;
                }
            }
        }
        repair_empty(&mut cent, &mut counts, dim, p.seed);
        if m == KMeansMetric::Spherical {
            cent.chunks_exact_mut(dim)
                .for_each(|c| _ = magpie_linalg::normalize(c));
        }
    }
    Ok(cent)
}

/// Seeding distance: always non-negative (squared L2, or 1 − cos for spherical).
#[inline]
fn dist_pp(m: KMeansMetric, a: &[f32], b: &[f32]) -> f32 {
    match m {
        KMeansMetric::L2 => magpie_linalg::l2_sq(a, b),
        KMeansMetric::Spherical => {
            let na = magpie_linalg::norm(a);
            let nb = magpie_linalg::norm(b);
            if na == 0.0 || nb == 0.0 {
                1.0
            } else {
                (1.0 - magpie_linalg::dot(a, b) / (na * nb)).max(0.0)
            }
        }
    }
}

/// Gives each empty cluster half of the largest cluster: both copies of the big
/// centroid are nudged apart symmetrically, and the next assignment splits its points.
fn repair_empty(cent: &mut [f32], counts: &mut [usize], dim: usize, seed: u64) {
    let k = counts.len();
    for c in 0..k {
        if counts[c] != 0 {
            continue;
        }
        let big = (0..k).max_by_key(|&i| counts[i]).unwrap();
        if counts[big] < 2 {
            return;
        }
        for d in 0..dim {
            let v = cent[big * dim + d];
            let eps = (unit(seed ^ (c * dim + d) as u64) as f32 - 0.5) * 1e-3 * v.abs().max(1e-3);
            cent[c * dim + d] = v + eps;
            cent[big * dim + d] = v - eps;
        }
        counts[c] = counts[big] / 2;
        counts[big] -= counts[c];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_assignment_agrees_with_one_distance_at_a_time() {
        // Wide rows and many centroids take the matrix-product path; every row must go
        // to the centroid the direct loop picks, or to one just as near (a tie within
        // float rounding). Odd sizes: blocks and thread chunks do not divide the rows.
        let (n, dim, k) = (1_001, 40, 97);
        let r = |i: usize| (unit(i as u64 * 7 + 3) as f32 - 0.5) * 4.0;
        let data: Vec<f32> = (0..n * dim).map(r).collect();
        let cent: Vec<f32> = (0..k * dim).map(|i| r(i + (1 << 20))).collect();
        for m in [KMeansMetric::L2, KMeansMetric::Spherical] {
            let got = assign(m, &cent, dim, &data, 3);
            assert_eq!(got.len(), n);
            let mut same = 0;
            for (i, &g) in got.iter().enumerate() {
                let x = &data[i * dim..(i + 1) * dim];
                let (want, dw) = nearest(m, &cent, dim, x);
                if g as usize == want {
                    same += 1;
                } else {
                    let dg = dist(m, x, &cent[g as usize * dim..(g as usize + 1) * dim]);
                    assert!(
                        (dg - dw).abs() <= 1e-4 * dw.abs().max(1.0),
                        "{m:?} row {i}: chose {g} at {dg}, nearest is {want} at {dw}"
                    );
                }
            }
            assert!(same >= n - 2, "{m:?}: only {same} of {n} rows agree");
        }
    }

    #[test]
    fn finds_separated_clusters_and_repairs_empty_ones() {
        // Three tight blobs; k = 3 must put one centroid in each.
        let centres = [[0.0f32, 0.0], [10.0, 10.0], [-10.0, 5.0]];
        let mut data = Vec::new();
        for i in 0..300 {
            let c = centres[i % 3];
            data.push(c[0] + (unit(i as u64) as f32 - 0.5) * 0.1);
            data.push(c[1] + (unit(i as u64 + 999) as f32 - 0.5) * 0.1);
        }
        let p = KMeansParams {
            k: 3,
            ..Default::default()
        };
        let cent = train(&data, 2, KMeansMetric::L2, &p, &Cancel::new()).unwrap();
        for c in centres {
            let (_, d) = nearest(KMeansMetric::L2, &cent, 2, &c);
            assert!(d < 0.01, "centre {c:?} missed: {cent:?}");
        }
        // More clusters than distinct points: empty clusters are repaired, all finite.
        let p = KMeansParams {
            k: 10,
            ..Default::default()
        };
        let cent = train(&data, 2, KMeansMetric::L2, &p, &Cancel::new()).unwrap();
        assert!(cent.iter().all(|x| x.is_finite()));
        let a = assign(KMeansMetric::L2, &cent, 2, &data, 2);
        let used: std::collections::HashSet<u32> = a.into_iter().collect();
        assert!(used.len() >= 3);
        assert!(matches!(
            train(&data[..4], 2, KMeansMetric::L2, &p, &Cancel::new()),
            Err(IndexError::Param(_))
        ));
    }
}
