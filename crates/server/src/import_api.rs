//! `/v2/vectordb/jobs/import/{create,list,get_progress,describe}`: Milvus's bulk import.
//! Files are paths inside the server's import folder (`--import-root`); the engine
//! checks them when the job is created (a bad path or format is a 400 then) and imports
//! in the background (`magpie_engine` `engine/import.rs`).

use crate::api::{db_of, need_in, ok, ApiResult, Body};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use magpie_engine::ImportProgress;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateReq {
    db_name: Option<String>,
    collection_name: Option<String>,
    partition_name: Option<String>,
    files: Vec<Vec<String>>,
    /// Milvus's options (e.g. `timeout`); accepted and not used.
    #[allow(dead_code)]
    options: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ListReq {
    db_name: Option<String>,
    collection_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ProgressReq {
    #[allow(dead_code)]
    db_name: Option<String>,
    job_id: Option<String>,
}

/// Milvus's completion times: RFC 3339 in UTC (empty before completion).
fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    // "YYYY-MM-DD HH:MM:SS" (UTC) from the image app's formatter.
    format!(
        "{}Z",
        magpie_app::images::format_time((ms / 1000) as i64).replacen(' ', "T", 1)
    )
}

/// A job's progress in Milvus's `get_progress` shape (also the cluster proxy's).
pub fn progress_json(p: &ImportProgress) -> Value {
    let details: Vec<Value> = p
        .files
        .iter()
        .map(|(name, bytes, state, imported, total)| {
            let progress = match *state {
                "Completed" => 100,
                _ if *total > 0 => imported * 99 / total,
                _ => 0,
            };
            json!({"fileName": name, "fileSize": bytes, "state": state, "progress": progress,
                   "importedRows": imported, "totalRows": total,
                   "completeTime": if *state == "Completed" { rfc3339(p.complete_ms) } else { String::new() }})
        })
        .collect();
    json!({"jobId": p.id, "collectionName": magpie_engine::split_qualified(&p.collection).1,
           "state": p.state, "progress": p.progress, "reason": p.reason,
           "importedRows": p.imported_rows, "totalRows": p.total_rows, "fileSize": p.bytes,
           "completeTime": rfc3339(p.complete_ms), "details": details})
}

pub async fn create(State(st): State<Arc<AppState>>, Body(r): Body<CreateReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let e = st.engine.clone();
    let id = tokio::task::spawn_blocking(move || {
        e.create_import_job(&c, r.partition_name.as_deref(), &r.files)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("internal task failed: {e}")))??;
    ok(json!({ "jobId": id }))
}

pub async fn list(State(st): State<Arc<AppState>>, Body(r): Body<ListReq>) -> ApiResult {
    let coll = match r.collection_name.as_deref().filter(|c| !c.is_empty()) {
        Some(_) => Some(need_in(&st, &r.db_name, &r.collection_name)?),
        None => None,
    };
    let db = db_of(&st, &r.db_name)?;
    let records: Vec<Value> = st
        .engine
        .import_jobs(coll.as_deref())
        .iter()
        .filter(|p| coll.is_some() || magpie_engine::split_qualified(&p.collection).0 == db)
        .map(|p| {
            json!({"jobId": p.id, "collectionName": magpie_engine::split_qualified(&p.collection).1,
                   "state": p.state, "progress": p.progress, "reason": p.reason})
        })
        .collect();
    ok(json!({ "records": records }))
}

pub async fn get_progress(
    State(st): State<Arc<AppState>>,
    Body(r): Body<ProgressReq>,
) -> ApiResult {
    let id = r
        .job_id
        .filter(|j| !j.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'jobId'"))?;
    let p = st.engine.import_job(&id)?;
    ok(progress_json(&p))
}

#[cfg(test)]
mod tests {
    #[test]
    fn complete_times_are_rfc3339() {
        assert_eq!(super::rfc3339(0), "");
        assert_eq!(super::rfc3339(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(super::rfc3339(1_764_567_296_000), "2025-12-01T05:34:56Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
