//! Portable reference kernels. Written with four independent accumulators so the
//! compiler can vectorise them even without explicit SIMD; they are also the fallback on
//! CPUs without AVX2/FMA and the oracle for the SIMD tests.

/// Inner product.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            *slot += a[i * 4 + j] * b[i * 4 + j];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            let d = a[i * 4 + j] - b[i * 4 + j];
            *slot += d * d;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        let d = a[i] - b[i];
        s += d * d;
    }
    s
}

/// SQ8 squared distance: `Σ (aᵢ − cᵢ·sᵢ)²`, where `a` is the query minus the per-dimension
/// minimum, `s` the per-dimension step and `c` the 8-bit codes.
pub fn sq8_l2(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    debug_assert!(a.len() == s.len() && a.len() == c.len());
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            let k = i * 4 + j;
            let d = a[k] - c[k] as f32 * s[k];
            *slot += d * d;
        }
    }
    let mut r = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for k in chunks * 4..a.len() {
        let d = a[k] - c[k] as f32 * s[k];
        r += d * d;
    }
    r
}

/// SQ8 weighted code sum: `Σ aᵢ·cᵢ` (the inner product with the step folded into `a`).
pub fn sq8_dot(a: &[f32], c: &[u8]) -> f32 {
    debug_assert_eq!(a.len(), c.len());
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            let k = i * 4 + j;
            *slot += a[k] * c[k] as f32;
        }
    }
    let mut r = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for k in chunks * 4..a.len() {
        r += a[k] * c[k] as f32;
    }
    r
}

/// Product-quantizer asymmetric distance: `Σⱼ table[j·256 + codes[j]]`.
#[inline]
pub fn pq_adc(table: &[f32], codes: &[u8]) -> f32 {
    debug_assert!(table.len() >= codes.len() * 256);
    let mut acc = [0.0f32; 4];
    let chunks = codes.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            let k = i * 4 + j;
            *slot += table[k * 256 + codes[k] as usize];
        }
    }
    let mut r = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for k in chunks * 4..codes.len() {
        r += table[k * 256 + codes[k] as usize];
    }
    r
}

/// One output row of a depthwise convolution (see [`crate::DepthwiseRow`]).
pub fn depthwise_row(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    depthwise_row_channels(g, out, bias, rows, w, 0, g.c);
}

/// [`depthwise_row`] on channels `c0..c1` only (the SIMD kernels finish their tail here).
pub(crate) fn depthwise_row_channels(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
    c0: usize,
    c1: usize,
) {
    let (c, k) = (g.c, g.k);
    for ox in 0..g.out_w {
        let o = &mut out[ox * c..][..c];
        o[c0..c1].copy_from_slice(&bias[c0..c1]);
        for (ky, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            for kx in 0..k {
                let Some(ix) = (ox * g.stride + kx).checked_sub(g.pad_left) else {
                    continue;
                };
                if ix >= g.in_w {
                    continue;
                }
                let (x, wt) = (&row[ix * c..][..c], &w[(ky * k + kx) * c..][..c]);
                for ch in c0..c1 {
                    o[ch] += x[ch] * wt[ch];
                }
            }
        }
        for v in &mut o[c0..c1] {
            *v = v.clamp(g.lo, g.hi);
        }
    }
}

/// IEEE binary16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// bfloat16 bits to f32 (exact: the high half of an f32).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `Σ aᵢ·xᵢ` with `x` in half precision (`bf` selects bfloat16 over binary16).
pub fn dot_half(a: &[f32], x: &[u16], bf: bool) -> f32 {
    debug_assert_eq!(a.len(), x.len());
    let conv = if bf { bf16_to_f32 } else { f16_to_f32 };
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            *slot += a[i * 4 + j] * conv(x[i * 4 + j]);
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        s += a[i] * conv(x[i]);
    }
    s
}

/// `Σ (aᵢ − xᵢ)²` with `x` in half precision (`bf` selects bfloat16 over binary16).
pub fn l2_sq_half(a: &[f32], x: &[u16], bf: bool) -> f32 {
    debug_assert_eq!(a.len(), x.len());
    let conv = if bf { bf16_to_f32 } else { f16_to_f32 };
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for (j, slot) in acc.iter_mut().enumerate() {
            let d = a[i * 4 + j] - conv(x[i * 4 + j]);
            *slot += d * d;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        let d = a[i] - conv(x[i]);
        s += d * d;
    }
    s
}

/// Bits set in `a XOR b`: the Hamming distance, eight bytes at a time.
#[inline(always)]
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    let mut x = 0u32;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (p, q) in (&mut ca).zip(&mut cb) {
        let p = u64::from_le_bytes(p.try_into().expect("8 bytes"));
        let q = u64::from_le_bytes(q.try_into().expect("8 bytes"));
        x += (p ^ q).count_ones();
    }
    for (p, q) in ca.remainder().iter().zip(cb.remainder()) {
        x += (p ^ q).count_ones();
    }
    x
}

/// Bits set in `a AND b` and in `a OR b`: the counts the Jaccard distance is made of,
/// eight bytes at a time.
#[inline(always)]
pub fn and_or_counts(a: &[u8], b: &[u8]) -> (u32, u32) {
    debug_assert_eq!(a.len(), b.len());
    let (mut and, mut or) = (0u32, 0u32);
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (p, q) in (&mut ca).zip(&mut cb) {
        let p = u64::from_le_bytes(p.try_into().expect("8 bytes"));
        let q = u64::from_le_bytes(q.try_into().expect("8 bytes"));
        and += (p & q).count_ones();
        or += (p | q).count_ones();
    }
    for (p, q) in ca.remainder().iter().zip(cb.remainder()) {
        and += (p & q).count_ones();
        or += (p | q).count_ones();
    }
    (and, or)
}

/// Reference for [`crate::Conv1x1::forward`]: `out[i][j] = clamp(bias[j] + Σₖ x[i][k]·w[k][j],
/// lo, hi) + residual[i][j]`, with `w` row-major `k × n`.
#[allow(clippy::too_many_arguments)]
pub fn conv1x1(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    bias: &[f32],
    lo: f32,
    hi: f32,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias[j];
            for kk in 0..k {
                acc += x[i * k + kk] * w[kk * n + j];
            }
            out[i * n + j] = acc.clamp(lo, hi) + residual.map_or(0.0, |r| r[i * n + j]);
        }
    }
}
