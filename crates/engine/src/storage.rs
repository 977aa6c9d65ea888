//! The storage seam: where a collection's segments, index files and manifests live.
//!
//! Everything the engine persists besides the WAL goes through [`Storage`], a flat
//! key → bytes store with `/`-separated keys relative to its root (e.g.
//! `collections/7/segments/12/columns.bin`). Two implementations:
//!
//! - [`LocalStorage`]: files under a directory (the default; today's layout and
//!   durability rules);
//! - [`MemoryStorage`]: a map in memory, for tests (engine tests run against it too).
//!
//! The S3-compatible implementation lives in `magpie-objstore` (on the `object_store`
//! crate); the contract below is written so that it can keep it: no rename, no
//! directories, no partial writes.
//!
//! # Contract
//!
//! | method | guarantee when it returns `Ok` |
//! |---|---|
//! | [`put`](Storage::put) | the key holds exactly `data`, durably; a reader (or a crash) sees the old value or the new, never a mix |
//! | [`put_with`](Storage::put_with) | as `put`, for the bytes `write` wrote; if `write` or the store fails, the key keeps its old value (or stays absent) |
//! | [`get`](Storage::get) | the whole value as last put; a missing key is an error whose kind is `NotFound` |
//! | [`get_range`](Storage::get_range) | bytes of that value, the range clamped to its end |
//! | [`size`](Storage::size) | the length of the value as last put; a missing key is `NotFound` |
//! | [`get_mapped`](Storage::get_mapped) | as `get`, memory-mapped where the store is local (the value must never be rewritten while mapped: segment files are immutable) |
//! | [`list`](Storage::list) | every key that starts with `prefix`, sorted; keys put before the call are listed |
//! | [`delete`](Storage::delete) / [`delete_prefix`](Storage::delete_prefix) | the keys are gone, durably; deleting a missing key is not an error |
//!
//! Atomicity across keys comes from the manifest: new objects are written under new
//! keys, then the manifest that names them is put; a crash in between leaves objects no
//! manifest names, which opening removes.

use crate::error::{EngineError, Result};
use crate::fsutil;
use memmap2::Mmap;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A value read from storage: owned bytes, or a read-only map of a local file.
#[derive(Clone)]
pub enum Blob {
    Owned(Arc<Vec<u8>>),
    Mapped(Arc<Mmap>),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Owned(v) => v,
            Blob::Mapped(m) => m,
        }
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

/// A key → bytes store; see the module docs for the contract of each method.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Writes `key` whole, atomically and durably.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Writes `key` from a stream: `write` is called once and writes the whole value to
    /// the sink it is given; returns the value's length. The guarantees are `put`'s, so a
    /// value too large to hold twice in memory (an index file) can be saved without a
    /// serialised copy where the store streams (local files; multipart uploads on an
    /// object store). The default collects the value and calls `put`.
    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> Result<u64> {
        let buf = collect(self, key, write)?;
        self.put(key, &buf)?;
        Ok(buf.len() as u64)
    }
    /// Reads `key` whole.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `key` whole, memory-mapped where the store can.
    fn get_mapped(&self, key: &str) -> Result<Blob> {
        Ok(Blob::Owned(Arc::new(self.get(key)?)))
    }
    /// Bytes `range` of `key` (clamped to its end; a start past the end is empty).
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let all = self.get(key)?;
        let end = (range.end.min(all.len() as u64)) as usize;
        let start = (range.start as usize).min(end);
        Ok(all[start..end].to_vec())
    }
    /// The length of `key`'s value in bytes.
    fn size(&self, key: &str) -> Result<u64> {
        Ok(self.get(key)?.len() as u64)
    }
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Keys starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes `key` (absent is fine).
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every key starting with `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for k in self.list(prefix)? {
            self.delete(&k)?;
        }
        Ok(())
    }
    /// Total bytes of the values under `prefix`.
    fn bytes_under(&self, prefix: &str) -> Result<u64>;
    /// Where a key lives, for error messages and logs (a path or a URL).
    fn locate(&self, key: &str) -> PathBuf;
    /// Which store this is, as recorded in a data directory's `STORAGE` file so that the
    /// directory's WAL is never replayed against another store's catalog: `local` for
    /// the data directory itself, else the store's URL.
    fn identity(&self) -> String;

    /// True when fetching is slow or costly (a network store). Segments on such a store
    /// keep only their row data (keys, timestamps, scalar columns) in memory at open and
    /// fetch vector and index files on first use or on `collections/load`.
    fn is_remote(&self) -> bool {
        false
    }
}

/// What [`Storage::put_with`] calls to produce a value: it writes the whole value to the
/// sink.
pub type WriteFn<'a> = dyn FnMut(&mut dyn Write) -> std::io::Result<()> + 'a;

/// Runs `write` into a buffer: the value of a [`Storage::put_with`] on a store that
/// cannot stream it. A writer's error names where `key` lives.
pub fn collect<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    write: &mut WriteFn<'_>,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    write(&mut buf).map_err(|source| EngineError::Io {
        path: store.locate(key),
        source,
    })?;
    Ok(buf)
}

/// A sink that counts the bytes written through it.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The key of the engine's catalog.
pub const CATALOG_KEY: &str = "catalog.json";
/// The file name of a collection's manifest, under the collection's prefix.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Whether the engine overwrites `key` in place: its catalog and the collections'
/// manifests, the only keys it ever puts twice (segment and index files are new keys each
/// time). A store that fences a former writer (`magpie_objstore::fence`) guards exactly
/// these.
pub fn rewritten_in_place(key: &str) -> bool {
    key == CATALOG_KEY || key == MANIFEST_FILE || key.ends_with(&format!("/{MANIFEST_FILE}"))
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` parts, no backslash. Every
/// implementation calls it before touching its backing store.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Io {
            path: PathBuf::from(key),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid storage key"),
        })
    }
}

