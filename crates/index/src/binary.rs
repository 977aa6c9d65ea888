//! BIN_IVF_FLAT: an inverted file over packed binary vectors (Milvus's `BinaryVector`,
//! metrics HAMMING and JACCARD).
//!
//! Centroids are bit strings trained by *k-majority*: each bit of a centroid is the
//! majority vote of its members' bits, which minimises the members' summed Hamming
//! distance to it (the binary analogue of the k-means mean). Every row is assigned to its
//! nearest centroid under the index's metric, lists hold row offsets, and a search scans
//! the `nprobe` nearest lists exactly with the popcount kernels. The raw rows stay in the
//! segment; the index holds centroids and offsets only (`nlist × bytes + 4 B/row`).
//!
//! Like the float IVF, the index measures its recall@10 per `nprobe` at build time on a
//! sample of its own rows, so a search may ask for a recall instead of a probe count.
//! Queries reach the index as one f32 lane per byte (0..=255), as binary vectors travel
//! through the engine; they are packed once per search.

use crate::codec::{metric_code, metric_from_code, Reader, Writer};
use crate::recall::{self, Knob, RecallCurve};
use crate::space::{resolve_threads, sample, Space};
use crate::{
    metric::pack_bytes, Cancel, IndexError, Metric, Result, Rows, Scored, SearchParams, TopK,
    VectorIndexRead, VectorSlice,
};

const MAGIC: &[u8; 8] = b"MGBIVF01";
/// Probed lists when neither `nprobe` nor a recall target is given and no curve exists.
pub const DEFAULT_NPROBE: usize = 16;
/// k-majority iterations.
const ITERS: usize = 10;

/// Build parameters of [`BinIvfIndex`].
#[derive(Clone, Debug, PartialEq)]
pub struct BinIvfParams {
    /// Lists (Milvus's `nlist`), at most 65,536; reduced to one per 8 rows on small
    /// segments.
    pub nlist: usize,
    pub seed: u64,
    /// Build threads (0 = all cores).
    pub threads: usize,
}

impl Default for BinIvfParams {
    fn default() -> Self {
        Self {
            nlist: 128,
            seed: 42,
            threads: 0,
        }
    }
}

#[derive(Debug)]
pub struct BinIvfIndex {
    metric: Metric,
    /// Bytes per row.
    bytes: usize,
    n: usize,
    nlist: usize,
    /// `nlist × bytes` packed centroids.
    centroids: Vec<u8>,
    /// List `l` holds `ids[list_start[l]..list_start[l + 1]]`.
    list_start: Vec<u32>,
    ids: Vec<u32>,
    curve: RecallCurve,
}

fn rows_of<'a>(v: &VectorSlice<'a>) -> Result<&'a [u8]> {
    match v.rows {
        Rows::Bin(d) => Ok(d),
        _ => Err(IndexError::Param(
            "BIN_IVF_FLAT indexes binary vectors; this field is not a BinaryVector".into(),
        )),
    }
}

/// Nearest centroid of `x`.
fn nearest(metric: Metric, centroids: &[u8], bytes: usize, x: &[u8]) -> u32 {
    let mut best = (f32::INFINITY, 0u32);
    for (c, cen) in centroids.chunks_exact(bytes).enumerate() {
        let d = metric.binary_distance(x, cen);
        if d < best.0 {
            best = (d, c as u32);
        }
    }
    best.1
}

/// Nearest centroid of every row, on `threads` threads.
fn assign_all(
    metric: Metric,
    centroids: &[u8],
    bytes: usize,
    rows: &[u8],
    threads: usize,
) -> Vec<u32> {
    let n = rows.len() / bytes;
    let mut out = vec![0u32; n];
    let t = resolve_threads(threads).clamp(1, n.max(1));
    let per = n.div_ceil(t).max(1);
    std::thread::scope(|s| {
        for (ci, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (j, o) in chunk.iter_mut().enumerate() {
                    let i = ci * per + j;
                    *o = nearest(metric, centroids, bytes, &rows[i * bytes..(i + 1) * bytes]);
                }
            });
        }
    });
    out
}

