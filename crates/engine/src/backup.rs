//! Backups: a consistent copy of chosen collections into another [`Storage`] (a
//! directory or a bucket), and restore into an empty database.
//!
//! # Layout in the backup store
//!
//! ```text
//! <name>/backup.json                                  written last: a backup without it is incomplete
//! <name>/collections/<id>/manifest.json               the manifest as of the backup
//! <name>/collections/<id>/segments/<seg>/<file>       every object that manifest names
//! ```
//!
//! # Consistency
//!
//! Each collection is flushed, then its manifest and the list of objects it names are
//! read under the collection's read lock, so the copy is exactly the collection as of
//! that manifest's `flushed_ts` (every write acknowledged before the backup started is
//! in it). Segment and index objects are immutable, and compaction (the only thing that
//! deletes live segments) waits while a backup copies; tombstone files, which a later
//! flush replaces, are read while the lock is held.

use crate::catalog::{CatalogFile, CollectionMeta, Manifest};
use crate::engine::Engine;
use crate::error::{invalid, EngineError, Result};
use crate::storage::Storage;
use crate::types::{now_ms, Timestamp};
use serde::{Deserialize, Serialize};

/// What `backup.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupInfo {
    pub format: u32,
    pub name: String,
    pub created_ms: u64,
    pub collections: Vec<BackedUpCollection>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackedUpCollection {
    pub meta: CollectionMeta,
    /// Every write of this collection up to this timestamp is in the backup.
    pub flushed_ts: Timestamp,
    /// Live rows (deleted ones excluded).
    pub rows: usize,
    pub objects: usize,
    pub bytes: u64,
}

/// Backup names: 1-128 ASCII letters, digits, `_`, `-` and `.`, not starting with `.`.
pub fn check_backup_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid backup name '{}': use 1-128 ASCII letters, digits, '_', '-' or '.'",
            name.chars().take(140).collect::<String>()
        )))
    }
}

fn info_key(name: &str) -> String {
    format!("{name}/backup.json")
}

fn parse_info(store: &dyn Storage, key: &str) -> Result<BackupInfo> {
    serde_json::from_slice(&store.get(key)?).map_err(|e| EngineError::Corrupt {
        path: store.locate(key),
        msg: e.to_string(),
    })
}

/// The complete backups in `store`, oldest first.
pub fn list_backups(store: &dyn Storage) -> Result<Vec<BackupInfo>> {
    let mut out = Vec::new();
    for key in store.list("")? {
        if key.matches('/').count() == 1 && key.ends_with("/backup.json") {
            out.push(parse_info(store, &key)?);
        }
    }
    out.sort_by_key(|b| b.created_ms);
    Ok(out)
}

fn copy(from: &dyn Storage, from_key: &str, to: &dyn Storage, to_key: &str) -> Result<u64> {
    let bytes = from.get(from_key)?;
    to.put(to_key, &bytes)?;
    Ok(bytes.len() as u64)
}

