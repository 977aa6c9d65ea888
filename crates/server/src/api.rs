//! Handlers of the Milvus-shaped REST API (`/v2/vectordb/...`).
//!
//! Requests use Milvus RESTful v2 field names; responses use its envelope
//! `{"code": 0, "data": ...}`. Engine work runs on the blocking pool.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequest, Request, State};
use axum::Json;
use magpie_engine::engine::rerank::FunctionScore;
use magpie_engine::{
    CollectionSchema, Consistency, DataType, Engine, FieldSchema, HybridRequest, IndexMeta, Metric,
    QueryRequest, Rerank, SearchKnobs, SearchRequest,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

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

// ------------------------------------------------------------------ collections

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct FieldReq {
    field_name: String,
    data_type: String,
    element_data_type: Option<String>,
    is_primary: bool,
    #[serde(alias = "autoID")]
    auto_id: Option<bool>,
    nullable: bool,
    default_value: Option<Value>,
    element_type_params: Map<String, Value>,
    description: String,
    is_partition_key: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SchemaReq {
    #[serde(alias = "autoID")]
    auto_id: bool,
    enable_dynamic_field: Option<bool>,
    fields: Vec<FieldReq>,
    /// Embedding functions, in Milvus 2.6's shape.
    functions: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct IndexParamReq {
    pub(crate) field_name: String,
    pub(crate) index_name: String,
    pub(crate) metric_type: Option<String>,
    pub(crate) index_type: Option<String>,
    pub(crate) params: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    dimension: Option<usize>,
    metric_type: Option<String>,
    id_type: Option<String>,
    #[serde(alias = "autoID")]
    auto_id: Option<bool>,
    primary_field_name: Option<String>,
    vector_field_name: Option<String>,
    schema: Option<SchemaReq>,
    index_params: Vec<IndexParamReq>,
    params: Map<String, Value>,
    description: String,
}

/// A number given as a JSON number or a numeric string (Milvus accepts both).
/// A boolean of a field's `elementTypeParams` (true, or "true"; absent: false).
fn flag(m: &Map<String, Value>, key: &str, field: &str) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "field '{field}': {key} must be true or false, got {v}"
        ))),
    }
}

/// `enable_analyzer` (true, or "true") and `analyzer_params` (an object, or its JSON
/// text) of a field's `elementTypeParams`.
fn analyzer_params(m: &Map<String, Value>, field: &str) -> Result<(bool, Option<Value>), ApiError> {
    let enable = flag(m, "enable_analyzer", field)?;
    let params = match m.get("analyzer_params") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(serde_json::from_str(s).map_err(|e| {
            ApiError::bad_request(format!("field '{field}': analyzer_params is not JSON: {e}"))
        })?),
        Some(v) => Some(v.clone()),
    };
    Ok((enable, params))
}

fn num_param(m: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| ApiError::bad_request(format!("'{key}' must be a positive integer"))),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("'{key}' must be a positive integer, got '{s}'"))
        }),
        Some(v) => Err(ApiError::bad_request(format!(
            "'{key}' must be a positive integer, got {v}"
        ))),
    }
}

