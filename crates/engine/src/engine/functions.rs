//! Schema functions: the embedding models a collection's functions call, checked
//! when it is created and run on every insert (BM25 term counts, embeddings).

use super::Engine;
use crate::error::{invalid, EngineError, Result};
use crate::function::{Embedder, FunctionKind, ImageInput};
use crate::schema::CollectionSchema;
use serde_json::Value;
use std::sync::Arc;

impl Engine {
    /// Installs the embedding models that schema functions call (the server does this).
    pub fn set_embedder(&self, e: Arc<dyn Embedder>) {
        *self.embedder.write() = Some(e);
    }

    pub(super) fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        self.embedder.read().clone().ok_or_else(|| {
            invalid("this collection has embedding functions, but no embedding models are available in this process")
        })
    }

    /// Checks each function's model against its output field (exists, right dimension).
    pub(super) fn check_functions(&self, schema: &CollectionSchema) -> Result<()> {
        if self.config.function_outputs_given {
            // The writer checked the models when it created the collection, and runs them.
            return Ok(());
        }
        for f in schema
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::BM25)
        {
            let model = f.model().unwrap_or_default();
            let dim = self
                .embedder()?
                .dim(f.kind, model)
                .map_err(|m| invalid(format!("function '{}': {m}", f.name)))?;
            let want = schema.field(f.output()).and_then(|x| x.dim).unwrap_or(0);
            if dim != want {
                return Err(invalid(format!(
                    "function '{}': model '{model}' makes {dim}-d vectors, but field '{}' has dim {want}",
                    f.name,
                    f.output()
                )));
            }
        }
        Ok(())
    }

    /// `rows` with every function's output filled in (BM25 term counts; embeddings
    /// computed in one batch per function), as an insert stores them. Rows must not
    /// supply an output field themselves (unless the engine's `function_outputs_given`
    /// says they come computed). A cluster proxy fills rows in with it: it logs the
    /// embeddings, and validates the BM25 outputs that each shard computes again.
    pub fn apply_functions(&self, schema: &CollectionSchema, rows: &[Value]) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = rows.to_vec();
        for f in &schema.functions {
            let max = schema
                .field(f.input())
                .and_then(|x| x.max_length)
                .unwrap_or(usize::MAX);
            if self.config.function_outputs_given
                && f.kind != FunctionKind::BM25
                && rows
                    .iter()
                    .all(|r| r.get(f.output()).is_some_and(|v| !v.is_null()))
            {
                // Computed by the writer (see the setting); checked as any vector is by
                // the schema's validation.
                continue;
            }
            let mut texts = Vec::with_capacity(rows.len());
            for (i, r) in rows.iter().enumerate() {
                let obj = r.as_object().ok_or_else(|| EngineError::Row {
                    row: i,
                    field: String::new(),
                    msg: "a row must be a JSON object".into(),
                })?;
                if obj.get(f.output()).is_some_and(|v| !v.is_null()) {
                    return Err(EngineError::Row {
                        row: i,
                        field: f.output().to_string(),
                        msg: format!("is computed by function '{}'; do not supply it", f.name),
                    });
                }
                match obj.get(f.input()) {
                    Some(Value::String(t)) => {
                        // The input's own limit is checked before any model sees it, so
                        // an oversized text or data: URI costs nothing to refuse.
                        if t.len() > max {
                            return Err(EngineError::Row {
                                row: i,
                                field: f.input().to_string(),
                                msg: format!(
                                    "is {} bytes long; the field's max_length is {max}",
                                    t.len()
                                ),
                            });
                        }
                        texts.push(t.as_str())
                    }
                    _ => {
                        return Err(EngineError::Row {
                            row: i,
                            field: f.input().to_string(),
                            msg: format!("must be a string: function '{}' reads it", f.name),
                        })
                    }
                }
            }
            if f.kind == FunctionKind::BM25 {
                // Term frequencies, computed here (before the WAL) like embeddings.
                let analyzer = schema
                    .field(f.input())
                    .ok_or_else(|| invalid(format!("function '{}': no input field", f.name)))?
                    .analyzer()
                    .map_err(|m| invalid(format!("function '{}': {m}", f.name)))?;
                for (r, t) in out.iter_mut().zip(&texts) {
                    let tf = crate::analyzer::term_frequencies(&analyzer.analyze(t));
                    let v = magpie_index::SparseVector::from_pairs(tf).map_err(invalid)?;
                    r.as_object_mut()
                        .unwrap()
                        .insert(f.output().to_string(), crate::schema::sparse_to_json(&v));
                }
                continue;
            }
            let model = f.model().unwrap_or_default();
            let fail = |m: String| invalid(format!("function '{}': {m}", f.name));
            let vecs = match f.kind {
                FunctionKind::TextEmbedding => {
                    self.embedder()?.embed_texts(model, &texts).map_err(fail)?
                }
                FunctionKind::ImageEmbedding => {
                    let inputs: Vec<ImageInput> =
                        texts.iter().map(|t| ImageInput::Stored(t)).collect();
                    let res = self
                        .embedder()?
                        .embed_images(model, &inputs)
                        .map_err(fail)?;
                    let mut v = Vec::with_capacity(res.len());
                    for (i, r) in res.into_iter().enumerate() {
                        v.push(r.map_err(|msg| EngineError::Row {
                            row: i,
                            field: f.input().to_string(),
                            msg,
                        })?);
                    }
                    v
                }
                FunctionKind::BM25 => unreachable!("handled above"),
            };
            if vecs.len() != rows.len() {
                return Err(invalid(format!(
                    "function '{}': the model returned {} vectors for {} rows",
                    f.name,
                    vecs.len(),
                    rows.len()
                )));
            }
            for (r, v) in out.iter_mut().zip(vecs) {
                r.as_object_mut()
                    .unwrap()
                    .insert(f.output().to_string(), Value::from(v));
            }
        }
        Ok(out)
    }
}
