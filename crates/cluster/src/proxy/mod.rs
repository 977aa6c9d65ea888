//! The proxy: Milvus's REST v2 API for clients, over the cluster.
//!
//! - **DDL** (create/drop collections, partitions, indexes, load/release) is validated on
//!   a *catalog mirror* (an engine in memory that holds every collection's schema and no
//!   rows, rebuilt from etcd), recorded in the collection's etcd record with a
//!   compare-and-swap, and appended to every shard's log, so that each shard applies it
//!   in order with the writes around it.
//! - **Writes** are validated against the schema here (a bad row is a 400 before anything
//!   is logged), get their auto ids here (allocated in blocks from etcd), are split by
//!   primary-key hash into shards and appended to the shards' logs; the client's answer
//!   comes once the broker has them durably.
//! - **Reads** go to one node per shard (a query node, else the data node), with the log
//!   sequence the shard must have applied first (Strong: the log's last sequence;
//!   Session: this proxy's last write), and are merged here: top-k by distance for
//!   searches, concatenation sorted by primary key for queries, sums for counts. A node
//!   that fails is skipped for the shard's next node.

use crate::call_router as call;
use crate::error::ClusterError;
use crate::log::{Log, ShardId};
use crate::meta::{Assignment, CollectionRecord, Meta, NodeInfo};
use crate::node::{Record, MIN_SEQ_HEADER};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use magpie_engine::{CollectionMeta, Consistency, Engine};
use magpie_server::error::ApiError;
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod ddl;
mod grpc;
mod import;
mod names;
mod read;
mod write;

pub(crate) use grpc::Backend as GrpcBackend;

/// Largest log record the proxy writes (rows are split across records above it).
const RECORD_BYTES: usize = 256 << 10;
const MAX_SHARDS: u64 = 64;
/// Reads and writes use collection records this fresh from the routing refresh.
const RECORD_TTL: Duration = Duration::from_secs(1);
/// How long a read waits for a shard that no node serves yet.
const SHARD_WAIT: Duration = Duration::from_secs(15);

type ApiResult = std::result::Result<Value, ApiError>;

fn api(e: ClusterError) -> ApiError {
    match e {
        ClusterError::Engine(e) => ApiError::from(e),
        ClusterError::Node { status, msg, .. } => ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            65535,
            msg,
        ),
        e => ApiError::new(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            65535,
            e.to_string(),
        ),
    }
}

#[derive(Default)]
struct Routes {
    nodes: HashMap<String, String>,
    assigns: HashMap<ShardId, Assignment>,
}

pub struct Proxy {
    meta: Meta,
    log: Arc<dyn Log>,
    mirror: Arc<Engine>,
    mirror_router: Router,
    /// Collection name → (id, DDL records applied) as mirrored.
    mirrored: tokio::sync::Mutex<HashMap<String, (u64, usize)>>,
    routes: RwLock<Routes>,
    http: reqwest::Client,
    /// The last sequence this proxy wrote per shard (Session consistency).
    session: Mutex<HashMap<ShardId, u64>>,
    /// Per shard, the log's last sequence and when it was asked for (Bounded
    /// consistency): every write acknowledged before that instant is at or below it.
    last_seen: Mutex<HashMap<ShardId, (std::time::Instant, u64)>>,
    /// How stale a Bounded read may be (`bounded_staleness_ms`).
    bounded: Duration,
    rr: AtomicUsize,
    /// The last routing refresh's etcd failure, if it failed.
    etcd_error: Mutex<Option<String>>,
    /// The last record read of each collection: reads and writes go on with it while
    /// etcd is unreachable (DDL does not).
    records: Mutex<HashMap<String, CollectionRecord>>,
    /// When `records` was last read whole from etcd (by the routing refresh).
    records_at: Mutex<Option<std::time::Instant>>,
    /// Bumped by this proxy's own DDL, so that a refresh that read etcd before it does
    /// not overwrite what it wrote.
    records_gen: AtomicUsize,
    /// Sent to the nodes (they require the cluster's token too).
    token: Option<String>,
    /// The cluster's storage URL (bulk import reads its `import/` prefix).
    storage: String,
    imports: import::Imports,
    /// Per collection id: held by an insert with client-given keys from its key lookup
    /// to its last append, so that two such inserts through this proxy cannot both pass
    /// the lookup for one new key (`write.rs`).
    insert_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Alias → collection (qualified names), as of the last routing refresh and this
    /// proxy's own alias changes (`names.rs`).
    aliases: Mutex<HashMap<String, String>>,
    /// Databases besides `default` known to exist (the same).
    databases: Mutex<std::collections::HashSet<String>>,
    /// Keeps the mirror's WAL directory alive.
    _dir: tempfile_dir::TempDir,
}