pub(crate) fn index_meta(p: &IndexParamReq) -> Result<IndexMeta, ApiError> {
    let index_type = p
        .index_type
        .clone()
        .or_else(|| {
            p.params
                .get("index_type")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| "AUTOINDEX".into());
    let m = p
        .metric_type
        .as_deref()
        .or_else(|| p.params.get("metric_type").and_then(|v| v.as_str()))
        .unwrap_or("COSINE");
    if p.field_name.is_empty() {
        return Err(ApiError::bad_request("index parameters need a 'fieldName'"));
    }
    Ok(IndexMeta {
        id: 0,
        index_name: if p.index_name.is_empty() {
            p.field_name.clone()
        } else {
            p.index_name.clone()
        },
        field_name: p.field_name.clone(),
        index_type,
        metric_type: metric(m)?,
        params: p.params.clone(),
    })
}

/// True when an index request names its metric (`index_meta` fills in COSINE otherwise).
pub(crate) fn metric_given(p: &IndexParamReq) -> bool {
    p.metric_type.as_deref().is_some_and(|s| !s.is_empty()) || p.params.get("metric_type").is_some()
}

/// Milvus's default metric for an index that names none: HAMMING on a BinaryVector field
/// (COSINE, which `index_meta` filled in, elsewhere).
pub(crate) fn default_binary_metric(schema: &CollectionSchema, m: &mut IndexMeta, given: bool) {
    if !given
        && schema
            .field(&m.field_name)
            .is_some_and(|f| f.data_type == DataType::BinaryVector)
    {
        m.metric_type = Metric::HAMMING;
    }
}

fn build_schema(r: &CreateReq) -> Result<(CollectionSchema, Vec<IndexMeta>), ApiError> {
    let mut indexes = r
        .index_params
        .iter()
        .map(index_meta)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = &r.schema {
        let mut fields = Vec::new();
        for f in &s.fields {
            let dt = DataType::parse(&f.data_type).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "field '{}': unknown dataType '{}'",
                    f.field_name, f.data_type
                ))
            })?;
            let mut fs = FieldSchema::new(&f.field_name, dt);
            fs.is_primary = f.is_primary;
            fs.auto_id = f.is_primary && f.auto_id.unwrap_or(s.auto_id);
            fs.nullable = f.nullable;
            fs.default_value = f.default_value.clone();
            fs.description = f.description.clone();
            if f.is_partition_key {
                fs.partition_key = Some(
                    num_param(&r.params, "partitionsNum")?
                        .unwrap_or(magpie_engine::schema::DEFAULT_KEY_PARTITIONS),
                );
            }
            fs.dim = num_param(&f.element_type_params, "dim")?;
            fs.max_length = num_param(&f.element_type_params, "max_length")?;
            fs.max_capacity = num_param(&f.element_type_params, "max_capacity")?;
            (fs.enable_analyzer, fs.analyzer_params) =
                analyzer_params(&f.element_type_params, &f.field_name)?;
            fs.enable_match = flag(&f.element_type_params, "enable_match", &f.field_name)?;
            if let Some(et) = &f.element_data_type {
                fs.element_type = Some(DataType::parse(et).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "field '{}': unknown elementDataType '{et}'",
                        f.field_name
                    ))
                })?);
            }
            fields.push(fs);
        }
        let functions = s
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                serde_json::from_value::<magpie_engine::FunctionSchema>(f.clone()).map_err(|e| {
                    ApiError::bad_request(format!(
                        "schema.functions[{i}]: {e} (expected {{\"name\", \"type\": \"TextEmbedding\", \"inputFieldNames\", \"outputFieldNames\", \"params\": {{\"model\": ...}}}})"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema = CollectionSchema {
            fields,
            enable_dynamic_field: s.enable_dynamic_field.unwrap_or(false),
            description: r.description.clone(),
            functions,
        };
        for (m, p) in indexes.iter_mut().zip(&r.index_params) {
            default_binary_metric(&schema, m, metric_given(p));
        }
        return Ok((schema, indexes));
    }
    // Quick setup: id + vector + dynamic field, indexed with the given metric.
    let dim = r.dimension.ok_or_else(|| {
        ApiError::bad_request("give either 'schema' or 'dimension' (quick setup)")
    })?;
    let pk_name = r.primary_field_name.clone().unwrap_or_else(|| "id".into());
    let vec_name = r
        .vector_field_name
        .clone()
        .unwrap_or_else(|| "vector".into());
    let pk = match r
        .id_type
        .as_deref()
        .unwrap_or("Int64")
        .to_ascii_lowercase()
        .as_str()
    {
        "int64" => FieldSchema::new(&pk_name, DataType::Int64).primary(r.auto_id.unwrap_or(false)),
        "varchar" | "string" => {
            let max = num_param(&r.params, "max_length")?.unwrap_or(65535);
            FieldSchema::new(&pk_name, DataType::VarChar)
                .primary(false)
                .with_max_length(max)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "idType must be Int64 or VarChar, not '{other}'"
            )))
        }
    };
    let schema = CollectionSchema {
        fields: vec![
            pk,
            FieldSchema::new(&vec_name, DataType::FloatVector).with_dim(dim),
        ],
        enable_dynamic_field: true,
        description: r.description.clone(),
        functions: Vec::new(),
    };
    if indexes.is_empty() {
        indexes.push(IndexMeta {
            id: 0,
            index_name: vec_name.clone(),
            field_name: vec_name,
            index_type: "AUTOINDEX".into(),
            metric_type: metric(r.metric_type.as_deref().unwrap_or("COSINE"))?,
            params: Map::new(),
        });
    }
    Ok((schema, indexes))
}

