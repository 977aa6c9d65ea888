//! Cluster metadata in etcd: the catalog, node membership, shard assignments, log
//! checkpoints, the coordinator's election and the primary-key allocator.
//!
//! # Keys (under the cluster's prefix `P`, default `magpie`)
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P/collections/{name}` | [`CollectionRecord`] (JSON) | proxy (DDL) |
//! | `P/nextid` | last collection id handed out | proxy |
//! | `P/ids` | last primary key handed out (auto ids are allocated in blocks) | proxy |
//! | `P/nodes/{node}` | [`NodeInfo`], attached to the node's lease | each node |
//! | `P/assign/{cid}/{shard}` | [`Assignment`] | coordinator |
//! | `P/ckpt/{cid}/{shard}` | log sequence covered by the shard's flushed data in S3 | the shard's data node |
//! | `P/indexes/{cid}/{shard}` | rows the shard's flushed segments have indexed (query nodes reopen when it changes) | the shard's data node |
//! | `P/owner/{cid}/{shard}` | the data node allowed to write the shard's S3 prefix, attached to its lease; released once its engine is gone | the shard's data node |
//! | `P/epoch/{cid}/{shard}` | the shard's owner epoch, incremented by each data node that opens it: S3 refuses the writes of every earlier owner (`magpie_objstore::fence`) | the shard's data node |
//! | `P/coordinator` | the leader's node id, attached to its lease | coordinator election |
//!
//! A node's key vanishes when its lease expires (it died or lost etcd for longer than the
//! TTL); the coordinator then moves its shards. Every read-modify-write of a shared key
//! is a transaction compared on the key's mod revision, so two writers never interleave.

use crate::error::{ClusterError, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A collection as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CollectionRecord {
    pub id: u64,
    pub name: String,
    /// Number of shards (Milvus's `shardsNum`): rows are routed by primary-key hash.
    pub shards: u32,
    /// The `collections/create` request that made it (replayed into each shard's engine).
    pub create: serde_json::Value,
    /// Schema-changing requests since (partitions, indexes, load state), in order, as
    /// `(path, body)`; the proxy's catalog mirror replays them.
    #[serde(default)]
    pub ddl: Vec<(String, serde_json::Value)>,
    /// Query nodes that each serve every shard (`replicaNumber` at load).
    #[serde(default = "one")]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

/// What a node is for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Proxy,
    Coordinator,
    Data,
    Query,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "proxy" => Role::Proxy,
            "coordinator" => Role::Coordinator,
            "data" => Role::Data,
            "query" => Role::Query,
            _ => {
                return Err(format!(
                    "unknown role '{s}': use proxy, coordinator, data or query (comma-separated for several)"
                ))
            }
        })
    }
}

/// A live node (its key lives as long as its lease).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub roles: Vec<Role>,
    /// Base URL of its HTTP endpoint (`http://host:port`).
    pub addr: String,
}

/// Who holds one shard: the data node that consumes its log and writes its segments, and
/// the query nodes that serve its reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub primary: Option<String>,
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// A handle on the metadata store.
#[derive(Clone)]
pub struct Meta {
    client: Client,
    prefix: String,
    endpoints: String,
}

