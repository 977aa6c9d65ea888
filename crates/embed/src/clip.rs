//! CLIP (ViT image encoder + causal text encoder into one space) for users who have the
//! weights in the usual layout: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `preprocessor_config.json`. The network is candle's `models::clip`; this module reads
//! the configuration files (with the library's documented defaults for missing keys), and
//! applies the model's own preprocessing: resize the shorter side to `size`
//! (`shortest_edge`), bicubic, centre-crop `crop_size`, scale by `rescale_factor`, then
//! normalise with `image_mean` / `image_std`.
//!
//! Checked against an independent numpy implementation on small generated weights (the
//! fixture in `tests/fixtures/clip-tiny`, made by its `make.py`).

use crate::{EmbedError, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::clip::{text_model, vision_model, ClipConfig, ClipModel};
use image::RgbImage;
use serde_json::Value;
use std::path::Path;
use tokenizers::Tokenizer;

/// The files a CLIP model directory must hold.
pub const FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "preprocessor_config.json",
];

/// CLIP's published normalisation, the defaults when the configuration omits them
/// (written as published, beyond f32 precision).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Preprocessing taken from `preprocessor_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    pub shortest_edge: u32,
    pub crop: (u32, u32),
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ClipPreprocess {
    /// Parses the Hugging Face image processor configuration (both the old integer and
    /// the newer `{"shortest_edge": n}` / `{"height", "width"}` forms).
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let num = |x: &Value| x.as_u64().map(|n| n as u32);
        let shortest_edge = match v.get("size") {
            Some(s) if s.is_number() => num(s),
            Some(s) => s.get("shortest_edge").and_then(num),
            None => Some(224),
        }
        .ok_or("preprocessor_config.json: 'size' is not understood")?;
        let crop = match v.get("crop_size") {
            Some(c) if c.is_number() => num(c).map(|n| (n, n)),
            Some(c) => c
                .get("height")
                .and_then(num)
                .zip(c.get("width").and_then(num)),
            None => Some((shortest_edge, shortest_edge)),
        }
        .ok_or("preprocessor_config.json: 'crop_size' is not understood")?;
        let three = |k: &str, d: [f32; 3]| -> std::result::Result<[f32; 3], String> {
            match v.get(k) {
                None => Ok(d),
                Some(a) => {
                    let a: Vec<f32> = a
                        .as_array()
                        .ok_or(format!("preprocessor_config.json: '{k}' is not a list"))?
                        .iter()
                        .filter_map(|x| x.as_f64().map(|f| f as f32))
                        .collect();
                    a.try_into()
                        .map_err(|_| format!("preprocessor_config.json: '{k}' needs 3 numbers"))
                }
            }
        };
        Ok(Self {
            shortest_edge,
            crop,
            rescale: v
                .get("rescale_factor")
                .and_then(|x| x.as_f64())
                .unwrap_or(1.0 / 255.0) as f32,
            mean: three("image_mean", CLIP_MEAN)?,
            std: three("image_std", CLIP_STD)?,
        })
    }

    /// CHW floats of `img`.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let s = self.shortest_edge as f64 / w.min(h).max(1) as f64;
        let nw = ((w as f64 * s).round() as u32).max(self.crop.1);
        let nh = ((h as f64 * s).round() as u32).max(self.crop.0);
        let (ch, cw) = self.crop;
        let (x0, y0) = ((nw - cw) / 2, (nh - ch) / 2);
        let px = crate::resize::resize_crop(img, nw, nh, x0, y0, cw, ch);
        let plane = (ch * cw) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in px.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (p[c] as f32 * self.rescale - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// Builds candle's configuration from a Hugging Face CLIP `config.json`.
pub fn config_from_json(v: &Value) -> std::result::Result<ClipConfig, String> {
    let t = v.get("text_config").cloned().unwrap_or(Value::Null);
    let vi = v.get("vision_config").cloned().unwrap_or(Value::Null);
    let get =
        |o: &Value, k: &str, d: usize| o.get(k).and_then(|x| x.as_u64()).map_or(d, |x| x as usize);
    for (name, o) in [("text_config", &t), ("vision_config", &vi)] {
        match o.get("hidden_act").and_then(|x| x.as_str()) {
            None | Some("quick_gelu") => {}
            Some(a) => {
                return Err(format!(
                    "config.json: {name}.hidden_act '{a}' is not supported (CLIP uses quick_gelu)"
                ))
            }
        }
    }
    let projection_dim = get(v, "projection_dim", 512);
    let text_config = text_model::ClipTextConfig {
        vocab_size: get(&t, "vocab_size", 49408),
        embed_dim: get(&t, "hidden_size", 512),
        activation: text_model::Activation::QuickGelu,
        intermediate_size: get(&t, "intermediate_size", 2048),
        max_position_embeddings: get(&t, "max_position_embeddings", 77),
        pad_with: None,
        num_hidden_layers: get(&t, "num_hidden_layers", 12),
        num_attention_heads: get(&t, "num_attention_heads", 8),
        projection_dim,
    };
    let image_size = get(&vi, "image_size", 224);
    let vision_config = vision_model::ClipVisionConfig {
        embed_dim: get(&vi, "hidden_size", 768),
        activation: text_model::Activation::QuickGelu,
        intermediate_size: get(&vi, "intermediate_size", 3072),
        num_hidden_layers: get(&vi, "num_hidden_layers", 12),
        num_attention_heads: get(&vi, "num_attention_heads", 12),
        projection_dim,
        num_channels: get(&vi, "num_channels", 3),
        image_size,
        patch_size: get(&vi, "patch_size", 32),
    };
    if vision_config.patch_size == 0 || image_size % vision_config.patch_size != 0 {
        return Err(format!(
            "config.json: image_size {image_size} is not a multiple of patch_size {}",
            vision_config.patch_size
        ));
    }
    Ok(ClipConfig {
        text_config,
        vision_config,
        logit_scale_init_value: v
            .get("logit_scale_init_value")
            .and_then(|x| x.as_f64())
            .unwrap_or(2.6592) as f32,
        image_size,
    })
}

/// A loaded CLIP model.
pub struct Clip {
    name: String,
    model: ClipModel,
    tokenizer: Tokenizer,
    pre: ClipPreprocess,
    image_size: usize,
    max_tokens: usize,
    dim: usize,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EmbedError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| EmbedError::Model {
        name: "clip".into(),
        msg: format!("{}: {e}", path.display()),
    })
}

