//! Distance kernels for Magpie.
//!
//! This crate is the only place in the workspace that contains SIMD `unsafe`. Each
//! instruction set lives in its own file (`x86_avx2.rs`), `scalar.rs` is the portable
//! reference, and the functions exported here are the one safe dispatcher: the best
//! implementation the CPU supports is picked once, at first use, by runtime feature
//! detection, and cached in a function pointer.
//!
//! All kernels operate on `f32` slices of equal length; a length mismatch is a caller bug
//! and panics (it is checked once, outside the hot loop).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use std::sync::OnceLock;

type Kernel = fn(&[f32], &[f32]) -> f32;
type RowKernel = fn(&DepthwiseRow, &mut [f32], &[f32], &[Option<&[f32]>], &[f32]);

struct Kernels {
    dot: Kernel,
    l2_sq: Kernel,
    dot_many: ManyKernel,
    l2_sq_many: ManyKernel,
    sq8_l2: fn(&[f32], &[f32], &[u8]) -> f32,
    sq8_dot: fn(&[f32], &[u8]) -> f32,
    depthwise_row: RowKernel,
    dot_half: HalfKernel,
    l2_sq_half: HalfKernel,
    and_or_counts: BitKernel,
    hamming: fn(&[u8], &[u8]) -> u32,
    name: &'static str,
}

type HalfKernel = fn(&[f32], &[u16], bool) -> f32;
/// Several queries (row-major) against one row, one value per query.
type ManyKernel = fn(&[f32], &[f32], &mut [f32]);
/// (common, either) bit counts of two bit strings: Jaccard's numerator and denominator.
type BitKernel = fn(&[u8], &[u8]) -> (u32, u32);

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("MAGPIE_FORCE_SCALAR").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                let f16c = is_x86_feature_detected!("f16c");
                let popcnt = is_x86_feature_detected!("popcnt");
                let avx512 = is_x86_feature_detected!("avx512f");
                // The f32 and SQ8 distance kernels on zmm registers where AVX-512F/BW/VL
                // are present, unless `MAGPIE_NO_AVX512` asks for the AVX2 ones (both
                // measured side by side: docs/BENCHMARKS.md, "AVX-512 distance kernels").
                let zmm = x86_avx512::distance_kernels_available()
                    && std::env::var_os("MAGPIE_NO_AVX512").is_none();
                return Kernels {
                    dot: if zmm {
                        x86_avx512::dot_checked
                    } else {
                        x86_avx2::dot_checked
                    },
                    l2_sq: if zmm {
                        x86_avx512::l2_sq_checked
                    } else {
                        x86_avx2::l2_sq_checked
                    },
                    dot_many: if zmm {
                        x86_avx512::dot_many_checked
                    } else {
                        dot_many_each
                    },
                    l2_sq_many: if zmm {
                        x86_avx512::l2_sq_many_checked
                    } else {
                        l2_sq_many_each
                    },
                    sq8_l2: if zmm {
                        x86_avx512::sq8_l2_checked
                    } else {
                        x86_avx2::sq8_l2_checked
                    },
                    sq8_dot: if zmm {
                        x86_avx512::sq8_dot_checked
                    } else {
                        x86_avx2::sq8_dot_checked
                    },
                    depthwise_row: if avx512 {
                        x86_avx512::depthwise_row_checked
                    } else {
                        x86_avx2::depthwise_row_checked
                    },
                    dot_half: if f16c {
                        x86_avx2::dot_half_checked
                    } else {
                        scalar::dot_half
                    },
                    l2_sq_half: if f16c {
                        x86_avx2::l2_sq_half_checked
                    } else {
                        scalar::l2_sq_half
                    },
                    and_or_counts: if popcnt {
                        x86_avx2::and_or_counts_checked
                    } else {
                        scalar::and_or_counts
                    },
                    hamming: if popcnt {
                        x86_avx2::hamming_checked
                    } else {
                        scalar::hamming
                    },
                    name: if zmm {
                        "avx512"
                    } else if avx512 {
                        "avx2+fma+avx512f"
                    } else {
                        "avx2+fma"
                    },
                };
            }
        }
        Kernels {
            dot: scalar::dot,
            l2_sq: scalar::l2_sq,
            dot_many: dot_many_each,
            l2_sq_many: l2_sq_many_each,
            sq8_l2: scalar::sq8_l2,
            sq8_dot: scalar::sq8_dot,
            depthwise_row: scalar::depthwise_row,
            dot_half: scalar::dot_half,
            l2_sq_half: scalar::l2_sq_half,
            and_or_counts: scalar::and_or_counts,
            hamming: scalar::hamming,
            name: "scalar",
        }
    })
}

