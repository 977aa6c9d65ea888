//! Milvus's gRPC protocol (the one pymilvus, the Node and Java SDKs and Attu speak),
//! served on the REST port: requests whose path is `/milvus.proto.milvus.MilvusService/*`
//! go here, the rest to the REST router (see `router` in lib.rs).
//!
//! A thin layer like the REST handlers: each RPC converts its protobuf request
//! (`convert.rs`), makes the same engine calls REST makes, and converts the answer back.
//! Errors travel the way Milvus sends them: inside the response's `status` (code and
//! reason, the same codes as REST), with the gRPC status OK; only transport-level
//! problems (no token, a message over the size limit, an RPC Magpie does not implement)
//! are gRPC errors. docs/MILVUS_COMPAT.md lists what is implemented.
//!
//! `bridge.rs` serves the same RPCs over a REST backend instead of an engine (a cluster
//! proxy), with the same parsing and reply building.

pub mod convert;

use crate::api::{self, blocking};
use crate::error::ApiError;
use crate::AppState;
use axum::http::StatusCode;
use convert::{kv, Queries};
use magpie_engine::{
    qualified, split_qualified, Consistency, HybridRequest, IndexMeta, QueryRequest, SearchRequest,
};
use magpie_milvus_proto::common::{self as cpb, KeyValuePair};
use magpie_milvus_proto::milvus as mpb;
use magpie_milvus_proto::milvus::milvus_service_server::{MilvusService, MilvusServiceServer};
use magpie_milvus_proto::schema as spb;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tonic::{Request, Response};

type Rpc<T> = Result<Response<T>, tonic::Status>;

/// Milvus's code for "index not found", which pymilvus's `list_indexes` tests.
const CODE_INDEX_NOT_FOUND: i32 = 700;

/// The protocol version announced to clients (the vendored milvus-proto's).
pub const PROTOCOL_VERSION: &str = "v2.6.17";

fn status_ok() -> cpb::Status {
    cpb::Status::default()
}

/// An error as Milvus's `Status`: `code` as REST sends it, and the deprecated
/// `error_code` that older clients (and pymilvus's `has_collection`) test.
fn status_of(e: &ApiError) -> cpb::Status {
    use cpb::ErrorCode as E;
    #[allow(deprecated)]
    let error_code = match e.code {
        100 => E::CollectionNotExists,
        CODE_INDEX_NOT_FOUND => E::IndexNotExist,
        _ if e.status.is_server_error() => E::UnexpectedError,
        _ => E::IllegalArgument,
    };
    #[allow(deprecated)]
    cpb::Status {
        error_code: error_code as i32,
        reason: e.message.clone(),
        code: e.code,
        retriable: e.status == StatusCode::SERVICE_UNAVAILABLE,
        ..Default::default()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Answers `$body`'s response, or the same response type carrying only the error status.
macro_rules! reply {
    ($ty:ty, $body:expr) => {{
        let r: Result<$ty, ApiError> = async { $body }.await;
        Ok(Response::new(
            r.unwrap_or_else(|e| <$ty>::with_status(status_of(&e))),
        ))
    }};
}

/// Responses that carry a `status` field.
trait WithStatus: Default {
    fn with_status(s: cpb::Status) -> Self;
}

impl WithStatus for cpb::Status {
    fn with_status(s: cpb::Status) -> Self {
        s
    }
}

macro_rules! with_status {
    ($($t:ty),* $(,)?) => {$(
        impl WithStatus for $t {
            fn with_status(s: cpb::Status) -> Self {
                Self { status: Some(s), ..Default::default() }
            }
        }
    )*};
}

with_status!(
    mpb::ConnectResponse,
    mpb::GetVersionResponse,
    mpb::CheckHealthResponse,
    mpb::AllocTimestampResponse,
    mpb::DescribeCollectionResponse,
    mpb::BoolResponse,
    mpb::ShowCollectionsResponse,
    mpb::GetCollectionStatisticsResponse,
    mpb::GetPartitionStatisticsResponse,
    mpb::GetLoadStateResponse,
    mpb::GetLoadingProgressResponse,
    mpb::FlushResponse,
    mpb::GetFlushStateResponse,
    mpb::DescribeIndexResponse,
    mpb::ShowPartitionsResponse,
    mpb::MutationResult,
    mpb::SearchResults,
    mpb::QueryResults,
    mpb::ListDatabasesResponse,
    mpb::DescribeDatabaseResponse,
    mpb::DescribeAliasResponse,
    mpb::ListAliasesResponse,
    mpb::RunAnalyzerResponse,
    mpb::ImportResponse,
    mpb::GetImportStateResponse,
    mpb::ListImportTasksResponse,
);

pub mod bridge;

/// Most text one `RunAnalyzer` call analyses: its reply (one token record per word)
/// can be many times larger than its request.
const RUN_ANALYZER_MAX_BYTES: usize = 1 << 20;

/// An import job id as the gRPC protocol's int64 task id.
fn import_task_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .map_err(|_| ApiError::bad_request(format!("import job id '{id}' is not a task id")))
}

/// A job's progress as `GetImportStateResponse` (Milvus's states and `infos` keys).
fn import_state(p: &magpie_engine::ImportProgress) -> mpb::GetImportStateResponse {
    let files: Vec<&str> = p.files.iter().map(|f| f.0.as_str()).collect();
    import_state_pb(
        p.state,
        &p.id,
        split_qualified(&p.collection).1,
        &files,
        p.imported_rows as i64,
        p.progress,
        &p.reason,
    )
}

/// `GetImportStateResponse` of a job: its state (Pending, Importing, Completed, Failed),
/// id, collection, files, rows so far, percent done and failure reason.
fn import_state_pb(
    state: &str,
    id: &str,
    collection: &str,
    files: &[&str],
    rows: i64,
    progress: u64,
    reason: &str,
) -> mpb::GetImportStateResponse {
    use cpb::ImportState as S;
    let state = match state {
        "Pending" => S::ImportPending,
        "Importing" => S::ImportStarted,
        "Completed" => S::ImportCompleted,
        _ => S::ImportFailed,
    };
    let kv = |k: &str, v: String| cpb::KeyValuePair {
        key: k.into(),
        value: v,
    };
    mpb::GetImportStateResponse {
        status: Some(status_ok()),
        state: state as i32,
        row_count: rows,
        infos: vec![
            kv("collection", collection.to_string()),
            kv("files", files.join(",")),
            kv("progress_percent", progress.to_string()),
            kv("failed_reason", reason.to_string()),
        ],
        id: id.parse().unwrap_or_default(),
        ..Default::default()
    }
}

/// The database a client chose for its connection: pymilvus sends it as the `dbname`
/// metadata (`MilvusClient(db_name=...)`, `use_database`), besides each request's
/// `db_name`.
fn md_db<T>(r: &Request<T>) -> String {
    r.metadata()
        .get("dbname")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn need(name: &str, what: &str) -> Result<String, ApiError> {
    if name.is_empty() {
        Err(bad(format!("missing {what}")))
    } else {
        Ok(name.to_string())
    }
}

fn param<'a>(ps: &'a [KeyValuePair], key: &str) -> Option<&'a str> {
    ps.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

fn param_num<T: std::str::FromStr>(ps: &[KeyValuePair], key: &str) -> Result<Option<T>, ApiError> {
    match param(ps, key).map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("'{key}' must be a number, got '{s}'"))),
    }
}

