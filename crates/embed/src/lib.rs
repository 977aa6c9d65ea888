//! Embedding models for Magpie: image decoding with limits, each model's exact
//! preprocessing, model files fetched from PyPI (no model hub), and inference with candle.
//! The engine never depends on this crate; the server wires models into collections.

pub mod clip;
pub mod effnet;
pub mod image;
pub mod models;
pub mod resize;
pub mod text;
pub mod torch;
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
