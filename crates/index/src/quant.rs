//! Vector quantizers: SQ8 (per-dimension 8-bit scalar quantization) and PQ (product
//! quantization, Jégou et al. 2011: `m` sub-spaces × 256 centroids, asymmetric distance
//! tables). Both answer in the crate's *distance* orientation (smaller = closer).

use crate::codec::{Reader, Writer};
use crate::kmeans::{self, KMeansMetric, KMeansParams};
use crate::{Cancel, IndexError, Metric, Result};

/// Per-dimension 8-bit quantizer: `x ≈ min + code · step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sq8 {
    pub min: Vec<f32>,
    pub step: Vec<f32>,
}

/// A query prepared for SQ8 distances.
pub struct Sq8Query {
    /// `q − min` (L2).
    shifted: Vec<f32>,
    /// `q · step` (IP / COSINE).
    weighted: Vec<f32>,
    /// `q · min` (IP / COSINE).
    base: f32,
    metric: Metric,
}

impl Sq8 {
    /// Fits the per-dimension range of `data` (rows of `dim` floats, row-major).
    pub fn train(data: &[f32], dim: usize) -> Sq8 {
        Self::train_rows(data.chunks_exact(dim), dim)
    }

    /// Fits the per-dimension range of `rows`, each `dim` floats long, read one at a time:
    /// a caller whose rows are not one contiguous buffer (or must be transformed first, as
    /// COSINE rows are normalized) need not gather a copy of all of them. A row of another
    /// length counts for its first `dim` floats (a short row for the dimensions it has)
    /// instead of panicking.
    pub fn train_rows<R: AsRef<[f32]>>(rows: impl IntoIterator<Item = R>, dim: usize) -> Sq8 {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in rows {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r.as_ref()) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let mut min = Vec::with_capacity(dim);
        let mut step = Vec::with_capacity(dim);
        for d in 0..dim {
            if lo[d].is_finite() && hi[d] > lo[d] {
                min.push(lo[d]);
                step.push((hi[d] - lo[d]) / 255.0);
            } else {
                min.push(if lo[d].is_finite() { lo[d] } else { 0.0 });
                step.push(0.0);
            }
        }
        Sq8 { min, step }
    }

    pub fn dim(&self) -> usize {
        self.min.len()
    }

    pub fn encode(&self, x: &[f32], out: &mut [u8]) {
        for d in 0..x.len() {
            out[d] = if self.step[d] > 0.0 {
                ((x[d] - self.min[d]) / self.step[d])
                    .round()
                    .clamp(0.0, 255.0) as u8
            } else {
                0
            };
        }
    }

    pub fn decode(&self, c: &[u8]) -> Vec<f32> {
        c.iter()
            .enumerate()
            .map(|(d, &v)| self.min[d] + v as f32 * self.step[d])
            .collect()
    }

    /// `q` must already be prepared (unit length for COSINE).
    pub fn prepare(&self, metric: Metric, q: &[f32]) -> Sq8Query {
        Sq8Query {
            shifted: q.iter().zip(&self.min).map(|(a, m)| a - m).collect(),
            weighted: q.iter().zip(&self.step).map(|(a, s)| a * s).collect(),
            base: magpie_linalg::dot(q, &self.min),
            metric,
        }
    }

    /// Distance to a code; for COSINE the caller multiplies by the row's 1/‖x‖.
    #[inline(always)]
    pub fn dist(&self, q: &Sq8Query, code: &[u8]) -> f32 {
        match q.metric {
            Metric::L2 => magpie_linalg::sq8_l2(&q.shifted, &self.step, code),
            _ => -(q.base + magpie_linalg::sq8_dot(&q.weighted, code)),
        }
    }

    pub fn write(&self, w: &mut Writer<'_>) {
        w.f32s(&self.min);
        w.f32s(&self.step);
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Sq8> {
        let min = r.f32s()?;
        let step = r.f32s()?;
        if min.len() != step.len() {
            return Err(IndexError::Corrupt("SQ8 ranges differ in length".into()));
        }
        Ok(Sq8 { min, step })
    }
}

/// Product quantizer with 8-bit codes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pq {
    pub m: usize,
    pub dsub: usize,
    /// `m × 256 × dsub` centroids.
    pub codebooks: Vec<f32>,
}

