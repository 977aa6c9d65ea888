//! Data and query nodes: each hosts engines for the shards assigned to it.
//!
//! A hosted shard is a whole Magpie engine for one collection's shard:
//! - on its **data node** (the shard's primary) the engine's storage is the shard's
//!   prefix in S3 (`STORAGE/c{id}/s{k}`); it consumes the shard's log, and every
//!   `checkpoint_secs` it pauses, flushes everything to S3 and records in etcd the log
//!   sequence that the flushed data covers;
//! - on a **query node** (a replica) the engine reads the same prefix through an
//!   [`Overlay`] (its own writes stay in memory) and follows the log from the checkpoint.
//!
//! Both apply the same records in the same order. A record is a REST request
//! (`{"path", "body"}`) replayed into the shard's engine through the standalone server's
//! own router, so there is no second implementation of any engine logic (upserts call
//! [`Engine::upsert`] directly, the one call their handler makes: see `apply_upsert`). Records are
//! idempotent when replayed over state that already contains them (inserts are logged as
//! upserts with their primary keys; deletes are by key or filter), which is what makes
//! "open the flushed state, replay from the checkpoint" correct even when the flushed
//! state is newer than the checkpoint.

use crate::call_router as call;
use crate::error::{ClusterError, Result};
use crate::log::{Log, ShardId};
use crate::meta::{Assignment, CollectionRecord, Meta, Role};
use crate::overlay::Overlay;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use magpie_engine::storage::Storage;
use magpie_engine::{Engine, EngineConfig};
use magpie_server::error::ApiError;
use magpie_server::AppState;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Header of a forwarded read: the log sequence the shard must have applied first.
pub const MIN_SEQ_HEADER: &str = "x-magpie-min-seq";
/// How long a read waits for its shard to catch up with [`MIN_SEQ_HEADER`].
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);

/// One record of a shard's log.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub path: String,
    pub body: Value,
}

pub struct ShardHost {
    pub id: ShardId,
    pub primary: bool,
    engine: Arc<Engine>,
    router: Router,
    applied: tokio::sync::watch::Sender<u64>,
    /// The sequence the last checkpoint covers.
    ckpt: Mutex<u64>,
    stop: Arc<AtomicBool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Why applying is stuck (a record that fails with a server error), if it is.
    stalled: Mutex<Option<String>>,
    /// The checkpoint the shard was opened at (a replica reopens when its data node's
    /// checkpoint moves past it).
    opened_ckpt: u64,
    /// The data node's published index state when this copy opened (see [`publish_indexes`]).
    opened_indexes: u64,
    opened_at: Instant,
    /// Its local directory (engine WAL, cache), removed after it stops.
    dir: PathBuf,
    refreshing: AtomicBool,
    /// Set when the log jumped past records this copy had not applied (they were
    /// trimmed): it must be reopened from a newer checkpoint.
    gap: AtomicBool,
    /// Checkpoints written and when, for trimming the log after the retention.
    ckpt_history: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// What [`publish_indexes`] last wrote.
    published_indexes: Mutex<Option<u64>>,
}

pub struct Node {
    pub id: String,
    pub roles: Vec<Role>,
    meta: Meta,
    log: Arc<dyn Log>,
    storage: String,
    data_dir: PathBuf,
    engine_cfg: EngineConfig,
    checkpoint_every: Duration,
    /// Query nodes reopen a shard on the data node's newer flushed state (segments and
    /// indexes built there) at most this often.
    refresh_every: Duration,
    /// Log records stay this long after a checkpoint covers them, then are trimmed.
    retention: Duration,
    shards: Mutex<HashMap<ShardId, Arc<ShardHost>>>,
    generation: std::sync::atomic::AtomicU64,
    /// The node's current etcd lease (shard ownership keys hang on it).
    pub lease_id: std::sync::atomic::AtomicI64,
    opening: Mutex<HashSet<ShardId>>,
    errors: Mutex<BTreeMap<ShardId, String>>,
    /// Assigned shards (as of the last reconcile), opened or not.
    assigned: Mutex<HashSet<ShardId>>,
    /// Every engine this node opened that may still be alive: a copy that a reopen
    /// replaced must be dropped once its in-flight requests end (`magpie_node_engines`).
    engines: Mutex<Vec<std::sync::Weak<Engine>>>,
}

impl ShardHost {
    /// The shard's collection as its engine names it now (it follows renames from the log).
    pub fn name(&self) -> String {
        self.engine
            .list_collections()
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        roles: Vec<Role>,
        meta: Meta,
        log: Arc<dyn Log>,
        storage: String,
        data_dir: PathBuf,
        engine_cfg: EngineConfig,
        checkpoint_every: Duration,
        refresh_every: Duration,
        retention: Duration,
    ) -> Arc<Node> {
        Arc::new(Node {
            id,
            roles,
            meta,
            log,
            storage: storage.trim_end_matches('/').to_string(),
            data_dir,
            engine_cfg,
            checkpoint_every,
            refresh_every,
            retention,
            shards: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            lease_id: std::sync::atomic::AtomicI64::new(0),
            opening: Mutex::new(HashSet::new()),
            errors: Mutex::new(BTreeMap::new()),
            assigned: Mutex::new(HashSet::new()),
            engines: Mutex::new(Vec::new()),
        })
    }

