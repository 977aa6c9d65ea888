//! Indexes: create, describe (with build progress), list, drop.

use super::collections::{default_binary_metric, index_meta, metric_given, IndexParamReq};
use super::{blocking, need_in, ok, ApiResult, Body, CollReq};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateIndexReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    index_params: Vec<IndexParamReq>,
}

pub async fn create_index(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CreateIndexReq>,
) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    if r.index_params.is_empty() {
        return Err(ApiError::bad_request("missing 'indexParams'"));
    }
    let metas = r
        .index_params
        .iter()
        .map(|p| Ok((index_meta(p)?, metric_given(p))))
        .collect::<Result<Vec<_>, ApiError>>()?;
    blocking(&st, move |e| {
        let schema = e.describe_collection(&c)?.schema;
        for (mut m, given) in metas {
            default_binary_metric(&schema, &mut m, given);
            e.create_index(&c, m)?;
        }
        Ok(())
    })
    .await?;
    ok(json!({}))
}

pub async fn describe_index(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let name = r.index_name.clone();
    let n2 = name.clone();
    let progress = blocking(&st, move |e| e.index_progress(&c, n2.as_deref())).await?;
    let list: Vec<Value> = progress
        .iter()
        .map(|p| {
            let i = &p.meta;
            let segs: Vec<Value> = p
                .segments
                .iter()
                .map(|s| json!({"segmentID": s.segment, "rows": s.rows, "state": s.state, "indexBytes": s.index_bytes, "buildMs": s.build_ms,
                                 "interimRows": s.interim_rows, "interimBytes": s.interim_bytes}))
                .collect();
            let metric = if p.scalar { "" } else { i.metric_type.as_str() };
            json!({"indexName": i.index_name, "fieldName": i.field_name, "indexType": i.index_type, "metricType": metric,
                   "indexState": p.state, "totalRows": p.total_rows, "indexedRows": p.indexed_rows, "pendingRows": p.pending_rows,
                   "failReason": p.fail_reason, "params": i.params, "segments": segs})
        })
        .collect();
    if list.is_empty() {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            return Err(ApiError::bad_request(format!("index '{n}' does not exist")));
        }
    }
    ok(Value::Array(list))
}

pub async fn list_indexes(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let meta = blocking(&st, move |e| e.describe_collection(&c)).await?;
    ok(json!(meta
        .indexes
        .iter()
        .map(|i| i.index_name.clone())
        .collect::<Vec<_>>()))
}

pub async fn drop_index(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let n = r
        .index_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'indexName'"))?;
    blocking(&st, move |e| e.drop_index(&c, &n)).await?;
    ok(json!({}))
}