/// A string parameter as JSON: numbers and booleans as such, JSON objects parsed.
fn loose_json(s: &str) -> Value {
    serde_json::from_str::<Value>(s)
        .ok()
        .filter(|v| v.is_number() || v.is_boolean() || v.is_object() || v.is_array())
        .unwrap_or_else(|| Value::from(s))
}

fn consistency(level: i32, use_default: bool) -> Option<Consistency> {
    if use_default {
        return None;
    }
    match cpb::ConsistencyLevel::try_from(level).ok()? {
        cpb::ConsistencyLevel::Strong => Some(Consistency::Strong),
        cpb::ConsistencyLevel::Session => Some(Consistency::Session),
        cpb::ConsistencyLevel::Bounded => Some(Consistency::Bounded),
        cpb::ConsistencyLevel::Eventually => Some(Consistency::Eventually),
        cpb::ConsistencyLevel::Customized => None,
    }
}

fn consistency_pb(c: Consistency) -> cpb::ConsistencyLevel {
    match c {
        Consistency::Strong => cpb::ConsistencyLevel::Strong,
        Consistency::Session => cpb::ConsistencyLevel::Session,
        Consistency::Bounded => cpb::ConsistencyLevel::Bounded,
        Consistency::Eventually => cpb::ConsistencyLevel::Eventually,
    }
}

/// The index definition of a CreateIndex request: `index_type`, `metric_type`, and the
/// build parameters either as one JSON string under `params` or as separate keys.
fn index_meta(field: &str, name: &str, extra: &[KeyValuePair]) -> Result<IndexMeta, ApiError> {
    let mut params = Map::new();
    for p in extra {
        match p.key.as_str() {
            "index_type" | "metric_type" => {}
            "params" => match serde_json::from_str::<Value>(&p.value) {
                Ok(Value::Object(o)) => params.extend(o),
                _ => {
                    return Err(bad(format!(
                        "index 'params' must be a JSON object, got '{}'",
                        p.value
                    )))
                }
            },
            k => {
                params.insert(k.to_string(), loose_json(&p.value));
            }
        }
    }
    let named = |k| param(extra, k).filter(|v| !v.is_empty()).map(String::from);
    // The defaults (AUTOINDEX, COSINE, the field's name) are REST's.
    api::index_meta(&api::IndexParamReq {
        field_name: field.to_string(),
        index_name: name.to_string(),
        metric_type: named("metric_type"),
        index_type: named("index_type"),
        params,
    })
}

fn index_params_pb(i: &IndexMeta, scalar: bool) -> Vec<KeyValuePair> {
    let mut v = vec![kv("index_type", &i.index_type)];
    if !scalar {
        v.push(kv("metric_type", i.metric_type.as_str()));
    }
    // A JSON path index's path and cast type are their own pairs, as Milvus sends them.
    let mut params = i.params.clone();
    for k in ["json_path", "json_cast_type"] {
        if let Some(Value::String(x)) = params.remove(k) {
            v.push(kv(k, x));
        }
    }
    v.push(kv("params", Value::Object(params)));
    v
}

/// Rounds scores to `round_decimal` places (Milvus's search parameter; -1 = as is).
fn round_scores(scores: &mut [f32], round_decimal: i64) {
    if (0..=6).contains(&round_decimal) {
        let f = 10f32.powi(round_decimal as i32);
        for s in scores {
            *s = (*s * f).round() / f;
        }
    }
}

/// The gRPC service over the server's engine.
pub struct MilvusApi {
    st: Arc<AppState>,
    next_client: AtomicI64,
}

impl MilvusApi {
    /// A request's database (its `db_name`, else the connection's), checked to exist.
    fn db(&self, md: &str, field: &str) -> Result<String, ApiError> {
        let db = if field.is_empty() { md } else { field };
        api::db_of(&self.st, &Some(db.to_string()))
    }

    /// The engine's name of a request's collection in its database (checked to exist).
    fn coll(&self, md: &str, db: &str, name: &str) -> Result<String, ApiError> {
        Ok(qualified(
            &self.db(md, db)?,
            &need(name, "collection_name")?,
        ))
    }

    pub fn new(st: Arc<AppState>) -> Self {
        Self {
            st,
            next_client: AtomicI64::new(1),
        }
    }
}

/// The service as a tower service for the router: the token check and the size limit
/// (larger messages get RESOURCE_EXHAUSTED naming the limit).
pub fn service(
    st: Arc<AppState>,
    max_message_bytes: usize,
) -> tonic::service::interceptor::InterceptedService<
    MilvusServiceServer<MilvusApi>,
    impl tonic::service::Interceptor + Clone,
> {
    let token = st.token.clone();
    let server = MilvusServiceServer::new(MilvusApi::new(st))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    tonic::service::interceptor::InterceptedService::new(server, move |req: Request<()>| {
        check_token(token.as_deref(), &req)?;
        Ok(req)
    })
}