/// The REST `collections/create` body of a schema, without indexes: the inverse of
/// `build_schema` (`rest_schema_round_trips` checks it). The gRPC bridge
/// (`grpc/bridge.rs`) creates collections on a REST backend with it.
pub fn create_body(schema: &CollectionSchema) -> Value {
    let mut params = Map::new();
    let fields: Vec<Value> = schema
        .fields
        .iter()
        .map(|f| {
            let mut etp = Map::new();
            for (k, v) in [
                ("dim", f.dim),
                ("max_length", f.max_length),
                ("max_capacity", f.max_capacity),
            ] {
                if let Some(v) = v {
                    etp.insert(k.into(), json!(v));
                }
            }
            if f.enable_analyzer {
                etp.insert("enable_analyzer".into(), json!(true));
            }
            if let Some(a) = &f.analyzer_params {
                etp.insert("analyzer_params".into(), a.clone());
            }
            if f.enable_match {
                etp.insert("enable_match".into(), json!(true));
            }
            if let Some(n) = f.partition_key {
                params.insert("partitionsNum".into(), json!(n));
            }
            let mut o = json!({
                "fieldName": f.name,
                "dataType": f.data_type,
                "isPrimary": f.is_primary,
                "autoId": f.auto_id,
                "nullable": f.nullable,
                "description": f.description,
                "isPartitionKey": f.partition_key.is_some(),
                "elementTypeParams": etp,
            });
            if let Some(d) = &f.default_value {
                o["defaultValue"] = d.clone();
            }
            if let Some(t) = f.element_type {
                o["elementDataType"] = json!(t);
            }
            o
        })
        .collect();
    json!({
        "schema": {
            "enableDynamicField": schema.enable_dynamic_field,
            "fields": fields,
            "functions": schema.functions,
        },
        "description": schema.description,
        "params": params,
    })
}

pub async fn create_collection(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CreateReq>,
) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let (schema, indexes) = build_schema(&r)?;
    let cons = consistency(
        &r.params
            .get("consistencyLevel")
            .and_then(|v| v.as_str())
            .map(String::from),
    )?
    .unwrap_or_default();
    let desc = r.description.clone();
    blocking(&st, move |e| {
        e.create_collection(&name, schema, indexes, cons, &desc)
    })
    .await?;
    ok(json!({}))
}

fn describe_json(m: &magpie_engine::CollectionMeta) -> Value {
    let fields: Vec<Value> = m
        .schema
        .fields
        .iter()
        .map(|f| {
            let mut params = Vec::new();
            if let Some(d) = f.dim {
                params.push(json!({"key": "dim", "value": d.to_string()}));
            }
            if let Some(l) = f.max_length {
                params.push(json!({"key": "max_length", "value": l.to_string()}));
            }
            if let Some(c) = f.max_capacity {
                params.push(json!({"key": "max_capacity", "value": c.to_string()}));
            }
            if f.enable_analyzer {
                params.push(json!({"key": "enable_analyzer", "value": "true"}));
            }
            if f.enable_match {
                params.push(json!({"key": "enable_match", "value": "true"}));
            }
            if let Some(a) = &f.analyzer_params {
                params.push(json!({"key": "analyzer_params", "value": a.to_string()}));
            }
            let mut o = json!({
                "name": f.name, "type": format!("{:?}", f.data_type), "primaryKey": f.is_primary,
                "partitionKey": f.partition_key.is_some(),
                "autoId": f.auto_id, "nullable": f.nullable, "params": params, "description": f.description,
            });
            if let Some(et) = f.element_type {
                o["elementType"] = json!(format!("{et:?}"));
            }
            if let Some(d) = &f.default_value {
                o["defaultValue"] = d.clone();
            }
            o
        })
        .collect();
    let (db, name) = magpie_engine::split_qualified(&m.name);
    json!({
        "collectionName": name,
        "dbName": db,
        "collectionID": m.id,
        "description": m.description,
        "autoId": m.schema.pk().auto_id,
        "enableDynamicField": m.schema.enable_dynamic_field,
        "fields": fields,
        "functions": m.schema.functions,
        "indexes": m.indexes.iter().map(|i| {
            let scalar = m.schema.field(&i.field_name).is_some_and(|f| !f.is_vector());
            json!({"fieldName": i.field_name, "indexName": i.index_name, "metricType": if scalar { "" } else { i.metric_type.as_str() }})
        }).collect::<Vec<_>>(),
        "load": if m.loaded { "LoadStateLoaded" } else { "LoadStateNotLoad" },
        "partitionsNum": m.partitions.len(),
        "consistencyLevel": m.consistency.as_str(),
        "shardsNum": 1,
        "createdTime": m.created_ms,
        "properties": [],
    })
}

pub async fn describe_collection(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let (m, aliases) = blocking(&st, move |e| {
        let m = e.describe_collection(&name)?;
        let db = magpie_engine::split_qualified(&m.name).0.to_string();
        Ok((m.clone(), e.list_aliases(&db, Some(&m.name))))
    })
    .await?;
    let mut v = describe_json(&m);
    v["aliases"] = json!(aliases
        .iter()
        .map(|(a, _)| magpie_engine::split_qualified(a).1)
        .collect::<Vec<_>>());
    ok(v)
}

