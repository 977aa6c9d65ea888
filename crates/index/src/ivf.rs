//! IVF: an inverted file over k-means cells, composed with a per-row codec.
//!
//! One type serves IVF_FLAT, IVF_SQ8 and IVF_PQ (as lance composes IVF with a quantizer):
//! the coarse quantizer (centroids) partitions rows into `nlist` lists stored contiguously
//! in list order (`ids`), and the codec decides what is scanned per row:
//! * `Flat`: nothing stored; the segment's raw vectors are read by offset (no copy).
//! * `Sq8`: 8-bit per dimension codes of the row (its unit version for COSINE).
//! * `Pq`: `m` bytes per row, encoding the residual to the row's centroid; distances come
//!   from asymmetric tables (per probed list for L2, one table plus a per-list offset
//!   for IP/COSINE).
//!
//! Quantized codecs may `refine`: take `refine · k` candidates by code distance and
//! rescore them with the raw vectors.
//!
//! Filters: a filter passing few rows is answered by an exact scan of those rows;
//! otherwise a recall target takes `nprobe` from the filtered recall curves measured at
//! build (random filters passing a range of fractions, [`filter_curve_fractions`]), and an
//! explicit `nprobe` (or a target those curves do not reach, or a file without them) is
//! scaled by 1/selectivity so the number of passing rows scanned stays what an
//! unfiltered search would scan.

use crate::codec::{self, Reader, Writer};
use crate::kmeans::{self, KMeansMetric, KMeansParams};
use crate::quant::{Pq, Sq8};
use crate::recall::{self, FilteredCurves, Knob, RecallCurve};
use crate::space::{resolve_threads, sample, Space};
use crate::{
    Bitset, Cancel, FlatIndex, IndexError, Metric, Result, RowPrefetch, Scored, SearchParams, TopK,
    VectorIndexBuild, VectorIndexRead, VectorSlice,
};

/// Format 2 adds the filtered recall curves at the end; format 1 files still open
/// (without them: their filtered searches scale the unfiltered `nprobe`, as before).
const MAGIC: &[u8; 8] = b"MPIVF002";
const MAGIC_V1: &[u8; 8] = b"MPIVF001";

/// What each row is stored as inside its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecKind {
    Flat,
    Sq8,
    /// `m` sub-quantizers × 8 bits.
    Pq {
        m: usize,
    },
}

#[derive(Clone, Debug)]
pub struct IvfParams {
    pub nlist: usize,
    pub codec: CodecKind,
    /// Build threads; 0 = every core.
    pub threads: usize,
    pub seed: u64,
    pub measure_recall: bool,
}

impl Default for IvfParams {
    fn default() -> Self {
        Self {
            nlist: 1024,
            codec: CodecKind::Flat,
            threads: 0,
            seed: 0x1f1f,
            measure_recall: true,
        }
    }
}

#[derive(Debug)]
enum Codec {
    Flat,
    Sq8(Sq8),
    Pq(Pq),
}

/// Rows converted and assigned to lists at a time during a build (8 MiB of 128-d f32).
const ASSIGN_CHUNK_ROWS: usize = 16_384;

/// Queries sampled per filtered recall curve (the unfiltered curve samples
/// [`recall::CURVE_QUERIES`]): 1,000 neighbours, a standard error of about 0.7 points of
/// recall at 0.95.
const FILTERED_CURVE_QUERIES: usize = recall::CURVE_QUERIES / 2;

/// Below this many passing rows a filtered search scans them exactly.
pub const EXACT_BELOW_ROWS: usize = 4096;

const CURVE_NPROBES: [u32; 22] = [
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096,
];

/// IVF_PQ rescoring default: `refine · k` candidates by code distance are rescored with
/// the raw vectors (which the segment keeps anyway). Without it, PQ codes of 4 dims per
/// byte plateau at recall@10 ≈ 0.71 on synth-clustered (docs/BENCHMARKS.md).
pub const PQ_DEFAULT_REFINE: usize = 4;

/// Default `nprobe` when a search names neither `nprobe` nor a recall target and no curve
/// exists (Milvus's default is 8).
pub const DEFAULT_NPROBE: usize = 8;

#[derive(Debug)]
pub struct IvfIndex {
    metric: Metric,
    dim: usize,
    n: usize,
    nlist: usize,
    centroids: Vec<f32>,
    list_start: Vec<u32>,
    ids: Vec<u32>,
    codec: Codec,
    code_len: usize,
    codes: Vec<u8>,
    curve: RecallCurve,
    /// Curves under random filters (see [`filter_curve_fractions`]).
    filtered: FilteredCurves,
}

