//! Magpie's HTTP server: a REST API shaped like Milvus's RESTful v2, health and
//! Prometheus endpoints, optional bearer-token auth, a body limit, a periodic maintenance
//! task (seal/flush/WAL trim) and a graceful shutdown that flushes.
//!
//! Engine errors map to HTTP in exactly one place ([`error`]); blocking engine work runs
//! on tokio's blocking pool, except short CPU-bound searches ([`inline`]).

pub mod api;
pub mod backups;
pub mod error;
pub mod grpc;
pub mod images_api;
pub mod import_api;
pub mod inline;
pub mod metrics;
pub mod text_api;
mod tls;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use magpie_engine::{Engine, EngineConfig};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Server configuration (TOML file, environment, flags; see `magpie serve --help`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bearer token required on /v2 endpoints when set.
    pub token: Option<String>,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Growing segments seal at this many rows.
    pub seal_rows: usize,
    /// ...or this many bytes.
    pub seal_bytes: usize,
    /// ...or this age in seconds.
    pub seal_age_secs: u64,
    /// Staleness bound of the Bounded consistency level, milliseconds.
    pub bounded_staleness_ms: u64,
    /// Period of the maintenance task (seal by age, flush sealed segments, trim the WAL).
    pub maintenance_interval_ms: u64,
    /// Flushed segments with fewer rows are searched exactly, without an index.
    pub index_min_rows: usize,
    /// Threads per background index build (0 = every core).
    pub index_build_threads: usize,
    /// Threads one search may use for a large exact scan or the index searches of many
    /// queries (0 = every core; 1 = one).
    pub search_threads: usize,
    /// A growing segment of an indexed field gets an interim HNSW graph at this many
    /// rows (0 = never), grown every `interim_step_rows` new rows.
    pub interim_min_rows: usize,
    pub interim_step_rows: usize,
    /// Nice value of the index builder threads (0: the same priority as requests).
    pub build_nice: i32,
    /// Where bulk-import file paths (`jobs/import/create`) are looked up: a folder, or
    /// `s3://bucket/prefix` (read only, settings from `AWS_*`); default
    /// `<data_dir>/import`, or the `import/` prefix of an `s3://` `storage`.
    pub import_root: Option<PathBuf>,
    /// Directory of built-in models (`magpie models fetch`); default `<data_dir>/models`.
    pub models_dir: Option<PathBuf>,
    /// A folder of images to index (incrementally) into `images_collection` at start.
    pub images_folder: Option<PathBuf>,
    /// The image collection `images_folder` goes into.
    pub images_collection: String,
    /// Image inference worker threads (one image each; 0 = every core).
    pub embed_threads: usize,
    /// Folders that clients may ask to index (`POST /v2/images/index`), with their
    /// subfolders. Empty = the `images_folder` and `<data_dir>/{images,samples}`.
    pub image_roots: Vec<PathBuf>,
    /// Memory that decoded images may take at once, all requests together (bytes).
    pub decode_memory_bytes: u64,
    /// Host header values accepted (names or IPs, without port; "*" = any). Empty: any
    /// when listening beyond loopback, else only loopback names (DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
    /// Allow listening beyond loopback without a token (anyone who reaches the port then
    /// has full access).
    pub allow_insecure: bool,
    /// Most query vectors (texts, images) in one search.
    pub max_nq: usize,
    /// Most hits one search may return, all queries together: nq × (limit + offset).
    pub max_result_rows: usize,
    /// Most bytes of rows one query or search may return (approximate JSON size).
    pub max_output_bytes: usize,
    /// Where segments, indexes, manifests and the catalog live: `None` for the data
    /// directory, or `s3://bucket/prefix` (settings from the `AWS_*` environment). The
    /// WAL stays in the data directory either way.
    pub storage: Option<String>,
    /// Local cache of an object store's vector files (default `DATA_DIR/cache`).
    pub storage_cache_dir: Option<PathBuf>,
    /// Size limit of that cache.
    pub storage_cache_bytes: u64,
    /// Where backups go: a directory (default `DATA_DIR/backups`) or `s3://bucket/prefix`.
    pub backup_storage: Option<String>,
    /// TLS on the listener: a PEM certificate chain and its PEM private key (both or
    /// neither). REST and gRPC are then served over HTTPS / HTTP/2 with ALPN.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Searches of a collection whose recent searches averaged less than this many
    /// microseconds run on the async workers instead of the blocking pool (see
    /// [`inline`]); 0 sends every search to the pool.
    pub search_inline_us: u64,
    /// The longest a search on the blocking pool, or a query, may run, in milliseconds (0:
    /// no limit); a gRPC client's shorter deadline wins. See [`inline`].
    pub search_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            listen: "127.0.0.1:19530".into(),
            data_dir: PathBuf::from("magpie-data"),
            token: None,
            max_body_bytes: 64 << 20,
            seal_rows: e.seal_rows,
            seal_bytes: e.seal_bytes,
            seal_age_secs: e.seal_age_secs,
            bounded_staleness_ms: e.bounded_staleness_ms,
            maintenance_interval_ms: 1000,
            index_min_rows: e.index_min_rows,
            index_build_threads: e.index_build_threads,
            search_threads: e.search_threads,
            interim_min_rows: e.interim_min_rows,
            interim_step_rows: e.interim_step_rows,
            build_nice: e.build_nice,
            import_root: None,
            models_dir: None,
            images_folder: None,
            images_collection: "images".into(),
            embed_threads: 0,
            image_roots: Vec::new(),
            decode_memory_bytes: magpie_embed::image::DEFAULT_DECODE_BUDGET,
            allowed_hosts: Vec::new(),
            allow_insecure: false,
            max_nq: e.max_nq,
            max_result_rows: e.max_result_rows,
            max_output_bytes: e.max_output_bytes,
            search_inline_us: inline::DEFAULT_INLINE_MAX_US,
            search_timeout_ms: 0,
            storage: None,
            storage_cache_dir: None,
            storage_cache_bytes: 8 << 30,
            backup_storage: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            seal_rows: self.seal_rows,
            seal_bytes: self.seal_bytes,
            seal_age_secs: self.seal_age_secs,
            bounded_staleness_ms: self.bounded_staleness_ms,
            index_min_rows: self.index_min_rows,
            index_build_threads: self.index_build_threads,
            search_threads: self.search_threads,
            interim_min_rows: self.interim_min_rows,
            interim_step_rows: self.interim_step_rows,
            build_nice: self.build_nice,
            import_root: self.import_root.clone(),
            max_nq: self.max_nq,
            max_result_rows: self.max_result_rows,
            max_output_bytes: self.max_output_bytes,
            ..EngineConfig::default()
        }
    }
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: metrics::Metrics,
    pub token: Option<String>,
    /// The image app (models, roots, indexing jobs); `None` serves the database only.
    pub images: Option<Arc<images_api::ImageService>>,
    /// Accepted Host header values; `None` accepts any (see [`ServerConfig::allowed_hosts`]).
    pub allowed_hosts: Option<Vec<String>>,
    /// Where `/v2/admin/backups/*` writes and lists backups; `None` turns them off.
    pub backups: Option<Arc<dyn magpie_engine::storage::Storage>>,
    /// Short searches run on the async workers, at most `workers − 1` at a time.
    pub inline: inline::InlineGate,
}

