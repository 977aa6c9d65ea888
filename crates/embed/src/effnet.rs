//! EfficientNet-Lite0 (ImageNet-1k) on plain `f32` buffers.
//!
//! Architecture (Tan & Le's EfficientNet-B0 with the "Lite" changes: ReLU6, no
//! squeeze-excite, fixed stem and head): a 3×3 stride-2 stem to 32 channels, seven stages
//! of inverted-residual blocks (1×1 expand, k×k depthwise, 1×1 project, a residual when
//! the block keeps its shape), a 1×1 head to 1280, global average pooling, and a
//! 1280→1000 classifier. Convolutions use TensorFlow's "SAME" padding, which for stride 2
//! puts the extra pixel at the bottom/right. BatchNorm (eps 1e-3) is folded into the
//! convolutions at load.
//!
//! Feature maps are kept channels-last (HWC): 1×1 convolutions are then one matrix
//! product (`magpie_linalg::Conv1x1`, which also applies the bias, ReLU6 and the
//! residual before it stores) and depthwise convolutions vectorise over channels.
//! Everything runs on the calling thread; callers run one image per thread.

use crate::torch::TensorF32;
use crate::{EmbedError, Result};
use std::collections::HashMap;
use std::path::Path;

/// Input side in pixels.
pub const INPUT: usize = 224;
/// Pooled feature dimension.
pub const FEATURE_DIM: usize = 1280;
/// Number of ImageNet classes.
pub const CLASSES: usize = 1000;
const BN_EPS: f32 = 1e-3;

/// (repeats, kernel, stride, expand ratio, in, out) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// A channels-last feature map. `data` may be longer than `h·w·c` (a recycled buffer);
/// the map is its first `h·w·c` values.
#[derive(Clone, Debug)]
struct Fm {
    h: usize,
    w: usize,
    c: usize,
    data: Vec<f32>,
}

impl Fm {
    fn px(&self) -> &[f32] {
        &self.data[..self.h * self.w * self.c]
    }
}

thread_local! {
    /// Feature-map buffers of this thread's earlier passes, reused so that a pass neither
    /// allocates nor zero-fills its large maps (every layer overwrites its whole output).
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of at least `n` floats with unspecified contents: the smallest recycled one
/// that is large enough, else the largest grown to `n`.
fn scratch(n: usize) -> Vec<f32> {
    let mut v = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let fit = (0..s.len())
            .filter(|&i| s[i].len() >= n)
            .min_by_key(|&i| s[i].len())
            .or_else(|| (0..s.len()).max_by_key(|&i| s[i].len()));
        fit.map(|i| s.swap_remove(i)).unwrap_or_default()
    });
    if v.len() < n {
        v.resize(n, 0.0);
    }
    v
}

/// Returns a map's buffer to this thread's pool.
fn recycle(x: Fm) {
    SCRATCH.with(|s| s.borrow_mut().push(x.data));
}

/// 1×1 convolution with folded BatchNorm (weights packed for the kernel).
struct Pointwise(magpie_linalg::Conv1x1);

/// Depthwise k×k convolution with folded BatchNorm: `w` is `k·k × c` (tap-major).
struct Depthwise {
    c: usize,
    k: usize,
    stride: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Block {
    expand: Option<Pointwise>,
    dw: Depthwise,
    project: Pointwise,
    residual: bool,
}

/// The loaded network. Immutable after load, so one instance serves many threads.
pub struct Lite0 {
    stem: magpie_linalg::Conv1x1, // 27 × 32, rows in (ky, kx, ci) order
    blocks: Vec<Block>,
    head: Pointwise,
    fc_w: Vec<f32>, // 1280 × 1000
    fc_b: Vec<f32>,
}

/// Output of one forward pass.
pub struct Lite0Output {
    /// Global-average-pooled 1280-d feature (before the classifier).
    pub feature: Vec<f32>,
    /// 1000 class logits.
    pub logits: Vec<f32>,
}

/// TensorFlow "SAME" padding: output size and the padding before (top/left).
fn same_pad(input: usize, k: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(input);
    (out, total / 2)
}

struct Weights(HashMap<String, TensorF32>);

impl Weights {
    fn get(&self, k: &str, shape: &[usize]) -> std::result::Result<&[f32], String> {
        let t = self
            .0
            .get(k)
            .ok_or_else(|| format!("tensor {k} is missing"))?;
        if t.shape != shape {
            return Err(format!(
                "tensor {k} has shape {:?}, expected {shape:?}",
                t.shape
            ));
        }
        Ok(&t.data)
    }

