//! DDL through the proxy: create, drop, rename, and the schema and state changes that
//! are validated on the mirror, recorded in etcd and logged to every shard.

use super::{api, call, err_of, need, ApiResult, Proxy, MAX_SHARDS};
use crate::log::ShardId;
use crate::meta::CollectionRecord;
use crate::node::Record;
use axum::http::StatusCode;
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
        // Validate on the mirror (a fresh copy of the name).
        let v = {
            let mut mirrored = self.mirrored.lock().await;
            mirrored.remove(&name);
            if self.mirror.has_collection(&name) {
                let _ = self.mirror.drop_collection(&name);
            }
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
        if !self
            .meta
            .put_if(&format!("collections/{name}"), &rec, rev, None)
            .await
            .map_err(api)?
        {
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
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionNotFound(name),
            ));
        };
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
        let moved = self
            .meta
            .rename(
                &format!("collections/{name}"),
                rev,
                &format!("collections/{new}"),
                &next,
            )
            .await
            .map_err(api)?;
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
