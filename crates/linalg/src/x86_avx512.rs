//! AVX-512 kernels, selected at run time where the CPU has them: the 1×1 and depthwise
//! convolutions (AVX-512F), and the f32 and SQ8 distance kernels (AVX-512F/BW/VL; at the
//! end of this file).
//!
//! The 1×1 convolution of [`crate::Conv1x1`] is a matrix product with the weights packed
//! once and the bias, clamp and residual applied to the accumulators before they are
//! stored (no second pass over the output).
//!
//! Blocking, in the loop order of the driver: `KC` rows of the packed weights at a time
//! (a 32-column panel slice of `KC` rows is 32 KiB, so it stays in L1 while the tiles
//! under it run), `MC` output rows at a time (their `KC`-wide input slice, 96 KiB, stays
//! in L2 while every panel passes over it), then one 32-column panel, then tiles of
//! `MR` rows. A tile keeps `MR × 2` zmm accumulators (24 of the 32 registers), loads two
//! weight vectors and broadcasts one input value per row for each `k`.

use std::arch::x86_64::*;

/// Output columns per packed weight panel (two zmm registers).
pub(crate) const NR: usize = 32;
/// Output rows per register tile.
const MR: usize = 12;
/// Depth (input channels) per block.
const KC: usize = 256;
/// Output rows per block (a multiple of `MR`).
const MC: usize = 96;

/// The epilogue of the last depth block: clamp, then add a residual.
#[derive(Clone, Copy)]
struct Fin {
    lo: f32,
    hi: f32,
    /// Residual rows (`ldc` apart) at the tile's first row and column, or null.
    res: *const f32,
}

/// Safe entry point of [`crate::Conv1x1::forward`] on the panel layout; the dispatcher
/// uses it only where AVX-512F was detected.
///
/// `w` is the panel layout of [`crate::Conv1x1`] (`k` rows per panel, panels `NR`
/// columns apart, the last one 16 or 32 wide), `bias` is padded to whole panels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv1x1_checked(
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
    let panels = n.div_ceil(NR);
    assert!(std::is_x86_feature_detected!("avx512f"));
    assert!(x.len() >= m * k && out.len() >= m * n);
    assert!(bias.len() >= panels * NR && w.len() >= panel_offset(n, k, panels));
    assert!(residual.is_none_or(|r| r.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No depth blocks: the epilogue alone, on the bias.
        for row in out[..m * n].chunks_exact_mut(n) {
            for (o, b) in row.iter_mut().zip(bias) {
                *o = b.clamp(lo, hi);
            }
        }
        if let Some(r) = residual {
            out[..m * n].iter_mut().zip(r).for_each(|(o, r)| *o += r);
        }
        return;
    }
    // SAFETY: AVX-512F was detected; the asserts above bound every tile's reads and
    // writes (see `drive`).
    unsafe { drive(x, m, k, n, w, bias, lo, hi, residual, out) }
}

/// Floats of the panel layout up to (not including) panel `q`; for `q == panels`, its
/// length: whole panels before the last, and the last panel 16 or 32 columns wide.
pub(crate) fn panel_offset(n: usize, k: usize, q: usize) -> usize {
    let panels = n.div_ceil(NR);
    if q < panels {
        q * NR * k
    } else {
        (panels - 1) * NR * k + panel_width(n, panels - 1) * k
    }
}

/// Stored width of panel `q` (16 or 32; the columns past `n` are zeros).
pub(crate) fn panel_width(n: usize, q: usize) -> usize {
    if n - q * NR > 16 {
        32
    } else {
        16
    }
}

/// # Safety
/// AVX-512F is available and the slices hold what [`conv1x1_checked`] asserts.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn drive(
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
    let panels = n.div_ceil(NR);
    let (xp, wp, bp, op) = (x.as_ptr(), w.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
    let rp = residual.map_or(std::ptr::null(), |r| r.as_ptr());
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc == k);
        let mut i0 = 0;
        while i0 < m {
            let mc = MC.min(m - i0);
            for q in 0..panels {
                let j0 = q * NR;
                let wq = panel_width(n, q);
                let cols = (n - j0).min(wq);
                // Lanes of the tile's last vector that are real columns.
                let tail = cols - (wq - 16);
                let mask: __mmask16 = if tail == 16 { 0xffff } else { (1 << tail) - 1 };
                // SAFETY (all pointer arithmetic below): panel q starts at q·NR·k and
                // holds k rows of wq floats, so rows k0..k0 + kc of it are in bounds;
                // the tile's rows i < m and columns j0 + lane < n (masked) are inside
                // x (m × k), out and residual (m × n); bias is padded to whole panels.
                let b = unsafe { wp.add(panel_offset(n, k, q) + k0 * wq) };
                let init = if first {
                    unsafe { bp.add(j0) }
                } else {
                    std::ptr::null()
                };
                let mut ir = 0;
                while ir < mc {
                    let rows = MR.min(mc - ir);
                    let i = i0 + ir;
                    let a = unsafe { xp.add(i * k + k0) };
                    let c = unsafe { op.add(i * n + j0) };
                    let fin = last.then(|| Fin {
                        lo,
                        hi,
                        res: if rp.is_null() {
                            rp
                        } else {
                            unsafe { rp.add(i * n + j0) }
                        },
                    });
                    unsafe { tile_dispatch(rows, wq / 16, a, k, b, wq, kc, c, n, mask, init, fin) };
                    ir += rows;
                }
            }
            i0 += mc;
        }
        k0 += kc;
    }
}

