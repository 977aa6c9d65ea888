//! [`Fenced`]: one writer per prefix, enforced by the object store itself.
//!
//! In a cluster, a shard's prefix is written by the data node that owns the shard (its
//! ownership key in etcd). A node that is frozen (a long GC-like pause, a suspended VM, a
//! network partition from etcd but not from S3) past its lease loses the shard to another
//! node while it still believes it owns it. When it resumes, nothing it checked before
//! the pause is true any more, and a check made just before a write can always be
//! followed by another pause. Only the store can refuse the write at the moment it
//! lands: S3 conditional PUTs (`If-Match` on the version read or written last,
//! `If-None-Match: *` for a key that must not exist yet).
//!
//! # How
//!
//! The engine overwrites in place only its metadata: `catalog.json` and each
//! collection's `manifest.json` (`magpie_engine::storage::rewritten_in_place`), which name every segment and index file that counts
//! (new segment and index files are new keys, and a file no manifest names is removed at
//! open). Those are the *guarded* keys. Every owner has an *epoch*, a number that grows
//! with each change of owner (the cluster keeps it in etcd). Then:
//!
//! 1. [`Fenced::claim`], before the engine opens: every guarded key is read with its
//!    version and put back with this owner's *mark*, conditional on that version. From
//!    then on the previous owner's last-known versions are stale.
//! 2. Every later put of a guarded key is conditional on the version this writer read
//!    or wrote last (or on absence, for a key it has not seen). A put that the store
//!    refuses means another writer got there: the wrapper is *fenced* from then on, and
//!    every put and delete fails with an error that says so; reads go on.
//!
//! The mark is the epoch written in JSON whitespace after the document (a newline, the
//! epoch's binary digits as space and tab, a newline). Every JSON reader parses the same
//! document, so nothing else has to know about it, but the bytes, and so the ETag that
//! stores derive from them, differ between owners: a claim always changes the version,
//! even of a manifest whose document is unchanged.
//!
//! A write whose response was lost and that the client retried finds the key already
//! holding exactly its own marked bytes; that is taken as written, not as a fence.
//!
//! # What it leaves to the engine's design
//!
//! A fenced writer's unconditional writes (new segment files) land under segment ids of
//! its own: the cluster gives each owner a disjoint id range (`EngineConfig::
//! first_segment_id`), so they never replace the new owner's files, and they are removed
//! when no manifest names them. Deletes are not conditional (S3 has no conditional
//! DELETE everywhere); the engine deletes a file only after a manifest that no longer
//! names it was put, which a fenced writer cannot do, or files of its own segment ids.

use crate::{ObjectStorage, PutIf, Version};
use magpie_engine::storage::{collect, rewritten_in_place as is_guarded, Blob, Storage, WriteFn};
use magpie_engine::EngineError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

type EResult<T> = std::result::Result<T, EngineError>;

/// The owner mark appended to a guarded value: JSON whitespace that spells `epoch`.
fn mark(epoch: u64) -> Vec<u8> {
    let mut out = vec![b'\n'];
    let bits = 64 - epoch.leading_zeros();
    for b in (0..bits.max(1)).rev() {
        out.push(if epoch >> b & 1 == 1 { b'\t' } else { b' ' });
    }
    out.push(b'\n');
    out
}

/// The epoch in a value's mark, if it has one.
pub fn epoch_of(data: &[u8]) -> Option<u64> {
    let body = data.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n')? + 1;
    let digits = &body[start..];
    if digits.is_empty() || digits.len() > 64 || digits.iter().any(|&b| b != b' ' && b != b'\t') {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |e, &b| e << 1 | u64::from(b == b'\t')),
    )
}

/// An [`ObjectStorage`] that only this owner may change; see the module docs.
#[derive(Debug)]
pub struct Fenced {
    base: Arc<ObjectStorage>,
    epoch: u64,
    /// Guarded key → the version this writer read or wrote last. Held across a guarded
    /// put, so two puts of this writer never race each other's versions.
    versions: Mutex<HashMap<String, Version>>,
    /// Set once a conditional put was refused: the key and why.
    fenced: Mutex<Option<String>>,
}

impl Fenced {
    /// Takes `base` over as owner `epoch` (see the module docs, step 1). Fails if a guarded
    /// key keeps changing under it (another writer is active) or the store does not
    /// support conditional puts.
    pub fn claim(base: Arc<ObjectStorage>, epoch: u64) -> EResult<Fenced> {
        let f = Fenced {
            base,
            epoch,
            versions: Mutex::new(HashMap::new()),
            fenced: Mutex::new(None),
        };
        for key in f.base.list("")? {
            if is_guarded(&key) {
                f.take(&key)?;
            }
        }
        Ok(f)
    }

