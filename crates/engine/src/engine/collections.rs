//! Collections and partitions: create, drop, rename, describe, load and release.

use super::{check_name, coll_prefix, Engine, MAX_PARTITIONS};
use super::{fresh_index_id, namespace, prefetch, CollectionStats};
use crate::catalog::{CollectionMeta, IndexMeta, PartitionMeta};
use crate::collection::Collection;
use crate::error::{invalid, EngineError, Result};
use crate::schema::CollectionSchema;
use crate::types::{now_ms, Consistency, Timestamp};
use parking_lot::RwLock;
use std::sync::Arc;

impl Engine {
    /// Creates a collection. `indexes` may declare the metric per vector field.
    pub fn create_collection(
        &self,
        name: &str,
        schema: CollectionSchema,
        indexes: Vec<IndexMeta>,
        consistency: Consistency,
        description: &str,
    ) -> Result<()> {
        schema.check()?;
        self.check_functions(&schema)?;
        let mut indexes = indexes;
        for ix in &mut indexes {
            Self::check_index(&schema, ix)?;
            ix.id = fresh_index_id();
            ix.index_type = ix.index_type.to_ascii_uppercase();
        }
        let mut cat = self.catalog.lock();
        namespace::check_collection_name(&cat, name)?;
        let mut colls = self.collections.write();
        if colls.contains_key(name) {
            return Err(EngineError::CollectionExists(name.to_string()));
        }
        if let Some(target) = cat.aliases.get(name) {
            return Err(invalid(format!(
                "'{name}' is an alias of collection '{target}'; pick another collection name"
            )));
        }
        let id = cat.next_id;
        // Partition-key collections get their partitions now, `_default_0` and up (the
        // names Milvus uses); the others one partition, `_default`.
        let partitions: Vec<PartitionMeta> = match schema.partition_key() {
            Some(k) => (0..k.partition_key.unwrap_or(1) as u64)
                .map(|i| PartitionMeta {
                    id: id + 1 + i,
                    name: format!("_default_{i}"),
                })
                .collect(),
            None => vec![PartitionMeta {
                id: id + 1,
                name: "_default".into(),
            }],
        };
        cat.next_id += 1 + partitions.len() as u64;
        let meta = CollectionMeta {
            id,
            name: name.to_string(),
            schema,
            partitions,
            indexes,
            consistency,
            created_ms: now_ms(),
            loaded: true,
            description: description.to_string(),
        };
        cat.collections.push(meta.clone());
        if let Err(e) = self.save_catalog(&cat) {
            cat.collections.pop();
            return Err(e);
        }
        let mut c = Collection::open(meta, self.store.clone(), &coll_prefix(id))?;
        c.next_segment_id = c.next_segment_id.max(self.config.first_segment_id);
        colls.insert(name.to_string(), Arc::new(RwLock::new(c)));
        Ok(())
    }

    pub fn drop_collection(&self, name: &str) -> Result<()> {
        let _gc = self.gc.read();
        let mut cat = self.catalog.lock();
        let c = self.collections.read().get(name).cloned().ok_or_else(|| {
            match cat.aliases.get(name) {
                Some(t) => invalid(format!(
                    "'{name}' is an alias of collection '{t}'; drop the collection by its name"
                )),
                None => EngineError::CollectionNotFound(name.to_string()),
            }
        })?;
        let aliases: Vec<&String> = cat
            .aliases
            .iter()
            .filter(|(_, t)| t.as_str() == name)
            .map(|(a, _)| a)
            .collect();
        if !aliases.is_empty() {
            return Err(invalid(format!(
                "collection '{name}' has aliases {aliases:?}; drop them first (drop_alias)"
            )));
        }
        let id = c.read().meta.id;
        self.builder.cancel_where(|k| k.coll == id);
        self.interim.cancel_where(|k| k.coll == id);
        cat.collections.retain(|m| m.id != id);
        self.save_catalog(&cat)?;
        self.collections.write().remove(name);
        let _ = self.store.delete_prefix(&coll_prefix(id));
        Ok(())
    }

    pub fn rename_collection(&self, old: &str, new: &str) -> Result<()> {
        let mut cat = self.catalog.lock();
        namespace::check_collection_name(&cat, new)?;
        if cat.aliases.contains_key(new) {
            return Err(invalid(format!(
                "'{new}' is an alias; pick another collection name"
            )));
        }
        let mut colls = self.collections.write();
        let c = colls
            .get(old)
            .cloned()
            .ok_or_else(|| EngineError::CollectionNotFound(old.to_string()))?;
        if colls.contains_key(new) {
            return Err(EngineError::CollectionExists(new.to_string()));
        }
        let mut g = c.write();
        let id = g.meta.id;
        if let Some(m) = cat.collections.iter_mut().find(|m| m.id == id) {
            m.name = new.to_string();
        }
        // Aliases follow their collection (within its database).
        let old_aliases = cat.aliases.clone();
        for t in cat.aliases.values_mut() {
            if t == old {
                *t = new.to_string();
            }
        }
        if let Err(e) = self.save_catalog(&cat) {
            cat.aliases = old_aliases;
            if let Some(m) = cat.collections.iter_mut().find(|m| m.id == id) {
                m.name = old.to_string();
            }
            return Err(e);
        }
        *self.aliases.write() = cat
            .aliases
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        g.meta.name = new.to_string();
        drop(g);
        colls.remove(old);
        colls.insert(new.to_string(), c);
        Ok(())
    }