impl Engine {
    /// Backs up `collections` (all when empty) as `name` into `dest`. Fails if `dest`
    /// already holds a backup of that name.
    pub fn backup(
        &self,
        name: &str,
        collections: &[String],
        dest: &dyn Storage,
    ) -> Result<BackupInfo> {
        check_backup_name(name)?;
        if dest.exists(&info_key(name))? {
            return Err(invalid(format!("a backup named '{name}' already exists")));
        }
        let names = if collections.is_empty() {
            self.list_collections()
        } else {
            collections.to_vec()
        };
        // Compaction waits until the copy is done (segment objects must not vanish).
        let _no_gc = self.gc_lock().write();
        let mut out = Vec::new();
        for coll in &names {
            self.flush(coll)?;
            let c = self.collection_ref(coll)?;
            let (meta, manifest_bytes, manifest, prefix, deletes) = {
                let g = c.read();
                let key = format!("{}manifest.json", g.prefix);
                let bytes = g.store.get(&key)?;
                let manifest: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| EngineError::Corrupt {
                        path: g.store.locate(&key),
                        msg: e.to_string(),
                    })?;
                let mut deletes = Vec::new();
                for ms in &manifest.segments {
                    if ms.deletes_gen > 0 {
                        let k = format!("{}deletes-{}.mpk", g.seg_prefix(ms.id), ms.deletes_gen);
                        deletes.push((k.clone(), g.store.get(&k)?));
                    }
                }
                (g.meta.clone(), bytes, manifest, g.prefix.clone(), deletes)
            };
            let store = self.storage();
            let to = |k: &str| format!("{name}/{k}");
            let (mut objects, mut bytes) = (0usize, 0u64);
            for ms in &manifest.segments {
                let sp = format!("{prefix}segments/{}/", ms.id);
                for key in store.list(&sp)? {
                    let file = &key[sp.len()..];
                    let wanted = matches!(file, "meta.json" | "columns.bin" | "rows.mpk")
                        || (file.starts_with("vector_")
                            && [".f32", ".f16", ".bf16"].iter().any(|e| file.ends_with(e)))
                        || ms.indexes.iter().any(|i| i.file == file);
                    if wanted {
                        bytes += copy(&*store, &key, dest, &to(&key))?;
                        objects += 1;
                    }
                }
            }
            for (k, b) in &deletes {
                dest.put(&to(k), b)?;
                objects += 1;
                bytes += b.len() as u64;
            }
            dest.put(&to(&format!("{prefix}manifest.json")), &manifest_bytes)?;
            out.push(BackedUpCollection {
                meta,
                flushed_ts: manifest.flushed_ts,
                rows: manifest.segments.iter().map(|s| s.rows).sum::<usize>()
                    - deletes
                        .iter()
                        .map(|(_, b)| {
                            rmp_serde::from_slice::<Vec<(u32, Timestamp)>>(b).map_or(0, |l| l.len())
                        })
                        .sum::<usize>(),
                objects: objects + 1,
                bytes: bytes + manifest_bytes.len() as u64,
            });
        }
        let info = BackupInfo {
            format: 1,
            name: name.to_string(),
            created_ms: now_ms(),
            collections: out,
        };
        dest.put(
            &info_key(name),
            &serde_json::to_vec_pretty(&info).expect("backup info serializes"),
        )?;
        Ok(info)
    }
}

/// Restores backup `name` from `src` into `target`, the storage of a database that has
/// no collections yet (then open it with [`Engine::open_with_storage`] or
/// [`Engine::open`]). `only` restores a subset (empty = all).
pub fn restore(
    name: &str,
    src: &dyn Storage,
    target: &dyn Storage,
    only: &[String],
) -> Result<BackupInfo> {
    check_backup_name(name)?;
    if !src.exists(&info_key(name))? {
        return Err(invalid(format!(
            "no complete backup named '{name}' in {}",
            src.locate("").display()
        )));
    }
    let mut info = parse_info(src, &info_key(name))?;
    if let Some(missing) = only
        .iter()
        .find(|n| !info.collections.iter().any(|c| &c.meta.name == *n))
    {
        return Err(invalid(format!(
            "backup '{name}' has no collection '{missing}'"
        )));
    }
    info.collections
        .retain(|c| only.is_empty() || only.contains(&c.meta.name));
    if target.exists("catalog.json")? || !target.list("collections/")?.is_empty() {
        return Err(invalid(format!(
            "{} already holds a database; restore into an empty data directory or bucket prefix",
            target.locate("").display()
        )));
    }
    let from = format!("{name}/");
    for c in &info.collections {
        let prefix = format!("{from}collections/{}/", c.meta.id);
        for key in src.list(&prefix)? {
            copy(src, &key, target, &key[from.len()..])?;
        }
    }
    let catalog = CatalogFile {
        format: 1,
        next_id: info
            .collections
            .iter()
            .flat_map(|c| std::iter::once(c.meta.id).chain(c.meta.partitions.iter().map(|p| p.id)))
            .max()
            .unwrap_or(0)
            + 1,
        collections: info.collections.iter().map(|c| c.meta.clone()).collect(),
        // The databases the collections are in (aliases are not part of a backup).
        databases: {
            let mut names: Vec<&str> = info
                .collections
                .iter()
                .filter_map(|c| c.meta.name.split_once('.').map(|(db, _)| db))
                .collect();
            names.sort();
            names.dedup();
            names
                .iter()
                .enumerate()
                .map(|(i, n)| crate::catalog::DatabaseMeta {
                    name: n.to_string(),
                    id: i as u64 + 2,
                    created_ms: crate::types::now_ms(),
                })
                .collect()
        },
        aliases: Default::default(),
    };
    catalog.save(target, "catalog.json")?;
    Ok(info)
}
