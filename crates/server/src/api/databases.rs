//! Databases and aliases (names over collections; see the engine's `namespace.rs`).

use super::{blocking, db_of, need_in, ok, ApiResult, Body, CollReq};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct DbReq {
    db_name: Option<String>,
    properties: Option<Value>,
}

fn need_db(r: &DbReq) -> Result<String, ApiError> {
    r.db_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'dbName'"))
}

pub async fn create_database(State(st): State<Arc<AppState>>, Body(r): Body<DbReq>) -> ApiResult {
    let db = need_db(&r)?;
    if r.properties
        .as_ref()
        .is_some_and(|p| !p.is_null() && p != &json!({}) && p != &json!([]))
    {
        return Err(ApiError::bad_request(
            "database properties are not supported by Magpie yet",
        ));
    }
    blocking(&st, move |e| e.create_database(&db)).await?;
    ok(json!({}))
}

pub async fn drop_database(State(st): State<Arc<AppState>>, Body(r): Body<DbReq>) -> ApiResult {
    let db = need_db(&r)?;
    blocking(&st, move |e| e.drop_database(&db)).await?;
    ok(json!({}))
}

pub async fn list_databases(State(st): State<Arc<AppState>>, Body(_r): Body<DbReq>) -> ApiResult {
    ok(json!(blocking(&st, |e| Ok(e.list_databases())).await?))
}

pub async fn describe_database(State(st): State<Arc<AppState>>, Body(r): Body<DbReq>) -> ApiResult {
    let db = need_db(&r)?;
    let d = blocking(&st, move |e| e.describe_database(&db)).await?;
    ok(json!({"dbName": d.name, "dbID": d.id, "properties": []}))
}

// ------------------------------------------------------------------ aliases

fn need_alias(st: &AppState, r: &CollReq) -> Result<String, ApiError> {
    let a = r
        .alias_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'aliasName'"))?;
    Ok(magpie_engine::qualified(&db_of(st, &r.db_name)?, &a))
}

pub async fn create_alias(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let (a, c) = (
        need_alias(&st, &r)?,
        need_in(&st, &r.db_name, &r.collection_name)?,
    );
    blocking(&st, move |e| e.create_alias(&a, &c)).await?;
    ok(json!({}))
}

pub async fn alter_alias(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let (a, c) = (
        need_alias(&st, &r)?,
        need_in(&st, &r.db_name, &r.collection_name)?,
    );
    blocking(&st, move |e| e.alter_alias(&a, &c)).await?;
    ok(json!({}))
}

pub async fn drop_alias(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let a = need_alias(&st, &r)?;
    blocking(&st, move |e| e.drop_alias(&a)).await?;
    ok(json!({}))
}

pub async fn describe_alias(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let a = need_alias(&st, &r)?;
    let c = blocking(&st, move |e| e.describe_alias(&a)).await?;
    let (db, name) = magpie_engine::split_qualified(&c);
    ok(json!({"aliasName": r.alias_name, "collectionName": name, "dbName": db}))
}

pub async fn list_aliases(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let db = db_of(&st, &r.db_name)?;
    let coll = r
        .collection_name
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| magpie_engine::qualified(&db, c));
    let v = blocking(&st, move |e| Ok(e.list_aliases(&db, coll.as_deref()))).await?;
    ok(json!(v
        .iter()
        .map(|(a, _)| magpie_engine::split_qualified(a).1)
        .collect::<Vec<_>>()))
}
