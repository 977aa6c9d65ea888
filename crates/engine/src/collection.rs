//! One collection in memory: its segments, primary-key map, and the operations that run
//! under the collection's lock (apply a logged write, flush, compact, read).
//!
//! This file holds the collection itself, opening it from its manifest, and partitions;
//! the operations live by concern in `collection/`: `write.rs` (applying a logged write),
//! `persist.rs` (seal, flush, compaction, the manifest), `read.rs` (output fields,
//! filters, query, count) and `search.rs` (vector and BM25 search, merged per query).

use crate::catalog::{CollectionMeta, Manifest};
use crate::error::{EngineError, Result};
use crate::indexspec;
use crate::schema::{CollectionSchema, DataType, RowBatch};
use crate::segment::SegIndex;
use crate::segment::{Segment, LIVE};
use crate::storage::Storage;
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::Elem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

mod persist;
mod read;
mod search;
mod write;
pub use read::{json_bytes, OutputBudget, OutputSpec, PathDef, ScalarIndexes};
pub use search::{Bm25Stats, Hit, Probe, ResolvedSearch, SearchKnobs, SearchOutcome};

/// Sealing thresholds and other per-engine tunables.
#[derive(Clone, Debug)]
pub struct SealPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
}

/// A logged write. What the WAL stores (MessagePack) and replay re-applies.
#[derive(Debug, Serialize, Deserialize)]
pub enum WalOp {
    Insert { partition: u64, batch: RowBatch },
    Upsert { partition: u64, batch: RowBatch },
    Delete { pks: Vec<PrimaryKey> },
}

impl WalOp {
    /// Checks that a decoded record fits `schema`: one primary key of the right type
    /// per row, every vector column `rows × dim` long, one value per row in every scalar
    /// column, dynamic fields only where enabled. Replay runs this on every record, so a
    /// log written by another version, or damaged in a way its checksum cannot see, is
    /// skipped with an error instead of corrupting a segment (fuzzed: `fuzz/`, `wal`).
    pub fn check(&self, schema: &CollectionSchema) -> std::result::Result<(), String> {
        let batch = match self {
            WalOp::Insert { batch, .. } | WalOp::Upsert { batch, .. } => batch,
            WalOp::Delete { pks } => return check_pks(pks, schema),
        };
        let n = batch.len();
        check_pks(&batch.pks, schema)?;
        let dims: Vec<usize> = schema.vector_fields().map(|f| f.vec_len()).collect();
        if batch.vectors.len() != dims.len() {
            return Err(format!(
                "{} vector columns, the schema has {}",
                batch.vectors.len(),
                dims.len()
            ));
        }
        for (col, dim) in batch.vectors.iter().zip(&dims) {
            if n.checked_mul(*dim) != Some(col.len()) {
                return Err(format!(
                    "a vector column holds {} floats for {n} rows of dim {dim}",
                    col.len()
                ));
            }
        }
        let scalars = schema.scalar_fields().count();
        if batch.scalars.len() != scalars || batch.scalars.iter().any(|c| c.len() != n) {
            return Err("scalar columns do not match the schema or the row count".into());
        }
        let dynamic_ok = if schema.enable_dynamic_field {
            batch.dynamic.len() == n
        } else {
            batch.dynamic.is_empty()
        };
        if !dynamic_ok {
            return Err("dynamic fields do not match the schema or the row count".into());
        }
        Ok(())
    }
}

fn check_pks(pks: &[PrimaryKey], schema: &CollectionSchema) -> std::result::Result<(), String> {
    let int = schema.pk().data_type == DataType::Int64;
    if pks.iter().any(|pk| matches!(pk, PrimaryKey::Int(_)) != int) {
        return Err("a primary key has the wrong type".into());
    }
    Ok(())
}

pub struct Collection {
    pub meta: CollectionMeta,
    /// Where the collection's manifest and segments live, and its key prefix there
    /// (`collections/<id>/`).
    pub store: Arc<dyn Storage>,
    pub prefix: String,
    pub segments: Vec<Segment>,
    /// Live version of each primary key: (segment id, row offset).
    pub pk_index: HashMap<PrimaryKey, (u64, u32)>,
    pub flushed_ts: Timestamp,
    pub applied_ts: Timestamp,
    pub next_segment_id: u64,
}

impl Collection {
    /// Key prefix of segment `id`'s files.
    pub fn seg_prefix(&self, id: u64) -> String {
        format!("{}segments/{id}/", self.prefix)
    }

