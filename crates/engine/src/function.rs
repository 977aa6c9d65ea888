//! Embedding functions in the schema (Milvus 2.6's `functions`): a collection may declare
//! that a vector field is computed from a text field by a model. Inserts then carry the
//! text and the engine fills the vector; a search may carry text instead of a vector.
//!
//! The engine does not know any model: it calls an [`Embedder`] that the embedding
//! process (the server) installs with [`crate::Engine::set_embedder`], so the engine
//! stays testable without weights. Vectors are computed before the write is logged, so
//! the WAL holds them and recovery never re-embeds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionKind {
    TextEmbedding,
    ImageEmbedding,
    /// Term frequencies of an analyzed VarChar field into a SparseFloatVector field,
    /// searched with BM25 (no model; see [`crate::analyzer`]).
    BM25,
}

impl FunctionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FunctionKind::TextEmbedding => "TextEmbedding",
            FunctionKind::ImageEmbedding => "ImageEmbedding",
            FunctionKind::BM25 => "BM25",
        }
    }
}

/// One function of a schema, in Milvus's JSON shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub input_field_names: Vec<String>,
    pub output_field_names: Vec<String>,
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl FunctionSchema {
    /// The `model` parameter (required).
    pub fn model(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("model") || k.eq_ignore_ascii_case("model_name"))
            .and_then(|(_, v)| v.as_str())
    }
    pub fn input(&self) -> &str {
        &self.input_field_names[0]
    }
    pub fn output(&self) -> &str {
        &self.output_field_names[0]
    }
}

/// An image given to an ImageEmbedding function.
#[derive(Clone, Copy, Debug)]
pub enum ImageInput<'a> {
    /// The input field's stored value: a file path (which the embedder resolves against
    /// the image roots it allows) or a `data:image/...;base64,...` URI.
    Stored(&'a str),
    /// Encoded image bytes (an uploaded query image).
    Bytes(&'a [u8]),
}

/// Embedding models, as the engine sees them. Errors are messages for the user: they
/// name the model and, when it is missing, how to install it.
pub trait Embedder: Send + Sync {
    /// Output dimension of `model` for functions of `kind`.
    fn dim(&self, kind: FunctionKind, model: &str) -> Result<usize, String>;
    /// Unit-length vectors of `texts`, in order. For an image model this embeds text
    /// queries into the model's image space (ConSE, CLIP), or explains that the model
    /// cannot.
    fn embed_texts(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
    /// Unit-length vectors of search queries. Models trained with different prefixes for
    /// queries and documents (e5's `query: ` / `passage: `) embed them differently; for
    /// the others this is [`Embedder::embed_texts`].
    fn embed_queries(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.embed_texts(model, texts)
    }
    /// Vectors of `images`, in order: the outer error is about the model (not installed,
    /// not an image model), the inner ones about single images (unreadable, corrupt,
    /// outside the allowed roots), so that a caller can tell which row failed.
    fn embed_images(
        &self,
        model: &str,
        images: &[ImageInput<'_>],
    ) -> Result<Vec<Result<Vec<f32>, String>>, String> {
        let _ = images;
        Err(format!("model '{model}' cannot embed images"))
    }
}