/// pymilvus sends `token=...` as the `authorization` metadata, base64-encoded (a token,
/// or `user:password`); a raw `Bearer <token>` is accepted too. The token must match
/// exactly, compared in constant time.
fn check_token(want: Option<&str>, req: &Request<()>) -> Result<(), tonic::Status> {
    let Some(want) = want else { return Ok(()) };
    use base64::Engine as _;
    let got = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let ok = got.is_some_and(|g| {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(g)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        decoded
            .as_deref()
            .is_some_and(|d| crate::constant_time_eq(d.as_bytes(), want.as_bytes()))
            || g.strip_prefix("Bearer ")
                .is_some_and(|t| crate::constant_time_eq(t.trim().as_bytes(), want.as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(
            "missing or wrong token: pass the server's token as MilvusClient(uri, token=...)",
        ))
    }
}

/// tonic answers a message over the decoding limit with OUT_OF_RANGE and a message it
/// cannot decode with INTERNAL; clients (and this project's contract) expect
/// RESOURCE_EXHAUSTED naming the limit, and INVALID_ARGUMENT for a malformed request.
pub fn transport_error_codes(
    mut resp: axum::response::Response,
    limit: usize,
) -> axum::response::Response {
    let h = resp.headers();
    let status = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    let rewrite = match status {
        "11" if message.contains("too large") => Some((
            "8",
            format!("request message is larger than the server's limit of {limit} bytes (max_body_bytes); split the batch"),
        )),
        "13" if message.contains("failed to decode") => Some((
            "3",
            format!("malformed request: {message}"),
        )),
        _ => None,
    };
    if let Some((code, msg)) = rewrite {
        let h = resp.headers_mut();
        h.insert("grpc-status", axum::http::HeaderValue::from_static(code));
        if let Ok(v) = axum::http::HeaderValue::from_str(&percent_encode(&msg)) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// `grpc-message` is percent-encoded UTF-8 (gRPC over HTTP/2).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if (b' '..=b'~').contains(&c) && c != b'%' {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

#[tonic::async_trait]
impl MilvusService for MilvusApi {
    // ------------------------------------------------------------ server

    async fn connect(&self, _r: Request<mpb::ConnectRequest>) -> Rpc<mpb::ConnectResponse> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(connect_reply(id, "STANDALONE")))
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
        let why = self.st.engine.wal_failure();
        Ok(Response::new(mpb::CheckHealthResponse {
            status: Some(status_ok()),
            is_healthy: why.is_none(),
            reasons: why
                .into_iter()
                .map(|w| format!("the write-ahead log failed: {w}"))
                .collect(),
            ..Default::default()
        }))
    }

    async fn alloc_timestamp(
        &self,
        _r: Request<mpb::AllocTimestampRequest>,
    ) -> Rpc<mpb::AllocTimestampResponse> {
        reply!(mpb::AllocTimestampResponse, {
            let ts = blocking(&self.st, |e| e.snapshot(Consistency::Session)).await?;
            let now = magpie_engine::types::ts_from_ms(magpie_engine::types::now_ms());
            Ok(mpb::AllocTimestampResponse {
                status: Some(status_ok()),
                timestamp: ts.max(now),
            })
        })
    }

    /// pymilvus `run_analyzer(texts, analyzer_params=...)`, or with `collection_name` and
    /// `field_name` the analyzer of that field: the terms BM25 and TEXT_MATCH see.
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
                let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
                Some(blocking(&self.st, move |e| e.describe_collection(&name)).await?)
            };
            analyze(&r, meta.as_ref())
        })
    }

    // ------------------------------------------------------------ databases

    async fn list_databases(
        &self,
        _r: Request<mpb::ListDatabasesRequest>,
    ) -> Rpc<mpb::ListDatabasesResponse> {
        reply!(mpb::ListDatabasesResponse, {
            let dbs = blocking(&self.st, |e| {
                e.list_databases()
                    .iter()
                    .map(|d| e.describe_database(d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
            Ok(mpb::ListDatabasesResponse {
                status: Some(status_ok()),
                db_names: dbs.iter().map(|d| d.name.clone()).collect(),
                created_timestamp: dbs
                    .iter()
                    .map(|d| magpie_engine::types::ts_from_ms(d.created_ms))
                    .collect(),
                db_ids: dbs.iter().map(|d| d.id as i64).collect(),
            })
        })
    }

    async fn describe_database(
        &self,
        r: Request<mpb::DescribeDatabaseRequest>,
    ) -> Rpc<mpb::DescribeDatabaseResponse> {
        let r = r.into_inner();
        reply!(mpb::DescribeDatabaseResponse, {
            let db = self.db("", &r.db_name)?;
            let d = blocking(&self.st, move |e| e.describe_database(&db)).await?;
            Ok(mpb::DescribeDatabaseResponse {
                status: Some(status_ok()),
                db_name: d.name,
                db_id: d.id as i64,
                created_timestamp: magpie_engine::types::ts_from_ms(d.created_ms),
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
            let name = r.db_name;
            blocking(&self.st, move |e| e.create_database(&name)).await?;
            Ok(status_ok())
        })
    }

    async fn drop_database(&self, r: Request<mpb::DropDatabaseRequest>) -> Rpc<cpb::Status> {
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = need(&r.db_name, "db_name")?;
            blocking(&self.st, move |e| e.drop_database(&name)).await?;
            Ok(status_ok())
        })
    }

    // ------------------------------------------------------------ aliases

    async fn create_alias(&self, r: Request<mpb::CreateAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = self.db(&mdb, &r.db_name)?;
            let a = qualified(&db, &need(&r.alias, "alias")?);
            let c = qualified(&db, &need(&r.collection_name, "collection_name")?);
            blocking(&self.st, move |e| e.create_alias(&a, &c)).await?;
            Ok(status_ok())
        })
    }

    async fn alter_alias(&self, r: Request<mpb::AlterAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = self.db(&mdb, &r.db_name)?;
            let a = qualified(&db, &need(&r.alias, "alias")?);
            let c = qualified(&db, &need(&r.collection_name, "collection_name")?);
            blocking(&self.st, move |e| e.alter_alias(&a, &c)).await?;
            Ok(status_ok())
        })
    }

    async fn drop_alias(&self, r: Request<mpb::DropAliasRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let db = self.db(&mdb, &r.db_name)?;
            let a = qualified(&db, &need(&r.alias, "alias")?);
            blocking(&self.st, move |e| e.drop_alias(&a)).await?;
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
            let db = self.db(&mdb, &r.db_name)?;
            let a = qualified(&db, &need(&r.alias, "alias")?);
            let c = blocking(&self.st, move |e| e.describe_alias(&a)).await?;
            Ok(mpb::DescribeAliasResponse {
                status: Some(status_ok()),
                db_name: db,
                alias: r.alias,
                collection: split_qualified(&c).1.to_string(),
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
            let db = self.db(&mdb, &r.db_name)?;
            let coll = Some(&r.collection_name)
                .filter(|c| !c.is_empty())
                .map(|c| qualified(&db, c));
            let db2 = db.clone();
            let v = blocking(&self.st, move |e| Ok(e.list_aliases(&db2, coll.as_deref()))).await?;
            Ok(mpb::ListAliasesResponse {
                status: Some(status_ok()),
                db_name: db,
                collection_name: r.collection_name,
                aliases: v
                    .iter()
                    .map(|(a, _)| split_qualified(a).1.to_string())
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
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let s = spb::CollectionSchema::decode(r.schema.as_slice()).map_err(|e| {
                bad(format!(
                    "'schema' is not a valid CollectionSchema protobuf: {e}"
                ))
            })?;
            let schema = convert::schema_from_pb(&s, r.num_partitions).map_err(bad)?;
            let cons = consistency(r.consistency_level, false).unwrap_or_default();
            let desc = s.description.clone();
            blocking(&self.st, move |e| {
                e.create_collection(&name, schema, Vec::new(), cons, &desc)
            })
            .await?;
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
            let db = self.db(&mdb, &r.db_name)?;
            let name = qualified(&db, &need(&r.collection_name, "collection_name")?);
            let db2 = db.clone();
            let (m, aliases, db_id) = blocking(&self.st, move |e| {
                let m = e.describe_collection(&name)?;
                let aliases = e
                    .list_aliases(&db2, Some(&m.name))
                    .iter()
                    .map(|(a, _)| split_qualified(a).1.to_string())
                    .collect::<Vec<_>>();
                Ok((m, aliases, e.describe_database(&db2)?.id as i64))
            })
            .await?;
            let created = magpie_engine::types::ts_from_ms(m.created_ms);
            Ok(mpb::DescribeCollectionResponse {
                status: Some(status_ok()),
                schema: Some(convert::schema_to_pb(&m)),
                collection_id: m.id as i64,
                created_timestamp: created,
                created_utc_timestamp: m.created_ms,
                shards_num: 1,
                consistency_level: consistency_pb(m.consistency) as i32,
                collection_name: split_qualified(&m.name).1.to_string(),
                aliases,
                db_name: db,
                num_partitions: m.partitions.len() as i64,
                db_id,
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
            let db = self.db(&mdb, &r.db_name)?;
            let name = qualified(&db, &r.collection_name);
            let has = blocking(&self.st, move |e| Ok(e.has_collection(&name))).await?;
            Ok(mpb::BoolResponse {
                status: Some(status_ok()),
                value: has,
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
            let db = self.db(&mdb, &r.db_name)?;
            let metas = blocking(&self.st, |e| {
                Ok(e.list_collections()
                    .into_iter()
                    .filter_map(|n| e.describe_collection(&n).ok())
                    .collect::<Vec<_>>())
            })
            .await?;
            #[allow(deprecated)]
            let wanted = |n: &str| {
                r.collection_names.is_empty() || r.collection_names.iter().any(|w| w == n)
            };
            let metas: Vec<_> = metas
                .into_iter()
                .filter(|m| {
                    let (d, n) = split_qualified(&m.name);
                    d == db && wanted(n)
                })
                .collect();
            Ok(mpb::ShowCollectionsResponse {
                status: Some(status_ok()),
                collection_names: metas
                    .iter()
                    .map(|m| split_qualified(&m.name).1.to_string())
                    .collect(),
                collection_ids: metas.iter().map(|m| m.id as i64).collect(),
                created_timestamps: metas
                    .iter()
                    .map(|m| magpie_engine::types::ts_from_ms(m.created_ms))
                    .collect(),
                created_utc_timestamps: metas.iter().map(|m| m.created_ms).collect(),
                query_service_available: metas.iter().map(|m| m.loaded).collect(),
                shards_num: metas.iter().map(|_| 1).collect(),
                ..Default::default()
            })
        })
    }

    async fn drop_collection(&self, r: Request<mpb::DropCollectionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            blocking(&self.st, move |e| e.drop_collection(&name)).await?;
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
            let db = self.db(&mdb, &r.db_name)?;
            let new_db = if r.new_db_name.is_empty() {
                db.clone()
            } else {
                self.db("", &r.new_db_name)?
            };
            let old = qualified(&db, &need(&r.old_name, "old_name")?);
            let new = qualified(&new_db, &need(&r.new_name, "new_name")?);
            blocking(&self.st, move |e| e.rename_collection(&old, &new)).await?;
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
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let s = blocking(&self.st, move |e| e.collection_stats(&name)).await?;
            Ok(mpb::GetCollectionStatisticsResponse {
                status: Some(status_ok()),
                stats: vec![kv("row_count", s.row_count)],
            })
        })
    }

    async fn load_collection(&self, r: Request<mpb::LoadCollectionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            blocking(&self.st, move |e| e.set_loaded(&name, true)).await?;
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
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            blocking(&self.st, move |e| e.set_loaded(&name, false)).await?;
            Ok(status_ok())
        })
    }

    /// Partitions load with their collection (the engine loads whole collections).
    async fn load_partitions(&self, r: Request<mpb::LoadPartitionsRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let parts = r.partition_names;
            blocking(&self.st, move |e| {
                for p in &parts {
                    if !e.has_partition(&name, p)? {
                        return Err(magpie_engine::EngineError::PartitionNotFound {
                            collection: name.clone(),
                            partition: p.clone(),
                        });
                    }
                }
                e.set_loaded(&name, true)
            })
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
            let db = self.db(&mdb, &r.db_name)?;
            let name = qualified(&db, &r.collection_name);
            let st = blocking(&self.st, move |e| {
                if !e.has_collection(&name) {
                    return Ok(None);
                }
                api::load_state(e, &name).map(Some)
            })
            .await?;
            let state = match st {
                None => cpb::LoadState::NotExist,
                Some(("LoadStateLoaded", _)) => cpb::LoadState::Loaded,
                Some(("LoadStateLoading", _)) => cpb::LoadState::Loading,
                Some(_) => cpb::LoadState::NotLoad,
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
            let name = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let (_, progress) = blocking(&self.st, move |e| api::load_state(e, &name)).await?;
            Ok(mpb::GetLoadingProgressResponse {
                status: Some(status_ok()),
                progress: progress as i64,
                refresh_progress: progress as i64,
            })
        })
    }

    /// Returns once the collections' data is flushed (the engine flushes synchronously),
    /// so GetFlushState answers "flushed" for what a Flush returned.
    async fn flush(&self, r: Request<mpb::FlushRequest>) -> Rpc<mpb::FlushResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::FlushResponse, {
            let db = self.db(&mdb, &r.db_name)?;
            let names = r.collection_names;
            let names2: Vec<String> = names.iter().map(|n| qualified(&db, n)).collect();
            let ts = blocking(&self.st, move |e| {
                for n in &names2 {
                    e.flush(n)?;
                }
                e.snapshot(Consistency::Session)
            })
            .await?;
            Ok(flush_reply(db, &names, ts))
        })
    }

    async fn get_flush_state(
        &self,
        r: Request<mpb::GetFlushStateRequest>,
    ) -> Rpc<mpb::GetFlushStateResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::GetFlushStateResponse, {
            let db = self.db(&mdb, &r.db_name)?;
            if !r.collection_name.is_empty() {
                let name = qualified(&db, &r.collection_name);
                blocking(&self.st, move |e| e.describe_collection(&name)).await?;
            }
            Ok(mpb::GetFlushStateResponse {
                status: Some(status_ok()),
                flushed: true,
            })
        })
    }

    // ------------------------------------------------------------ bulk import

    /// `utility.do_bulk_insert`: the files are one group (one JSON file, or one `.npy`
    /// per field), paths inside the server's import folder, as over REST.
    async fn import(&self, r: Request<mpb::ImportRequest>) -> Rpc<mpb::ImportResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ImportResponse, {
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let p = Some(r.partition_name).filter(|p| !p.is_empty());
            let files = vec![r.files];
            let e = self.st.engine.clone();
            let id =
                tokio::task::spawn_blocking(move || e.create_import_job(&c, p.as_deref(), &files))
                    .await
                    .map_err(|e| bad(format!("internal task failed: {e}")))??;
            Ok(mpb::ImportResponse {
                status: Some(status_ok()),
                tasks: vec![import_task_id(&id)?],
            })
        })
    }

    async fn get_import_state(
        &self,
        r: Request<mpb::GetImportStateRequest>,
    ) -> Rpc<mpb::GetImportStateResponse> {
        let r = r.into_inner();
        reply!(mpb::GetImportStateResponse, {
            let p = self.st.engine.import_job(&r.task.to_string())?;
            Ok(import_state(&p))
        })
    }

    async fn list_import_tasks(
        &self,
        r: Request<mpb::ListImportTasksRequest>,
    ) -> Rpc<mpb::ListImportTasksResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::ListImportTasksResponse, {
            let coll = if r.collection_name.is_empty() {
                None
            } else {
                Some(self.coll(&mdb, &r.db_name, &r.collection_name)?)
            };
            let mut tasks: Vec<mpb::GetImportStateResponse> = self
                .st
                .engine
                .import_jobs(coll.as_deref())
                .iter()
                .map(import_state)
                .collect();
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
            let (c, p) = (
                self.coll(&mdb, &r.db_name, &r.collection_name)?,
                need(&r.partition_name, "partition_name")?,
            );
            blocking(&self.st, move |e| e.create_partition(&c, &p)).await?;
            Ok(status_ok())
        })
    }

    async fn drop_partition(&self, r: Request<mpb::DropPartitionRequest>) -> Rpc<cpb::Status> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(cpb::Status, {
            let (c, p) = (
                self.coll(&mdb, &r.db_name, &r.collection_name)?,
                need(&r.partition_name, "partition_name")?,
            );
            blocking(&self.st, move |e| e.drop_partition(&c, &p)).await?;
            Ok(status_ok())
        })
    }

    async fn has_partition(&self, r: Request<mpb::HasPartitionRequest>) -> Rpc<mpb::BoolResponse> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::BoolResponse, {
            let (c, p) = (
                self.coll(&mdb, &r.db_name, &r.collection_name)?,
                need(&r.partition_name, "partition_name")?,
            );
            let has = blocking(&self.st, move |e| e.has_partition(&c, &p)).await?;
            Ok(mpb::BoolResponse {
                status: Some(status_ok()),
                value: has,
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
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let m = blocking(&self.st, move |e| e.describe_collection(&c)).await?;
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
            let (c, p) = (
                self.coll(&mdb, &r.db_name, &r.collection_name)?,
                need(&r.partition_name, "partition_name")?,
            );
            let rows = blocking(&self.st, move |e| {
                e.query(
                    &c,
                    &QueryRequest {
                        output_fields: vec!["count(*)".into()],
                        partitions: vec![p],
                        consistency: Some(Consistency::Strong),
                        ..Default::default()
                    },
                )
            })
            .await?;
            let n = rows
                .first()
                .and_then(|r| r.get("count(*)"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
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
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let field = need(&r.field_name, "field_name")?;
            let mut meta = index_meta(&field, &r.index_name, &r.extra_params)?;
            let given = param(&r.extra_params, "metric_type").is_some_and(|v| !v.is_empty());
            blocking(&self.st, move |e| {
                let schema = e.describe_collection(&c)?.schema;
                api::default_binary_metric(&schema, &mut meta, given);
                e.create_index(&c, meta)
            })
            .await?;
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
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let name = Some(r.index_name.clone()).filter(|n| !n.is_empty());
            let progress =
                blocking(&self.st, move |e| e.index_progress(&c, name.as_deref())).await?;
            let list: Vec<mpb::IndexDescription> = progress
                .iter()
                .filter(|p| r.field_name.is_empty() || p.meta.field_name == r.field_name)
                .map(|p| mpb::IndexDescription {
                    index_name: p.meta.index_name.clone(),
                    index_id: p.meta.id as i64,
                    params: index_params_pb(&p.meta, p.scalar),
                    field_name: p.meta.field_name.clone(),
                    indexed_rows: p.indexed_rows as i64,
                    total_rows: (p.total_rows + p.pending_rows) as i64,
                    state: match p.state {
                        "Finished" => cpb::IndexState::Finished,
                        "Failed" => cpb::IndexState::Failed,
                        _ => cpb::IndexState::InProgress,
                    } as i32,
                    index_state_fail_reason: p.fail_reason.clone(),
                    pending_index_rows: p.pending_rows as i64,
                    ..Default::default()
                })
                .collect();
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
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let (index, field) = (r.index_name, r.field_name);
            blocking(&self.st, move |e| {
                let name = if index.is_empty() {
                    let m = e.describe_collection(&c)?;
                    m.indexes
                        .iter()
                        .find(|i| i.field_name == field)
                        .map(|i| i.index_name.clone())
                        .ok_or_else(|| {
                            magpie_engine::EngineError::InvalidArgument(format!(
                                "field '{field}' has no index"
                            ))
                        })?
                } else {
                    index
                };
                e.drop_index(&c, &name)
            })
            .await?;
            Ok(status_ok())
        })
    }

    // ------------------------------------------------------------ entities

    async fn insert(&self, r: Request<mpb::InsertRequest>) -> Rpc<mpb::MutationResult> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::MutationResult, {
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            self.write(c, r.partition_name, r.fields_data, r.num_rows, false)
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
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            self.write(c, r.partition_name, r.fields_data, r.num_rows, true)
                .await
        })
    }

    async fn delete(&self, r: Request<mpb::DeleteRequest>) -> Rpc<mpb::MutationResult> {
        let mdb = md_db(&r);
        let r = r.into_inner();
        reply!(mpb::MutationResult, {
            let expr = convert::fill_templates(&r.expr, &r.expr_template_values).map_err(bad)?;
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            if expr.trim().is_empty() {
                return Err(bad(
                    "delete needs an expression ('expr'), e.g. id in [1, 2]",
                ));
            }
            let p = Some(r.partition_name).filter(|p| !p.is_empty());
            let (n, ts) = blocking(&self.st, move |e| {
                let n = e.delete(&c, p.as_deref(), None, Some(&expr))?;
                Ok((n, e.snapshot(Consistency::Session)?))
            })
            .await?;
            Ok(mpb::MutationResult {
                status: Some(status_ok()),
                delete_cnt: n as i64,
                timestamp: ts,
                ..Default::default()
            })
        })
    }

    async fn query(&self, r: Request<mpb::QueryRequest>) -> Rpc<mpb::QueryResults> {
        let mdb = md_db(&r);
        let deadline = crate::inline::grpc_timeout(r.metadata());
        let r = r.into_inner();
        reply!(mpb::QueryResults, {
            let expr = convert::fill_templates(&r.expr, &r.expr_template_values).map_err(bad)?;
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let limit: Option<usize> = param_num(&r.query_params, "limit")?;
            let offset: Option<usize> = param_num(&r.query_params, "offset")?;
            let q = QueryRequest {
                filter: Some(expr).filter(|e| !e.trim().is_empty()),
                ids: None,
                output_fields: r.output_fields.clone(),
                partitions: r.partition_names.clone(),
                limit,
                offset: offset.unwrap_or(0),
                consistency: consistency(r.consistency_level, r.use_default_consistency),
                snapshot: None,
            };
            let name = c.clone();
            let (meta, rows, ts) = crate::inline::query(&self.st, deadline, move |e, flag| {
                let rows = e.query_with(&name, &q, Some(flag))?;
                Ok((
                    e.describe_collection(&name)?,
                    rows,
                    e.snapshot(Consistency::Session)?,
                ))
            })
            .await?;
            let refs: Vec<&Map<String, Value>> = rows.iter().collect();
            let fields_data = convert::fields_from_rows(&meta.schema, &refs, &r.output_fields);
            let output_fields = result_output_fields(&meta.schema, &fields_data, &r.output_fields);
            Ok(mpb::QueryResults {
                status: Some(status_ok()),
                fields_data,
                collection_name: c,
                output_fields,
                primary_field_name: meta.schema.pk().name.clone(),
                session_ts: ts,
            })
        })
    }

    async fn search(&self, r: Request<mpb::SearchRequest>) -> Rpc<mpb::SearchResults> {
        let mdb = md_db(&r);
        let deadline = crate::inline::grpc_timeout(r.metadata());
        let r = r.into_inner();
        reply!(mpb::SearchResults, {
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            let PbSearch {
                req,
                limit,
                round_decimal,
                group_by: group_field,
            } = search_from_pb(&r)?;
            let (meta, outcome) =
                crate::inline::search(&self.st, c.clone(), req, deadline, |e, c, req| {
                    Ok((e.describe_collection(c)?, e.search_ex(c, req)?))
                })
                .await?;
            let mut res =
                convert::search_result(&meta.schema, &outcome.hits, limit, &r.output_fields);
            if let Some(g) = &group_field {
                res.group_by_field_value = convert::group_values(&meta.schema, &outcome.hits, g);
                if !r.output_fields.iter().any(|f| f == g || f == "*") {
                    res.fields_data.retain(|f| &f.field_name != g);
                }
            }
            Ok(search_reply(
                &meta.schema,
                res,
                &r.output_fields,
                round_decimal,
                c,
            ))
        })
    }

    async fn hybrid_search(&self, r: Request<mpb::HybridSearchRequest>) -> Rpc<mpb::SearchResults> {
        let mdb = md_db(&r);
        let deadline = crate::inline::grpc_timeout(r.metadata());
        let r = r.into_inner();
        reply!(mpb::SearchResults, {
            let c = self.coll(&mdb, &r.db_name, &r.collection_name)?;
            // pymilvus sends each ranker key's value JSON-encoded, except plain strings.
            let json_param = |k: &str| -> Option<Value> {
                param(&r.rank_params, k)
                    .map(|v| serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::from(v)))
            };
            let rerank = json!({
                "strategy": json_param("strategy"),
                "params": json_param("params").unwrap_or_else(|| json!({})),
            });
            let function_score = function_score_from_pb(r.function_score.as_ref())?;
            let rerank = if rerank["strategy"].is_null() && function_score.is_some() {
                // A Function ranker alone: sub-searches fuse by their best score.
                magpie_engine::Rerank::Max
            } else {
                api::rerank(Some(&rerank), r.requests.len())?
            };
            let limit: usize = param_num(&r.rank_params, "limit")?.unwrap_or(10);
            let offset: usize = param_num(&r.rank_params, "offset")?.unwrap_or(0);
            let round_decimal: i64 = param_num(&r.rank_params, "round_decimal")?.unwrap_or(-1);
            let cancel = Arc::new(magpie_engine::Cancel::new());
            let searches = r
                .requests
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    search_from_pb(s)
                        .map(|p| magpie_engine::SearchRequest {
                            cancel: Some(cancel.clone()),
                            ..p.req
                        })
                        .map_err(|e| bad(format!("sub-search {i}: {}", e.message)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let req = HybridRequest {
                function_score,
                searches,
                rerank,
                limit,
                offset,
                output_fields: r.output_fields.clone(),
                partitions: r.partition_names.clone(),
                consistency: consistency(r.consistency_level, r.use_default_consistency),
            };
            let name = c.clone();
            let (meta, hits) = crate::inline::on_pool_cancellable(
                &self.st,
                crate::inline::Op::Search,
                cancel,
                deadline,
                move |e| Ok((e.describe_collection(&name)?, e.hybrid_search(&name, &req)?)),
            )
            .await?;
            let res = convert::search_result(&meta.schema, &hits, limit, &r.output_fields);
            Ok(search_reply(
                &meta.schema,
                res,
                &r.output_fields,
                round_decimal,
                c,
            ))
        })
    }
}

