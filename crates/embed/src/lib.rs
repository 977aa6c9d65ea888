//! Embedding models for Magpie: image decoding with limits, each model's exact
//! preprocessing, model files fetched from PyPI (no model hub), and inference with candle.
//! The engine never depends on this crate; the server wires models into collections.

pub mod clip;
pub mod e5;
pub mod effnet;
pub mod image;
pub mod models;
pub mod resize;
pub mod text;
pub mod torch;
pub mod use_m3;
pub mod vision;

use std::path::PathBuf;

/// Errors of this crate. File errors carry their path; model errors name the model and
/// the command that fetches it.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{name}: cannot decode image: {msg}")]
    Image { name: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model '{name}' is not installed in {dir}; run `magpie models fetch {name}`")]
    MissingModel { name: String, dir: PathBuf },
    #[error("unknown model '{0}'; `magpie models list` shows the built-in ones")]
    UnknownModel(String),
    #[error("{path}: sha256 {got} does not match the expected {want}")]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("fetching '{name}': {msg}")]
    Fetch { name: String, msg: String },
    #[error("model '{name}': {msg}")]
    Model { name: String, msg: String },
}

pub type Result<T> = std::result::Result<T, EmbedError>;

/// Memory-maps a safetensors file as F32 weights on the CPU.
pub(crate) fn mmap_weights(
    name: &str,
    path: &std::path::Path,
) -> Result<candle_nn::VarBuilder<'static>> {
    // SAFETY: the weights file is memory-mapped read-only and not modified while the
    // model lives (the model store replaces directories, never files in place).
    unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[path],
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
    }
    .map_err(|e| EmbedError::Model {
        name: name.to_string(),
        msg: format!("{}: {e}", path.display()),
    })
}

/// Loads `tokenizer.json` without its padding (batches are padded to their own longest
/// input, or not at all) and truncating at `max_tokens`.
pub(crate) fn load_tokenizer(
    name: &str,
    path: &std::path::Path,
    max_tokens: usize,
) -> Result<tokenizers::Tokenizer> {
    let err = |msg: String| EmbedError::Model {
        name: name.to_string(),
        msg,
    };
    let mut tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_tokens,
        ..Default::default()
    }))
    .map_err(|e| err(e.to_string()))?;
    Ok(tok)
}