/// Compares in time independent of where the inputs differ (only of their lengths), so
/// response timing does not reveal a token's prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn check_token(st: &AppState, got: Option<&str>) -> Result<(), ApiError> {
    match &st.token {
        Some(tok) if !got.is_some_and(|g| constant_time_eq(g.as_bytes(), tok.as_bytes())) => {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                1800,
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
            ))
        }
        _ => Ok(()),
    }
}

/// The API's auth: a bearer token in the Authorization header, nothing else.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Err(e) = check_token(&st, bearer(&req)) {
        return e.into_response();
    }
    next.run(req).await
}

/// Auth of the image file routes: `<img src>` cannot send headers, so the web UI adds
/// `?token=` to image URLs; these GET routes (and only these) accept it.
async fn auth_images(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Percent-decoded: the UI writes the token with encodeURIComponent.
    let query_token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    if let Err(e) = check_token(&st, bearer(&req).or(query_token.as_deref())) {
        return e.into_response();
    }
    next.run(req).await
}

/// Loopback host names and addresses (with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let h = host_name(host);
    h.eq_ignore_ascii_case("localhost")
        || h.to_ascii_lowercase().ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name part of a Host header: without the port, and without brackets for IPv6.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Which Host names the DNS-rebinding guard accepts, from `--allowed-hosts` and whether