    fn manifest_key(&self) -> String {
        format!("{}{}", self.prefix, crate::storage::MANIFEST_FILE)
    }

    /// Opens a collection from its storage prefix (manifest + flushed segments).
    /// Segments of partitions that no longer exist, and segment files the manifest does
    /// not list (left by a crash mid-flush or mid-compaction), are removed.
    pub fn open(meta: CollectionMeta, store: Arc<dyn Storage>, prefix: &str) -> Result<Collection> {
        let manifest = Manifest::load(
            &*store,
            &format!("{prefix}{}", crate::storage::MANIFEST_FILE),
        )?;
        let parts: HashSet<u64> = meta.partitions.iter().map(|p| p.id).collect();
        let mut segments = Vec::new();
        let mut listed = HashSet::new();
        for ms in &manifest.segments {
            if !parts.contains(&ms.partition) {
                continue;
            }
            listed.insert(ms.id.to_string());
            let sp = format!("{prefix}segments/{}/", ms.id);
            let mut seg = Segment::load(&store, &sp, ms.deletes_gen)?;
            seg.check_schema(&meta.schema, &store.locate(&sp))?;
            Segment::remove_old_deletes(&*store, &sp, ms.deletes_gen);
            load_indexes(&meta, &store, &sp, &mut seg, &ms.indexes);
            segments.push(seg);
        }
        let seg_root = format!("{prefix}segments/");
        let mut unlisted = HashSet::new();
        for key in store.list(&seg_root)? {
            let id = key[seg_root.len()..].split('/').next().unwrap_or("");
            if !listed.contains(id) {
                unlisted.insert(id.to_string());
            }
        }
        for id in unlisted {
            let p = format!("{seg_root}{id}/");
            tracing::info!(path = %store.locate(&p).display(), "removing segment files not in the manifest");
            let _ = store.delete_prefix(&p);
        }
        segments.sort_by_key(|s| s.id);
        let mut c = Collection {
            meta,
            store,
            prefix: prefix.to_string(),
            segments,
            pk_index: HashMap::new(),
            flushed_ts: manifest.flushed_ts,
            applied_ts: manifest.flushed_ts,
            next_segment_id: manifest.next_segment_id.max(1),
        };
        c.rebuild_pk_index();
        Ok(c)
    }

    /// A new, empty growing segment of `partition` with the next segment id.
    pub(crate) fn new_segment(&mut self, partition: u64) -> Segment {
        let schema = &self.meta.schema;
        let dims: Vec<(usize, Elem)> = schema
            .vector_fields()
            .map(|f| (f.vec_len(), f.data_type.elem()))
            .collect();
        let n_scalars = schema.scalar_fields().count();
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        Segment::new_growing(id, partition, &dims, n_scalars)
    }

    pub fn rebuild_pk_index(&mut self) {
        self.pk_index.clear();
        for s in &self.segments {
            for (i, pk) in s.pks.iter().enumerate() {
                if s.deleted_at[i] == LIVE {
                    self.pk_index.insert(pk.clone(), (s.id, i as u32));
                }
            }
        }
    }

    fn seg_pos(&self, id: u64) -> Option<usize> {
        self.segments.binary_search_by_key(&id, |s| s.id).ok()
    }

    pub fn partition_id(&self, name: Option<&str>) -> Result<u64> {
        let name = name.filter(|n| !n.is_empty()).unwrap_or("_default");
        self.meta
            .partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id)
            .ok_or_else(|| EngineError::PartitionNotFound {
                collection: self.meta.name.clone(),
                partition: name.to_string(),
            })
    }

    /// Refuses what names partitions in a partition-key collection (Milvus's rule: rows
    /// go where their key sends them).
    pub fn no_named_partitions(&self) -> Result<()> {
        match self.meta.schema.partition_key() {
            Some(k) => Err(EngineError::InvalidArgument(format!(
                "collection '{}' places rows in partitions by its partition key '{}': partitions cannot be created, dropped or named in a request; filter on '{}' instead",
                self.meta.name, k.name, k.name
            ))),
            None => Ok(()),
        }
    }

    /// The partitions a read looks at: the named ones (empty = all); in a partition-key
    /// collection, the partitions of the key values the filter pins down with a
    /// top-level `key == v` or `key in [...]` (all when it pins none).
    pub fn read_partitions(
        &self,
        names: &[String],
        filter: Option<&str>,
    ) -> Result<Option<HashSet<u64>>> {
        let Some(key) = self.meta.schema.partition_key() else {
            return self.partition_set(names);
        };
        if !names.is_empty() {
            self.no_named_partitions()?;
        }
        let Some(values) = filter
            .and_then(|f| crate::filter::parse(f).ok())
            .and_then(|e| key_values(&e, &key.name))
        else {
            return Ok(None);
        };
        let n = self.meta.partitions.len();
        Ok(Some(
            values
                .iter()
                .map(|v| self.meta.partitions[CollectionSchema::key_partition(v, n)].id)
                .collect(),
        ))
    }

    /// Resolves partition names (empty = all partitions).
    pub fn partition_set(&self, names: &[String]) -> Result<Option<HashSet<u64>>> {
        if names.is_empty() {
            return Ok(None);
        }
        names
            .iter()
            .map(|n| self.partition_id(Some(n)))
            .collect::<Result<HashSet<_>>>()
            .map(Some)
    }
}

