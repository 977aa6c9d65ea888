//! Magpie's applications, built on the engine's public calls only: the image app
//! (folder index, text/image/more-like-this search, duplicates), the text app (documents
//! split into passages, searched by BM25, dense embeddings or both) and the model
//! embedder that the engine's schema functions call.
//!
//! The HTTP server and the CLI are thin layers over this crate: they parse requests or
//! arguments, call these functions and render [`AppError`] as a status.

pub mod describe;
pub mod dupcal;
pub mod embedder;
pub mod error;
pub mod images;
pub mod text;
pub mod uploads;
pub mod walk;

pub use error::{AppError, Result};