pub async fn list_collections(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> ApiResult {
    let db = db_of(&st, &r.db_name)?;
    let v = blocking(&st, |e| Ok(e.list_collections())).await?;
    ok(json!(in_database(&db, v)))
}

/// The names (unqualified) of those of `names` that are in database `db`.
pub(crate) fn in_database(db: &str, names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|q| {
            let (d, n) = magpie_engine::split_qualified(&q);
            (d == db).then(|| n.to_string())
        })
        .collect()
}

pub async fn has_collection(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let has = blocking(&st, move |e| Ok(e.has_collection(&name))).await?;
    ok(json!({"has": has}))
}

pub async fn drop_collection(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    blocking(&st, move |e| e.drop_collection(&name)).await?;
    ok(json!({}))
}

pub async fn rename_collection(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let new = r
        .new_collection_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'newCollectionName'"))?;
    let new_db = db_of(&st, &r.new_db_name.clone().or(r.db_name.clone()))?;
    let new = magpie_engine::qualified(&new_db, &new);
    blocking(&st, move |e| e.rename_collection(&name, &new)).await?;
    ok(json!({}))
}

pub async fn get_stats(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let s = blocking(&st, move |e| e.collection_stats(&name)).await?;
    ok(
        json!({"rowCount": s.row_count, "segments": {"growing": s.segments_growing, "sealed": s.segments_sealed, "flushed": s.segments_flushed}, "diskBytes": s.disk_bytes}),
    )
}

pub async fn load_collection(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    blocking(&st, move |e| e.set_loaded(&name, true)).await?;
    ok(json!({}))
}

pub async fn release_collection(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    blocking(&st, move |e| e.set_loaded(&name, false)).await?;
    ok(json!({}))
}

/// Milvus's load state of a collection and its progress in percent. On a remote store a
/// loaded collection is "loading" until every vector and index file has been fetched (in
/// the background after a restart, or on first use).
pub(crate) fn load_state(e: &Engine, name: &str) -> magpie_engine::Result<(&'static str, usize)> {
    let m = e.describe_collection(name)?;
    let stats = e.collection_stats(name)?;
    Ok(if !m.loaded {
        ("LoadStateNotLoad", 0)
    } else if stats.files_unfetched > 0 {
        let total = stats.files_remote.max(1);
        let done = total.saturating_sub(stats.files_unfetched);
        ("LoadStateLoading", (done * 100 / total).min(99))
    } else {
        ("LoadStateLoaded", 100)
    })
}

pub async fn get_load_state(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let (state, progress) = blocking(&st, move |e| load_state(e, &name)).await?;
    ok(json!({"loadState": state, "loadProgress": progress}))
}

pub async fn flush(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    blocking(&st, move |e| e.flush(&name)).await?;
    ok(json!({}))
}

pub async fn compact(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let name = need_in(&st, &r.db_name, &r.collection_name)?;
    let (removed, written) = blocking(&st, move |e| e.compact(&name)).await?;
    ok(json!({"segmentsRemoved": removed, "segmentsWritten": written}))
}

// ------------------------------------------------------------------ partitions

fn need_partition(r: &CollReq) -> Result<String, ApiError> {
    r.partition_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing 'partitionName'"))
}

pub async fn create_partition(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> ApiResult {
    let (c, p) = (
        need_in(&st, &r.db_name, &r.collection_name)?,
        need_partition(&r)?,
    );
    blocking(&st, move |e| e.create_partition(&c, &p)).await?;
    ok(json!({}))
}

pub async fn drop_partition(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let (c, p) = (
        need_in(&st, &r.db_name, &r.collection_name)?,
        need_partition(&r)?,
    );
    blocking(&st, move |e| e.drop_partition(&c, &p)).await?;
    ok(json!({}))
}

pub async fn list_partitions(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    ok(json!(blocking(&st, move |e| e.list_partitions(&c)).await?))
}

pub async fn has_partition(State(st): State<Arc<AppState>>, Body(r): Body<CollReq>) -> ApiResult {
    let (c, p) = (
        need_in(&st, &r.db_name, &r.collection_name)?,
        need_partition(&r)?,
    );
    ok(json!({"has": blocking(&st, move |e| e.has_partition(&c, &p)).await?}))
}

// ------------------------------------------------------------------ entities

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WriteReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    partition_name: Option<String>,
    data: Value,
}

fn rows_of(data: Value) -> Result<Vec<Value>, ApiError> {
    match data {
        Value::Array(a) => Ok(a),
        Value::Object(_) => Ok(vec![data]),
        Value::Null => Err(ApiError::bad_request("missing 'data': give a list of rows")),
        _ => Err(ApiError::bad_request(
            "'data' must be a list of row objects",
        )),
    }
}