fn not_found(path: PathBuf) -> EngineError {
    EngineError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such key"),
    }
}

/// Whether an error is a missing key.
pub fn is_not_found(e: &EngineError) -> bool {
    matches!(e, EngineError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Files under a root directory. `put` writes a temporary sibling, fsyncs it, renames it
/// over the key and fsyncs the directory (creating and fsyncing missing parents first).
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalStorage {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Creates `dir` and any missing parents, fsyncing each parent whose entries changed.
    fn make_dirs(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dirs(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => fsutil::sync_dir(dir.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(EngineError::Io {
                path: dir.to_path_buf(),
                source: e,
            }),
        }
    }

    fn walk(&self, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => self.walk(&p, out),
                Ok(t) if t.is_file() => {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.contains(".tmp-") {
                        continue; // a put in flight, or left by a crash
                    }
                    if let Ok(rel) = p.strip_prefix(&self.root) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
                _ => {}
            }
        }
    }
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_with(key, &mut |out| out.write_all(data))
            .map(|_| ())
    }

    /// Streams into a temporary file beside the key's (64 KiB writes), fsyncs it, renames
    /// it over the key and fsyncs the directory; a failure removes the temporary file.
    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> Result<u64> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent").to_path_buf();
        self.make_dirs(&dir)?;
        let name = path
            .file_name()
            .expect("a key has a name")
            .to_string_lossy();
        let tmp = dir.join(format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let f = std::fs::File::create(&tmp)?;
            let mut out = Counted {
                inner: std::io::BufWriter::with_capacity(64 << 10, f),
                n: 0,
            };
            write(&mut out)?;
            let f = out.inner.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok(out.n)
        })();
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(EngineError::Io {
                    path: tmp,
                    source: e,
                });
            }
        };
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            EngineError::Io {
                path: path.clone(),
                source: e,
            }
        })?;
        fsutil::sync_dir(&dir)?;
        Ok(n)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        fsutil::read(&self.path(key)?)
    }

    fn get_mapped(&self, key: &str) -> Result<Blob> {
        let path = self.path(key)?;
        let io = |e| EngineError::Io {
            path: path.clone(),
            source: e,
        };
        let f = std::fs::File::open(&path).map_err(io)?;
        if f.metadata().map_err(io)?.len() == 0 {
            return Ok(Blob::Owned(Arc::new(Vec::new())));
        }
        // SAFETY: values behind mapped keys are never rewritten in place (the contract:
        // a put replaces the file by rename, so an existing map keeps the old inode).
        let m = unsafe { Mmap::map(&f) }.map_err(io)?;
        Ok(Blob::Mapped(Arc::new(m)))
    }

    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(key)?;
        let io = |e| EngineError::Io {
            path: path.clone(),
            source: e,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let end = range.end.min(len);
        let start = range.start.min(end);
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut out = vec![0u8; (end - start) as usize];
        f.read_exact(&mut out).map_err(io)?;
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(not_found(path)),
            Err(e) => Err(EngineError::Io { path, source: e }),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.is_file())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk the deepest directory the prefix names, then filter.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let mut out = Vec::new();
        self.walk(&start, &mut out);
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(path.parent().expect("a key has a parent")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EngineError::Io { path, source: e }),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        // A prefix that names a directory is removed whole (with files a crash left).
        if let Some(dir) = prefix.strip_suffix('/') {
            let path = self.path(dir)?;
            return match std::fs::remove_dir_all(&path) {
                Ok(()) => fsutil::sync_dir(path.parent().unwrap_or(&self.root)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(EngineError::Io { path, source: e }),
            };
        }
        for k in self.list(prefix)? {
            self.delete(&k)?;
        }
        Ok(())
    }

    fn bytes_under(&self, prefix: &str) -> Result<u64> {
        match prefix.strip_suffix('/') {
            Some(dir) => Ok(fsutil::dir_bytes(&self.path(dir)?)),
            None => {
                let mut total = 0;
                for k in self.list(prefix)? {
                    total += std::fs::metadata(self.path(&k)?).map_or(0, |m| m.len());
                }
                Ok(total)
            }
        }
    }

    fn locate(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn identity(&self) -> String {
        "local".into()
    }
}