/// Calls the tile kernel monomorphised for `rows` (1..=MR) and `v` (1 or 2) vectors.
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tile_dispatch(
    rows: usize,
    v: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
    init: *const f32,
    fin: Option<Fin>,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match (rows, v) {
                $(
                    ($r, 1) => unsafe { tile::<$r, 1>(a, lda, b, ldb, kc, c, ldc, mask, init, fin) },
                    ($r, 2) => unsafe { tile::<$r, 2>(a, lda, b, ldb, kc, c, ldc, mask, init, fin) },
                )*
                _ => unreachable!("tile of {rows} rows × {v} vectors"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// One `R × 16·V` tile: `c = (init or c) + a · b`, then on the last depth block
/// `clamp(·, lo, hi) + residual`. The last vector of each row is masked by `mask`.
///
/// # Safety
/// AVX-512F is available; `a` has `R` rows of `kc` readable floats `lda` apart; `b` has
/// `kc` rows of `16·V` floats `ldb` apart; `c` (and `fin.res` when not null) has `R`
/// rows `ldc` apart whose first `16·(V−1)` floats and masked lanes are valid; `init`,
/// when not null, has `16·V` readable floats.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const V: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
    init: *const f32,
    fin: Option<Fin>,
) {
    let lane_mask = |v: usize| if v + 1 == V { mask } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: every access below stays inside the regions the caller guarantees.
    unsafe {
        if init.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(lane_mask(v), c.add(r * ldc + 16 * v));
                }
            }
        } else {
            let mut bias = [_mm512_setzero_ps(); V];
            for (v, x) in bias.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(init.add(16 * v));
            }
            acc = [bias; R];
        }
        for kk in 0..kc {
            let bk = b.add(kk * ldb);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bk.add(16 * v));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                for (x, bv) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, *bv, *x);
                }
            }
        }
        if let Some(f) = fin {
            let (lo, hi) = (_mm512_set1_ps(f.lo), _mm512_set1_ps(f.hi));
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_min_ps(_mm512_max_ps(*x, lo), hi);
                    if !f.res.is_null() {
                        let res = _mm512_maskz_loadu_ps(lane_mask(v), f.res.add(r * ldc + 16 * v));
                        *x = _mm512_add_ps(*x, res);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), lane_mask(v), *x);
            }
        }
    }
}