/// RunAnalyzer's answer: the terms of `r`'s texts by the analyzer of `r.field_name` in
/// `meta` (the collection it names), or by `r.analyzer_params`.
fn analyze(
    r: &mpb::RunAnalyzerRequest,
    meta: Option<&magpie_engine::CollectionMeta>,
) -> Result<mpb::RunAnalyzerResponse, ApiError> {
    if !r.analyzer_names.is_empty() {
        return Err(bad(
            "'analyzer_names' (multi-analyzer fields) is not supported",
        ));
    }
    let total: usize = r.placeholder.iter().map(Vec::len).sum();
    if total > RUN_ANALYZER_MAX_BYTES {
        return Err(bad(format!(
            "run_analyzer takes at most {RUN_ANALYZER_MAX_BYTES} bytes of text per call, got {total}"
        )));
    }
    let analyzer = if let Some(m) = meta {
        let field = need(&r.field_name, "field_name")?;
        let f = m
            .schema
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| bad(format!("field '{field}' does not exist")))?;
        if !f.enable_analyzer {
            return Err(bad(format!(
                "field '{field}' has no analyzer (enable_analyzer is false)"
            )));
        }
        f.analyzer().map_err(bad)?
    } else {
        let params: Option<serde_json::Value> = if r.analyzer_params.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&r.analyzer_params)
                    .map_err(|e| bad(format!("'analyzer_params' is not valid JSON: {e}")))?,
            )
        };
        magpie_engine::analyzer::Analyzer::from_params(params.as_ref())
            .map_err(|e| bad(format!("analyzer_params: {e}")))?
    };
    let mut results = Vec::with_capacity(r.placeholder.len());
    for (i, b) in r.placeholder.iter().enumerate() {
        let text =
            std::str::from_utf8(b).map_err(|e| bad(format!("text {i} is not UTF-8: {e}")))?;
        let tokens = analyzer
            .analyze_spans(text)
            .into_iter()
            .enumerate()
            .map(|(pos, (span, token))| mpb::AnalyzerToken {
                hash: if r.with_hash {
                    magpie_engine::analyzer::term_id(&token)
                } else {
                    0
                },
                token,
                start_offset: if r.with_detail { span.start as i64 } else { 0 },
                end_offset: if r.with_detail { span.end as i64 } else { 0 },
                position: if r.with_detail { pos as i64 } else { 0 },
                position_length: if r.with_detail { 1 } else { 0 },
            })
            .collect();
        results.push(mpb::AnalyzerResult { tokens });
    }
    Ok(mpb::RunAnalyzerResponse {
        status: Some(status_ok()),
        results,
    })
}

