//! DDL through the proxy: create, drop, rename, and the schema and state changes that
//! are validated on the mirror, recorded in etcd and logged to every shard.

use super::names::invalid;
use super::{api, call, err_of, need, ApiResult, Proxy, MAX_SHARDS};
use crate::log::ShardId;
use crate::meta::CollectionRecord;
use crate::node::Record;
use axum::http::StatusCode;
use magpie_engine::{split_qualified, EngineError};
use magpie_server::error::ApiError;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

impl Proxy {
    pub(super) async fn create_collection(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        // Functions are checked on the mirror like everything else (an embedding
        // function's model must be in this proxy's models directory). The proxy runs
        // embedding functions once per row and logs the vectors; BM25 functions are
        // computed by each shard's engine from the logged text (no model; every copy
        // computes the same) and searched with statistics summed over the shards.
        let shards = match body.get("shardsNum") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_SHARDS).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("invalid shardsNum {v}: give 1 to {MAX_SHARDS}"))
                })?,
        } as u32;
        let (existing, rev) = self
            .meta
            .get::<CollectionRecord>(&format!("collections/{name}"))
            .await
            .map_err(api)?;
        if existing.is_some() {
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionExists(name),
            ));
        }
        let akey = format!("aliases/{name}");
        if let Some(t) = self.alias_target(&name).await? {
            return Err(invalid(format!(
                "'{name}' is an alias of collection '{t}'; pick another collection name"
            )));
        }
        // The database (checked to exist by `qualify`) is re-put with the record, so that
        // a drop of it that read it before fails (`names.rs`).
        let db = split_qualified(&name).0.to_string();
        let database = self.database(&db).await?;
        if db != magpie_engine::DEFAULT_DATABASE && database.is_none() {
            return Err(ApiError::from(EngineError::DatabaseNotFound(db)));
        }
        // Validate on the mirror (a fresh copy of the name).
        let v = {
            let mut mirrored = self.mirrored.lock().await;
            mirrored.remove(&name);
            if self.mirror.has_collection(&name) {
                let _ = self.mirror.drop_collection(&name);
            }
            crate::ensure_database(&self.mirror, &name);
            let (st, v) = call(
                &self.mirror_router,
                "/v2/vectordb/collections/create",
                &body,
            )
            .await;
            if !st.is_success() {
                return Err(err_of(st, &v));
            }
            v
        };
        let id = self.meta.allocate("nextid", 1, 1).await.map_err(api)?.start;
        for s in 0..shards {
            self.log
                .create(ShardId {
                    collection: id,
                    shard: s,
                })
                .await
                .map_err(api)?;
        }
        let rec = CollectionRecord {
            id,
            name: name.clone(),
            shards,
            create: body,
            ddl: vec![],
            replicas: 1,
        };
        let ckey = format!("collections/{name}");
        let mut guards = vec![(ckey.clone(), rev), (akey, 0)];
        let mut puts = vec![(ckey, json!(rec))];
        if let Some((d, drev)) = database {
            let dkey = format!("databases/{db}");
            guards.push((dkey.clone(), drev));
            puts.push((dkey, json!(d)));
        }
        if !self.meta.commit(&guards, &puts, &[]).await.map_err(api)? {
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionExists(name),
            ));
        }
        self.records_gen.fetch_add(1, Ordering::SeqCst);
        self.records.lock().insert(name.clone(), rec);
        self.mirrored.lock().await.insert(name, (id, 0));
        Ok(v)
    }

    pub(super) async fn drop_collection(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let (rec, rev) = self
            .meta
            .get::<CollectionRecord>(&format!("collections/{name}"))
            .await
            .map_err(api)?;
        let Some(rec) = rec else {
            if let Some(t) = self.alias_target(&name).await? {
                return Err(invalid(format!(
                    "'{name}' is an alias of collection '{t}'; drop the collection by its name"
                )));
            }
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionNotFound(name),
            ));
        };
        // Listed after the record's revision was read: an alias made since re-put the
        // record, so the guarded write below fails.
        let aliases = self.aliases_of(&name).await?;
        if !aliases.is_empty() {
            return Err(invalid(format!(
                "collection '{name}' has aliases {aliases:?}; drop them first (drop_alias)"
            )));
        }
        let key = format!("collections/{name}");
        if !self.meta.put_if(&key, &rec, rev, None).await.map_err(api)? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                65535,
                format!("collection '{name}' changed during the drop; try again"),
            ));
        }
        self.meta.delete(&key, false).await.map_err(api)?;
        // Shards stop when their assignment goes; the data nodes then delete the data.
        self.meta
            .delete(&format!("assign/{}/", rec.id), true)
            .await
            .map_err(api)?;
        self.meta
            .delete(&format!("ckpt/{}/", rec.id), true)
            .await
            .map_err(api)?;
        self.meta
            .delete(&format!("indexes/{}/", rec.id), true)
            .await
            .map_err(api)?;
        for s in 0..rec.shards {
            let _ = self
                .log
                .remove(ShardId {
                    collection: rec.id,
                    shard: s,
                })
                .await;
        }
        self.records_gen.fetch_add(1, Ordering::SeqCst);
        self.records.lock().remove(&name);
        let mut mirrored = self.mirrored.lock().await;
        mirrored.remove(&name);
        let _ = self.mirror.drop_collection(&name);
        Ok(json!({"code": 0, "data": {}}))
    }

    /// `collections/rename`: the record moves to the new name in one etcd transaction,
    /// then every shard renames its engine's collection in log order.
    pub(super) async fn rename_collection(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let new = need(&body, "newCollectionName")?;
        if self.alias_target(&new).await?.is_some() {
            return Err(invalid(format!(
                "'{new}' is an alias; pick another collection name"
            )));
        }
        let rec = self.collection_fresh(&name).await?;
        let (cur, rev) = self
            .meta
            .get::<CollectionRecord>(&format!("collections/{name}"))
            .await
            .map_err(api)?;
        if cur.as_ref() != Some(&rec) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                65535,
                format!("collection '{name}' changed during the rename; try again"),
            ));
        }
        let (taken, _) = self
            .meta
            .get::<CollectionRecord>(&format!("collections/{new}"))
            .await
            .map_err(api)?;
        if taken.is_some() {
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionExists(new),
            ));
        }
        // Validate the new name (the engine's rules) on the mirror.
        crate::ensure_database(&self.mirror, &new);
        let (st, v) = call(
            &self.mirror_router,
            "/v2/vectordb/collections/rename",
            &body,
        )
        .await;
        if !st.is_success() {
            self.mirrored.lock().await.remove(&name);
            return Err(err_of(st, &v));
        }
        let mut next = rec.clone();
        next.name = new.clone();
        next.ddl
            .push(("/v2/vectordb/collections/rename".into(), body.clone()));
        // Aliases follow their collection, in the same transaction (an alias made after
        // this list re-put the record, and the move fails).
        let aliases = self.aliases_of(&name).await?;
        let (from, to) = (format!("collections/{name}"), format!("collections/{new}"));
        let mut puts = vec![(to.clone(), json!(next))];
        puts.extend(aliases.iter().map(|a| (format!("aliases/{a}"), json!(new))));
        let moved = self
            .meta
            .commit(&[(from.clone(), rev), (to, 0)], &puts, &[from])
            .await
            .map_err(api)?;
        if moved {
            let mut cache = self.aliases.lock();
            for a in &aliases {
                cache.insert(a.clone(), new.clone());
            }
        }
        {
            let mut mirrored = self.mirrored.lock().await;
            mirrored.remove(&name);
            if moved {
                mirrored.insert(new.clone(), (next.id, next.ddl.len()));
            } else {
                // Undo on the mirror: it is rebuilt from etcd on next use.
                mirrored.remove(&new);
                let _ = self.mirror.drop_collection(&new);
            }
        }
        if !moved {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                65535,
                format!("collection '{name}' or '{new}' changed during the rename; try again"),
            ));
        }
        self.records_gen.fetch_add(1, Ordering::SeqCst);
        {
            let mut records = self.records.lock();
            records.remove(&name);
            records.insert(new.clone(), next.clone());
        }
        let r = Record {
            path: "/v2/vectordb/collections/rename".into(),
            body,
        };
        self.append_all(&rec, &r).await?;
        Ok(v)
    }

    /// A schema or state change: validated on the mirror, recorded in etcd (when
    /// `record`), then appended to every shard's log.
    pub(super) async fn ddl(&self, path: &str, body: Value, record: bool) -> ApiResult {
        let name = need(&body, "collectionName")?;
        for _ in 0..20 {
            let rec = self.collection_fresh(&name).await?;
            let (cur, rev) = self
                .meta
                .get::<CollectionRecord>(&format!("collections/{name}"))
                .await
                .map_err(api)?;
            if cur.as_ref() != Some(&rec) {
                continue;
            }
            let (st, v) = call(&self.mirror_router, path, &body).await;
            if !st.is_success() {
                // The mirror may have half-applied it: rebuild on next use.
                self.mirrored.lock().await.remove(&name);
                return Err(err_of(st, &v));
            }
            if record {
                let mut next = rec.clone();
                next.ddl.push((path.to_string(), body.clone()));
                if path.ends_with("collections/load") {
                    if let Some(n) = body.get("replicaNumber").and_then(|v| v.as_u64()) {
                        next.replicas = n.clamp(1, 16) as u32;
                    }
                }
                let key = format!("collections/{name}");
                if !self
                    .meta
                    .put_if(&key, &next, rev, None)
                    .await
                    .map_err(api)?
                {
                    self.mirrored.lock().await.remove(&name);
                    continue;
                }
                self.mirrored
                    .lock()
                    .await
                    .insert(name.clone(), (next.id, next.ddl.len()));
                self.records_gen.fetch_add(1, Ordering::SeqCst);
                self.records.lock().insert(name.clone(), next.clone());
            }
            let r = Record {
                path: path.to_string(),
                body: body.clone(),
            };
            self.append_all(&rec, &r).await?;
            return Ok(v);
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            65535,
            format!("collection '{name}' keeps changing; try again"),
        ))
    }
}