/// the server listens on loopback: `None` accepts any (an empty list beyond loopback),
/// an empty list only loopback names. One rule for standalone and cluster nodes.
pub fn host_guard(allowed_hosts: &[String], loopback: bool) -> Option<Vec<String>> {
    if allowed_hosts.is_empty() && !loopback {
        None
    } else {
        Some(allowed_hosts.to_vec())
    }
}

/// DNS-rebinding guard: a page on another site whose name resolves to this server still
/// sends its own name in Host, which is refused. A layer for
/// `middleware::from_fn_with_state(allowed, check_host)`, `allowed` from [`host_guard`]
/// in an `Arc`; standalone's router and every cluster node use it.
pub async fn check_host(
    State(allowed): State<Option<Arc<Vec<String>>>>,
    req: Request,
    next: Next,
) -> Response {
    match allowed.as_deref().and_then(|a| host_refused(a, &req)) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The 403 for a request whose Host is not allowed: not one of `allowed` (`*` is any
/// name), or, with `allowed` empty, not a loopback name.
fn host_refused(allowed: &[String], req: &Request) -> Option<Response> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let ok = if allowed.is_empty() {
        is_loopback_host(host)
    } else {
        let name = host_name(host);
        allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
    };
    (!ok).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            1800,
            format!("Host '{host}' is not allowed; add it to allowed_hosts (--allowed-hosts)"),
        )
        .into_response()
    })
}

async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .observe(&path, resp.status().as_u16(), t.elapsed().as_secs_f64());
    resp
}

/// Counts a search request from its arrival until its answer is ready
/// (`magpie_engine::par::request`): while it reads its body or writes its answer it is
/// not a search in progress, but another search's helper threads would take its core.
async fn in_flight(req: Request, next: Next) -> Response {
    let _in_flight = magpie_engine::par::request();
    next.run(req).await
}

/// [`in_flight`] for the gRPC searches (`Search`, `HybridSearch`).
async fn grpc_in_flight(req: Request, next: Next) -> Response {
    let search = matches!(
        req.uri().path().rsplit('/').next(),
        Some("Search" | "HybridSearch")
    );
    let _in_flight = search.then(magpie_engine::par::request);
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready unless the WAL failed (then writes fail until a restart, which recovers every
/// acknowledged write from the log; an orchestrator watching this restarts the process).
async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match st.engine.wal_failure() {
        None => "ok".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the write-ahead log failed ({why}); restart the server to recover (no acknowledged write is lost)"),
        )
            .into_response(),
    }
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    let e = st.engine.clone();
    let stats = tokio::task::spawn_blocking(move || e.stats())
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&stats),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    // A gRPC client calling a service other than Milvus's gets a gRPC answer.
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!(
            "no such gRPC service or method: {} (Magpie serves milvus.proto.milvus.MilvusService)",
            req.uri().path()
        ))
        .into_http::<axum::body::Body>()
        .into_response();
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        404,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// An image-app page with `__DUP_THRESHOLD__` replaced by the app's measured default.
fn with_dup_threshold(html: &str) -> String {
    html.replace(
        "__DUP_THRESHOLD__",
        &format!("{:.3}", magpie_app::images::DEFAULT_DUP_THRESHOLD),
    )
}

