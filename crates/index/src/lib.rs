//! Vector indexes for Magpie.
//!
//! # Conventions
//! * **Greater score = closer.** Every index ranks by an internal *score* where a larger
//!   value means a closer vector: `-‖q-x‖²` for L2, `q·x` for IP, `cos(q,x)` for COSINE.
//!   [`Metric::user_distance`] converts a score into the value Milvus reports (the squared
//!   L2 distance, smaller is closer; IP and COSINE similarities, larger is closer). This is
//!   the only place the conversion happens.
//! * **Dense `u32` offsets.** Indexes address vectors by their row offset inside one
//!   segment (`0..len`), never by user primary keys; the engine maps offsets to keys.
//! * **Read and write traits.** [`VectorIndexRead`] searches, [`VectorIndexBuild`]
//!   builds; [`AnyIndex`] is the enum the engine dispatches on.
//! * Synchronous and cancellable (searches poll a [`Cancel`] flag); no I/O policy here.

pub mod binary;
pub mod bitset;
pub mod codec;
pub mod flat;
pub mod hnsw;
pub mod ivf;
pub mod kmeans;
pub mod metric;
pub mod quant;
pub mod recall;
mod space;
pub mod sparse;
#[cfg(test)]
mod testutil;
pub mod topk;

pub use binary::{BinIvfIndex, BinIvfParams};
pub use bitset::Bitset;
pub use flat::FlatIndex;
pub use hnsw::{HnswIndex, HnswParams};
pub use ivf::{CodecKind, IvfIndex, IvfParams};
pub use metric::Metric;
pub use recall::{Knob, RecallCurve};
pub use sparse::{Bm25, Scoring, SparseAlgo, SparseIndex, SparseSearch, SparseVector};
pub use topk::{Scored, TopK};

use std::sync::atomic::{AtomicBool, Ordering};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("query has dimension {got}, index expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("search cancelled")]
    Cancelled,
    #[error("invalid index parameter: {0}")]
    Param(String),
    #[error("corrupt index data: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// Cooperative cancellation flag, polled by long-running searches and builds.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Element type of a dense vector column's stored rows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    #[default]
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of an f32).
    BF16,
    /// Packed bits (BinaryVector), eight dimensions per byte.
    Bin,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
            Elem::Bin => 1,
        }
    }

    /// `Some(bf)` for the half-precision types (`bf`: bfloat16), `None` for f32.
    pub fn half(self) -> Option<bool> {
        match self {
            Elem::F32 | Elem::Bin => None,
            Elem::F16 => Some(false),
            Elem::BF16 => Some(true),
        }
    }
}

/// The stored rows of a [`VectorSlice`]: f32, or half precision (IEEE binary16, or
/// bfloat16 when the flag is set) read through converting kernels. Half-precision rows
/// take half the memory; queries stay f32.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    Half(&'a [u16], bool),
    /// Packed bit strings (BinaryVector): `dim` is bytes per row. Scored with the
    /// HAMMING / JACCARD kernels; queries reach the index as one f32 lane per byte.
    Bin(&'a [u8]),
}

/// Contiguous row-major vectors: row `i` is elements `i*dim..(i+1)*dim`.
#[derive(Clone, Copy, Debug)]
pub struct VectorSlice<'a> {
    pub rows: Rows<'a>,
    pub dim: usize,
}

impl<'a> VectorSlice<'a> {
    pub fn new(data: &'a [f32], dim: usize) -> Self {
        assert!(
            dim > 0 && data.len().is_multiple_of(dim),
            "vector slice shape"
        );
        Self {
            rows: Rows::F32(data),
            dim,
        }
    }

    /// Half-precision rows: binary16 bits, or bfloat16 bits when `bf`.
    pub fn half(data: &'a [u16], dim: usize, bf: bool) -> Self {
        assert!(
            dim > 0 && data.len().is_multiple_of(dim),
            "vector slice shape"
        );
        Self {
            rows: Rows::Half(data, bf),
            dim,
        }
    }

    /// Packed binary rows of `bytes` bytes each.
    pub fn binary(data: &'a [u8], bytes: usize) -> Self {
        assert!(
            bytes > 0 && data.len().is_multiple_of(bytes),
            "vector slice shape"
        );
        Self {
            rows: Rows::Bin(data),
            dim: bytes,
        }
    }

