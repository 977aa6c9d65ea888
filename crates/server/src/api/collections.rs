//! Collections and partitions: create (the REST schema), describe, list, load and
//! release, flush, compact.

use super::{blocking, consistency, db_of, metric, need_in, ok, ApiResult, Body, CollReq};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use magpie_engine::{CollectionSchema, DataType, Engine, FieldSchema, IndexMeta, Metric};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

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
