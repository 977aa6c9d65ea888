//! AVX2 + FMA kernels. Every function here is only reached through the dispatcher in
//! `lib.rs` after `is_x86_feature_detected!("avx2")` and `("fma")` both returned true.

use std::arch::x86_64::*;

/// Safe entry point; the dispatcher selects it only when AVX2 and FMA are present.
pub(crate) fn dot_checked(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: selected by the dispatcher (and by tests) only after runtime detection of
    // AVX2 and FMA; lengths are equal.
    unsafe { dot(a, b) }
}

/// Safe entry point; the dispatcher selects it only when AVX2 and FMA are present.
pub(crate) fn l2_sq_checked(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: as for `dot_checked`.
    unsafe { l2_sq(a, b) }
}

/// Safe entry point; the dispatcher selects it only when AVX2 and FMA are present.
pub(crate) fn sq8_l2_checked(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    assert!(a.len() == s.len() && a.len() == c.len());
    // SAFETY: as for `dot_checked`; the three lengths are equal.
    unsafe { sq8_l2(a, s, c) }
}

/// Safe entry point; the dispatcher selects it only when AVX2 and FMA are present.
pub(crate) fn sq8_dot_checked(a: &[f32], c: &[u8]) -> f32 {
    assert_eq!(a.len(), c.len());
    // SAFETY: as for `dot_checked`.
    unsafe { sq8_dot(a, c) }
}

/// Hints the CPU to pull the cache line holding `p` into all cache levels. Prefetching
/// never faults, whatever the address; SSE is part of the x86_64 baseline.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    // SAFETY: `_mm_prefetch` is a hint that cannot fault or read memory observably.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
}

/// Eight codes widened to f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_u8x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    let v = unsafe { _mm_loadl_epi64(p as *const __m128i) };
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sq8_l2(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    let n = a.len();
    let (pa, ps, pc) = (a.as_ptr(), s.as_ptr(), c.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n (resp. i + 8 <= n) bounds every load of the three
    // equal-length slices.
    while i + 16 <= n {
        unsafe {
            let x0 = _mm256_mul_ps(load_u8x8(pc.add(i)), _mm256_loadu_ps(ps.add(i)));
            let x1 = _mm256_mul_ps(load_u8x8(pc.add(i + 8)), _mm256_loadu_ps(ps.add(i + 8)));
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), x0);
            let d1 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8)), x1);
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            let x0 = _mm256_mul_ps(load_u8x8(pc.add(i)), _mm256_loadu_ps(ps.add(i)));
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), x0);
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        }
        i += 8;
    }
    let mut r = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
    while i < n {
        let d = a[i] - c[i] as f32 * s[i];
        r += d * d;
        i += 1;
    }
    r
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sq8_dot(a: &[f32], c: &[u8]) -> f32 {
    let n = a.len();
    let (pa, pc) = (a.as_ptr(), c.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): bounded as in `sq8_l2`.
    while i + 16 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(load_u8x8(pc.add(i)), _mm256_loadu_ps(pa.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                load_u8x8(pc.add(i + 8)),
                _mm256_loadu_ps(pa.add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(load_u8x8(pc.add(i)), _mm256_loadu_ps(pa.add(i)), acc0);
        }
        i += 8;
    }
    let mut r = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
    while i < n {
        r += a[i] * c[i] as f32;
        i += 1;
    }
    r
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps::<1>(v);
    let lo = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let pa = a.as_ptr();
    let pb = b.as_ptr();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n (resp. i + 8 <= n) bounds every unaligned load.
    while i + 32 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            acc2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                acc2,
            );
            acc3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                acc3,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let mut s = unsafe { hsum(acc) };
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma")]
unsafe fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let pa = a.as_ptr();
    let pb = b.as_ptr();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n (resp. i + 8 <= n) bounds every unaligned load.
    while i + 32 <= n {
        unsafe {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            let d2 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
            );
            let d3 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
            );
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
            acc2 = _mm256_fmadd_ps(d2, d2, acc2);
            acc3 = _mm256_fmadd_ps(d3, d3, acc3);
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc0 = _mm256_fmadd_ps(d, d, acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let mut s = unsafe { hsum(acc) };
    while i < n {
        let d = a[i] - b[i];
        s += d * d;
        i += 1;
    }
    s
}

/// Safe entry point of [`weighted_taps`]; the dispatcher selects it only when AVX2 and
/// FMA are present.
pub(crate) fn weighted_taps_checked(
    out: &mut [f32],
    bias: &[f32],
    xs: &[&[f32]],
    ws: &[&[f32]],
    lo: f32,
    hi: f32,
) {
    let n = out.len();
    assert!(bias.len() >= n && xs.len() == ws.len());
    assert!(xs.iter().chain(ws).all(|s| s.len() >= n));
    // SAFETY: AVX2 and FMA were detected at run time; every slice holds at least n floats.
    unsafe { weighted_taps(out, bias, xs, ws, lo, hi) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_taps(
    out: &mut [f32],
    bias: &[f32],
    xs: &[&[f32]],
    ws: &[&[f32]],
    lo: f32,
    hi: f32,
) {
    let n = out.len();
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let mut c = 0;
    // SAFETY (all loads and stores): c + 16 <= n (resp. c + 8 <= n) and every slice holds
    // at least n floats (checked by the caller).
    while c + 16 <= n {
        let mut a0 = unsafe { _mm256_loadu_ps(bias.as_ptr().add(c)) };
        let mut a1 = unsafe { _mm256_loadu_ps(bias.as_ptr().add(c + 8)) };
        for (x, w) in xs.iter().zip(ws) {
            let (px, pw) = (x.as_ptr(), w.as_ptr());
            unsafe {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(c)), _mm256_loadu_ps(pw.add(c)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(px.add(c + 8)),
                    _mm256_loadu_ps(pw.add(c + 8)),
                    a1,
                );
            }
        }
        a0 = _mm256_min_ps(_mm256_max_ps(a0, vlo), vhi);
        a1 = _mm256_min_ps(_mm256_max_ps(a1, vlo), vhi);
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), a0);
            _mm256_storeu_ps(out.as_mut_ptr().add(c + 8), a1);
        }
        c += 16;
    }
    while c + 8 <= n {
        let mut a0 = unsafe { _mm256_loadu_ps(bias.as_ptr().add(c)) };
        for (x, w) in xs.iter().zip(ws) {
            unsafe {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(x.as_ptr().add(c)),
                    _mm256_loadu_ps(w.as_ptr().add(c)),
                    a0,
                );
            }
        }
        a0 = _mm256_min_ps(_mm256_max_ps(a0, vlo), vhi);
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), a0) };
        c += 8;
    }
    for c in c..n {
        let mut acc = bias[c];
        for (x, w) in xs.iter().zip(ws) {
            acc = x[c].mul_add(w[c], acc);
        }
        out[c] = acc.clamp(lo, hi);
    }
}