pub async fn insert(State(st): State<Arc<AppState>>, Body(r): Body<WriteReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let rows = rows_of(r.data)?;
    let p = r.partition_name;
    let res = blocking(&st, move |e| e.insert(&c, p.as_deref(), &rows)).await?;
    ok(
        json!({"insertCount": res.count, "insertIds": res.ids.iter().map(|i| i.to_json()).collect::<Vec<_>>()}),
    )
}

pub async fn upsert(State(st): State<Arc<AppState>>, Body(r): Body<WriteReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let rows = rows_of(r.data)?;
    let p = r.partition_name;
    let res = blocking(&st, move |e| e.upsert(&c, p.as_deref(), &rows)).await?;
    ok(
        json!({"upsertCount": res.count, "upsertIds": res.ids.iter().map(|i| i.to_json()).collect::<Vec<_>>()}),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    partition_name: Option<String>,
    filter: Option<String>,
    ids: Option<Value>,
}

fn id_list(v: Option<Value>) -> Option<Vec<Value>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(x) => Some(vec![x]),
    }
}

pub async fn delete(State(st): State<Arc<AppState>>, Body(r): Body<DeleteReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let ids = id_list(r.ids);
    let (p, f) = (r.partition_name, r.filter);
    let n = blocking(&st, move |e| {
        e.delete(&c, p.as_deref(), ids.as_deref(), f.as_deref())
    })
    .await?;
    ok(json!({"deleteCount": n}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    filter: Option<String>,
    #[serde(alias = "ids")]
    id: Option<Value>,
    output_fields: Vec<String>,
    partition_names: Vec<String>,
    limit: Option<usize>,
    offset: usize,
    consistency_level: Option<String>,
}

async fn run_query(st: Arc<AppState>, r: QueryReq, is_get: bool) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let ids = id_list(r.id);
    if is_get && ids.is_none() {
        return Err(ApiError::bad_request(
            "get needs 'id': one primary key or a list",
        ));
    }
    let q = QueryRequest {
        filter: r.filter,
        ids,
        output_fields: r.output_fields,
        partitions: r.partition_names,
        limit: r.limit,
        offset: r.offset,
        consistency: consistency(&r.consistency_level)?,
        snapshot: None,
    };
    let rows = blocking(&st, move |e| e.query(&c, &q)).await?;
    ok(Value::Array(rows.into_iter().map(Value::Object).collect()))
}

pub async fn query(State(st): State<Arc<AppState>>, Body(r): Body<QueryReq>) -> ApiResult {
    run_query(st, r, false).await
}

pub async fn get_entities(State(st): State<Arc<AppState>>, Body(r): Body<QueryReq>) -> ApiResult {
    run_query(st, r, true).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SearchReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    data: Option<Value>,
    ids: Option<Value>,
    anns_field: Option<String>,
    filter: Option<String>,
    limit: Option<usize>,
    offset: usize,
    output_fields: Vec<String>,
    partition_names: Vec<String>,
    search_params: Map<String, Value>,
    /// The knobs as hybrid-search sub-requests carry them (`searchParams.params` on a
    /// plain search).
    params: Map<String, Value>,
    metric_type: Option<String>,
    grouping_field: Option<String>,
    group_size: Option<usize>,
    consistency_level: Option<String>,
    /// Milvus 2.6's function rerankers: `{"functions": [...], "params": {...}}`.
    function_score: Option<Value>,
    /// Magpie's: BM25 statistics to weigh a text search's terms by (`{"n", "total",
    /// "df": {"term": count}}`) instead of the collection's own; a cluster proxy sends
    /// the sum over its shards.
    bm25_stats: Option<magpie_engine::Bm25Stats>,
}

/// `functionScore` of a search or hybrid search: `{"functions": [{"name", "type":
/// "Rerank", "inputFieldNames", "params": {"reranker": "decay" | "boost", ...}}],
/// "params": {"boost_mode", "function_mode"}}`.
pub fn function_score(v: Option<&Value>) -> Result<Option<FunctionScore>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let o = v.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "'functionScore' must be an object {{\"functions\": [...], \"params\": {{...}}}}, got {v}"
        ))
    })?;
    if let Some(k) = o.keys().find(|k| *k != "functions" && *k != "params") {
        return Err(ApiError::bad_request(format!(
            "'functionScore' has no '{k}' (functions, params)"
        )));
    }
    let functions = match o.get("functions") {
        Some(Value::Array(a)) => a.as_slice(),
        _ => {
            return Err(ApiError::bad_request(
                "'functionScore' needs 'functions', a list of rerank functions",
            ))
        }
    };
    let params = match o.get("params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(x) => {
            return Err(ApiError::bad_request(format!(
                "'functionScore.params' must be an object, got {x}"
            )))
        }
    };
    Ok(Some(FunctionScore::parse(functions, params)?))
}

