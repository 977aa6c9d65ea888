//! Reads through the proxy: one node per shard, merged here (top-k by distance, rows by
//! primary key, sums).

use super::{call, err_of, need, pk_order, ApiResult, Proxy};
use crate::log::ShardId;
use crate::meta::{shard_of, CollectionRecord};
use axum::http::StatusCode;
use magpie_engine::engine::rerank::FunctionScore;
use magpie_engine::{Bm25Stats, Consistency, FieldSchema, Metric, PrimaryKey};
use magpie_server::error::ApiError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

impl Proxy {
    pub(super) async fn query(&self, body: Value, is_get: bool) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let level = Self::level(&meta, &body)?;
        let pkf = meta.schema.pk().clone();
        let ids = body.get("id").or_else(|| body.get("ids")).cloned();
        let ids: Option<Vec<Value>> = match ids {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a),
            Some(x) => Some(vec![x]),
        };
        if is_get && ids.is_none() {
            return Err(ApiError::bad_request(
                "get needs 'id': one primary key or a list",
            ));
        }
        // Checked on the mirror first: a bad filter or field is a 400 from here.
        let (st, v) = call(&self.mirror_router, "/v2/vectordb/entities/query", &body).await;
        if !st.is_success() {
            return Err(err_of(st, &v));
        }
        let limit = body.get("limit").and_then(|v| v.as_u64());
        let offset = body.get("offset").and_then(|v| v.as_u64()).unwrap_or(0);
        let mut fwd = body.clone();
        fwd["offset"] = json!(0);
        if let Some(l) = limit {
            fwd["limit"] = json!(l + offset);
        }
        let targets: Vec<(u32, Value)> = match &ids {
            Some(ids) => {
                let mut per: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
                for v in ids {
                    let pk = PrimaryKey::from_json(v, &pkf)
                        .map_err(|m| ApiError::bad_request(format!("invalid id {v}: {m}")))?
                        .to_json();
                    per.entry(shard_of(&pk, rec.shards)).or_default().push(pk);
                }
                per.into_iter()
                    .map(|(s, ids)| {
                        let mut b = fwd.clone();
                        let o = b.as_object_mut().expect("object");
                        o.remove("id");
                        o.insert("ids".into(), json!(ids));
                        (s, b)
                    })
                    .collect()
            }
            None => Self::all_shards(&rec, &fwd),
        };
        let parts = self
            .fan_out(&rec, &targets, "/v2/vectordb/entities/query", level)
            .await?;
        let counting = body
            .get("outputFields")
            .and_then(|v| v.as_array())
            .is_some_and(|f| f.iter().any(|x| x == "count(*)"));
        if counting {
            let n: u64 = parts
                .iter()
                .map(|v| v["data"][0]["count(*)"].as_u64().unwrap_or(0))
                .sum();
            return Ok(json!({"code": 0, "data": [{"count(*)": n}]}));
        }
        let mut rows: Vec<Value> = parts
            .into_iter()
            .flat_map(|v| v["data"].as_array().cloned().unwrap_or_default())
            .collect();
        rows.sort_by(|a, b| pk_order(&a[&pkf.name], &b[&pkf.name]));
        let rows: Vec<Value> = rows
            .into_iter()
            .skip(offset as usize)
            .take(limit.map_or(usize::MAX, |l| l as usize))
            .collect();
        Ok(json!({"code": 0, "data": rows}))
    }

    pub(super) async fn search(&self, mut body: Value) -> ApiResult {
        if let Some(fs) = magpie_server::api::function_score(body.get("functionScore"))? {
            return self.search_with_functions(body, fs).await;
        }
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let level = Self::level(&meta, &body)?;
        let anns = anns_field(&meta, &body);
        // Search by ids: the vectors come from the shards that hold them.
        if let Some(ids) = body.get("ids").filter(|v| !v.is_null()).cloned() {
            let ids = match ids {
                Value::Array(a) => a,
                x => vec![x],
            };
            let got = self
                .query(
                    json!({"collectionName": name, "id": ids, "outputFields": [anns], "consistencyLevel": level.as_str()}),
                    true,
                )
                .await?;
            let pk = meta.schema.pk().name.clone();
            let mut vecs = Vec::new();
            for id in &ids {
                let norm = PrimaryKey::from_json(id, meta.schema.pk())
                    .map_err(|m| ApiError::bad_request(format!("invalid id {id}: {m}")))?
                    .to_json();
                let row = got["data"]
                    .as_array()
                    .and_then(|rows| rows.iter().find(|r| r[&pk] == norm))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            65535,
                            format!("no entity with primary key {id}"),
                        )
                    })?;
                vecs.push(row[&anns].clone());
            }
            let o = body.as_object_mut().expect("object");
            o.remove("ids");
            o.insert("data".into(), json!(vecs));
        }
        self.embed_search_texts(&name, &mut body).await?;
        // Not checked on the mirror first (the hot path): every shard runs the same
        // checks, and the first shard's 4xx is the answer.
        let limit = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(100);
        let offset = body.get("offset").and_then(|v| v.as_u64()).unwrap_or(0);
        let metric = search_metric(&meta, &anns, &body);
        let ascending = !metric.higher_is_closer();
        let pk = meta.schema.pk().name.clone();
        let group = body
            .get("groupingField")
            .and_then(|g| g.as_str())
            .filter(|g| !g.is_empty())
            .map(String::from);
        let mut fwd = body.clone();
        fwd["limit"] = json!(limit + offset);
        fwd["offset"] = json!(0);
        if fwd.get("bm25Stats").is_none_or(|s| s.is_null()) {
            if let Some(stats) = self.bm25_stats(&rec, &meta, &anns, &body, level).await? {
                fwd["bm25Stats"] = serde_json::to_value(stats).unwrap_or(Value::Null);
            }
        }
        if let Some(g) = &group {
            // The group key comes back with each hit (removed below unless asked for).
            let mut out: Vec<Value> = fwd["outputFields"].as_array().cloned().unwrap_or_default();
            if !out.iter().any(|f| f == g) {
                out.push(json!(g));
            }
            fwd["outputFields"] = json!(out);
        }
        let parts = self
            .fan_out(
                &rec,
                &Self::all_shards(&rec, &fwd),
                "/v2/vectordb/entities/search",
                level,
            )
            .await?;
        let mut hits_of = per_query(&parts);
        if let (Some(g), true) = (&group, rec.shards > 1) {
            // Each shard found its own top groups. Every group of the global top
            // `limit + offset` is among some shard's (its best hit ranks it there), but its
            // other members may sit on shards where it ranked lower: a second round asks
            // every shard for the members of exactly those groups.
            for (q, hits) in hits_of.iter_mut().enumerate() {
                sort_hits(hits, ascending, &pk);
                let keys = top_groups(hits, g, (limit + offset) as usize);
                if keys.is_empty() {
                    continue;
                }
                let mut b = fwd.clone();
                b["data"] = json!([body["data"][q].clone()]);
                let only = group_filter(g, &keys);
                b["filter"] = json!(match body.get("filter").and_then(|f| f.as_str()) {
                    Some(f) if !f.trim().is_empty() => format!("({f}) and ({only})"),
                    _ => only,
                });
                let again = self
                    .fan_out(
                        &rec,
                        &Self::all_shards(&rec, &b),
                        "/v2/vectordb/entities/search",
                        level,
                    )
                    .await?;
                *hits = per_query(&again).into_iter().next().unwrap_or_default();
            }
        }
        let asked: Vec<Value> = body["outputFields"].as_array().cloned().unwrap_or_default();
        let mut flat = Vec::new();
        let mut topks = Vec::new();
        for hits in hits_of.iter_mut() {
            sort_hits(hits, ascending, &pk);
            let mut kept: Vec<Value> = match &group {
                None => std::mem::take(hits)
                    .into_iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .collect(),
                Some(g) => {
                    let size = body.get("groupSize").and_then(|v| v.as_u64()).unwrap_or(1);
                    grouped(std::mem::take(hits), g, limit + offset, size, offset)
                }
            };
            if let Some(g) = &group {
                if !asked.iter().any(|f| f == g || f == "*") {
                    for h in kept.iter_mut() {
                        if let Some(o) = h.as_object_mut() {
                            o.remove(g);
                        }
                    }
                }
            }
            topks.push(kept.len());
            flat.append(&mut kept);
        }
        let mut info = Map::new();
        info.insert("shards".into(), json!(rec.shards));
        // The search knob the shards chose (the same rule on each).
        for key in ["ef", "nprobe", "expectedRecall"] {
            if let Some(v) = parts.first().and_then(|p| p["searchInfo"].get(key)) {
                info.insert(key.into(), v.clone());
            }
        }
        for key in [
            "indexedSegments",
            "exactSegments",
            "interimSegments",
            "exactRows",
        ] {
            let n: u64 = parts
                .iter()
                .map(|p| p["searchInfo"][key].as_u64().unwrap_or(0))
                .sum();
            info.insert(key.into(), json!(n));
        }
        // A filter's counts, as one engine over all the shards' segments would give them.
        let filtered: Vec<&Value> = parts
            .iter()
            .map(|p| &p["searchInfo"])
            .filter(|i| i.get("filterRows").is_some())
            .collect();
        if !filtered.is_empty() {
            let rows = |i: &Value| i["filterRows"].as_u64().unwrap_or(0);
            let total: u64 = filtered.iter().map(|i| rows(i)).sum();
            let passed: f64 = filtered
                .iter()
                .map(|i| (i["filterPassRatio"].as_f64().unwrap_or(0.0) * rows(i) as f64).round())
                .sum();
            let mut plans: BTreeMap<String, u64> = BTreeMap::new();
            for i in &filtered {
                for (plan, n) in i["filterPlans"].as_object().into_iter().flatten() {
                    *plans.entry(plan.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
            let cached: u64 = filtered
                .iter()
                .map(|i| i["filterCachedSegments"].as_u64().unwrap_or(0))
                .sum();
            info.insert(
                "filterPassRatio".into(),
                json!(if total > 0 {
                    passed / total as f64
                } else {
                    0.0
                }),
            );
            info.insert("filterRows".into(), json!(total));
            info.insert("filterPlans".into(), json!(plans));
            info.insert("filterCachedSegments".into(), json!(cached));
        }
        Ok(json!({"code": 0, "data": flat, "topks": topks, "searchInfo": info}))
    }

    /// Replaces a search's texts or images (`data`) by the vectors that the anns field's
    /// embedding function makes of them, computed once here by the mirror's embedder:
    /// the shards hold no models. A BM25 field's texts, and vectors, are left as given.
    async fn embed_search_texts(&self, name: &str, body: &mut Value) -> Result<(), ApiError> {
        let first = &body["data"][0];
        if !first.is_string() && first.get("image").is_none() {
            return Ok(());
        }
        let req = magpie_server::api::search_data(body)?;
        let (mirror, name2) = (self.mirror.clone(), name.to_string());
        let vecs = tokio::task::spawn_blocking(move || mirror.embed_search_data(&name2, &req))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 65535, e.to_string())
            })??;
        if let Some(v) = vecs {
            body["data"] = json!(v);
        }
        Ok(())
    }

    /// A search reranked by functions (decay, boost), as standalone does it: the merged
    /// best `max(offset + limit, window)` hits of every shard (the global ones), with the
    /// fields the functions read, are reranked here by the engine's own
    /// [`FunctionScore::rerank`]; each boost filter is asked of the shards holding the
    /// hits (at the search's consistency level: a separate read, not the search's
    /// snapshot as standalone).
    async fn search_with_functions(&self, body: Value, fs: FunctionScore) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let meta = self.mirror.describe_collection(&name)?;
        if body
            .get("groupingField")
            .and_then(|g| g.as_str())
            .is_some_and(|g| !g.is_empty())
        {
            return Err(ApiError::bad_request(
                "a grouped search cannot be reranked by functions; search without groupingField",
            ));
        }
        fs.check(&meta.schema).map_err(ApiError::from)?;
        let level = Self::level(&meta, &body)?;
        let limit = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(100) as usize;
        let offset = body.get("offset").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let asked: Vec<Value> = body["outputFields"].as_array().cloned().unwrap_or_default();
        let added: Vec<String> = fs
            .fields()
            .into_iter()
            .filter(|f| !asked.iter().any(|a| a == f))
            .collect();
        let mut inner = body.clone();
        let o = inner.as_object_mut().expect("object");
        o.remove("functionScore");
        o.insert(
            "limit".into(),
            json!(limit.saturating_add(offset).max(fs.window)),
        );
        o.insert("offset".into(), json!(0));
        o.insert(
            "outputFields".into(),
            json!(asked
                .iter()
                .cloned()
                .chain(added.iter().map(|f| json!(f)))
                .collect::<Vec<_>>()),
        );
        let reply = Box::pin(self.search(inner)).await?;
        let metric = search_metric(&meta, &anns_field(&meta, &body), &body);
        let pk = meta.schema.pk().clone();
        let mut ranked = Vec::new();
        for hits in magpie_server::grpc::bridge::hits_of_reply(&reply, &pk)? {
            let passing = self.boost_passing(&name, &fs, &hits, level, &pk).await?;
            ranked.push(fs.rerank(metric, hits, &passing, offset, limit, &added));
        }
        let (flat, topks) = magpie_server::api::hits_json(&pk.name, ranked);
        Ok(json!({"code": 0, "data": flat, "topks": topks, "searchInfo": reply["searchInfo"]}))
    }

    /// For a text search of a field filled by a BM25 function: the collection's BM25
    /// statistics for the query terms, summed over its shards (each at the search's
    /// barrier), so that every shard weighs the terms as one standalone collection
    /// would. `None` for any other search.
    async fn bm25_stats(
        &self,
        rec: &CollectionRecord,
        meta: &magpie_engine::CollectionMeta,
        anns: &str,
        body: &Value,
        level: Consistency,
    ) -> Result<Option<Bm25Stats>, ApiError> {
        let bm25 = meta
            .schema
            .function_for_output(anns)
            .is_some_and(|f| f.kind == magpie_engine::FunctionKind::BM25);
        let texts = body["data"]
            .as_array()
            .is_some_and(|d| !d.is_empty() && d.iter().all(|t| t.is_string()));
        if !bm25 || !texts {
            return Ok(None);
        }
        let ask =
            json!({"annsField": anns, "data": body["data"], "consistencyLevel": level.as_str()});
        let parts = self
            .fan_out(rec, &Self::all_shards(rec, &ask), "/bm25_stats", level)
            .await?;
        let mut sum = Bm25Stats::default();
        for p in parts {
            let s: Bm25Stats = serde_json::from_value(p["data"].clone()).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    65535,
                    format!("a shard's BM25 statistics do not parse: {e}"),
                )
            })?;
            sum.add(&s);
        }
        Ok(Some(sum))
    }

    /// For each of `fs`'s functions, the hits that pass its boost filter (`None`: no
    /// filter), asked of the shards that hold them.
    async fn boost_passing(
        &self,
        name: &str,
        fs: &FunctionScore,
        hits: &[magpie_engine::Hit],
        level: Consistency,
        pk: &FieldSchema,
    ) -> Result<Vec<Option<HashSet<PrimaryKey>>>, ApiError> {
        let ids: Vec<Value> = hits.iter().map(|h| h.id.to_json()).collect();
        let mut out = Vec::new();
        for filter in fs.boost_filters() {
            out.push(match filter {
                Some(f) if !ids.is_empty() => {
                    let q = json!({"collectionName": name, "filter": f, "ids": ids,
                        "outputFields": [pk.name], "consistencyLevel": level.as_str()});
                    let got = self.query(q, false).await.map_err(|e| {
                        if e.status == StatusCode::BAD_REQUEST {
                            ApiError::new(
                                e.status,
                                e.code,
                                format!("the boost ranker's filter: {}", e.message),
                            )
                        } else {
                            e
                        }
                    })?;
                    Some(
                        got["data"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| PrimaryKey::from_json(&r[&pk.name], pk).ok())
                            .collect(),
                    )
                }
                _ => None,
            });
        }
        Ok(out)
    }

    /// `entities/hybrid_search`: each sub-search fans out and merges like a search, then
    /// the lists are fused by the engine's rankers (`magpie_engine::fuse`). Unlike
    /// standalone, the sub-searches are separate reads (each at the requested
    /// consistency level), not one snapshot.
    pub(super) async fn hybrid_search(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let meta = self.mirror.describe_collection(&name)?;
        let fs = magpie_server::api::function_score(body.get("functionScore"))?;
        if let Some(fs) = &fs {
            fs.check(&meta.schema).map_err(ApiError::from)?;
        }
        let asked: Vec<Value> = body["outputFields"].as_array().cloned().unwrap_or_default();
        // Fields the rerank functions read, fetched with the hits and removed after.
        let added: Vec<String> = fs
            .as_ref()
            .map(|fs| {
                fs.fields()
                    .into_iter()
                    .filter(|f| !asked.iter().any(|a| a == f))
                    .collect()
            })
            .unwrap_or_default();
        let subs = body["search"].as_array().cloned().unwrap_or_default();
        if subs.is_empty() || subs.len() > magpie_engine::MAX_HYBRID_SEARCHES {
            return Err(ApiError::bad_request(format!(
                "a hybrid search needs 1 to {} sub-searches in 'search', got {}",
                magpie_engine::MAX_HYBRID_SEARCHES,
                subs.len()
            )));
        }
        let rerank = magpie_server::api::hybrid_rerank(
            body.get("rerank"),
            body.get("functionScore"),
            subs.len(),
        )?;
        magpie_engine::check_rerank(&rerank, subs.len()).map_err(ApiError::from)?;
        if rerank == magpie_engine::Rerank::Max && fs.is_none() {
            return Err(ApiError::bad_request(
                "a hybrid search needs a ranker: rrf, weighted, or rerank functions (decay, boost)",
            ));
        }
        let limit = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(100) as usize;
        let offset = body.get("offset").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        if limit == 0 || limit + offset > magpie_engine::MAX_TOPK {
            return Err(ApiError::bad_request(format!(
                "limit must be at least 1 and limit + offset at most {}",
                magpie_engine::MAX_TOPK
            )));
        }
        let pk_field = meta.schema.pk().clone();
        // Per sub-search: its metric and its hits per query.
        let mut lists: Vec<(Metric, Vec<Vec<magpie_engine::Hit>>)> = Vec::new();
        for (i, s) in subs.iter().enumerate() {
            let mut b = s.clone();
            let Some(o) = b.as_object_mut() else {
                return Err(ApiError::bad_request(format!(
                    "sub-search {i} must be an object"
                )));
            };
            if o.get("groupingField").is_some_and(|g| !g.is_null()) {
                return Err(ApiError::bad_request(
                    "grouping in a hybrid search is not supported yet; search without groupingField",
                ));
            }
            o.insert("collectionName".into(), json!(name));
            for k in ["partitionNames", "consistencyLevel", "dbName"] {
                if let Some(v) = body.get(k) {
                    o.insert(k.into(), v.clone());
                }
            }
            if body.get("outputFields").is_some() || !added.is_empty() {
                let fields: Vec<Value> = asked
                    .iter()
                    .cloned()
                    .chain(added.iter().map(|f| json!(f)))
                    .collect();
                o.insert("outputFields".into(), json!(fields));
            }
            o.insert("offset".into(), json!(0));
            if let Some(p) = o.remove("params") {
                o.insert("searchParams".into(), json!({"params": p}));
            }
            let anns = o
                .get("annsField")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            let metric = search_metric(&meta, &anns, &b);
            let reply = self.search(b).await.map_err(|e| {
                ApiError::new(e.status, e.code, format!("sub-search {i}: {}", e.message))
            })?;
            let per_query = magpie_server::grpc::bridge::hits_of_reply(&reply, &pk_field)?;
            if let Some((_, first)) = lists.first() {
                if first.len() != per_query.len() {
                    return Err(ApiError::bad_request(format!(
                        "sub-search {i} has {} queries, sub-search 0 has {}; every sub-search needs the same number",
                        per_query.len(),
                        first.len()
                    )));
                }
            }
            lists.push((metric, per_query));
        }
        let nq = lists.first().map_or(0, |l| l.1.len());
        let level = Self::level(&meta, &body)?;
        let mut fused = Vec::with_capacity(nq);
        for q in 0..nq {
            let one: Vec<(Metric, &[magpie_engine::Hit])> =
                lists.iter().map(|(m, h)| (*m, h[q].as_slice())).collect();
            fused.push(match &fs {
                None => magpie_engine::fuse(&one, &rerank, limit, offset),
                Some(fs) => {
                    let window = limit.saturating_add(offset).max(fs.window);
                    let all = magpie_engine::fuse(&one, &rerank, window, 0);
                    let passing = self
                        .boost_passing(&name, fs, &all, level, &pk_field)
                        .await?;
                    fs.rerank(Metric::IP, all, &passing, offset, limit, &added)
                }
            });
        }
        let (flat, topks) = magpie_server::api::hits_json(&pk_field.name, fused);
        Ok(json!({"code": 0, "data": flat, "topks": topks}))
    }

    pub(super) async fn stats(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let parts = self
            .fan_out(
                &rec,
                &Self::all_shards(&rec, &body),
                "/v2/vectordb/collections/get_stats",
                Consistency::Session,
            )
            .await?;
        let sum = |p: &str| -> u64 {
            parts
                .iter()
                .map(|v| v.pointer(p).and_then(|x| x.as_u64()).unwrap_or(0))
                .sum()
        };
        Ok(json!({"code": 0, "data": {
            "rowCount": sum("/data/rowCount"),
            "segments": {"growing": sum("/data/segments/growing"), "sealed": sum("/data/segments/sealed"), "flushed": sum("/data/segments/flushed")},
            "diskBytes": sum("/data/diskBytes"),
            "shards": rec.shards,
        }}))
    }

    pub(super) async fn load_state(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let parts = self
            .fan_out(
                &rec,
                &Self::all_shards(&rec, &body),
                "/v2/vectordb/collections/get_load_state",
                Consistency::Session,
            )
            .await?;
        let states: Vec<&str> = parts
            .iter()
            .map(|p| {
                p["data"]["loadState"]
                    .as_str()
                    .unwrap_or("LoadStateNotLoad")
            })
            .collect();
        let progress = parts
            .iter()
            .map(|p| p["data"]["loadProgress"].as_u64().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let state = if states.iter().all(|s| *s == "LoadStateLoaded") {
            "LoadStateLoaded"
        } else if states.iter().all(|s| *s == "LoadStateNotLoad") {
            "LoadStateNotLoad"
        } else {
            "LoadStateLoading"
        };
        Ok(json!({"code": 0, "data": {"loadState": state, "loadProgress": progress}}))
    }

    pub(super) async fn describe_index(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let parts = self
            .fan_out(
                &rec,
                &Self::all_shards(&rec, &body),
                "/v2/vectordb/indexes/describe",
                Consistency::Session,
            )
            .await?;
        // The same from each shard's data node, where the builds run. A data node that
        // does not answer soon (it died; its shard is moving) leaves that shard's state
        // to its serving copy rather than failing or holding up the describe.
        let built: Vec<Value> = futures_util::future::join_all((0..rec.shards).map(|s| {
            let id = ShardId {
                collection: rec.id,
                shard: s,
            };
            let body = &body;
            async move {
                let min = self.barrier(id, Consistency::Session).await.ok()?;
                let call = self.shard_call_to(id, "/v2/vectordb/indexes/describe", body, min, true);
                tokio::time::timeout(std::time::Duration::from_secs(2), call)
                    .await
                    .ok()?
                    .ok()
            }
        }))
        .await
        .into_iter()
        .map(|v| v.unwrap_or(Value::Null))
        .collect();
        let mut out = parts
            .first()
            .cloned()
            .unwrap_or(json!({"code": 0, "data": []}));
        if let Some(first) = out["data"].as_array_mut() {
            for (i, ix) in first.iter_mut().enumerate() {
                for key in ["totalRows", "indexedRows", "pendingRows"] {
                    let n: u64 = parts
                        .iter()
                        .map(|p| p["data"][i][key].as_u64().unwrap_or(0))
                        .sum();
                    if ix.get(key).is_some() {
                        ix[key] = json!(n);
                    }
                }
                // Each shard's segments, with the shard they belong to.
                let mut segs = Vec::new();
                for (k, p) in parts.iter().enumerate() {
                    for mut seg in p["data"][i]["segments"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        seg["shard"] = json!(k);
                        segs.push(seg);
                    }
                }
                if ix.get("segments").is_some() {
                    ix["segments"] = json!(segs);
                }
                if parts
                    .iter()
                    .any(|p| p["data"][i]["indexState"] != ix["indexState"])
                {
                    ix["indexState"] = json!("InProgress");
                }
                // Data nodes build indexes; a query node serves one once it has reopened
                // on the data node's flushed state. Until every shard's serving copy has
                // indexed what its data node has, searches do not all use the index yet,
                // so the index is not finished (right after a flush the serving copy
                // still holds the rows as growing ones, and alone would say finished).
                let behind = parts.iter().zip(&built).any(|(serving, built)| {
                    let (s, b) = (&serving["data"][i], &built["data"][i]);
                    !b.is_null()
                        && (b["indexState"] != json!("Finished")
                            || s["indexedRows"].as_u64() < b["indexedRows"].as_u64())
                });
                if behind && ix["indexState"] == json!("Finished") {
                    ix["indexState"] = json!("InProgress");
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn mirror_read(&self, path: &str, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let (st, mut v) = call(&self.mirror_router, path, &body).await;
        if !st.is_success() {
            return Err(err_of(st, &v));
        }
        if path.ends_with("collections/describe") {
            let aliases = self.aliases_of(&name).await?;
            v["data"]["aliases"] = json!(aliases
                .iter()
                .map(|a| magpie_engine::split_qualified(a).1)
                .collect::<Vec<_>>());
            v["data"]["shardsNum"] = json!(rec.shards);
            v["data"]["collectionID"] = json!(rec.id);
            v["data"]["replicaNumber"] = json!(rec.replicas);
        }
        Ok(v)
    }
}

/// Each query's hits of a fan-out, all shards together.
fn per_query(parts: &[Value]) -> Vec<Vec<Value>> {
    let nq = parts
        .first()
        .and_then(|p| p["topks"].as_array().map(|t| t.len()))
        .unwrap_or(0);
    let mut out: Vec<Vec<Value>> = vec![Vec::new(); nq];
    for p in parts {
        let data = p["data"].as_array().cloned().unwrap_or_default();
        let mut it = data.into_iter();
        for (q, k) in p["topks"].as_array().into_iter().flatten().enumerate() {
            for _ in 0..k.as_u64().unwrap_or(0) {
                if let (Some(h), Some(slot)) = (it.next(), out.get_mut(q)) {
                    slot.push(h);
                }
            }
        }
    }
    out
}

/// Best first (smaller distance for L2, larger otherwise), then by primary key, as the
/// engine orders candidates.
fn sort_hits(hits: &mut [Value], ascending: bool, pk: &str) {
    hits.sort_by(|a, b| {
        let (x, y) = (
            a["distance"].as_f64().unwrap_or(0.0),
            b["distance"].as_f64().unwrap_or(0.0),
        );
        let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
        let o = if ascending { o } else { o.reverse() };
        o.then_with(|| pk_order(&a[pk], &b[pk]))
    });
}

/// The engine's grouping over sorted hits: a hit joins its group while the group has
/// fewer than `size`, or opens a new one while there are fewer than `want`; groups before
/// `offset` are dropped; hits stay in rank order.
fn grouped(hits: Vec<Value>, g: &str, want: u64, size: u64, offset: u64) -> Vec<Value> {
    let mut groups: Vec<(Value, u64)> = Vec::new();
    let mut out = Vec::new();
    for h in hits {
        let key = h[g].clone();
        match groups.iter().position(|(k, _)| *k == key) {
            Some(i) if groups[i].1 < size => {
                groups[i].1 += 1;
                if i as u64 >= offset {
                    out.push(h);
                }
            }
            Some(_) => {}
            None if (groups.len() as u64) < want => {
                groups.push((key, 1));
                if groups.len() as u64 > offset {
                    out.push(h);
                }
            }
            None => {}
        }
    }
    out
}

/// The keys of the first `want` groups of sorted hits.
fn top_groups(hits: &[Value], g: &str, want: usize) -> Vec<Value> {
    let mut keys: Vec<Value> = Vec::new();
    for h in hits {
        if keys.len() >= want {
            break;
        }
        if !keys.contains(&h[g]) {
            keys.push(h[g].clone());
        }
    }
    keys
}

/// A filter that passes exactly the rows of these group keys.
fn group_filter(g: &str, keys: &[Value]) -> String {
    let vals: Vec<String> = keys
        .iter()
        .filter(|k| !k.is_null())
        .map(|k| k.to_string())
        .collect();
    let mut f = format!("{g} in [{}]", vals.join(", "));
    if keys.iter().any(|k| k.is_null()) {
        f = format!("({f}) or ({g} is null)");
    }
    f
}

/// The metric a search's distances are in: the one it names, else its field's index's,
/// else the field's default (BM25 for a BM25 function's output, IP for other sparse
/// fields, COSINE for dense ones).
/// The vector field a search names, else the collection's first.
fn anns_field(meta: &magpie_engine::CollectionMeta, body: &Value) -> String {
    match body.get("annsField").and_then(|v| v.as_str()) {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => meta
            .schema
            .vector_fields()
            .next()
            .map(|f| f.name.clone())
            .unwrap_or_default(),
    }
}

fn search_metric(meta: &magpie_engine::CollectionMeta, anns: &str, body: &Value) -> Metric {
    body.get("metricType")
        .or_else(|| body.pointer("/searchParams/metricType"))
        .and_then(|v| v.as_str())
        .and_then(Metric::parse)
        .or_else(|| {
            meta.indexes
                .iter()
                .find(|i| i.field_name == anns)
                .map(|i| i.metric_type)
        })
        .unwrap_or_else(|| match meta.schema.field(anns) {
            Some(f) if f.is_sparse() => {
                if meta
                    .schema
                    .function_for_output(anns)
                    .is_some_and(|x| x.kind == magpie_engine::FunctionKind::BM25)
                {
                    Metric::BM25
                } else {
                    Metric::IP
                }
            }
            // The engine's default for an unindexed binary field.
            Some(f) if f.data_type == magpie_engine::DataType::BinaryVector => Metric::HAMMING,
            _ => Metric::COSINE,
        })
}