/// The image UI, with the duplicate slider starting at the app's measured default.
async fn index_page() -> Html<&'static str> {
    static PAGE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| with_dup_threshold(include_str!("ui/images.html")));
    Html(PAGE.as_str())
}

/// The page of one image (`/image/{collection}/{id}`): a static page that reads both
/// from its own path and asks the API for the rest.
async fn image_page() -> Html<&'static str> {
    static PAGE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| with_dup_threshold(include_str!("ui/image.html")));
    Html(PAGE.as_str())
}

async fn text_page() -> Html<&'static str> {
    Html(include_str!("ui/text.html"))
}

/// The helpers the UI pages share (token, API calls, errors, image URLs, sizes).
async fn common_js() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("ui/common.js"),
    )
}

async fn console_page() -> Html<&'static str> {
    Html(include_str!("ui/index.html"))
}

/// A store named by a location: `s3://bucket/prefix` (settings from `AWS_*`, no cache)
/// or a directory. Backups and `magpie backup restore` use it.
pub fn open_store(location: &str) -> std::io::Result<Arc<dyn magpie_engine::storage::Storage>> {
    Ok(
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            Arc::new(
                magpie_objstore::ObjectStorage::open_s3(location, &[], None)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            )
        } else {
            Arc::new(magpie_engine::storage::LocalStorage::new(
                std::path::Path::new(location),
            ))
        },
    )
}