    fn elems(&self) -> usize {
        match self.rows {
            Rows::F32(d) => d.len(),
            Rows::Half(d, _) => d.len(),
            Rows::Bin(d) => d.len(),
        }
    }

    /// Packed row `i` of binary rows (`None` for the other row types).
    #[inline]
    pub fn bin_row(&self, i: usize) -> Option<&'a [u8]> {
        match self.rows {
            Rows::Bin(d) => Some(&d[i * self.dim..(i + 1) * self.dim]),
            _ => None,
        }
    }
    pub fn len(&self) -> usize {
        self.elems() / self.dim
    }

    /// Rows `start..end` (offsets in the result count from `start`).
    pub fn rows_range(&self, start: usize, end: usize) -> VectorSlice<'a> {
        assert!(start <= end && end <= self.len(), "vector slice range");
        let r = start * self.dim..end * self.dim;
        let rows = match self.rows {
            Rows::F32(d) => Rows::F32(&d[r]),
            Rows::Half(d, bf) => Rows::Half(&d[r], bf),
            Rows::Bin(d) => Rows::Bin(&d[r]),
        };
        VectorSlice {
            rows,
            dim: self.dim,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.elems() == 0
    }

    /// Row `i` as f32: borrowed for f32 rows, widened (exactly) for half precision.
    #[inline]
    pub fn row(&self, i: usize) -> std::borrow::Cow<'a, [f32]> {
        let r = i * self.dim..(i + 1) * self.dim;
        match self.rows {
            Rows::F32(d) => std::borrow::Cow::Borrowed(&d[r]),
            Rows::Half(d, bf) => std::borrow::Cow::Owned(
                d[r].iter()
                    .map(|&h| magpie_linalg::half_to_f32(h, bf))
                    .collect(),
            ),
            Rows::Bin(d) => std::borrow::Cow::Owned(d[r].iter().map(|&b| b as f32).collect()),
        }
    }

    /// Every row as f32, row-major: borrowed for f32 rows, widened for half precision
    /// (a temporary copy, used by IVF training and assignment).
    pub fn to_f32(&self) -> std::borrow::Cow<'a, [f32]> {
        match self.rows {
            Rows::F32(d) => std::borrow::Cow::Borrowed(d),
            Rows::Half(d, bf) => std::borrow::Cow::Owned(
                d.iter()
                    .map(|&h| magpie_linalg::half_to_f32(h, bf))
                    .collect(),
            ),
            Rows::Bin(d) => std::borrow::Cow::Owned(d.iter().map(|&b| b as f32).collect()),
        }
    }

    /// `q · row i`.
    #[inline(always)]
    pub fn dot(&self, q: &[f32], i: usize) -> f32 {
        let r = i * self.dim..(i + 1) * self.dim;
        match self.rows {
            Rows::F32(d) => magpie_linalg::dot(q, &d[r]),
            Rows::Half(d, bf) => magpie_linalg::dot_half(q, &d[r], bf),
            Rows::Bin(d) => d[r].iter().zip(q).map(|(&b, x)| b as f32 * x).sum(),
        }
    }

    /// `‖q − row i‖²`.
    #[inline(always)]
    pub fn l2_sq(&self, q: &[f32], i: usize) -> f32 {
        let r = i * self.dim..(i + 1) * self.dim;
        match self.rows {
            Rows::F32(d) => magpie_linalg::l2_sq(q, &d[r]),
            Rows::Half(d, bf) => magpie_linalg::l2_sq_half(q, &d[r], bf),
            Rows::Bin(d) => d[r]
                .iter()
                .zip(q)
                .map(|(&b, x)| (b as f32 - x).powi(2))
                .sum(),
        }
    }

    /// Starts loading row `i` into cache (at most `lines` cache lines).
    #[inline(always)]
    pub fn prefetch(&self, i: usize, lines: usize) {
        let r = i * self.dim..(i + 1) * self.dim;
        match self.rows {
            Rows::F32(d) => {
                if let Some(x) = d.get(r) {
                    magpie_linalg::prefetch(x, lines)
                }
            }
            Rows::Half(d, _) => {
                if let Some(x) = d.get(r) {
                    magpie_linalg::prefetch(x, lines)
                }
            }
            Rows::Bin(d) => {
                if let Some(x) = d.get(r) {
                    magpie_linalg::prefetch(x, lines)
                }
            }
        }
    }

    /// Internal score of row `i` against `q` (see [`Metric::score`]).
    #[inline]
    pub fn score(&self, metric: Metric, q: &[f32], i: usize, inv_norm: f32) -> f32 {
        match metric {
            Metric::L2 => -self.l2_sq(q, i),
            Metric::IP | Metric::BM25 => self.dot(q, i),
            Metric::COSINE => self.dot(q, i) * inv_norm,
            Metric::HAMMING | Metric::JACCARD => match self.bin_row(i) {
                Some(x) => -metric.binary_distance(&metric::pack_bytes(q), x),
                None => metric.score(q, &self.row(i), inv_norm),
            },
        }
    }

    /// `1/‖x‖` of every row (0 for a zero row), as COSINE search expects.
    pub fn inv_norms(&self) -> Vec<f32> {
        (0..self.len())
            .map(|i| match self.rows {
                Rows::F32(d) => magpie_linalg::inv_norm(&d[i * self.dim..(i + 1) * self.dim]),
                Rows::Half(..) | Rows::Bin(_) => {
                    let n = self.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
                    if n > 0.0 {
                        1.0 / n
                    } else {
                        0.0
                    }
                }
            })
            .collect()
    }
}