pub(crate) fn f32_param(m: &Map<String, Value>, key: &str) -> Result<Option<f32>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ApiError::bad_request(format!("'{key}' must be a number"))),
    }
}

/// Milvus's `searchParams.params` knobs: `ef`, `nprobe`, Magpie's `recall` target,
/// `refine` (or `refine_k`).
pub(crate) fn search_knobs(p: &Map<String, Value>) -> Result<SearchKnobs, ApiError> {
    Ok(SearchKnobs {
        ef: usize_param(p, "ef")?,
        nprobe: usize_param(p, "nprobe")?,
        recall: f32_param(p, "recall")?,
        refine: usize_param(p, "refine")?.or(usize_param(p, "refine_k")?),
        drop_ratio: f32_param(p, "drop_ratio_search")?,
    })
}

pub(crate) fn usize_param(m: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            ApiError::bad_request(format!("'{key}' must be a non-negative integer, got {v}"))
        }),
    }
}

/// What a search's `data` holds: query vectors, texts (for an embedding function),
/// images as `{"image": "<base64>"}` objects (for an ImageEmbedding function), or sparse
/// vectors (other objects, checked by the engine against the field); one kind per request.
struct QueryData {
    vectors: Vec<Vec<f32>>,
    texts: Vec<String>,
    images: Vec<Vec<u8>>,
    sparse: Vec<Value>,
}

fn query_data(data: Option<Value>) -> Result<QueryData, ApiError> {
    use base64::Engine as _;
    let mut q = QueryData {
        vectors: Vec::new(),
        texts: Vec::new(),
        images: Vec::new(),
        sparse: Vec::new(),
    };
    if let Some(Value::Array(a)) = &data {
        if !a.is_empty() && a.iter().all(|v| v.is_string()) {
            q.texts = a.iter().map(|v| v.as_str().unwrap().to_string()).collect();
            return Ok(q);
        }
        let is_image = |v: &Value| v.as_object().is_some_and(|o| o.contains_key("image"));
        if a.iter().any(|v| v.is_object()) && !a.iter().any(is_image) {
            for (i, v) in a.iter().enumerate() {
                if !v.is_object() {
                    return Err(ApiError::bad_request(format!(
                        "query {i} in 'data' must be a sparse vector object like the others"
                    )));
                }
            }
            q.sparse = a.clone();
            return Ok(q);
        }
        if a.iter().any(|v| v.is_object()) {
            for (i, v) in a.iter().enumerate() {
                let b64 = v
                    .as_object()
                    .and_then(|o| o.get("image"))
                    .and_then(|x| x.as_str())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "query {i} in 'data' must be {{\"image\": \"<base64>\"}} like the others"
                        ))
                    })?;
                // Accept a bare base64 string or a data: URI.
                let b64 = b64.split_once(',').map_or(b64, |(_, d)| d);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "query {i}: 'image' is not valid base64: {e}"
                        ))
                    })?;
                q.images.push(bytes);
            }
            return Ok(q);
        }
    }
    q.vectors = query_vectors(data)?;
    Ok(q)
}

/// The query data of a search body (`annsField` and `data` resolved as a search reads
/// them; nothing else): what a cluster proxy needs to embed a search's texts or images
/// once, with [`magpie_engine::Engine::embed_search_data`], before it fans the search
/// out as vectors.
pub fn search_data(body: &Value) -> Result<SearchRequest, ApiError> {
    let QueryData {
        vectors,
        texts,
        images,
        sparse,
    } = query_data(body.get("data").cloned())?;
    let anns_field = match body.get("annsField") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "'annsField' must be a field name, got {v}"
            )))
        }
    };
    Ok(SearchRequest {
        anns_field,
        vectors,
        texts,
        images,
        sparse,
        ..Default::default()
    })
}