impl IvfIndex {
    /// The plan [`VectorIndexRead::search`] follows for `allowed` passing rows: `exact`
    /// (fewer than [`EXACT_BELOW_ROWS`]: scan them), `widerProbe` (some filtered out:
    /// nprobe divided by the passing fraction), `unfiltered` (all pass).
    pub fn filter_plan(&self, allowed: usize) -> &'static str {
        if allowed >= self.n {
            "unfiltered"
        } else if allowed < EXACT_BELOW_ROWS.min(self.n) {
            "exact"
        } else {
            "widerProbe"
        }
    }

    /// Rows and dimension the index was built over.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.dim)
    }
    pub fn nlist(&self) -> usize {
        self.nlist
    }
    pub fn filtered_curves(&self) -> &FilteredCurves {
        &self.filtered
    }
    pub fn curve(&self) -> &RecallCurve {
        &self.curve
    }
    pub fn codec_kind(&self) -> CodecKind {
        match &self.codec {
            Codec::Flat => CodecKind::Flat,
            Codec::Sq8(_) => CodecKind::Sq8,
            Codec::Pq(p) => CodecKind::Pq { m: p.m },
        }
    }

    /// `refine` used when a search does not set one: [`PQ_DEFAULT_REFINE`] for PQ codes.
    pub fn default_refine(&self) -> Option<usize> {
        match self.codec {
            Codec::Pq(_) => Some(PQ_DEFAULT_REFINE),
            _ => None,
        }
    }

    fn kmetric(&self) -> KMeansMetric {
        kmetric(self.metric)
    }

    /// The row as encoded: unit length for COSINE, raw otherwise.
    fn encoded_row(sp: &Space<'_>, i: u32) -> Vec<f32> {
        sp.node_query(i)
    }

    pub fn build_with(
        v: VectorSlice<'_>,
        inv_norms: &[f32],
        metric: Metric,
        p: &IvfParams,
        cancel: &Cancel,
    ) -> Result<Self> {
        let n = v.len();
        let dim = v.dim;
        if p.nlist == 0 || p.nlist > 65536 {
            return Err(IndexError::Param(format!(
                "nlist must be in 1..=65536, got {}",
                p.nlist
            )));
        }
        if let CodecKind::Pq { m } = p.codec {
            if m == 0 || !dim.is_multiple_of(m) {
                return Err(IndexError::Param(format!(
                    "IVF_PQ: m must divide the dimension {dim}, got m = {m}"
                )));
            }
        }
        crate::check_dense("IVF", &v, metric)?;
        if metric == Metric::COSINE && inv_norms.len() != n {
            return Err(IndexError::Param(
                "COSINE needs the rows' inverse norms".into(),
            ));
        }
        if n == 0 {
            return Err(IndexError::Param("IVF needs at least one row".into()));
        }
        let sp = Space::new(v, inv_norms, metric);
        // Fewer rows than a useful training set: shrink nlist (at least 8 rows per list).
        let nlist = p.nlist.min((n / 8).max(1));
        let km = kmetric(metric);
        // Training sample (unit rows for COSINE).
        let want = (nlist * 40).min(n);
        let sample_ids: Vec<u32> = sample(n, want, p.seed);
        let mut train = Vec::with_capacity(want * dim);
        for &i in &sample_ids {
            train.extend_from_slice(&Self::encoded_row(&sp, i));
        }
        let kp = KMeansParams {
            k: nlist,
            iters: 10,
            per_centroid: usize::MAX / (nlist + 1),
            seed: p.seed,
            threads: p.threads,
        };
        let centroids = kmeans::train(&train, dim, km, &kp, cancel)?;
        // Assign in chunks: the rows may be a memory-mapped file larger than memory, so
        // never hold a converted copy of all of them (and stop between chunks on cancel).
        let mut assign = Vec::with_capacity(n);
        for a in (0..n).step_by(ASSIGN_CHUNK_ROWS) {
            if cancel.is_cancelled() {
                return Err(IndexError::Cancelled);
            }
            let b = (a + ASSIGN_CHUNK_ROWS).min(n);
            let rows = v.rows_range(a, b).to_f32();
            assign.extend(kmeans::assign(km, &centroids, dim, &rows, p.threads));
        }
        let (list_start, ids) = inverted_lists(&assign, nlist);
        let codec = match p.codec {
            CodecKind::Flat => Codec::Flat,
            CodecKind::Sq8 => Codec::Sq8(Sq8::train(&train, dim)),
            CodecKind::Pq { m } => {
                // Train on the sample's residuals to their own centroids.
                let sa = kmeans::assign(km, &centroids, dim, &train, p.threads);
                let mut res = train.clone();
                for (r, &a) in res.chunks_exact_mut(dim).zip(&sa) {
                    let c = &centroids[a as usize * dim..(a as usize + 1) * dim];
                    r.iter_mut().zip(c).for_each(|(x, c)| *x -= c);
                }
                Codec::Pq(Pq::train(&res, dim, m, p.threads, cancel)?)
            }
        };
        let code_len = match &codec {
            Codec::Flat => 0,
            Codec::Sq8(_) => dim,
            Codec::Pq(pq) => pq.m,
        };
        let mut codes = vec![0u8; n * code_len];
        if code_len > 0 {
            // Rows are encoded in storage order (a sequential read of a file on disk),
            // each into its slot in list order.
            let mut by_row = vec![0u32; n];
            for (pos, &id) in ids.iter().enumerate() {
                by_row[id as usize] = pos as u32;
            }
            let t = resolve_threads(p.threads).clamp(1, n);
            let per = n.div_ceil(t);
            let (codec_ref, assign_ref, cent_ref) = (&codec, &assign, &centroids);
            let encoded: Vec<Vec<u8>> = std::thread::scope(|s| {
                let parts: Vec<_> = (0..n)
                    .step_by(per)
                    .map(|a| {
                        let b = (a + per).min(n);
                        s.spawn(move || {
                            let mut part = vec![0u8; (b - a) * code_len];
                            for (j, out) in part.chunks_exact_mut(code_len).enumerate() {
                                let id = (a + j) as u32;
                                let mut x = Self::encoded_row(&sp, id);
                                match codec_ref {
                                    Codec::Sq8(q) => q.encode(&x, out),
                                    Codec::Pq(q) => {
                                        let a = assign_ref[id as usize] as usize;
                                        let c = &cent_ref[a * dim..(a + 1) * dim];
                                        x.iter_mut().zip(c).for_each(|(x, c)| *x -= c);
                                        q.encode(&x, out)
                                    }
                                    Codec::Flat => {}
                                }
                            }
                            part
                        })
                    })
                    .collect();
                parts
                    .into_iter()
                    .map(|h| h.join().expect("encoder thread"))
                    .collect()
            });
            for (part, a) in encoded.iter().zip((0..n).step_by(per)) {
                for (j, code) in part.chunks_exact(code_len).enumerate() {
                    let pos = by_row[a + j] as usize;
                    codes[pos * code_len..(pos + 1) * code_len].copy_from_slice(code);
                }
            }
        }
        let mut idx = IvfIndex {
            metric,
            dim,
            n,
            nlist,
            centroids,
            list_start,
            ids,
            codec,
            code_len,
            codes,
            curve: RecallCurve::default(),
            filtered: FilteredCurves::default(),
        };
        if p.measure_recall {
            let knobs: Vec<u32> = CURVE_NPROBES
                .iter()
                .copied()
                .filter(|&k| k as usize <= nlist)
                .collect();
            let refine = idx.default_refine();
            idx.curve = recall::measure(
                &sp,
                &knobs,
                p.seed,
                p.threads,
                None,
                0.999,
                recall::Queries::InPlace(recall::CURVE_QUERIES),
                |q, ex, nprobe, k| {
                    idx.search_prepared(&sp, q, k, nprobe as usize, None, refine, Some(ex), None)
                        .iter()
                        .map(|s| s.offset)
                        .collect()
                },
            );
            // The filtered sweeps are the build's costly part: at a small fraction they
            // climb toward every list, each rung a scan of the probed lists per query.
            // They stop at half the lists (past that a target they miss probes `1/f`
            // times the unfiltered choice, capped at every list) and sample half the
            // queries. Measured at 1M × 128, nlist 1024: the build took 65 s with full
            // sweeps, 27 s without filtered curves (docs/BENCHMARKS.md, "IVF under a
            // filter").
            let filtered_knobs: Vec<u32> = knobs
                .iter()
                .copied()
                .filter(|&k| k as usize <= (nlist / 2).max(1))
                .collect();
            let mut curves = Vec::new();
            for f in filter_curve_fractions(n) {
                if cancel.is_cancelled() {
                    return Err(IndexError::Cancelled);
                }
                let allow = recall::random_filter(n, f, p.seed ^ f.to_bits());
                let c = recall::measure(
                    &sp,
                    &filtered_knobs,
                    p.seed,
                    p.threads,
                    Some(&allow),
                    recall::FILTERED_STOP,
                    recall::Queries::InPlace(FILTERED_CURVE_QUERIES),
                    |q, ex, nprobe, k| {
                        idx.search_prepared(
                            &sp,
                            q,
                            k,
                            nprobe as usize,
                            Some(&allow),
                            refine,
                            Some(ex),
                            None,
                        )
                        .iter()
                        .map(|s| s.offset)
                        .collect()
                    },
                );
                curves.push((f as f32, c));
            }
            idx.filtered = FilteredCurves { curves };
        }
        Ok(idx)
    }

    /// The `nprobe` a search will use and the recall the curves predict for it. Under a
    /// filter passing a fraction `f` of the rows, a recall target takes it from the
    /// filtered curves around `f` ([`FilteredCurves::choose`]); an explicit `nprobe`, a
    /// target they do not reach, or an index without them scales the unfiltered choice
    /// by `1/f` (capped at `nlist`).
    pub fn choose_nprobe(&self, p: &SearchParams<'_>) -> Knob {
        self.choose_nprobe_for(p, p.allow.map(|b| b.count_ones()))
    }

    /// As [`IvfIndex::choose_nprobe`], knowing that `allowed` rows pass the filter.
    fn choose_nprobe_for(&self, p: &SearchParams<'_>, allowed: Option<usize>) -> Knob {
        let fraction = allowed
            .filter(|&c| c < self.n)
            .map(|c| c as f64 / self.n.max(1) as f64);
        let widen = |np: usize| match fraction {
            Some(f) if f > 0.0 => ((np as f64 / f).ceil() as usize).min(self.nlist),
            _ => np,
        };
        // Below the lowest measured fraction (at most 1 %: an index over more than
        // 409,600 rows probes lists for fewer passing rows than that) the curves would
        // under-probe (fewer passing rows need more lists), so that range scales instead.
        let lowest = self.filtered.curves.first().map(|c| c.0);
        let filtered = |t: f32| {
            fraction
                .filter(|&f| lowest.is_some_and(|lo| f as f32 >= lo))
                .and_then(|f| self.filtered.choose(f, 1.0, t))
        };
        let target = |t: f32| match filtered(t) {
            Some((np, r)) => (np as usize, Some(r)),
            None => match self.curve.choose(t) {
                Some((np, r)) => (widen(np as usize), Some(r)),
                None => (widen(DEFAULT_NPROBE), None),
            },
        };
        let (np, exp) = match (p.nprobe, p.recall) {
            (Some(np), _) => (widen(np), self.curve.recall_at(np)),
            (None, t) => target(t.unwrap_or(0.95)),
        };
        Knob {
            name: "nprobe",
            value: np.clamp(1, self.nlist),
            expected_recall: exp,
        }
    }

    /// Lists to probe: the `nprobe` nearest centroids.
    fn probes(&self, q: &[f32], nprobe: usize) -> Vec<(f32, u32)> {
        let km = self.kmetric();
        let mut cd: Vec<(f32, u32)> = self
            .centroids
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(c, cv)| {
                let d = match km {
                    KMeansMetric::L2 => magpie_linalg::l2_sq(q, cv),
                    KMeansMetric::Spherical => -magpie_linalg::dot(q, cv),
                };
                (d, c as u32)
            })
            .collect();
        let np = nprobe.clamp(1, self.nlist);
        if np < cd.len() {
            cd.select_nth_unstable_by(np - 1, |a, b| a.0.total_cmp(&b.0));
            cd.truncate(np);
        }
        cd
    }

    #[allow(clippy::too_many_arguments)]
    fn search_prepared(
        &self,
        sp: &Space<'_>,
        q: &[f32],
        k: usize,
        nprobe: usize,
        allow: Option<&Bitset>,
        refine: Option<usize>,
        exclude: Option<u32>,
        prefetch: Option<&dyn RowPrefetch>,
    ) -> Vec<Scored> {
        let probes = self.probes(q, nprobe);
        let refine = refine.filter(|_| self.code_len > 0).map(|r| r.max(1));
        let keep = refine.map_or(k, |r| r.saturating_mul(k));
        let mut top = TopK::new(keep);
        let pass = |id: u32| allow.is_none_or(|b| b.get(id as usize)) && Some(id) != exclude;
        match &self.codec {
            Codec::Flat => {
                for &(_, l) in &probes {
                    let (a, b) = (
                        self.list_start[l as usize] as usize,
                        self.list_start[l as usize + 1] as usize,
                    );
                    let ids = &self.ids[a..b];
                    for (j, &id) in ids.iter().enumerate() {
                        if let Some(&nx) = ids.get(j + 2) {
                            sp.prefetch(nx, 4);
                        }
                        if pass(id) {
                            top.push(id, -sp.dist(q, id));
                        }
                    }
                }
            }
            Codec::Sq8(sq) => {
                let sqq = sq.prepare(self.metric, q);
                for &(_, l) in &probes {
                    let (a, b) = (
                        self.list_start[l as usize] as usize,
                        self.list_start[l as usize + 1] as usize,
                    );
                    for pos in a..b {
                        let id = self.ids[pos];
                        if pass(id) {
                            let code = &self.codes[pos * self.code_len..(pos + 1) * self.code_len];
                            top.push(id, -sq.dist(&sqq, code));
                        }
                    }
                }
            }
            Codec::Pq(pq) => {
                let l2 = self.metric == Metric::L2;
                let mut table = Vec::with_capacity(pq.m * 256);
                if !l2 {
                    pq.table(false, q, &mut table);
                }
                let mut resid = vec![0f32; self.dim];
                for &(cd, l) in &probes {
                    let c = &self.centroids[l as usize * self.dim..(l as usize + 1) * self.dim];
                    let base = if l2 {
                        for d in 0..self.dim {
                            resid[d] = q[d] - c[d];
                        }
                        pq.table(true, &resid, &mut table);
                        0.0
                    } else {
                        // Spherical coarse distance is −q·c: the IP part of the centroid.
                        cd
                    };
                    let (a, b) = (
                        self.list_start[l as usize] as usize,
                        self.list_start[l as usize + 1] as usize,
                    );
                    for pos in a..b {
                        let id = self.ids[pos];
                        if pass(id) {
                            let code = &self.codes[pos * self.code_len..(pos + 1) * self.code_len];
                            top.push(id, -(base + magpie_linalg::pq_adc(&table, code)));
                        }
                    }
                }
            }
        }
        let mut out = top.into_sorted();
        if refine.is_some() {
            if let Some(pf) = prefetch {
                let rows: Vec<u32> = out.iter().map(|s| s.offset).collect();
                pf.will_read(&rows);
            }
            let mut t = TopK::new(k);
            for s in &out {
                t.push(s.offset, -sp.dist(q, s.offset));
            }
            out = t.into_sorted();
        }
        out
    }

    /// Writes the index file to `out` (what [`Self::from_bytes`] reads).
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut w = Writer::new(out, MAGIC);
        w.u8(codec::metric_code(self.metric));
        w.u64(self.n as u64);
        w.u32(self.dim as u32);
        w.u32(self.nlist as u32);
        w.f32s(&self.centroids);
        w.u32s(self.list_start.iter().copied());
        w.u32s(self.ids.iter().copied());
        match &self.codec {
            Codec::Flat => w.u8(0),
            Codec::Sq8(q) => {
                w.u8(1);
                q.write(&mut w)
            }
            Codec::Pq(q) => {
                w.u8(2);
                q.write(&mut w)
            }
        }
        w.bytes(&self.codes);
        self.curve.write(&mut w);
        self.filtered.write(&mut w);
        w.finish()
    }

    /// The index file in memory; see [`Self::write_to`].
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::to_vec(|out| self.write_to(out))
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let v1 = b.starts_with(MAGIC_V1);
        let mut r = Reader::new(b, if v1 { MAGIC_V1 } else { MAGIC })?;
        let metric = codec::metric_from_code(r.u8()?)?;
        let n = r.u64()? as usize;
        let dim = r.u32()? as usize;
        let nlist = r.u32()? as usize;
        let centroids = r.f32s()?;
        let list_start = r.u32s()?;
        let ids = r.u32s()?;
        let codec = match r.u8()? {
            0 => Codec::Flat,
            1 => Codec::Sq8(Sq8::read(&mut r)?),
            2 => Codec::Pq(Pq::read(&mut r)?),
            c => return Err(IndexError::Corrupt(format!("IVF: unknown codec {c}"))),
        };
        let codes = r.bytes()?;
        let curve = RecallCurve::read(&mut r)?;
        let filtered = if v1 {
            FilteredCurves::default()
        } else {
            FilteredCurves::read(&mut r)?
        };
        r.finish()?;
        let bad = |m: &str| IndexError::Corrupt(format!("IVF: {m}"));
        let code_len = match &codec {
            Codec::Flat => 0,
            Codec::Sq8(q) => {
                if q.dim() != dim {
                    return Err(bad("SQ8 dimension"));
                }
                dim
            }
            Codec::Pq(q) => {
                if q.m * q.dsub != dim {
                    return Err(bad("PQ dimension"));
                }
                q.m
            }
        };
        if dim == 0
            || nlist == 0
            || nlist.checked_mul(dim) != Some(centroids.len())
            || list_start.len() != nlist.wrapping_add(1)
            || n.checked_mul(code_len) != Some(codes.len())
            || !lists_ok(&list_start, &ids, nlist, n)
        {
            return Err(bad("inconsistent shapes"));
        }
        Ok(IvfIndex {
            metric,
            dim,
            n,
            nlist,
            centroids,
            list_start,
            ids,
            codec,
            code_len,
            codes,
            curve,
            filtered,
        })
    }
}

