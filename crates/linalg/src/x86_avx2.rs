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

/// Safe entry point of [`crate::depthwise_row`]; the dispatcher selects it only when AVX2
/// and FMA are present. Kernel sides 1, 3, 5 and 7 are vectorised, others go to scalar.
pub(crate) fn depthwise_row_checked(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    assert!(crate::depthwise_shape_ok(g, out, bias, rows, w));
    // SAFETY: AVX2 and FMA were detected at run time; the asserts above are the shape
    // contract that `depthwise_row_k` relies on.
    unsafe {
        match g.k {
            1 => depthwise_row_k::<1>(g, out, bias, rows, w),
            3 => depthwise_row_k::<3>(g, out, bias, rows, w),
            5 => depthwise_row_k::<5>(g, out, bias, rows, w),
            7 => depthwise_row_k::<7>(g, out, bias, rows, w),
            _ => crate::scalar::depthwise_row(g, out, bias, rows, w),
        }
    }
}

/// # Safety
/// AVX2 and FMA are available, `g.k == K`, and the slices satisfy the shape contract of
/// [`crate::depthwise_row`] (checked by [`depthwise_row_checked`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_row_k<const K: usize>(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    let c = g.c;
    let mut cb = 0;
    // SAFETY: each block stays inside channels cb..cb + 8·V <= c (the caller's contract
    // covers the rest).
    while cb + 16 <= c {
        unsafe { depthwise_block::<K, 2>(g, out, bias, rows, w, cb) };
        cb += 16;
    }
    while cb + 8 <= c {
        unsafe { depthwise_block::<K, 1>(g, out, bias, rows, w, cb) };
        cb += 8;
    }
    if cb < c {
        crate::scalar::depthwise_row_channels(g, out, bias, rows, w, cb, c);
    }
}

/// Defines the depthwise block kernel for one vector width (AVX2 here, AVX-512F in
/// `x86_avx512.rs`), so that the two share one body: `$lanes` f32 per vector and the
/// intrinsics of that width.
macro_rules! depthwise_block_kernel {
    ($vis:vis $name:ident, $feat:literal, $lanes:literal, $zero:ident, $load:ident, $store:ident,
     $set1:ident, $fma:ident, $min:ident, $max:ident) => {
        /// Channels `cb..cb + lanes·V` of one depthwise output row: the weights of one kernel row
        /// stay in registers while the output row is swept.
        ///
        /// # Safety
        /// As [`depthwise_row_k`], and `cb + lanes·V <= g.c`.
        #[target_feature(enable = $feat)]
        #[inline]
        $vis unsafe fn $name<const K: usize, const V: usize>(
            g: &crate::DepthwiseRow,
            out: &mut [f32],
            bias: &[f32],
            rows: &[Option<&[f32]>],
            w: &[f32],
            cb: usize,
        ) {
            let (c, s, pl) = (g.c, g.stride, g.pad_left);
            let po = out.as_mut_ptr();
            // Every pointer below is p + i·c + cb + lanes·v with i < out_w (out), i < in_w (a row) or
            // i < K·K (w), and v < V; with cb + lanes·V <= c that stays inside the slice.
            let mut b = [$zero(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = unsafe { $load(bias.as_ptr().add(cb + $lanes * v)) };
            }
            let (lo, hi) = ($set1(g.lo), $set1(g.hi));
            // The first input row's sweep starts from the bias and the last one's clamps, so the
            // output is written once per input row and never needs a pass of its own.
            let valid = rows.iter().filter(|r| r.is_some()).count();
            if valid == 0 {
                for ox in 0..g.out_w {
                    for (v, bv) in b.iter().enumerate() {
                        let y = $min($max(*bv, lo), hi);
                        unsafe { $store(po.add(ox * c + cb + $lanes * v), y) };
                    }
                }
                return;
            }
            // Output columns whose K taps all lie inside the input row.
            let first_full = pl.div_ceil(s);
            let end_full = if g.in_w + pl >= K {
                ((g.in_w + pl - K) / s + 1).min(g.out_w)
            } else {
                0
            };
            let mut seen = 0;
            for (ky, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                seen += 1;
                let (first, last) = (seen == 1, seen == valid);
                let pr = row.as_ptr();
                let mut wv = [[$zero(); V]; K];
                for (kx, wk) in wv.iter_mut().enumerate() {
                    for (v, x) in wk.iter_mut().enumerate() {
                        *x = unsafe { $load(w.as_ptr().add((ky * K + kx) * c + cb + $lanes * v)) };
                    }
                }
                for ox in 0..g.out_w {
                    let pout = unsafe { po.add(ox * c + cb) };
                    let mut acc = b;
                    if !first {
                        for (v, a) in acc.iter_mut().enumerate() {
                            *a = unsafe { $load(pout.add($lanes * v)) };
                        }
                    }
                    if ox >= first_full && ox < end_full {
                        // ox·s − pl + K − 1 < in_w here.
                        let base = unsafe { pr.add((ox * s - pl) * c + cb) };
                        for (kx, wk) in wv.iter().enumerate() {
                            for (v, a) in acc.iter_mut().enumerate() {
                                let x = unsafe { $load(base.add(kx * c + $lanes * v)) };
                                *a = $fma(x, wk[v], *a);
                            }
                        }
                    } else {
                        for (kx, wk) in wv.iter().enumerate() {
                            let ix = ox * s + kx;
                            if ix < pl || ix - pl >= g.in_w {
                                continue;
                            }
                            let base = unsafe { pr.add((ix - pl) * c + cb) };
                            for (v, a) in acc.iter_mut().enumerate() {
                                let x = unsafe { $load(base.add($lanes * v)) };
                                *a = $fma(x, wk[v], *a);
                            }
                        }
                    }
                    for (v, a) in acc.iter().enumerate() {
                        let y = if last {
                            $min($max(*a, lo), hi)
                        } else {
                            *a
                        };
                        unsafe { $store(pout.add($lanes * v), y) };
                    }
                }
            }
        }
    };
}
pub(crate) use depthwise_block_kernel;

depthwise_block_kernel!(pub(crate) depthwise_block, "avx2,fma", 8, _mm256_setzero_ps,
    _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_min_ps,
    _mm256_max_ps);

/// Eight half-precision values widened to f32 lanes (binary16 through F16C, bfloat16 by
/// a 16-bit shift).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_half8<const BF: bool>(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable u16 at `p`.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    if BF {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    } else {
        _mm256_cvtph_ps(v)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_half<const BF: bool>(a: &[f32], x: &[u16]) -> f32 {
    let n = a.len();
    let (pa, px) = (a.as_ptr(), x.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n (resp. i + 8 <= n) bounds every load of the two
    // equal-length slices.
    while i + 16 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                load_half8::<BF>(px.add(i)),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                load_half8::<BF>(px.add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                load_half8::<BF>(px.add(i)),
                acc0,
            );
        }
        i += 8;
    }
    let mut s = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
    let conv = if BF {
        crate::scalar::bf16_to_f32
    } else {
        crate::scalar::f16_to_f32
    };
    while i < n {
        s += a[i] * conv(x[i]);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn l2_sq_half<const BF: bool>(a: &[f32], x: &[u16]) -> f32 {
    let n = a.len();
    let (pa, px) = (a.as_ptr(), x.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): bounded as in `dot_half`.
    while i + 16 <= n {
        unsafe {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), load_half8::<BF>(px.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                load_half8::<BF>(px.add(i + 8)),
            );
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), load_half8::<BF>(px.add(i)));
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        }
        i += 8;
    }
    let mut s = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
    let conv = if BF {
        crate::scalar::bf16_to_f32
    } else {
        crate::scalar::f16_to_f32
    };
    while i < n {
        let d = a[i] - conv(x[i]);
        s += d * d;
        i += 1;
    }
    s
}