impl BinIvfIndex {
    pub fn build(
        v: VectorSlice<'_>,
        metric: Metric,
        p: &BinIvfParams,
        cancel: &Cancel,
    ) -> Result<Self> {
        let rows = rows_of(&v)?;
        if !metric.is_binary() {
            return Err(IndexError::Param(format!(
                "BIN_IVF_FLAT takes metric HAMMING or JACCARD, got {}",
                metric.as_str()
            )));
        }
        if p.nlist == 0 || p.nlist > 65536 {
            return Err(IndexError::Param(format!(
                "nlist must be in 1..=65536, got {}",
                p.nlist
            )));
        }
        let (n, bytes) = (v.len(), v.dim);
        if n == 0 {
            return Err(IndexError::Param(
                "BIN_IVF_FLAT needs at least one row".into(),
            ));
        }
        let nlist = p.nlist.min((n / 8).max(1));
        // Training sample; centroids start as distinct sampled rows.
        let train_ids = sample(n, (nlist * 40).min(n), p.seed);
        let row = |i: u32| &rows[i as usize * bytes..(i as usize + 1) * bytes];
        let mut centroids: Vec<u8> = train_ids[..nlist]
            .iter()
            .flat_map(|&i| row(i).to_vec())
            .collect();
        let train: Vec<u8> = train_ids.iter().flat_map(|&i| row(i).to_vec()).collect();
        for _ in 0..ITERS {
            if cancel.is_cancelled() {
                return Err(IndexError::Cancelled);
            }
            let a = assign_all(metric, &centroids, bytes, &train, p.threads);
            // Majority vote per bit of each centroid's members.
            let mut ones = vec![0u32; nlist * bytes * 8];
            let mut count = vec![0u32; nlist];
            for (x, &c) in train.chunks_exact(bytes).zip(&a) {
                count[c as usize] += 1;
                let base = c as usize * bytes * 8;
                for (k, &b) in x.iter().enumerate() {
                    for bit in 0..8 {
                        ones[base + k * 8 + bit] += ((b >> bit) & 1) as u32;
                    }
                }
            }
            for c in 0..nlist {
                if count[c] == 0 {
                    continue; // an empty list keeps its centroid
                }
                for k in 0..bytes {
                    let mut b = 0u8;
                    for bit in 0..8 {
                        if 2 * ones[(c * bytes + k) * 8 + bit] > count[c] {
                            b |= 1 << bit;
                        }
                    }
                    centroids[c * bytes + k] = b;
                }
            }
        }
        let assign = assign_all(metric, &centroids, bytes, rows, p.threads);
        if cancel.is_cancelled() {
            return Err(IndexError::Cancelled);
        }
        let (list_start, ids) = crate::ivf::inverted_lists(&assign, nlist);
        let mut ix = Self {
            metric,
            bytes,
            n,
            nlist,
            centroids,
            list_start,
            ids,
            curve: RecallCurve::default(),
        };
        let knobs: Vec<u32> = std::iter::successors(Some(1u32), |k| Some(k * 2))
            .take_while(|&k| (k as usize) < nlist)
            .chain(std::iter::once(nlist as u32))
            .collect();
        let sp = Space::new(v, &[], metric);
        ix.curve = recall::measure(
            &sp,
            &knobs,
            p.seed,
            p.threads,
            None,
            0.999,
            recall::Queries::InPlace(recall::CURVE_QUERIES),
            |q, exclude, knob, k| {
                ix.scan(v, &pack_bytes(q), k + 1, knob as usize, None)
                    .into_iter()
                    .map(|s| s.offset)
                    .filter(|&o| o != exclude)
                    .take(k)
                    .collect()
            },
        );
        Ok(ix)
    }