/// Passing fractions the filtered recall curves of an `n`-row IVF index are measured at:
/// from the lowest fraction a filtered search probes lists for (`EXACT_BELOW_ROWS / n`,
/// at least 0.01) up in steps of [`recall::CURVE_FRACTION_STEP`] (2.5×), then 0.9
/// (0.04, 0.1, 0.25, 0.625, 0.9 at 100k rows). A filter passing a fraction `f` needs the
/// lists that hold its nearest *passing* rows, about the nearest `k / f` rows overall;
/// how many lists that takes depends on the data, which is why it is measured rather
/// than taken as `nprobe / f`: on synth-clustered 100k, `nprobe / f` probes 80 lists at
/// 10 % where 32 reach recall 0.98 (docs/BENCHMARKS.md, "IVF under a filter").
pub fn filter_curve_fractions(n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let mut out = recall::fraction_ladder((EXACT_BELOW_ROWS as f64 / n as f64).max(0.01), 0.9);
    // Fractions an exact scan answers (fewer than EXACT_BELOW_ROWS rows) are left out.
    if 0.9 * n as f64 >= EXACT_BELOW_ROWS as f64 {
        out.push(0.9);
    }
    out
}

/// Inverted lists from each row's list: list `l` holds
/// `ids[list_start[l]..list_start[l + 1]]`, rows in ascending order (counting sort).
pub(crate) fn inverted_lists(assign: &[u32], nlist: usize) -> (Vec<u32>, Vec<u32>) {
    let mut list_start = vec![0u32; nlist + 1];
    for &a in assign {
        list_start[a as usize + 1] += 1;
    }
    for l in 1..=nlist {
        list_start[l] += list_start[l - 1];
    }
    let mut fill = list_start.clone();
    let mut ids = vec![0u32; assign.len()];
    for (i, &a) in assign.iter().enumerate() {
        ids[fill[a as usize] as usize] = i as u32;
        fill[a as usize] += 1;
    }
    (list_start, ids)
}