/// Connect's reply: the protocol version, the deploy mode and Magpie's version.
fn connect_reply(id: i64, deploy_mode: &str) -> mpb::ConnectResponse {
    mpb::ConnectResponse {
        status: Some(status_ok()),
        server_info: Some(cpb::ServerInfo {
            build_tags: PROTOCOL_VERSION.into(),
            deploy_mode: deploy_mode.into(),
            reserved: [(
                "magpie_version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]
            .into(),
            ..Default::default()
        }),
        identifier: id,
    }
}

/// Flush's reply for collections flushed at `ts` (Magpie reports no segment ids).
fn flush_reply(db: String, names: &[String], ts: u64) -> mpb::FlushResponse {
    let empty = || {
        names
            .iter()
            .map(|n| (n.clone(), spb::LongArray::default()))
            .collect()
    };
    mpb::FlushResponse {
        status: Some(status_ok()),
        db_name: db,
        coll_seg_i_ds: empty(),
        flush_coll_seg_i_ds: empty(),
        coll_seal_times: names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    magpie_engine::types::physical_ms(ts) as i64 / 1000,
                )
            })
            .collect(),
        coll_flush_ts: names.iter().map(|n| (n.clone(), ts)).collect(),
        ..Default::default()
    }
}

/// The reply of Search and HybridSearch: the result's output field names, its scores
/// rounded as asked.
fn search_reply(
    schema: &magpie_engine::CollectionSchema,
    mut res: spb::SearchResultData,
    asked: &[String],
    round_decimal: i64,
    collection_name: String,
) -> mpb::SearchResults {
    res.output_fields = result_output_fields(schema, &res.fields_data, asked);
    round_scores(&mut res.scores, round_decimal);
    mpb::SearchResults {
        status: Some(status_ok()),
        results: Some(res),
        collection_name,
        ..Default::default()
    }
}

