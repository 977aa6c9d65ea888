//! Entities: insert, upsert, delete, query and get; search and hybrid search (the
//! request bodies, their `searchParams`, and the hits as JSON).

use super::{blocking, consistency, metric, need_in, ok, ApiResult, Body};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use magpie_engine::engine::rerank::FunctionScore;
use magpie_engine::{HybridRequest, QueryRequest, Rerank, SearchKnobs, SearchRequest};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

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
    let rows =
        crate::inline::query(&st, None, move |e, flag| e.query_with(&c, &q, Some(flag))).await?;
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
        cancel: None,
    })
}

pub async fn search(State(st): State<Arc<AppState>>, Body(r): Body<SearchReq>) -> ApiResult {
    let c = need_in(&st, &r.db_name, &r.collection_name)?;
    let req = search_request(r)?;
    let (pk_name, outcome) = crate::inline::search(&st, c, req, None, |e, c, req| {
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
    let cancel = Arc::new(magpie_engine::Cancel::new());
    let searches = searches
        .into_iter()
        .map(|s| SearchRequest {
            cancel: Some(cancel.clone()),
            ..s
        })
        .collect();
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
    let (pk_name, results) = crate::inline::on_pool_cancellable(
        &st,
        crate::inline::Op::Search,
        cancel,
        None,
        move |e| {
            let pk = e.describe_collection(&c)?.schema.pk().name.clone();
            Ok((pk, e.hybrid_search(&c, &req)?))
        },
    )
    .await?;
    let (flat, topks) = hits_json(&pk_name, results);
    Ok(Json(json!({"code": 0, "data": flat, "topks": topks})))
}
