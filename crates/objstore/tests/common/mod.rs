//! The workload the object-store tests share.

use magpie_engine::*;
use serde_json::{json, Value};
use std::time::Duration;

pub fn rows(range: std::ops::Range<i64>) -> Vec<Value> {
    range
        .map(|i| {
            let v: Vec<f32> = (0..16)
                .map(|d| ((i * 13 + d * 7) % 101) as f32 / 101.0)
                .collect();
            json!({"id": i, "vector": v, "n": i % 10})
        })
        .collect()
}

pub fn answers(e: &Engine) -> Value {
    let hits = e
        .search(
            "c",
            &SearchRequest {
                vectors: vec![vec![0.3; 16], vec![0.7; 16]],
                limit: 5,
                filter: Some("n < 7".into()),
                output_fields: vec!["n".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let q = e
        .query(
            "c",
            &QueryRequest {
                filter: Some("n == 3".into()),
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .unwrap();
    json!({
        "hits": hits.iter().map(|h| h.iter().map(|x| json!([x.id.to_json(), x.distance, x.fields["n"]])).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "n3": q[0]["count(*)"],
    })
}

pub fn quick_schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("vector", DataType::FloatVector).with_dim(16),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    }
}

pub fn hnsw() -> Vec<IndexMeta> {
    vec![IndexMeta {
        id: 0,
        index_name: "vector".into(),
        field_name: "vector".into(),
        index_type: "HNSW".into(),
        metric_type: Metric::COSINE,
        params: Default::default(),
    }]
}

/// Fills a collection, flushes and builds its index, and returns its answers.
pub fn fill(e: &Engine) -> Value {
    e.create_collection("c", quick_schema(), hnsw(), Consistency::Strong, "")
        .unwrap();
    for b in 0..3 {
        e.insert("c", None, &rows(b * 700..(b + 1) * 700)).unwrap();
    }
    e.delete("c", None, None, Some("id in [1, 2, 3]")).unwrap();
    e.flush("c").unwrap();
    assert!(e.wait_for_indexes("c", Duration::from_secs(120)).unwrap());
    answers(e)
}

fn count(e: &Engine, filter: &str) -> i64 {
    let q = e
        .query(
            "c",
            &QueryRequest {
                filter: Some(filter.into()),
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .unwrap();
    q[0]["count(*)"].as_i64().unwrap()
}

/// Two owners of one prefix (a cluster's data nodes when one is frozen past its lease
/// and resumes after another took its shard over): the former owner, still running,
/// can change nothing the new one wrote. `base` opens the store over a fresh local
/// directory (each owner is another machine).
pub fn a_former_owner_is_fenced(
    base: &dyn Fn(&std::path::Path) -> std::sync::Arc<magpie_objstore::ObjectStorage>,
) {
    use magpie_engine::storage::Storage;
    use magpie_objstore::{fence::epoch_of, Fenced};
    use std::sync::Arc;
    let open = |dir: &std::path::Path, epoch: u64| {
        let cfg = EngineConfig {
            first_segment_id: epoch << 32,
            ..Default::default()
        };
        let f = Fenced::claim(base(dir), epoch).unwrap();
        Engine::open_with_storage(dir, cfg, Arc::new(f)).unwrap()
    };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let old = open(dirs[0].path(), 1);
    old.create_collection("c", quick_schema(), Vec::new(), Consistency::Strong, "")
        .unwrap();
    old.insert("c", None, &rows(0..100)).unwrap();
    old.flush("c").unwrap();

    // A new owner takes the prefix over while the old one still runs.
    let new = open(dirs[1].path(), 2);
    assert_eq!(count(&new, "id >= 0"), 100);
    new.insert("c", None, &rows(100..200)).unwrap();
    new.flush("c").unwrap();
    let store = base(dirs[3].path());
    let manifest = store
        .list("collections/")
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with("/manifest.json"))
        .unwrap();
    assert_eq!(epoch_of(&store.get(&manifest).unwrap()), Some(2));

    // The old owner resumes: its flush is refused by the store, and from then on every
    // write of it, the catalog's too.
    old.insert("c", None, &rows(1000..1050)).unwrap();
    let e = old.flush("c").unwrap_err().to_string();
    assert!(
        e.contains("fenced") && e.contains("manifest.json") && e.contains("newer owner"),
        "{e}"
    );
    let e = old
        .create_collection("d", quick_schema(), Vec::new(), Consistency::Strong, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fenced"), "{e}");
    assert_eq!(epoch_of(&store.get(&manifest).unwrap()), Some(2));

    // What the new owner wrote is all there, and nothing of the fenced writes.
    drop(new);
    let third = open(dirs[2].path(), 3);
    assert_eq!(count(&third, "id >= 0"), 200);
    assert_eq!(count(&third, "id >= 1000"), 0);
    assert!(third.list_collections().iter().all(|c| c != "d"));
    third.insert("c", None, &rows(200..250)).unwrap();
    third.flush("c").unwrap();
    assert_eq!(count(&third, "id >= 0"), 250);
    drop(third);

    // A streamed put of a guarded key is conditional too: it goes through while this
    // writer owns the prefix, and is refused once a newer owner has claimed it.
    let d4 = tempfile::tempdir().unwrap();
    let d5 = tempfile::tempdir().unwrap();
    let fourth = Fenced::claim(base(d4.path()), 4).unwrap();
    let doc = store.get(&manifest).unwrap();
    let mut same = |out: &mut dyn std::io::Write| out.write_all(&doc);
    fourth.put_with(&manifest, &mut same).unwrap();
    assert_eq!(epoch_of(&store.get(&manifest).unwrap()), Some(4));
    let _fifth = Fenced::claim(base(d5.path()), 5).unwrap();
    let e = fourth
        .put_with(&manifest, &mut same)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fenced") && e.contains("newer owner"), "{e}");
    assert_eq!(epoch_of(&store.get(&manifest).unwrap()), Some(5));
}
