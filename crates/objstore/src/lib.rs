//! The engine's [`Storage`] on S3-compatible object storage (AWS S3, MinIO, SeaweedFS,
//! Ceph RGW), through the `object_store` crate.
//!
//! `magpie serve --storage s3://bucket/prefix` puts the catalog, manifests, segments and
//! index files under `prefix/` in the bucket; the WAL and the lock stay in the local data
//! directory. Credentials, region and endpoint come from the usual `AWS_*` environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
//!
//! # How it keeps the storage contract
//!
//! - `put` is one PUT of the whole object: S3 never shows a partial object, and a PUT
//!   acknowledged by the server is durable. There is no rename; the engine never needs
//!   one (new segments are new keys, made visible by the manifest put after them).
//! - `put_with` (index files, streamed) is one PUT up to [`PART_BYTES`] and a multipart
//!   upload beyond: the object appears whole when the upload completes, and a failed
//!   writer or part aborts the upload, leaving the old value.
//! - `get_mapped` (vector files) goes through a local cache directory with a size limit:
//!   a miss downloads the object into the cache and memory-maps it; entries are evicted
//!   least recently used once the cache is over its limit (a mapped file that is evicted
//!   stays valid until its segment is dropped: unlinking does not unmap). A value larger
//!   than the whole cache, or a cache that cannot be written, is served from memory
//!   instead, with a warning. The cache is emptied at start, so it never serves an
//!   object another process changed.
//! - Transient errors are retried by `object_store` (3 times, within 30 s); what still
//!   fails is an [`EngineError::Io`] naming the object's URL.
//! - The prefix must be empty or hold a Magpie database (its `magpie.json` marker):
//!   foreign objects are refused at start, because opening deletes what no manifest
//!   names. Objects under `import/` (files uploaded for bulk import) are not foreign.
//!
//! One process at a time may use a prefix (as with a local data directory; the lock file
//! is local, so running two servers on one prefix is the operator's mistake to avoid).
//! In a cluster, where a shard's prefix changes hands between data nodes, [`Fenced`]
//! makes the store itself refuse a former owner's writes (conditional PUTs, [`fence`]).

pub mod fence;
pub use fence::Fenced;

use bytes::Bytes;
use futures_util::TryStreamExt;
use magpie_engine::storage::{check_key, Blob, Storage, WriteFn};
use magpie_engine::EngineError;
use memmap2::Mmap;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

type EResult<T> = std::result::Result<T, EngineError>;

/// Errors opening an object store.
#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    #[error("storage URL '{url}': {msg}")]
    BadUrl { url: String, msg: String },
    #[error("cannot reach {url}: {msg}")]
    Unreachable { url: String, msg: String },
    #[error("{url} holds objects that are not a Magpie database (no magpie.json), e.g. '{example}'; use an empty bucket or prefix")]
    Foreign { url: String, example: String },
    #[error("cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where and how much to cache locally.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// The marker object that says a prefix holds a Magpie database.
const MARKER: &str = "magpie.json";

struct CacheState {
    used: u64,
    tick: u64,
    /// key → (bytes, last use)
    entries: HashMap<String, (u64, u64)>,
}

struct Cache {
    cfg: CacheConfig,
    state: Mutex<CacheState>,
}

impl Cache {
    fn path(&self, key: &str) -> PathBuf {
        self.cfg.dir.join(key)
    }

    /// A cached copy of `key`, mapped, if there is one.
    fn hit(&self, key: &str) -> Option<Blob> {
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get_mut(key)?;
        e.1 = tick;
        let f = std::fs::File::open(self.path(key)).ok()?;
        if f.metadata().ok()?.len() == 0 {
            return Some(Blob::Owned(Arc::new(Vec::new())));
        }
        // SAFETY: cache files are written once (temp file + rename) and never modified;
        // eviction unlinks them, which leaves existing maps valid.
        let m = unsafe { Mmap::map(&f) }.ok()?;
        Some(Blob::Mapped(Arc::new(m)))
    }

    /// Stores `data` as `key` and maps it, evicting least recently used entries first.
    /// `None` when it does not fit or the directory cannot be written.
    fn insert(&self, key: &str, data: &[u8]) -> Option<Blob> {
        let size = data.len() as u64;
        if size > self.cfg.max_bytes {
            tracing::warn!(
                key,
                size,
                limit = self.cfg.max_bytes,
                "object larger than the whole cache; held in memory"
            );
            return None;
        }
        let mut st = self.state.lock();
        while st.used + size > self.cfg.max_bytes {
            let Some(victim) = st
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let (bytes, _) = st.entries.remove(&victim).expect("present");
            st.used -= bytes;
            let _ = std::fs::remove_file(self.path(&victim));
        }
        let path = self.path(key);
        let tmp = path.with_extension("cache-tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, data))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), "cannot write the storage cache ({e}); held in memory");
            return None;
        }
        st.tick += 1;
        let tick = st.tick;
        if let Some((old, _)) = st.entries.insert(key.to_string(), (size, tick)) {
            st.used -= old;
        }
        st.used += size;
        drop(st);
        self.hit(key)
    }

