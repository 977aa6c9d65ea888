//! Milvus's gRPC protocol over a REST backend: the same RPCs as [`super::MilvusApi`],
//! each turned into the REST v2 call that does the same thing and its JSON answer turned
//! back into the RPC's reply. A cluster proxy serves gRPC this way (its backend routes
//! REST requests to shards and merges their answers; `magpie_cluster::proxy`), so that
//! pymilvus works unchanged against a cluster.
//!
//! The protobuf side is shared with the standalone service: the same request parsing
//! (`search_from_pb`, `index_meta`, `convert::rows_from_fields`), validation and reply
//! building (`convert::search_result`, `fields_from_rows`, `search_reply`), so a client
//! sees the same answers and errors either way; `tests/pymilvus` runs one script against
//! both and compares. The catalog (schemas, indexes, partitions) comes typed from the
//! backend ([`RestBackend::collection`]); everything else travels as REST JSON.
//!
//! Not bridged (UNIMPLEMENTED, naming the RPC): the RPCs the standalone service does not
//! implement either.

use super::convert::{self, kv};
use super::{
    bad, connect_reply, consistency, consistency_pb, flush_reply, index_meta, index_params_pb,
    md_db, need, param, param_num, search_from_pb, search_reply, status_of, status_ok, Rpc,
    WithStatus, CODE_INDEX_NOT_FOUND, PROTOCOL_VERSION,
};
use crate::error::ApiError;
use axum::http::StatusCode;
use magpie_engine::{split_qualified, CollectionMeta, FieldSchema, PrimaryKey};
use magpie_milvus_proto::common as cpb;
use magpie_milvus_proto::milvus as mpb;
use magpie_milvus_proto::milvus::milvus_service_server::{MilvusService, MilvusServiceServer};
use magpie_milvus_proto::schema as spb;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tonic::{Request, Response};

/// What the bridge needs from the database behind it.
#[tonic::async_trait]
pub trait RestBackend: Send + Sync + 'static {
    /// `POST /v2/vectordb/{path}` with `body`: the whole JSON reply of a success
    /// (`{"code": 0, "data": ...}`), or the error the REST API would answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value, ApiError>;

    /// The catalog entry of collection `name` (or an alias of one) in database `db`
    /// (empty: the default), its `id` as clients should see it, and its shard count.
    async fn collection(&self, db: &str, name: &str) -> Result<(CollectionMeta, u32), ApiError>;

    /// Why the backend cannot serve now (`/readyz`'s reason), if it cannot.
    fn unready(&self) -> Option<String>;
}

/// The gRPC service over a [`RestBackend`].
pub struct Bridge<B> {
    b: Arc<B>,
    next_client: AtomicI64,
}

/// The bridge as a tower service for a router, with the token check and size limit of
/// the standalone service ([`super::service`]).
pub fn service<B: RestBackend>(
    backend: Arc<B>,
    token: Option<String>,
    max_message_bytes: usize,
) -> tonic::service::interceptor::InterceptedService<
    MilvusServiceServer<Bridge<B>>,
    impl tonic::service::Interceptor + Clone,