mod tempfile_dir {
    /// A directory removed on drop (the mirror's WAL; the mirror holds no rows).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn need(body: &Value, key: &str) -> Result<String, ApiError> {
    if let Some(v) = body.get(key).filter(|v| !v.is_string() && !v.is_null()) {
        // Standalone's typed body refuses it the same way.
        return Err(ApiError::bad_request(format!(
            "malformed request JSON: '{key}' must be a string, not {v}"
        )));
    }
    match body
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
    {
        // A name is part of etcd keys and log subjects: one with '/' is refused with
        // the message standalone gives for it.
        Some(s) if s.contains('/') => {
            let kind = match key {
                "dbName" => "database",
                "partitionName" => "partition",
                _ => "collection",
            };
            // `check_name` refuses every '/'; its message is the one standalone gives.
            Err(magpie_engine::check_name(kind, s).err().map_or_else(
                || ApiError::bad_request(format!("invalid {kind} name '{s}'")),
                ApiError::from,
            ))
        }
        Some(s) => Ok(s.to_string()),
        None => Err(ApiError::bad_request(format!("missing '{key}'"))),
    }
}

fn err_of(st: StatusCode, v: &Value) -> ApiError {
    ApiError::new(
        st,
        v["code"].as_i64().unwrap_or(65535) as i32,
        v["message"].as_str().unwrap_or("error").to_string(),
    )
}

/// Orders primary keys: integers numerically, strings lexicographically.
fn pk_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.as_str().unwrap_or("").cmp(b.as_str().unwrap_or("")),
    }
}

impl Proxy {
    pub fn new(
        meta: Meta,
        log: Arc<dyn Log>,
        dir: std::path::PathBuf,
        token: Option<String>,
        storage: String,
        bounded: Duration,
        embedder: Arc<dyn magpie_engine::function::Embedder>,
    ) -> Result<Arc<Proxy>, ClusterError> {
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = magpie_engine::EngineConfig {
            prefetch_on_open: false,
            auto_compact_secs: 0,
            ..Default::default()
        };
        let mirror = Arc::new(Engine::open_with_storage(
            &dir,
            cfg,
            Arc::new(magpie_engine::storage::MemoryStorage::new()),
        )?);
        // The mirror checks embedding functions' models at create, and embeds inserted
        // rows and search texts and images (`write.rs`, `read.rs`).
        mirror.set_embedder(embedder);
        let state = Arc::new(magpie_server::AppState {
            engine: mirror.clone(),
            metrics: Default::default(),
            token: None,
            images: None,
            allowed_hosts: None,
            backups: None,
            inline: Default::default(),
        });
        Ok(Arc::new(Proxy {
            meta,
            log,
            mirror,
            mirror_router: magpie_server::router(state, usize::MAX >> 1),
            mirrored: tokio::sync::Mutex::new(HashMap::new()),
            routes: RwLock::new(Routes::default()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| ClusterError::Invalid(e.to_string()))?,
            session: Mutex::new(HashMap::new()),
            insert_locks: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            databases: Mutex::new(Default::default()),
            last_seen: Mutex::new(HashMap::new()),
            bounded,
            rr: AtomicUsize::new(0),
            etcd_error: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
            records_at: Mutex::new(None),
            records_gen: AtomicUsize::new(0),
            token,
            storage,
            imports: Default::default(),
            _dir: tempfile_dir::TempDir(dir),
        }))
    }