/// Name of the kernel set in use: "avx512" (distances on zmm registers), "avx2+fma+avx512f"
/// (AVX2 distances, AVX-512 convolutions), "avx2+fma" or "scalar"; reported
/// by `magpie bench` and the server's `/metrics`.
pub fn active_isa() -> &'static str {
    kernels().name
}

/// Inner product `Σ aᵢ·bᵢ`.
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    (kernels().dot)(a, b)
}

/// Squared Euclidean distance `Σ (aᵢ-bᵢ)²` (no square root, as Milvus and FAISS report L2).
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "l2_sq: length mismatch");
    (kernels().l2_sq)(a, b)
}

/// [`dot`] of each query in `qs` (row-major, `x.len()` values each) with `x`:
/// `out[j] = dot(&qs[j * d..(j + 1) * d], x)`, bit for bit, for the `out.len()` queries.
/// Where the CPU has AVX-512 it reads `x` once per four queries (an exact scan of many
/// queries: `FlatIndex::search_batch`).
///
/// # Panics
/// If `qs.len() != x.len() * out.len()`.
#[inline]
pub fn dot_many(qs: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(qs.len(), x.len() * out.len(), "dot_many: length mismatch");
    (kernels().dot_many)(qs, x, out)
}

/// [`l2_sq`] of each query in `qs` with `x`, as [`dot_many`] does [`dot`].
///
/// # Panics
/// If `qs.len() != x.len() * out.len()`.
#[inline]
pub fn l2_sq_many(qs: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(qs.len(), x.len() * out.len(), "l2_sq_many: length mismatch");
    (kernels().l2_sq_many)(qs, x, out)
}

/// [`dot_many`] one query at a time (where no multi-query kernel exists).
fn dot_many_each(qs: &[f32], x: &[f32], out: &mut [f32]) {
    let k = kernels().dot;
    if x.is_empty() {
        return out.fill(k(&[], &[]));
    }
    for (o, q) in out.iter_mut().zip(qs.chunks_exact(x.len())) {
        *o = k(q, x);
    }
}

/// [`l2_sq_many`] one query at a time.
fn l2_sq_many_each(qs: &[f32], x: &[f32], out: &mut [f32]) {
    let k = kernels().l2_sq;
    if x.is_empty() {
        return out.fill(k(&[], &[]));
    }
    for (o, q) in out.iter_mut().zip(qs.chunks_exact(x.len())) {
        *o = k(q, x);
    }
}

/// SQ8 squared distance `Σ (aᵢ − cᵢ·sᵢ)²` between a query already shifted by the
/// per-dimension minimum (`a`) and 8-bit codes `c` with per-dimension steps `s`.
///
/// # Panics
/// If the three lengths differ.
#[inline]
pub fn sq8_l2(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    assert!(
        a.len() == s.len() && a.len() == c.len(),
        "sq8_l2: length mismatch"
    );
    (kernels().sq8_l2)(a, s, c)
}

/// SQ8 code inner product `Σ aᵢ·cᵢ` (steps folded into `a` by the caller).
///
/// # Panics
/// If `a.len() != c.len()`.
#[inline]
pub fn sq8_dot(a: &[f32], c: &[u8]) -> f32 {
    assert_eq!(a.len(), c.len(), "sq8_dot: length mismatch");
    (kernels().sq8_dot)(a, c)
}

/// Product-quantizer asymmetric distance: the sum over sub-spaces `j` of
/// `table[j·256 + codes[j]]`. Table lookups do not vectorise profitably on AVX2, so
/// this is the portable kernel on every CPU.
///
/// # Panics
/// If `table` is shorter than `codes.len() · 256`.
#[inline]
pub fn pq_adc(table: &[f32], codes: &[u8]) -> f32 {
    assert!(table.len() >= codes.len() * 256, "pq_adc: table too short");
    scalar::pq_adc(table, codes)
}

/// Inner product of an f32 query with a half-precision row: binary16 (IEEE half) bits,
/// or bfloat16 bits when `bf`, widened exactly to f32 on the fly (F16C where present).
///
/// # Panics
/// If `a.len() != x.len()`.
#[inline]
pub fn dot_half(a: &[f32], x: &[u16], bf: bool) -> f32 {
    assert_eq!(a.len(), x.len(), "dot_half: length mismatch");
    (kernels().dot_half)(a, x, bf)
}

/// Squared Euclidean distance between an f32 query and a half-precision row (see
/// [`dot_half`]).
///
/// # Panics
/// If `a.len() != x.len()`.
#[inline]
pub fn l2_sq_half(a: &[f32], x: &[u16], bf: bool) -> f32 {
    assert_eq!(a.len(), x.len(), "l2_sq_half: length mismatch");
    (kernels().l2_sq_half)(a, x, bf)
}

