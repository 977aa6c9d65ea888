//! `/v2/admin/backups/{create,list}`: consistent backups of collections into the
//! configured backup store (`--backup-storage`: a directory or a bucket). Restore runs
//! offline (`magpie backup restore`), into an empty data directory or bucket prefix.

use crate::api::{blocking, ok, ApiResult, Body};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateReq {
    pub backup_name: String,
    #[serde(default)]
    pub collection_names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListReq {}

fn store(st: &AppState) -> Result<Arc<dyn magpie_engine::storage::Storage>, ApiError> {
    st.backups
        .clone()
        .ok_or_else(|| ApiError::bad_request("backups are not configured on this server"))
}

fn summary(b: &magpie_engine::backup::BackupInfo) -> serde_json::Value {
    json!({
        "backupName": b.name,
        "createdMs": b.created_ms,
        "collections": b.collections.iter().map(|c| json!({
            "collectionName": c.meta.name,
            "rows": c.rows,
            "objects": c.objects,
            "bytes": c.bytes,
        })).collect::<Vec<_>>(),
    })
}

/// Backs up `collectionNames` (all when empty) as `backupName`.
pub async fn create(State(st): State<Arc<AppState>>, Body(r): Body<CreateReq>) -> ApiResult {
    let dest = store(&st)?;
    let info = blocking(&st, move |e| {
        e.backup(&r.backup_name, &r.collection_names, &*dest)
    })
    .await?;
    ok(summary(&info))
}

/// The complete backups in the backup store, oldest first.
pub async fn list(State(st): State<Arc<AppState>>, Body(_r): Body<ListReq>) -> ApiResult {
    let dest = store(&st)?;
    let all = blocking(&st, move |_| magpie_engine::backup::list_backups(&*dest)).await?;
    ok(json!(all.iter().map(summary).collect::<Vec<_>>()))
}