/// Safe entry point; the dispatcher selects it only when AVX2, FMA and F16C are present.
pub(crate) fn dot_half_checked(a: &[f32], x: &[u16], bf: bool) -> f32 {
    assert_eq!(a.len(), x.len());
    // SAFETY: selected only after runtime detection of AVX2, FMA and F16C; equal lengths.
    unsafe {
        if bf {
            dot_half::<true>(a, x)
        } else {
            dot_half::<false>(a, x)
        }
    }
}

/// Safe entry point; the dispatcher selects it only when AVX2, FMA and F16C are present.
pub(crate) fn l2_sq_half_checked(a: &[f32], x: &[u16], bf: bool) -> f32 {
    assert_eq!(a.len(), x.len());
    // SAFETY: as for `dot_half_checked`.
    unsafe {
        if bf {
            l2_sq_half::<true>(a, x)
        } else {
            l2_sq_half::<false>(a, x)
        }
    }
}

#[target_feature(enable = "popcnt")]
unsafe fn and_or_counts_popcnt(a: &[u8], b: &[u8]) -> (u32, u32) {
    // The portable loop, compiled with the POPCNT instruction available.
    crate::scalar::and_or_counts(a, b)
}

#[target_feature(enable = "popcnt")]
unsafe fn hamming_popcnt(a: &[u8], b: &[u8]) -> u32 {
    // The portable loop, compiled with the POPCNT instruction available.
    crate::scalar::hamming(a, b)
}

/// Safe entry point; the dispatcher selects it only when POPCNT is present.
pub(crate) fn hamming_checked(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: selected only after runtime detection of POPCNT.
    unsafe { hamming_popcnt(a, b) }
}

/// Safe entry point; the dispatcher selects it only when POPCNT is present.
pub(crate) fn and_or_counts_checked(a: &[u8], b: &[u8]) -> (u32, u32) {
    assert_eq!(a.len(), b.len());
    // SAFETY: selected only after runtime detection of POPCNT.
    unsafe { and_or_counts_popcnt(a, b) }
}