    fn forget(&self, key: &str) {
        let mut st = self.state.lock();
        if let Some((bytes, _)) = st.entries.remove(key) {
            st.used -= bytes;
        }
        let _ = std::fs::remove_file(self.path(key));
    }
}

/// The engine's storage in a bucket (see the crate docs).
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket ("" or "a/b").
    prefix: String,
    /// How objects are named in errors: `s3://bucket/prefix`.
    url: String,
    cache: Option<Cache>,
    rt: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStorage({})", self.url)
    }
}

impl Drop for ObjectStorage {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Allowed from any context, async ones included.
            rt.shutdown_background();
        }
    }
}

/// Splits `s3://bucket/some/prefix` into the bucket URL and the prefix.
pub fn parse_url(url: &str) -> Result<(String, String), ObjStoreError> {
    let bad = |msg: &str| ObjStoreError::BadUrl {
        url: url.to_string(),
        msg: msg.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))
        .ok_or_else(|| bad("expected s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(bad(
            "the bucket name must be lowercase letters, digits, '-' and '.'",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(bad("the prefix may not contain '.' or '..'"));
    }
    Ok((format!("s3://{bucket}"), prefix.to_string()))
}

/// The S3 client for `url` (settings from the `AWS_*` environment, then `options`) and
/// the URL's prefix.
fn s3_store(
    url: &str,
    options: &[(&str, &str)],
) -> Result<(Arc<dyn ObjectStore>, String), ObjStoreError> {
    let (bucket_url, prefix) = parse_url(url)?;
    // Timeouts first: `with_client_options` replaces every client setting, so the
    // environment and `options` (e.g. `aws_allow_http`) are applied after it.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120)),
        )
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        });
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    for (k, v) in &env {
        if let Ok(key) = k.parse::<object_store::aws::AmazonS3ConfigKey>() {
            builder = builder.with_config(key, v);
        }
    }
    for (k, v) in options {
        let key = k
            .parse()
            .map_err(|e: object_store::Error| ObjStoreError::BadUrl {
                url: url.to_string(),
                msg: format!("option '{k}': {e}"),
            })?;
        builder = builder.with_config(key, *v);
    }
    let store = builder
        .with_url(&bucket_url)
        .build()
        .map_err(|e| ObjStoreError::BadUrl {
            url: url.to_string(),
            msg: e.to_string(),
        })?;
    Ok((Arc::new(store), prefix))
}

impl ObjectStorage {
    /// Opens `s3://bucket/prefix` with settings from the `AWS_*` environment, checks
    /// that the bucket answers and that the prefix is empty or a Magpie database (writing
    /// the marker into an empty one).
    /// `options` are `object_store` S3 settings that override the environment, by their
    /// `aws_*` names (e.g. `("aws_endpoint", "http://127.0.0.1:8333")`).
    pub fn open_s3(
        url: &str,
        options: &[(&str, &str)],
        cache: Option<CacheConfig>,
    ) -> Result<Self, ObjStoreError> {
        let (store, prefix) = s3_store(url, options)?;
        Self::with_store(store, url, &prefix, cache)
    }

    /// Opens `s3://bucket/prefix` as a place to read from, not a database: no marker is
    /// written or required, anything may be stored there, and Magpie only reads it (bulk
    /// import sources, `--import-root s3://...`). Checks that the bucket answers.
    pub fn open_s3_source(url: &str, options: &[(&str, &str)]) -> Result<Self, ObjStoreError> {
        let (store, prefix) = s3_store(url, options)?;
        Self::with_store_source(store, url, &prefix)
    }

    /// As [`ObjectStorage::open_s3_source`], over any `object_store` implementation.
    pub fn with_store_source(
        store: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
    ) -> Result<Self, ObjStoreError> {
        let s = Self::unchecked(store, url, prefix, None)?;
        // A HEAD of a key that need not exist: answers unless the bucket is unreachable
        // or refuses these credentials.
        s.exists("magpie-probe")
            .map_err(|e| ObjStoreError::Unreachable {
                url: s.url.clone(),
                msg: e.to_string(),
            })?;
        Ok(s)
    }