    /// Whether `name` is a collection or an alias of one.
    pub fn has_collection(&self, name: &str) -> bool {
        self.coll(name).is_ok()
    }

    pub fn list_collections(&self) -> Vec<String> {
        let mut v: Vec<String> = self.collections.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn describe_collection(&self, name: &str) -> Result<CollectionMeta> {
        Ok(self.coll(name)?.read().meta.clone())
    }

    pub fn collection_stats(&self, name: &str) -> Result<CollectionStats> {
        let c = self.coll(name)?;
        let g = c.read();
        let mut st = CollectionStats {
            row_count: g.row_count(Timestamp::MAX - 1),
            disk_bytes: g.store.bytes_under(&g.prefix).unwrap_or(0),
            ..Default::default()
        };
        for s in &g.segments {
            let (v, i) = s.unfetched();
            st.files_unfetched += v.len() + i.len();
            st.files_remote += s.remote_files();
            match s.state {
                crate::segment::SegState::Growing => st.segments_growing += 1,
                crate::segment::SegState::Sealed => st.segments_sealed += 1,
                crate::segment::SegState::Flushed => st.segments_flushed += 1,
            }
        }
        Ok(st)
    }

    /// `collections/load` (true) and `release` (false). Loading fetches what a search
    /// needs from a remote store (vector and index files) before it returns; releasing
    /// drops what was fetched from memory.
    pub fn set_loaded(&self, name: &str, loaded: bool) -> Result<()> {
        let c = self.coll(name)?;
        {
            let mut g = c.write();
            self.update_meta(&mut g, |m| {
                m.loaded = loaded;
                Ok(())
            })?;
            if !loaded {
                g.segments.iter_mut().for_each(|s| s.evict());
            }
        }
        if loaded {
            prefetch(&c, None)?;
        }
        Ok(())
    }

    /// Fetches every vector and index file of a loaded collection that is not in memory
    /// yet (on a remote store), and returns once they are (or the first error). A released
    /// collection fetches nothing.
    pub fn fetch_all(&self, name: &str) -> Result<()> {
        let c = self.coll(name)?;
        if c.read().meta.loaded {
            prefetch(&c, None)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- partitions

    pub fn create_partition(&self, coll: &str, name: &str) -> Result<()> {
        check_name("partition", name)?;
        let c = self.coll(coll)?;
        let mut g = c.write();
        g.no_named_partitions()?;
        if g.meta.partitions.iter().any(|p| p.name == name) {
            return Err(EngineError::PartitionExists(name.to_string()));
        }
        if g.meta.partitions.len() >= MAX_PARTITIONS {
            return Err(invalid(format!(
                "a collection holds at most {MAX_PARTITIONS} partitions"
            )));
        }
        let id = {
            let mut cat = self.catalog.lock();
            let id = cat.next_id;
            cat.next_id += 1;
            self.save_catalog(&cat)?;
            id
        };
        self.update_meta(&mut g, |m| {
            m.partitions.push(PartitionMeta {
                id,
                name: name.to_string(),
            });
            Ok(())
        })
    }

    pub fn drop_partition(&self, coll: &str, name: &str) -> Result<()> {
        let _gc = self.gc.read();
        if name == "_default" {
            return Err(invalid("the _default partition cannot be dropped"));
        }
        let c = self.coll(coll)?;
        let mut g = c.write();
        g.no_named_partitions()?;
        let id = g.partition_id(Some(name))?;
        self.update_meta(&mut g, |m| {
            m.partitions.retain(|p| p.id != id);
            Ok(())
        })?;
        g.drop_partition_data(id)
    }

    pub fn list_partitions(&self, coll: &str) -> Result<Vec<String>> {
        Ok(self
            .coll(coll)?
            .read()
            .meta
            .partitions
            .iter()
            .map(|p| p.name.clone())
            .collect())
    }

    pub fn has_partition(&self, coll: &str, name: &str) -> Result<bool> {
        Ok(self
            .coll(coll)?
            .read()
            .meta
            .partitions
            .iter()
            .any(|p| p.name == name))
    }
}