    /// Ready when the broker is connected and etcd answered the last routing refresh.
    pub fn ready(&self) -> std::result::Result<(), String> {
        if !self.log.connected() {
            return Err("the log broker is unreachable: writes are refused".into());
        }
        if let Some(e) = self.etcd_error.lock().clone() {
            return Err(format!("etcd: {e}"));
        }
        Ok(())
    }

    /// Re-reads nodes, assignments and collection records from etcd.
    pub async fn refresh_routes(&self) -> Result<(), ClusterError> {
        let gen = self.records_gen.load(Ordering::SeqCst);
        let got = async {
            let t0 = std::time::Instant::now();
            let nodes: BTreeMap<String, NodeInfo> = self.meta.list("nodes/").await?;
            let assigns: BTreeMap<String, Assignment> = self.meta.list("assign/").await?;
            let colls: BTreeMap<String, CollectionRecord> = self.meta.list("collections/").await?;
            let aliases: HashMap<String, String> =
                self.meta.list("aliases/").await?.into_iter().collect();
            let dbs: BTreeMap<String, names::DatabaseRecord> = self.meta.list("databases/").await?;
            Ok::<_, ClusterError>((nodes, assigns, colls, aliases, dbs, t0))
        }
        .await;
        *self.etcd_error.lock() = got.as_ref().err().map(|e| e.to_string());
        let (nodes, assigns, colls, aliases, dbs, t0) = got?;
        if self.records_gen.load(Ordering::SeqCst) == gen {
            *self.aliases.lock() = aliases;
            *self.databases.lock() = dbs.into_keys().collect();
        }
        // Insert locks of dropped collections go; one an insert holds or waits for stays.
        let live: std::collections::HashSet<u64> = colls.values().map(|c| c.id).collect();
        self.insert_locks
            .lock()
            .retain(|id, l| live.contains(id) || Arc::strong_count(l) > 1);
        {
            let mut records = self.records.lock();
            if self.records_gen.load(Ordering::SeqCst) == gen {
                *records = colls.into_iter().collect();
                *self.records_at.lock() = Some(t0);
            }
        }
        let mut r = Routes::default();
        for n in nodes.into_values() {
            r.nodes.insert(n.id, n.addr);
        }
        for (k, a) in assigns {
            let Some((c, s)) = k.split_once('/') else {
                continue;
            };
            let (Ok(c), Ok(s)) = (c.parse(), s.parse()) else {
                continue;
            };
            r.assigns.insert(
                ShardId {
                    collection: c,
                    shard: s,
                },
                a,
            );
        }
        *self.routes.write() = r;
        Ok(())
    }

    /// Nodes that can serve reads of a shard: its query nodes (rotated), then its data node.
    fn candidates(&self, id: ShardId, primary_only: bool) -> Vec<(String, String)> {
        let r = self.routes.read();
        let Some(a) = r.assigns.get(&id) else {
            return vec![];
        };
        let mut v: Vec<(String, String)> = a
            .replicas
            .iter()
            .filter(|_| !primary_only)
            .filter_map(|n| r.nodes.get(n).map(|addr| (n.clone(), addr.clone())))
            .collect();
        if !v.is_empty() {
            let k = self.rr.fetch_add(1, Ordering::Relaxed) % v.len();
            v.rotate_left(k);
        }
        if let Some(p) = &a.primary {
            if let Some(addr) = r.nodes.get(p) {
                v.push((p.clone(), addr.clone()));
            }
        }
        v
    }

    /// The collection's record, with the catalog mirror brought up to date with it: as
    /// of the last routing refresh when that is under [`RECORD_TTL`] old (reads and
    /// writes), else read from etcd.
    async fn collection(&self, name: &str) -> Result<CollectionRecord, ApiError> {
        let recent = self
            .records_at
            .lock()
            .is_some_and(|t| t.elapsed() < RECORD_TTL);
        let cached = recent
            .then(|| self.records.lock().get(name).cloned())
            .flatten();
        match cached {
            Some(rec) => self.mirror_to(name, Some(rec)).await,
            None => self.collection_fresh(name).await,
        }
    }

