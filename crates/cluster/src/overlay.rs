//! [`Overlay`]: a query node's view of a shard's storage: reads fall through to the
//! shard's objects in S3 (written by its data node), writes stay in this process's memory.
//!
//! A query node runs a full engine on the shard: it opens the data node's flushed
//! segments from S3 and replays the log from the checkpoint for the growing part. That
//! engine also seals, flushes, compacts and garbage-collects on its own; those writes and
//! deletes must never touch the data node's objects, so they land in a [`MemoryStorage`]
//! and in a set of hidden keys.

use magpie_engine::storage::{is_not_found, Blob, MemoryStorage, Storage, WriteFn};
use magpie_engine::{EngineError, Result};
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
pub struct Overlay {
    base: Arc<dyn Storage>,
    top: MemoryStorage,
    /// Keys deleted through the overlay: hidden in `base`.
    hidden: RwLock<HashSet<String>>,
}

impl Overlay {
    pub fn new(base: Arc<dyn Storage>) -> Overlay {
        Overlay {
            base,
            top: MemoryStorage::new(),
            hidden: RwLock::new(HashSet::new()),
        }
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::Io {
            path: self.base.locate(key),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "deleted in this overlay"),
        }
    }

    fn in_top(&self, key: &str) -> bool {
        self.top.exists(key).unwrap_or(false)
    }
}

impl Storage for Overlay {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.top.put(key, data)?;
        self.hidden.write().remove(key);
        Ok(())
    }

    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> Result<u64> {
        let n = self.top.put_with(key, write)?;
        self.hidden.write().remove(key);
        Ok(n)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        if self.in_top(key) {
            return self.top.get(key);
        }
        if self.hidden.read().contains(key) {
            return Err(self.missing(key));
        }
        self.base.get(key)
    }

    fn get_mapped(&self, key: &str) -> Result<Blob> {
        if self.in_top(key) {
            return self.top.get_mapped(key);
        }
        if self.hidden.read().contains(key) {
            return Err(self.missing(key));
        }
        self.base.get_mapped(key)
    }

    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        if self.in_top(key) {
            return self.top.get_range(key, range);
        }
        if self.hidden.read().contains(key) {
            return Err(self.missing(key));
        }
        self.base.get_range(key, range)
    }

    fn size(&self, key: &str) -> Result<u64> {
        if self.in_top(key) {
            return self.top.size(key);
        }
        if self.hidden.read().contains(key) {
            return Err(self.missing(key));
        }
        self.base.size(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        if self.in_top(key) {
            return Ok(true);
        }
        if self.hidden.read().contains(key) {
            return Ok(false);
        }
        self.base.exists(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let hidden = self.hidden.read();
        let mut all: BTreeSet<String> = self
            .base
            .list(prefix)?
            .into_iter()
            .filter(|k| !hidden.contains(k))
            .collect();
        all.extend(self.top.list(prefix)?);
        Ok(all.into_iter().collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.top.delete(key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        self.hidden.write().insert(key.to_string());
        Ok(())
    }

    /// Approximate: what the base holds under `prefix` plus what this overlay wrote.
    fn bytes_under(&self, prefix: &str) -> Result<u64> {
        Ok(self.top.bytes_under(prefix)? + self.base.bytes_under(prefix)?)
    }

    fn locate(&self, key: &str) -> PathBuf {
        self.base.locate(key)
    }

    fn identity(&self) -> String {
        self.base.identity()
    }

    fn is_remote(&self) -> bool {
        self.base.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_deletes_never_reach_the_base() {
        let base = Arc::new(MemoryStorage::new());
        base.put("a", b"1").unwrap();
        base.put("b", b"2").unwrap();
        let o = Overlay::new(base.clone());
        magpie_engine::storage::conformance(&Overlay::new(Arc::new(MemoryStorage::new())));
        assert_eq!(o.get("a").unwrap(), b"1");
        o.put("a", b"changed").unwrap();
        o.delete("b").unwrap();
        o.put("c", b"3").unwrap();
        assert_eq!(o.get("a").unwrap(), b"changed");
        assert!(!o.exists("b").unwrap());
        assert!(o.get("b").is_err_and(|e| is_not_found(&e)));
        assert_eq!(o.list("").unwrap(), vec!["a", "c"]);
        // The base is untouched.
        assert_eq!(base.get("a").unwrap(), b"1");
        assert_eq!(base.get("b").unwrap(), b"2");
        assert!(!base.exists("c").unwrap());
        // A key put again after a delete is visible again.
        o.put("b", b"again").unwrap();
        assert_eq!(o.get("b").unwrap(), b"again");
    }
}