    pub fn shard(&self, id: ShardId) -> Option<Arc<ShardHost>> {
        self.shards.lock().get(&id).cloned()
    }

    /// Ready when every assigned shard is open and applying.
    pub fn ready(&self) -> std::result::Result<(), String> {
        let assigned = self.assigned.lock().clone();
        let shards = self.shards.lock();
        for id in assigned {
            match shards.get(&id) {
                None => {
                    let why = self.errors.lock().get(&id).cloned();
                    return Err(format!(
                        "shard {id} is assigned here and not open yet{}",
                        why.map(|w| format!(" ({w})")).unwrap_or_default()
                    ));
                }
                Some(h) => {
                    if let Some(why) = h.stalled.lock().clone() {
                        return Err(format!("shard {id} is stalled: {why}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Brings the hosted shards in line with the assignments in etcd: opens new ones,
    /// stops those moved away (a data node flushes and checkpoints first) and drops the
    /// data of dropped collections.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let colls: BTreeMap<String, CollectionRecord> = self.meta.list("collections/").await?;
        let by_id: HashMap<u64, &CollectionRecord> = colls.values().map(|c| (c.id, c)).collect();
        let assigns: BTreeMap<String, Assignment> = self.meta.list("assign/").await?;
        let mut want: HashMap<ShardId, (bool, CollectionRecord)> = HashMap::new();
        for (k, a) in &assigns {
            let Some(id) = parse_shard_key(k) else {
                continue;
            };
            let Some(rec) = by_id.get(&id.collection) else {
                continue;
            };
            if a.primary.as_deref() == Some(&self.id) && self.roles.contains(&Role::Data) {
                want.insert(id, (true, (*rec).clone()));
            } else if a.replicas.iter().any(|r| r == &self.id) && self.roles.contains(&Role::Query)
            {
                want.insert(id, (false, (*rec).clone()));
            }
        }
        *self.assigned.lock() = want.keys().copied().collect();
        // Stop what is no longer ours (or changed mode), and copies that fell behind a
        // trimmed log (they open again below, from the newest checkpoint).
        let hosted: Vec<Arc<ShardHost>> = self.shards.lock().values().cloned().collect();
        for h in hosted {
            let keep = want.get(&h.id).is_some_and(|(p, _)| *p == h.primary)
                && !h.gap.load(Ordering::SeqCst);
            if !keep {
                let dropped = !by_id.contains_key(&h.id.collection);
                self.shards.lock().remove(&h.id);
                tracing::info!(shard = %h.id, dropped, "stopping shard");
                stop_shard(&h, &self.meta, !dropped).await;
                if dropped && h.primary {
                    let (e, name) = (h.engine.clone(), h.name());
                    let _ = tokio::task::spawn_blocking(move || e.drop_collection(&name)).await;
                }
                remove_dir_later(h, Some((self.meta.clone(), self.id.clone())));
            }
        }
        for (id, (primary, rec)) in want {
            if self.shards.lock().contains_key(&id) || !self.opening.lock().insert(id) {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                match node.open_shard(id, primary, &rec).await {
                    Ok(h) => {
                        node.errors.lock().remove(&id);
                        node.shards.lock().insert(id, h);
                    }
                    Err(e) => {
                        tracing::warn!(shard = %id, "cannot open shard: {e}");
                        node.errors.lock().insert(id, e.to_string());
                    }
                }
                node.opening.lock().remove(&id);
            });
        }
        Ok(())
    }

    async fn open_shard(
        self: &Arc<Self>,
        id: ShardId,
        primary: bool,
        rec: &CollectionRecord,
    ) -> Result<Arc<ShardHost>> {
        let mode = if primary { "primary" } else { "replica" };
        let gen = self.generation.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .data_dir
            .join("shards")
            .join(format!("c{}-s{}-{mode}-{gen}", id.collection, id.shard));
        let url = format!("{}/c{}/s{}", self.storage, id.collection, id.shard);
        let mut cfg = self.engine_cfg.clone();
        // The proxy ran the collection's embedding functions once and logged the vectors
        // (nodes hold no models); BM25 term counts are still computed here, from the text.
        cfg.function_outputs_given = true;
        if !primary {
            // A replica searches the data node's segments and indexes (it reopens on them
            // as they come); it builds no index and compacts nothing of its own.
            cfg.index_min_rows = usize::MAX;
            cfg.auto_compact_secs = 0;
            // Fetched whole before it serves (below): the data node may compact away
            // the files of the checkpoint it opened on at any time after.
            cfg.prefetch_on_open = false;
        }
        if primary {
            // One writer per shard prefix: the data node that holds `owner/{cid}/{k}` (on its
            // lease). The previous one releases it after its engine is gone, or its lease
            // expires; until then this open fails and is retried.
            let key = owner_key(id);
            let lease = self.lease_id.load(Ordering::SeqCst);
            let (holder, rev) = self.meta.get::<String>(&key).await?;
            match holder {
                Some(h) if h == self.id => {}
                Some(h) => {
                    return Err(ClusterError::Unavailable(format!(
                        "shard {id} is still owned by data node {h} (it releases it once stopped, or its lease expires)"
                    )))
                }
                None => {
                    if !self.meta.put_if(&key, &self.id, rev, Some(lease)).await? {
                        return Err(ClusterError::Unavailable(format!(
                            "shard {id} was just taken by another data node"
                        )));
                    }
                }
            }
        }
        let mut epoch = None;
        if primary {
            // This owner's epoch: S3 refuses the writes of any earlier owner from now on
            // (`magpie_objstore::fence`), and its segment ids are its own.
            match self.next_epoch(id).await {
                Ok(e) => epoch = Some(e),
                Err(e) => {
                    release_owner(&self.meta, id, &self.id).await;
                    return Err(e);
                }
            }
        }
        let opened = self.open_engine(id, epoch, rec, dir, url, cfg).await;
        if opened.is_err() && primary {
            release_owner(&self.meta, id, &self.id).await;
        }
        opened
    }

    /// Increments the shard's owner epoch in etcd (`P/epoch/{cid}/{k}`) and returns it.
    async fn next_epoch(&self, id: ShardId) -> Result<u64> {
        let key = format!("epoch/{}/{}", id.collection, id.shard);
        for _ in 0..20 {
            let (cur, rev) = self.meta.get::<u64>(&key).await?;
            let next = cur.unwrap_or(0) + 1;
            if self.meta.put_if(&key, &next, rev, None).await? {
                return Ok(next);
            }
        }
        Err(ClusterError::Unavailable(format!(
            "shard {id}: its owner epoch in etcd kept changing"
        )))
    }

    /// Opens the shard's engine: as its data node when `epoch` is given (the owner's,
    /// from [`Node::next_epoch`]), else as a replica.
    async fn open_engine(
        self: &Arc<Self>,
        id: ShardId,
        epoch: Option<u64>,
        rec: &CollectionRecord,
        dir: PathBuf,
        url: String,
        mut cfg: EngineConfig,
    ) -> Result<Arc<ShardHost>> {
        let primary = epoch.is_some();
        if let Some(epoch) = epoch {
            cfg.first_segment_id = epoch << 32;
        }
        let mode = if primary { "primary" } else { "replica" };
        let (ckpt, _) = self
            .meta
            .get::<u64>(&format!("ckpt/{}/{}", id.collection, id.shard))
            .await?;
        let ckpt = ckpt.unwrap_or(0);
        let (indexes, _) = self
            .meta
            .get::<u64>(&format!("indexes/{}/{}", id.collection, id.shard))
            .await?;
        let indexes = indexes.unwrap_or(0);
        let engine_dir = dir.clone();
        let engine = tokio::task::spawn_blocking(move || -> Result<Engine> {
            let dir = engine_dir;
            // The local directory holds only the engine's WAL and a cache: what is durable
            // is in S3 and in the log. It starts empty so that nothing older than the
            // checkpoint is replayed over newer flushed data.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| {
                ClusterError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
            let cache = magpie_objstore::CacheConfig {
                dir: dir.join("cache"),
                max_bytes: 4 << 30,
            };
            let base = magpie_objstore::ObjectStorage::open_s3(&url, &[], Some(cache))
                .map_err(|e| ClusterError::Unavailable(format!("storage {url}: {e}")))?;
            let store: Arc<dyn Storage> = match epoch {
                Some(epoch) => Arc::new(magpie_objstore::Fenced::claim(Arc::new(base), epoch)?),
                None => Arc::new(Overlay::new(Arc::new(base))),
            };
            Ok(Engine::open_with_storage(&dir.join("engine"), cfg, store)?)
        })
        .await
        .map_err(|e| ClusterError::Unavailable(format!("opening shard {id}: {e}")))??;
        let engine = Arc::new(engine);
        let state = Arc::new(AppState {
            engine: engine.clone(),
            metrics: Default::default(),
            token: None,
            images: None,
            allowed_hosts: None,
            backups: None,
            inline: Default::default(),
        });
        let router = magpie_server::router(state, usize::MAX >> 1);
        // A shard engine holds exactly its collection: created from the record's create
        // request when the shard is new (under the name it had then; renames come from
        // the log).
        if engine.list_collections().is_empty() {
            crate::ensure_database(&engine, &rec.name);
            let (st, body) = call(&router, "/v2/vectordb/collections/create", &rec.create).await;
            if !st.is_success() {
                return Err(ClusterError::Invalid(format!(
                    "creating collection '{}' in shard {id}: {body}",
                    rec.name
                )));
            }
        }
        if !primary {
            let (e, name) = (engine.clone(), engine.list_collections().into_iter().next());
            if let Some(name) = name {
                tokio::task::spawn_blocking(move || e.fetch_all(&name))
                    .await
                    .map_err(|e| ClusterError::Unavailable(format!("fetching shard {id}: {e}")))?
                    .map_err(|e| {
                        ClusterError::Unavailable(format!(
                            "fetching shard {id} at checkpoint {ckpt}: {e} (retried from a newer checkpoint)"
                        ))
                    })?;
            }
        }
        let (applied, _) = tokio::sync::watch::channel(ckpt);
        let (stop_tx, _) = tokio::sync::watch::channel(false);
        {
            let mut live = self.engines.lock();
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&engine));
        }
        let host = Arc::new(ShardHost {
            id,
            primary,
            engine,
            router,
            applied,
            ckpt: Mutex::new(ckpt),
            stop: Arc::new(AtomicBool::new(false)),
            stop_tx,
            task: Mutex::new(None),
            stalled: Mutex::new(None),
            opened_ckpt: ckpt,
            opened_indexes: indexes,
            opened_at: Instant::now(),
            dir,
            refreshing: AtomicBool::new(false),
            gap: AtomicBool::new(false),
            ckpt_history: Mutex::new(std::collections::VecDeque::new()),
            published_indexes: Mutex::new(None),
        });
        tracing::info!(shard = %id, mode, from = ckpt + 1, "shard open; following its log");
        let task = tokio::spawn(consume(
            host.clone(),
            self.log.clone(),
            self.meta.clone(),
            self.checkpoint_every,
            self.retention,
        ));
        *host.task.lock() = Some(task);
        Ok(host)
    }

    /// Stops every shard (data nodes flush and checkpoint).
    pub async fn shutdown(&self) {
        let hosted: Vec<Arc<ShardHost>> = self.shards.lock().drain().map(|(_, h)| h).collect();
        for h in hosted {
            stop_shard(&h, &self.meta, true).await;
            remove_dir_later(h, Some((self.meta.clone(), self.id.clone())));
        }
    }

    /// Runs the engines' maintenance (seal by age, flush, index builds, compaction).
    pub async fn maintain(&self) {
        let hosted: Vec<Arc<ShardHost>> = self.shards.lock().values().cloned().collect();
        for h in hosted {
            let e = h.engine.clone();
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || e.maintain()).await {
                tracing::warn!(shard = %h.id, "maintenance failed: {err}");
            }
        }
    }

    /// Reopens replicas whose data node has checkpointed past what they opened on, so
    /// that they serve its flushed segments and indexes instead of their own growing
    /// copy. The new engine catches up with the old one before it takes over; the old
    /// one serves until then.
    pub async fn refresh_replicas(self: &Arc<Self>) {
        let replicas: Vec<Arc<ShardHost>> = self
            .shards
            .lock()
            .values()
            .filter(|h| !h.primary && h.opened_at.elapsed() >= self.refresh_every)
            .cloned()
            .collect();
        for old in replicas {
            let key = format!("ckpt/{}/{}", old.id.collection, old.id.shard);
            let Ok((Some(ckpt), _)) = self.meta.get::<u64>(&key).await else {
                continue;
            };
            let key = format!("indexes/{}/{}", old.id.collection, old.id.shard);
            let indexes = self.meta.get::<u64>(&key).await.ok().and_then(|(v, _)| v);
            let newer = ckpt > old.opened_ckpt || indexes.is_some_and(|i| i != old.opened_indexes);
            if !newer || old.refreshing.swap(true, Ordering::SeqCst) {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let id = old.id;
                let colls: BTreeMap<String, CollectionRecord> =
                    match node.meta.list("collections/").await {
                        Ok(c) => c,
                        Err(_) => {
                            old.refreshing.store(false, Ordering::SeqCst);
                            return;
                        }
                    };
                let Some(rec) = colls.values().find(|c| c.id == id.collection).cloned() else {
                    // Dropped: the reconcile loop stops this copy.
                    old.refreshing.store(false, Ordering::SeqCst);
                    return;
                };
                let new = match node.open_shard(id, false, &rec).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(shard = %id, "refresh: cannot reopen ({e})");
                        old.refreshing.store(false, Ordering::SeqCst);
                        return;
                    }
                };
                let target = *old.applied.borrow();
                let mut rx = new.applied.subscribe();
                let caught_up = matches!(
                    tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|s| *s >= target))
                        .await,
                    Ok(Ok(_))
                );
                let current = node
                    .shards
                    .lock()
                    .get(&id)
                    .is_some_and(|h| Arc::ptr_eq(h, &old));
                if caught_up && current {
                    node.shards.lock().insert(id, new.clone());
                    tracing::info!(shard = %id, checkpoint = new.opened_ckpt, "replica reopened on the data node's newer segments");
                    stop_shard(&old, &node.meta, false).await;
                    remove_dir_later(old, None);
                } else {
                    stop_shard(&new, &node.meta, false).await;
                    remove_dir_later(new, None);
                    old.refreshing.store(false, Ordering::SeqCst);
                }
            });
        }
    }

    /// What this node hosts, for `/node/status` and `/metrics`.
    pub fn status(&self) -> Value {
        let mut shards: Vec<Value> = Vec::new();
        let mut hosted: Vec<Arc<ShardHost>> = self.shards.lock().values().cloned().collect();
        hosted.sort_by_key(|h| h.id);
        for h in hosted {
            let name = h.name();
            let st = h.engine.collection_stats(&name).unwrap_or_default();
            shards.push(json!({
                "collection": name,
                "collectionId": h.id.collection,
                "shard": h.id.shard,
                "mode": if h.primary { "primary" } else { "replica" },
                "applied": *h.applied.borrow(),
                "checkpoint": *h.ckpt.lock(),
                "openedAtCheckpoint": h.opened_ckpt,
                "rows": st.row_count,
                "segments": st.segments_growing + st.segments_sealed + st.segments_flushed,
                "segmentsFlushed": st.segments_flushed,
            }));
        }
        json!({"node": self.id, "roles": self.roles, "shards": shards, "engines": self.live_engines()})
    }

    /// Engines opened by this node and not dropped yet: one per hosted shard, plus
    /// copies being opened or still draining after a reopen.
    pub fn live_engines(&self) -> usize {
        let mut live = self.engines.lock();
        live.retain(|w| w.strong_count() > 0);
        live.len()
    }

    pub fn metrics(&self) -> String {
        let st = self.status();
        let mut out = String::new();
        out.push_str(&format!(
            "# HELP magpie_node_engines Shard engines alive in this node (hosted, opening, or draining after a reopen).\n# TYPE magpie_node_engines gauge\nmagpie_node_engines {}\n",
            st["engines"]
        ));
        out.push_str("# HELP magpie_node_shards Shards hosted by this node.\n# TYPE magpie_node_shards gauge\n");
        let shards = st["shards"].as_array().cloned().unwrap_or_default();
        for mode in ["primary", "replica"] {
            let n = shards.iter().filter(|s| s["mode"] == mode).count();
            out.push_str(&format!("magpie_node_shards{{mode=\"{mode}\"}} {n}\n"));
        }
        for (name, help, key) in [
            (
                "magpie_node_shard_rows",
                "Rows of each hosted shard.",
                "rows",
            ),
            (
                "magpie_node_shard_segments",
                "Segments of each hosted shard.",
                "segments",
            ),
            (
                "magpie_node_shard_applied_seq",
                "Log sequence applied by each hosted shard.",
                "applied",
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for s in &shards {
                out.push_str(&format!(
                    "{name}{{collection=\"{}\",shard=\"{}\",mode=\"{}\"}} {}\n",
                    s["collection"].as_str().unwrap_or(""),
                    s["shard"],
                    s["mode"].as_str().unwrap_or(""),
                    s[key]
                ));
            }
        }
        out
    }
}