/// A half-precision value (binary16, or bfloat16 when `bf`) widened to f32; exact.
#[inline]
pub fn half_to_f32(h: u16, bf: bool) -> f32 {
    if bf {
        scalar::bf16_to_f32(h)
    } else {
        scalar::f16_to_f32(h)
    }
}

/// An f32 rounded to the nearest half-precision value (ties to even): binary16, or
/// bfloat16 when `bf`. `None` when the value is finite but outside the type's range (it
/// would become infinite) or not finite.
pub fn f32_to_half(x: f32, bf: bool) -> Option<u16> {
    if !x.is_finite() {
        return None;
    }
    let h = if bf {
        half::bf16::from_f32(x).to_bits()
    } else {
        half::f16::from_f32(x).to_bits()
    };
    half_to_f32(h, bf).is_finite().then_some(h)
}

/// Hamming distance between two bit strings of equal byte length: the number of bits
/// that differ.
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len(), "hamming: length mismatch");
    (kernels().hamming)(a, b)
}

/// Jaccard distance `1 − |a ∧ b| / |a ∨ b|` between two bit strings of equal byte
/// length; 0 when both are empty (no bit set), as for equal sets.
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
pub fn jaccard(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len(), "jaccard: length mismatch");
    let (and, or) = (kernels().and_or_counts)(a, b);
    if or == 0 {
        0.0
    } else {
        1.0 - and as f32 / or as f32
    }
}

/// Hints the CPU to start loading the first cache lines of `data` (at most `lines`
/// 64-byte lines). A no-op where no prefetch instruction is available.
#[inline(always)]
pub fn prefetch<T>(data: &[T], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let p = data.as_ptr() as *const u8;
        let mut off = 0;
        let mut n = 0;
        while off < bytes && n < lines {
            x86_avx2::prefetch(p.wrapping_add(off));
            off += 64;
            n += 1;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (data, lines);
    }
}

/// Euclidean norm `‖a‖`.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// `1/‖a‖`, or 0 for a zero vector (the per-row factor COSINE search multiplies by).
#[inline]
pub fn inv_norm(a: &[f32]) -> f32 {
    let n = norm(a);
    if n > 0.0 {
        1.0 / n
    } else {
        0.0
    }
}

/// Scales `a` to unit length in place; a zero vector is left unchanged. Returns the
/// original norm.
pub fn normalize(a: &mut [f32]) -> f32 {
    let n = norm(a);
    if n > 0.0 {
        let inv = 1.0 / n;
        a.iter_mut().for_each(|x| *x *= inv);
    }
    n
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let na = norm(a);
    let nb = norm(b);
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na * nb)
    }
}

/// The shape of one output row of a depthwise convolution in channels-last layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthwiseRow {
    /// Channels (each convolved with its own k×k kernel).
    pub c: usize,
    /// Kernel side.
    pub k: usize,
    pub stride: usize,
    /// Input columns before the first one (zero padding on the left).
    pub pad_left: usize,
    /// Input row width in pixels.
    pub in_w: usize,
    /// Output row width in pixels.
    pub out_w: usize,
    /// Output clamp (ReLU6: 0 and 6; ±∞ for none).
    pub lo: f32,
    pub hi: f32,
}

/// One output row of a depthwise convolution in channels-last layout:
/// `out[ox][ch] = clamp(bias[ch] + Σ_{ky,kx} rows[ky][ix][ch]·w[ky·k+kx][ch], lo, hi)`
/// with `ix = ox·stride + kx − pad_left`, where a tap outside `0..in_w` or on a `None`
/// row (padding above or below) counts as zero. `rows` are the `k` input rows under the
/// output row (`in_w × c` each), `w` is tap-major (`k·k × c`), `out` is `out_w × c`.
///
/// The SIMD kernel keeps one kernel row's weights in registers while it sweeps the
/// output row, so each multiply-add loads one input value, not an input and a weight.
///
/// # Panics
/// If `rows` does not hold `k` rows or a slice is shorter than its shape requires.
pub fn depthwise_row(
    g: &DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    assert_eq!(
        rows.len(),
        g.k,
        "depthwise_row: {} rows for a {}×{} kernel",
        rows.len(),
        g.k,
        g.k
    );
    assert!(
        depthwise_shape_ok(g, out, bias, rows, w),
        "depthwise_row: a slice is shorter than its shape {g:?}"
    );
    (kernels().depthwise_row)(g, out, bias, rows, w)
}