/// Graph and float IVF indexes take f32 or half-precision rows under L2, IP or COSINE;
/// binary vectors have their own indexes ([`FlatIndex`], [`BinIvfIndex`]).
pub(crate) fn check_dense(kind: &str, v: &VectorSlice<'_>, metric: Metric) -> Result<()> {
    if matches!(v.rows, Rows::Bin(_)) || metric.is_binary() {
        return Err(IndexError::Param(format!(
            "{kind} does not index binary vectors; BinaryVector fields take BIN_FLAT or BIN_IVF_FLAT with HAMMING or JACCARD"
        )));
    }
    Ok(())
}

/// Checks a search's inputs against an index built over `n` rows of `dim`, and the
/// cancel flag: the common preamble of every built index's `search`.
pub(crate) fn check_search(
    kind: &str,
    dim: usize,
    n: usize,
    vectors: VectorSlice<'_>,
    query: &[f32],
    p: &SearchParams<'_>,
) -> Result<()> {
    if query.len() != dim || vectors.dim != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: query.len(),
        });
    }
    if vectors.len() != n {
        return Err(IndexError::Corrupt(format!(
            "{kind} built over {n} rows, searched over {}",
            vectors.len()
        )));
    }
    if p.cancel.is_some_and(|c| c.is_cancelled()) {
        return Err(IndexError::Cancelled);
    }
    Ok(())
}

/// What a search asks for.
pub struct SearchParams<'a> {
    /// Number of results wanted.
    pub k: usize,
    /// Offsets allowed (visibility, deletes, partition and filter already folded in).
    /// `None` allows every row.
    pub allow: Option<&'a Bitset>,
    /// Range search: keep only scores `> min_score` (exclusive), if set.
    pub min_score: Option<f32>,
    /// Range search: keep only scores `<= max_score` (inclusive), if set.
    pub max_score: Option<f32>,
    pub cancel: Option<&'a Cancel>,
    /// Graph indexes: size of the dynamic candidate list (at least `k` is used).
    pub ef: Option<usize>,
    /// IVF indexes: number of lists probed.
    pub nprobe: Option<usize>,
    /// Recall@10 target in (0, 1]: the index picks its knob from its build-time curve
    /// (see [`recall`]). An explicit `ef` / `nprobe` wins over a target.
    pub recall: Option<f32>,
    /// IVF_PQ / HNSW_SQ: rescore `refine · k` candidates with the raw vectors.
    pub refine: Option<usize>,
    /// Told which raw rows IVF's `refine` is about to rescore, before it reads any of
    /// them, so rows on disk can be fetched together (see [`RowPrefetch`]). Graph indexes
    /// do not call it (HNSW_SQ's `ef` rescores measured faster without).
    pub prefetch: Option<&'a dyn RowPrefetch>,
}

/// Where the raw rows live is the caller's business (memory, a memory-mapped file on
/// disk); a quantized index only says which rows it will read next. An implementation
/// for rows on disk starts reading them all at once (e.g. `madvise(WILLNEED)`), so the
/// reads overlap instead of faulting in one at a time. A hint: it must not fail, and a
/// row it did not fetch is still read correctly, only slower.
pub trait RowPrefetch: Sync {
    fn will_read(&self, rows: &[u32]);
}

