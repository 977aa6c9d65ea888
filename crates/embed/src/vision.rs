//! Image embeddings: EfficientNet-Lite0 with its exact preprocessing, and ConSE, which
//! puts images into the sentence encoder's space so that text can search images.

use crate::effnet::{softmax, Lite0, Lite0Output, CLASSES, INPUT};
use crate::text::TextEncoder;
use crate::{EmbedError, Result};
use image::RgbImage;
use std::path::Path;
use std::sync::OnceLock;

/// The 1000 ImageNet-1k class names in index order.
pub fn imagenet_classes() -> &'static [&'static str] {
    static C: OnceLock<Vec<&'static str>> = OnceLock::new();
    C.get_or_init(|| {
        include_str!("../assets/imagenet_classes.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Lite0's preprocessing: resize so the shorter side is 224 (bicubic), centre-crop
/// 224×224, and map each channel value x to (x − 127) / 128 (the TF-Lite convention).
/// Returns HWC floats. Of the variants tried (shorter side 256 or 224, bilinear or
/// bicubic, or squashing to 224×224), this one reproduces the reference flag
/// similarities of `shared/models/README.md` to three decimals.
pub fn lite0_input(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1) as f64;
    let scale = INPUT as f64 / short;
    let nw = ((w as f64 * scale).round() as u32).max(INPUT as u32);
    let nh = ((h as f64 * scale).round() as u32).max(INPUT as u32);
    let x0 = (nw - INPUT as u32) / 2;
    let y0 = (nh - INPUT as u32) / 2;
    let px = crate::resize::resize_crop(img, nw, nh, x0, y0, INPUT as u32, INPUT as u32);
    px.iter().map(|&v| (v as f32 - 127.0) / 128.0).collect()
}

/// EfficientNet-Lite0 with its preprocessing.
pub struct ImageEncoder {
    net: Lite0,
}

impl ImageEncoder {
    /// Loads `efficientnet-lite0.pth` from the model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(Self {
            net: Lite0::load(&dir.join("efficientnet-lite0.pth"))?,
        })
    }

    /// Pooled feature and class logits of one decoded image (on the calling thread).
    pub fn run(&self, img: &RgbImage) -> Lite0Output {
        self.net.forward(&lite0_input(img))
    }
}

/// ConSE (Norouzi et al., 2014): an image's vector is Σ over its top-`TOP` ImageNet
/// classes of p(class) · T("a photo of a {class}"), renormalised, where T is the
/// sentence encoder; a text query is T(text). Both live in T's space.
pub struct Conse {
    dim: usize,
    /// `CLASSES × dim` unit vectors of the class prompts.
    prompts: Vec<f32>,
    /// The text model's parts (dimension, weight): an ensemble's image vector is
    /// normalised part by part, then each part scaled by the root of its weight, as its
    /// queries are, so that a cosine is the weighted sum of the parts' cosines.
    parts: Vec<(usize, f32)>,
}

impl Conse {
    /// Classes that contribute to an image's vector.
    pub const TOP: usize = 10;

    /// The prompt embedded for a class.
    pub fn prompt(class: &str) -> String {
        format!("a photo of a {class}")
    }

    /// Embeds the 1000 class prompts with `text`. When `cache` is given, the vectors are
    /// read from it if present and valid, else computed and written there.
    pub fn build(text: &TextEncoder, cache: Option<&Path>) -> Result<Self> {
        let dim = text.dim();
        let parts = text.parts();
        if let Some(c) = cache {
            if let Ok(bytes) = std::fs::read(c) {
                if bytes.len() == CLASSES * dim * 4 {
                    let prompts = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    return Ok(Self {
                        dim,
                        prompts,
                        parts,
                    });
                }
            }
        }
        let classes = imagenet_classes();
        if classes.len() != CLASSES {
            return Err(EmbedError::Model {
                name: "conse".into(),
                msg: format!("expected {CLASSES} class names, have {}", classes.len()),
            });
        }
        let texts: Vec<String> = classes.iter().map(|c| Self::prompt(c)).collect();
        let mut prompts = Vec::with_capacity(CLASSES * dim);
        for chunk in texts.chunks(32) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            for v in text.embed(&refs)? {
                prompts.extend(v);
            }
        }
        if let Some(c) = cache {
            // A cache is an optimisation: failing to write it is not an error.
            let bytes: Vec<u8> = prompts.iter().flat_map(|x| x.to_le_bytes()).collect();
            let tmp = c.with_extension("partial");
            if let Some(d) = c.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, c);
            }
        }
        Ok(Self {
            dim,
            prompts,
            parts,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The image's ConSE vector from its class logits (unit length).
    pub fn image_vector(&self, logits: &[f32]) -> Vec<f32> {
        let p = softmax(logits);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.select_nth_unstable_by(Self::TOP - 1, |a, b| p[*b].total_cmp(&p[*a]));
        let mut v = vec![0f32; self.dim];
        for &c in &idx[..Self::TOP] {
            let t = &self.prompts[c * self.dim..][..self.dim];
            for (o, x) in v.iter_mut().zip(t) {
                *o += p[c] * x;
            }
        }
        let mut rest = &mut v[..];
        for &(d, w) in &self.parts {
            let (part, tail) = rest.split_at_mut(d.min(rest.len()));
            magpie_linalg::normalize(part);
            if self.parts.len() > 1 {
                let s = w.sqrt();
                part.iter_mut().for_each(|x| *x *= s);
            }
            rest = tail;
        }
        v
    }
}

/// Top-`k` (class index, probability) pairs of logits, most probable first.
pub fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let p = softmax(logits);
    let mut idx: Vec<(usize, f32)> = p.into_iter().enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx
}