fn parse_shard_key(k: &str) -> Option<ShardId> {
    let (c, s) = k.split_once('/')?;
    Some(ShardId {
        collection: c.parse().ok()?,
        shard: s.parse().ok()?,
    })
}

async fn stop_shard(h: &Arc<ShardHost>, meta: &Meta, checkpoint_now: bool) {
    h.stop.store(true, Ordering::SeqCst);
    h.stop_tx.send_replace(true);
    let task = h.task.lock().take();
    if let Some(t) = task {
        let _ = t.await;
    }
    if h.primary && checkpoint_now {
        if let Err(e) = checkpoint(h, meta).await {
            tracing::warn!(shard = %h.id, "final checkpoint failed: {e}");
        }
    }
}

pub(crate) fn owner_key(id: ShardId) -> String {
    format!("owner/{}/{}", id.collection, id.shard)
}

/// Deletes the shard's ownership key if this node holds it.
async fn release_owner(meta: &Meta, id: ShardId, me: &str) {
    let key = owner_key(id);
    if let Ok((Some(holder), _)) = meta.get::<String>(&key).await {
        if holder == me {
            let _ = meta.delete(&key, false).await;
        }
    }
}

/// Removes a stopped shard's local directory once nothing uses its engine any more, and
/// then (a data node) gives up the shard's ownership.
fn remove_dir_later(h: Arc<ShardHost>, release: Option<(Meta, String)>) {
    tokio::spawn(async move {
        // In-flight requests hold the host; wait for them (bounded).
        for _ in 0..600 {
            if Arc::strong_count(&h) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (dir, id, primary) = (h.dir.clone(), h.id, h.primary);
        // The last reference: the engine (and its index builders) stops here.
        let _ = tokio::task::spawn_blocking(move || {
            drop(h);
            // A dropped engine frees its whole copy of the shard; without this, glibc
            // keeps much of it in the process (measured: docs/BENCHMARKS.md, cluster).
            magpie_engine::alloc::release_free_memory();
        })
        .await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        if let (true, Some((meta, me))) = (primary, release) {
            release_owner(&meta, id, &me).await;
        }
    });
}

/// Flushes everything the shard applied and records that in etcd.
async fn checkpoint(h: &Arc<ShardHost>, meta: &Meta) -> Result<()> {
    let seq = *h.applied.borrow();
    if seq <= *h.ckpt.lock() {
        return Ok(());
    }
    let e = h.engine.clone();
    tokio::task::spawn_blocking(move || e.flush_all())
        .await
        .map_err(|e| ClusterError::Unavailable(e.to_string()))??;
    meta.put(
        &format!("ckpt/{}/{}", h.id.collection, h.id.shard),
        &seq,
        None,
    )
    .await?;
    *h.ckpt.lock() = seq;
    h.ckpt_history.lock().push_back((Instant::now(), seq));
    tracing::debug!(shard = %h.id, seq, "checkpoint");
    Ok(())
}

/// Publishes how many rows the data node's flushed segments have indexed, so that query
/// nodes reopen on indexes finished after the checkpoint that flushed their segments.
async fn publish_indexes(h: &Arc<ShardHost>, meta: &Meta) {
    let (e, name) = (h.engine.clone(), h.name());
    let Ok(Ok(progress)) = tokio::task::spawn_blocking(move || e.index_progress(&name, None)).await
    else {
        return;
    };
    let indexed: u64 = progress.iter().map(|p| p.indexed_rows as u64).sum();
    if *h.published_indexes.lock() == Some(indexed) {
        return;
    }
    let key = format!("indexes/{}/{}", h.id.collection, h.id.shard);
    if meta.put(&key, &indexed, None).await.is_ok() {
        *h.published_indexes.lock() = Some(indexed);
    }
}

/// Trims the shard's log below the newest checkpoint older than `retention`.
async fn trim(h: &Arc<ShardHost>, log: &Arc<dyn Log>, retention: Duration) {
    let below = {
        let mut hist = h.ckpt_history.lock();
        let mut below = None;
        while hist.front().is_some_and(|(t, _)| t.elapsed() >= retention) {
            below = hist.pop_front().map(|(_, s)| s + 1);
        }
        below
    };
    if let Some(b) = below {
        match log.trim(h.id, b).await {
            Ok(()) => tracing::debug!(shard = %h.id, below = b, "log trimmed"),
            Err(e) => tracing::warn!(shard = %h.id, "trimming the log: {e}"),
        }
    }
}

/// Whether a record's refusal only says that the shard's state already reflects it.
///
/// A shard opens from the catalog in its storage, which the data node writes as soon as
/// it applies DDL, so it can be newer than the log position the shard replays from. A
/// replayed create then finds its index or partition there ("already exists", or a 409),
/// and a replayed drop finds it gone ("does not exist"). That is the idempotence replay
/// relies on, not a rejected write. Anything else refused is a rejection.
fn already_applied(path: &str, st: StatusCode, body: &str) -> bool {
    if st == StatusCode::CONFLICT {
        return true;
    }
    if !st.is_client_error() {
        return false;
    }
    // The thing the record names, as the engine's messages name it: a missing collection
    // ("collection '…' does not exist") is never "already applied".
    let what = if path.contains("/indexes/") {
        "index"
    } else if path.contains("/partitions/") {
        "partition '"
    } else {
        return false;
    };
    let named = body.contains(what);
    (path.ends_with("/create") && named && body.contains("already exists"))
        || (path.ends_with("/drop") && named && body.contains("does not exist"))
}

/// Applies one record; retries server errors (they are not the record's fault) until it
/// applies or the shard stops. A client error is deterministic (every replica rejects the
/// record the same way) and is skipped with a warning.
async fn apply(h: &Arc<ShardHost>, seq: u64, bytes: &[u8]) {
    let mut rec: Record = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = %h.id, seq, "log record does not decode ({e}); skipped");
            return;
        }
    };
    // The engine holds exactly this shard's collection: a record names it as the proxy
    // knew it, which may be the name before a rename that was logged just before.
    if let (Some(o), name) = (rec.body.as_object_mut(), h.name()) {
        if !name.is_empty() {
            o.insert("collectionName".into(), json!(name));
        }
    }
    if let Some(new) = rec.body.get("newCollectionName").and_then(|v| v.as_str()) {
        // A rename into another database.
        crate::ensure_database(&h.engine, new);
    }
    // Shared with the blocking task that applies an upsert, and kept for a retry.
    let shared = Arc::new(std::mem::take(&mut rec.body));
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        let (st, body) = if rec.path == UPSERT_PATH {
            apply_upsert(h, shared.clone()).await
        } else {
            call(&h.router, &rec.path, &shared).await
        };
        if st.is_success() {
            *h.stalled.lock() = None;
            return;
        }
        if already_applied(&rec.path, st, &body.to_string()) {
            tracing::debug!(shard = %h.id, seq, path = %rec.path, "log record already applied ({body}); skipped");
            return;
        }
        if st.is_client_error() {
            tracing::warn!(shard = %h.id, seq, path = %rec.path, "log record rejected ({st}: {body}); skipped");
            return;
        }
        let why = format!("record {seq} ({}) failed: {st}: {body}", rec.path);
        attempts += 1;
        if !h.primary && attempts >= 3 {
            // A query node's copy may refer to files its data node has compacted away
            // since: it is opened again from the newest checkpoint.
            tracing::warn!(shard = %h.id, "{why}; reopening this copy from the newest checkpoint");
            *h.stalled.lock() = Some(why);
            h.gap.store(true, Ordering::SeqCst);
            return;
        }
        tracing::error!(shard = %h.id, "{why}; retrying");
        *h.stalled.lock() = Some(why);
        if h.stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

