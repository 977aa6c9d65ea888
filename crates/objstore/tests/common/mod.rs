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
