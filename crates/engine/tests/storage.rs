//! The engine over the storage seam: the same workload on local files and in memory
//! gives the same answers, across restarts, flushes, deletes, index builds and
//! compaction; with the in-memory store nothing but the WAL and the lock touches the
//! data directory; and objects no manifest names are removed on open.

use magpie_engine::storage::{LocalStorage, MemoryStorage, Storage};
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
    // In memory, the data directory holds only the log and the lock.
    let mut names: Vec<String> = std::fs::read_dir(d2.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["LOCK", "wal"]);
    // ...and the store holds the catalog, the manifest, segments and index files.
    let keys = mem.list("").unwrap();
    assert!(keys.contains(&"catalog.json".to_string()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("manifest.json")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.ends_with("rows.mpk")), "{keys:?}");
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
    mem.put(&format!("{prefix}segments/99/rows.mpk"), b"torn")
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
        .find(|k| k.ends_with("rows.mpk"))
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
