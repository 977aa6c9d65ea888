//! Embedding models for Magpie: image decoding, each model's exact preprocessing, model
//! loading and inference. Empty until the built-in models land; the engine never depends
//! on this crate (it calls embedding functions through a trait the server provides).