impl Clip {
    /// Loads the four files from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        let err = |msg: String| EmbedError::Model {
            name: name.to_string(),
            msg,
        };
        for f in FILES {
            if !dir.join(f).is_file() {
                return Err(err(format!("{} is missing", dir.join(f).display())));
            }
        }
        let config = config_from_json(&read_json(&dir.join("config.json"))?).map_err(err)?;
        let pre = ClipPreprocess::from_json(&read_json(&dir.join("preprocessor_config.json"))?)
            .map_err(err)?;
        if pre.crop != (config.image_size as u32, config.image_size as u32) {
            return Err(err(format!(
                "preprocessor crop {:?} does not match the model's image_size {}",
                pre.crop, config.image_size
            )));
        }
        let weights = dir.join("model.safetensors");
        let vb = crate::mmap_weights(name, &weights)?;
        let model =
            ClipModel::new(vb, &config).map_err(|e| err(format!("{}: {e}", weights.display())))?;
        let max_tokens = config.text_config.max_position_embeddings;
        let tokenizer = crate::load_tokenizer(name, &dir.join("tokenizer.json"), max_tokens)?;
        Ok(Self {
            name: name.to_string(),
            model,
            tokenizer,
            pre,
            image_size: config.image_size,
            max_tokens,
            dim: config.text_config.projection_dim,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    fn err(&self, e: impl std::fmt::Display) -> EmbedError {
        EmbedError::Model {
            name: self.name.clone(),
            msg: e.to_string(),
        }
    }

    /// Unit-length text vectors. Texts run one at a time: the pooled token is the
    /// end-of-text token, found as the largest id, which padding would repeat.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self
                .tokenizer
                .encode(*t, true)
                .map_err(|e| self.err(format!("tokenizing: {e}")))?;
            let ids: Vec<u32> = enc
                .get_ids()
                .iter()
                .take(self.max_tokens)
                .copied()
                .collect();
            if ids.is_empty() {
                return Err(self.err("the text tokenizes to nothing"));
            }
            let run = || -> candle_core::Result<Vec<f32>> {
                let n = ids.len();
                let t = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu)?;
                let f = self.model.get_text_features(&t)?;
                unit(f)
            };
            out.push(run().map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Unit-length image vectors of decoded images.
    pub fn embed_images(&self, imgs: &[&RgbImage]) -> Result<Vec<Vec<f32>>> {
        let s = self.image_size;
        imgs.iter()
            .map(|img| {
                let px = self.pre.apply(img);
                let run = || -> candle_core::Result<Vec<f32>> {
                    let t = Tensor::from_vec(px, (1, 3, s, s), &Device::Cpu)?;
                    unit(self.model.get_image_features(&t)?)
                };
                run().map_err(|e| self.err(e))
            })
            .collect()
    }
}

fn unit(f: Tensor) -> candle_core::Result<Vec<f32>> {
    let mut v = f.flatten_all()?.to_vec1::<f32>()?;
    magpie_linalg::normalize(&mut v);
    Ok(v)
}

/// Where a Hugging Face model would be in the local hub cache
/// (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`): the newest snapshot
/// directory of `repo` (e.g. `openai/clip-vit-base-patch32`) that holds every file.
pub fn hub_cache_dir(repo: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("HF_HUB_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| std::path::PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/huggingface/hub"))
        })?;
    let snaps = base
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots");
    let mut dirs: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(snaps)
        .ok()?
        .flatten()
        .filter(|e| FILES.iter().all(|f| e.path().join(f).exists()))
        .map(|e| {
            (
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                e.path(),
            )
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn preprocessor_config_forms() {
        let p = ClipPreprocess::from_json(&json!({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
            "rescale_factor": 0.00392156862745098, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})).unwrap();
        assert_eq!(
            (p.shortest_edge, p.crop, p.mean),
            (224, (224, 224), [0.5; 3])
        );
        let p = ClipPreprocess::from_json(&json!({"size": 224, "crop_size": 224})).unwrap();
        assert_eq!(p.crop, (224, 224));
        assert_eq!(p.mean, CLIP_MEAN);
        let e = ClipPreprocess::from_json(&json!({"image_mean": [1, 2]})).unwrap_err();
        assert!(e.contains("3 numbers"), "{e}");
    }

    #[test]
    fn preprocessing_resizes_crops_and_normalises() {
        let p = ClipPreprocess {
            shortest_edge: 4,
            crop: (4, 4),
            rescale: 1.0 / 255.0,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
        };
        // 8×4 image, left half black, right half white: the shorter side is already 4,
        // so only the centre 4×4 crop (columns 2..6) remains.
        let img = RgbImage::from_fn(8, 4, |x, _| {
            if x < 4 {
                image::Rgb([0; 3])
            } else {
                image::Rgb([255; 3])
            }
        });
        let v = p.apply(&img);
        assert_eq!(v.len(), 48);
        assert_eq!(&v[..4], &[-1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c = config_from_json(&json!({"text_config": {}, "vision_config": {"patch_size": 16}}))
            .unwrap();
        assert_eq!(
            (
                c.text_config.embed_dim,
                c.vision_config.embed_dim,
                c.vision_config.patch_size
            ),
            (512, 768, 16)
        );
        let e = config_from_json(&json!({"vision_config": {"hidden_act": "gelu"}}))
            .err()
            .unwrap();
        assert!(e.contains("quick_gelu"), "{e}");
        let e = config_from_json(&json!({"vision_config": {"image_size": 30, "patch_size": 8}}))
            .err()
            .unwrap();
        assert!(e.contains("multiple"), "{e}");
    }
}