/// A Milvus `SearchRequest` (a search, or a sub-search of a hybrid search) as the
/// engine's request.
struct PbSearch {
    req: SearchRequest,
    limit: usize,
    round_decimal: i64,
    /// The group-by field, which the engine was asked to return.
    group_by: Option<String>,
}

/// A `FunctionScore` (pymilvus's `ranker=Function(...)` or `FunctionScore(...)`): the
/// functions and params as Milvus's JSON shape (pymilvus sends every value as a string,
/// JSON-encoded for lists and maps), parsed by the engine.
fn function_score_from_pb(
    f: Option<&magpie_milvus_proto::schema::FunctionScore>,
) -> Result<Option<magpie_engine::engine::rerank::FunctionScore>, ApiError> {
    api::function_score(function_score_value(f).as_ref())
}

/// A `FunctionScore` as REST's `functionScore` JSON (`{"functions", "params"}`; `params`
/// left out when there are none).
fn function_score_value(f: Option<&magpie_milvus_proto::schema::FunctionScore>) -> Option<Value> {
    let f = f.filter(|f| !f.functions.is_empty() || !f.params.is_empty())?;
    let kv = |ps: &[magpie_milvus_proto::common::KeyValuePair]| -> Map<String, Value> {
        ps.iter()
            .map(|p| (p.key.clone(), Value::from(p.value.clone())))
            .collect()
    };
    let functions: Vec<Value> = f
        .functions
        .iter()
        .map(|x| {
            json!({"name": x.name, "type": x.r#type, "inputFieldNames": x.input_field_names,
                "params": kv(&x.params)})
        })
        .collect();
    let mut v = json!({ "functions": functions });
    if !f.params.is_empty() {
        v["params"] = Value::Object(kv(&f.params));
    }
    Some(v)
}

