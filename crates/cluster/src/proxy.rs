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

use crate::error::ClusterError;
use crate::log::{Log, ShardId};
use crate::meta::{shard_of, Assignment, CollectionRecord, Meta, NodeInfo};
use crate::node::{Record, MIN_SEQ_HEADER};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use magpie_engine::types::{now_ms, ts_from_ms};
use magpie_engine::{Consistency, Engine, Metric, PrimaryKey};
use magpie_server::error::ApiError;
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

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
    match body
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
    {
        Some(s) if s.contains('/') => Err(ApiError::bad_request(format!(
            "invalid '{key}' {s:?}: names hold letters, digits and '_'"
        ))),
        Some(s) => Ok(s.to_string()),
        None => Err(ApiError::bad_request(format!("missing '{key}'"))),
    }
}

async fn call(router: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .expect("request");
    match router.clone().oneshot(req).await {
        Ok(resp) => {
            let st = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 65535, "message": e.to_string()}),
        ),
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
        let state = Arc::new(magpie_server::AppState {
            engine: mirror.clone(),
            metrics: Default::default(),
            token: None,
            images: None,
            allowed_hosts: None,
            backups: None,
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
            rr: AtomicUsize::new(0),
            etcd_error: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
            records_at: Mutex::new(None),
            records_gen: AtomicUsize::new(0),
            token,
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
            Ok::<_, ClusterError>((nodes, assigns, colls, t0))
        }
        .await;
        *self.etcd_error.lock() = got.as_ref().err().map(|e| e.to_string());
        let (nodes, assigns, colls, t0) = got?;
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
    fn candidates(&self, id: ShardId) -> Vec<(String, String)> {
        let r = self.routes.read();
        let Some(a) = r.assigns.get(&id) else {
            return vec![];
        };
        let mut v: Vec<(String, String)> = a
            .replicas
            .iter()
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
        let bytes = serde_json::to_vec(rec).expect("record serialises");
        let seq = self.log.append(id, bytes).await.map_err(api)?;
        let mut s = self.session.lock();
        let e = s.entry(id).or_default();
        *e = (*e).max(seq);
        Ok(seq)
    }

    /// The sequence each shard must have applied before a read at `level`.
    async fn barrier(&self, id: ShardId, level: Consistency) -> Result<u64, ApiError> {
        Ok(match level {
            Consistency::Strong => self.log.last_seq(id).await.map_err(api)?,
            Consistency::Session => self.session.lock().get(&id).copied().unwrap_or(0),
            Consistency::Bounded | Consistency::Eventually => 0,
        })
    }

    fn level(&self, name: &str, body: &Value) -> Result<Consistency, ApiError> {
        match body.get("consistencyLevel").and_then(|v| v.as_str()) {
            Some(s) if !s.is_empty() => Consistency::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown consistencyLevel '{s}'; use Strong, Session, Bounded or Eventually"
                ))
            }),
            _ => Ok(self.mirror.describe_collection(name)?.consistency),
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
        let mut last = format!("no node serves shard {id} yet (assignment pending)");
        // A shard being assigned or opened (a new collection, a node that died) is
        // waited for, up to SHARD_WAIT, before the client gets a 503.
        let t0 = std::time::Instant::now();
        for attempt in 0u64.. {
            if attempt > 0 {
                if t0.elapsed() > SHARD_WAIT {
                    break;
                }
                let _ = self.refresh_routes().await;
                tokio::time::sleep(Duration::from_millis((50 * attempt).min(500))).await;
            }
            for (node, addr) in self.candidates(id) {
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
                if !st.is_success() {
                    return Err(err_of(st, &v));
                }
                return Ok(v);
            }
        }
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, 503, last))
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

    // ------------------------------------------------------------ DDL

    async fn create_collection(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        if let Some(f) = body.pointer("/schema/functions").and_then(|v| v.as_array()) {
            if !f.is_empty() {
                return Err(ApiError::bad_request(
                    "schema functions (embedding) are not supported in cluster mode yet",
                ));
            }
        }
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

    async fn drop_collection(&self, body: Value) -> ApiResult {
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
    async fn rename_collection(&self, body: Value) -> ApiResult {
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
        for s in 0..rec.shards {
            self.append(
                ShardId {
                    collection: rec.id,
                    shard: s,
                },
                &r,
            )
            .await?;
        }
        Ok(v)
    }

    /// A schema or state change: validated on the mirror, recorded in etcd (when
    /// `record`), then appended to every shard's log.
    async fn ddl(&self, path: &str, body: Value, record: bool) -> ApiResult {
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
            for s in 0..rec.shards {
                self.append(
                    ShardId {
                        collection: rec.id,
                        shard: s,
                    },
                    &r,
                )
                .await?;
            }
            return Ok(v);
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            65535,
            format!("collection '{name}' keeps changing; try again"),
        ))
    }

    // ------------------------------------------------------------ writes

    async fn write(&self, body: Value, upsert: bool) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let schema = &meta.schema;
        let partition = body
            .get("partitionName")
            .and_then(|v| v.as_str())
            .filter(|p| !p.is_empty())
            .map(String::from);
        if let Some(p) = &partition {
            if !self.mirror.has_partition(&name, p)? {
                return Err(ApiError::from(
                    magpie_engine::EngineError::PartitionNotFound {
                        collection: name,
                        partition: p.clone(),
                    },
                ));
            }
        }
        let mut rows = match body.get("data") {
            Some(Value::Array(a)) => a.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request("missing 'data': give a list of rows"))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "'data' must be a list of row objects",
                ))
            }
        };
        if rows.is_empty() {
            return Err(ApiError::bad_request(
                "no rows given: 'data' must hold at least one row",
            ));
        }
        let pkf = schema.pk().clone();
        let batch = if pkf.auto_id && !upsert {
            let floor = ts_from_ms(now_ms());
            let r = self
                .meta
                .allocate("ids", rows.len() as u64, floor)
                .await
                .map_err(api)?;
            let mut ids = (r.start as i64)..;
            schema.validate_batch(&rows, Some(&mut ids), false)?
        } else {
            schema.validate_batch(&rows, None, upsert)?
        };
        let ids: Vec<Value> = batch.pks.iter().map(PrimaryKey::to_json).collect();
        let mut by_shard: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for (row, id) in rows.iter_mut().zip(&ids) {
            if let Some(o) = row.as_object_mut() {
                o.insert(pkf.name.clone(), id.clone());
            }
            by_shard
                .entry(shard_of(id, rec.shards))
                .or_default()
                .push(row.take());
        }
        for (s, rows) in by_shard {
            let id = ShardId {
                collection: rec.id,
                shard: s,
            };
            let mut chunk: Vec<Value> = Vec::new();
            let mut size = 0;
            let n = rows.len();
            for (i, row) in rows.into_iter().enumerate() {
                size += serde_json::to_vec(&row).map(|b| b.len()).unwrap_or(0);
                chunk.push(row);
                if size >= RECORD_BYTES || i + 1 == n {
                    let mut b = json!({"collectionName": name, "data": std::mem::take(&mut chunk)});
                    if let Some(p) = &partition {
                        b["partitionName"] = json!(p);
                    }
                    self.append(
                        id,
                        &Record {
                            path: "/v2/vectordb/entities/upsert".into(),
                            body: b,
                        },
                    )
                    .await?;
                    size = 0;
                }
            }
        }
        let n = ids.len();
        Ok(if upsert {
            json!({"code": 0, "data": {"upsertCount": n, "upsertIds": ids}})
        } else {
            json!({"code": 0, "data": {"insertCount": n, "insertIds": ids}})
        })
    }

    async fn delete(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let pkf = meta.schema.pk().clone();
        let ids: Option<Vec<Value>> = match body.get("ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(x) => Some(vec![x.clone()]),
        };
        let filter = body
            .get("filter")
            .and_then(|v| v.as_str())
            .filter(|f| !f.is_empty());
        if ids.is_none() && filter.is_none() {
            return Err(ApiError::bad_request(
                "delete needs 'filter' or 'ids' (to delete everything, drop the collection)",
            ));
        }
        let mut norm = Vec::new();
        for v in ids.iter().flatten() {
            let pk = PrimaryKey::from_json(v, &pkf)
                .map_err(|m| ApiError::bad_request(format!("invalid id {v}: {m}")))?;
            norm.push(pk.to_json());
        }
        // The filter is checked on the mirror (an empty copy of the collection).
        let mut probe = json!({"collectionName": name, "limit": 1});
        if let Some(f) = filter {
            probe["filter"] = json!(f);
        }
        if let Some(p) = body.get("partitionName") {
            probe["partitionNames"] = json!([p]);
        }
        let (st, v) = call(&self.mirror_router, "/v2/vectordb/entities/query", &probe).await;
        if !st.is_success() {
            return Err(err_of(st, &v));
        }
        let shards: Vec<u32> = if filter.is_some() {
            (0..rec.shards).collect()
        } else {
            let mut s: Vec<u32> = norm.iter().map(|id| shard_of(id, rec.shards)).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        // The count the client gets: matching rows at Strong consistency just before.
        let mut count_q = probe.clone();
        count_q["outputFields"] = json!(["count(*)"]);
        count_q.as_object_mut().expect("object").remove("limit");
        count_q["consistencyLevel"] = json!("Strong");
        let mut targets: Vec<(u32, Value)> = Vec::new();
        for s in &shards {
            let mut q = count_q.clone();
            if filter.is_none() || !norm.is_empty() {
                let mine: Vec<Value> = norm
                    .iter()
                    .filter(|id| shard_of(id, rec.shards) == *s)
                    .cloned()
                    .collect();
                if filter.is_none() && mine.is_empty() {
                    continue;
                }
                q["ids"] = json!(mine);
            }
            targets.push((*s, q));
        }
        let counts = self
            .fan_out(
                &rec,
                &targets,
                "/v2/vectordb/entities/query",
                Consistency::Strong,
            )
            .await?;
        let n: u64 = counts
            .iter()
            .map(|v| v["data"][0]["count(*)"].as_u64().unwrap_or(0))
            .sum();
        for (s, q) in &targets {
            let mut b = body.clone();
            if let Some(ids) = q.get("ids") {
                b["ids"] = ids.clone();
            }
            self.append(
                ShardId {
                    collection: rec.id,
                    shard: *s,
                },
                &Record {
                    path: "/v2/vectordb/entities/delete".into(),
                    body: b,
                },
            )
            .await?;
        }
        Ok(json!({"code": 0, "data": {"deleteCount": n}}))
    }

    // ------------------------------------------------------------ reads

    async fn query(&self, body: Value, is_get: bool) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let level = self.level(&name, &body)?;
        let meta = self.mirror.describe_collection(&name)?;
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

    async fn search(&self, mut body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let level = self.level(&name, &body)?;
        let meta = self.mirror.describe_collection(&name)?;
        if body.get("groupingField").is_some_and(|g| !g.is_null()) {
            return Err(ApiError::bad_request(
                "groupingField is not supported in cluster mode yet",
            ));
        }
        let anns = match body.get("annsField").and_then(|v| v.as_str()) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => meta
                .schema
                .vector_fields()
                .next()
                .map(|f| f.name.clone())
                .unwrap_or_default(),
        };
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
        // Check the request on the mirror (fields, filter, vector sizes).
        let (st, v) = call(&self.mirror_router, "/v2/vectordb/entities/search", &body).await;
        if !st.is_success() {
            return Err(err_of(st, &v));
        }
        let limit = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(100);
        let offset = body.get("offset").and_then(|v| v.as_u64()).unwrap_or(0);
        let metric_s = body
            .get("metricType")
            .or_else(|| body.pointer("/searchParams/metricType"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let metric = metric_s
            .as_deref()
            .and_then(Metric::parse)
            .or_else(|| {
                meta.indexes
                    .iter()
                    .find(|i| i.field_name == anns)
                    .map(|i| i.metric_type)
            })
            .unwrap_or(Metric::COSINE);
        let ascending = metric == Metric::L2;
        let mut fwd = body.clone();
        fwd["limit"] = json!(limit + offset);
        fwd["offset"] = json!(0);
        let parts = self
            .fan_out(
                &rec,
                &Self::all_shards(&rec, &fwd),
                "/v2/vectordb/entities/search",
                level,
            )
            .await?;
        let nq = parts
            .first()
            .and_then(|p| p["topks"].as_array().map(|t| t.len()))
            .unwrap_or(0);
        let mut per_query: Vec<Vec<Value>> = vec![Vec::new(); nq];
        for p in &parts {
            let data = p["data"].as_array().cloned().unwrap_or_default();
            let mut it = data.into_iter();
            for (q, k) in p["topks"].as_array().into_iter().flatten().enumerate() {
                for _ in 0..k.as_u64().unwrap_or(0) {
                    if let (Some(h), Some(slot)) = (it.next(), per_query.get_mut(q)) {
                        slot.push(h);
                    }
                }
            }
        }
        let mut flat = Vec::new();
        let mut topks = Vec::new();
        for mut hits in per_query {
            hits.sort_by(|a, b| {
                let (x, y) = (
                    a["distance"].as_f64().unwrap_or(0.0),
                    b["distance"].as_f64().unwrap_or(0.0),
                );
                let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                if ascending {
                    o
                } else {
                    o.reverse()
                }
            });
            let kept: Vec<Value> = hits
                .into_iter()
                .skip(offset as usize)
                .take(limit as usize)
                .collect();
            topks.push(kept.len());
            flat.extend(kept);
        }
        let mut info = Map::new();
        info.insert("shards".into(), json!(rec.shards));
        // The search knob the shards chose (the same rule on each).
        for key in ["ef", "nprobe", "expectedRecall"] {
            if let Some(v) = parts.first().and_then(|p| p["searchInfo"].get(key)) {
                info.insert(key.into(), v.clone());
            }
        }
        for key in ["indexedSegments", "exactSegments"] {
            let n: u64 = parts
                .iter()
                .map(|p| p["searchInfo"][key].as_u64().unwrap_or(0))
                .sum();
            info.insert(key.into(), json!(n));
        }
        Ok(json!({"code": 0, "data": flat, "topks": topks, "searchInfo": info}))
    }

    async fn stats(&self, body: Value) -> ApiResult {
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

    async fn load_state(&self, body: Value) -> ApiResult {
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

    async fn describe_index(&self, body: Value) -> ApiResult {
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
            }
        }
        Ok(out)
    }

    async fn mirror_read(&self, path: &str, body: Value) -> ApiResult {
        if let Ok(name) = need(&body, "collectionName") {
            let rec = self.collection(&name).await?;
            let (st, mut v) = call(&self.mirror_router, path, &body).await;
            if !st.is_success() {
                return Err(err_of(st, &v));
            }
            if path.ends_with("collections/describe") {
                v["data"]["shardsNum"] = json!(rec.shards);
                v["data"]["collectionID"] = json!(rec.id);
                v["data"]["replicaNumber"] = json!(rec.replicas);
            }
            return Ok(v);
        }
        if path.ends_with("collections/list") {
            let colls: BTreeMap<String, CollectionRecord> =
                self.meta.list("collections/").await.map_err(api)?;
            return Ok(json!({"code": 0, "data": colls.keys().collect::<Vec<_>>()}));
        }
        Err(ApiError::bad_request("missing 'collectionName'"))
    }

    async fn dispatch(&self, path: &str, body: Value) -> ApiResult {
        let p = format!("/v2/vectordb/{path}");
        match path {
            "collections/create" => self.create_collection(body).await,
            "collections/drop" => self.drop_collection(body).await,
            "collections/describe"
            | "collections/list"
            | "partitions/list"
            | "partitions/has"
            | "indexes/list" => self.mirror_read(&p, body).await,
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
            "collections/rename" => self.rename_collection(body).await,
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no such endpoint in cluster mode: POST /v2/vectordb/{path}"),
            )),
        }
    }
}

/// `POST /v2/vectordb/{*path}` on a proxy.
pub async fn handle(
    State(proxy): State<Arc<Proxy>>,
    UrlPath(path): UrlPath<String>,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return ApiError::bad_request("the request body must be a JSON object")
                    .into_response()
            }
            Err(e) => {
                return ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
                    .into_response()
            }
        }
    };
    match proxy.dispatch(&path, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