    /// Rows and bytes per row the index was built over.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.bytes)
    }

    pub fn nlist(&self) -> usize {
        self.nlist
    }

    pub fn curve(&self) -> &RecallCurve {
        &self.curve
    }

    /// See [`crate::AnyIndex::filter_plan`]: a filter widens the probe in proportion.
    pub fn filter_plan(&self, allowed: usize) -> &'static str {
        if allowed >= self.n {
            "unfiltered"
        } else {
            "widerProbe"
        }
    }

    fn choose_nprobe(&self, p: &SearchParams<'_>) -> Knob {
        let (np, exp) = match (p.nprobe, p.recall) {
            (Some(np), _) => (np, self.curve.recall_at(np)),
            (None, t) => match self.curve.choose(t.unwrap_or(0.95)) {
                Some((np, r)) => (np as usize, Some(r)),
                None => (DEFAULT_NPROBE, None),
            },
        };
        Knob {
            name: "nprobe",
            value: np.clamp(1, self.nlist),
            expected_recall: exp,
        }
    }

    /// Top-`k` over the `nprobe` nearest lists (rows outside `allow` skipped).
    fn scan(
        &self,
        v: VectorSlice<'_>,
        q: &[u8],
        k: usize,
        nprobe: usize,
        allow: Option<&crate::Bitset>,
    ) -> Vec<Scored> {
        let Rows::Bin(rows) = v.rows else {
            return Vec::new();
        };
        let b = self.bytes;
        let mut cd: Vec<(f32, u32)> = self
            .centroids
            .chunks_exact(b)
            .enumerate()
            .map(|(c, cen)| (self.metric.binary_distance(q, cen), c as u32))
            .collect();
        let np = nprobe.clamp(1, self.nlist);
        cd.select_nth_unstable_by(np - 1, |x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut top = TopK::new(k);
        for &(_, l) in &cd[..np] {
            let (s, e) = (
                self.list_start[l as usize] as usize,
                self.list_start[l as usize + 1] as usize,
            );
            for &id in &self.ids[s..e] {
                if allow.is_some_and(|a| !a.get(id as usize)) {
                    continue;
                }
                let x = &rows[id as usize * b..(id as usize + 1) * b];
                top.push(id, -self.metric.binary_distance(q, x));
            }
        }
        top.into_sorted()
    }

    /// Writes the index file to `out` (what [`Self::from_bytes`] reads).
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut w = Writer::new(out, MAGIC);
        w.u8(metric_code(self.metric));
        w.u64(self.bytes as u64);
        w.u64(self.n as u64);
        w.u64(self.nlist as u64);
        w.bytes(&self.centroids);
        w.u32s(self.list_start.iter().copied());
        w.u32s(self.ids.iter().copied());
        self.curve.write(&mut w);
        w.finish()
    }

    /// The index file in memory; see [`Self::write_to`].
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::to_vec(|out| self.write_to(out))
    }

    /// Parses [`Self::to_bytes`]; every length and offset is checked.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, MAGIC)?;
        let metric = metric_from_code(r.u8()?)?;
        let bytes = r.u64()? as usize;
        let n = r.u64()? as usize;
        let nlist = r.u64()? as usize;
        let centroids = r.bytes()?;
        let list_start = r.u32s()?;
        let ids = r.u32s()?;
        let curve = RecallCurve::read(&mut r)?;
        r.finish()?;
        let bad = |m: String| Err(IndexError::Corrupt(m));
        if !metric.is_binary() || bytes == 0 || nlist == 0 || nlist > 65536 {
            return bad(format!(
                "BIN_IVF_FLAT header: metric {}, {bytes} bytes per row, nlist {nlist}",
                metric.as_str()
            ));
        }
        if nlist.checked_mul(bytes) != Some(centroids.len())
            || !crate::ivf::lists_ok(&list_start, &ids, nlist, n)
        {
            return bad("BIN_IVF_FLAT lists do not match the row count".into());
        }
        Ok(Self {
            metric,
            bytes,
            n,
            nlist,
            centroids,
            list_start,
            ids,
            curve,
        })
    }
}