/// Builds the router over an opened engine.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    use api::*;
    let v2 = Router::new()
        .route("/v2/vectordb/collections/create", post(create_collection))
        .route(
            "/v2/vectordb/collections/describe",
            post(describe_collection),
        )
        .route("/v2/vectordb/collections/list", post(list_collections))
        .route("/v2/vectordb/collections/has", post(has_collection))
        .route("/v2/vectordb/collections/drop", post(drop_collection))
        .route("/v2/vectordb/collections/rename", post(rename_collection))
        .route("/v2/vectordb/collections/get_stats", post(get_stats))
        .route("/v2/vectordb/collections/load", post(load_collection))
        .route("/v2/vectordb/collections/release", post(release_collection))
        .route(
            "/v2/vectordb/collections/get_load_state",
            post(get_load_state),
        )
        .route("/v2/vectordb/collections/flush", post(flush))
        .route("/v2/vectordb/collections/compact", post(compact))
        .route("/v2/vectordb/partitions/create", post(create_partition))
        .route("/v2/vectordb/partitions/drop", post(drop_partition))
        .route("/v2/vectordb/partitions/list", post(list_partitions))
        .route("/v2/vectordb/partitions/has", post(has_partition))
        .route("/v2/vectordb/entities/insert", post(insert))
        .route("/v2/vectordb/entities/upsert", post(upsert))
        .route("/v2/vectordb/entities/delete", post(delete))
        .route("/v2/vectordb/entities/get", post(get_entities))
        .route("/v2/vectordb/entities/query", post(query))
        .route(
            "/v2/vectordb/entities/search",
            post(search).layer(middleware::from_fn(in_flight)),
        )
        .route(
            "/v2/vectordb/entities/hybrid_search",
            post(hybrid_search).layer(middleware::from_fn(in_flight)),
        )
        .route("/v2/vectordb/indexes/create", post(create_index))
        .route("/v2/vectordb/indexes/describe", post(describe_index))
        .route("/v2/vectordb/indexes/list", post(list_indexes))
        .route("/v2/vectordb/indexes/drop", post(drop_index))
        .route("/v2/vectordb/databases/create", post(create_database))
        .route("/v2/vectordb/databases/drop", post(drop_database))
        .route("/v2/vectordb/databases/list", post(list_databases))
        .route("/v2/vectordb/databases/describe", post(describe_database))
        .route("/v2/vectordb/jobs/import/create", post(import_api::create))
        .route("/v2/vectordb/jobs/import/list", post(import_api::list))
        .route(
            "/v2/vectordb/jobs/import/get_progress",
            post(import_api::get_progress),
        )
        .route(
            "/v2/vectordb/jobs/import/describe",
            post(import_api::get_progress),
        )
        .route("/v2/vectordb/aliases/create", post(create_alias))
        .route("/v2/vectordb/aliases/alter", post(alter_alias))
        .route("/v2/vectordb/aliases/drop", post(drop_alias))
        .route("/v2/vectordb/aliases/describe", post(describe_alias))
        .route("/v2/vectordb/aliases/list", post(list_aliases))
        .route("/v2/admin/backups/create", post(backups::create))
        .route("/v2/admin/backups/list", post(backups::list))
        .route("/v2/images/collections", post(images_api::list))
        .route("/v2/images/index", post(images_api::index))
        .route("/v2/images/status", post(images_api::status))
        .route(
            "/v2/images/search",
            post(images_api::search).layer(middleware::from_fn(in_flight)),
        )
        .route("/v2/images/uploads", post(images_api::upload))
        .route("/v2/images/get", post(images_api::get_image))
        .route("/v2/images/dupes", post(images_api::dupes))
        .route("/v2/text/collections", post(text_api::list))
        .route(
            "/v2/text/search",
            post(text_api::search).layer(middleware::from_fn(in_flight)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let image_files = Router::new()
        .route("/images/{coll}/{id}/thumb", get(images_api::thumb))
        .route("/images/{coll}/{id}/file", get(images_api::file))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth_images));
    // Milvus's gRPC protocol on the same port: its paths never collide with REST's.
    let grpc_limit = max_body_bytes;
    let grpc = tower::ServiceBuilder::new()
        .map_response(move |r: axum::http::Response<_>| {
            grpc::transport_error_codes(r.into_response(), grpc_limit)
        })
        .layer(middleware::from_fn(grpc_in_flight))
        .service(grpc::service(state.clone(), max_body_bytes));
    Router::new()
        .merge(v2)
        .merge(image_files)
        .route_service("/milvus.proto.milvus.MilvusService/{rpc}", grpc)
        .route("/", get(index_page))
        .route("/text", get(text_page))
        .route("/image/{coll}/{id}", get(image_page))
        .route("/console", get(console_page))
        .route("/ui/common.js", get(common_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.allowed_hosts.clone().map(Arc::new),
            check_host,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Opens the engine, serves until `shutdown` resolves, then flushes everything.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<std::net::SocketAddr> = tokio::net::lookup_host(&cfg.listen)
        .await
        .ok()
        .and_then(|mut a| a.next());
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    if !loopback && cfg.token.is_none() {
        if !cfg.allow_insecure {
            return Err(std::io::Error::other(format!(
                "refusing to listen on {} without a token: anyone who reaches it could read, change and delete all data. Set --token (or MAGPIE_TOKEN), listen on 127.0.0.1, or pass --allow-insecure if the network is trusted",
                cfg.listen
            )));
        }
        tracing::warn!(listen = %cfg.listen, "listening beyond loopback without a token (--allow-insecure): every client has full access");
    }
    // Certificate and key are read before the engine opens: a bad file fails the start
    // at once, naming it.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k)?),
        (None, None) => None,
        _ => {
            return Err(std::io::Error::other(
                "TLS needs both --tls-cert and --tls-key",
            ))
        }
    };
    let allowed_hosts = host_guard(&cfg.allowed_hosts, loopback);
    magpie_embed::image::set_decode_budget(cfg.decode_memory_bytes);
    let data_dir = cfg.data_dir.clone();
    let mut ecfg = cfg.engine_config();
    if let Some(url) = cfg
        .import_root
        .as_ref()
        .and_then(|p| p.to_str())
        .filter(|p| p.starts_with("s3://") || p.starts_with("s3a://"))
    {
        let url = url.to_string();
        let src = tokio::task::spawn_blocking(move || {
            magpie_objstore::ObjectStorage::open_s3_source(&url, &[])
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| std::io::Error::other(format!("--import-root: {e}")))?;
        ecfg.import_root = None;
        ecfg.import_store = Some(Arc::new(src));
    }
    let storage = cfg.storage.clone();
    let cache = magpie_objstore::CacheConfig {
        dir: cfg
            .storage_cache_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("cache")),
        max_bytes: cfg.storage_cache_bytes,
    };
    let engine = tokio::task::spawn_blocking(move || match storage {
        None => {
            Engine::open(&data_dir, ecfg).map_err(|e| format!("cannot open data directory: {e}"))
        }
        Some(url) => {
            let store = magpie_objstore::ObjectStorage::open_s3(&url, &[], Some(cache))
                .map_err(|e| format!("cannot open storage: {e}"))?;
            tracing::info!(storage = %url, "segments, indexes and manifests in object storage");
            Engine::open_with_storage(&data_dir, ecfg, Arc::new(store))
                .map_err(|e| format!("cannot open the database in {url}: {e}"))
        }
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    let engine = Arc::new(engine);
    let models_dir = cfg
        .models_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("models"));
    let emb = Arc::new(
        magpie_app::embedder::ModelEmbedder::new(magpie_embed::models::ModelStore::new(models_dir))
            .with_threads(cfg.embed_threads),
    );
    engine.set_embedder(emb.clone());
    let roots = if cfg.image_roots.is_empty() {
        images_api::default_image_roots(&cfg.data_dir, cfg.images_folder.as_deref())
    } else {
        cfg.image_roots.clone()
    };
    let images = Arc::new(images_api::ImageService::new(
        emb,
        cfg.data_dir.clone(),
        roots,
    ));
    if let Some(folder) = &cfg.images_folder {
        images
            .start_index(
                engine.clone(),
                cfg.images_collection.clone(),
                folder.clone(),
                None,
            )
            .map_err(|e| std::io::Error::other(e.message))?;
        tracing::info!(folder = %folder.display(), collection = %cfg.images_collection, "indexing images in the background");
    }
    let state =
        Arc::new(AppState {
            engine: engine.clone(),
            metrics: Default::default(),
            token: cfg.token.clone(),
            images: Some(images.clone()),
            allowed_hosts,
            backups: Some(
                open_store(&cfg.backup_storage.clone().unwrap_or_else(|| {
                    cfg.data_dir.join("backups").to_string_lossy().into_owned()
                }))
                .map_err(|e| std::io::Error::other(format!("backup storage: {e}")))?,
            ),
            inline: inline::InlineGate::new(cfg.search_inline_us)
                .with_timeout_ms(cfg.search_timeout_ms),
        });
    let app = router(state, cfg.max_body_bytes);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %cfg.data_dir.display(), simd = magpie_linalg::active_isa(), tls = tls.is_some(), "magpie listening");
    // Machine-readable line for scripts and tests that start the server on port 0.
    println!(
        "listening on {}://{}",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    let maint_engine = engine.clone();
    let period = Duration::from_millis(cfg.maintenance_interval_ms.max(50));
    let maint = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let e = maint_engine.clone();
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || e.maintain()).await {
                tracing::error!("maintenance failed: {err}");
            }
        }
    });
    match tls {
        None => {
            // Small JSON replies must not wait for Nagle's algorithm.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Some(acceptor) => tls::serve(listener, acceptor, app, shutdown).await?,
    }
    maint.abort();
    // Stop image indexing between batches; what it wrote is in the WAL.
    images
        .cancel
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("shutting down: flushing");
    match tokio::task::spawn_blocking(move || engine.flush_all())
        .await
        .map_err(std::io::Error::other)?
    {
        Ok(()) => Ok(()),
        // Every acknowledged write is in the log, which the next start replays; memory
        // (which may hold a write that failed) is deliberately not flushed.
        Err(magpie_engine::EngineError::WalPoisoned(why)) => {
            tracing::error!("not flushing at shutdown: the WAL failed earlier ({why}); the next start recovers every acknowledged write from the log");
            Ok(())
        }
        Err(e) => Err(std::io::Error::other(format!(
            "flush at shutdown failed: {e}"
        ))),
    }
}
