//! The engine over the storage seam: the same workload on local files and in memory
//! gives the same answers, across restarts, flushes, deletes, index builds and
//! compaction; with the in-memory store nothing but the WAL and the lock touches the
//! data directory; and objects no manifest names are removed on open.

use magpie_engine::storage::{LocalStorage, MemoryStorage, Storage};
use magpie_engine::EngineError;
use magpie_engine::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("vec", DataType::FloatVector).with_dim(8),
            FieldSchema::new("age", DataType::Int32),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    }
}

fn rows(range: std::ops::Range<i64>) -> Vec<Value> {
    range
        .map(|i| {
            let v: Vec<f32> = (0..8)
                .map(|d| ((i * 31 + d * 17) % 97) as f32 / 97.0)
                .collect();
            json!({"id": i, "vec": v, "age": i % 50, "tag": format!("t{}", i % 3)})
        })
        .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        seal_rows: 500,
        index_min_rows: 100,
        ..Default::default()
    }
}

fn open(root: &Path, store: &Arc<dyn Storage>) -> Engine {
    Engine::open_with_storage(root, config(), store.clone()).unwrap()
}

/// Everything a reader can see: counts, a filtered query, and searches.
fn answers(e: &Engine) -> Value {
    let q = |filter: &str| {
        e.query(
            "c",
            &QueryRequest {
                filter: Some(filter.into()),
                output_fields: vec!["age".into(), "tag".into()],
                limit: Some(50),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let s = |v: Vec<f32>| {
        e.search(
            "c",
            &SearchRequest {
                vectors: vec![v],
                limit: 5,
                output_fields: vec!["age".into()],
                knobs: SearchKnobs {
                    ef: Some(400),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
        .remove(0)
        .into_iter()
        .map(|h| json!([h.id.to_json(), h.fields["age"]]))
        .collect::<Vec<_>>()
    };
    json!({
        "count": e.collection_stats("c").unwrap().row_count,
        "young": q("age < 3 and tag == 't1'"),
        "s1": s(vec![0.5; 8]),
        "s2": s((0..8).map(|d| d as f32 / 8.0).collect()),
    })
}

fn workload(root: &Path, store: Arc<dyn Storage>) -> Vec<Value> {
    let mut seen = Vec::new();
    {
        let e = open(root, &store);
        e.create_collection(
            "c",
            schema(),
            vec![IndexMeta {
                id: 0,
                index_name: "vec".into(),
                field_name: "vec".into(),
                index_type: "HNSW".into(),
                metric_type: Metric::L2,
                params: json!({"M": 8, "efConstruction": 64})
                    .as_object()
                    .unwrap()
                    .clone(),
            }],
            Consistency::Strong,
            "",
        )
        .unwrap();
        for b in 0..4 {
            e.insert("c", None, &rows(b * 400..(b + 1) * 400)).unwrap();
        }
        e.delete("c", None, None, Some("age >= 45")).unwrap();
        e.flush("c").unwrap();
        assert!(e.wait_for_indexes("c", Duration::from_secs(60)).unwrap());
        seen.push(answers(&e));
        e.insert("c", None, &rows(2000..2100)).unwrap(); // WAL tail
        seen.push(answers(&e));
    }
    // Restart: segments + index files from the store, the tail from the WAL.
    let e = open(root, &store);
    seen.push(answers(&e));
    e.delete("c", None, None, Some("age < 5")).unwrap();
    e.compact("c").unwrap();
    seen.push(answers(&e));
    drop(e);
    let e = open(root, &store);
    seen.push(answers(&e));
    assert_eq!(
        seen[0]["count"],
        json!(1600 - 4 * 40),
        "rows with age >= 45 deleted"
    );
    seen
}

#[test]
fn memory_and_local_storage_give_the_same_answers() {
    let d1 = tempfile::tempdir().unwrap();
    let local = workload(d1.path(), Arc::new(LocalStorage::new(d1.path())));
    let d2 = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let in_memory = workload(d2.path(), Arc::new(mem.clone()));
    assert_eq!(local, in_memory);
    // In memory, the data directory holds only the log, the lock and the store it
    // belongs to.
    let mut names: Vec<String> = std::fs::read_dir(d2.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["LOCK", "STORAGE", "wal"]);
    // ...and the store holds the catalog, the manifest, segments and index files.
    let keys = mem.list("").unwrap();
    assert!(keys.contains(&"catalog.json".to_string()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("manifest.json")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.ends_with("columns.bin")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/index_")), "{keys:?}");
}

#[test]
fn objects_no_manifest_names_are_removed_on_open() {
    let d = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let store: Arc<dyn Storage> = Arc::new(mem.clone());
    let prefix = {
        let e = open(d.path(), &store);
        e.create_collection("c", schema(), Vec::new(), Consistency::Strong, "")
            .unwrap();
        e.insert("c", None, &rows(0..10)).unwrap();
        e.flush("c").unwrap();
        format!("collections/{}/", e.describe_collection("c").unwrap().id)
    };
    // A crash mid-flush (segment files, no manifest naming them), and a dropped
    // collection whose objects outlived the catalog.
    mem.put(&format!("{prefix}segments/99/columns.bin"), b"torn")
        .unwrap();
    mem.put("collections/12345/manifest.json", b"{}").unwrap();
    let e = open(d.path(), &store);
    assert_eq!(e.collection_stats("c").unwrap().row_count, 10);
    let keys = mem.list("").unwrap();
    assert!(!keys.iter().any(|k| k.contains("segments/99/")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("collections/12345/")),
        "{keys:?}"
    );
}

#[test]
fn a_damaged_object_is_a_clear_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let store: Arc<dyn Storage> = Arc::new(mem.clone());
    {
        let e = open(d.path(), &store);
        e.create_collection("c", schema(), Vec::new(), Consistency::Strong, "")
            .unwrap();
        e.insert("c", None, &rows(0..10)).unwrap();
        e.flush("c").unwrap();
    }
    let key = mem
        .list("")
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with("columns.bin"))
        .unwrap();
    let mut bytes = mem.get(&key).unwrap();
    bytes[3] ^= 0xff;
    mem.put(&key, &bytes).unwrap();
    let err = Engine::open_with_storage(d.path(), config(), store)
        .err()
        .expect("a damaged segment fails the open")
        .to_string();
    assert!(err.contains(&key) && err.contains("checksum"), "{err}");
}

/// A store whose writes fail while `failing` is set (an object store that is down, a
/// full bucket), wrapping another.
#[derive(Debug)]
struct Faulty {
    inner: MemoryStorage,
    failing: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn fail(&self, key: &str) -> magpie_engine::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.failing.load(Relaxed) {
            self.failed.fetch_add(1, Relaxed);
            return Err(EngineError::Io {
                path: self.inner.locate(key),
                source: std::io::Error::other("injected: the store is unavailable"),
            });
        }
        Ok(())
    }
}

impl Storage for Faulty {
    fn put(&self, key: &str, data: &[u8]) -> magpie_engine::Result<()> {
        self.fail(key)?;
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> magpie_engine::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn exists(&self, key: &str) -> magpie_engine::Result<bool> {
        self.inner.exists(key)
    }
    fn list(&self, prefix: &str) -> magpie_engine::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> magpie_engine::Result<()> {
        self.fail(key)?;
        self.inner.delete(key)
    }
    fn bytes_under(&self, prefix: &str) -> magpie_engine::Result<u64> {
        self.inner.bytes_under(prefix)
    }
    fn locate(&self, key: &str) -> std::path::PathBuf {
        self.inner.locate(key)
    }
    fn identity(&self) -> String {
        self.inner.identity()
    }
}

/// While the store refuses writes, inserts are still acknowledged (the WAL is local),
/// reads keep working, flush and compaction fail with an error naming the object, and
/// maintenance keeps retrying; once the store is back everything flushes, and a
/// restart has every acknowledged row. A compaction that failed halfway leaves nothing
/// behind that a reopen would trip on.
#[test]
fn a_failing_store_loses_nothing_acknowledged() {
    use std::sync::atomic::Ordering::Relaxed;
    let d = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Faulty {
        inner: MemoryStorage::new(),
        failing: false.into(),
        failed: 0.into(),
    });
    let store: Arc<dyn Storage> = faulty.clone();
    let e = open(d.path(), &store);
    e.create_collection("c", schema(), Vec::new(), Consistency::Strong, "")
        .unwrap();
    e.insert("c", None, &rows(0..300)).unwrap();
    e.flush("c").unwrap();
    faulty.failing.store(true, Relaxed);
    e.insert("c", None, &rows(300..600)).unwrap();
    let err = e.flush("c").unwrap_err().to_string();
    assert!(
        err.contains("memory:/collections/") && err.contains("injected"),
        "{err}"
    );
    // Writes after a failed flush go on (into a new growing segment: the one the flush
    // sealed waits for the next flush).
    e.insert("c", None, &rows(700..720)).unwrap();
    e.delete("c", None, None, Some("id < 100")).unwrap();
    assert!(e.flush("c").is_err());
    assert!(e.compact("c").is_err());
    for _ in 0..3 {
        let _ = e.maintain(); // logs and carries on
    }
    assert_eq!(e.collection_stats("c").unwrap().row_count, 520);
    assert!(faulty.failed.load(Relaxed) >= 2);
    faulty.failing.store(false, Relaxed);
    e.flush("c").unwrap();
    e.compact("c").unwrap();
    e.insert("c", None, &rows(600..650)).unwrap();
    let before = answers(&e);
    drop(e);
    let e = open(d.path(), &store);
    assert_eq!(e.collection_stats("c").unwrap().row_count, 570);
    assert_eq!(answers(&e), before);
}

/// A backup is the collection as of the moment it was taken: writes after it are not in
/// it, a restore into an empty database gives the same answers, a subset can be restored,
/// and the mistakes a user can make are clear errors.
#[test]
fn backup_and_restore_give_the_same_answers() {
    use magpie_engine::backup::{list_backups, restore};
    let d = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let store: Arc<dyn Storage> = Arc::new(mem.clone());
    let e = open(d.path(), &store);
    let hnsw = vec![IndexMeta {
        id: 0,
        index_name: "vec".into(),
        field_name: "vec".into(),
        index_type: "HNSW".into(),
        metric_type: Metric::L2,
        params: Default::default(),
    }];
    e.create_collection("c", schema(), hnsw, Consistency::Strong, "")
        .unwrap();
    e.create_collection("other", schema(), Vec::new(), Consistency::Strong, "")
        .unwrap();
    e.insert("c", None, &rows(0..1200)).unwrap();
    e.insert("other", None, &rows(0..10)).unwrap();
    e.flush("c").unwrap();
    assert!(e.wait_for_indexes("c", Duration::from_secs(60)).unwrap());
    e.delete("c", None, None, Some("age < 5")).unwrap(); // tombstones, not yet flushed
    e.insert("c", None, &rows(5000..5010)).unwrap(); // growing rows
    let at_backup = answers(&e);
    // Backups go to a directory here (a bucket works the same way).
    let bdir = tempfile::tempdir().unwrap();
    let dest = LocalStorage::new(bdir.path());
    let info = e.backup("nightly-1", &[], &dest).unwrap();
    assert_eq!(info.collections.len(), 2);
    let c = info
        .collections
        .iter()
        .find(|c| c.meta.name == "c")
        .unwrap();
    assert_eq!(
        c.rows, 1090,
        "every acknowledged write (deletes too), flushed for the backup"
    );
    e.delete("c", None, None, Some("id < 600")).unwrap();
    e.insert("c", None, &rows(9000..9100)).unwrap();
    e.flush("c").unwrap();
    e.compact("c").unwrap();
    assert_ne!(answers(&e), at_backup);
    // The mistakes.
    let err = e.backup("nightly-1", &[], &dest).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert!(e.backup("../x", &[], &dest).is_err());
    assert!(e.backup("b", &["nope".into()], &dest).is_err());
    drop(e);
    let backups = list_backups(&dest).unwrap();
    assert_eq!(
        backups.len(),
        1,
        "the failed backup left no complete backup behind"
    );

    // Restore everything into an empty database: the answers at backup time.
    let d2 = tempfile::tempdir().unwrap();
    let target = LocalStorage::new(d2.path());
    restore("nightly-1", &dest, &target, &[]).unwrap();
    let local: Arc<dyn Storage> = Arc::new(LocalStorage::new(d2.path()));
    let e2 = open(d2.path(), &local);
    assert_eq!(answers(&e2), at_backup);
    assert_eq!(e2.list_collections(), vec!["c", "other"]);
    // New writes work, and collection ids do not clash with restored ones.
    e2.create_collection("fresh", schema(), Vec::new(), Consistency::Strong, "")
        .unwrap();
    e2.insert("c", None, &rows(7000..7001)).unwrap();
    drop(e2);
    let err = restore("nightly-1", &dest, &target, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a database"), "{err}");
    // A subset, into a bucket-like store.
    let mem2 = MemoryStorage::new();
    restore("nightly-1", &dest, &mem2, &["other".into()]).unwrap();
    let s2: Arc<dyn Storage> = Arc::new(mem2);
    let d3 = tempfile::tempdir().unwrap();
    let e3 = open(d3.path(), &s2);
    assert_eq!(e3.list_collections(), vec!["other"]);
    assert_eq!(e3.collection_stats("other").unwrap().row_count, 10);
    for (name, only, want) in [
        ("missing", vec![], "no complete backup"),
        (
            "nightly-1",
            vec!["nope".to_string()],
            "no collection 'nope'",
        ),
    ] {
        let err = restore(name, &dest, &MemoryStorage::new(), &only)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// A data directory's WAL belongs to one store: opening it with another (forgetting
/// `--storage`, or pointing a local database at a bucket) is refused with what to do,
/// instead of replaying the log against the wrong catalog and trimming it (which lost
/// the writes not yet flushed).
#[test]
fn a_data_directory_is_tied_to_its_storage() {
    let d = tempfile::tempdir().unwrap();
    let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    {
        let e = open(d.path(), &mem);
        e.create_collection("c", schema(), Vec::new(), Consistency::Strong, "")
            .unwrap();
        e.insert("c", None, &rows(0..10)).unwrap(); // only in the WAL so far
    }
    let err = Engine::open(d.path(), config()).err().unwrap().to_string();
    assert!(err.contains("belongs to the storage 'memory:"), "{err}");
    let other: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    assert!(Engine::open_with_storage(d.path(), config(), other).is_err());
    // The right store still has every write.
    let e = open(d.path(), &mem);
    assert_eq!(e.collection_stats("c").unwrap().row_count, 10);
    drop(e);
    // A local database is not silently opened against a bucket either.
    let l = tempfile::tempdir().unwrap();
    drop(Engine::open(l.path(), config()).unwrap());
    let err = Engine::open_with_storage(l.path(), config(), mem.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("belongs to the storage 'local'") && err.contains("without --storage"),
        "{err}"
    );
}

/// A store that says it is remote and records which objects were read, wrapping another;
/// while `closed` is set, reads of vector files wait (a slow network).
#[derive(Default)]
struct Remote {
    inner: MemoryStorage,
    reads: parking_lot::Mutex<Vec<String>>,
    closed: parking_lot::Mutex<bool>,
    cv: parking_lot::Condvar,
    waiting: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

impl Remote {
    /// Vector and index files read since the last call.
    fn take_file_reads(&self) -> Vec<String> {
        let mut r = std::mem::take(&mut *self.reads.lock());
        r.retain(|k| k.contains("/vector_") || k.contains("/index_"));
        r.sort();
        r
    }
}

impl Storage for Remote {
    fn put(&self, key: &str, data: &[u8]) -> magpie_engine::Result<()> {
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> magpie_engine::Result<Vec<u8>> {
        self.reads.lock().push(key.to_string());
        if key.contains("/vector_") {
            let mut closed = self.closed.lock();
            if *closed {
                self.waiting
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            while *closed {
                self.cv.wait(&mut closed);
            }
        }
        self.inner.get(key)
    }
    fn exists(&self, key: &str) -> magpie_engine::Result<bool> {
        self.inner.exists(key)
    }
    fn list(&self, prefix: &str) -> magpie_engine::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> magpie_engine::Result<()> {
        self.inner.delete(key)
    }
    fn bytes_under(&self, prefix: &str) -> magpie_engine::Result<u64> {
        self.inner.bytes_under(prefix)
    }
    fn locate(&self, key: &str) -> std::path::PathBuf {
        self.inner.locate(key)
    }
    fn identity(&self) -> String {
        "remote-test".into()
    }
    fn is_remote(&self) -> bool {
        true
    }
}

/// On a remote store, opening reads only the row data; vector and index files are
/// fetched by the first search that needs them, by `collections/load`, or in the
/// background after open; `release` drops them and a load fetches them again. Answers
/// are the same throughout.
#[test]
fn segments_on_a_remote_store_are_fetched_on_first_use_or_at_load() {
    let d = tempfile::tempdir().unwrap();
    let remote = Arc::new(Remote::default());
    let store: Arc<dyn Storage> = remote.clone();
    let lazy = EngineConfig {
        prefetch_on_open: false,
        ..config()
    };
    let hnsw = vec![IndexMeta {
        id: 0,
        index_name: "vec".into(),
        field_name: "vec".into(),
        index_type: "HNSW".into(),
        metric_type: Metric::L2,
        params: Default::default(),
    }];
    let before = {
        let e = Engine::open_with_storage(d.path(), lazy.clone(), store.clone()).unwrap();
        e.create_collection("c", schema(), hnsw, Consistency::Strong, "")
            .unwrap();
        for b in 0..3 {
            e.insert("c", None, &rows(b * 400..(b + 1) * 400)).unwrap();
        }
        e.flush("c").unwrap();
        assert!(e.wait_for_indexes("c", Duration::from_secs(60)).unwrap());
        answers(&e)
    };
    let unfetched = |e: &Engine| e.collection_stats("c").unwrap().files_unfetched;
    remote.take_file_reads();
    let e = Engine::open_with_storage(d.path(), lazy.clone(), store.clone()).unwrap();
    let segments = e.collection_stats("c").unwrap().segments_flushed;
    assert!(segments >= 2, "{segments} segments");
    assert_eq!(
        unfetched(&e),
        2 * segments,
        "a vector and an index file each"
    );
    // Queries read the row data only.
    let n = e
        .query(
            "c",
            &QueryRequest {
                filter: Some("age < 10".into()),
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(n[0]["count(*)"], json!(240));
    assert_eq!(remote.take_file_reads(), Vec::<String>::new());
    // A search fetches what it needs, once.
    assert_eq!(answers(&e), before);
    assert_eq!(unfetched(&e), 0);
    assert_eq!(remote.take_file_reads().len(), 2 * segments);
    assert_eq!(answers(&e), before);
    assert_eq!(remote.take_file_reads(), Vec::<String>::new());
    // Release drops them; load fetches them before it returns.
    e.set_loaded("c", false).unwrap();
    assert_eq!(unfetched(&e), 2 * segments);
    e.set_loaded("c", true).unwrap();
    assert_eq!(unfetched(&e), 0);
    assert_eq!(remote.take_file_reads().len(), 2 * segments);
    assert_eq!(answers(&e), before);
    drop(e);
    // By default a loaded collection is fetched in the background after open.
    let e = Engine::open_with_storage(d.path(), config(), store.clone()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while unfetched(&e) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background prefetch did not finish"
        );
        std::thread::yield_now();
    }
    assert_eq!(answers(&e), before);
}

/// While a search waits for a vector file from a (slow) remote store, writes to the same
/// collection are not held up: the fetch happens before the search takes the lock.
#[test]
fn writes_do_not_wait_for_a_search_that_is_fetching() {
    use std::sync::atomic::Ordering::SeqCst;
    let d = tempfile::tempdir().unwrap();
    let gated = Arc::new(Remote::default());
    let store: Arc<dyn Storage> = gated.clone();
    let cfg = EngineConfig {
        prefetch_on_open: false,
        ..config()
    };
    {
        let e = Engine::open_with_storage(d.path(), cfg.clone(), store.clone()).unwrap();
        e.create_collection("c", schema(), Vec::new(), Consistency::Strong, "")
            .unwrap();
        e.insert("c", None, &rows(0..300)).unwrap();
        e.flush("c").unwrap();
    }
    *gated.closed.lock() = true;
    let e = Arc::new(Engine::open_with_storage(d.path(), cfg, store.clone()).unwrap());
    let searcher = {
        let e = e.clone();
        std::thread::spawn(move || {
            e.search(
                "c",
                &SearchRequest {
                    vectors: vec![vec![0.5; 8]],
                    limit: 3,
                    ..Default::default()
                },
            )
            .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !gated.waiting.load(SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the search never fetched"
        );
        std::thread::yield_now();
    }
    // The search is now blocked in the fetch. A write must still go through.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let e = e.clone();
        std::thread::spawn(move || {
            e.insert("c", None, &rows(300..310)).unwrap();
            tx.send(()).unwrap();
        });
    }
    let done = rx.recv_timeout(Duration::from_secs(10));
    *gated.closed.lock() = false;
    gated.cv.notify_all();
    assert!(
        done.is_ok(),
        "the insert waited for the search's fetch from the store"
    );
    let hits = searcher.join().unwrap();
    assert_eq!(hits[0].len(), 3);
    assert_eq!(e.collection_stats("c").unwrap().row_count, 310);
}
