//! The [`Embedder`] the server gives the engine: built-in models from the model store,
//! loaded on first use and kept. Model names are matched case-insensitively, with or
//! without the `sentence-transformers/` prefix.

use magpie_embed::models::{self, ModelStore};
use magpie_embed::text::TextEncoder;
use magpie_engine::{Embedder, FunctionKind};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub struct ModelEmbedder {
    store: ModelStore,
    text: Mutex<HashMap<String, Arc<TextEncoder>>>,
}

impl ModelEmbedder {
    pub fn new(store: ModelStore) -> Self {
        Self {
            store,
            text: Mutex::new(HashMap::new()),
        }
    }

    fn canonical(model: &str) -> String {
        let m = model.trim().to_ascii_lowercase();
        m.strip_prefix("sentence-transformers/")
            .unwrap_or(&m)
            .to_string()
    }

    fn text_model(&self, model: &str) -> Result<Arc<TextEncoder>, String> {
        let name = Self::canonical(model);
        if let Some(e) = self.text.lock().get(&name) {
            return Ok(e.clone());
        }
        let spec = models::spec(&name).map_err(|e| e.to_string())?;
        if spec.kind != "text" {
            return Err(format!("model '{name}' is not a text model"));
        }
        let dir = self.store.require(&name).map_err(|e| e.to_string())?;
        let enc = Arc::new(TextEncoder::load(&name, &dir).map_err(|e| e.to_string())?);
        self.text.lock().insert(name, enc.clone());
        Ok(enc)
    }
}

impl Embedder for ModelEmbedder {
    fn dim(&self, kind: FunctionKind, model: &str) -> Result<usize, String> {
        match kind {
            FunctionKind::TextEmbedding => Ok(self.text_model(model)?.dim()),
            FunctionKind::ImageEmbedding => Err(format!(
                "ImageEmbedding functions are not available yet (model '{model}')"
            )),
        }
    }

    fn embed_texts(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let enc = self.text_model(model)?;
        let mut out = Vec::with_capacity(texts.len());
        // Batches of 32 keep per-batch padding short.
        for chunk in texts.chunks(32) {
            out.extend(enc.embed(chunk).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}