impl Meta {
    /// Connects; fails within a few seconds if etcd is unreachable.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Meta> {
        let joined = endpoints.join(",");
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client =
            Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| ClusterError::Etcd {
                    endpoints: joined.clone(),
                    msg: format!("cannot connect: {e}"),
                })?;
        let mut m = Meta {
            client,
            prefix: prefix.trim_matches('/').to_string(),
            endpoints: joined,
        };
        // A connection is lazy: ask once so that an unreachable etcd fails here.
        m.client
            .status()
            .await
            .map_err(|e| m.err(format!("not answering: {e}")))?;
        Ok(m)
    }

    fn err(&self, msg: String) -> ClusterError {
        ClusterError::Etcd {
            endpoints: self.endpoints.clone(),
            msg,
        }
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}/{}", self.prefix, rest)
    }

    fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
        serde_json::from_slice(v).map_err(|e| ClusterError::Meta {
            key: String::from_utf8_lossy(key).into_owned(),
            msg: e.to_string(),
        })
    }

    /// The value at `rest` and its mod revision (0 when absent).
    pub async fn get<T: DeserializeOwned>(&self, rest: &str) -> Result<(Option<T>, i64)> {
        let key = self.key(rest);
        let r = self
            .client
            .clone()
            .get(key.as_bytes(), None)
            .await
            .map_err(|e| self.err(format!("get {key}: {e}")))?;
        match r.kvs().first() {
            Some(kv) => Ok((Some(Self::decode(kv.key(), kv.value())?), kv.mod_revision())),
            None => Ok((None, 0)),
        }
    }

    /// Every value under `rest` (a prefix), by the key's remainder after it.
    pub async fn list<T: DeserializeOwned>(&self, rest: &str) -> Result<BTreeMap<String, T>> {
        let key = self.key(rest);
        let r = self
            .client
            .clone()
            .get(key.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(format!("list {key}: {e}")))?;
        let mut out = BTreeMap::new();
        for kv in r.kvs() {
            let k = String::from_utf8_lossy(&kv.key()[key.len()..]).into_owned();
            out.insert(k, Self::decode(kv.key(), kv.value())?);
        }
        Ok(out)
    }

    /// Puts `v` at `rest`, attached to `lease` when given.
    pub async fn put<T: Serialize>(&self, rest: &str, v: &T, lease: Option<i64>) -> Result<()> {
        let key = self.key(rest);
        let bytes = serde_json::to_vec(v).expect("metadata serialises");
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.client
            .clone()
            .put(key.as_bytes(), bytes, opts)
            .await
            .map_err(|e| self.err(format!("put {key}: {e}")))?;
        Ok(())
    }

    /// Puts `v` only if the key's mod revision is still `rev` (0: only if absent).
    /// Returns whether it was written.
    pub async fn put_if<T: Serialize>(
        &self,
        rest: &str,
        v: &T,
        rev: i64,
        lease: Option<i64>,
    ) -> Result<bool> {
        let key = self.key(rest);
        let bytes = serde_json::to_vec(v).expect("metadata serialises");
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::put(key.as_bytes(), bytes, opts)]);
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.err(format!("txn on {key}: {e}")))?;
        Ok(r.succeeded())
    }

    /// One transaction: if every key of `guards` is still at its mod revision (0:
    /// absent), writes `puts` and deletes `deletes`. Returns whether it happened. A name
    /// checked against other keys (a collection's database, an alias's collection) is
    /// written with the check; re-putting a key unchanged bumps its revision, which
    /// makes a concurrent transaction guarded on it fail (how a collection created in a
    /// database stops that database's drop, and an alias its collection's).
    pub async fn commit(
        &self,
        guards: &[(String, i64)],
        puts: &[(String, serde_json::Value)],
        deletes: &[String],
    ) -> Result<bool> {
        let when: Vec<Compare> = guards
            .iter()
            .map(|(g, r)| Compare::mod_revision(self.key(g).as_bytes(), CompareOp::Equal, *r))
            .collect();
        let mut ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| {
                let bytes = serde_json::to_vec(v).expect("metadata serialises");
                TxnOp::put(self.key(k).as_bytes(), bytes, None)
            })
            .collect();
        ops.extend(
            deletes
                .iter()
                .map(|k| TxnOp::delete(self.key(k).as_bytes(), None)),
        );
        let r = self
            .client
            .clone()
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(|e| self.err(format!("txn on {guards:?}: {e}")))?;
        Ok(r.succeeded())
    }

    /// Deletes the key `rest` (or every key under it with `prefix`).
    pub async fn delete(&self, rest: &str, prefix: bool) -> Result<()> {
        let key = self.key(rest);
        let opts = prefix.then(|| DeleteOptions::new().with_prefix());
        self.client
            .clone()
            .delete(key.as_bytes(), opts)
            .await
            .map_err(|e| self.err(format!("delete {key}: {e}")))?;
        Ok(())
    }

    /// Adds `n` to the counter at `rest` and returns the range handed out.
    pub async fn allocate(&self, rest: &str, n: u64, floor: u64) -> Result<std::ops::Range<u64>> {
        for _ in 0..100 {
            let (cur, rev) = self.get::<u64>(rest).await?;
            let start = cur.unwrap_or(0).max(floor);
            if self.put_if(rest, &(start + n), rev, None).await? {
                return Ok(start..start + n);
            }
        }
        Err(self.err(format!("allocating from {rest}: too much contention")))
    }

    /// A lease of `ttl` seconds, kept alive in the background until the returned guard is
    /// dropped (or the process dies: then etcd expires it after `ttl`).
    pub async fn lease(&self, ttl: i64) -> Result<Lease> {
        let mut c = self.client.clone();
        let g = c
            .lease_grant(ttl, None)
            .await
            .map_err(|e| self.err(format!("lease grant: {e}")))?;
        let id = g.id();
        let (mut keeper, mut stream) = c
            .lease_keep_alive(id)
            .await
            .map_err(|e| self.err(format!("lease keep-alive: {e}")))?;
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let ok = keeper.keep_alive().await.is_ok()
                    && matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0);
                if !ok {
                    tracing::error!(
                        lease = id,
                        "etcd lease lost: this node's registrations expired"
                    );
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        });
        Ok(Lease { id, lost, task })
    }

    pub async fn revoke(&self, lease: &Lease) {
        lease.task.abort();
        let _ = self.client.clone().lease_revoke(lease.id).await;
    }
}

/// A lease kept alive by a background task.
pub struct Lease {
    pub id: i64,
    /// Set when keeping it alive failed: the keys attached to it are gone or going.
    pub lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst) || self.task.is_finished()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which shard a primary key belongs to (FNV-1a of its JSON form, so that integer and
/// string keys hash the same way on every node).
pub fn shard_of(pk: &serde_json::Value, shards: u32) -> u32 {
    let s = match pk {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&serde_json::json!(i), 4) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        assert_eq!(
            shard_of(&serde_json::json!("a"), 4),
            shard_of(&serde_json::json!("a"), 4)
        );
        assert_eq!(shard_of(&serde_json::json!(7), 1), 0);
    }
}
