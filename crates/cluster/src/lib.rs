//! Cluster mode: the same binary in roles, on existing distributed components.
//!
//! - **etcd** holds the catalog, node membership (leases), shard assignments, log
//!   checkpoints and the coordinator's election ([`meta`]).
//! - **NATS JetStream** holds each shard's write-ahead log ([`log`]).
//! - **S3** holds each shard's segments and indexes, written by its data node.
//!
//! Roles (`magpie serve --role proxy,coordinator,data,query`, any combination per
//! process): the proxy serves the REST API and routes ([`proxy`]); the coordinator assigns
//! shards to nodes ([`coord`]); data and query nodes host shard engines ([`node`]).
//! docs/ARCHITECTURE.md ("Cluster mode") has the whole picture and the failure cases.

pub mod coord;
pub mod error;
pub mod log;
pub mod meta;
pub mod node;
pub mod overlay;
pub mod proxy;

pub use error::{ClusterError, Result};
pub use meta::Role;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use magpie_engine::EngineConfig;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A cluster process's settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub roles: Vec<Role>,
    /// etcd endpoints (`http://host:port`).
    pub etcd: Vec<String>,
    /// The log broker (`nats://host:port`).
    pub log: String,
    /// Copies of each log stream in the broker (its `num_replicas`; 3 on a 3-server
    /// JetStream cluster).
    pub log_replicas: usize,
    /// Segments: `s3://bucket/prefix` (settings from the `AWS_*` environment).
    pub storage: String,
    /// Names this cluster's keys in etcd and streams in the broker.
    pub prefix: String,
    pub listen: String,
    /// The URL other processes reach this one at [default: http://<bound address>].
    pub advertise: Option<String>,
    /// [default: a random id]
    pub node_id: Option<String>,
    /// Local state: shard WALs and caches (rebuilt from S3 and the log at each start).
    pub data_dir: PathBuf,
    pub engine: EngineConfig,
    /// Data nodes flush and checkpoint each shard this often.
    pub checkpoint_every: Duration,
    /// Query nodes reopen a shard on its data node's newer checkpoint at most this often.
    pub refresh_every: Duration,
    /// Log records are trimmed this long after a checkpoint covers them.
    pub log_retention: Duration,
    /// Seconds a node's registration outlives its last heartbeat.
    pub lease_ttl: i64,
    pub max_body_bytes: usize,
    /// Required as a bearer token on the REST API and on the node-to-node endpoints.
    pub token: Option<String>,
    /// Accepted Host header values (`--allowed-hosts`); empty on a loopback address
    /// means loopback names only, as standalone does (the DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
    /// Listen beyond loopback without a token (refused otherwise).
    pub allow_insecure: bool,
    /// Built-in models, for a proxy: it runs collections' embedding functions (on
    /// inserted rows and on search texts and images) once, and logs and forwards vectors.
    pub models_dir: PathBuf,
    /// A proxy's image inference threads (0 = every core).
    pub embed_threads: usize,
}

struct Shared {
    node: Option<Arc<node::Node>>,
    meta: meta::Meta,
    /// The current registration lease (replaced when a lost one is re-established).
    lease: parking_lot::Mutex<Arc<meta::Lease>>,
    proxy: Option<Arc<proxy::Proxy>>,
    id: String,
    roles: Vec<Role>,
    leader: std::sync::atomic::AtomicBool,
}

/// Creates the database of `collection` (a qualified name) in `engine` when it lacks
/// it: the catalog mirror and each shard engine hold a collection under the name the
/// cluster gives it, and a name in a database needs that database.
pub(crate) fn ensure_database(engine: &magpie_engine::Engine, collection: &str) {
    let (db, _) = magpie_engine::split_qualified(collection);
    if !engine.has_database(db) {
        if let Err(e) = engine.create_database(db) {
            tracing::warn!("creating database '{db}' for collection '{collection}': {e}");
        }
    }
}

/// Calls a REST router in-process (a shard's engine on a node, the catalog mirror on a
/// proxy): the status and the JSON body (`Null` when it is not JSON).
pub(crate) async fn call_router(
    router: &Router,
    path: &str,
    body: &serde_json::Value,
) -> (axum::http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::extract::Request::post(path)
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(axum::body::Body::from(
            serde_json::to_vec(body).unwrap_or_default(),
        ))
        .expect("request");
    match router.clone().oneshot(req).await {
        Ok(resp) => {
            let st = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (st, serde_json::from_slice(&bytes).unwrap_or_default())
        }
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 65535, "message": e.to_string()}),
        ),
    }
}