    /// As [`Proxy::collection`], always read from etcd (DDL).
    async fn collection_fresh(&self, name: &str) -> Result<CollectionRecord, ApiError> {
        let rec = match self
            .meta
            .get::<CollectionRecord>(&format!("collections/{name}"))
            .await
        {
            Ok((rec, _)) => {
                let mut cache = self.records.lock();
                match &rec {
                    Some(r) => cache.insert(name.to_string(), r.clone()),
                    None => cache.remove(name),
                };
                rec
            }
            Err(e) => match self.records.lock().get(name).cloned() {
                Some(r) => {
                    tracing::warn!("etcd unreachable ({e}); using the cached record of '{name}'");
                    Some(r)
                }
                None => return Err(api(e)),
            },
        };
        self.mirror_to(name, rec).await
    }

    async fn mirror_to(
        &self,
        name: &str,
        rec: Option<CollectionRecord>,
    ) -> Result<CollectionRecord, ApiError> {
        let mut mirrored = self.mirrored.lock().await;
        let Some(rec) = rec else {
            if mirrored.remove(name).is_some() {
                let _ = self.mirror.drop_collection(name);
            }
            return Err(ApiError::from(
                magpie_engine::EngineError::CollectionNotFound(name.to_string()),
            ));
        };
        if mirrored.get(name) != Some(&(rec.id, rec.ddl.len())) {
            if self.mirror.has_collection(name) {
                let _ = self.mirror.drop_collection(name);
            }
            // Under its current name: renames are skipped, and every DDL request is
            // replayed with that name.
            crate::ensure_database(&self.mirror, name);
            let mut create = rec.create.clone();
            create["collectionName"] = json!(name);
            let (st, v) = call(
                &self.mirror_router,
                "/v2/vectordb/collections/create",
                &create,
            )
            .await;
            if !st.is_success() {
                return Err(err_of(st, &v));
            }
            for (path, body) in &rec.ddl {
                if path.ends_with("collections/rename") {
                    continue;
                }
                let mut body = body.clone();
                body["collectionName"] = json!(name);
                call(&self.mirror_router, path, &body).await;
            }
            mirrored.insert(name.to_string(), (rec.id, rec.ddl.len()));
        }
        Ok(rec)
    }

    async fn append(&self, id: ShardId, rec: &Record) -> Result<u64, ApiError> {
        self.append_bytes(id, serde_json::to_vec(rec).expect("record serialises"))
            .await
    }

    /// Appends a serialised [`Record`].
    async fn append_bytes(&self, id: ShardId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        let seq = self.log.append(id, bytes).await.map_err(api)?;
        let mut s = self.session.lock();
        let e = s.entry(id).or_default();
        *e = (*e).max(seq);
        Ok(seq)
    }

    /// Appends one record to every shard of the collection.
    async fn append_all(&self, rec: &CollectionRecord, r: &Record) -> Result<(), ApiError> {
        for s in 0..rec.shards {
            self.append(
                ShardId {
                    collection: rec.id,
                    shard: s,
                },
                r,
            )
            .await?;
        }
        Ok(())
    }

    /// The sequence each shard must have applied before a read at `level`:
    /// - Strong: the log's last sequence, asked for now;
    /// - Session: the last sequence this proxy wrote to the shard;
    /// - Bounded: the log's last sequence as asked for at most `bounded_staleness_ms`
    ///   ago (by this read or an earlier one), so the read sees every write acknowledged
    ///   before that; one log round trip per shard and staleness window, not per read;
    ///   and never before this proxy's own last write, so a client reads what it wrote
    ///   through the same proxy, as it does on standalone (pymilvus's default level);
    /// - Eventually: none.
    async fn barrier(&self, id: ShardId, level: Consistency) -> Result<u64, ApiError> {
        Ok(match level {
            Consistency::Strong => self.last_seq(id).await?,
            Consistency::Session => self.session.lock().get(&id).copied().unwrap_or(0),
            Consistency::Bounded => {
                let seen = self.last_seen.lock().get(&id).copied();
                let own = self.session.lock().get(&id).copied().unwrap_or(0);
                match seen {
                    Some((at, seq)) if at.elapsed() <= self.bounded => seq.max(own),
                    _ => self.last_seq(id).await?,
                }
            }
            Consistency::Eventually => 0,
        })
    }

