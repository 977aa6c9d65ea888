//! Sentence encoders. all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, English) with candle: the
//! sentence vector is the mean of the last hidden states over the attention mask,
//! L2-normalised (the model's `1_Pooling/config.json` and `Normalize` module). The
//! bundled tokenizer pads every input to 128 tokens; that padding is turned off and each
//! batch is padded to its own longest input instead (the README measured ~10× faster for
//! short inputs). multilingual-e5-small ([`crate::e5`]) and the multilingual Universal
//! Sentence Encoder ([`crate::use_m3`]) sit behind the same type: a directory holding
//! their files loads them. [`TextEncoder::ensemble`] joins encoders into one (weighted
//! concatenation of their unit vectors).

use crate::e5::{Role, E5};
use crate::use_m3::UseM3;
use crate::{EmbedError, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Longest input in tokens (sentence-transformers' `max_seq_length` for this model).
pub const MAX_TOKENS: usize = 256;

pub struct TextEncoder {
    name: String,
    kind: Kind,
    dim: usize,
}

// One value per loaded model, kept for the process's life: the variants' sizes differ,
// and boxing either saves nothing that matters.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Bert {
        model: BertModel,
        tokenizer: Tokenizer,
        device: Device,
    },
    E5(E5),
    Use(UseM3),
    /// Parts and their weights (summing to 1).
    Ensemble(Vec<(Arc<TextEncoder>, f32)>),
}