impl Pq {
    /// Trains `m` codebooks of 256 centroids on `data` (rows of `dim`, `dim % m == 0`).
    pub fn train(
        data: &[f32],
        dim: usize,
        m: usize,
        threads: usize,
        cancel: &Cancel,
    ) -> Result<Pq> {
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(IndexError::Param(format!(
                "PQ 'm' must divide the dimension: dim {dim}, m {m}"
            )));
        }
        let n = data.len() / dim;
        if n < 256 {
            return Err(IndexError::Param(format!(
                "PQ needs at least 256 training rows, got {n}"
            )));
        }
        let dsub = dim / m;
        let mut codebooks = Vec::with_capacity(m * 256 * dsub);
        for j in 0..m {
            let sub: Vec<f32> = data
                .chunks_exact(dim)
                .flat_map(|r| r[j * dsub..(j + 1) * dsub].iter().copied())
                .collect();
            let p = KMeansParams {
                k: 256,
                iters: 10,
                per_centroid: 40,
                seed: 0x7071 ^ j as u64,
                threads,
            };
            codebooks.extend(kmeans::train(&sub, dsub, KMeansMetric::L2, &p, cancel)?);
        }
        Ok(Pq { m, dsub, codebooks })
    }

    #[inline]
    fn centroid(&self, j: usize, c: usize) -> &[f32] {
        let s = (j * 256 + c) * self.dsub;
        &self.codebooks[s..s + self.dsub]
    }

    pub fn encode(&self, x: &[f32], out: &mut [u8]) {
        for j in 0..self.m {
            let sub = &x[j * self.dsub..(j + 1) * self.dsub];
            let book = &self.codebooks[j * 256 * self.dsub..(j + 1) * 256 * self.dsub];
            out[j] = kmeans::nearest(KMeansMetric::L2, book, self.dsub, sub).0 as u8;
        }
    }

    pub fn decode(&self, c: &[u8]) -> Vec<f32> {
        (0..self.m)
            .flat_map(|j| self.centroid(j, c[j] as usize).iter().copied())
            .collect()
    }

    /// Distance table for `q`: `‖q_j − c_jk‖²` (L2) or `−q_j·c_jk` (IP), `m × 256`.
    pub fn table(&self, l2: bool, q: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.m * 256, 0.0);
        let ds = self.dsub;
        for j in 0..self.m {
            let sub = &q[j * ds..(j + 1) * ds];
            let book = &self.codebooks[j * 256 * ds..(j + 1) * 256 * ds];
            let row = &mut out[j * 256..(j + 1) * 256];
            // Plain loops over a 256 × dsub block: the compiler vectorises across centroids.
            for (c, slot) in row.iter_mut().enumerate() {
                let cv = &book[c * ds..(c + 1) * ds];
                let mut acc = 0.0f32;
                if l2 {
                    for d in 0..ds {
                        let t = sub[d] - cv[d];
                        acc += t * t;
                    }
                } else {
                    for d in 0..ds {
                        acc -= sub[d] * cv[d];
                    }
                }
                *slot = acc;
            }
        }
    }

    pub fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.m as u32);
        w.u32(self.dsub as u32);
        w.f32s(&self.codebooks);
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Pq> {
        let m = r.u32()? as usize;
        let dsub = r.u32()? as usize;
        let codebooks = r.f32s()?;
        if m == 0
            || dsub == 0
            || m.checked_mul(256)
                .and_then(|x| x.checked_mul(dsub))
                .is_none_or(|want| codebooks.len() != want)
        {
            return Err(IndexError::Corrupt("PQ codebook shape".into()));
        }
        Ok(Pq { m, dsub, codebooks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::clustered;

    #[test]
    fn sq8_round_trip_and_distances() {
        let data = clustered(500, 16, 5, 3);
        let sq = Sq8::train(&data, 16);
        let mut code = vec![0u8; 16];
        for r in data.chunks_exact(16).take(50) {
            sq.encode(r, &mut code);
            let back = sq.decode(&code);
            for d in 0..16 {
                assert!((back[d] - r[d]).abs() <= sq.step[d] * 0.5 + 1e-4);
            }
            let q = &data[16..32];
            let l2 = sq.dist(&sq.prepare(Metric::L2, q), &code);
            let want = magpie_linalg::l2_sq(q, &back);
            assert!((l2 - want).abs() <= 1e-3 * want.max(1.0), "{l2} vs {want}");
            let ip = sq.dist(&sq.prepare(Metric::IP, q), &code);
            let want = -magpie_linalg::dot(q, &back);
            assert!(
                (ip - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{ip} vs {want}"
            );
        }
    }

    /// Ranges per dimension: a short row counts for the dimensions it has, a long one for
    /// its first `dim`; no rows at all give zero ranges.
    #[test]
    fn sq8_fits_rows_of_any_length_without_panicking() {
        let rows: [&[f32]; 4] = [&[0.0, 2.0, 5.0], &[1.0, -2.0], &[4.0, 0.0, 3.0, 99.0], &[]];
        let sq = Sq8::train_rows(rows, 3);
        assert_eq!(sq.min, vec![0.0, -2.0, 3.0]);
        assert_eq!(sq.step, vec![4.0 / 255.0, 4.0 / 255.0, 2.0 / 255.0]);
        let none = Sq8::train_rows(std::iter::empty::<&[f32]>(), 2);
        assert_eq!((none.min, none.step), (vec![0.0; 2], vec![0.0; 2]));
    }

    #[test]
    fn pq_tables_match_decoded_distances() {
        let data = clustered(2000, 16, 8, 4);
        let pq = Pq::train(&data, 16, 4, 2, &Cancel::new()).unwrap();
        let mut code = vec![0u8; 4];
        let mut t = Vec::new();
        let q = &data[..16];
        for l2 in [true, false] {
            pq.table(l2, q, &mut t);
            for r in data.chunks_exact(16).skip(100).take(20) {
                pq.encode(r, &mut code);
                let back = pq.decode(&code);
                let adc = magpie_linalg::pq_adc(&t, &code);
                let want = if l2 {
                    magpie_linalg::l2_sq(q, &back)
                } else {
                    -magpie_linalg::dot(q, &back)
                };
                assert!((adc - want).abs() <= 1e-3 * want.abs().max(1.0));
            }
        }
        // Quantization error is far below the data's spread.
        let err: f32 = data
            .chunks_exact(16)
            .take(200)
            .map(|r| {
                pq.encode(r, &mut code);
                magpie_linalg::l2_sq(r, &pq.decode(&code))
            })
            .sum::<f32>()
            / 200.0;
        assert!(err < 2.0, "mean PQ error {err}");
        assert!(Pq::train(&data, 16, 5, 1, &Cancel::new()).is_err());
    }
}