    /// BatchNorm `prefix` as (scale, shift): y = x·scale + shift.
    fn bn(&self, prefix: &str, c: usize) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
        let g = self.get(&format!("{prefix}.weight"), &[c])?;
        let beta = self.get(&format!("{prefix}.bias"), &[c])?;
        let mean = self.get(&format!("{prefix}.running_mean"), &[c])?;
        let var = self.get(&format!("{prefix}.running_var"), &[c])?;
        let scale: Vec<f32> = (0..c).map(|i| g[i] / (var[i] + BN_EPS).sqrt()).collect();
        let shift = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        Ok((scale, shift))
    }

    fn pointwise(
        &self,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: usize,
    ) -> std::result::Result<Pointwise, String> {
        let w = self.get(&format!("{conv}.weight"), &[cout, cin, 1, 1])?;
        let (scale, shift) = self.bn(bn, cout)?;
        let mut t = vec![0f32; cin * cout];
        for co in 0..cout {
            for ci in 0..cin {
                t[ci * cout + co] = w[co * cin + ci] * scale[co];
            }
        }
        Ok(Pointwise(magpie_linalg::Conv1x1::new(
            &t, &shift, cin, cout,
        )))
    }
}

impl Pointwise {
    /// The convolution, its bias, ReLU6 when `act`, and `residual` (a map of the output's
    /// shape) added last, all in one pass: the kernel overwrites the recycled buffer.
    fn forward(&self, x: &Fm, act: bool, residual: Option<&Fm>) -> Fm {
        debug_assert_eq!(x.c, self.0.k());
        let (hw, cout) = (x.h * x.w, self.0.n());
        let mut out = scratch(hw * cout);
        let (lo, hi) = if act {
            (0.0, 6.0)
        } else {
            (f32::NEG_INFINITY, f32::INFINITY)
        };
        self.0
            .forward(x.px(), hw, lo, hi, residual.map(Fm::px), &mut out);
        Fm {
            h: x.h,
            w: x.w,
            c: cout,
            data: out,
        }
    }
}

impl Depthwise {
    fn forward(&self, x: &Fm) -> Fm {
        let (c, k, s) = (self.c, self.k, self.stride);
        let (oh, pt) = same_pad(x.h, k, s);
        let (ow, pl) = same_pad(x.w, k, s);
        // depthwise_row writes every output value (bias first), so recycled contents go.
        let mut out = scratch(oh * ow * c);
        let g = magpie_linalg::DepthwiseRow {
            c,
            k,
            stride: s,
            pad_left: pl,
            in_w: x.w,
            out_w: ow,
            lo: 0.0,
            hi: 6.0,
        };
        let mut rows: [Option<&[f32]>; 7] = [None; 7];
        assert!(k <= rows.len(), "kernel {k}×{k} is larger than 7×7");
        let row_len = x.w * c;
        for (oy, o) in out[..oh * ow * c].chunks_exact_mut(ow * c).enumerate() {
            for (ky, r) in rows[..k].iter_mut().enumerate() {
                *r = (oy * s + ky)
                    .checked_sub(pt)
                    .filter(|&iy| iy < x.h)
                    .map(|iy| &x.data[iy * row_len..][..row_len]);
            }
            magpie_linalg::depthwise_row(&g, o, &self.b, &rows[..k], &self.w);
        }
        Fm {
            h: oh,
            w: ow,
            c,
            data: out,
        }
    }
}

