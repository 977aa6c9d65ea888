//! Sentence encoders. all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, English) with candle: the
//! sentence vector is the mean of the last hidden states over the attention mask,
//! L2-normalised (the model's `1_Pooling/config.json` and `Normalize` module). The
//! bundled tokenizer pads every input to 128 tokens; that padding is turned off and each
//! batch is padded to its own longest input instead (the README measured ~10× faster for
//! short inputs). multilingual-e5-small ([`crate::e5`]) sits behind the same type: a
//! directory holding its file loads it.

use crate::e5::{Role, E5};
use crate::{EmbedError, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
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
}

impl TextEncoder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`, or
    /// multilingual-e5-small's `e5-small-q4.bin` where that is what `dir` holds.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
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
