//! Persisted metadata: the catalog (all collections) and each collection's manifest.
//!
//! Both are JSON values of the engine's [`Storage`] (`catalog.json`,
//! `collections/<id>/manifest.json`), replaced atomically by `put`, so a crash leaves the
//! old or the new version.

use crate::error::{EngineError, Result};
use crate::schema::CollectionSchema;
use crate::storage::{is_not_found, Storage};
use crate::types::{Consistency, Timestamp};
use magpie_index::Metric;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Reads a JSON metadata value, or `None` if the key does not exist.
fn load_json<T: DeserializeOwned>(store: &dyn Storage, key: &str) -> Result<Option<T>> {
    let bytes = match store.get(key) {
        Ok(b) => b,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EngineError::Corrupt {
            path: store.locate(key),
            msg: e.to_string(),
        })
}

/// Replaces a JSON metadata value atomically and durably ([`Storage::put`]).
fn save_json<T: Serialize>(store: &dyn Storage, key: &str, v: &T) -> Result<()> {
    store.put(
        key,
        &serde_json::to_vec_pretty(v).expect("metadata serializes"),
    )
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionMeta {
    pub id: u64,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IndexMeta {
    /// Unique id, part of every index file name of this index (0 for FLAT indexes made
    /// before ids existed; FLAT has no files).
    #[serde(default)]
    pub id: u64,
    pub index_name: String,
    pub field_name: String,
    pub index_type: String,
    pub metric_type: Metric,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub id: u64,
    pub name: String,
    pub schema: CollectionSchema,
    pub partitions: Vec<PartitionMeta>,
    #[serde(default)]
    pub indexes: Vec<IndexMeta>,
    #[serde(default)]
    pub consistency: Consistency,
    pub created_ms: u64,
    #[serde(default = "yes")]
    pub loaded: bool,
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Default)]
pub struct CatalogFile {
    pub format: u32,
    pub next_id: u64,
    pub collections: Vec<CollectionMeta>,
    /// Databases besides `default` (see `engine/namespace.rs`).
    #[serde(default)]
    pub databases: Vec<DatabaseMeta>,
    /// Alias → collection, both as qualified names (`db.name`, or `name` in `default`).
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatabaseMeta {
    pub name: String,
    pub id: u64,
    pub created_ms: u64,
}

impl CatalogFile {
    /// The catalog at `key`, or an empty one if none exists yet.
    pub fn load(store: &dyn Storage, key: &str) -> Result<CatalogFile> {
        Ok(load_json(store, key)?.unwrap_or(CatalogFile {
            format: 1,
            next_id: 1,
            ..Default::default()
        }))
    }
    pub fn save(&self, store: &dyn Storage, key: &str) -> Result<()> {
        save_json(store, key, self)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestSegment {
    pub id: u64,
    pub partition: u64,
    pub rows: usize,
    #[serde(default)]
    pub deletes_gen: u64,
    /// Index files of this segment (see [`ManifestIndex`]).
    #[serde(default)]
    pub indexes: Vec<ManifestIndex>,
}

/// A built index of one segment's vector field, stored as `segments/<id>/<file>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestIndex {
    /// Vector field, by position among the schema's vector fields.
    pub field: usize,
    /// [`IndexMeta::id`] of the index definition it was built for.
    pub index_id: u64,
    pub file: String,
    pub crc: u32,
    pub bytes: u64,
    pub build_ms: u64,
}

/// A collection's manifest: which flushed segments exist and up to which timestamp the
/// WAL is reflected in them.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format: u32,
    /// Every WAL record of this collection with `ts <= flushed_ts` is reflected in the
    /// segments and tombstones listed here.
    pub flushed_ts: Timestamp,
    pub next_segment_id: u64,
    pub segments: Vec<ManifestSegment>,
}

impl Manifest {
    /// The manifest at `key`, or an empty one (no segments) if none exists yet.
    pub fn load(store: &dyn Storage, key: &str) -> Result<Manifest> {
        Ok(load_json(store, key)?.unwrap_or(Manifest {
            format: 1,
            next_segment_id: 1,
            ..Default::default()
        }))
    }
    pub fn save(&self, store: &dyn Storage, key: &str) -> Result<()> {
        save_json(store, key, self)
    }
}