impl Lite0 {
    /// Loads the network from a state dict (`torch.save` key names of the
    /// `efficientnet_pytorch` layout).
    pub fn from_state_dict(sd: Vec<(String, TensorF32)>) -> std::result::Result<Self, String> {
        let wts = Weights(sd.into_iter().collect());
        let stem = wts.get("_conv_stem.weight", &[32, 3, 3, 3])?;
        let (scale, stem_b) = wts.bn("_bn0", 32)?;
        let mut stem_w = vec![0f32; 27 * 32];
        for co in 0..32 {
            for ci in 0..3 {
                for ky in 0..3 {
                    for kx in 0..3 {
                        stem_w[((ky * 3 + kx) * 3 + ci) * 32 + co] =
                            stem[((co * 3 + ci) * 3 + ky) * 3 + kx] * scale[co];
                    }
                }
            }
        }
        let mut blocks = Vec::new();
        for &(repeats, k, stride, expand, cin0, cout) in &STAGES {
            for r in 0..repeats {
                let i = blocks.len();
                let cin = if r == 0 { cin0 } else { cout };
                let stride = if r == 0 { stride } else { 1 };
                let mid = cin * expand;
                let p = format!("_blocks.{i}");
                let expand_conv = if expand != 1 {
                    Some(wts.pointwise(
                        &format!("{p}._expand_conv"),
                        &format!("{p}._bn0"),
                        cin,
                        mid,
                    )?)
                } else {
                    None
                };
                let dw = wts.get(&format!("{p}._depthwise_conv.weight"), &[mid, 1, k, k])?;
                let (scale, shift) = wts.bn(&format!("{p}._bn1"), mid)?;
                let mut dww = vec![0f32; k * k * mid];
                for c in 0..mid {
                    for t in 0..k * k {
                        dww[t * mid + c] = dw[c * k * k + t] * scale[c];
                    }
                }
                let project = wts.pointwise(
                    &format!("{p}._project_conv"),
                    &format!("{p}._bn2"),
                    mid,
                    cout,
                )?;
                blocks.push(Block {
                    expand: expand_conv,
                    dw: Depthwise {
                        c: mid,
                        k,
                        stride,
                        w: dww,
                        b: shift,
                    },
                    project,
                    residual: stride == 1 && cin == cout,
                });
            }
        }
        let head = wts.pointwise("_conv_head", "_bn1", 320, FEATURE_DIM)?;
        let fc = wts.get("_fc.weight", &[CLASSES, FEATURE_DIM])?;
        let fc_b = wts.get("_fc.bias", &[CLASSES])?.to_vec();
        let mut fc_w = vec![0f32; FEATURE_DIM * CLASSES];
        for o in 0..CLASSES {
            for i in 0..FEATURE_DIM {
                fc_w[i * CLASSES + o] = fc[o * FEATURE_DIM + i];
            }
        }
        Ok(Self {
            stem: magpie_linalg::Conv1x1::new(&stem_w, &stem_b, 27, 32),
            blocks,
            head,
            fc_w,
            fc_b,
        })
    }