/// Safe entry point of [`crate::depthwise_row`] where AVX-512F is present: blocks of 32
/// and 16 channels in zmm registers, then blocks of 8 by the AVX2 kernel (AVX-512F
/// implies AVX2 and FMA), then scalar. Kernel sides 1, 3, 5 and 7 are vectorised.
pub(crate) fn depthwise_row_checked(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    assert!(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma"));
    assert!(crate::depthwise_shape_ok(g, out, bias, rows, w));
    // SAFETY: AVX-512F (and with it AVX2 and FMA) was detected at run time; the asserts
    // above are the shape contract that `depthwise_row_k` relies on.
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
/// AVX-512F, AVX2 and FMA are available, `g.k == K`, and the slices satisfy the shape
/// contract of [`crate::depthwise_row`] (checked by [`depthwise_row_checked`]).
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn depthwise_row_k<const K: usize>(
    g: &crate::DepthwiseRow,
    out: &mut [f32],
    bias: &[f32],
    rows: &[Option<&[f32]>],
    w: &[f32],
) {
    let c = g.c;
    let mut cb = 0;
    // SAFETY: each block stays inside channels cb..cb + width <= c (the caller's contract
    // covers the rest).
    while cb + 32 <= c {
        unsafe { depthwise_block::<K, 2>(g, out, bias, rows, w, cb) };
        cb += 32;
    }
    while cb + 16 <= c {
        unsafe { depthwise_block::<K, 1>(g, out, bias, rows, w, cb) };
        cb += 16;
    }
    while cb + 8 <= c {
        unsafe { crate::x86_avx2::depthwise_block::<K, 1>(g, out, bias, rows, w, cb) };
        cb += 8;
    }
    if cb < c {
        crate::scalar::depthwise_row_channels(g, out, bias, rows, w, cb, c);
    }
}

crate::x86_avx2::depthwise_block_kernel!(
    depthwise_block,
    "avx512f",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_min_ps,
    _mm512_max_ps
);

// ---------------------------------------------------------------------------------------
// Distance kernels on zmm registers.
//
// The same sums as the AVX2 kernels, 16 lanes wide, with the tail read through a masked
// load instead of a scalar loop (a masked-off lane is never read, so it cannot fault).
// They need AVX-512F for the arithmetic and AVX-512BW/VL for the masked byte loads of the
// SQ8 tails; the dispatcher checks all three. `MAGPIE_NO_AVX512` keeps the AVX2 ones
// (for side-by-side measurement: docs/BENCHMARKS.md, "AVX-512 distance kernels").

/// True where the distance kernels below may run.
pub(crate) fn distance_kernels_available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
}

/// The lanes `0..r` of a 16-lane mask, `r < 16`.
#[inline(always)]
fn tail_mask(r: usize) -> __mmask16 {
    ((1u32 << r) - 1) as __mmask16
}

/// Safe entry point; the dispatcher (and the tests) call it only where
/// [`distance_kernels_available`] said yes, so no check per call on the hot path.
pub(crate) fn dot_checked(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: selected by the dispatcher (and by tests) only after
    // `distance_kernels_available()`; lengths are equal.
    unsafe { dot(a, b) }
}

/// Safe entry point; as [`dot_checked`].
pub(crate) fn l2_sq_checked(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: as for `dot_checked`.
    unsafe { l2_sq(a, b) }
}

/// Safe entry point of [`many`] for inner products; as [`dot_checked`].
pub(crate) fn dot_many_checked(qs: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(qs.len(), x.len() * out.len());
    // SAFETY: as for `dot_checked`; `qs` holds `out.len()` queries of `x.len()`.
    unsafe { many::<false>(qs, x, out) }
}

/// Safe entry point of [`many`] for squared distances; as [`dot_checked`].
pub(crate) fn l2_sq_many_checked(qs: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(qs.len(), x.len() * out.len());
    // SAFETY: as for `dot_many_checked`.
    unsafe { many::<true>(qs, x, out) }
}

/// `out[j]` = [`dot`] (or [`l2_sq`] when `L2`) of query `j` of `qs` (row-major, `x.len()`
/// each) and `x`: four queries at a time, each query's lanes summed with the very
/// operations of the one-query kernel (the same accumulators, in the same order, the
/// same tail and reduction), so every value is bit-identical to it; `x` is read once per
/// four queries and the four sums share no call.
///
/// # Safety
/// AVX-512F/BW/VL are available and `qs.len() == x.len() * out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn many<const L2: bool>(qs: &[f32], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    let px = x.as_ptr();
    let groups = out.len() / 4;
    for g in 0..groups {
        // SAFETY: query `4g + k` is `qs[(4g + k) n..(4g + k + 1) n]`, in bounds by the
        // length contract; every load below reads lanes `< n` of a query or of `x`, as
        // in `dot`.
        let pq = [0, 1, 2, 3].map(|k| unsafe { qs.as_ptr().add((4 * g + k) * n) });
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        unsafe {
            while i + 64 <= n {
                let mut xs = [_mm512_setzero_ps(); 4];
                for (j, v) in xs.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(px.add(i + 16 * j));
                }
                for k in 0..4 {
                    for j in 0..4 {
                        let a = _mm512_loadu_ps(pq[k].add(i + 16 * j));
                        acc[k][j] = term::<L2>(a, xs[j], acc[k][j]);
                    }
                }
                i += 64;
            }
            while i + 16 <= n {
                let xv = _mm512_loadu_ps(px.add(i));
                for k in 0..4 {
                    acc[k][0] = term::<L2>(_mm512_loadu_ps(pq[k].add(i)), xv, acc[k][0]);
                }
                i += 16;
            }
            if i < n {
                let m = tail_mask(n - i);
                let xv = _mm512_maskz_loadu_ps(m, px.add(i));
                for k in 0..4 {
                    let a = _mm512_maskz_loadu_ps(m, pq[k].add(i));
                    acc[k][1] = term::<L2>(a, xv, acc[k][1]);
                }
            }
        }
        for k in 0..4 {
            let a = &acc[k];
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            out[4 * g + k] = _mm512_reduce_add_ps(s);
        }
    }
    for j in 4 * groups..out.len() {
        let q = &qs[j * n..(j + 1) * n];
        // SAFETY: as the caller's; lengths are equal.
        out[j] = unsafe {
            if L2 {
                l2_sq(q, x)
            } else {
                dot(q, x)
            }
        };
    }
}