    /// Over any `object_store` implementation (tests use its in-memory store).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
        cache: Option<CacheConfig>,
    ) -> Result<Self, ObjStoreError> {
        let s = Self::unchecked(store, url, prefix, cache)?;
        s.check_prefix()?;
        Ok(s)
    }

    fn unchecked(
        store: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
        cache: Option<CacheConfig>,
    ) -> Result<Self, ObjStoreError> {
        let cache = match cache {
            None => None,
            Some(cfg) => {
                let err = |source| ObjStoreError::Cache {
                    path: cfg.dir.clone(),
                    source,
                };
                if cfg.dir.exists() {
                    std::fs::remove_dir_all(&cfg.dir).map_err(err)?;
                }
                std::fs::create_dir_all(&cfg.dir).map_err(err)?;
                Some(Cache {
                    cfg,
                    state: Mutex::new(CacheState {
                        used: 0,
                        tick: 0,
                        entries: HashMap::new(),
                    }),
                })
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("magpie-objstore")
            .enable_all()
            .build()
            .map_err(|e| ObjStoreError::Unreachable {
                url: url.to_string(),
                msg: format!("cannot start the I/O runtime: {e}"),
            })?;
        let s = ObjectStorage {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            cache,
            rt: Some(rt),
        };
        Ok(s)
    }

    fn check_prefix(&self) -> Result<(), ObjStoreError> {
        let unreachable = |e: EngineError| ObjStoreError::Unreachable {
            url: self.url.clone(),
            msg: e.to_string(),
        };
        if self.exists(MARKER).map_err(unreachable)? {
            return Ok(());
        }
        let keys = self.list("").map_err(unreachable)?;
        // Files uploaded for bulk import may arrive before the first start.
        let area = format!("{}/", magpie_engine::import::STORE_PREFIX);
        if let Some(example) = keys.iter().find(|k| !k.starts_with(&area)) {
            return Err(ObjStoreError::Foreign {
                url: self.url.clone(),
                example: example.clone(),
            });
        }
        self.put(MARKER, br#"{"magpie": 1}"#).map_err(unreachable)
    }

    fn full(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> EngineError {
        let kind = match e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        // The whole chain: "HTTP error: builder error" alone does not say what to fix.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let part = s.to_string();
            if !msg.contains(&part) {
                msg = format!("{msg}: {part}");
            }
            src = s.source();
        }
        EngineError::Io {
            path: self.locate(key),
            source: std::io::Error::new(kind, msg),
        }
    }

    /// Runs `f` on this store's runtime and waits for it, from any thread (the engine
    /// is synchronous and may be called from inside another runtime's blocking pool).
    fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("running").spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .expect("the storage runtime runs until the storage is dropped")
    }

    fn fetch(&self, key: &str) -> EResult<Bytes> {
        let store = self.store.clone();
        let path = self.full(key);
        self.block(async move { store.get(&path).await?.bytes().await })
            .map_err(|e| self.err(key, e))
    }
}

/// The size of each part of a multipart upload but the last ([`Storage::put_with`] on a
/// value larger than one part). Fixed, as some stores (R2) require equal parts, and above
/// S3's 5 MiB minimum.
pub const PART_BYTES: usize = 8 << 20;

/// Why a streamed put failed: the store refused, or the writer itself failed.
enum Failure {
    Store(object_store::Error),
    Writer(std::io::Error),
}

/// The sink of [`ObjectStorage::put_with`]: collects one part, then uploads it.
struct Multipart<'s> {
    st: &'s ObjectStorage,
    path: ObjPath,
    part: Vec<u8>,
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    /// The part being uploaded while the next one fills.
    inflight: Option<std::sync::mpsc::Receiver<object_store::Result<()>>>,
    /// The store's first error; the writer sees it as an I/O error and stops.
    failed: Option<object_store::Error>,
    n: u64,
}