    /// A network of the right shape with pseudo-random weights (for benchmarks and
    /// tests that need the cost of a forward pass, not its meaning).
    pub fn random(seed: u64) -> Self {
        let mut x = seed | 1;
        let mut t = |name: String, shape: Vec<usize>, base: f32, scale: f32| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    base + scale * ((x % 2001) as f32 / 1000.0 - 1.0)
                })
                .collect();
            (name, TensorF32 { shape, data })
        };
        let mut sd = Vec::new();
        type Gen<'a> = dyn FnMut(String, Vec<usize>, f32, f32) -> (String, TensorF32) + 'a;
        let bn = |sd: &mut Vec<(String, TensorF32)>, t: &mut Gen, name: &str, c: usize| {
            sd.push(t(format!("{name}.weight"), vec![c], 1.0, 0.1));
            sd.push(t(format!("{name}.bias"), vec![c], 0.0, 0.1));
            sd.push(t(format!("{name}.running_mean"), vec![c], 0.0, 0.1));
            sd.push(t(format!("{name}.running_var"), vec![c], 1.0, 0.1));
        };
        sd.push(t("_conv_stem.weight".into(), vec![32, 3, 3, 3], 0.0, 0.1));
        bn(&mut sd, &mut t, "_bn0", 32);
        let mut i = 0;
        for &(repeats, k, _, expand, cin0, cout) in &STAGES {
            for r in 0..repeats {
                let cin = if r == 0 { cin0 } else { cout };
                let mid = cin * expand;
                let p = format!("_blocks.{i}");
                if expand != 1 {
                    sd.push(t(
                        format!("{p}._expand_conv.weight"),
                        vec![mid, cin, 1, 1],
                        0.0,
                        0.1,
                    ));
                    bn(&mut sd, &mut t, &format!("{p}._bn0"), mid);
                }
                sd.push(t(
                    format!("{p}._depthwise_conv.weight"),
                    vec![mid, 1, k, k],
                    0.0,
                    0.1,
                ));
                bn(&mut sd, &mut t, &format!("{p}._bn1"), mid);
                sd.push(t(
                    format!("{p}._project_conv.weight"),
                    vec![cout, mid, 1, 1],
                    0.0,
                    0.1,
                ));
                bn(&mut sd, &mut t, &format!("{p}._bn2"), cout);
                i += 1;
            }
        }
        sd.push(t(
            "_conv_head.weight".into(),
            vec![FEATURE_DIM, 320, 1, 1],
            0.0,
            0.1,
        ));
        bn(&mut sd, &mut t, "_bn1", FEATURE_DIM);
        sd.push(t(
            "_fc.weight".into(),
            vec![CLASSES, FEATURE_DIM],
            0.0,
            0.05,
        ));
        sd.push(t("_fc.bias".into(), vec![CLASSES], 0.0, 0.05));
        Self::from_state_dict(sd).expect("random weights have every tensor")
    }

    /// Loads `efficientnet-lite0.pth` (legacy `torch.save` format).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EmbedError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let err = |msg: String| EmbedError::Model {
            name: "efficientnet-lite0".into(),
            msg: format!("{}: {msg}", path.display()),
        };
        let sd = crate::torch::read_legacy_state_dict(&bytes).map_err(err)?;
        Self::from_state_dict(sd).map_err(err)
    }

    /// Runs the network on one preprocessed 224×224×3 (HWC) input.
    pub fn forward(&self, input: &[f32]) -> Lite0Output {
        assert_eq!(
            input.len(),
            INPUT * INPUT * 3,
            "Lite0 input must be 224×224×3"
        );
        // Stem: im2col (SAME padding) then one product.
        let (oh, pt) = same_pad(INPUT, 3, 2);
        let (ow, pl) = same_pad(INPUT, 3, 2);
        let mut cols = vec![0f32; oh * ow * 27];
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = &mut cols[(oy * ow + ox) * 27..][..27];
                for ky in 0..3 {
                    let iy = (oy * 2 + ky) as isize - pt as isize;
                    if iy < 0 || iy >= INPUT as isize {
                        continue;
                    }
                    for kx in 0..3 {
                        let ix = (ox * 2 + kx) as isize - pl as isize;
                        if ix < 0 || ix >= INPUT as isize {
                            continue;
                        }
                        let src = &input[(iy as usize * INPUT + ix as usize) * 3..][..3];
                        dst[(ky * 3 + kx) * 3..][..3].copy_from_slice(src);
                    }
                }
            }
        }
        let mut stem = scratch(oh * ow * 32);
        self.stem.forward(&cols, oh * ow, 0.0, 6.0, None, &mut stem);
        let mut x = Fm {
            h: oh,
            w: ow,
            c: 32,
            data: stem,
        };
        for b in &self.blocks {
            let h = match &b.expand {
                Some(e) => {
                    let wide = e.forward(&x, true, None);
                    let h = b.dw.forward(&wide);
                    recycle(wide);
                    h
                }
                None => b.dw.forward(&x),
            };
            let y = b.project.forward(&h, false, b.residual.then_some(&x));
            recycle(h);
            recycle(std::mem::replace(&mut x, y));
        }
        let head = self.head.forward(&x, true, None);
        recycle(x);
        let hw = head.h * head.w;
        let mut feature = vec![0f32; FEATURE_DIM];
        for px in head.px().chunks_exact(FEATURE_DIM) {
            for (f, v) in feature.iter_mut().zip(px) {
                *f += v;
            }
        }
        recycle(head);
        feature.iter_mut().for_each(|f| *f /= hw as f32);
        let mut logits = self.fc_b.clone();
        magpie_linalg::matmul(
            &feature,
            &self.fc_w,
            &mut logits,
            1,
            FEATURE_DIM,
            CLASSES,
            true,
        );
        Lite0Output { feature, logits }
    }
}