/// Anything else: a JSON 404 that says what cluster mode serves.
async fn not_found(req: axum::extract::Request) -> Response {
    magpie_server::error::ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        404,
        format!(
            "no such endpoint on this cluster node: {} {} (proxies serve /v2/vectordb/*, bulk import included; backups, the image app and the web UI are not in cluster mode yet)",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let mut why = Vec::new();
    if s.lease.lock().is_lost() {
        why.push("the etcd lease is lost (etcd unreachable); re-registering".to_string());
    }
    if let Some(p) = &s.proxy {
        if let Err(e) = p.ready() {
            why.push(e);
        }
    }
    if let Some(n) = &s.node {
        if let Err(e) = n.ready() {
            why.push(e);
        }
    }
    if why.is_empty() {
        "ready".into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, why.join("; ")).into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP magpie_cluster_coordinator_leader Whether this process leads the coordinators.\n# TYPE magpie_cluster_coordinator_leader gauge\n");
    out.push_str(&format!(
        "magpie_cluster_coordinator_leader {}\n",
        s.leader.load(std::sync::atomic::Ordering::Relaxed) as u8
    ));
    if let Some(n) = &s.node {
        out.push_str(&n.metrics());
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

async fn node_status(State(s): State<Arc<Shared>>) -> Response {
    match &s.node {
        Some(n) => axum::Json(n.status()).into_response(),
        None => axum::Json(json!({"node": s.id, "roles": s.roles, "shards": []})).into_response(),
    }
}

async fn check_token(
    State(token): State<Option<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(t) = &token {
        let got = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let same = got.is_some_and(|g| {
            // Constant time in where the two differ (only their lengths show).
            g.len() == t.len() && g.bytes().zip(t.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        });
        if !same {
            return magpie_server::error::ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                1800,
                "missing or wrong token: send 'Authorization: Bearer <token>'",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Runs a cluster process until `shutdown` resolves.
///
/// When the node's etcd lease is lost (etcd unreachable for longer than the TTL, so the
/// coordinator may have moved its shards), it stops its shards, reports not ready, and
/// registers again with a new lease once etcd answers; the shards assigned to it then
/// open again.
pub async fn run(
    cfg: ClusterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if cfg.roles.is_empty() {
        return Err(ClusterError::Invalid("no role given".into()));
    }
    let loopback = tokio::net::lookup_host(&cfg.listen)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| a.ip().is_loopback());
    if !loopback && cfg.token.is_none() && !cfg.allow_insecure {
        return Err(ClusterError::Invalid(format!(
            "refusing to listen on {} without a token: anyone who reaches it could read, change and delete all data, and write into shards directly. Set --token (every node and proxy of the cluster the same), listen on 127.0.0.1, or pass --allow-insecure if the network is trusted",
            cfg.listen
        )));
    }
    let meta = meta::Meta::connect(&cfg.etcd, &cfg.prefix).await?;
    let log: Arc<dyn log::Log> =
        Arc::new(log::JetStreamLog::connect(&cfg.log, &cfg.prefix, cfg.log_replicas).await?);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| ClusterError::Invalid(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let addr = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let id = cfg.node_id.clone().unwrap_or_else(|| {
        let n: u64 = (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0);
        format!("node-{n:x}")
    });
    let lease = Arc::new(meta.lease(cfg.lease_ttl.max(2)).await?);
    let info = meta::NodeInfo {
        id: id.clone(),
        roles: cfg.roles.clone(),
        addr: addr.clone(),
    };
    let (prev, _) = meta.get::<meta::NodeInfo>(&format!("nodes/{id}")).await?;
    if prev.is_some() {
        return Err(ClusterError::Invalid(format!(
            "a node with id '{id}' is registered already (another process, or one that died less than {} s ago)",
            cfg.lease_ttl
        )));
    }
    meta.put(&format!("nodes/{id}"), &info, Some(lease.id))
        .await?;
    let is = |r: Role| cfg.roles.contains(&r);
    let node = (is(Role::Data) || is(Role::Query)).then(|| {
        node::Node::new(
            id.clone(),
            cfg.roles.clone(),
            meta.clone(),
            log.clone(),
            cfg.storage.clone(),
            cfg.data_dir.clone(),
            cfg.engine.clone(),
            cfg.checkpoint_every,
            cfg.refresh_every,
            cfg.log_retention,
        )
    });
    let proxy = if is(Role::Proxy) {
        let dir = cfg.data_dir.join("proxy-catalog");
        let p = tokio::task::block_in_place(|| {
            proxy::Proxy::new(
                meta.clone(),
                log.clone(),
                dir,
                cfg.token.clone(),
                cfg.storage.clone(),
                Duration::from_millis(cfg.engine.bounded_staleness_ms),
                Arc::new(
                    magpie_app::embedder::ModelEmbedder::new(
                        magpie_embed::models::ModelStore::new(cfg.models_dir.clone()),
                    )
                    .with_threads(cfg.embed_threads),
                ),
            )
        })?;
        let _ = p.refresh_routes().await;
        Some(p)
    } else {
        None
    };
    if let Some(n) = &node {
        n.lease_id
            .store(lease.id, std::sync::atomic::Ordering::SeqCst);
    }
    let shared = Arc::new(Shared {
        node: node.clone(),
        meta: meta.clone(),
        lease: parking_lot::Mutex::new(lease.clone()),
        proxy: proxy.clone(),
        id: id.clone(),
        roles: cfg.roles.clone(),
        leader: std::sync::atomic::AtomicBool::new(false),
    });
    let mut app: Router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/node/status", get(node_status))
        .with_state(shared.clone());
    let mut tasks = Vec::new();
    if let Some(n) = &node {
        app = app.merge(
            Router::new()
                .route("/shard/{cid}/{k}/{*rest}", post(node::forward))
                .with_state(n.clone())
                .layer(axum::middleware::from_fn_with_state(
                    cfg.token.clone(),
                    check_token,
                )),
        );
        let n2 = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tick.tick().await;
                if let Err(e) = n2.reconcile().await {
                    tracing::warn!("reconcile: {e}");
                }
            }
        }));
        let n3 = n.clone();
        let every = Duration::from_millis(1000);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                n3.maintain().await;
                n3.refresh_replicas().await;
            }
        }));
    }
    if let Some(p) = proxy {
        // Milvus's gRPC protocol on the same port, bridged to the REST dispatch below
        // (`proxy/grpc.rs`); the bridge checks the token as pymilvus sends it.
        let grpc_limit = cfg.max_body_bytes;
        let grpc = tower::ServiceBuilder::new()
            .map_response(move |r: axum::http::Response<_>| {
                magpie_server::grpc::transport_error_codes(r.into_response(), grpc_limit)
            })
            .service(magpie_server::grpc::bridge::service(
                Arc::new(proxy::GrpcBackend(p.clone())),
                cfg.token.clone(),
                cfg.max_body_bytes,
            ));
        app = app.route_service("/milvus.proto.milvus.MilvusService/{rpc}", grpc);
        let p2 = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tick.tick().await;
                if let Err(e) = p2.refresh_routes().await {
                    tracing::warn!("routes: {e}");
                }
            }
        }));
        app = app.merge(
            Router::new()
                .route("/v2/vectordb/{*path}", post(proxy::handle))
                .with_state(p)
                .layer(axum::middleware::from_fn_with_state(
                    cfg.token.clone(),
                    check_token,
                ))
                .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body_bytes)),
        );
    }
    if is(Role::Coordinator) {
        let (m, me, sh) = (meta.clone(), id.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let lease = sh.lease.lock().clone();
                if lease.is_lost() {
                    sh.leader.store(false, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                match coord::round(&m, &me, lease.id).await {
                    Ok(lead) => sh.leader.store(lead, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => tracing::warn!("coordinator: {e}"),
                }
            }
        }));
    }
    // Standalone's DNS-rebinding guard, on every route: on a loopback address only
    // loopback Host names unless `--allowed-hosts` says otherwise.
    let app = app
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            magpie_server::host_guard(&cfg.allowed_hosts, loopback).map(Arc::new),
            magpie_server::check_host,
        ));
    tracing::info!(node = %id, roles = ?cfg.roles, addr = %addr, "cluster node up");
    println!("listening on http://{local}");
    // Re-registration after a lost lease.
    {
        let (sh, m, ttl) = (shared.clone(), meta.clone(), cfg.lease_ttl.max(2));
        let key = format!("nodes/{id}");
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if !sh.lease.lock().is_lost() {
                    continue;
                }
                tracing::error!("etcd lease lost (etcd unreachable for longer than the lease TTL): stopping this node's shards until it is registered again");
                sh.leader.store(false, std::sync::atomic::Ordering::Relaxed);
                if let Some(n) = &sh.node {
                    n.shutdown().await;
                }
                loop {
                    let again = async {
                        let l = m.lease(ttl).await?;
                        m.put(&key, &info, Some(l.id)).await?;
                        Ok::<_, ClusterError>(l)
                    };
                    match again.await {
                        Ok(l) => {
                            if let Some(n) = &sh.node {
                                n.lease_id.store(l.id, std::sync::atomic::Ordering::SeqCst);
                            }
                            *sh.lease.lock() = Arc::new(l);
                            tracing::info!("registered again in etcd");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("re-registering: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ClusterError::Invalid(format!("server: {e}")))?;
    for t in tasks {
        t.abort();
    }
    if let Some(n) = &node {
        tracing::info!("stopping shards (data nodes flush and checkpoint)");
        n.shutdown().await;
    }
    let lease = shared.lease.lock().clone();
    shared.meta.revoke(&lease).await;
    Ok(())
}
