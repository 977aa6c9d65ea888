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

/// `out[c] = clamp(bias[c] + Σₜ xs[t][c]·ws[t][c], lo, hi)`: one output pixel of a
/// depthwise convolution in channels-last layout (the taps are the input pixels under the
/// kernel and their per-channel weights).
pub fn weighted_taps(
    out: &mut [f32],
    bias: &[f32],
    xs: &[&[f32]],
    ws: &[&[f32]],
    lo: f32,
    hi: f32,
) {
    let n = out.len();
    let mut c = 0;
    while c + 8 <= n {
        let mut acc = [0f32; 8];
        acc.copy_from_slice(&bias[c..c + 8]);
        for (x, w) in xs.iter().zip(ws) {
            let (x, w) = (&x[c..c + 8], &w[c..c + 8]);
            for j in 0..8 {
                acc[j] += x[j] * w[j];
            }
        }
        for j in 0..8 {
            out[c + j] = acc[j].clamp(lo, hi);
        }
        c += 8;
    }
    for c in c..n {
        let mut acc = bias[c];
        for (x, w) in xs.iter().zip(ws) {
            acc += x[c] * w[c];
        }
        out[c] = acc.clamp(lo, hi);
    }
}