const UPSERT_PATH: &str = "/v2/vectordb/entities/upsert";

/// An upsert record (most of a log) goes straight to [`Engine::upsert`], the call the REST
/// handler makes for it, with its status mapped the same way: the rows skip the second
/// serialisation and parse that a trip through the router costs.
async fn apply_upsert(h: &Arc<ShardHost>, body: Arc<Value>) -> (StatusCode, Value) {
    let fail = |e: ApiError| (e.status, json!({"code": e.code, "message": e.message}));
    if !body["data"].is_array() {
        return fail(ApiError::bad_request(
            "'data' must be a list of row objects",
        ));
    }
    let e = h.engine.clone();
    let run = move || {
        let name = body["collectionName"].as_str().unwrap_or_default();
        let partition = body.get("partitionName").and_then(|v| v.as_str());
        let rows = body["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        e.upsert(name, partition, rows)
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(_)) => (StatusCode::OK, json!({"code": 0})),
        Ok(Err(e)) => fail(ApiError::from(e)),
        Err(e) => fail(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            65535,
            e.to_string(),
        )),
    }
}

async fn consume(
    h: Arc<ShardHost>,
    log: Arc<dyn Log>,
    meta: Meta,
    every: Duration,
    retention: Duration,
) {
    let mut stop_rx = h.stop_tx.subscribe();
    let mut last_ckpt = Instant::now();
    'outer: while !h.stop.load(Ordering::SeqCst) {
        let from = *h.applied.borrow() + 1;
        let mut stream = match log.read(h.id, from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = %h.id, "cannot read the log ({e}); retrying");
                tokio::select! {
                    _ = stop_rx.changed() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'outer,
                }
            }
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break 'outer,
                _ = tick.tick(), if h.primary => {
                    if last_ckpt.elapsed() >= every {
                        if let Err(e) = checkpoint(&h, &meta).await {
                            tracing::warn!(shard = %h.id, "checkpoint failed: {e}");
                        }
                        trim(&h, &log, retention).await;
                        publish_indexes(&h, &meta).await;
                        last_ckpt = Instant::now();
                    }
                }
                m = stream.next() => match m {
                    None => continue 'outer,
                    Some(Err(e)) => {
                        tracing::warn!(shard = %h.id, "reading the log: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue 'outer;
                    }
                    Some(Ok((seq, bytes))) => {
                        let applied = *h.applied.borrow();
                        if seq <= applied {
                            continue;
                        }
                        if seq > applied + 1 {
                            // Records between were trimmed (they are in a newer checkpoint's
                            // flushed data): this copy cannot apply them any more.
                            let why = format!("the log jumped from {applied} to {seq}: records it had not applied were trimmed; reopening from the newest checkpoint");
                            tracing::warn!(shard = %h.id, "{why}");
                            *h.stalled.lock() = Some(why);
                            h.gap.store(true, Ordering::SeqCst);
                            break 'outer;
                        }
                        apply(&h, seq, &bytes).await;
                        if h.gap.load(Ordering::SeqCst)
                            || (h.stop.load(Ordering::SeqCst) && h.stalled.lock().is_some())
                        {
                            break 'outer;
                        }
                        h.applied.send_replace(seq);
                    }
                }
            }
        }
    }
}

