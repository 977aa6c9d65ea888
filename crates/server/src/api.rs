//! Handlers of the Milvus-shaped REST API (`/v2/vectordb/...`).
//!
//! Requests use Milvus RESTful v2 field names; responses use its envelope
//! `{"code": 0, "data": ...}`. Engine work runs on the blocking pool.
//!
//! This file holds what every handler shares (the body extractor, the envelope, the
//! blocking hand-off, name and parameter checks); the handlers live by resource in
//! `api/`: `collections.rs` (with partitions), `entities.rs` (writes, query, search),
//! `indexes.rs`, `databases.rs` (with aliases).

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequest, Request};
use axum::Json;
use magpie_engine::{Consistency, Engine, Metric};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

mod collections;
mod databases;
mod entities;
mod indexes;
pub use collections::*;
pub use databases::*;
pub use entities::*;
pub use indexes::*;

pub(crate) type ApiResult = Result<Json<Value>, ApiError>;

/// JSON body extractor whose failures (malformed JSON, wrong types, oversized body) are
/// reported in the API's error envelope.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // A JSON content type is required: a web page may POST text/plain or a form to
        // this server from another site without the browser asking first, but not JSON.
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let json_ct = ct.as_deref().is_some_and(|c| {
            let m = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        }) || sdk_json_header(req.headers());
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, 1100, "request body is larger than the server's limit (max_body_bytes); split the batch")
            } else {
                ApiError::new(status, 1100, format!("cannot read request body: {e}"))
            }
        })?;
        let bytes = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            &b"{}"[..]
        } else if !json_ct {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                1100,
                format!(
                    "send the body as JSON with 'Content-Type: application/json' (got {})",
                    ct.as_deref()
                        .map_or("no Content-Type".to_string(), |c| format!("'{c}'"))
                ),
            ));
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("malformed request JSON: {e}")))
    }
}

/// The official Milvus Node SDK's `HttpClient` sends `ContentType: application/json` (a
/// header named without the dash), so its requests go out as text/plain. A page on
/// another site cannot send a custom header without a CORS preflight, which this server
/// never grants, so the header proves the same as a JSON Content-Type does.
fn sdk_json_header(h: &axum::http::HeaderMap) -> bool {
    h.get("contenttype")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn ok(data: Value) -> ApiResult {
    Ok(Json(json!({"code": 0, "data": data})))
}

/// Runs engine work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&Engine) -> Result<T, magpie_engine::EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let e = st.engine.clone();
    tokio::task::spawn_blocking(move || f(&e))
        .await
        .map_err(task_failed)?
        .map_err(ApiError::from)
}

/// The 500 of an engine call that panicked (or was cancelled) instead of returning.
pub(crate) fn task_failed(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        65535,
        format!("internal task failed: {why}"),
    )
}

fn consistency(s: &Option<String>) -> Result<Option<Consistency>, ApiError> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(x) => Consistency::parse(x).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown consistencyLevel '{x}'; use Strong, Session, Bounded or Eventually"
            ))
        }),
    }
}

pub(crate) fn metric(s: &str) -> Result<Metric, ApiError> {
    Metric::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown metricType '{s}'; use L2, IP or COSINE (HAMMING or JACCARD for binary vectors, BM25 for BM25 output)"
        ))
    })
}

/// The engine's name of a request's collection: `collectionName` in `dbName` (the
/// database must exist; none given is `default`).
pub(crate) fn need_in(
    st: &AppState,
    db: &Option<String>,
    name: &Option<String>,
) -> Result<String, ApiError> {
    let n = need(name)?;
    Ok(magpie_engine::qualified(&db_of(st, db)?, &n))
}

/// A request's database, checked to exist.
pub(crate) fn db_of(st: &AppState, db: &Option<String>) -> Result<String, ApiError> {
    let db = db.as_deref().unwrap_or("");
    if st.engine.has_database(db) {
        Ok(if db.is_empty() {
            magpie_engine::DEFAULT_DATABASE.to_string()
        } else {
            db.to_string()
        })
    } else {
        Err(magpie_engine::EngineError::DatabaseNotFound(db.to_string()).into())
    }
}

fn need(name: &Option<String>) -> Result<String, ApiError> {
    match name {
        Some(n) if !n.is_empty() => Ok(n.clone()),
        _ => Err(ApiError::bad_request("missing 'collectionName'")),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CollReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    new_collection_name: Option<String>,
    new_db_name: Option<String>,
    partition_name: Option<String>,
    index_name: Option<String>,
    alias_name: Option<String>,
}