impl VectorIndexRead for BinIvfIndex {
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        p: &SearchParams<'_>,
    ) -> Result<Vec<Scored>> {
        crate::check_search("BIN_IVF_FLAT", self.bytes, self.n, vectors, query, p)?;
        rows_of(&vectors)?;
        if p.min_score.is_some() || p.max_score.is_some() {
            return crate::FlatIndex::new(self.metric).search(vectors, inv_norms, query, p);
        }
        let mut nprobe = self.choose_nprobe(p).value;
        if let Some(a) = p.allow {
            let c = a.count_ones();
            if c == 0 {
                return Ok(Vec::new());
            }
            if c < self.n {
                let f = c as f64 / self.n as f64;
                nprobe = ((nprobe as f64 / f).ceil() as usize).min(self.nlist);
            }
        }
        Ok(self.scan(vectors, &pack_bytes(query), p.k, nprobe, p.allow))
    }

    fn memory_bytes(&self) -> usize {
        self.centroids.len() + self.list_start.len() * 4 + self.ids.len() * 4
    }

    fn knob(&self, p: &SearchParams<'_>) -> Option<Knob> {
        Some(self.choose_nprobe(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::splitmix64;

    /// `n` rows of `bytes` bytes around 16 random centres, each bit flipped with
    /// probability 1/16.
    fn clustered_bits(n: usize, bytes: usize) -> Vec<u8> {
        let centres: Vec<u8> = (0..16 * bytes)
            .map(|i| splitmix64(i as u64) as u8)
            .collect();
        (0..n)
            .flat_map(|i| {
                let c = i % 16;
                (0..bytes)
                    .map(|k| {
                        let flip = (0..8).fold(0u8, |m, bit| {
                            let r = splitmix64((i * 1000 + k * 8 + bit) as u64 ^ 0xABCD);
                            if r.is_multiple_of(16) {
                                m | 1 << bit
                            } else {
                                m
                            }
                        });
                        centres[c * bytes + k] ^ flip
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn exact(metric: Metric, rows: &[u8], bytes: usize, q: &[u8], k: usize) -> Vec<Scored> {
        let mut top = TopK::new(k);
        for (i, x) in rows.chunks_exact(bytes).enumerate() {
            top.push(i as u32, -metric.binary_distance(q, x));
        }
        top.into_sorted()
    }

    #[test]
    fn flat_and_full_probe_are_exact_and_partial_probe_keeps_recall() {
        let (n, bytes) = (3000, 16);
        let rows = clustered_bits(n, bytes);
        let v = VectorSlice::binary(&rows, bytes);
        for metric in [Metric::HAMMING, Metric::JACCARD] {
            let p = BinIvfParams {
                nlist: 32,
                threads: 2,
                ..Default::default()
            };
            let ix = BinIvfIndex::build(v, metric, &p, &Cancel::new()).unwrap();
            assert_eq!(ix.shape(), (n, bytes));
            let (mut hit, mut total) = (0, 0);
            for qi in (0..n).step_by(97) {
                let q = &rows[qi * bytes..(qi + 1) * bytes];
                let qf: Vec<f32> = q.iter().map(|&b| b as f32).collect();
                let want = exact(metric, &rows, bytes, q, 10);
                // BIN_FLAT (the flat index over binary rows) is the exact answer.
                let flat = crate::FlatIndex::new(metric)
                    .search(v, &[], &qf, &SearchParams::top_k(10))
                    .unwrap();
                assert_eq!(flat, want, "{metric:?}");
                // Probing every list is exact too (the same distances; rows at equal
                // distance may come in another order).
                let mut sp = SearchParams::top_k(10);
                sp.nprobe = Some(32);
                let scores = |h: &[Scored]| h.iter().map(|s| s.score).collect::<Vec<_>>();
                assert_eq!(
                    scores(&ix.search(v, &[], &qf, &sp).unwrap()),
                    scores(&want),
                    "{metric:?}"
                );
                // The default probe (recall target 0.95) finds nearly all of them; ties
                // at equal distance count as misses here, so this is a lower bound.
                let got = ix.search(v, &[], &qf, &SearchParams::top_k(10)).unwrap();
                let w: Vec<f32> = want.iter().map(|s| s.score).collect();
                hit += got.iter().filter(|g| w.contains(&g.score)).count().min(10);
                total += 10;
                assert_eq!(got[0].score, 0.0, "a row finds itself");
            }
            let r = hit as f64 / total as f64;
            assert!(r >= 0.9, "{metric:?}: recall {r}");
            // Round trip through bytes; corruption is an error, not a panic.
            let b = ix.to_bytes();
            let back = BinIvfIndex::from_bytes(&b).unwrap();
            assert_eq!((back.shape(), back.nlist()), (ix.shape(), ix.nlist()));
            for cut in [9, b.len() / 2, b.len() - 1] {
                assert!(BinIvfIndex::from_bytes(&b[..cut]).is_err());
            }
        }
    }

    #[test]
    fn filters_and_bad_input() {
        let (n, bytes) = (800, 4);
        let rows = clustered_bits(n, bytes);
        let v = VectorSlice::binary(&rows, bytes);
        let ix = BinIvfIndex::build(v, Metric::HAMMING, &BinIvfParams::default(), &Cancel::new())
            .unwrap();
        let mut allow = crate::Bitset::zeros(n);
        for i in (0..n).step_by(10) {
            allow.set(i, true);
        }
        let mut p = SearchParams::top_k(5);
        p.allow = Some(&allow);
        let q: Vec<f32> = rows[..bytes].iter().map(|&b| b as f32).collect();
        let got = ix.search(v, &[], &q, &p).unwrap();
        assert!(!got.is_empty() && got.iter().all(|s| s.offset % 10 == 0));
        // Wrong metric, wrong rows, wrong query length.
        assert!(
            BinIvfIndex::build(v, Metric::L2, &BinIvfParams::default(), &Cancel::new()).is_err()
        );
        let f = vec![0.0f32; 8];
        assert!(BinIvfIndex::build(
            VectorSlice::new(&f, 4),
            Metric::HAMMING,
            &BinIvfParams::default(),
            &Cancel::new()
        )
        .is_err());
        assert!(ix.search(v, &[], &q[..3], &SearchParams::top_k(5)).is_err());
    }
}
