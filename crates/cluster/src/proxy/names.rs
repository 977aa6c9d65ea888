//! Databases and aliases through the proxy, with standalone's rules and messages.
//!
//! Names are qualified as standalone qualifies them (`db.name`, or just `name` in the
//! database `default`) before any handler sees a request ([`Proxy::qualify`]), so that
//! etcd keys, the catalog mirror and the shard engines all use the engine's one name
//! for a collection. What lives in etcd:
//! - `databases/{db}`: a [`DatabaseRecord`] per database besides `default`;
//! - `aliases/{alias}`: the (qualified) collection an alias names. An alias is resolved
//!   to its collection before a request is handled ([`Proxy::resolve_alias`]).
//!
//! Every check of a name against other keys commits in one etcd transaction with the
//! write it guards ([`crate::meta::Meta::commit`]): a collection created in a database
//! re-puts that database's record, and an alias its collection's, so that a drop racing
//! with either fails its own guarded write instead of leaving a collection in a dropped
//! database or an alias of a dropped collection.

use super::{api, need, ApiResult, Proxy};
use crate::meta::CollectionRecord;
use axum::http::StatusCode;
use magpie_engine::{qualified, split_qualified, EngineError, DEFAULT_DATABASE};
use magpie_server::error::ApiError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// A database besides `default` (etcd `databases/{name}`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct DatabaseRecord {
    /// 2 and up (`default` is 1, as in standalone).
    pub id: u64,
    pub created_ms: u64,
}

/// `dbName` of a request (`None`: not given or empty).
fn db_field(v: Option<&Value>, key: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "'{key}' must be a database name, got {v}"
        ))),
    }
}

fn conflict(what: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, 65535, what)
}

pub(super) fn invalid(msg: String) -> ApiError {
    ApiError::from(EngineError::InvalidArgument(msg))
}

impl Proxy {
    /// The request's database (which must exist), with `dbName` removed and
    /// `collectionName`, `aliasName` and `newCollectionName` (in `newDbName`, else the
    /// same database) replaced by their qualified names.
    pub(super) async fn qualify(&self, body: &mut Value) -> Result<String, ApiError> {
        let db = db_field(body.get("dbName"), "dbName")?.unwrap_or(DEFAULT_DATABASE.into());
        self.check_database(&db).await?;
        let new_db = match db_field(body.get("newDbName"), "newDbName")? {
            Some(n) => {
                self.check_database(&n).await?;
                n
            }
            None => db.clone(),
        };
        let Some(o) = body.as_object_mut() else {
            return Ok(db);
        };
        o.remove("dbName");
        o.remove("newDbName");
        for (key, in_db) in [
            ("collectionName", &db),
            ("aliasName", &db),
            ("newCollectionName", &new_db),
        ] {
            if let Some(Value::String(n)) = o.get_mut(key) {
                if !n.is_empty() {
                    *n = qualified(in_db, n);
                }
            }
        }
        Ok(db)
    }