impl<'a> SearchParams<'a> {
    pub fn top_k(k: usize) -> Self {
        Self {
            k,
            allow: None,
            min_score: None,
            max_score: None,
            cancel: None,
            ef: None,
            nprobe: None,
            recall: None,
            refine: None,
            prefetch: None,
        }
    }
}

/// Read side of an index: search over the vectors it was built for.
pub trait VectorIndexRead {
    /// Top-k offsets by descending score. `vectors` are the segment's raw vectors and
    /// `inv_norms` their reciprocal norms (used by COSINE; may be empty otherwise).
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        params: &SearchParams<'_>,
    ) -> Result<Vec<Scored>>;

    /// Bytes held by the index itself, excluding the raw vectors.
    fn memory_bytes(&self) -> usize;

    /// The search knob these parameters resolve to (e.g. `ef` for a recall target), for
    /// reporting. `None` for indexes without a knob.
    fn knob(&self, _p: &SearchParams<'_>) -> Option<Knob> {
        None
    }
}

/// Write side: build an index over a segment's vectors.
pub trait VectorIndexBuild: Sized {
    type Params;
    fn build(
        vectors: VectorSlice<'_>,
        metric: Metric,
        params: &Self::Params,
        cancel: &Cancel,
    ) -> Result<Self>;
}

/// Index types the engine knows, for dispatch. (Variants differ in size; an index is
/// created once per segment and held behind an `Arc`, so boxing would buy nothing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AnyIndex {
    Flat(FlatIndex),
    Hnsw(HnswIndex),
    Ivf(IvfIndex),
    /// BIN_IVF_FLAT over binary vectors.
    BinIvf(BinIvfIndex),
}

impl AnyIndex {
    /// How a search that may return `allowed` of the index's rows (a filter, deletes,
    /// visibility) is carried out; the names `searchInfo` reports. Mirrors the choice
    /// each index's `search` makes.
    pub fn filter_plan(&self, allowed: usize) -> &'static str {
        match self {
            AnyIndex::Flat(_) => "exact",
            AnyIndex::Hnsw(h) => h.filter_plan(allowed),
            AnyIndex::Ivf(i) => i.filter_plan(allowed),
            AnyIndex::BinIvf(i) => i.filter_plan(allowed),
        }
    }

    /// Rows and dimension a file-backed index covers (`None` for FLAT, which has no
    /// state). Loading checks this against the segment before any search runs.
    pub fn shape(&self) -> Option<(usize, usize)> {
        match self {
            AnyIndex::Flat(_) => None,
            AnyIndex::Hnsw(h) => Some(h.shape()),
            AnyIndex::Ivf(i) => Some(i.shape()),
            AnyIndex::BinIvf(i) => Some(i.shape()),
        }
    }
}

impl VectorIndexRead for AnyIndex {
    fn search(
        &self,
        vectors: VectorSlice<'_>,
        inv_norms: &[f32],
        query: &[f32],
        params: &SearchParams<'_>,
    ) -> Result<Vec<Scored>> {
        match self {
            AnyIndex::Flat(f) => f.search(vectors, inv_norms, query, params),
            AnyIndex::Hnsw(h) => h.search(vectors, inv_norms, query, params),
            AnyIndex::Ivf(i) => i.search(vectors, inv_norms, query, params),
            AnyIndex::BinIvf(i) => i.search(vectors, inv_norms, query, params),
        }
    }
    fn memory_bytes(&self) -> usize {
        match self {
            AnyIndex::Flat(f) => f.memory_bytes(),
            AnyIndex::Hnsw(h) => h.memory_bytes(),
            AnyIndex::Ivf(i) => i.memory_bytes(),
            AnyIndex::BinIvf(i) => i.memory_bytes(),
        }
    }
    fn knob(&self, p: &SearchParams<'_>) -> Option<Knob> {
        match self {
            AnyIndex::Flat(f) => f.knob(p),
            AnyIndex::Hnsw(h) => h.knob(p),
            AnyIndex::Ivf(i) => i.knob(p),
            AnyIndex::BinIvf(i) => i.knob(p),
        }
    }
}