/// Applies `f` to every item on `threads` worker threads (one item per thread at a time,
/// each item on one thread: the model code is single-threaded), keeping input order.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.max(1).min(items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item mapped"))
        .collect()
}

/// Worker threads for inference by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_the_imagenet_list() {
        let c = imagenet_classes();
        assert_eq!(c.len(), CLASSES);
        assert_eq!(c[0], "tench");
        assert_eq!(c[1], "goldfish");
    }

    #[test]
    fn preprocessing_resizes_crops_and_scales() {
        // 300×200 with a left half black and right half white: shorter side → 224, so
        // 336×224, centre crop 224: the crop's left and right edges keep the halves.
        let img = RgbImage::from_fn(300, 200, |x, _| {
            if x < 150 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let x = lite0_input(&img);
        assert_eq!(x.len(), 224 * 224 * 3);
        assert!((x[0] - (-127.0 / 128.0)).abs() < 1e-6);
        let last = x[(224 * 224 - 1) * 3];
        assert!((last - 1.0).abs() < 1e-6, "{last}");
    }

    #[test]
    fn par_map_keeps_order() {
        let v: Vec<usize> = (0..100).collect();
        assert_eq!(
            par_map(&v, 4, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(par_map(&[] as &[usize], 4, |x| *x).is_empty());
    }

    #[test]
    fn conse_weights_prompts_by_probability() {
        let dim = 4;
        let mut prompts = vec![0f32; CLASSES * dim];
        prompts[0] = 1.0; // class 0 → e0
        prompts[dim + 1] = 1.0; // class 1 → e1
        let c = Conse {
            dim,
            prompts,
            parts: vec![(dim, 1.0)],
        };
        let mut logits = vec![-10f32; CLASSES];
        logits[0] = 5.0;
        logits[1] = 5.0 + 3f32.ln(); // p1 = 3·p0
        let v = c.image_vector(&logits);
        assert!((v[1] / v[0] - 3.0).abs() < 1e-3, "{v:?}");
        assert!((magpie_linalg::norm(&v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn an_ensembles_image_vector_is_normalised_part_by_part() {
        // Two parts of 2 dimensions, weights 0.25 and 0.75; the prompts' second part is
        // ten times longer than the first (as if one encoder's vectors were larger).
        let dim = 4;
        let mut prompts = vec![0f32; CLASSES * dim];
        prompts[..4].copy_from_slice(&[1.0, 0.0, 10.0, 0.0]);
        prompts[4..8].copy_from_slice(&[0.0, 1.0, 0.0, 10.0]);
        let c = Conse {
            dim,
            prompts,
            parts: vec![(2, 0.25), (2, 0.75)],
        };
        let mut logits = vec![-10f32; CLASSES];
        logits[0] = 5.0;
        logits[1] = 5.0;
        let v = c.image_vector(&logits);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want = [0.5 * h, 0.5 * h, 0.75f32.sqrt() * h, 0.75f32.sqrt() * h];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{v:?} vs {want:?}");
        }
        // A query made as an ensemble makes it: (√0.25·a, √0.75·b) with unit a and b.
        // Its cosine is 0.25·cos(a) + 0.75·cos(b).
        let q = [0.5, 0.0, 0.0, 0.75f32.sqrt()];
        let dot: f32 = q.iter().zip(&v).map(|(x, y)| x * y).sum();
        assert!((dot - (0.25 * h + 0.75 * h)).abs() < 1e-5, "{dot}");
    }
}