impl Multipart<'_> {
    /// Waits for the part in flight.
    fn settle(&mut self) -> object_store::Result<()> {
        match self.inflight.take() {
            Some(rx) => rx
                .recv()
                .expect("the storage runtime runs until the storage is dropped"),
            None => Ok(()),
        }
    }

    /// Starts the upload if needed and sends the collected part.
    fn send_part(&mut self) -> object_store::Result<()> {
        if self.upload.is_none() {
            let store = self.st.store.clone();
            let path = self.path.clone();
            self.upload = Some(
                self.st
                    .block(async move { store.put_multipart(&path).await })?,
            );
        }
        self.settle()?;
        let part = std::mem::replace(&mut self.part, Vec::with_capacity(PART_BYTES));
        let fut = self
            .upload
            .as_mut()
            .expect("started above")
            .put_part(part.into());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.st.rt.as_ref().expect("running").spawn(async move {
            let _ = tx.send(fut.await);
        });
        self.inflight = Some(rx);
        Ok(())
    }

    fn complete(mut self) -> Result<(), Failure> {
        if let Some(e) = self.failed.take() {
            return Err(self.abort_store(e));
        }
        if self.upload.is_none() {
            // Under one part: a single PUT.
            let store = self.st.store.clone();
            let path = self.path.clone();
            let payload = Bytes::from(std::mem::take(&mut self.part));
            return self
                .st
                .block(async move { store.put(&path, payload.into()).await })
                .map(|_| ())
                .map_err(Failure::Store);
        }
        let sent = if self.part.is_empty() {
            self.settle()
        } else {
            self.send_part().and_then(|()| self.settle())
        };
        if let Err(e) = sent {
            return Err(self.abort_store(e));
        }
        let mut up = self.upload.take().expect("started");
        match self.st.block(async move {
            let r = up.complete().await;
            if r.is_err() {
                let _ = up.abort().await;
            }
            r
        }) {
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Store(e)),
        }
    }

    fn abort_store(self, e: object_store::Error) -> Failure {
        self.abort(None);
        Failure::Store(e)
    }

    /// Abandons the upload (best effort: a store keeps an unfinished upload's parts only
    /// until its lifecycle rule removes them, and never shows them as the object).
    fn abort(mut self, writer: Option<std::io::Error>) -> Failure {
        let _ = self.settle();
        if let Some(mut up) = self.upload.take() {
            let _ = self.st.block(async move { up.abort().await });
        }
        match (self.failed.take(), writer) {
            (Some(e), _) => Failure::Store(e),
            (None, Some(w)) => Failure::Writer(w),
            (None, None) => Failure::Writer(std::io::Error::other("aborted")),
        }
    }
}

impl std::io::Write for Multipart<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.to_string()));
        }
        if self.part.len() == PART_BYTES {
            if let Err(e) = self.send_part() {
                let msg = e.to_string();
                self.failed = Some(e);
                return Err(std::io::Error::other(msg));
            }
        }
        let k = buf.len().min(PART_BYTES - self.part.len());
        self.part.extend_from_slice(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An object's version for a conditional put: its ETag as the server gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// The outcome of [`ObjectStorage::put_if`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutIf {
    /// Written; the object's new version.
    Written(Version),
    /// Not written: the object is not at the expected version (or, for a create, it
    /// exists).
    Conflict,
}