/// Attaches the index files a manifest lists for `seg`. An index is derived data: a
/// missing, corrupt or orphaned file is logged and dropped (the builder makes a new one),
/// never a reason to refuse to open. Index files the manifest does not list (left by a
/// crash between writing the file and the manifest) are removed.
fn load_indexes(
    meta: &CollectionMeta,
    store: &Arc<dyn Storage>,
    prefix: &str,
    seg: &mut Segment,
    listed: &[crate::catalog::ManifestIndex],
) {
    let mut keep = HashSet::new();
    for mi in listed {
        let key = format!("{prefix}{}", mi.file);
        let def = meta.indexes.iter().find(|i| i.id == mi.index_id);
        let Some(def) = def else {
            continue;
        };
        let dim = seg.vectors.get(mi.field).map_or(0, |c| c.dim);
        let shape = (seg.len(), dim);
        let loaded = (|| -> std::result::Result<SegIndex, String> {
            if mi.field >= seg.indexes.len() {
                return Err("field out of range".into());
            }
            let kind = indexspec::parse(def, dim, 0).map_err(|e| e.to_string())?;
            if store.is_remote() {
                // Fetched on first use (and checked then).
                return Ok(SegIndex::lazy(
                    mi.clone(),
                    store.clone(),
                    key.clone(),
                    kind,
                    shape,
                ));
            }
            let bytes = store.get(&key).map_err(|e| e.to_string())?;
            let ix = crate::segment::check_index(&kind, &bytes, mi.crc, shape)?;
            Ok(SegIndex::ready(mi.clone(), Arc::new(ix)))
        })();
        match loaded {
            Ok(index) => {
                keep.insert(key.clone());
                seg.indexes[mi.field] = Some(index);
            }
            Err(e) => {
                tracing::warn!(path = %store.locate(&key).display(), "index file not loaded ({e}); it will be rebuilt")
            }
        }
    }
    if let Ok(keys) = store.list(&format!("{prefix}index_")) {
        for key in keys {
            if !keep.contains(&key) {
                let _ = store.delete(&key);
            }
        }
    }
}

/// Key values a filter pins down at its top level: `key == v`, `v == key`,
/// `key in [..]`, any conjunct of an `and` that does, or an `or` all of whose branches do.
fn key_values(e: &crate::filter::Expr, key: &str) -> Option<Vec<Value>> {
    use crate::filter::{BinOp, Expr};
    let is_key = |e: &Expr| matches!(e, Expr::Ident { name, .. } if name == key);
    let lit = |e: &Expr| match e {
        Expr::Lit(v @ (Value::Number(_) | Value::String(_))) => Some(v.clone()),
        _ => None,
    };
    match e {
        Expr::Bin(BinOp::Eq, a, b) if is_key(a) => lit(b).map(|v| vec![v]),
        Expr::Bin(BinOp::Eq, a, b) if is_key(b) => lit(a).map(|v| vec![v]),
        Expr::In {
            e,
            list,
            negated: false,
        } if is_key(e) => list.iter().map(lit).collect(),
        Expr::And(v) => v.iter().find_map(|c| key_values(c, key)),
        Expr::Or(v) => v
            .iter()
            .map(|c| key_values(c, key))
            .collect::<Option<Vec<_>>>()
            .map(|vs| vs.concat()),
        _ => None,
    }
}