    /// Whether database `db` exists: `default` always; others as of the last routing
    /// refresh, else read from etcd.
    async fn check_database(&self, db: &str) -> Result<(), ApiError> {
        if db == DEFAULT_DATABASE || self.databases.lock().contains(db) {
            return Ok(());
        }
        match self.database(db).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::from(EngineError::DatabaseNotFound(db.into()))),
        }
    }

    /// A database's record and its mod revision, from etcd (`default`: none, 0).
    pub(super) async fn database(
        &self,
        db: &str,
    ) -> Result<Option<(DatabaseRecord, i64)>, ApiError> {
        if db == DEFAULT_DATABASE {
            return Ok(None);
        }
        let (rec, rev) = self
            .meta
            .get::<DatabaseRecord>(&format!("databases/{db}"))
            .await
            .map_err(api)?;
        if rec.is_some() {
            self.databases.lock().insert(db.to_string());
        }
        Ok(rec.map(|r| (r, rev)))
    }

    /// Replaces a `collectionName` that is an alias by its collection. A name that is a
    /// known collection costs a map lookup; an unknown one an etcd read (an alias made
    /// through another proxy since the last routing refresh).
    pub(super) async fn resolve_alias(&self, body: &mut Value) {
        let Some(name) = body
            .get("collectionName")
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        if self.records.lock().contains_key(name) {
            return;
        }
        let cached = self.aliases.lock().get(name).cloned();
        let target = match cached {
            Some(t) => Some(t),
            None => self.alias_target(name).await.ok().flatten(),
        };
        if let Some(t) = target {
            body["collectionName"] = json!(t);
        }
    }

    /// The aliases (qualified) that name `collection`, sorted, from etcd.
    pub(super) async fn aliases_of(&self, collection: &str) -> Result<Vec<String>, ApiError> {
        let all: BTreeMap<String, String> = self.meta.list("aliases/").await.map_err(api)?;
        Ok(all
            .into_iter()
            .filter(|(_, c)| c == collection)
            .map(|(a, _)| a)
            .collect())
    }

    /// The collection alias `name` names, read from etcd (`None`: not an alias).
    pub(super) async fn alias_target(&self, name: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .meta
            .get::<String>(&format!("aliases/{name}"))
            .await
            .map_err(api)?
            .0)
    }

    /// The (qualified) collections in database `db`, sorted, from etcd.
    async fn collections_in(&self, db: &str) -> Result<Vec<String>, ApiError> {
        let colls: BTreeMap<String, CollectionRecord> =
            self.meta.list("collections/").await.map_err(api)?;
        Ok(colls
            .into_keys()
            .filter(|q| split_qualified(q).0 == db)
            .collect())
    }

    // ------------------------------------------------------------ databases

    pub(super) async fn databases_endpoint(&self, path: &str, body: &Value) -> ApiResult {
        let need_db = || {
            db_field(body.get("dbName"), "dbName")?
                .ok_or_else(|| ApiError::bad_request("missing 'dbName'"))
        };
        match path {
            "databases/list" => {
                let dbs: BTreeMap<String, DatabaseRecord> =
                    self.meta.list("databases/").await.map_err(api)?;
                let mut v: Vec<(u64, String)> = dbs.into_iter().map(|(n, r)| (r.id, n)).collect();
                v.sort();
                let names: Vec<String> = std::iter::once(DEFAULT_DATABASE.to_string())
                    .chain(v.into_iter().map(|(_, n)| n))
                    .collect();
                Ok(json!({"code": 0, "data": names}))
            }
            "databases/describe" => {
                let db = need_db()?;
                let id = match self.database(&db).await? {
                    Some((r, _)) => r.id,
                    None if db == DEFAULT_DATABASE => 1,
                    None => return Err(ApiError::from(EngineError::DatabaseNotFound(db))),
                };
                Ok(json!({"code": 0, "data": {"dbName": db, "dbID": id, "properties": []}}))
            }
            "databases/create" => {
                let db = need_db()?;
                if body
                    .get("properties")
                    .is_some_and(|p| !p.is_null() && p != &json!({}) && p != &json!([]))
                {
                    return Err(ApiError::bad_request(
                        "database properties are not supported by Magpie yet",
                    ));
                }
                magpie_engine::check_name("database", &db)?;
                let exists = || invalid(format!("database '{db}' already exists"));
                if db == DEFAULT_DATABASE || self.database(&db).await?.is_some() {
                    return Err(exists());
                }
                let id = self.meta.allocate("nextdb", 1, 2).await.map_err(api)?.start;
                let rec = DatabaseRecord {
                    id,
                    created_ms: magpie_engine::types::now_ms(),
                };
                if !self
                    .meta
                    .put_if(&format!("databases/{db}"), &rec, 0, None)
                    .await
                    .map_err(api)?
                {
                    return Err(exists());
                }
                self.databases.lock().insert(db);
                Ok(json!({"code": 0, "data": {}}))
            }
            "databases/drop" => {
                let db = need_db()?;
                if db == DEFAULT_DATABASE {
                    return Err(invalid("the database 'default' cannot be dropped".into()));
                }
                let Some((_, rev)) = self.database(&db).await? else {
                    return Err(ApiError::from(EngineError::DatabaseNotFound(db)));
                };
                // Listed after the revision was read: a collection created since then
                // re-put the record, so the guarded delete below fails.
                let colls = self.collections_in(&db).await?;
                let inside: Vec<&str> = colls.iter().map(|q| split_qualified(q).1).collect();
                if !inside.is_empty() {
                    return Err(invalid(format!(
                        "database '{db}' is not empty: drop its collections first ({inside:?})"
                    )));
                }
                let key = format!("databases/{db}");
                if !self
                    .meta
                    .commit(&[(key.clone(), rev)], &[], &[key])
                    .await
                    .map_err(api)?
                {
                    return Err(conflict(format!(
                        "database '{db}' changed during the drop; try again"
                    )));
                }
                self.databases.lock().remove(&db);
                Ok(json!({"code": 0, "data": {}}))
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no such endpoint in cluster mode: POST /v2/vectordb/{path}"),
            )),
        }
    }

    // ------------------------------------------------------------ aliases

    /// `aliases/*` (names already qualified by [`Proxy::qualify`]; `db` the request's).
    pub(super) async fn aliases_endpoint(&self, path: &str, db: &str, body: &Value) -> ApiResult {
        let alias = || need(body, "aliasName");
        match path {
            "aliases/create" | "aliases/alter" => {
                let (alias, coll) = (alias()?, need(body, "collectionName")?);
                self.set_alias(&alias, &coll, path == "aliases/alter")
                    .await?;
                Ok(json!({"code": 0, "data": {}}))
            }
            "aliases/drop" => {
                // Dropping one that does not exist is not an error (as Milvus).
                self.meta
                    .delete(&format!("aliases/{}", alias()?), false)
                    .await
                    .map_err(api)?;
                self.records_gen.fetch_add(1, Ordering::SeqCst);
                self.aliases.lock().remove(&alias()?);
                Ok(json!({"code": 0, "data": {}}))
            }
            "aliases/describe" => {
                let a = alias()?;
                let c = self
                    .alias_target(&a)
                    .await?
                    .ok_or_else(|| ApiError::from(EngineError::AliasNotFound(a.clone())))?;
                let (cdb, name) = split_qualified(&c);
                Ok(
                    json!({"code": 0, "data": {"aliasName": split_qualified(&a).1, "collectionName": name, "dbName": cdb}}),
                )
            }
            "aliases/list" => {
                let coll = body
                    .get("collectionName")
                    .and_then(|v| v.as_str())
                    .filter(|c| !c.is_empty());
                let all: BTreeMap<String, String> =
                    self.meta.list("aliases/").await.map_err(api)?;
                let v: Vec<&str> = all
                    .iter()
                    .filter(|(a, c)| split_qualified(a).0 == db && coll.is_none_or(|w| w == *c))
                    .map(|(a, _)| split_qualified(a).1)
                    .collect();
                Ok(json!({"code": 0, "data": v}))
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no such endpoint in cluster mode: POST /v2/vectordb/{path}"),
            )),
        }
    }

    /// Standalone's `set_alias`: the checks in its order, then one guarded commit.
    async fn set_alias(&self, alias: &str, coll: &str, existing: bool) -> Result<(), ApiError> {
        magpie_engine::check_name("collection", split_qualified(alias).1)?;
        if split_qualified(alias).0 != split_qualified(coll).0 {
            return Err(invalid(format!(
                "alias '{alias}' and collection '{coll}' are in different databases"
            )));
        }
        let ckey = format!("collections/{coll}");
        let (rec, crev) = self
            .meta
            .get::<CollectionRecord>(&ckey)
            .await
            .map_err(api)?;
        let Some(rec) = rec else {
            return Err(match self.alias_target(coll).await? {
                Some(t) => invalid(format!(
                    "'{coll}' is itself an alias (of '{t}'); name the collection"
                )),
                None => ApiError::from(EngineError::CollectionNotFound(coll.into())),
            });
        };
        let akey_coll = format!("collections/{alias}");
        let (is_coll, _) = self
            .meta
            .get::<CollectionRecord>(&akey_coll)
            .await
            .map_err(api)?;
        if is_coll.is_some() {
            return Err(invalid(format!(
                "'{alias}' is a collection; an alias needs a name of its own"
            )));
        }
        let akey = format!("aliases/{alias}");
        let (cur, arev) = self.meta.get::<String>(&akey).await.map_err(api)?;
        match (cur, existing) {
            (Some(t), false) => {
                return Err(invalid(format!(
                "alias '{alias}' already exists (for collection '{t}'); use alter_alias to move it"
            )))
            }
            (None, true) => return Err(ApiError::from(EngineError::AliasNotFound(alias.into()))),
            _ => {}
        }
        // The collection's record is put back unchanged: a drop that read it before
        // this commit then fails (it checks for aliases after reading).
        let done = self
            .meta
            .commit(
                &[(ckey.clone(), crev), (akey_coll, 0), (akey.clone(), arev)],
                &[(akey, json!(coll)), (ckey, json!(rec))],
                &[],
            )
            .await
            .map_err(api)?;
        if !done {
            return Err(conflict(format!(
                "alias '{alias}' or collection '{coll}' changed meanwhile; try again"
            )));
        }
        self.records_gen.fetch_add(1, Ordering::SeqCst);
        self.aliases
            .lock()
            .insert(alias.to_string(), coll.to_string());
        Ok(())
    }

    /// `collections/list` in database `db`: unqualified names, sorted.
    pub(super) async fn list_collections(&self, db: &str) -> ApiResult {
        let colls = self.collections_in(db).await?;
        let names: Vec<&str> = colls.iter().map(|q| split_qualified(q).1).collect();
        Ok(json!({"code": 0, "data": names}))
    }
}