fn search_from_pb(r: &mpb::SearchRequest) -> Result<PbSearch, ApiError> {
    let dsl = convert::fill_templates(&r.dsl, &r.expr_template_values).map_err(bad)?;
    if !r.sub_reqs.is_empty() {
        return Err(bad(
            "hybrid search (sub_reqs) is not supported by Magpie yet",
        ));
    }
    let sp = &r.search_params;
    let inner: Map<String, Value> = match param(sp, "params") {
        None | Some("") => Map::new(),
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(bad(format!(
                    "search param 'params' must be a JSON object, got '{s}'"
                )))
            }
        },
    };
    let limit: usize = param_num(sp, "topk")?
        .or(param_num(sp, "limit")?)
        .unwrap_or(10);
    let offset: usize = param_num(sp, "offset")?.unwrap_or(0);
    let round_decimal: i64 = param_num(sp, "round_decimal")?.unwrap_or(-1);
    let (mut vectors, mut texts, mut sparse, mut ids) = (Vec::new(), Vec::new(), Vec::new(), None);
    match &r.search_input {
        Some(mpb::search_request::SearchInput::PlaceholderGroup(b)) => {
            match convert::queries_from_placeholder(b).map_err(bad)? {
                Queries::Vectors(v) => vectors = v,
                Queries::Texts(t) => texts = t,
                Queries::Sparse(s) => sparse = s,
            }
        }
        Some(mpb::search_request::SearchInput::Ids(i)) => {
            ids = Some(match &i.id_field {
                Some(spb::i_ds::IdField::IntId(a)) => {
                    a.data.iter().map(|x| Value::from(*x)).collect()
                }
                Some(spb::i_ds::IdField::StrId(a)) => {
                    a.data.iter().map(|x| Value::from(x.as_str())).collect()
                }
                None => Vec::new(),
            });
        }
        None => return Err(bad("search needs query vectors (placeholder_group) or ids")),
    }
    let group_by = param(sp, "group_by_field")
        .filter(|g| !g.is_empty())
        .map(String::from);
    // The group's value goes back in `group_by_field_value`, so the engine is asked
    // for the field even when the client did not name it.
    let mut engine_fields = r.output_fields.clone();
    if let Some(g) = &group_by {
        if !engine_fields.iter().any(|f| f == g || f == "*") {
            engine_fields.push(g.clone());
        }
    }
    let group_field = group_by.clone();
    let req = SearchRequest {
        anns_field: param(sp, "anns_field")
            .filter(|a| !a.is_empty())
            .map(String::from),
        vectors,
        ids,
        texts,
        images: Vec::new(),
        sparse,
        filter: Some(dsl).filter(|d| !d.trim().is_empty()),
        limit,
        offset,
        output_fields: engine_fields,
        partitions: r.partition_names.clone(),
        metric: param(sp, "metric_type")
            .filter(|m| !m.is_empty())
            .map(api::metric)
            .transpose()?,
        radius: api::f32_param(&inner, "radius")?,
        range_filter: api::f32_param(&inner, "range_filter")?,
        group_by,
        group_size: param_num(sp, "group_size")?,
        consistency: consistency(r.consistency_level, r.use_default_consistency),
        knobs: api::search_knobs(&inner)?,
        snapshot: None,
        function_score: function_score_from_pb(r.function_score.as_ref())?,
        bm25_stats: None,
        cancel: None,
    };
    Ok(PbSearch {
        req,
        limit,
        round_decimal,
        group_by: group_field,
    })
}

