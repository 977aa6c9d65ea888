//! Persisted metadata: the catalog (all collections) and each collection's manifest.
//!
//! Both files are JSON replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new version.

use crate::error::{EngineError, Result};
use crate::fsutil;
use crate::schema::CollectionSchema;
use crate::types::{Consistency, Timestamp};
use magpie_index::Metric;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Reads a JSON metadata file, or `None` if it does not exist.
fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_slice(&fsutil::read(path)?)
        .map(Some)
        .map_err(|e| EngineError::Corrupt {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
}

/// Replaces a JSON metadata file atomically (see [`fsutil::write_atomic`]).
fn save_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    fsutil::write_atomic(
        path,
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
}

impl CatalogFile {
    /// The catalog at `path`, or an empty one if none exists yet.
    pub fn load(path: &Path) -> Result<CatalogFile> {
        Ok(load_json(path)?.unwrap_or(CatalogFile {
            format: 1,
            next_id: 1,
            collections: Vec::new(),
        }))
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
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
    /// The manifest at `path`, or an empty one (no segments) if none exists yet.
    pub fn load(path: &Path) -> Result<Manifest> {
        Ok(load_json(path)?.unwrap_or(Manifest {
            format: 1,
            next_segment_id: 1,
            ..Default::default()
        }))
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }
}
