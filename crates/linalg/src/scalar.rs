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