/// Values in memory, for tests. Durable for the life of the value (clones share it), so
/// a test can drop an engine and open another over the same store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    map: Arc<RwLock<BTreeMap<String, Arc<Vec<u8>>>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        check_key(key)?;
        self.map
            .write()
            .insert(key.to_string(), Arc::new(data.to_vec()));
        Ok(())
    }

    /// Collects the value and moves it into the map (no second copy).
    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> Result<u64> {
        check_key(key)?;
        let buf = collect(self, key, write)?;
        let n = buf.len() as u64;
        self.map.write().insert(key.to_string(), Arc::new(buf));
        Ok(n)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        self.map
            .read()
            .get(key)
            .map(|v| v.to_vec())
            .ok_or_else(|| not_found(self.locate(key)))
    }

    fn get_mapped(&self, key: &str) -> Result<Blob> {
        check_key(key)?;
        self.map
            .read()
            .get(key)
            .map(|v| Blob::Owned(v.clone()))
            .ok_or_else(|| not_found(self.locate(key)))
    }

    fn size(&self, key: &str) -> Result<u64> {
        check_key(key)?;
        self.map
            .read()
            .get(key)
            .map(|v| v.len() as u64)
            .ok_or_else(|| not_found(self.locate(key)))
    }

    fn exists(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        Ok(self.map.read().contains_key(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .map
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.map.write().remove(key);
        Ok(())
    }

    fn bytes_under(&self, prefix: &str) -> Result<u64> {
        Ok(self
            .map
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.len() as u64)
            .sum())
    }

    fn locate(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("memory:/{key}"))
    }

    fn identity(&self) -> String {
        // One identity per map, so two memory stores are never mistaken for each other.
        format!("memory:{:p}", Arc::as_ptr(&self.map))
    }
}