/// Softmax of logits (numerically stable).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224, k3, s2 → 112 with one pixel of padding in total, all of it after.
        assert_eq!(same_pad(224, 3, 2), (112, 0));
        // 112, k5, s2 → 56: total 3, 1 before and 2 after.
        assert_eq!(same_pad(112, 5, 2), (56, 1));
        assert_eq!(same_pad(14, 5, 1), (14, 2));
        assert_eq!(same_pad(7, 3, 1), (7, 1));
    }

    #[test]
    fn depthwise_matches_a_direct_convolution() {
        // 5×4 map, 3 channels, k=3, stride 2: compare with a per-channel loop over a
        // zero-padded input (SAME padding, extra pixel bottom/right).
        let (h, w, c, k, s) = (5usize, 4usize, 3usize, 3usize, 2usize);
        let data: Vec<f32> = (0..h * w * c)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let wt: Vec<f32> = (0..k * k * c).map(|i| ((i * 5) % 7) as f32 * 0.1).collect();
        let dw = Depthwise {
            c,
            k,
            stride: s,
            w: wt.clone(),
            b: vec![0.1, -0.2, 0.3],
        };
        let y = dw.forward(&Fm {
            h,
            w,
            c,
            data: data.clone(),
        });
        let (oh, pt) = same_pad(h, k, s);
        let (ow, pl) = same_pad(w, k, s);
        assert_eq!((y.h, y.w), (oh, ow));
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = dw.b[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - pt as isize;
                            let ix = (ox * s + kx) as isize - pl as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                acc += data[(iy as usize * w + ix as usize) * c + ch]
                                    * wt[(ky * k + kx) * c + ch];
                            }
                        }
                    }
                    let got = y.px()[(oy * ow + ox) * c + ch];
                    assert!((got - acc.clamp(0.0, 6.0)).abs() < 1e-5, "{got} vs {acc}");
                }
            }
        }
    }

    #[test]
    fn missing_or_misshapen_weights_are_named() {
        let e = Lite0::from_state_dict(Vec::new()).err().unwrap();
        assert!(e.contains("_conv_stem.weight"), "{e}");
        let e = Lite0::from_state_dict(vec![(
            "_conv_stem.weight".into(),
            TensorF32 {
                shape: vec![3, 3],
                data: vec![0.0; 9],
            },
        )])
        .err()
        .unwrap();
        assert!(e.contains("shape"), "{e}");
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0, 1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99);
    }

    #[test]
    fn random_network_runs_and_is_deterministic() {
        let net = Lite0::random(3);
        let x = vec![0.25f32; INPUT * INPUT * 3];
        let a = net.forward(&x);
        let b = Lite0::random(3).forward(&x);
        assert_eq!(a.feature.len(), FEATURE_DIM);
        assert_eq!(a.logits.len(), CLASSES);
        assert!(a.feature.iter().all(|v| v.is_finite()));
        assert_eq!(a.logits, b.logits);
    }

    /// Recycled buffers hold whatever the last pass left: fill the pool with NaN and
    /// check that a pass gives exactly what a pass on a fresh thread gives.
    #[test]
    fn recycled_buffers_do_not_leak_into_results() {
        let net = std::sync::Arc::new(Lite0::random(5));
        let x: Vec<f32> = (0..INPUT * INPUT * 3)
            .map(|i| ((i * 37) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let fresh = {
            let (net, x) = (net.clone(), x.clone());
            std::thread::spawn(move || net.forward(&x).logits)
                .join()
                .unwrap()
        };
        for n in [1usize << 22, 1 << 21, 1 << 20, 1 << 16, 1 << 12] {
            SCRATCH.with(|s| s.borrow_mut().push(vec![f32::NAN; n]));
        }
        let again = net.forward(&x);
        assert!(again.feature.iter().all(|v| v.is_finite()));
        assert_eq!(again.logits, fresh);
        assert_eq!(
            net.forward(&x).logits,
            fresh,
            "and a second pass on the same pool"
        );
    }
}