/// One lane step of [`dot`] (`a·b + s`) or of [`l2_sq`] (`(a − b)² + s`), as they do it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn term<const L2: bool>(a: __m512, b: __m512, s: __m512) -> __m512 {
    if L2 {
        let d = _mm512_sub_ps(a, b);
        _mm512_fmadd_ps(d, d, s)
    } else {
        _mm512_fmadd_ps(a, b, s)
    }
}

/// Safe entry point; as [`dot_checked`].
pub(crate) fn sq8_l2_checked(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    assert!(a.len() == s.len() && a.len() == c.len());
    // SAFETY: as for `dot_checked`; the three lengths are equal.
    unsafe { sq8_l2(a, s, c) }
}

/// Safe entry point; as [`dot_checked`].
pub(crate) fn sq8_dot_checked(a: &[f32], c: &[u8]) -> f32 {
    assert_eq!(a.len(), c.len());
    // SAFETY: as for `dot_checked`.
    unsafe { sq8_dot(a, c) }
}

/// # Safety
/// AVX-512F/BW/VL are available and `a.len() == b.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 64 <= n (resp. i + 16 <= n) bounds every full load; the
    // tail's masked loads read lanes i..n only.
    unsafe {
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i)),
                _mm512_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// # Safety
/// As [`dot`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): bounded as in `dot`.
    unsafe {
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)));
                *s = _mm512_fmadd_ps(d, d, *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
            );
            acc[1] = _mm512_fmadd_ps(d, d, acc[1]);
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// Sixteen codes at `p` (lanes of `m` only) widened to f32 lanes.
///
/// # Safety
/// The bytes at `p` of the lanes in `m` are readable; AVX-512F/BW/VL are available.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_u8x16(m: __mmask16, p: *const u8) -> __m512 {
    // SAFETY: the caller's contract; masked-off bytes are not read.
    let v = unsafe { _mm_maskz_loadu_epi8(m, p as *const i8) };
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

/// # Safety
/// AVX-512F/BW/VL are available and the three lengths are equal.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn sq8_l2(a: &[f32], s: &[f32], c: &[u8]) -> f32 {
    let n = a.len();
    let (pa, ps, pc) = (a.as_ptr(), s.as_ptr(), c.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n (resp. i + 16 <= n) bounds every full load of the
    // three equal-length slices; the tail's masked loads read lanes i..n only.
    unsafe {
        while i + 32 <= n {
            let x0 = _mm512_mul_ps(load_u8x16(!0, pc.add(i)), _mm512_loadu_ps(ps.add(i)));
            let x1 = _mm512_mul_ps(
                load_u8x16(!0, pc.add(i + 16)),
                _mm512_loadu_ps(ps.add(i + 16)),
            );
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), x0);
            let d1 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i + 16)), x1);
            acc0 = _mm512_fmadd_ps(d0, d0, acc0);
            acc1 = _mm512_fmadd_ps(d1, d1, acc1);
            i += 32;
        }
        while i < n {
            let m = if n - i >= 16 { !0 } else { tail_mask(n - i) };
            let x = _mm512_mul_ps(
                load_u8x16(m, pc.add(i)),
                _mm512_maskz_loadu_ps(m, ps.add(i)),
            );
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), x);
            acc0 = _mm512_fmadd_ps(d, d, acc0);
            i += 16;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// # Safety
/// AVX-512F/BW/VL are available and `a.len() == c.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn sq8_dot(a: &[f32], c: &[u8]) -> f32 {
    let n = a.len();
    let (pa, pc) = (a.as_ptr(), c.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): bounded as in `sq8_l2`.
    unsafe {
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(load_u8x16(!0, pc.add(i)), _mm512_loadu_ps(pa.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                load_u8x16(!0, pc.add(i + 16)),
                _mm512_loadu_ps(pa.add(i + 16)),
                acc1,
            );
            i += 32;
        }
        while i < n {
            let m = if n - i >= 16 { !0 } else { tail_mask(n - i) };
            acc0 = _mm512_fmadd_ps(
                load_u8x16(m, pc.add(i)),
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                acc0,
            );
            i += 16;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}