impl TextEncoder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`, or
    /// multilingual-e5-small's `e5-small-q4.bin`, or USE's `sp.model` and `weights.npz`,
    /// where that is what `dir` holds.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        if dir.join(crate::use_m3::WEIGHTS_FILE).is_file()
            && dir.join(crate::use_m3::SP_FILE).is_file()
        {
            let m = UseM3::load(name, dir)?;
            return Ok(Self {
                name: name.to_string(),
                dim: m.dim(),
                kind: Kind::Use(m),
            });
        }
        if dir.join(crate::e5::FILE).is_file() {
            let e5 = E5::load(name, dir)?;
            return Ok(Self {
                name: name.to_string(),
                dim: e5.dim(),
                kind: Kind::E5(e5),
            });
        }
        let err = |msg: String| EmbedError::Model {
            name: name.to_string(),
            msg,
        };
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| EmbedError::Io {
            path: cfg_path.clone(),
            source: e,
        })?;
        let config: Config = serde_json::from_str(&cfg_text)
            .map_err(|e| err(format!("{}: {e}", cfg_path.display())))?;
        let device = Device::Cpu;
        let vb = crate::mmap_weights(name, &dir.join("model.safetensors"))?;
        let model = BertModel::load(vb, &config).map_err(|e| err(e.to_string()))?;
        let tokenizer = crate::load_tokenizer(name, &dir.join("tokenizer.json"), MAX_TOKENS)?;
        Ok(Self {
            name: name.to_string(),
            kind: Kind::Bert {
                model,
                tokenizer,
                device,
            },
            dim: config.hidden_size,
        })
    }

    /// The built-in text model `name` from `store`: its files, or for an ensemble
    /// ([`crate::models::ensemble`]) its parts, each from its own files.
    pub fn open(store: &crate::models::ModelStore, name: &str) -> Result<Self> {
        let dir = store.require(name)?;
        match crate::models::ensemble(name) {
            Some(parts) => {
                let parts = parts
                    .iter()
                    .map(|&(p, w)| Ok((Arc::new(Self::open(store, p)?), w)))
                    .collect::<Result<Vec<_>>>()?;
                Self::ensemble(name, parts)
            }
            None => Self::load(name, &dir),
        }
    }

    /// One encoder made of `parts` with their weights (which must be positive; they are
    /// scaled to sum to 1): a text's vector is each part's unit vector times the square
    /// root of its weight, concatenated, so it has unit length and its cosine to another
    /// is the weighted sum of the parts' cosines.
    pub fn ensemble(name: &str, parts: Vec<(Arc<TextEncoder>, f32)>) -> Result<Self> {
        let total: f32 = parts.iter().map(|p| p.1).sum();
        if parts.is_empty() || parts.iter().any(|p| p.1 <= 0.0 || !p.1.is_finite()) {
            return Err(EmbedError::Model {
                name: name.to_string(),
                msg: "an ensemble needs parts with positive weights".into(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            dim: parts.iter().map(|p| p.0.dim()).sum(),
            kind: Kind::Ensemble(parts.into_iter().map(|(e, w)| (e, w / total)).collect()),
        })
    }

    /// The dimensions and weights of the parts of the vector: one `(dim, 1.0)` for a
    /// single model, one per part for an ensemble.
    pub fn parts(&self) -> Vec<(usize, f32)> {
        match &self.kind {
            Kind::Ensemble(p) => p.iter().map(|(e, w)| (e.dim(), *w)).collect(),
            _ => vec![(self.dim, 1.0)],
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Unit-length sentence vectors of documents (stored texts, class prompts), one per
    /// input, batched.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_as(texts, Role::Passage)
    }

    /// Unit-length sentence vectors of search queries. The same as [`Self::embed`] for a
    /// symmetric model (MiniLM); e5 prefixes queries and documents differently.
    pub fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_as(texts, Role::Query)
    }

    fn embed_as(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (model, tokenizer, device) = match &self.kind {
            Kind::E5(e5) => return e5.embed(texts, role),
            Kind::Use(m) => return m.embed(texts),
            Kind::Ensemble(parts) => {
                let weights: Vec<f32> = parts.iter().map(|p| p.1).collect();
                let per_part = parts
                    .iter()
                    .map(|(enc, _)| enc.embed_as(texts, role))
                    .collect::<Result<Vec<_>>>()?;
                return Ok((0..texts.len())
                    .map(|i| {
                        let vs: Vec<&[f32]> = per_part.iter().map(|p| p[i].as_slice()).collect();
                        join_parts(&vs, &weights)
                    })
                    .collect());
            }
            Kind::Bert {
                model,
                tokenizer,
                device,
            } => (model, tokenizer, device),
        };
        let err = |msg: String| EmbedError::Model {
            name: self.name.clone(),
            msg,
        };
        let enc = tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| err(format!("tokenizing: {e}")))?;
        let len = enc
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let b = enc.len();
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0u32; b * len];
        for (i, e) in enc.iter().enumerate() {
            for (j, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[i * len + j] = id;
                mask[i * len + j] = m;
            }
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids_t = Tensor::from_vec(ids, (b, len), device)?;
            let mask_t = Tensor::from_vec(mask, (b, len), device)?;
            let types = ids_t.zeros_like()?;
            let hidden = model.forward(&ids_t, &types, Some(&mask_t))?; // (b, len, h)
            let m = mask_t.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (b, h)
            let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // (b, 1)
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        run().map_err(|e| err(e.to_string()))
    }
}

/// An ensemble's vector from its parts' unit vectors and weights: each part times the
/// square root of its share of the weights, one after the other (see
/// [`TextEncoder::ensemble`]).
pub fn join_parts(parts: &[&[f32]], weights: &[f32]) -> Vec<f32> {
    let total: f32 = weights.iter().sum();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for (p, w) in parts.iter().zip(weights) {
        let s = (w / total).sqrt();
        out.extend(p.iter().map(|x| x * s));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn joined_parts_have_unit_length_and_weighted_cosines() {
        let (a1, b1) = ([1.0f32, 0.0], [0.0f32, 1.0, 0.0]);
        let (a2, b2) = ([0.6f32, 0.8], [0.0f32, 0.0, 1.0]);
        let w = [3.0, 1.0];
        let x = super::join_parts(&[&a1, &b1], &w);
        let y = super::join_parts(&[&a2, &b2], &w);
        assert_eq!(x.len(), 5);
        assert!((x.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-6);
        // cos = 0.75·0.6 + 0.25·0
        let c: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((c - 0.45).abs() < 1e-6, "{c}");
    }
}