    /// Why this writer is fenced, if it is.
    pub fn fenced(&self) -> Option<String> {
        self.fenced.lock().clone()
    }

    fn take(&self, key: &str) -> EResult<()> {
        for _ in 0..10 {
            let Some((bytes, v)) = self.base.get_versioned(key)? else {
                return Ok(());
            };
            let marked = self.marked(&bytes);
            if let PutIf::Written(nv) = self.base.put_if(key, &marked, Some(&v))? {
                self.versions.lock().insert(key.to_string(), nv);
                return Ok(());
            }
        }
        Err(self.error(
            key,
            "changed ten times while being claimed: another writer is still active on this prefix",
        ))
    }

    fn marked(&self, data: &[u8]) -> Vec<u8> {
        let end = data
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let mut out = data[..end].to_vec();
        out.extend_from_slice(&mark(self.epoch));
        out
    }

    fn error(&self, key: &str, msg: &str) -> EngineError {
        EngineError::Io {
            path: self.base.locate(key),
            source: std::io::Error::other(format!("fenced (owner epoch {}): {msg}", self.epoch)),
        }
    }

    fn check(&self, key: &str) -> EResult<()> {
        match self.fenced() {
            None => Ok(()),
            Some(why) => Err(self.error(key, &format!("no writes after {why}"))),
        }
    }

    fn put_guarded(&self, key: &str, data: &[u8]) -> EResult<()> {
        let mut versions = self.versions.lock();
        let marked = self.marked(data);
        let expected = versions.get(key).cloned();
        match self.base.put_if(key, &marked, expected.as_ref())? {
            PutIf::Written(v) => {
                versions.insert(key.to_string(), v);
                Ok(())
            }
            PutIf::Conflict => {
                // A retried PUT whose first attempt landed finds its own bytes.
                if let Some((now, v)) = self.base.get_versioned(key)? {
                    if now == marked {
                        versions.insert(key.to_string(), v);
                        return Ok(());
                    }
                }
                let why = match expected {
                    Some(_) => format!("{key} was rewritten by another writer (a newer owner)"),
                    None => format!("{key} was created by another writer (a newer owner)"),
                };
                tracing::error!(key, epoch = self.epoch, "{why}; this writer stops writing");
                *self.fenced.lock() = Some(why.clone());
                Err(self.error(key, &why))
            }
        }
    }
}

impl Storage for Fenced {
    fn put(&self, key: &str, data: &[u8]) -> EResult<()> {
        self.check(key)?;
        if is_guarded(key) {
            self.put_guarded(key, data)
        } else {
            self.base.put(key, data)
        }
    }

    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> EResult<u64> {
        self.check(key)?;
        if is_guarded(key) {
            // Conditional puts are whole values: collect, then put as above.
            let buf = collect(self, key, write)?;
            self.put_guarded(key, &buf)?;
            Ok(buf.len() as u64)
        } else {
            self.base.put_with(key, write)
        }
    }

    fn get(&self, key: &str) -> EResult<Vec<u8>> {
        self.base.get(key)
    }

    fn get_mapped(&self, key: &str) -> EResult<Blob> {
        self.base.get_mapped(key)
    }

    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> EResult<Vec<u8>> {
        self.base.get_range(key, range)
    }

    fn size(&self, key: &str) -> EResult<u64> {
        self.base.size(key)
    }

    fn exists(&self, key: &str) -> EResult<bool> {
        self.base.exists(key)
    }

    fn list(&self, prefix: &str) -> EResult<Vec<String>> {
        self.base.list(prefix)
    }

    fn delete(&self, key: &str) -> EResult<()> {
        self.check(key)?;
        if is_guarded(key) {
            // Next put of it: only if nobody created it meanwhile.
            self.versions.lock().remove(key);
        }
        self.base.delete(key)
    }

    fn bytes_under(&self, prefix: &str) -> EResult<u64> {
        self.base.bytes_under(prefix)
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
    fn marks_spell_the_epoch_in_json_whitespace() {
        for epoch in [0u64, 1, 2, 5, 1 << 20, u64::MAX] {
            let mut doc = br#"{"a": 1}"#.to_vec();
            doc.extend_from_slice(&mark(epoch));
            assert_eq!(epoch_of(&doc), Some(epoch), "{epoch}");
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!(v["a"], 1);
        }
        assert_ne!(mark(2), mark(3));
        assert_eq!(epoch_of(br#"{"a": 1}"#), None);
        assert!(is_guarded("catalog.json") && is_guarded("collections/7/manifest.json"));
        assert!(!is_guarded("collections/7/segments/3/rows.bin"));
    }
}