> {
    let server = MilvusServiceServer::new(Bridge {
        b: backend,
        next_client: AtomicI64::new(1),
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(usize::MAX);
    tonic::service::interceptor::InterceptedService::new(server, move |req: Request<()>| {
        super::check_token(token.as_deref(), &req)?;
        Ok(req)
    })
}

/// A request's database: its `db_name`, else the connection's (`dbname` metadata).
fn db_of<'a>(md: &'a str, field: &'a str) -> &'a str {
    if field.is_empty() {
        md
    } else {
        field
    }
}

/// A REST body naming a database (left out when empty: the default) and a collection.
fn body(db: &str, collection: &str) -> Map<String, Value> {
    let mut m = Map::new();
    if !db.is_empty() {
        m.insert("dbName".into(), json!(db));
    }
    if !collection.is_empty() {
        m.insert("collectionName".into(), json!(collection));
    }
    m
}

/// A timestamp for replies that carry one (Milvus's hybrid clock at the current time):
/// a REST backend answers none.
fn now_ts() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    magpie_engine::types::ts_from_ms(ms)
}

/// The primary keys of a REST write reply as the protocol's `IDs`.
fn ids_pb(ids: &Value) -> spb::IDs {
    let ids = ids.as_array().map(Vec::as_slice).unwrap_or_default();
    if ids.iter().any(Value::is_string) {
        spb::IDs {
            id_field: Some(spb::i_ds::IdField::StrId(spb::StringArray {
                data: ids
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect(),
            })),
        }
    } else {
        spb::IDs {
            id_field: Some(spb::i_ds::IdField::IntId(spb::LongArray {
                data: ids.iter().filter_map(Value::as_i64).collect(),
            })),
        }
    }
}

/// A search reply (`data` flat, `topks` the number of hits of each query) as the
/// engine's hits per query: what the standalone service converts to protobuf.
pub fn hits_of_reply(
    reply: &Value,
    pk: &FieldSchema,
) -> Result<Vec<Vec<magpie_engine::Hit>>, ApiError> {
    let flat = reply["data"].as_array().cloned().unwrap_or_default();
    let topks = reply["topks"].as_array().cloned().unwrap_or_default();
    let mut it = flat.into_iter();
    let mut per_query = Vec::with_capacity(topks.len());
    for n in topks.iter().filter_map(|x| x.as_u64()) {
        let mut hits = Vec::with_capacity(n as usize);
        for mut h in it.by_ref().take(n as usize) {
            let id = PrimaryKey::from_json(&h[&pk.name], pk)
                .map_err(|m| ApiError::new(StatusCode::BAD_GATEWAY, 65535, m))?;
            let distance = h["distance"].as_f64().unwrap_or(0.0) as f32;
            let mut fields = match h.as_object_mut() {
                Some(o) => std::mem::take(o),
                None => Map::new(),
            };
            fields.remove(&pk.name);
            fields.remove("distance");
            hits.push(magpie_engine::Hit {
                id,
                distance,
                fields,
            });
        }
        per_query.push(hits);
    }
    Ok(per_query)
}

/// A REST import job's progress (`jobs/import/get_progress`) as `GetImportStateResponse`,
/// the fields the standalone service fills from the job itself.
fn import_state_json(p: &Value) -> mpb::GetImportStateResponse {
    let files: Vec<&str> = p["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["fileName"].as_str())
        .collect();
    let s = |k: &str| p[k].as_str().unwrap_or_default();
    super::import_state_pb(
        s("state"),
        s("jobId"),
        s("collectionName"),
        &files,
        p["importedRows"].as_i64().unwrap_or(0),
        p["progress"].as_u64().unwrap_or(0),
        s("reason"),
    )
}

/// A Milvus `SearchRequest` as a REST search body (checked by the same parser as the
/// standalone service's), with its limit, rounding and group-by field.
fn search_body(r: &mpb::SearchRequest) -> Result<(Map<String, Value>, super::PbSearch), ApiError> {
    let p = search_from_pb(r)?;
    let q = &p.req;
    let mut b = Map::new();
    if !q.vectors.is_empty() {
        b.insert("data".into(), json!(q.vectors));
    } else if !q.texts.is_empty() {
        b.insert("data".into(), json!(q.texts));
    } else if !q.sparse.is_empty() {
        b.insert("data".into(), json!(q.sparse));
    }
    if let Some(ids) = &q.ids {
        b.insert("ids".into(), json!(ids));
    }
    if let Some(a) = &q.anns_field {
        b.insert("annsField".into(), json!(a));
    }
    if let Some(f) = &q.filter {
        b.insert("filter".into(), json!(f));
    }
    b.insert("limit".into(), json!(q.limit));
    b.insert("offset".into(), json!(q.offset));
    b.insert("outputFields".into(), json!(q.output_fields));
    b.insert("partitionNames".into(), json!(q.partitions));
    // The knobs as the client sent them (`params`, a JSON object checked above).
    let mut sp = Map::new();
    if let Some(m) = q.metric {
        sp.insert("metricType".into(), json!(m.as_str()));
    }
    if let Some(Ok(Value::Object(o))) =
        param(&r.search_params, "params").map(serde_json::from_str::<Value>)
    {
        sp.insert("params".into(), Value::Object(o));
    }
    b.insert("searchParams".into(), Value::Object(sp));
    if let Some(g) = &q.group_by {
        b.insert("groupingField".into(), json!(g));
    }
    if let Some(n) = q.group_size {
        b.insert("groupSize".into(), json!(n));
    }
    if let Some(c) = q.consistency {
        b.insert("consistencyLevel".into(), json!(c.as_str()));
    }
    if let Some(f) = super::function_score_value(r.function_score.as_ref()) {
        b.insert("functionScore".into(), f);
    }
    Ok((b, p))
}

impl<B: RestBackend> Bridge<B> {
    async fn call(&self, path: &str, b: Map<String, Value>) -> Result<Value, ApiError> {
        self.b.call(path, Value::Object(b)).await
    }

    /// A collection that must exist (a `collection_name` that is given).
    async fn meta(&self, db: &str, name: &str) -> Result<CollectionMeta, ApiError> {
        let name = need(name, "collection_name")?;
        Ok(self.b.collection(db, &name).await?.0)
    }

    async fn write(
        &self,
        db: &str,
        coll: &str,
        partition: String,
        fields: Vec<spb::FieldData>,
        num_rows: u32,
        upsert: bool,
    ) -> Result<mpb::MutationResult, ApiError> {
        let meta = self.meta(db, coll).await?;
        convert::check_vector_kinds(&fields, &meta.schema).map_err(bad)?;
        let n = num_rows as usize;
        let (mut rows, vectors) = convert::columns_from_fields(fields, n).map_err(bad)?;
        // Vectors travel as JSON numbers, which cannot hold an infinity or a NaN: those
        // are refused here, as the engine refuses them on standalone.
        for (field, flat) in vectors {
            let dim = flat.len() / n.max(1);
            for (ri, row) in rows.iter_mut().enumerate() {
                let v = &flat[ri * dim..(ri + 1) * dim];
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(ApiError::from(magpie_engine::EngineError::Row {
                        row: ri,
                        field,
                        msg: format!("element {i} of the vector is not a finite float32"),
                    }));
                }
                row[&field] = json!(v);
            }
        }
        let mut b = body(db, coll);
        b.insert("data".into(), Value::Array(rows));
        if !partition.is_empty() {
            b.insert("partitionName".into(), json!(partition));
        }
        let path = if upsert {
            "entities/upsert"
        } else {
            "entities/insert"
        };
        let v = self.call(path, b).await?;
        let (count, ids) = if upsert {
            (&v["data"]["upsertCount"], &v["data"]["upsertIds"])
        } else {
            (&v["data"]["insertCount"], &v["data"]["insertIds"])
        };
        let n = count.as_i64().unwrap_or(0);
        Ok(mpb::MutationResult {
            status: Some(status_ok()),
            i_ds: Some(ids_pb(ids)),
            succ_index: (0..n as u32).collect(),
            insert_cnt: if upsert { 0 } else { n },
            upsert_cnt: if upsert { n } else { 0 },
            timestamp: now_ts(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl<B: RestBackend> MilvusService for Bridge<B> {
    // ------------------------------------------------------------ server

    async fn connect(&self, _r: Request<mpb::ConnectRequest>) -> Rpc<mpb::ConnectResponse> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(connect_reply(id, "CLUSTER")))
    }

    async fn get_version(
        &self,
        _r: Request<mpb::GetVersionRequest>,
    ) -> Rpc<mpb::GetVersionResponse> {
        Ok(Response::new(mpb::GetVersionResponse {
            status: Some(status_ok()),
            version: PROTOCOL_VERSION.into(),
        }))
    }

    async fn check_health(
        &self,
        _r: Request<mpb::CheckHealthRequest>,
    ) -> Rpc<mpb::CheckHealthResponse> {
        let why = self.b.unready();
        Ok(Response::new(mpb::CheckHealthResponse {
            status: Some(status_ok()),
            is_healthy: why.is_none(),
            reasons: why.into_iter().collect(),
            ..Default::default()
        }))
    }

    async fn run_analyzer(
        &self,
        r: Request<mpb::RunAnalyzerRequest>,
    ) -> Rpc<mpb::RunAnalyzerResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::RunAnalyzerResponse, {
            let meta = if r.collection_name.is_empty() {
                None
            } else {
                Some(
                    self.meta(db_of(&mdb, &r.db_name), &r.collection_name)
                        .await?,
                )
            };
            super::analyze(&r, meta.as_ref())
        })
    }

    // ------------------------------------------------------------ databases

    async fn list_databases(
        &self,
        _r: Request<mpb::ListDatabasesRequest>,
    ) -> Rpc<mpb::ListDatabasesResponse> {
        reply!(mpb::ListDatabasesResponse, {
            let v = self.call("databases/list", Map::new()).await?;
            let mut out = mpb::ListDatabasesResponse {
                status: Some(status_ok()),
                ..Default::default()
            };
            for name in v["data"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                let d = self.call("databases/describe", body(name, "")).await?;
                out.db_names.push(name.to_string());
                out.db_ids.push(d["data"]["dbID"].as_i64().unwrap_or(0));
                out.created_timestamp.push(0);
            }
            Ok(out)
        })
    }

    async fn describe_database(
        &self,
        r: Request<mpb::DescribeDatabaseRequest>,
    ) -> Rpc<mpb::DescribeDatabaseResponse> {
        let r = r.into_inner();
        reply!(mpb::DescribeDatabaseResponse, {
            let db = if r.db_name.is_empty() {
                magpie_engine::DEFAULT_DATABASE.to_string()
            } else {
                r.db_name
            };
            let d = self.call("databases/describe", body(&db, "")).await?;
            Ok(mpb::DescribeDatabaseResponse {
                status: Some(status_ok()),
                db_name: db,
                db_id: d["data"]["dbID"].as_i64().unwrap_or(0),
                ..Default::default()
            })
        })
    }

    async fn create_database(&self, r: Request<mpb::CreateDatabaseRequest>) -> Rpc<cpb::Status> {
        let r = r.into_inner();
        reply!(cpb::Status, {
            if !r.properties.is_empty() {
                return Err(bad("database properties are not supported by Magpie yet"));
            }
            let db = need(&r.db_name, "db_name")?;
            self.call("databases/create", body(&db, "")).await?;
            Ok(status_ok())
        })
    }

    async fn drop_database(&self, r: Request<mpb::DropDatabaseRequest>) -> Rpc<cpb::Status> {
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = need(&r.db_name, "db_name")?;
            self.call("databases/drop", body(&db, "")).await?;
            Ok(status_ok())
        })
    }

    // ------------------------------------------------------------ aliases

    async fn create_alias(&self, r: Request<mpb::CreateAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(db_of(&mdb, &r.db_name), &r.collection_name);
            b.insert("aliasName".into(), json!(need(&r.alias, "alias")?));
            self.call("aliases/create", b).await?;
            Ok(status_ok())
        })
    }

    async fn alter_alias(&self, r: Request<mpb::AlterAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(db_of(&mdb, &r.db_name), &r.collection_name);
            b.insert("aliasName".into(), json!(need(&r.alias, "alias")?));
            self.call("aliases/alter", b).await?;
            Ok(status_ok())
        })
    }

    async fn drop_alias(&self, r: Request<mpb::DropAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(db_of(&mdb, &r.db_name), "");
            b.insert("aliasName".into(), json!(need(&r.alias, "alias")?));
            self.call("aliases/drop", b).await?;
            Ok(status_ok())
        })
    }

    async fn describe_alias(
        &self,
        r: Request<mpb::DescribeAliasRequest>,
    ) -> Rpc<mpb::DescribeAliasResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::DescribeAliasResponse, {
            let db = db_of(&mdb, &r.db_name);
            let mut b = body(db, "");
            b.insert("aliasName".into(), json!(need(&r.alias, "alias")?));
            let v = self.call("aliases/describe", b).await?;
            Ok(mpb::DescribeAliasResponse {
                status: Some(status_ok()),
                db_name: if db.is_empty() {
                    magpie_engine::DEFAULT_DATABASE.into()
                } else {
                    db.to_string()
                },
                alias: r.alias,
                collection: v["data"]["collectionName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
        })
    }

    async fn list_aliases(
        &self,
        r: Request<mpb::ListAliasesRequest>,
    ) -> Rpc<mpb::ListAliasesResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ListAliasesResponse, {
            let db = db_of(&mdb, &r.db_name);
            let v = self
                .call("aliases/list", body(db, &r.collection_name))
                .await?;
            Ok(mpb::ListAliasesResponse {
                status: Some(status_ok()),
                db_name: db.to_string(),
                collection_name: r.collection_name,
                aliases: v["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect(),
            })
        })
    }

    // ------------------------------------------------------------ collections

    async fn create_collection(
        &self,
        r: Request<mpb::CreateCollectionRequest>,
    ) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            use prost::Message;
            let name = need(&r.collection_name, "collection_name")?;
            let s = spb::CollectionSchema::decode(r.schema.as_slice()).map_err(|e| {
                bad(format!(
                    "'schema' is not a valid CollectionSchema protobuf: {e}"
                ))
            })?;
            let schema = convert::schema_from_pb(&s, r.num_partitions).map_err(bad)?;
            let mut b = match crate::api::create_body(&schema) {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            b.extend(body(db_of(&mdb, &r.db_name), &name));
            let cons = consistency(r.consistency_level, false).unwrap_or_default();
            b["params"]["consistencyLevel"] = json!(cons.as_str());
            if r.shards_num > 0 {
                b.insert("shardsNum".into(), json!(r.shards_num));
            }
            self.call("collections/create", b).await?;
            Ok(status_ok())
        })
    }

    async fn describe_collection(
        &self,
        r: Request<mpb::DescribeCollectionRequest>,
    ) -> Rpc<mpb::DescribeCollectionResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::DescribeCollectionResponse, {
            let db = db_of(&mdb, &r.db_name);
            let name = need(&r.collection_name, "collection_name")?;
            let (m, shards) = self.b.collection(db, &name).await?;
            let (mdb_name, short) = split_qualified(&m.name);
            let aliases = self.call("aliases/list", body(mdb_name, short)).await?;
            let d = self.call("databases/describe", body(mdb_name, "")).await?;
            Ok(mpb::DescribeCollectionResponse {
                status: Some(status_ok()),
                schema: Some(convert::schema_to_pb(&m)),
                collection_id: m.id as i64,
                created_timestamp: magpie_engine::types::ts_from_ms(m.created_ms),
                created_utc_timestamp: m.created_ms,
                shards_num: shards as i32,
                consistency_level: consistency_pb(m.consistency) as i32,
                collection_name: short.to_string(),
                aliases: aliases["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect(),
                db_name: mdb_name.to_string(),
                num_partitions: m.partitions.len() as i64,
                db_id: d["data"]["dbID"].as_i64().unwrap_or(0),
                ..Default::default()
            })
        })
    }

    async fn has_collection(
        &self,
        r: Request<mpb::HasCollectionRequest>,
    ) -> Rpc<mpb::BoolResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::BoolResponse, {
            let v = self
                .call(
                    "collections/has",
                    body(db_of(&mdb, &r.db_name), &r.collection_name),
                )
                .await?;
            Ok(mpb::BoolResponse {
                status: Some(status_ok()),
                value: v["data"]["has"].as_bool().unwrap_or(false),
            })
        })
    }

    async fn show_collections(
        &self,
        r: Request<mpb::ShowCollectionsRequest>,
    ) -> Rpc<mpb::ShowCollectionsResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ShowCollectionsResponse, {
            let db = db_of(&mdb, &r.db_name);
            let v = self.call("collections/list", body(db, "")).await?;
            let mut out = mpb::ShowCollectionsResponse {
                status: Some(status_ok()),
                ..Default::default()
            };
            #[allow(deprecated)]
            let wanted = |n: &str| {
                r.collection_names.is_empty() || r.collection_names.iter().any(|w| w == n)
            };
            for n in v["data"].as_array().into_iter().flatten() {
                let n = n.as_str().unwrap_or_default();
                if !wanted(n) {
                    continue;
                }
                // A collection dropped since the listing is left out.
                let Ok((m, shards)) = self.b.collection(db, n).await else {
                    continue;
                };
                out.collection_names.push(n.to_string());
                out.collection_ids.push(m.id as i64);
                out.created_timestamps
                    .push(magpie_engine::types::ts_from_ms(m.created_ms));
                out.created_utc_timestamps.push(m.created_ms);
                out.query_service_available.push(m.loaded);
                out.shards_num.push(shards as i32);
            }
            Ok(out)
        })
    }

    async fn drop_collection(&self, r: Request<mpb::DropCollectionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = need(&r.collection_name, "collection_name")?;
            self.call("collections/drop", body(db_of(&mdb, &r.db_name), &name))
                .await?;
            Ok(status_ok())
        })
    }

    async fn rename_collection(
        &self,
        r: Request<mpb::RenameCollectionRequest>,
    ) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(db_of(&mdb, &r.db_name), &need(&r.old_name, "old_name")?);
            b.insert(
                "newCollectionName".into(),
                json!(need(&r.new_name, "new_name")?),
            );
            if !r.new_db_name.is_empty() {
                b.insert("newDbName".into(), json!(r.new_db_name));
            }
            self.call("collections/rename", b).await?;
            Ok(status_ok())
        })
    }

    async fn get_collection_statistics(
        &self,
        r: Request<mpb::GetCollectionStatisticsRequest>,
    ) -> Rpc<mpb::GetCollectionStatisticsResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetCollectionStatisticsResponse, {
            let name = need(&r.collection_name, "collection_name")?;
            let v = self
                .call(
                    "collections/get_stats",
                    body(db_of(&mdb, &r.db_name), &name),
                )
                .await?;
            Ok(mpb::GetCollectionStatisticsResponse {
                status: Some(status_ok()),
                stats: vec![kv("row_count", v["data"]["rowCount"].as_u64().unwrap_or(0))],
            })
        })
    }

    async fn load_collection(&self, r: Request<mpb::LoadCollectionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = need(&r.collection_name, "collection_name")?;
            self.call("collections/load", body(db_of(&mdb, &r.db_name), &name))
                .await?;
            Ok(status_ok())
        })
    }

    async fn release_collection(
        &self,
        r: Request<mpb::ReleaseCollectionRequest>,
    ) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = need(&r.collection_name, "collection_name")?;
            self.call("collections/release", body(db_of(&mdb, &r.db_name), &name))
                .await?;
            Ok(status_ok())
        })
    }

    /// Partitions load with their collection, as on standalone.
    async fn load_partitions(&self, r: Request<mpb::LoadPartitionsRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = db_of(&mdb, &r.db_name);
            let meta = self.meta(db, &r.collection_name).await?;
            for p in &r.partition_names {
                if !meta.partitions.iter().any(|x| &x.name == p) {
                    return Err(ApiError::from(
                        magpie_engine::EngineError::PartitionNotFound {
                            collection: r.collection_name.clone(),
                            partition: p.clone(),
                        },
                    ));
                }
            }
            self.call("collections/load", body(db, &r.collection_name))
                .await?;
            Ok(status_ok())
        })
    }

    async fn get_load_state(
        &self,
        r: Request<mpb::GetLoadStateRequest>,
    ) -> Rpc<mpb::GetLoadStateResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetLoadStateResponse, {
            let b = body(db_of(&mdb, &r.db_name), &r.collection_name);
            let has = self.call("collections/has", b.clone()).await?;
            let state = if has["data"]["has"] != json!(true) {
                cpb::LoadState::NotExist
            } else {
                let v = self.call("collections/get_load_state", b).await?;
                match v["data"]["loadState"].as_str() {
                    Some("LoadStateLoaded") => cpb::LoadState::Loaded,
                    Some("LoadStateLoading") => cpb::LoadState::Loading,
                    _ => cpb::LoadState::NotLoad,
                }
            };
            Ok(mpb::GetLoadStateResponse {
                status: Some(status_ok()),
                state: state as i32,
            })
        })
    }

    async fn get_loading_progress(
        &self,
        r: Request<mpb::GetLoadingProgressRequest>,
    ) -> Rpc<mpb::GetLoadingProgressResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetLoadingProgressResponse, {
            let name = need(&r.collection_name, "collection_name")?;
            let v = self
                .call(
                    "collections/get_load_state",
                    body(db_of(&mdb, &r.db_name), &name),
                )
                .await?;
            let progress = v["data"]["loadProgress"].as_i64().unwrap_or(0);
            Ok(mpb::GetLoadingProgressResponse {
                status: Some(status_ok()),
                progress,
                refresh_progress: progress,
            })
        })
    }

    async fn flush(&self, r: Request<mpb::FlushRequest>) -> Rpc<mpb::FlushResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::FlushResponse, {
            let db = db_of(&mdb, &r.db_name);
            for n in &r.collection_names {
                self.call("collections/flush", body(db, n)).await?;
            }
            let ts = now_ts();
            Ok(flush_reply(db.to_string(), &r.collection_names, ts))
        })
    }

    /// A Flush returns once the data is flushed, so whatever it returned is flushed.
    async fn get_flush_state(
        &self,
        r: Request<mpb::GetFlushStateRequest>,
    ) -> Rpc<mpb::GetFlushStateResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetFlushStateResponse, {
            if !r.collection_name.is_empty() {
                self.meta(db_of(&mdb, &r.db_name), &r.collection_name)
                    .await?;
            }
            Ok(mpb::GetFlushStateResponse {
                status: Some(status_ok()),
                flushed: true,
            })
        })
    }

    // ------------------------------------------------------------ bulk import

    /// `utility.do_bulk_insert`: the files are one group, paths in the backend's import
    /// source, as over REST (`jobs/import/create`).
    async fn import(&self, r: Request<mpb::ImportRequest>) -> Rpc<mpb::ImportResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ImportResponse, {
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            if !r.partition_name.is_empty() {
                b.insert("partitionName".into(), json!(r.partition_name));
            }
            b.insert("files".into(), json!([r.files]));
            let v = self.call("jobs/import/create", b).await?;
            let id = v["data"]["jobId"].as_str().unwrap_or_default();
            Ok(mpb::ImportResponse {
                status: Some(status_ok()),
                tasks: vec![super::import_task_id(id)?],
            })
        })
    }

    async fn get_import_state(
        &self,
        r: Request<mpb::GetImportStateRequest>,
    ) -> Rpc<mpb::GetImportStateResponse> {
        let r = r.into_inner();
        reply!(mpb::GetImportStateResponse, {
            let mut b = Map::new();
            b.insert("jobId".into(), json!(r.task.to_string()));
            let v = self.call("jobs/import/get_progress", b).await?;
            Ok(import_state_json(&v["data"]))
        })
    }

    async fn list_import_tasks(
        &self,
        r: Request<mpb::ListImportTasksRequest>,
    ) -> Rpc<mpb::ListImportTasksResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ListImportTasksResponse, {
            let v = self
                .call(
                    "jobs/import/list",
                    body(db_of(&mdb, &r.db_name), &r.collection_name),
                )
                .await?;
            let mut tasks = Vec::new();
            for rec in v["data"]["records"].as_array().into_iter().flatten() {
                let mut b = Map::new();
                b.insert("jobId".into(), rec["jobId"].clone());
                let p = self.call("jobs/import/get_progress", b).await?;
                tasks.push(import_state_json(&p["data"]));
            }
            if r.limit > 0 {
                let keep = tasks.len().saturating_sub(r.limit as usize);
                tasks.drain(..keep);
            }
            Ok(mpb::ListImportTasksResponse {
                status: Some(status_ok()),
                tasks,
            })
        })
    }

    // ------------------------------------------------------------ partitions

    async fn create_partition(&self, r: Request<mpb::CreatePartitionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            b.insert(
                "partitionName".into(),
                json!(need(&r.partition_name, "partition_name")?),
            );
            self.call("partitions/create", b).await?;
            Ok(status_ok())
        })
    }

    async fn drop_partition(&self, r: Request<mpb::DropPartitionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            b.insert(
                "partitionName".into(),
                json!(need(&r.partition_name, "partition_name")?),
            );
            self.call("partitions/drop", b).await?;
            Ok(status_ok())
        })
    }

    async fn has_partition(&self, r: Request<mpb::HasPartitionRequest>) -> Rpc<mpb::BoolResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::BoolResponse, {
            let meta = self
                .meta(db_of(&mdb, &r.db_name), &r.collection_name)
                .await?;
            let p = need(&r.partition_name, "partition_name")?;
            Ok(mpb::BoolResponse {
                status: Some(status_ok()),
                value: meta.partitions.iter().any(|x| x.name == p),
            })
        })
    }

    async fn show_partitions(
        &self,
        r: Request<mpb::ShowPartitionsRequest>,
    ) -> Rpc<mpb::ShowPartitionsResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ShowPartitionsResponse, {
            let m = self
                .meta(db_of(&mdb, &r.db_name), &r.collection_name)
                .await?;
            let created = magpie_engine::types::ts_from_ms(m.created_ms);
            Ok(mpb::ShowPartitionsResponse {
                status: Some(status_ok()),
                partition_names: m.partitions.iter().map(|p| p.name.clone()).collect(),
                partition_i_ds: m.partitions.iter().map(|p| p.id as i64).collect(),
                created_timestamps: m.partitions.iter().map(|_| created).collect(),
                created_utc_timestamps: m.partitions.iter().map(|_| m.created_ms).collect(),
                ..Default::default()
            })
        })
    }

    async fn get_partition_statistics(
        &self,
        r: Request<mpb::GetPartitionStatisticsRequest>,
    ) -> Rpc<mpb::GetPartitionStatisticsResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetPartitionStatisticsResponse, {
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            b.insert(
                "partitionNames".into(),
                json!([need(&r.partition_name, "partition_name")?]),
            );
            b.insert("outputFields".into(), json!(["count(*)"]));
            b.insert("consistencyLevel".into(), json!("Strong"));
            let v = self.call("entities/query", b).await?;
            let n = v["data"][0]["count(*)"].as_i64().unwrap_or(0);
            Ok(mpb::GetPartitionStatisticsResponse {
                status: Some(status_ok()),
                stats: vec![kv("row_count", n)],
            })
        })
    }

    // ------------------------------------------------------------ indexes

    async fn create_index(&self, r: Request<mpb::CreateIndexRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            let field = need(&r.field_name, "field_name")?;
            let m = index_meta(&field, &r.index_name, &r.extra_params)?;
            let mut p = json!({
                "fieldName": m.field_name,
                "indexName": m.index_name,
                "indexType": m.index_type,
                "params": m.params,
            });
            // Left out when not given: the backend picks the field's default metric.
            if param(&r.extra_params, "metric_type").is_some_and(|v| !v.is_empty()) {
                p["metricType"] = json!(m.metric_type.as_str());
            }
            b.insert("indexParams".into(), json!([p]));
            self.call("indexes/create", b).await?;
            Ok(status_ok())
        })
    }

    async fn describe_index(
        &self,
        r: Request<mpb::DescribeIndexRequest>,
    ) -> Rpc<mpb::DescribeIndexResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::DescribeIndexResponse, {
            let db = db_of(&mdb, &r.db_name);
            let meta = self.meta(db, &r.collection_name).await?;
            let mut b = body(db, &r.collection_name);
            if !r.index_name.is_empty() {
                b.insert("indexName".into(), json!(r.index_name));
            }
            let v = self.call("indexes/describe", b).await?;
            let mut list = Vec::new();
            for x in v["data"].as_array().into_iter().flatten() {
                let name = x["indexName"].as_str().unwrap_or_default();
                let Some(im) = meta.indexes.iter().find(|i| i.index_name == name) else {
                    continue;
                };
                if !r.field_name.is_empty() && im.field_name != r.field_name {
                    continue;
                }
                let scalar = meta
                    .schema
                    .field(&im.field_name)
                    .is_some_and(|f| !f.data_type.is_dense_vector() && !f.is_sparse());
                let n = |k: &str| x[k].as_i64().unwrap_or(0);
                list.push(mpb::IndexDescription {
                    index_name: im.index_name.clone(),
                    index_id: im.id as i64,
                    params: index_params_pb(im, scalar),
                    field_name: im.field_name.clone(),
                    indexed_rows: n("indexedRows"),
                    total_rows: n("totalRows") + n("pendingRows"),
                    state: match x["indexState"].as_str() {
                        Some("Finished") => cpb::IndexState::Finished,
                        Some("Failed") => cpb::IndexState::Failed,
                        _ => cpb::IndexState::InProgress,
                    } as i32,
                    index_state_fail_reason: x["failReason"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    pending_index_rows: n("pendingRows"),
                    ..Default::default()
                });
            }
            if list.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    CODE_INDEX_NOT_FOUND,
                    format!("index not found[collection={}]", r.collection_name),
                ));
            }
            Ok(mpb::DescribeIndexResponse {
                status: Some(status_ok()),
                index_descriptions: list,
            })
        })
    }

    async fn drop_index(&self, r: Request<mpb::DropIndexRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = db_of(&mdb, &r.db_name);
            let name = if r.index_name.is_empty() {
                let meta = self.meta(db, &r.collection_name).await?;
                meta.indexes
                    .iter()
                    .find(|i| i.field_name == r.field_name)
                    .map(|i| i.index_name.clone())
                    .ok_or_else(|| bad(format!("field '{}' has no index", r.field_name)))?
            } else {
                r.index_name.clone()
            };
            let mut b = body(db, &need(&r.collection_name, "collection_name")?);
            b.insert("indexName".into(), json!(name));
            self.call("indexes/drop", b).await?;
            Ok(status_ok())
        })
    }

    // ------------------------------------------------------------ entities

    async fn insert(&self, r: Request<mpb::InsertRequest>) -> Rpc<mpb::MutationResult> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::MutationResult, {
            self.write(
                db_of(&mdb, &r.db_name),
                &r.collection_name,
                r.partition_name,
                r.fields_data,
                r.num_rows,
                false,
            )
            .await
        })
    }

    async fn upsert(&self, r: Request<mpb::UpsertRequest>) -> Rpc<mpb::MutationResult> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::MutationResult, {
            if r.partial_update {
                return Err(bad(
                    "partial_update upserts are not supported by Magpie yet; send whole rows",
                ));
            }
            self.write(
                db_of(&mdb, &r.db_name),
                &r.collection_name,
                r.partition_name,
                r.fields_data,
                r.num_rows,
                true,
            )
            .await
        })
    }

    async fn delete(&self, r: Request<mpb::DeleteRequest>) -> Rpc<mpb::MutationResult> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::MutationResult, {
            let expr = convert::fill_templates(&r.expr, &r.expr_template_values).map_err(bad)?;
            let mut b = body(
                db_of(&mdb, &r.db_name),
                &need(&r.collection_name, "collection_name")?,
            );
            if expr.trim().is_empty() {
                return Err(bad(
                    "delete needs an expression ('expr'), e.g. id in [1, 2]",
                ));
            }
            b.insert("filter".into(), json!(expr));
            if !r.partition_name.is_empty() {
                b.insert("partitionName".into(), json!(r.partition_name));
            }
            let v = self.call("entities/delete", b).await?;
            Ok(mpb::MutationResult {
                status: Some(status_ok()),
                delete_cnt: v["data"]["deleteCount"].as_i64().unwrap_or(0),
                timestamp: now_ts(),
                ..Default::default()
            })
        })
    }

    async fn query(&self, r: Request<mpb::QueryRequest>) -> Rpc<mpb::QueryResults> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::QueryResults, {
            let expr = convert::fill_templates(&r.expr, &r.expr_template_values).map_err(bad)?;
            let db = db_of(&mdb, &r.db_name);
            let meta = self.meta(db, &r.collection_name).await?;
            let limit: Option<usize> = param_num(&r.query_params, "limit")?;
            let offset: Option<usize> = param_num(&r.query_params, "offset")?;
            let mut b = body(db, &r.collection_name);
            if !expr.trim().is_empty() {
                b.insert("filter".into(), json!(expr));
            }
            b.insert("outputFields".into(), json!(r.output_fields));
            b.insert("partitionNames".into(), json!(r.partition_names));
            if let Some(l) = limit {
                b.insert("limit".into(), json!(l));
            }
            b.insert("offset".into(), json!(offset.unwrap_or(0)));
            if let Some(c) = consistency(r.consistency_level, r.use_default_consistency) {
                b.insert("consistencyLevel".into(), json!(c.as_str()));
            }
            let v = self.call("entities/query", b).await?;
            let rows: Vec<&Map<String, Value>> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .collect();
            let fields_data = convert::fields_from_rows(&meta.schema, &rows, &r.output_fields);
            let output_fields =
                super::result_output_fields(&meta.schema, &fields_data, &r.output_fields);
            Ok(mpb::QueryResults {
                status: Some(status_ok()),
                fields_data,
                collection_name: r.collection_name,
                output_fields,
                primary_field_name: meta.schema.pk().name.clone(),
                session_ts: now_ts(),
            })
        })
    }

    async fn search(&self, r: Request<mpb::SearchRequest>) -> Rpc<mpb::SearchResults> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::SearchResults, {
            let db = db_of(&mdb, &r.db_name);
            let meta = self.meta(db, &r.collection_name).await?;
            let (mut b, p) = search_body(&r)?;
            b.extend(body(db, &r.collection_name));
            let v = self.call("entities/search", b).await?;
            let hits = hits_of_reply(&v, meta.schema.pk())?;
            let mut res = convert::search_result(&meta.schema, &hits, p.limit, &r.output_fields);
            if let Some(g) = &p.group_by {
                res.group_by_field_value = convert::group_values(&meta.schema, &hits, g);
                if !r.output_fields.iter().any(|f| f == g || f == "*") {
                    res.fields_data.retain(|f| &f.field_name != g);
                }
            }
            Ok(search_reply(
                &meta.schema,
                res,
                &r.output_fields,
                p.round_decimal,
                r.collection_name.clone(),
            ))
        })
    }

    async fn hybrid_search(&self, r: Request<mpb::HybridSearchRequest>) -> Rpc<mpb::SearchResults> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::SearchResults, {
            let db = db_of(&mdb, &r.db_name);
            let meta = self.meta(db, &r.collection_name).await?;
            // pymilvus sends each ranker key's value JSON-encoded, except plain strings.
            let json_param = |k: &str| -> Option<Value> {
                param(&r.rank_params, k)
                    .map(|v| serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::from(v)))
            };
            let limit: usize = param_num(&r.rank_params, "limit")?.unwrap_or(10);
            let offset: usize = param_num(&r.rank_params, "offset")?.unwrap_or(0);
            let round_decimal: i64 = param_num(&r.rank_params, "round_decimal")?.unwrap_or(-1);
            let mut subs = Vec::with_capacity(r.requests.len());
            for (i, s) in r.requests.iter().enumerate() {
                let (b, _) =
                    search_body(s).map_err(|e| bad(format!("sub-search {i}: {}", e.message)))?;
                subs.push(Value::Object(b));
            }
            let mut b = body(db, &r.collection_name);
            b.insert("search".into(), Value::Array(subs));
            if let Some(s) = json_param("strategy") {
                b.insert(
                    "rerank".into(),
                    json!({"strategy": s, "params": json_param("params").unwrap_or_else(|| json!({}))}),
                );
            }
            if let Some(f) = super::function_score_value(r.function_score.as_ref()) {
                b.insert("functionScore".into(), f);
            }
            b.insert("limit".into(), json!(limit));
            b.insert("offset".into(), json!(offset));
            b.insert("outputFields".into(), json!(r.output_fields));
            b.insert("partitionNames".into(), json!(r.partition_names));
            if let Some(c) = consistency(r.consistency_level, r.use_default_consistency) {
                b.insert("consistencyLevel".into(), json!(c.as_str()));
            }
            let v = self.call("entities/hybrid_search", b).await?;
            let hits = hits_of_reply(&v, meta.schema.pk())?;
            let res = convert::search_result(&meta.schema, &hits, limit, &r.output_fields);
            Ok(search_reply(
                &meta.schema,
                res,
                &r.output_fields,
                round_decimal,
                r.collection_name.clone(),
            ))
        })
    }
}
