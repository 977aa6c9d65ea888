//! HTTP endpoints of the text app (`/v2/text/...`) over [`magpie_app::text`]: search a
//! text collection by BM25, embeddings or both, and list the text collections. Indexing
//! runs in the CLI (`magpie text index`, in process or through the REST API).

use crate::api::Body;
use crate::error::ApiError;
use crate::images_api::blocking;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_app::text::{self, Mode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn ok(data: Value) -> Response {
    Json(json!({"code": 0, "data": data})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchReq {
    pub collection_name: String,
    pub query: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Passages of a text collection that answer `query`, with highlights.
pub async fn search(
    State(st): State<Arc<AppState>>,
    Body(r): Body<SearchReq>,
) -> Result<Response, ApiError> {
    let mode: Mode = match r.mode.as_deref() {
        None | Some("") => Mode::default(),
        Some(m) => m.parse()?,
    };
    let limit = r.limit.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "'limit' must be 1..=1000, got {limit}"
        )));
    }
    let engine = st.engine.clone();
    let hits = blocking(move || {
        let filter = r.filter.as_deref().filter(|f| !f.trim().is_empty());
        text::search(&engine, &r.collection_name, &r.query, mode, filter, limit)
    })
    .await?;
    Ok(ok(json!(hits)))
}

/// Text collections, with their passage counts and whether they have embeddings.
pub async fn list(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let engine = st.engine.clone();
    blocking(move || {
        let mut out = Vec::new();
        for name in engine.list_collections() {
            let Ok(meta) = engine.describe_collection(&name) else {
                continue;
            };
            let fields: Vec<String> = meta.schema.fields.iter().map(|f| f.name.clone()).collect();
            if !text::is_text_collection(&fields) {
                continue;
            }
            let count = magpie_app::walk::count_rows(&engine, &name);
            let dense = fields.iter().any(|f| f == text::DENSE);
            out.push(json!({"name": name, "passages": count, "dense": dense}));
        }
        Ok::<_, ApiError>(ok(Value::from(out)))
    })
    .await
}