    /// The log's last sequence of shard `id`, remembered with the instant the question
    /// was sent (for Bounded reads).
    async fn last_seq(&self, id: ShardId) -> Result<u64, ApiError> {
        let asked = std::time::Instant::now();
        let seq = self.log.last_seq(id).await.map_err(api)?;
        let mut g = self.last_seen.lock();
        let e = g.entry(id).or_insert((asked, seq));
        if e.0 <= asked {
            *e = (asked, seq);
        }
        Ok(seq)
    }

    fn level(meta: &CollectionMeta, body: &Value) -> Result<Consistency, ApiError> {
        match body.get("consistencyLevel").and_then(|v| v.as_str()) {
            Some(s) if !s.is_empty() => Consistency::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown consistencyLevel '{s}'; use Strong, Session, Bounded or Eventually"
                ))
            }),
            _ => Ok(meta.consistency),
        }
    }

    /// One request to one shard, on the first of its nodes that answers.
    async fn shard_call(
        &self,
        id: ShardId,
        path: &str,
        body: &Value,
        min_seq: u64,
    ) -> Result<Value, ApiError> {
        self.shard_call_to(id, path, body, min_seq, false).await
    }

    /// As [`Proxy::shard_call`]; with `primary_only`, on the shard's data node only.
    async fn shard_call_to(
        &self,
        id: ShardId,
        path: &str,
        body: &Value,
        min_seq: u64,
        primary_only: bool,
    ) -> Result<Value, ApiError> {
        let mut last = format!("no node serves shard {id} yet (assignment pending)");
        let mut server_error: Option<ApiError> = None;
        // A shard being assigned or opened (a new collection, a node that died) is
        // waited for, up to SHARD_WAIT, before the client gets a 503.
        let t0 = std::time::Instant::now();
        for attempt in 0u64.. {
            if attempt > 0 {
                // Server errors everywhere, twice: not a node that is moving.
                if t0.elapsed() > SHARD_WAIT || (server_error.is_some() && attempt >= 2) {
                    break;
                }
                let _ = self.refresh_routes().await;
                tokio::time::sleep(Duration::from_millis((50 * attempt).min(500))).await;
            }
            for (node, addr) in self.candidates(id, primary_only) {
                let url = format!("{addr}/shard/{}/{}{path}", id.collection, id.shard);
                let mut req = self.http.post(&url);
                if let Some(t) = &self.token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let resp = req
                    .header(MIN_SEQ_HEADER, min_seq.to_string())
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(body).unwrap_or_default())
                    .send()
                    .await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        last = format!("node {node} ({addr}): {e}");
                        continue;
                    }
                };
                let st =
                    StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let v: Value = match resp.bytes().await {
                    Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                    Err(e) => {
                        last = format!("node {node} ({addr}): {e}");
                        continue;
                    }
                };
                if st == StatusCode::MISDIRECTED_REQUEST || st == StatusCode::SERVICE_UNAVAILABLE {
                    last = v["message"].as_str().unwrap_or("unavailable").to_string();
                    continue;
                }
                if st.is_server_error() {
                    // Reads are safe to ask again elsewhere (e.g. a query node whose copy
                    // lost a file to its data node's compaction, which reopens it).
                    server_error = Some(err_of(st, &v));
                    continue;
                }
                if !st.is_success() {
                    return Err(err_of(st, &v));
                }
                return Ok(v);
            }
        }
        Err(server_error
            .unwrap_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, 503, last)))
    }

    /// The same request to every given shard (concurrently), each with its barrier.
    async fn fan_out(
        &self,
        rec: &CollectionRecord,
        shards: &[(u32, Value)],
        path: &str,
        level: Consistency,
    ) -> Result<Vec<Value>, ApiError> {
        let futs = shards.iter().map(|(s, body)| async move {
            let id = ShardId {
                collection: rec.id,
                shard: *s,
            };
            let min = self.barrier(id, level).await?;
            match self.shard_call(id, path, body, min).await {
                // A node that has not applied a rename (or a new partition, index...)
                // yet: ask again once it has applied everything logged.
                Err(e) if e.status == StatusCode::NOT_FOUND && level != Consistency::Strong => {
                    let min = self.barrier(id, Consistency::Strong).await?;
                    self.shard_call(id, path, body, min).await
                }
                r => r,
            }
        });
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect()
    }

    fn all_shards(rec: &CollectionRecord, body: &Value) -> Vec<(u32, Value)> {
        (0..rec.shards).map(|s| (s, body.clone())).collect()
    }

    async fn dispatch(self: &Arc<Self>, path: &str, mut body: Value) -> ApiResult {
        let p = format!("/v2/vectordb/{path}");
        if path.starts_with("databases/") {
            return self.databases_endpoint(path, &body).await;
        }
        // Standalone's names from here on: `db.name` (`name` in `default`), and an alias
        // replaced by its collection wherever a collection is read or written.
        let db = self.qualify(&mut body).await?;
        if !matches!(
            path,
            "collections/create"
                | "collections/drop"
                | "collections/rename"
                | "collections/list"
                | "jobs/import/list"
                | "jobs/import/get_progress"
                | "jobs/import/describe"
        ) && !path.starts_with("aliases/")
        {
            self.resolve_alias(&mut body).await;
        }
        match path {
            "collections/create" => self.create_collection(body).await,
            "collections/drop" => self.drop_collection(body).await,
            "collections/list" => self.list_collections(&db).await,
            p if p.starts_with("aliases/") => self.aliases_endpoint(p, &db, &body).await,
            "collections/describe" | "partitions/list" | "partitions/has" | "indexes/list" => {
                self.mirror_read(&p, body).await
            }
            "collections/has" => match need(&body, "collectionName") {
                Ok(name) => {
                    let (rec, _) = self
                        .meta
                        .get::<CollectionRecord>(&format!("collections/{name}"))
                        .await
                        .map_err(api)?;
                    Ok(json!({"code": 0, "data": {"has": rec.is_some()}}))
                }
                Err(e) => Err(e),
            },
            "collections/get_stats" => self.stats(body).await,
            "collections/get_load_state" => self.load_state(body).await,
            "collections/load"
            | "collections/release"
            | "partitions/create"
            | "partitions/drop"
            | "indexes/create"
            | "indexes/drop" => self.ddl(&p, body, true).await,
            "collections/flush" | "collections/compact" => self.ddl(&p, body, false).await,
            "indexes/describe" => self.describe_index(body).await,
            "entities/insert" => self.write(body, false).await,
            "entities/upsert" => self.write(body, true).await,
            "entities/delete" => self.delete(body).await,
            "entities/query" => self.query(body, false).await,
            "entities/get" => self.query(body, true).await,
            "entities/search" => self.search(body).await,
            "entities/hybrid_search" => self.hybrid_search(body).await,
            "collections/rename" => self.rename_collection(body).await,
            "jobs/import/create" => self.import_create(body).await,
            "jobs/import/list" => self.import_list(&body),
            "jobs/import/get_progress" | "jobs/import/describe" => self.import_progress(&body),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no such endpoint in cluster mode: POST /v2/vectordb/{path}"),
            )),
        }
    }
}

/// `POST /v2/vectordb/{*path}` on a proxy. The body goes through standalone's own
/// extractor, so it is refused the same ways: not JSON, not an object, or sent without
/// a JSON content type (which a page on another site could otherwise send unasked).
pub async fn handle(
    State(proxy): State<Arc<Proxy>>,
    UrlPath(path): UrlPath<String>,
    body: Result<magpie_server::api::Body<serde_json::Map<String, Value>>, ApiError>,
) -> Response {
    let body = match body {
        Ok(b) => Value::Object(b.0),
        Err(e) => return e.into_response(),
    };
    match proxy.dispatch(&path, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