/// The shape contract of [`depthwise_row`] that its SIMD kernels rely on: `k` rows, and
/// no slice shorter than its shape. Each safe kernel entry point asserts it again.
pub(crate) fn depthwise_shape_ok(
    g: &DepthwiseRow,
    out: &[f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) -> bool {
    rows.len() == g.k
        && out.len() >= g.out_w * g.c
        && bias.len() >= g.c
        && w.len() >= g.k * g.k * g.c
        && rows.iter().flatten().all(|r| r.len() >= g.in_w * g.c)
}

/// Row-major matrix product `c = a · b` (or `c += a · b` with `accumulate`), where `a` is
/// `m × k`, `b` is `k × n` and `c` is `m × n`, on the calling thread only (callers
/// parallelise across independent work, e.g. one image per thread, which measured far
/// better than splitting each product on a small machine). Uses the `gemm` crate's
/// runtime-dispatched micro-kernels. Without `accumulate`, the previous contents of `c`
/// are never read (a recycled buffer holding anything, NaN included, is fine).
///
/// # Panics
/// If a slice is shorter than its dimensions require.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert!(a.len() >= m * k, "matmul: lhs has {} < {m}×{k}", a.len());
    assert!(b.len() >= k * n, "matmul: rhs has {} < {k}×{n}", b.len());
    assert!(c.len() >= m * n, "matmul: dst has {} < {m}×{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above keep every access of the m×k, k×n and m×n row-major
    // views (column stride 1, row strides k, n, n) inside the three slices, and `c` is
    // borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Whether [`Conv1x1`] runs the AVX-512F kernel (else [`matmul`] and one pass for the
/// epilogue). Decided once, like the other kernels; `MAGPIE_FORCE_SCALAR` turns it off.
fn conv1x1_avx512() -> bool {
    static A: OnceLock<bool> = OnceLock::new();
    *A.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("MAGPIE_FORCE_SCALAR").is_none()
                && std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A 1×1 convolution (channels-last), or any product of many rows with one fixed
/// weight matrix followed by a bias, a clamp and an optional residual:
///
/// `out[i][j] = clamp(bias[j] + Σₖ x[i][k]·w[k][j], lo, hi) + residual[i][j]`
///
/// The weights are packed once, at construction, into the layout the kernel streams:
/// panels of 32 output columns, each holding all `k` rows, zero-padded to 16 or 32
/// columns and 64-byte aligned. The AVX-512F kernel applies the bias, the clamp and the
/// residual to its accumulators before it stores them, so the output is written once
/// and never re-read. Without AVX-512F the weights stay row-major and [`matmul`] runs,
/// followed by one pass for the epilogue. Results match [`scalar::conv1x1`] to rounding
/// (the order of the additions differs).
pub struct Conv1x1 {
    k: usize,
    n: usize,
    /// Panel layout from `off` on (AVX-512F), else the row-major `k × n` weights.
    w: Vec<f32>,
    off: usize,
    /// Bias padded with zeros to whole panels.
    bias: Vec<f32>,
    panels: bool,
}

impl Conv1x1 {
    /// Packs `w` (row-major `k × n`: input channel by output channel) and `bias` (`n`).
    ///
    /// # Panics
    /// If `w` or `bias` is shorter than its shape.
    pub fn new(w: &[f32], bias: &[f32], k: usize, n: usize) -> Self {
        assert!(
            w.len() >= k * n,
            "Conv1x1: weights have {} < {k}×{n}",
            w.len()
        );
        assert!(bias.len() >= n, "Conv1x1: bias has {} < {n}", bias.len());
        let mut bias = bias[..n].to_vec();
        if !conv1x1_avx512() || n == 0 {
            return Self {
                k,
                n,
                w: w[..k * n].to_vec(),
                off: 0,
                bias,
                panels: false,
            };
        }
        #[cfg(target_arch = "x86_64")]
        {
            use x86_avx512::{panel_offset, panel_width, NR};
            let panels = n.div_ceil(NR);
            bias.resize(panels * NR, 0.0);
            let len = panel_offset(n, k, panels);
            // 16 spare floats so that the packed data can start on a 64-byte boundary.
            let mut data = vec![0f32; len + 16];
            let off = (64 - data.as_ptr() as usize % 64) % 64 / 4;
            for q in 0..panels {
                let (j0, wq) = (q * NR, panel_width(n, q));
                let cols = (n - j0).min(wq);
                let panel = &mut data[off + panel_offset(n, k, q)..][..k * wq];
                for (kk, dst) in panel.chunks_exact_mut(wq).enumerate() {
                    dst[..cols].copy_from_slice(&w[kk * n + j0..][..cols]);
                }
            }
            Self {
                k,
                n,
                w: data,
                off,
                bias,
                panels: true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("AVX-512F is only detected on x86_64")
    }

    /// Input channels.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Runs the convolution on `m` rows: `x` is `m × k`, `out` (and `residual`) `m × n`,
    /// all row-major. The previous contents of `out` are never read. `lo`/`hi` are the
    /// clamp (ReLU6: 0 and 6; ±∞ for none); the residual is added after the clamp.
    ///
    /// # Panics
    /// If a slice is shorter than its shape.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        lo: f32,
        hi: f32,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (k, n) = (self.k, self.n);
        assert!(lo <= hi, "Conv1x1: clamp {lo}..{hi} is empty or NaN");
        assert!(x.len() >= m * k, "Conv1x1: input has {} < {m}×{k}", x.len());
        assert!(
            out.len() >= m * n,
            "Conv1x1: output has {} < {m}×{n}",
            out.len()
        );
        assert!(
            residual.is_none_or(|r| r.len() >= m * n),
            "Conv1x1: residual shorter than {m}×{n}"
        );
        #[cfg(target_arch = "x86_64")]
        if self.panels {
            let w = &self.w[self.off..];
            return x86_avx512::conv1x1_checked(x, m, k, n, w, &self.bias, lo, hi, residual, out);
        }
        matmul(x, &self.w, out, m, k, n, false);
        let out = &mut out[..m * n];
        for row in out.chunks_exact_mut(n.max(1)) {
            for (o, b) in row.iter_mut().zip(&self.bias) {
                *o = (*o + b).clamp(lo, hi);
            }
        }
        if let Some(r) = residual {
            out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ref_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }
    fn ref_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum()
    }
    fn close(got: f32, want: f64, scale: f64) -> bool {
        (got as f64 - want).abs() <= 1e-4 * scale.max(1.0)
    }
    fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                prop::collection::vec(-10.0f32..10.0, n),
                prop::collection::vec(-10.0f32..10.0, n),
            )
        })
    }

    proptest! {
        #[test]
        fn dispatched_matches_f64_reference((a, b) in pair()) {
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            prop_assert!(close(dot(&a, &b), ref_dot(&a, &b), scale));
            let scale2: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
            prop_assert!(close(l2_sq(&a, &b), ref_l2(&a, &b), scale2));
        }

        #[test]
        fn scalar_matches_f64_reference((a, b) in pair()) {
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            prop_assert!(close(scalar::dot(&a, &b), ref_dot(&a, &b), scale));
            let scale2: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
            prop_assert!(close(scalar::l2_sq(&a, &b), ref_l2(&a, &b), scale2));
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #[test]
        fn avx2_matches_scalar((a, b) in pair()) {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
                let s = scalar::dot(&a, &b) as f64;
                prop_assert!(close(x86_avx2::dot_checked(&a, &b), s, scale));
                let scale2: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
                let s2 = scalar::l2_sq(&a, &b) as f64;
                prop_assert!(close(x86_avx2::l2_sq_checked(&a, &b), s2, scale2));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #[test]
        fn avx512_matches_scalar((a, b) in pair(), (x, s, c) in sq8_triple()) {
            // No AVX-512 here: nothing to compare (the dispatcher never picks them).
            if x86_avx512::distance_kernels_available() {
                let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
                prop_assert!(close(x86_avx512::dot_checked(&a, &b), ref_dot(&a, &b), scale));
                let scale2: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
                prop_assert!(close(x86_avx512::l2_sq_checked(&a, &b), ref_l2(&a, &b), scale2));
                let r = scalar::sq8_l2(&x, &s, &c) as f64;
                prop_assert!(close(x86_avx512::sq8_l2_checked(&x, &s, &c), r, r));
                let scale: f64 = (0..x.len()).map(|i| (x[i] as f64 * c[i] as f64).abs()).sum();
                let r = scalar::sq8_dot(&x, &c) as f64;
                prop_assert!(close(x86_avx512::sq8_dot_checked(&x, &c), r, scale));
            }
        }
    }

    proptest! {
        /// Several queries against one row give, bit for bit, what the one-query kernels
        /// give per query: every length (each tail) and group size (four at a time, and
        /// the queries left over).
        #[test]
        fn many_query_kernels_equal_one_query_kernels(
            (n, nq, seed) in (0usize..300, 0usize..11, any::<u64>()),
        ) {
            let v = |i: usize| ((i as u64).wrapping_mul(2654435761) ^ seed) as u32 as f32 / u32::MAX as f32 * 20.0 - 10.0;
            let qs: Vec<f32> = (0..n * nq).map(v).collect();
            let x: Vec<f32> = (0..n).map(|i| v(i + 7 * n * nq + 1)).collect();
            let mut got = vec![f32::NAN; nq];
            let per = |f: fn(&[f32], &[f32]) -> f32| -> Vec<u32> {
                (0..nq).map(|j| f(&qs[j * n..(j + 1) * n], &x).to_bits()).collect()
            };
            let bits = |o: &[f32]| o.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            dot_many(&qs, &x, &mut got);
            prop_assert_eq!(bits(&got), per(dot));
            l2_sq_many(&qs, &x, &mut got);
            prop_assert_eq!(bits(&got), per(l2_sq));
            #[cfg(target_arch = "x86_64")]
            if x86_avx512::distance_kernels_available() {
                x86_avx512::dot_many_checked(&qs, &x, &mut got);
                prop_assert_eq!(bits(&got), per(x86_avx512::dot_checked));
                x86_avx512::l2_sq_many_checked(&qs, &x, &mut got);
                prop_assert_eq!(bits(&got), per(x86_avx512::l2_sq_checked));
            }
        }
    }

    /// Every length from 0 to 200: each tail of the 64-, 32- and 16-lane loops and of the
    /// masked last load.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tails_of_every_length() {
        if !x86_avx512::distance_kernels_available() {
            eprintln!("avx512_tails_of_every_length: this CPU has no AVX-512F/BW/VL; the AVX-512 kernels are not run here");
            return;
        }
        for n in 0..=200usize {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 2.0).collect();
            let s: Vec<f32> = (0..n).map(|i| 0.01 + (i % 7) as f32 * 0.003).collect();
            let c: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let l2 = ref_l2(&a, &b);
            assert!(close(x86_avx512::l2_sq_checked(&a, &b), l2, l2), "l2 n={n}");
            let d = ref_dot(&a, &b);
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            assert!(
                close(x86_avx512::dot_checked(&a, &b), d, scale),
                "dot n={n}"
            );
            let want: f64 = (0..n)
                .map(|i| (a[i] as f64 - c[i] as f64 * s[i] as f64).powi(2))
                .sum();
            assert!(
                close(x86_avx512::sq8_l2_checked(&a, &s, &c), want, want),
                "sq8_l2 n={n}"
            );
            let want: f64 = (0..n).map(|i| a[i] as f64 * c[i] as f64).sum();
            let scale: f64 = (0..n).map(|i| (a[i] as f64 * c[i] as f64).abs()).sum();
            assert!(
                close(x86_avx512::sq8_dot_checked(&a, &c), want, scale),
                "sq8_dot n={n}"
            );
        }
    }

    fn sq8_triple() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Vec<u8>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                prop::collection::vec(-10.0f32..10.0, n),
                prop::collection::vec(0.0f32..0.1, n),
                prop::collection::vec(any::<u8>(), n),
            )
        })
    }

    proptest! {
        #[test]
        fn sq8_kernels_match_f64_reference((a, s, c) in sq8_triple()) {
            let want_l2: f64 = (0..a.len())
                .map(|i| (a[i] as f64 - c[i] as f64 * s[i] as f64).powi(2))
                .sum();
            let want_dot: f64 = (0..a.len()).map(|i| a[i] as f64 * c[i] as f64).sum();
            let scale_dot: f64 = (0..a.len()).map(|i| (a[i] as f64 * c[i] as f64).abs()).sum();
            prop_assert!(close(sq8_l2(&a, &s, &c), want_l2, want_l2));
            prop_assert!(close(scalar::sq8_l2(&a, &s, &c), want_l2, want_l2));
            prop_assert!(close(sq8_dot(&a, &c), want_dot, scale_dot));
            prop_assert!(close(scalar::sq8_dot(&a, &c), want_dot, scale_dot));
        }

        #[test]
        fn pq_adc_is_a_sum_of_lookups(codes in prop::collection::vec(any::<u8>(), 0..40)) {
            let table: Vec<f32> = (0..codes.len() * 256).map(|i| (i % 97) as f32 * 0.5).collect();
            let want: f64 = codes.iter().enumerate().map(|(j, &c)| table[j * 256 + c as usize] as f64).sum();
            prop_assert!(close(pq_adc(&table, &codes), want, want));
            prefetch(&table, 4);
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #[test]
        fn avx2_sq8_matches_scalar((a, s, c) in sq8_triple()) {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let r = scalar::sq8_l2(&a, &s, &c) as f64;
                prop_assert!(close(x86_avx2::sq8_l2_checked(&a, &s, &c), r, r));
                let scale: f64 = (0..a.len()).map(|i| (a[i] as f64 * c[i] as f64).abs()).sum();
                let r = scalar::sq8_dot(&a, &c) as f64;
                prop_assert!(close(x86_avx2::sq8_dot_checked(&a, &c), r, scale));
            }
        }
    }

    fn half_pair() -> impl Strategy<Value = (Vec<f32>, Vec<u16>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                prop::collection::vec(-10.0f32..10.0, n),
                prop::collection::vec(-10.0f32..10.0, n).prop_map(|v| {
                    v.iter()
                        .map(|&x| half::f16::from_f32(x).to_bits())
                        .collect()
                }),
            )
        })
    }

    proptest! {
        #[test]
        fn half_kernels_match_f64_reference((a, x) in half_pair(), bf in any::<bool>()) {
            // The same bits read as binary16 or as bfloat16: both are valid inputs.
            let wide: Vec<f32> = x.iter().map(|&h| half_to_f32(h, bf)).collect();
            if wide.iter().all(|w| w.is_finite() && w.abs() < 1e6) {
                let scale: f64 = a.iter().zip(&wide).map(|(p, q)| (*p as f64 * *q as f64).abs()).sum();
                prop_assert!(close(dot_half(&a, &x, bf), ref_dot(&a, &wide), scale));
                prop_assert!(close(scalar::dot_half(&a, &x, bf), ref_dot(&a, &wide), scale));
                let scale2: f64 = a.iter().zip(&wide).map(|(p, q)| (*p as f64 - *q as f64).powi(2)).sum();
                prop_assert!(close(l2_sq_half(&a, &x, bf), ref_l2(&a, &wide), scale2));
                prop_assert!(close(scalar::l2_sq_half(&a, &x, bf), ref_l2(&a, &wide), scale2));
            }
        }

        #[test]
        fn half_rounding_is_nearest(x in -60000.0f32..60000.0, bf in any::<bool>()) {
            let h = f32_to_half(x, bf).unwrap();
            let back = half_to_f32(h, bf);
            // Within half a unit in the last place of the narrow type.
            let ulp = if bf { back.abs() / 128.0 } else { (back.abs() / 1024.0).max(6e-8) };
            prop_assert!((back - x).abs() <= ulp, "{x} -> {back}");
        }

        #[test]
        fn bit_kernels_match_per_bit_counts(
            (a, b) in (0usize..70).prop_flat_map(|n| (
                prop::collection::vec(any::<u8>(), n),
                prop::collection::vec(any::<u8>(), n),
            ))
        ) {
            let bits = |v: &[u8], i: usize| v[i / 8] >> (i % 8) & 1 == 1;
            let n = a.len() * 8;
            let diff = (0..n).filter(|&i| bits(&a, i) != bits(&b, i)).count() as u32;
            let and = (0..n).filter(|&i| bits(&a, i) && bits(&b, i)).count() as f32;
            let or = (0..n).filter(|&i| bits(&a, i) || bits(&b, i)).count() as f32;
            prop_assert_eq!(hamming(&a, &b), diff);
            prop_assert_eq!(scalar::and_or_counts(&a, &b), (and as u32, or as u32));
            prop_assert_eq!(scalar::hamming(&a, &b), diff);
            let want = if or == 0.0 { 0.0 } else { 1.0 - and / or };
            prop_assert!((jaccard(&a, &b) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn half_range_is_refused() {
        assert_eq!(f32_to_half(70000.0, false), None);
        assert_eq!(f32_to_half(f32::NAN, true), None);
        assert!(f32_to_half(70000.0, true).is_some());
        assert_eq!(half_to_f32(f32_to_half(1.5, false).unwrap(), false), 1.5);
        assert_eq!(half_to_f32(f32_to_half(-2.0, true).unwrap(), true), -2.0);
    }

    #[test]
    fn normalize_and_cosine() {
        let mut v = vec![3.0, 4.0];
        assert_eq!(normalize(&mut v), 5.0);
        assert!((norm(&v) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        assert_eq!(normalize(&mut z), 0.0);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn mismatch_panics() {
        dot(&[1.0], &[1.0, 2.0]);
    }

    proptest! {
        #[test]
        fn matmul_matches_naive(m in 0usize..20, k in 0usize..40, n in 0usize..20, acc in any::<bool>(), seed in any::<u64>()) {
            let mut x = seed | 1;
            let mut r = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 2000) as f32 / 1000.0 - 1.0 };
            let a: Vec<f32> = (0..m * k).map(|_| r()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| r()).collect();
            // Without accumulate the destination must not be read: start it at NaN.
            let init: Vec<f32> = (0..m * n).map(|_| if acc { r() } else { f32::NAN }).collect();
            let mut c = init.clone();
            matmul(&a, &b, &mut c, m, k, n, acc);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| a[i * k + t] as f64 * b[t * n + j] as f64).sum::<f64>()
                        + if acc { init[i * n + j] as f64 } else { 0.0 };
                    prop_assert!((c[i * n + j] as f64 - want).abs() < 1e-4 * (k as f64).max(1.0));
                }
            }
        }
    }

    proptest! {
        /// The scalar row kernel against a direct convolution (f64), and the SIMD one
        /// against scalar, over odd widths, strides, paddings and channel counts (tails).
        #[test]
        fn depthwise_row_simd_matches_scalar(
            c in 1usize..80, k in prop::sample::select(vec![1usize, 2, 3, 5, 7]),
            stride in 1usize..3, in_w in 1usize..20, pad in 0usize..4, skip in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let pad_left = pad.min(k - 1);
            let out_w = (in_w + 2 * pad_left).saturating_sub(k) / stride + 1;
            let g = DepthwiseRow { c, k, stride, pad_left, in_w, out_w, lo: 0.0, hi: 6.0 };
            let mut x = seed | 1;
            let mut r = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 2000) as f32 / 500.0 - 2.0 };
            let bias: Vec<f32> = (0..c).map(|_| r()).collect();
            let w: Vec<f32> = (0..k * k * c).map(|_| r()).collect();
            let data: Vec<Vec<f32>> = (0..k).map(|_| (0..in_w * c).map(|_| r()).collect()).collect();
            // Some rows are padding (bit ky of `skip`).
            let rows: Vec<Option<&[f32]>> = data.iter().enumerate()
                .map(|(ky, d)| (skip >> ky & 1 == 0).then_some(d.as_slice())).collect();
            let mut want = vec![0f32; out_w * c];
            scalar::depthwise_row(&g, &mut want, &bias, &rows, &w);
            for ox in 0..out_w {
                for ch in 0..c {
                    let mut acc = bias[ch] as f64;
                    for (ky, row) in rows.iter().enumerate() {
                        let Some(row) = row else { continue };
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad_left as isize;
                            if ix >= 0 && (ix as usize) < in_w {
                                acc += row[ix as usize * c + ch] as f64 * w[(ky * k + kx) * c + ch] as f64;
                            }
                        }
                    }
                    prop_assert!((want[ox * c + ch] as f64 - acc.clamp(0.0, 6.0)).abs() < 1e-4);
                }
            }
            let mut got = vec![f32::NAN; out_w * c];
            depthwise_row(&g, &mut got, &bias, &rows, &w);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut simd = vec![f32::NAN; out_w * c];
                x86_avx2::depthwise_row_checked(&g, &mut simd, &bias, &rows, &w);
                for i in 0..simd.len() { prop_assert!((simd[i] - want[i]).abs() < 1e-4, "{i}: {} vs {}", simd[i], want[i]); }
            }
            for i in 0..got.len() { prop_assert!((got[i] - want[i]).abs() < 1e-4); }
        }

        #[test]
        fn conv1x1_matches_the_reference(
            m in 0usize..40, k in 0usize..600, n in 1usize..80,
            act in any::<bool>(), res in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let mut r = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 2000) as f32 / 500.0 - 2.0 };
            let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| r()).collect();
            let bias: Vec<f32> = (0..n).map(|_| r()).collect();
            let residual: Vec<f32> = (0..m * n).map(|_| r()).collect();
            let residual = res.then_some(residual.as_slice());
            let (lo, hi) = if act { (0.0, 6.0) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let mut want = vec![0f32; m * n];
            scalar::conv1x1(&x, m, k, n, &w, &bias, lo, hi, residual, &mut want);
            // The scalar reference against an f64 sum, with a bound on f32 rounding.
            for i in 0..m {
                for j in 0..n {
                    let (mut acc, mut mag) = (bias[j] as f64, bias[j].abs() as f64);
                    for kk in 0..k {
                        let t = x[i * k + kk] as f64 * w[kk * n + j] as f64;
                        acc += t;
                        mag += t.abs();
                    }
                    let acc = acc.clamp(lo as f64, hi as f64) + residual.map_or(0.0, |r| r[i * n + j] as f64);
                    prop_assert!((want[i * n + j] as f64 - acc).abs() <= 1e-5 * (mag + 1.0));
                }
            }
            let conv = Conv1x1::new(&w, &bias, k, n);
            prop_assert_eq!((conv.k(), conv.n()), (k, n));
            // NaN in the output buffer: the kernel must not read it.
            let mut got = vec![f32::NAN; m * n + 3];
            conv.forward(&x, m, lo, hi, residual, &mut got);
            for i in 0..m * n {
                let tol = 1e-5 * (k as f32 * 4.0 + 2.0);
                prop_assert!((got[i] - want[i]).abs() <= tol, "{i}: {} vs {}", got[i], want[i]);
            }
            prop_assert!(got[m * n..].iter().all(|v| v.is_nan()), "wrote past m×n");
        }
    }
}