/// Checks an implementation against the contract in the module docs, on an empty store;
/// panics naming the first broken rule. Every implementation's tests call it (the object
/// store's too).
pub fn conformance(s: &dyn Storage) {
    assert!(is_not_found(&s.get("a/b").unwrap_err()));
    assert!(!s.exists("a/b").unwrap());
    s.put("a/b", b"one").unwrap();
    s.put("a/c/d", b"two").unwrap();
    s.put("ab", b"three").unwrap();
    assert_eq!(s.get("a/b").unwrap(), b"one");
    assert_eq!(s.size("a/b").unwrap(), 3);
    assert!(is_not_found(&s.size("a/zz").unwrap_err()));
    assert!(
        is_not_found(&s.size("a/c").unwrap_err()),
        "a 'directory' has no size"
    );
    assert_eq!(s.get_range("a/b", 1..2).unwrap(), b"n");
    assert_eq!(s.get_range("a/b", 1..99).unwrap(), b"ne");
    assert!(s.get_range("a/b", 7..9).unwrap().is_empty());
    assert!(is_not_found(&s.get_range("zz", 0..1).unwrap_err()));
    assert_eq!(&*s.get_mapped("a/c/d").unwrap(), b"two");
    s.put("a/b", b"replaced").unwrap();
    assert_eq!(s.get("a/b").unwrap(), b"replaced");
    assert_eq!(s.list("a/").unwrap(), vec!["a/b", "a/c/d"]);
    assert_eq!(s.list("a").unwrap(), vec!["a/b", "a/c/d", "ab"]);
    assert_eq!(s.list("a/c/").unwrap(), vec!["a/c/d"]);
    assert!(s.list("zz/").unwrap().is_empty());
    assert_eq!(s.bytes_under("a/").unwrap(), 8 + 3);
    s.put("e/empty", b"").unwrap();
    assert!(s.get_mapped("e/empty").unwrap().is_empty());
    put_with_conformance(s);
    s.delete("a/b").unwrap();
    s.delete("a/b").unwrap();
    assert!(!s.exists("a/b").unwrap());
    s.delete_prefix("a/").unwrap();
    assert_eq!(s.list("").unwrap(), vec!["ab", "e/empty"]);
    for bad in ["", "/abs", "a/../b", "a//b", "./a", "a\\b"] {
        assert!(s.put(bad, b"x").is_err(), "{bad:?}");
    }
}

/// [`Storage::put_with`]'s part of [`conformance`]: a streamed value in many writes,
/// larger than two parts of an object store's multipart upload; a writer that fails
/// before or after the first part leaves the key as it was; a small streamed value.
fn put_with_conformance(s: &dyn Storage) {
    let big: Vec<u8> = (0..(20usize << 20) + 12_345)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut stream = |out: &mut dyn Write| {
        for c in big.chunks(100_003) {
            out.write_all(c)?;
        }
        Ok(())
    };
    assert_eq!(s.put_with("s/big", &mut stream).unwrap(), big.len() as u64);
    assert_eq!(s.size("s/big").unwrap(), big.len() as u64);
    assert!(
        s.get("s/big").unwrap() == big,
        "the streamed value reads back"
    );
    for (key, before) in [("s/big", true), ("s/absent", false)] {
        for fail_after in [7, big.len()] {
            let e = s
                .put_with(key, &mut |out| {
                    out.write_all(&big[..fail_after])?;
                    Err(std::io::Error::other("the writer gave up"))
                })
                .unwrap_err();
            assert!(e.to_string().contains("the writer gave up"), "{e}");
            assert_eq!(s.exists(key).unwrap(), before, "{key} after {fail_after}");
        }
    }
    assert!(
        s.get("s/big").unwrap() == big,
        "a failed put keeps the old value"
    );
    let n = s
        .put_with("s/small", &mut |out| out.write_all(b"tiny"))
        .unwrap();
    assert_eq!((n, s.get("s/small").unwrap()), (4, b"tiny".to_vec()));
    assert_eq!(s.list("s/").unwrap(), vec!["s/big", "s/small"]);
    s.delete_prefix("s/").unwrap();
    assert!(s.put_with("a/../b", &mut |_| Ok(())).is_err());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keeps_the_contract() {
        conformance(&MemoryStorage::new());
    }

    #[test]
    fn local_keeps_the_contract_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path());
        conformance(&s);
        // A temporary left by a crash mid-put is not a key.
        std::fs::write(d.path().join("ab.tmp-1-1"), b"torn").unwrap();
        assert_eq!(s.list("").unwrap(), vec!["ab", "e/empty"]);
    }

    #[test]
    fn a_mapped_value_survives_a_put_over_it() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path());
        s.put("seg/v", b"old bytes").unwrap();
        let m = s.get_mapped("seg/v").unwrap();
        s.put("seg/v", b"new").unwrap();
        assert_eq!(&*m, b"old bytes");
        assert_eq!(s.get("seg/v").unwrap(), b"new");
    }
}