fn query_vectors(data: Option<Value>) -> Result<Vec<Vec<f32>>, ApiError> {
    let arr = match data {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "'data' must be a list of query vectors",
            ))
        }
    };
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            let a = v.as_array().ok_or_else(|| {
                ApiError::bad_request(format!("query {i} in 'data' must be a list of numbers"))
            })?;
            a.iter()
                .enumerate()
                .map(|(j, x)| {
                    x.as_f64().map(|f| f as f32).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "query {i}, element {j} is not a number: {x}"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

/// Search hits as REST returns them: one flat list of `{pk, distance, fields...}` and
/// the number of hits per query (`topks`).
pub fn hits_json(pk_name: &str, results: Vec<Vec<magpie_engine::Hit>>) -> (Vec<Value>, Vec<usize>) {
    let topks = results.iter().map(|r| r.len()).collect();
    let mut flat = Vec::new();
    for hits in results {
        for h in hits {
            let mut o = Map::new();
            o.insert(pk_name.to_string(), h.id.to_json());
            o.insert("distance".into(), json!(h.distance));
            for (k, v) in h.fields {
                o.entry(k).or_insert(v);
            }
            flat.push(Value::Object(o));
        }
    }
    (flat, topks)
}

/// The engine's request for a search body (a plain search or a hybrid sub-search).
fn search_request(r: SearchReq) -> Result<SearchRequest, ApiError> {
    let sp = &r.search_params;
    let mut inner = sp
        .get("params")
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default();
    for (k, v) in &r.params {
        inner.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let metric_s = r.metric_type.clone().or_else(|| {
        sp.get("metricType")
            .and_then(|v| v.as_str())
            .map(String::from)
    });
    let QueryData {
        vectors,
        texts,
        images,
        sparse,
    } = query_data(r.data)?;
    Ok(SearchRequest {
        anns_field: r.anns_field,
        vectors,
        texts,
        images,
        sparse,
        ids: id_list(r.ids),
        filter: r.filter,
        limit: r.limit.unwrap_or(100),
        offset: r.offset,
        output_fields: r.output_fields,
        partitions: r.partition_names,
        metric: metric_s.as_deref().map(metric).transpose()?,
        radius: f32_param(&inner, "radius")?.or(f32_param(sp, "radius")?),
        range_filter: f32_param(&inner, "range_filter")?.or(f32_param(sp, "range_filter")?),
        group_by: r.grouping_field,
        group_size: r.group_size,
        consistency: consistency(&r.consistency_level)?,
        knobs: SearchKnobs {
            recall: f32_param(&inner, "recall")?.or(f32_param(sp, "recall")?),
            ..search_knobs(&inner)?
        },
        snapshot: None,
        function_score: function_score(r.function_score.as_ref())?,
        bm25_stats: r.bm25_stats,
    })
}

pub async fn search(State(st): State<Arc<AppState>>, Body(r): Body<SearchReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let req = search_request(r)?;
    let (pk_name, outcome) = crate::inline::search(&st, c, req, |e, c, req| {
        let pk = e.describe_collection(c)?.schema.pk().name.clone();
        Ok((pk, e.search_ex(c, req)?))
    })
    .await?;
    let mut info = Map::new();
    info.insert("indexedSegments".into(), json!(outcome.indexed_segments));
    info.insert("exactSegments".into(), json!(outcome.exact_segments));
    // Growing segments searched through their interim graph, and the rows scanned
    // exactly (segments without an index, and rows not yet in an interim graph).
    info.insert("interimSegments".into(), json!(outcome.interim_segments));
    info.insert("exactRows".into(), json!(outcome.exact_rows));
    if let Some(k) = outcome.knob {
        info.insert(k.name.into(), json!(k.value));
        if let Some(r) = k.expected_recall {
            info.insert("expectedRecall".into(), json!(r));
        }
    }
    if outcome.filter_rows > 0 {
        info.insert(
            "filterPassRatio".into(),
            json!(outcome.filter_passed as f64 / outcome.filter_rows as f64),
        );
        // The ratio's denominator, so that a cluster's proxy can merge shards' ratios.
        info.insert("filterRows".into(), json!(outcome.filter_rows));
        info.insert("filterPlans".into(), json!(outcome.filter_plans));
        info.insert("filterCachedSegments".into(), json!(outcome.filter_cached));
    }
    let results = outcome.hits;
    let (flat, topks) = hits_json(&pk_name, results);
    Ok(Json(
        json!({"code": 0, "data": flat, "topks": topks, "searchInfo": info}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct HybridReq {
    collection_name: Option<String>,
    db_name: Option<String>,
    search: Vec<SearchReq>,
    rerank: Option<Value>,
    limit: Option<usize>,
    offset: usize,
    output_fields: Vec<String>,
    partition_names: Vec<String>,
    consistency_level: Option<String>,
    function_score: Option<Value>,
}

/// How a hybrid search of `n` sub-searches fuses them: by its `rerank`, or with rerank
/// functions (`functionScore`) and no strategy, by each row's best score.
pub fn hybrid_rerank(
    rerank_v: Option<&Value>,
    function_score: Option<&Value>,
    n: usize,
) -> Result<Rerank, ApiError> {
    match (rerank_v, function_score) {
        (None | Some(Value::Null), Some(f)) if !f.is_null() => Ok(Rerank::Max),
        _ => rerank(rerank_v, n),
    }
}

/// `rerank` of a hybrid search: `{"strategy": "rrf", "params": {"k": 60}}` or
/// `{"strategy": "weighted" | "ws", "params": {"weights": [...], "norm_score": true}}`.
pub fn rerank(v: Option<&Value>, n: usize) -> Result<Rerank, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err(ApiError::bad_request(
            "a hybrid search needs 'rerank': {\"strategy\": \"rrf\", \"params\": {\"k\": 60}} or {\"strategy\": \"weighted\", \"params\": {\"weights\": [...]}}",
        ));
    };
    let strategy = v
        .get("strategy")
        .and_then(|s| s.as_str())
        .ok_or_else(|| ApiError::bad_request("'rerank' needs a 'strategy' (rrf or weighted)"))?;
    let params = v
        .get("params")
        .and_then(|p| p.as_object())
        .cloned()
        .unwrap_or_default();
    match strategy.to_ascii_lowercase().as_str() {
        "rrf" => Ok(Rerank::Rrf {
            k: f32_param(&params, "k")?.unwrap_or(60.0),
        }),
        "weighted" | "ws" => {
            let weights = match params.get("weights") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|w| {
                        w.as_f64().map(|x| x as f32).ok_or_else(|| {
                            ApiError::bad_request(format!("weight {w} is not a number"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    let msg =
                        "the weighted ranker needs 'params.weights', one number per sub-search";
                    return Err(ApiError::bad_request(format!("{msg} ({n})")));
                }
            };
            let norm_score = match params.get("norm_score") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(x) => {
                    return Err(ApiError::bad_request(format!(
                        "'norm_score' must be true or false, got {x}"
                    )))
                }
            };
            Ok(Rerank::Weighted {
                weights,
                norm_score,
            })
        }
        other => Err(ApiError::bad_request(format!(
            "unknown rerank strategy '{other}'; use rrf or weighted"
        ))),
    }
}

pub async fn hybrid_search(State(st): State<Arc<AppState>>, Body(r): Body<HybridReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let n = r.search.len();
    let rerank = hybrid_rerank(r.rerank.as_ref(), r.function_score.as_ref(), n)?;
    let searches = r
        .search
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            if s.function_score.is_some() {
                return Err(ApiError::bad_request(format!(
                    "sub-search {i}: 'functionScore' goes on the hybrid search, not on a sub-search"
                )));
            }
            search_request(s)
                .map_err(|e| ApiError::bad_request(format!("sub-search {i}: {}", e.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let req = HybridRequest {
        function_score: function_score(r.function_score.as_ref())?,
        searches,
        rerank,
        limit: r.limit.unwrap_or(100),
        offset: r.offset,
        output_fields: r.output_fields,
        partitions: r.partition_names,
        consistency: consistency(&r.consistency_level)?,
    };
    let (pk_name, results) = blocking(&st, move |e| {
        let pk = e.describe_collection(&c)?.schema.pk().name.clone();
        Ok((pk, e.hybrid_search(&c, &req)?))
    })
    .await?;
    let (flat, topks) = hits_json(&pk_name, results);
    Ok(Json(json!({"code": 0, "data": flat, "topks": topks})))
}

// ------------------------------------------------------------------ indexes

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

// ------------------------------------------------------------------ databases

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema written as a REST create body parses back to itself, every field
    /// attribute included.
    #[test]
    fn rest_schema_round_trips() {
        let mut key = FieldSchema::new("tenant", DataType::VarChar).with_max_length(32);
        key.partition_key = Some(8);
        let mut text = FieldSchema::new("text", DataType::VarChar).with_max_length(1000);
        text.enable_analyzer = true;
        text.analyzer_params = Some(json!({"type": "english"}));
        text.enable_match = true;
        text.description = "body".into();
        let mut tags = FieldSchema::new("tags", DataType::Array);
        tags.element_type = Some(DataType::Int32);
        tags.max_capacity = Some(4);
        tags.nullable = true;
        let mut n = FieldSchema::new("n", DataType::Int64);
        n.default_value = Some(json!(7));
        let schema = CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(true),
                FieldSchema::new("v", DataType::BinaryVector).with_dim(16),
                FieldSchema::new("sparse", DataType::SparseFloatVector),
                key,
                text,
                tags,
                n,
            ],
            enable_dynamic_field: true,
            description: "d".into(),
            functions: vec![serde_json::from_value(json!({
                "name": "bm25", "type": "BM25", "inputFieldNames": ["text"],
                "outputFieldNames": ["sparse"], "params": {}
            }))
            .unwrap()],
        };
        let mut body = create_body(&schema);
        body["collectionName"] = json!("c");
        let req: CreateReq = serde_json::from_value(body).unwrap();
        let (back, indexes) = build_schema(&req).unwrap();
        assert_eq!(back, schema);
        assert!(indexes.is_empty());
    }
}