/// `POST /shard/{cid}/{k}/{*rest}`: a request forwarded by a proxy into a hosted shard.
pub async fn forward(
    State(node): State<Arc<Node>>,
    UrlPath((cid, k, rest)): UrlPath<(u64, u32, String)>,
    req: Request,
) -> Response {
    let id = ShardId {
        collection: cid,
        shard: k,
    };
    let Some(h) = node.shard(id) else {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            axum::Json(json!({"code": 421, "message": format!("shard {id} is not served by node {}", node.id)})),
        )
            .into_response();
    };
    let min_seq: u64 = req
        .headers()
        .get(MIN_SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if min_seq > *h.applied.borrow() {
        let mut rx = h.applied.subscribe();
        let waited = tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(|s| *s >= min_seq)).await;
        if !matches!(waited, Ok(Ok(_))) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"code": 503, "message": format!(
                    "shard {id} on node {} has applied its log up to {} and did not reach {min_seq} within {} s",
                    node.id, *h.applied.borrow(), CATCH_UP_WAIT.as_secs())})),
            )
                .into_response();
        }
    }
    if rest == "bm25_stats" {
        return bm25_stats(&h, req).await;
    }
    let (mut parts, body) = req.into_parts();
    let path = format!("/{rest}");
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    match h
        .router
        .clone()
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /shard/{cid}/{k}/bm25_stats` (`{"annsField", "data": [texts],
/// "consistencyLevel"}`): this shard's BM25 statistics for the texts' terms, which the
/// proxy sums over the shards and sends with the search (`bm25Stats`).
async fn bm25_stats(h: &Arc<ShardHost>, req: Request) -> Response {
    let bad = |m: String| magpie_server::error::ApiError::bad_request(m).into_response();
    let body: Value = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => v,
            Err(e) => return bad(format!("bm25_stats: the body is not JSON: {e}")),
        },
        Err(e) => return bad(format!("bm25_stats: {e}")),
    };
    let texts: Vec<String> = body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    let r = magpie_engine::SearchRequest {
        anns_field: body["annsField"].as_str().map(String::from),
        texts,
        consistency: body["consistencyLevel"]
            .as_str()
            .and_then(magpie_engine::Consistency::parse),
        ..Default::default()
    };
    let (engine, name) = (h.engine.clone(), h.name());
    match tokio::task::spawn_blocking(move || engine.bm25_stats(&name, &r)).await {
        Ok(Ok(stats)) => axum::Json(json!({"code": 0, "data": stats})).into_response(),
        Ok(Err(e)) => magpie_server::error::ApiError::from(e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn status(State(node): State<Arc<Node>>) -> Response {
    axum::Json(node.status()).into_response()
}

#[cfg(test)]
mod tests {
    use super::already_applied;
    use axum::http::StatusCode;

    const P: &str = "/v2/vectordb/";

    #[test]
    fn replayed_creates_and_drops_are_already_applied() {
        let bad = StatusCode::BAD_REQUEST;
        let idx = |op: &str| format!("{P}indexes/{op}");
        let part = |op: &str| format!("{P}partitions/{op}");
        // Found as the record left it.
        assert!(already_applied(
            &idx("create"),
            bad,
            r#"{"message":"an index named 'v' already exists (on field 'v'; drop it first)"}"#
        ));
        assert!(already_applied(
            &idx("create"),
            bad,
            r#"{"message":"an index already exists on field 'v' (drop it first)"}"#
        ));
        assert!(already_applied(
            &idx("drop"),
            bad,
            r#"{"message":"index 'bits' does not exist"}"#
        ));
        assert!(already_applied(
            &part("drop"),
            StatusCode::NOT_FOUND,
            r#"{"message":"partition 'p' does not exist in collection 'c'"}"#
        ));
        assert!(already_applied(&part("create"), StatusCode::CONFLICT, "{}"));
        // Real rejections.
        assert!(!already_applied(
            &idx("drop"),
            StatusCode::NOT_FOUND,
            r#"{"message":"collection 'c' does not exist; list collections"}"#
        ));
        assert!(!already_applied(
            &idx("create"),
            bad,
            r#"{"message":"index 'v' does not exist"}"#
        ));
        assert!(!already_applied(
            &idx("drop"),
            bad,
            r#"{"message":"index 'v' already exists"}"#
        ));
        assert!(!already_applied(
            &format!("{P}entities/delete"),
            bad,
            r#"{"message":"index 'v' does not exist"}"#
        ));
        assert!(!already_applied(
            &idx("drop"),
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"message":"index 'v' does not exist"}"#
        ));
    }
}