/// The `output_fields` of a result: its columns, then the dynamic keys asked for by name
/// (clients take the keys of `$meta` named here; with none named, all of them).
fn result_output_fields(
    schema: &magpie_engine::CollectionSchema,
    columns: &[spb::FieldData],
    requested: &[String],
) -> Vec<String> {
    columns
        .iter()
        .filter(|f| !f.is_dynamic)
        .map(|f| f.field_name.clone())
        .chain(
            requested
                .iter()
                .filter(|o| {
                    schema.field(o).is_none() && !matches!(o.as_str(), "count(*)" | "*" | "$meta")
                })
                .cloned(),
        )
        .collect()
}

impl MilvusApi {
    async fn write(
        &self,
        coll: String,
        partition: String,
        fields: Vec<spb::FieldData>,
        num_rows: u32,
        upsert: bool,
    ) -> Result<mpb::MutationResult, ApiError> {
        let c = coll;
        if fields
            .iter()
            .any(|f| matches!(f.field, Some(spb::field_data::Field::Vectors(_))))
        {
            let name = c.clone();
            let meta = blocking(&self.st, move |e| e.describe_collection(&name)).await?;
            convert::check_vector_kinds(&fields, &meta.schema).map_err(bad)?;
        }
        let (rows, vectors) =
            convert::columns_from_fields(fields, num_rows as usize).map_err(bad)?;
        let p = Some(partition).filter(|p| !p.is_empty());
        let res = blocking(&self.st, move |e| {
            e.write_columns(&c, p.as_deref(), &rows, &vectors, upsert)
        })
        .await?;
        let int = res
            .ids
            .first()
            .is_none_or(|k| matches!(k, magpie_engine::PrimaryKey::Int(_)));
        let n = res.count as i64;
        Ok(mpb::MutationResult {
            status: Some(status_ok()),
            i_ds: Some(convert::ids_of(res.ids.iter(), int)),
            succ_index: (0..res.count as u32).collect(),
            insert_cnt: if upsert { 0 } else { n },
            upsert_cnt: if upsert { n } else { 0 },
            timestamp: res.ts,
            ..Default::default()
        })
    }
}