/// Checks lists read from a file: `nlist + 1` ascending offsets from 0 to `n`, and `n`
/// row ids below `n`.
pub(crate) fn lists_ok(list_start: &[u32], ids: &[u32], nlist: usize, n: usize) -> bool {
    list_start.len() == nlist.wrapping_add(1)
        && ids.len() == n
        && list_start.first() == Some(&0)
        && list_start.last().is_some_and(|&e| e as usize == n)
        && list_start.windows(2).all(|w| w[0] <= w[1])
        && ids.iter().all(|&i| (i as usize) < n)
}

fn kmetric(m: Metric) -> KMeansMetric {
    match m {
        Metric::L2 | Metric::HAMMING | Metric::JACCARD => KMeansMetric::L2,
        Metric::IP | Metric::COSINE | Metric::BM25 => KMeansMetric::Spherical,
    }
}

impl VectorIndexBuild for IvfIndex {
    type Params = IvfParams;
    fn build(v: VectorSlice<'_>, metric: Metric, p: &IvfParams, cancel: &Cancel) -> Result<Self> {
        Self::build_with(v, &v.inv_norms(), metric, p, cancel)
    }
}

impl VectorIndexRead for IvfIndex {
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        p: &SearchParams<'_>,
    ) -> Result<Vec<Scored>> {
        crate::check_search("IVF", self.dim, self.n, vectors, query, p)?;
        if p.min_score.is_some() || p.max_score.is_some() {
            return FlatIndex::new(self.metric).search(vectors, inv_norms, query, p);
        }
        let allowed = p.allow.map(|b| b.count_ones());
        match allowed {
            Some(0) => return Ok(Vec::new()),
            Some(c) if c < EXACT_BELOW_ROWS.min(self.n) => {
                return FlatIndex::new(self.metric).search(vectors, inv_norms, query, p);
            }
            _ => {}
        }
        let allow = p.allow.filter(|_| allowed.is_some_and(|c| c < self.n));
        let nprobe = self.choose_nprobe_for(p, allowed).value;
        let sp = Space::new(vectors, inv_norms, self.metric);
        let q = sp.prepare(query);
        let refine = p.refine.or(self.default_refine()).filter(|&r| r > 1);
        Ok(self.search_prepared(&sp, &q, p.k, nprobe, allow, refine, None, p.prefetch))
    }

    fn memory_bytes(&self) -> usize {
        self.centroids.len() * 4
            + self.list_start.len() * 4
            + self.ids.len() * 4
            + self.codes.len()
            + match &self.codec {
                Codec::Flat => 0,
                Codec::Sq8(q) => q.dim() * 8,
                Codec::Pq(q) => q.codebooks.len() * 4,
            }
    }

    fn knob(&self, p: &SearchParams<'_>) -> Option<Knob> {
        Some(self.choose_nprobe(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{clustered, exact_topk, recall_of};

    fn build(codec: CodecKind, metric: Metric) -> (Vec<f32>, Vec<f32>, IvfIndex) {
        let (n, dim) = (4000, 16);
        let data = clustered(n, dim, 20, 11);
        let v = VectorSlice::new(&data, dim);
        let inv: Vec<f32> = (0..n)
            .map(|i| 1.0 / magpie_linalg::norm(&v.row(i)))
            .collect();
        let p = IvfParams {
            nlist: 64,
            codec,
            threads: 2,
            ..Default::default()
        };
        let idx = IvfIndex::build_with(v, &inv, metric, &p, &Cancel::new()).unwrap();
        (data, inv, idx)
    }

    /// Records the rows an index says it will read.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<Vec<u32>>>);
    impl RowPrefetch for Recorder {
        fn will_read(&self, rows: &[u32]) {
            self.0.lock().unwrap().push(rows.to_vec());
        }
    }

    #[test]
    fn refine_announces_the_rows_it_rescores() {
        // PQ with refine: one announcement per search, of exactly the refine · k
        // candidates, and every hit is one of them.
        let (data, inv, idx) = build(CodecKind::Pq { m: 8 }, Metric::L2);
        let v = VectorSlice::new(&data, 16);
        let rec = Recorder::default();
        let q = &data[16 * 7..16 * 8];
        let p = SearchParams {
            nprobe: Some(8),
            refine: Some(5),
            prefetch: Some(&rec),
            ..SearchParams::top_k(10)
        };
        let hits = idx.search(v, &inv, q, &p).unwrap();
        let calls = rec.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 50);
        assert!(hits.iter().all(|h| calls[0].contains(&h.offset)));
        assert_eq!(hits[0].offset, 7);
        // Without the hook the answer is the same.
        let plain = SearchParams {
            prefetch: None,
            ..p
        };
        assert_eq!(idx.search(v, &inv, q, &plain).unwrap(), hits);
        // IVF_FLAT reads raw rows while it scans, never in a rescore: no announcement.
        let (data, inv, flat) = build(CodecKind::Flat, Metric::L2);
        let v = VectorSlice::new(&data, 16);
        let rec = Recorder::default();
        let p = SearchParams {
            prefetch: Some(&rec),
            ..SearchParams::top_k(10)
        };
        flat.search(v, &inv, q, &p).unwrap();
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn build_over_many_assignment_chunks_matches_the_rows() {
        // More rows than one assignment chunk, PQ and SQ8: every row still finds itself
        // first (the codes landed in the slots of their own rows).
        let (n, dim) = (ASSIGN_CHUNK_ROWS * 2 + 1234, 8);
        let data = clustered(n, dim, 50, 3);
        let v = VectorSlice::new(&data, dim);
        for codec in [CodecKind::Sq8, CodecKind::Pq { m: 4 }] {
            let p = IvfParams {
                nlist: 64,
                codec,
                threads: 2,
                measure_recall: false,
                ..Default::default()
            };
            let idx = IvfIndex::build_with(v, &[], Metric::L2, &p, &Cancel::new()).unwrap();
            for i in (0..n).step_by(997) {
                let p = SearchParams {
                    nprobe: Some(4),
                    refine: Some(8),
                    ..SearchParams::top_k(1)
                };
                let hit = idx.search(v, &[], v.row(i).as_ref(), &p).unwrap();
                assert_eq!(hit[0].offset as usize, i, "{codec:?}: row {i}");
            }
        }
    }

    #[test]
    fn recall_per_codec_and_metric() {
        for (codec, refine, floor) in [
            (CodecKind::Flat, None, 0.95),
            (CodecKind::Sq8, None, 0.8),
            (CodecKind::Sq8, Some(4), 0.95),
            (CodecKind::Pq { m: 8 }, Some(10), 0.9),
        ] {
            for metric in [Metric::L2, Metric::IP, Metric::COSINE] {
                let (data, inv, idx) = build(codec, metric);
                let v = VectorSlice::new(&data, 16);
                let queries = clustered(50, 16, 20, 77);
                let r = recall_of(&idx, v, &inv, metric, &queries, 10, |k| SearchParams {
                    nprobe: Some(16),
                    refine,
                    ..SearchParams::top_k(k)
                });
                assert!(
                    r >= floor,
                    "{codec:?} {metric:?} refine {refine:?}: recall {r}"
                );
            }
        }
    }

    #[test]
    fn filters_recall_target_and_round_trip() {
        let (data, inv, idx) = build(CodecKind::Sq8, Metric::L2);
        let v = VectorSlice::new(&data, 16);
        let queries = clustered(40, 16, 20, 5);
        let mut allow = Bitset::zeros(4000);
        for i in (0..4000).step_by(3) {
            allow.set(i, true);
        }
        // Under EXACT_BELOW_ROWS passing rows the filtered search is an exact scan.
        assert_eq!(idx.filter_plan(allow.count_ones()), "exact");
        assert_eq!(idx.filter_plan(4000), "unfiltered");
        for q in queries.chunks_exact(16) {
            let p = SearchParams {
                allow: Some(&allow),
                refine: Some(4),
                ..SearchParams::top_k(10)
            };
            let got = idx.search(v, &inv, q, &p).unwrap();
            assert!(got.iter().all(|s| allow.get(s.offset as usize)));
            let want = exact_topk(v, &inv, Metric::L2, q, 10, Some(&allow));
            assert!(got.iter().filter(|g| want.contains(&g.offset)).count() >= 8);
        }
        let r = recall_of(&idx, v, &inv, Metric::L2, &queries, 10, |k| SearchParams {
            recall: Some(0.9),
            ..SearchParams::top_k(k)
        });
        assert!(r >= 0.89, "recall target 0.9 gave {r}");
        let back = IvfIndex::from_bytes(&idx.to_bytes()).unwrap();
        let p = SearchParams {
            nprobe: Some(4),
            ..SearchParams::top_k(5)
        };
        assert_eq!(
            idx.search(v, &inv, &data[..16], &p).unwrap(),
            back.search(v, &inv, &data[..16], &p).unwrap()
        );
        let b = idx.to_bytes();
        assert!(IvfIndex::from_bytes(&b[..b.len() - 1]).is_err());
        let bad = IvfParams {
            codec: CodecKind::Pq { m: 5 },
            ..Default::default()
        };
        assert!(matches!(
            IvfIndex::build(v, Metric::L2, &bad, &Cancel::new()),
            Err(IndexError::Param(_))
        ));
    }

    #[test]
    fn filtered_curves_cover_the_probed_range() {
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        let at_100k = filter_curve_fractions(100_000);
        assert!(
            close(&at_100k, &[0.04096, 0.1024, 0.256, 0.64, 0.9]),
            "{at_100k:?}"
        );
        // Small indexes: an exact scan answers every filter, so no curves.
        assert!(filter_curve_fractions(4000).is_empty());
        let at_5k = filter_curve_fractions(5000);
        assert!(close(&at_5k, &[0.8192, 0.9]), "{at_5k:?}");
    }

    /// Under a filter, a recall target takes `nprobe` from the filtered curves (and still
    /// holds on held-out queries and another random filter), probing fewer lists than
    /// scaling the unfiltered choice by 1/f; an explicit `nprobe` is scaled as before;
    /// the curves survive serialisation, and a format-1 file opens without them.
    #[test]
    fn filtered_recall_target_uses_the_filtered_curves_and_holds() {
        let (n, dim) = (20_000, 16);
        let data = clustered(n, dim, 40, 5);
        let v = VectorSlice::new(&data, dim);
        let p = IvfParams {
            nlist: 128,
            threads: 2,
            ..Default::default()
        };
        let idx = IvfIndex::build_with(v, &[], Metric::L2, &p, &Cancel::new()).unwrap();
        let fr: Vec<f32> = idx.filtered_curves().curves.iter().map(|c| c.0).collect();
        assert_eq!(fr.len(), 3, "{fr:?}");
        let queries = clustered(60, dim, 40, 77);
        let mut fewer = 0;
        for frac in [0.25, 0.6] {
            let mut allow = Bitset::zeros(n);
            for i in 0..n {
                if crate::space::unit(i as u64 * 131 + 7) < frac {
                    allow.set(i, true);
                }
            }
            let f = allow.count_ones() as f64 / n as f64;
            for target in [0.9f32, 0.95] {
                let sp = SearchParams {
                    allow: Some(&allow),
                    recall: Some(target),
                    ..SearchParams::top_k(10)
                };
                let knob = idx.choose_nprobe(&sp);
                let want = idx.filtered_curves().choose(f, 1.0, target).unwrap();
                assert_eq!(knob.value, want.0 as usize, "{frac} {target}");
                assert_eq!(knob.expected_recall, Some(want.1));
                let unfiltered = idx.curve().choose(target).unwrap().0 as f64;
                if (knob.value as f64) < (unfiltered / f).ceil() {
                    fewer += 1;
                }
                let (mut hit, mut tot) = (0, 0);
                for q in queries.chunks_exact(dim) {
                    let got = idx.search(v, &[], q, &sp).unwrap();
                    assert!(got.iter().all(|s| allow.get(s.offset as usize)));
                    let truth = exact_topk(v, &[], Metric::L2, q, 10, Some(&allow));
                    hit += got.iter().filter(|g| truth.contains(&g.offset)).count();
                    tot += truth.len();
                }
                let r = hit as f64 / tot as f64;
                assert!(
                    r + 0.01 >= target as f64,
                    "{frac} passing, target {target}: measured {r} at nprobe {}",
                    knob.value
                );
            }
            // An explicit nprobe is scaled by 1/f, as before the curves.
            let sp = SearchParams {
                allow: Some(&allow),
                nprobe: Some(4),
                ..SearchParams::top_k(10)
            };
            assert_eq!(idx.choose_nprobe(&sp).value, (4.0 / f).ceil() as usize);
        }
        assert!(
            fewer > 0,
            "the curves never probed fewer lists than nprobe / f"
        );
        // A fraction below the lowest curve scales the unfiltered choice instead.
        let mut few = Bitset::zeros(n);
        for i in (0..n).step_by(4) {
            few.set(i, true);
        }
        let mut high = IvfIndex::from_bytes(&idx.to_bytes()).unwrap();
        high.filtered.curves.retain(|c| c.0 > 0.5);
        let sp = SearchParams {
            allow: Some(&few),
            recall: Some(0.9),
            ..SearchParams::top_k(10)
        };
        let unfiltered = idx.curve().choose(0.9).unwrap().0 as f64;
        assert_eq!(
            high.choose_nprobe(&sp).value,
            ((unfiltered / 0.25).ceil() as usize).min(128)
        );
        let bytes = idx.to_bytes();
        let back = IvfIndex::from_bytes(&bytes).unwrap();
        assert_eq!(back.filtered_curves(), idx.filtered_curves());
        // Format 1: the same bytes without the filtered curves, under the old magic.
        let tail = {
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, MAGIC);
            idx.filtered.write(&mut w);
            w.finish().unwrap();
            buf.len() - MAGIC.len()
        };
        let mut v1 = bytes[..bytes.len() - tail].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        let old = IvfIndex::from_bytes(&v1).unwrap();
        assert!(old.filtered_curves().curves.is_empty());
        assert_eq!(old.curve(), idx.curve());
    }
}