impl ObjectStorage {
    /// Reads `key` whole with its version, or `None` when it does not exist.
    pub fn get_versioned(&self, key: &str) -> EResult<Option<(Vec<u8>, Version)>> {
        check_key(key)?;
        let store = self.store.clone();
        let path = self.full(key);
        let got = self.block(async move {
            let r = store.get(&path).await?;
            let etag = r.meta.e_tag.clone();
            Ok::<_, object_store::Error>((r.bytes().await?, etag))
        });
        match got {
            Ok((bytes, Some(etag))) => Ok(Some((bytes.to_vec(), Version(etag)))),
            Ok((_, None)) => Err(self.err(
                key,
                object_store::Error::NotSupported {
                    source: "the store returned no ETag, which conditional writes need".into(),
                },
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// One PUT of `data` at `key` with `opts`: the key's cache entry is dropped first.
    /// The outer error is a bad key; the inner one the store's answer.
    fn put_opts(
        &self,
        key: &str,
        data: &[u8],
        opts: object_store::PutOptions,
    ) -> EResult<Result<object_store::PutResult, object_store::Error>> {
        check_key(key)?;
        if let Some(c) = &self.cache {
            c.forget(key);
        }
        let store = self.store.clone();
        let path = self.full(key);
        let payload = Bytes::copy_from_slice(data);
        Ok(self.block(async move { store.put_opts(&path, payload.into(), opts).await }))
    }

    /// Writes `key` only if it is still at version `expected`, or, with `None`, only if
    /// it does not exist (S3's `If-Match` / `If-None-Match: *` on the PUT, checked by the
    /// server, so two writers can never both succeed from the same version).
    pub fn put_if(&self, key: &str, data: &[u8], expected: Option<&Version>) -> EResult<PutIf> {
        let mode = match expected {
            None => object_store::PutMode::Create,
            Some(v) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(v.0.clone()),
                version: None,
            }),
        };
        let opts = object_store::PutOptions {
            mode,
            ..Default::default()
        };
        match self.put_opts(key, data, opts)? {
            Ok(r) => match r.e_tag {
                Some(etag) => Ok(PutIf::Written(Version(etag))),
                None => Err(self.err(
                    key,
                    object_store::Error::NotSupported {
                        source: "the store returned no ETag for a conditional put".into(),
                    },
                )),
            },
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(PutIf::Conflict),
            Err(e) => Err(self.err(key, e)),
        }
    }
}

impl Storage for ObjectStorage {
    fn put(&self, key: &str, data: &[u8]) -> EResult<()> {
        self.put_opts(key, data, Default::default())?
            .map(|_| ())
            .map_err(|e| self.err(key, e))
    }

    /// A value that fits in one part is one PUT, as with `put`. A larger one is a
    /// multipart upload of [`PART_BYTES`] parts, one uploading while the next fills, so
    /// the process holds at most two parts of it; completing the upload makes the whole
    /// object visible at once, and a failure aborts it (the old value stays).
    fn put_with(&self, key: &str, write: &mut WriteFn<'_>) -> EResult<u64> {
        check_key(key)?;
        if let Some(c) = &self.cache {
            c.forget(key);
        }
        let mut sink = Multipart {
            st: self,
            path: self.full(key),
            part: Vec::new(),
            upload: None,
            inflight: None,
            failed: None,
            n: 0,
        };
        let wrote = write(&mut sink);
        let n = sink.n;
        let done = match wrote {
            Ok(()) => sink.complete(),
            Err(e) => Err(sink.abort(Some(e))),
        };
        done.map(|()| n).map_err(|e| match e {
            Failure::Store(e) => self.err(key, e),
            Failure::Writer(source) => EngineError::Io {
                path: self.locate(key),
                source,
            },
        })
    }

    fn get(&self, key: &str) -> EResult<Vec<u8>> {
        check_key(key)?;
        Ok(self.fetch(key)?.to_vec())
    }

    fn get_mapped(&self, key: &str) -> EResult<Blob> {
        check_key(key)?;
        let Some(c) = &self.cache else {
            return Ok(Blob::Owned(Arc::new(self.fetch(key)?.to_vec())));
        };
        if let Some(b) = c.hit(key) {
            return Ok(b);
        }
        let bytes = self.fetch(key)?;
        Ok(c.insert(key, &bytes)
            .unwrap_or_else(|| Blob::Owned(Arc::new(bytes.to_vec()))))
    }

    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> EResult<Vec<u8>> {
        check_key(key)?;
        let store = self.store.clone();
        let path = self.full(key);
        let got = self.block(async move {
            let size = store.head(&path).await?.size;
            let end = range.end.min(size);
            let start = range.start.min(end);
            if start == end {
                return Ok(Bytes::new());
            }
            store.get_range(&path, start..end).await
        });
        got.map(|b| b.to_vec()).map_err(|e| self.err(key, e))
    }

    fn size(&self, key: &str) -> EResult<u64> {
        check_key(key)?;
        let store = self.store.clone();
        let path = self.full(key);
        self.block(async move { store.head(&path).await })
            .map(|m| m.size)
            .map_err(|e| self.err(key, e))
    }

    fn exists(&self, key: &str) -> EResult<bool> {
        check_key(key)?;
        let store = self.store.clone();
        let path = self.full(key);
        match self.block(async move { store.head(&path).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> EResult<Vec<String>> {
        let store = self.store.clone();
        // List under the deepest "directory" of the prefix, then filter by the rest.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let list_root = if dir.is_empty() {
            (!self.prefix.is_empty()).then(|| ObjPath::from(self.prefix.as_str()))
        } else {
            Some(self.full(dir))
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .block(async move { store.list(list_root.as_ref()).try_collect().await })
            .map_err(|e| self.err(prefix, e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut keys: Vec<String> = metas
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&strip).map(String::from))
            .filter(|k| k.starts_with(prefix) && k != MARKER)
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> EResult<()> {
        check_key(key)?;
        if let Some(c) = &self.cache {
            c.forget(key);
        }
        let store = self.store.clone();
        let path = self.full(key);
        match self.block(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn bytes_under(&self, prefix: &str) -> EResult<u64> {
        let store = self.store.clone();
        let root = if self.prefix.is_empty() && prefix.is_empty() {
            None
        } else {
            Some(self.full(prefix.trim_end_matches('/')))
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .block(async move { store.list(root.as_ref()).try_collect().await })
            .map_err(|e| self.err(prefix, e))?;
        Ok(metas.iter().map(|m| m.size).sum())
    }

    fn locate(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.url))
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn identity(&self) -> String {
        self.url.clone()
    }
}
