//! The REST suite: every endpoint and the bad-input classes, written once and run twice,
//! in process against a standalone router (`tests/api.rs`) and over HTTP against a
//! local cluster's proxy (`crates/cli/tests/cluster.rs`). The assertions are exact
//! answers, so a cluster passes only where it answers as standalone does.
//!
//! Each test takes a [`T`], which sends a request somewhere and returns the status and
//! JSON body; it knows nothing of where.

#![allow(dead_code)]

use axum::http::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The reply of one request: its status and JSON body (`Null` when not JSON).
pub type Reply = Pin<Box<dyn Future<Output = (StatusCode, Value)> + Send>>;

/// Sends a request: method ("GET" or "POST"), path, body, bearer token.
pub type Sender = Arc<dyn Fn(&'static str, String, Vec<u8>, Option<String>) -> Reply + Send + Sync>;

pub struct T {
    send: Sender,
    /// The largest body the target accepts (the oversized-body case sends more).
    pub max_body: usize,
    /// Every `collections/create` without a `shardsNum` gets this many shards, so a
    /// cluster merges results from several.
    pub shards: Option<u32>,
    /// Whatever must live as long as the target (a temp dir).
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl T {
    pub fn new(
        send: Sender,
        max_body: usize,
        keep: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> T {
        T {
            send,
            max_body,
            shards: None,
            _keep: keep,
        }
    }

    pub async fn raw(&self, path: &str, body: Vec<u8>, auth: Option<&str>) -> (StatusCode, Value) {
        let body = match self.shards {
            Some(n) if path.ends_with("/collections/create") => {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Object(mut m)) => {
                        m.entry("shardsNum").or_insert(json!(n));
                        serde_json::to_vec(&m).unwrap()
                    }
                    _ => body,
                }
            }
            _ => body,
        };
        (self.send)("POST", path.to_string(), body, auth.map(String::from)).await
    }

    pub async fn post(&self, ep: &str, body: Value) -> (StatusCode, Value) {
        self.raw(
            &format!("/v2/vectordb/{ep}"),
            serde_json::to_vec(&body).unwrap(),
            None,
        )
        .await
    }

    pub async fn ok(&self, ep: &str, body: Value) -> Value {
        let (s, v) = self.post(ep, body).await;
        assert_eq!(s, StatusCode::OK, "{ep}: {v}");
        assert_eq!(v["code"], json!(0), "{ep}: {v}");
        v["data"].clone()
    }

    /// The status of a GET.
    pub async fn get(&self, path: &str) -> StatusCode {
        (self.send)("GET", path.into(), vec![], None).await.0
    }

    pub async fn healthy(&self) {
        assert_eq!(self.get("/healthz").await, StatusCode::OK);
    }

    /// What the target keeps alive, when it is an `X` (the in-process target's temp dir).
    pub fn kept<X: 'static>(&self) -> Option<&X> {
        self._keep.as_ref()?.downcast_ref()
    }

    /// Drops every collection of every database but `default`'s own, and the other
    /// databases: the state a fresh target starts in.
    pub async fn reset(&self) {
        let dbs = self.ok("databases/list", json!({})).await;
        for db in dbs.as_array().unwrap() {
            let db = db.as_str().unwrap();
            let colls = self.ok("collections/list", json!({"dbName": db})).await;
            for c in colls.as_array().unwrap() {
                let aliases = self
                    .ok("aliases/list", json!({"dbName": db, "collectionName": c}))
                    .await;
                for a in aliases.as_array().into_iter().flatten() {
                    self.ok("aliases/drop", json!({"dbName": db, "aliasName": a}))
                        .await;
                }
                self.ok(
                    "collections/drop",
                    json!({"dbName": db, "collectionName": c}),
                )
                .await;
            }
            if db != "default" {
                self.ok("databases/drop", json!({"dbName": db})).await;
            }
        }
    }
}

pub async fn every_endpoint(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "c", "dimension": 4, "metricType": "L2"}),
    )
    .await;
    assert_eq!(t.ok("collections/list", json!({})).await, json!(["c"]));
    assert_eq!(
        t.ok("collections/has", json!({"collectionName": "c"}))
            .await["has"],
        json!(true)
    );
    let d = t
        .ok("collections/describe", json!({"collectionName": "c"}))
        .await;
    assert_eq!(d["fields"][1]["params"][0]["value"], json!("4"));
    assert_eq!(d["indexes"][0]["metricType"], json!("L2"));
    t.ok(
        "partitions/create",
        json!({"collectionName": "c", "partitionName": "p"}),
    )
    .await;
    assert_eq!(
        t.ok("partitions/list", json!({"collectionName": "c"}))
            .await,
        json!(["_default", "p"])
    );
    assert_eq!(
        t.ok(
            "partitions/has",
            json!({"collectionName": "c", "partitionName": "p"})
        )
        .await["has"],
        json!(true)
    );
    let ins = t
        .ok(
            "entities/insert",
            json!({"collectionName": "c", "data": rows(30)}),
        )
        .await;
    assert_eq!(ins["insertCount"], json!(30));
    t.ok("entities/insert", json!({"collectionName": "c", "partitionName": "p", "data": [{"id": 100, "vector": [0, 0, 0, 0], "age": 1}]})).await;
    let up = t.ok("entities/upsert", json!({"collectionName": "c", "data": [{"id": 1, "vector": [1, 1, 0, 0.5], "age": 77}]})).await;
    assert_eq!(up["upsertCount"], json!(1));
    let got = t
        .ok(
            "entities/get",
            json!({"collectionName": "c", "id": [1, 2], "outputFields": ["age"]}),
        )
        .await;
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert!(got
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["age"] == json!(77)));
    let q = t.ok("entities/query", json!({"collectionName": "c", "filter": "age < 3 and tag like 't%'", "outputFields": ["age", "tag"], "limit": 100})).await;
    assert!(q
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["age"].as_i64().unwrap() < 3));
    let cnt = t
        .ok(
            "entities/query",
            json!({"collectionName": "c", "filter": "", "outputFields": ["count(*)"]}),
        )
        .await;
    assert_eq!(cnt[0]["count(*)"], json!(31));
    let cnt = t.ok("entities/query", json!({"collectionName": "c", "filter": "", "outputFields": ["count(*)"], "partitionNames": ["p"]})).await;
    assert_eq!(cnt[0]["count(*)"], json!(1));
    let (_, s) = t.post("entities/search", json!({"collectionName": "c", "data": [[5, 1, 0, 0.5], [9, 1, 0, 0.5]], "limit": 3, "outputFields": ["tag"], "filter": "age >= 0", "consistencyLevel": "Strong"})).await;
    assert_eq!(s["topks"], json!([3, 3]));
    assert_eq!(s["data"][0]["id"], json!(5));
    assert_eq!(s["data"][0]["distance"], json!(0.0));
    assert_eq!(s["data"][3]["id"], json!(9));
    assert!(s["data"][0]["tag"].is_string());
    let s = t
        .ok(
            "entities/search",
            json!({"collectionName": "c", "ids": [7], "limit": 1}),
        )
        .await;
    assert_eq!(s[0]["id"], json!(7));
    let s = t.ok("entities/search", json!({"collectionName": "c", "data": [[5, 1, 0, 0.5]], "limit": 50, "searchParams": {"params": {"radius": 4.5, "range_filter": 0.5}}})).await;
    let ds: Vec<f64> = s
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["distance"].as_f64().unwrap())
        .collect();
    assert_eq!(ds, vec![1.0, 1.0, 4.0, 4.0]);
    // Grouping needs a schema scalar field (a dynamic key is refused by name).
    let (st, v) = t.post("entities/search", json!({"collectionName": "c", "data": [[5, 1, 0, 0.5]], "limit": 2, "groupingField": "tag", "groupSize": 2})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("'tag'"));
    let del = t
        .ok(
            "entities/delete",
            json!({"collectionName": "c", "filter": "age == 0"}),
        )
        .await;
    assert_eq!(del["deleteCount"], json!(3));
    let del = t
        .ok(
            "entities/delete",
            json!({"collectionName": "c", "ids": [29]}),
        )
        .await;
    assert_eq!(del["deleteCount"], json!(1));
    assert_eq!(
        t.ok("collections/get_stats", json!({"collectionName": "c"}))
            .await["rowCount"],
        json!(27)
    );
    t.ok("collections/flush", json!({"collectionName": "c"}))
        .await;
    t.ok("collections/compact", json!({"collectionName": "c"}))
        .await;
    assert_eq!(
        t.ok("collections/get_stats", json!({"collectionName": "c"}))
            .await["rowCount"],
        json!(27)
    );
    assert_eq!(
        t.ok("indexes/list", json!({"collectionName": "c"})).await,
        json!(["vector"])
    );
    let di = t
        .ok(
            "indexes/describe",
            json!({"collectionName": "c", "indexName": "vector"}),
        )
        .await;
    assert_eq!(di[0]["indexState"], json!("Finished"));
    t.ok(
        "indexes/drop",
        json!({"collectionName": "c", "indexName": "vector"}),
    )
    .await;
    t.ok("indexes/create", json!({"collectionName": "c", "indexParams": [{"fieldName": "vector", "indexName": "v2", "metricType": "IP", "params": {"index_type": "FLAT"}}]})).await;
    assert_eq!(
        t.ok("indexes/list", json!({"collectionName": "c"})).await,
        json!(["v2"])
    );
    t.ok("collections/release", json!({"collectionName": "c"}))
        .await;
    assert_eq!(
        t.ok("collections/get_load_state", json!({"collectionName": "c"}))
            .await["loadState"],
        json!("LoadStateNotLoad")
    );
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 1, 1, 1]]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("released"));
    t.ok("collections/load", json!({"collectionName": "c"}))
        .await;
    t.ok(
        "partitions/drop",
        json!({"collectionName": "c", "partitionName": "p"}),
    )
    .await;
    t.ok(
        "collections/rename",
        json!({"collectionName": "c", "newCollectionName": "d"}),
    )
    .await;
    t.ok("collections/drop", json!({"collectionName": "d"}))
        .await;
    assert_eq!(t.ok("collections/list", json!({})).await, json!([]));
    // Custom schema with every scalar type.
    t.ok("collections/create", json!({"collectionName": "s", "schema": {"autoId": true, "enableDynamicField": false, "fields": [
        {"fieldName": "pk", "dataType": "Int64", "isPrimary": true},
        {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": "2"}},
        {"fieldName": "b", "dataType": "Bool"}, {"fieldName": "i8", "dataType": "Int8"},
        {"fieldName": "f", "dataType": "Float", "nullable": true}, {"fieldName": "d", "dataType": "Double", "defaultValue": 2.5},
        {"fieldName": "s", "dataType": "VarChar", "elementTypeParams": {"max_length": 8}},
        {"fieldName": "j", "dataType": "JSON"},
        {"fieldName": "a", "dataType": "Array", "elementDataType": "VarChar", "elementTypeParams": {"max_capacity": 4, "max_length": 4}}]},
        "indexParams": [{"fieldName": "v", "metricType": "COSINE", "indexType": "AUTOINDEX"}]})).await;
    let ins = t.ok("entities/insert", json!({"collectionName": "s", "data": [{"v": [1, 0], "b": true, "i8": 5, "s": "hey", "j": {"k": [1, 2]}, "a": ["x", "y"]}]})).await;
    assert_eq!(ins["insertIds"].as_array().unwrap().len(), 1);
    let q = t.ok("entities/query", json!({"collectionName": "s", "filter": "j['k'][0] == 1 and array_contains(a, 'y') and d == 2.5 and f is null", "outputFields": ["*"]})).await;
    assert_eq!(q.as_array().unwrap().len(), 1, "{q}");
    assert_eq!(q[0]["d"], json!(2.5));
}

pub async fn bad_inputs_get_clear_4xx_errors(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "c", "dimension": 4, "metricType": "L2"}),
    )
    .await;
    t.ok(
        "entities/insert",
        json!({"collectionName": "c", "data": rows(5)}),
    )
    .await;
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "entities/insert",
            json!({"collectionName": "c", "data": [{"id": 9, "vector": [1, 2]}]}),
            StatusCode::BAD_REQUEST,
            "dimension 2",
        ),
        (
            "entities/insert",
            json!({"collectionName": "c", "data": [{"id": 9, "vector": [1, 2, 3, "NaN"]}]}),
            StatusCode::BAD_REQUEST,
            "not a number",
        ),
        (
            "entities/insert",
            json!({"collectionName": "c", "data": [{"id": 9, "vector": [1, 2, 3, 1e39]}]}),
            StatusCode::BAD_REQUEST,
            "finite",
        ),
        (
            "entities/insert",
            json!({"collectionName": "c", "data": [{"vector": [1, 2, 3, 4]}]}),
            StatusCode::BAD_REQUEST,
            "missing primary key",
        ),
        (
            "entities/insert",
            json!({"collectionName": "c", "data": [{"id": 1, "vector": [1, 2, 3, 4]}]}),
            StatusCode::BAD_REQUEST,
            "already exists",
        ),
        (
            "entities/insert",
            json!({"collectionName": "nope", "data": rows(1)}),
            StatusCode::NOT_FOUND,
            "'nope' does not exist",
        ),
        (
            "entities/insert",
            json!({"collectionName": "c", "partitionName": "zz", "data": rows(1)}),
            StatusCode::NOT_FOUND,
            "partition 'zz'",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3]]}),
            StatusCode::BAD_REQUEST,
            "dimension 3",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3, 4]], "filter": "age >"}),
            StatusCode::BAD_REQUEST,
            "position 5",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3, 4]], "limit": 20000}),
            StatusCode::BAD_REQUEST,
            "16384",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3, 4]], "annsField": "nofield"}),
            StatusCode::BAD_REQUEST,
            "'nofield' does not exist",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3, 4]], "consistencyLevel": "Sometimes"}),
            StatusCode::BAD_REQUEST,
            "consistencyLevel",
        ),
        (
            "entities/search",
            json!({"collectionName": "c", "data": [[1, 2, 3, 4]], "searchParams": {"metricType": "MANHATTAN"}}),
            StatusCode::BAD_REQUEST,
            "metricType",
        ),
        (
            "entities/query",
            json!({"collectionName": "c", "filter": "age in 5"}),
            StatusCode::BAD_REQUEST,
            "list",
        ),
        (
            "entities/query",
            json!({"collectionName": "c", "filter": "id > 0", "outputFields": ["vector", "nosuch"]}),
            StatusCode::OK,
            "",
        ),
        (
            "entities/query",
            json!({"collectionName": "c"}),
            StatusCode::BAD_REQUEST,
            "filter",
        ),
        (
            "entities/delete",
            json!({"collectionName": "c"}),
            StatusCode::BAD_REQUEST,
            "filter",
        ),
        (
            "collections/create",
            json!({"collectionName": "c", "dimension": 4}),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "collections/create",
            json!({"collectionName": "x", "dimension": 40000}),
            StatusCode::BAD_REQUEST,
            "dim",
        ),
        (
            "collections/create",
            json!({"collectionName": "../etc", "dimension": 4}),
            StatusCode::BAD_REQUEST,
            "invalid collection name",
        ),
        (
            "collections/create",
            json!({"collectionName": "y", "schema": {"fields": [{"fieldName": "a", "dataType": "Quaternion"}]}}),
            StatusCode::BAD_REQUEST,
            "Quaternion",
        ),
        (
            "collections/describe",
            json!({}),
            StatusCode::BAD_REQUEST,
            "collectionName",
        ),
        (
            "collections/describe",
            json!({"collectionName": 5}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "indexes/create",
            json!({"collectionName": "c", "indexParams": [{"fieldName": "vector", "indexName": "h", "metricType": "L2", "indexType": "DISKANN"}]}),
            StatusCode::BAD_REQUEST,
            "not supported",
        ),
    ];
    for (ep, body, status, frag) in cases {
        let (s, v) = t.post(ep, body.clone()).await;
        assert_eq!(s, status, "{ep} {body}: {v}");
        if status != StatusCode::OK {
            assert_ne!(v["code"], json!(0));
            assert!(
                v["message"].as_str().unwrap().contains(frag),
                "{ep}: '{}' should mention '{frag}'",
                v["message"]
            );
        }
        t.healthy().await;
    }
    // Malformed JSON, oversized body, unknown endpoint.
    let (s, v) = t
        .raw(
            "/v2/vectordb/entities/insert",
            b"{\"collectionName\": ".to_vec(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("malformed"));
    // Just over the target's limit (a row is more than 20 bytes).
    let n = (t.max_body / 20 + 1) as i64;
    let big = serde_json::to_vec(&json!({"collectionName": "c", "data": rows(n)})).unwrap();
    let (s, v) = t.raw("/v2/vectordb/entities/insert", big, None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["message"].as_str().unwrap().contains("limit"));
    let (s, v) = t
        .raw("/v2/vectordb/entities/nothing", b"{}".to_vec(), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"].as_str().unwrap().contains("no such endpoint"));
    t.healthy().await;
    // Nothing was lost by all of that.
    assert_eq!(
        t.ok("collections/get_stats", json!({"collectionName": "c"}))
            .await["rowCount"],
        json!(5)
    );
}

/// ANN indexes over REST: create with Milvus params, background build visible in
/// describe, search knobs and recall targets reported in `searchInfo`, bad knobs refused.
pub async fn ann_index_over_rest(t: &T) {
    let dim = 8;
    t.ok(
        "collections/create",
        json!({"collectionName": "c", "schema": {"autoId": false, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": dim}}]},
          "indexParams": [{"fieldName": "vector", "indexName": "vector", "metricType": "L2",
                           "params": {"index_type": "HNSW", "M": "8", "efConstruction": 64}}]}),
    )
    .await;
    let vec_of = |i: usize| -> Vec<f32> {
        (0..dim)
            .map(|d| ((i * 7919 + d * 104729) % 1000) as f32 / 100.0)
            .collect()
    };
    for start in (0..2000).step_by(500) {
        let rows: Vec<Value> = (start..start + 500)
            .map(|i| json!({"id": i, "vector": vec_of(i)}))
            .collect();
        t.ok(
            "entities/insert",
            json!({"collectionName": "c", "data": rows}),
        )
        .await;
    }
    t.ok("collections/flush", json!({"collectionName": "c"}))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let d = loop {
        let d = t
            .ok(
                "indexes/describe",
                json!({"collectionName": "c", "indexName": "vector"}),
            )
            .await;
        if d[0]["indexState"] == json!("Finished") {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "index never finished: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(d[0]["indexType"], json!("HNSW"));
    assert_eq!(d[0]["indexedRows"], json!(2000));
    assert_eq!(d[0]["segments"][0]["state"], json!("indexed"));
    assert!(d[0]["segments"][0]["indexBytes"].as_u64().unwrap() > 0);

    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "c", "data": [vec_of(7)], "limit": 3,
                   "searchParams": {"params": {"ef": 32}}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], json!(7));
    assert_eq!(v["searchInfo"]["ef"], json!(32));
    assert_eq!(v["searchInfo"]["indexedSegments"], json!(1));
    let (_, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "c", "data": [vec_of(9)], "limit": 3,
                   "searchParams": {"params": {"recall": 0.95}}}),
        )
        .await;
    assert_eq!(v["data"][0]["id"], json!(9), "{v}");
    assert!(v["searchInfo"]["ef"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        v["searchInfo"]["expectedRecall"].as_f64().unwrap() >= 0.95,
        "{v}"
    );
    // Filtered searches say what passed and which plan each segment used (the graph
    // plans start at 4096 passing rows; index unit tests cover them).
    for (filter, ratio, plan) in [
        ("id < 10", 0.005, "exact"),
        ("id < 1500", 0.75, "exact"),
        ("id >= 0", 1.0, "unfiltered"),
    ] {
        let (_, v) = t
            .post(
                "entities/search",
                json!({"collectionName": "c", "data": [vec_of(5)], "limit": 3, "filter": filter}),
            )
            .await;
        assert_eq!(v["data"][0]["id"], json!(5), "{v}");
        let info = &v["searchInfo"];
        assert_eq!(info["filterPassRatio"], json!(ratio), "{filter}: {v}");
        assert_eq!(info["filterPlans"], json!({plan: 1}), "{filter}: {v}");
    }

    for (params, frag) in [
        (json!({"ef": 0}), "'ef' must be in"),
        (json!({"ef": "abc"}), "'ef' must be a non-negative integer"),
        (json!({"recall": 1.5}), "'recall' must be a target"),
        (
            json!({"nprobe": -1}),
            "'nprobe' must be a non-negative integer",
        ),
    ] {
        let (s, v) = t
            .post(
                "entities/search",
                json!({"collectionName": "c", "data": [vec_of(1)], "limit": 3,
                       "searchParams": {"params": params}}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(frag), "{v}");
    }
    let (s, v) = t
        .post(
            "indexes/create",
            json!({"collectionName": "c", "indexParams": [{"fieldName": "vector", "indexName": "pq",
                   "metricType": "L2", "params": {"index_type": "IVF_PQ", "m": 3}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("must divide"),
        "{v}"
    );
    t.ok(
        "indexes/drop",
        json!({"collectionName": "c", "indexName": "vector"}),
    )
    .await;
    let (_, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "c", "data": [vec_of(7)], "limit": 1}),
        )
        .await;
    assert_eq!(v["data"][0]["id"], json!(7));
    assert_eq!(v["searchInfo"]["indexedSegments"], json!(0));
    t.healthy().await;
}

/// Scalar indexes with Milvus's API: created on scalar fields, listed and described
/// (no metric), used by filters with the same answers as without, dropped; the
/// combinations Milvus refuses are clear 400s that change nothing.
pub async fn scalar_indexes_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "s", "schema": {"autoId": false, "enableDynamicField": true, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}},
            {"fieldName": "price", "dataType": "Int64"},
            {"fieldName": "title", "dataType": "VarChar", "elementTypeParams": {"max_length": 64}},
            {"fieldName": "meta", "dataType": "JSON"}]}}),
    )
    .await;
    let rows: Vec<Value> = (0..3000)
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0, 2.0, 3.0], "price": (i * 37) % 1000,
                        "title": format!("item {} {}", i % 50, ["red", "blue"][i as usize % 2]), "meta": {"a": i}}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "s", "data": rows}),
    )
    .await;
    t.ok("collections/flush", json!({"collectionName": "s"}))
        .await;
    let filters = [
        "price < 20",
        "price == 7 or price in [1, 999]",
        "title like \"item 4%\" and price > 500",
        "title == \"item 3 blue\"",
        "price >= 990.5",
    ];
    let query = |f: &str| json!({"collectionName": "s", "filter": f, "outputFields": ["price", "title"], "limit": 3000});
    let mut before = Vec::new();
    for f in filters {
        let r = t.ok("entities/query", query(f)).await;
        assert!(!r.as_array().unwrap().is_empty(), "{f}: {r}");
        before.push(r);
    }
    for (field, kind) in [("price", "STL_SORT"), ("title", "TRIE")] {
        t.ok(
            "indexes/create",
            json!({"collectionName": "s", "indexParams": [{"fieldName": field, "indexName": field, "params": {"index_type": kind}}]}),
        )
        .await;
    }
    for (f, want) in filters.iter().zip(&before) {
        assert_eq!(&t.ok("entities/query", query(f)).await, want, "{f}");
        // The same rows from a filter text the segment's filter cache has not seen,
        // evaluated through the indexes.
        let fresh = format!("({f}) and id >= 0");
        assert_eq!(
            &t.ok("entities/query", query(&fresh)).await,
            want,
            "{fresh}"
        );
    }
    let d = t
        .ok(
            "indexes/describe",
            json!({"collectionName": "s", "indexName": "price"}),
        )
        .await;
    assert_eq!(d[0]["indexType"], json!("STL_SORT"));
    assert_eq!(d[0]["metricType"], json!(""));
    assert_eq!(d[0]["indexState"], json!("Finished"));
    // The queries above built it: 4 bytes per row.
    assert_eq!(d[0]["segments"][0]["indexBytes"], json!(4 * 3000));
    let listed = t.ok("indexes/list", json!({"collectionName": "s"})).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    for (body, says) in [
        (
            json!({"fieldName": "price", "indexName": "p2", "params": {"index_type": "TRIE"}}),
            "does not apply",
        ),
        (
            json!({"fieldName": "title", "indexName": "t2", "params": {"index_type": "HNSW"}}),
            "vector fields",
        ),
        (
            json!({"fieldName": "meta", "indexName": "m", "params": {"index_type": "INVERTED"}}),
            "JSON",
        ),
        (
            json!({"fieldName": "id", "indexName": "i", "params": {"index_type": "INVERTED"}}),
            "primary key",
        ),
        (
            json!({"fieldName": "vector", "indexName": "v", "params": {"index_type": "BITMAP"}}),
            "scalar fields",
        ),
        (
            json!({"fieldName": "price", "indexName": "p3", "params": {"index_type": "NOPE"}}),
            "not supported",
        ),
        (
            json!({"fieldName": "price", "indexName": "again", "params": {"index_type": "INVERTED"}}),
            "already exists",
        ),
    ] {
        let (s, v) = t
            .post(
                "indexes/create",
                json!({"collectionName": "s", "indexParams": [body]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let listed = t.ok("indexes/list", json!({"collectionName": "s"})).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "nothing changed: {listed}"
    );
    t.ok(
        "indexes/drop",
        json!({"collectionName": "s", "indexName": "price"}),
    )
    .await;
    for (f, want) in filters.iter().zip(&before) {
        assert_eq!(&t.ok("entities/query", query(f)).await, want, "{f}");
        // The same rows from a filter text the segment's filter cache has not seen,
        // evaluated through the indexes.
        let fresh = format!("({f}) and id >= 0");
        assert_eq!(
            &t.ok("entities/query", query(&fresh)).await,
            want,
            "{fresh}"
        );
    }
}

pub async fn json_path_indexes_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "j", "schema": {"autoId": false, "enableDynamicField": true, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}},
            {"fieldName": "price", "dataType": "Int64"},
            {"fieldName": "meta", "dataType": "JSON"}]}}),
    )
    .await;
    // meta.p holds floats, integers, a string, null or nothing, so every class of row
    // (typed, other type, absent) meets the index.
    let rows: Vec<Value> = (0..3000i64)
        .map(|i| {
            let p = match i % 5 {
                0 => json!(i as f64 / 100.0),
                1 => json!(i % 7),
                2 => json!("n/a"),
                3 => Value::Null,
                _ => json!([i]),
            };
            let mut meta = json!({"a": i, "b": {"c": format!("tag{}", i % 10)}});
            if i % 11 != 0 {
                meta["p"] = p;
            }
            let color = ["red", "green", "blue"][i as usize % 3];
            json!({"id": i, "vector": [i as f32, 1.0, 2.0, 3.0], "price": i % 100, "meta": meta,
                   "color": color})
        })
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "j", "data": rows}),
    )
    .await;
    t.ok("collections/flush", json!({"collectionName": "j"}))
        .await;
    let filters = [
        "meta[\"a\"] < 20",
        "meta[\"a\"] >= 2500 and meta[\"a\"] != 2600",
        "meta[\"a\"] in [1, 2.0, 2999]",
        "meta[\"b\"][\"c\"] == \"tag3\" and price < 40",
        "meta[\"b\"][\"c\"] like \"tag1%\"",
        "meta[\"p\"] > 1.5",
        "meta[\"p\"] is null",
        "meta[\"p\"] != 2",
        "not (meta[\"p\"] in [3, 4])",
        "color in [\"red\", \"blue\"] and meta[\"a\"] < 100",
        "$meta[\"color\"] == \"green\" or meta[\"a\"] == 5",
    ];
    let query = |f: &str| json!({"collectionName": "j", "filter": f, "outputFields": ["meta"], "limit": 3000});
    let mut before = Vec::new();
    for f in filters {
        let r = t.ok("entities/query", query(f)).await;
        assert!(!r.as_array().unwrap().is_empty(), "{f}: {r}");
        before.push(r);
    }
    // A repeated filter comes from the flushed segment's filter cache.
    let search = json!({"collectionName": "j", "data": [[1.0, 1.0, 2.0, 3.0]], "limit": 3,
                        "filter": "meta[\"a\"] >= 10 and color == \"red\""});
    let (_, first) = t.post("entities/search", search.clone()).await;
    let (_, again) = t.post("entities/search", search).await;
    assert_eq!(first["data"], again["data"]);
    assert_eq!(first["data"].as_array().map(Vec::len), Some(3), "{first}");
    assert_eq!(first["searchInfo"]["filterCachedSegments"], 0, "{first}");
    assert_eq!(again["searchInfo"]["filterCachedSegments"], 1, "{again}");
    let index = |name: &str, field: &str, path: &str, cast: &str| {
        json!({"fieldName": field, "indexName": name, "indexType": "INVERTED",
               "params": {"json_path": path, "json_cast_type": cast}})
    };
    for ix in [
        index("a", "meta", "meta[\"a\"]", "double"),
        index("bc", "meta", "meta[\"b\"][\"c\"]", "VARCHAR"),
        index("p", "meta", "meta['p']", "DOUBLE"),
        index("color", "color", "color", "varchar"),
    ] {
        t.ok(
            "indexes/create",
            json!({"collectionName": "j", "indexParams": [ix]}),
        )
        .await;
    }
    for (f, want) in filters.iter().zip(&before) {
        assert_eq!(&t.ok("entities/query", query(f)).await, want, "{f}");
        // The same rows from a filter text the segment's filter cache has not seen,
        // evaluated through the indexes.
        let fresh = format!("({f}) and id >= 0");
        assert_eq!(
            &t.ok("entities/query", query(&fresh)).await,
            want,
            "{fresh}"
        );
    }
    // The queries built each index on the flushed segment.
    for name in ["a", "bc", "p", "color"] {
        let d = t
            .ok(
                "indexes/describe",
                json!({"collectionName": "j", "indexName": name}),
            )
            .await;
        assert_eq!(d[0]["indexType"], json!("INVERTED"), "{d}");
        let bytes = d[0]["segments"][0]["indexBytes"].as_u64().unwrap();
        assert!(bytes >= 3000, "{name}: {d}");
    }

    for (body, says) in [
        (
            json!({"fieldName": "meta", "indexName": "m", "params": {"index_type": "INVERTED"}}),
            "json_path",
        ),
        (
            index("m", "meta", "meta[\"q\"]", "ARRAY_DOUBLE"),
            "not supported yet",
        ),
        (
            index("m", "meta", "meta[\"q\"]", "int"),
            "unknown json_cast_type",
        ),
        (index("m", "meta", "meta[\"q\"", "double"), "json_path"),
        (index("m", "meta", "meta", "double"), "whole field"),
        (index("m", "meta", "price[\"x\"]", "double"), "only JSON"),
        (
            index("m", "meta", "other[\"x\"]", "double"),
            "does not start at 'meta'",
        ),
        (
            index("m", "meta", "meta[\"a\"]", "varchar"),
            "already covers",
        ),
        (
            index("a", "meta", "meta[\"z\"]", "varchar"),
            "already exists",
        ),
        (
            index("m", "price", "meta[\"z\"]", "double"),
            "for JSON fields",
        ),
        (
            json!({"fieldName": "meta", "indexName": "m", "indexType": "STL_SORT",
                   "params": {"json_path": "meta[\"z\"]", "json_cast_type": "double"}}),
            "INVERTED or AUTOINDEX",
        ),
    ] {
        let (s, v) = t
            .post(
                "indexes/create",
                json!({"collectionName": "j", "indexParams": [body]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let listed = t.ok("indexes/list", json!({"collectionName": "j"})).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        4,
        "nothing changed: {listed}"
    );
    for name in ["a", "p"] {
        t.ok(
            "indexes/drop",
            json!({"collectionName": "j", "indexName": name}),
        )
        .await;
    }
    for (f, want) in filters.iter().zip(&before) {
        assert_eq!(&t.ok("entities/query", query(f)).await, want, "{f}");
        // The same rows from a filter text the segment's filter cache has not seen,
        // evaluated through the indexes.
        let fresh = format!("({f}) and id >= 0");
        assert_eq!(
            &t.ok("entities/query", query(&fresh)).await,
            want,
            "{fresh}"
        );
    }
}

pub async fn databases_and_aliases_over_rest(t: &T) {
    t.ok("databases/create", json!({"dbName": "shop"})).await;
    assert_eq!(
        t.ok("databases/list", json!({})).await,
        json!(["default", "shop"])
    );
    assert_eq!(
        t.ok("databases/describe", json!({"dbName": "shop"})).await["dbName"],
        json!("shop")
    );
    for db in [json!(null), json!("shop")] {
        t.ok(
            "collections/create",
            json!({"dbName": db, "collectionName": "c", "dimension": 4, "metricType": "L2"}),
        )
        .await;
    }
    t.ok(
        "entities/insert",
        json!({"dbName": "shop", "collectionName": "c", "data": rows(3)}),
    )
    .await;
    assert_eq!(count_in(t, "shop", "c").await, json!(3));
    assert_eq!(count_in(t, "default", "c").await, json!(0));
    assert_eq!(
        t.ok("collections/list", json!({"dbName": "shop"})).await,
        json!(["c"])
    );
    let d = t
        .ok(
            "collections/describe",
            json!({"dbName": "shop", "collectionName": "c"}),
        )
        .await;
    assert_eq!(
        (d["collectionName"].clone(), d["dbName"].clone()),
        (json!("c"), json!("shop"))
    );

    // An alias reads like its collection and moves in one step.
    t.ok(
        "aliases/create",
        json!({"dbName": "shop", "collectionName": "c", "aliasName": "live"}),
    )
    .await;
    assert_eq!(count_in(t, "shop", "live").await, json!(3));
    assert_eq!(
        t.ok(
            "aliases/describe",
            json!({"dbName": "shop", "aliasName": "live"})
        )
        .await["collectionName"],
        json!("c")
    );
    assert_eq!(
        t.ok("aliases/list", json!({"dbName": "shop"})).await,
        json!(["live"])
    );
    assert_eq!(
        t.ok(
            "collections/describe",
            json!({"dbName": "shop", "collectionName": "live"})
        )
        .await["aliases"],
        json!(["live"])
    );
    let (s, v) = t
        .post(
            "collections/drop",
            json!({"dbName": "shop", "collectionName": "c"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("has aliases"),
        "{v}"
    );
    let (s, v) = t.post("databases/drop", json!({"dbName": "shop"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("not empty"), "{v}");
    // Unknown database: 404 with Milvus's code 800.
    let (s, v) = t.post("collections/list", json!({"dbName": "nope"})).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!(800)),
        "{v}"
    );
    t.ok(
        "aliases/drop",
        json!({"dbName": "shop", "aliasName": "live"}),
    )
    .await;
    t.ok(
        "collections/drop",
        json!({"dbName": "shop", "collectionName": "c"}),
    )
    .await;
    t.ok("databases/drop", json!({"dbName": "shop"})).await;
    assert_eq!(t.ok("databases/list", json!({})).await, json!(["default"]));
    t.healthy().await;
}

pub async fn partition_key_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "k", "params": {"partitionsNum": 3}, "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "tag", "dataType": "VarChar", "isPartitionKey": true, "elementTypeParams": {"max_length": 8}},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}}], "enableDynamicField": true},
            "indexParams": [{"fieldName": "vector", "metricType": "L2"}]}),
    )
    .await;
    assert_eq!(
        t.ok("partitions/list", json!({"collectionName": "k"}))
            .await,
        json!(["_default_0", "_default_1", "_default_2"])
    );
    let d = t
        .ok("collections/describe", json!({"collectionName": "k"}))
        .await;
    assert_eq!(d["fields"][1]["partitionKey"], json!(true));
    t.ok(
        "entities/insert",
        json!({"collectionName": "k", "data": rows(30)}),
    )
    .await;
    for tag in ["t0", "t1", "t2"] {
        let n = t
            .ok(
                "entities/query",
                json!({"collectionName": "k", "filter": format!("tag == '{tag}'"), "outputFields": ["count(*)"]}),
            )
            .await;
        assert_eq!(n[0]["count(*)"], json!(10), "{tag}");
    }
    let (s, v) = t
        .post(
            "partitions/create",
            json!({"collectionName": "k", "partitionName": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("partition key 'tag'"),
        "{v}"
    );
}

pub async fn sparse_vectors_and_hybrid_search_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "h", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "dense", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}},
            {"fieldName": "sp", "dataType": "SparseFloatVector"},
            {"fieldName": "n", "dataType": "Int64"}]},
            "indexParams": [
                {"fieldName": "dense", "metricType": "L2", "indexType": "FLAT"},
                {"fieldName": "sp", "metricType": "IP", "indexType": "SPARSE_INVERTED_INDEX", "params": {"inverted_index_algo": "DAAT_MAXSCORE"}}]}),
    )
    .await;
    let rows: Vec<Value> = (0..40).map(hybrid_row).collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "h", "data": rows}),
    )
    .await;
    let d = t
        .ok("collections/describe", json!({"collectionName": "h"}))
        .await;
    assert!(d.to_string().contains("SparseFloatVector"), "{d}");
    let idx = t
        .ok(
            "indexes/describe",
            json!({"collectionName": "h", "indexName": "sp"}),
        )
        .await;
    assert_eq!(idx[0]["indexType"], json!("SPARSE_INVERTED_INDEX"), "{idx}");

    // Sparse search: IP over the shared indices, best first; rows come back as maps.
    let q = json!({"3": 2.0, "12": 1.0});
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "h", "annsField": "sp", "data": [q], "limit": 5, "outputFields": ["sp"], "consistencyLevel": "Strong"}),
        )
        .await;
    let score = |i: i64| -> Option<f32> {
        let (a, b) = ((i % 7) as u32, 10 + (i % 5) as u32);
        let va = 1.0 + i as f32 / 10.0;
        let s = (if a == 3 { 2.0 * va } else { 0.0 }) + (if b == 12 { 1.0 * 0.5 } else { 0.0 });
        (a == 3 || b == 12).then_some(s)
    };
    let mut want: Vec<(i64, f32)> = (0..40).filter_map(|i| score(i).map(|s| (i, s))).collect();
    want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    let got: Vec<(i64, f32)> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_i64().unwrap(),
                h["distance"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "{got:?} vs {want:?}");
        assert!((g.1 - w.1).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    let first = &hits[0]["sp"];
    assert!(
        first.is_object() && first.get("indices").is_none(),
        "{first}"
    );

    // Hybrid: RRF of a dense and a sparse search equals the fusion computed here.
    let dense_q = json!([[3.0, 1.0, 0.0, 0.5]]);
    let sub = |field: &str, data: Value, limit: usize| json!({"annsField": field, "data": data, "limit": limit});
    let ids_of = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_i64().unwrap())
            .collect()
    };
    let dense_ids = ids_of(
        &t.ok(
            "entities/search",
            json!({"collectionName": "h", "annsField": "dense", "data": dense_q, "limit": 10}),
        )
        .await,
    );
    let sparse_ids = ids_of(
        &t.ok(
            "entities/search",
            json!({"collectionName": "h", "annsField": "sp", "data": [q], "limit": 10}),
        )
        .await,
    );
    let mut rrf: std::collections::HashMap<i64, f64> = Default::default();
    for list in [&dense_ids, &sparse_ids] {
        for (r, id) in list.iter().enumerate() {
            *rrf.entry(*id).or_default() += 1.0 / (60.0 + r as f64 + 1.0);
        }
    }
    let mut fused: Vec<(i64, f64)> = rrf.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let body = |limit: usize, offset: usize| {
        json!({"collectionName": "h", "search": [sub("dense", dense_q.clone(), 10), sub("sp", json!([q.clone()]), 10)],
               "rerank": {"strategy": "rrf", "params": {"k": 60}}, "limit": limit, "offset": offset, "outputFields": ["n"]})
    };
    let all = t.ok("entities/hybrid_search", body(12, 0)).await;
    assert_eq!(
        ids_of(&all),
        fused.iter().take(12).map(|f| f.0).collect::<Vec<_>>()
    );
    for (h, f) in all.as_array().unwrap().iter().zip(&fused) {
        assert!(
            (h["distance"].as_f64().unwrap() - f.1).abs() < 1e-6,
            "{h} vs {f:?}"
        );
        assert_eq!(h["n"], json!(f.0 % 4));
    }
    // Pages are slices of one ranking.
    let p1 = ids_of(&t.ok("entities/hybrid_search", body(6, 0)).await);
    let p2 = ids_of(&t.ok("entities/hybrid_search", body(6, 6)).await);
    assert_eq!([p1, p2].concat(), ids_of(&all));

    // Weighted ("ws" too): weight 1 on the sparse search, 0 on the dense one, ranks as
    // the sparse search alone.
    for strategy in ["weighted", "ws"] {
        let w = t
            .ok(
                "entities/hybrid_search",
                json!({"collectionName": "h", "search": [sub("dense", dense_q.clone(), 10), sub("sp", json!([q.clone()]), 10)],
                       "rerank": {"strategy": strategy, "params": {"weights": [0.0, 1.0]}}, "limit": 5}),
            )
            .await;
        assert_eq!(ids_of(&w), sparse_ids[..5].to_vec());
        let top = want[0].1 as f64;
        assert!(
            (w[0]["distance"].as_f64().unwrap() - (0.5 + top.atan() / std::f64::consts::PI)).abs()
                < 1e-5,
            "{w}"
        );
    }
    // A filter on one sub-search applies to it only.
    let filtered = t
        .ok(
            "entities/hybrid_search",
            json!({"collectionName": "h", "search": [{"annsField": "sp", "data": [q.clone()], "limit": 10, "filter": "n == 1"}],
                   "rerank": {"strategy": "rrf"}, "limit": 10, "outputFields": ["n"]}),
        )
        .await;
    assert!(!filtered.as_array().unwrap().is_empty());
    assert!(
        filtered
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["n"] == json!(1)),
        "{filtered}"
    );

    // Bad input: a 400 naming the problem, nothing else happens.
    let many: Vec<Value> = (0..17).map(|_| sub("sp", json!([q.clone()]), 3)).collect();
    for (body, want) in [
        (
            json!({"collectionName": "h", "search": [], "rerank": {"strategy": "rrf"}}),
            "1 to 16 sub-searches",
        ),
        (
            json!({"collectionName": "h", "search": many, "rerank": {"strategy": "rrf"}}),
            "got 17",
        ),
        (
            json!({"collectionName": "h", "search": [sub("sp", json!([q.clone()]), 3)]}),
            "needs 'rerank'",
        ),
        (
            json!({"collectionName": "h", "search": [sub("sp", json!([q.clone()]), 3)], "rerank": {"strategy": "best"}}),
            "unknown rerank strategy",
        ),
        (
            json!({"collectionName": "h", "search": [sub("sp", json!([q.clone()]), 3)], "rerank": {"strategy": "weighted", "params": {"weights": [0.5, 0.5]}}}),
            "2 weights for 1",
        ),
        (
            json!({"collectionName": "h", "search": [sub("sp", json!([q.clone()]), 3)], "rerank": {"strategy": "weighted", "params": {"weights": [2.0]}}}),
            "[0, 1]",
        ),
        (
            json!({"collectionName": "h", "search": [sub("nope", json!([q.clone()]), 3)], "rerank": {"strategy": "rrf"}}),
            "nope",
        ),
        (
            json!({"collectionName": "h", "search": [sub("sp", json!([{"-4": 1.0}]), 3)], "rerank": {"strategy": "rrf"}}),
            "sub-search 0: query 0: sparse index -4 is negative",
        ),
        (
            json!({"collectionName": "h", "search": [sub("dense", json!([{"4": 1.0}]), 3)], "rerank": {"strategy": "rrf"}}),
            "is a FloatVector",
        ),
    ] {
        let (s, v) = t.post("entities/hybrid_search", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(want),
            "{body}: {v}"
        );
    }
    for (row, want) in [
        (
            json!({"id": 100, "dense": [0.0, 0.0, 0.0, 0.0], "sp": {"1": 1.0, "01": 2.0}, "n": 0}),
            "appears more than once",
        ),
        (
            json!({"id": 100, "dense": [0.0, 0.0, 0.0, 0.0], "sp": "text", "n": 0}),
            "must be an object",
        ),
    ] {
        let (s, v) = t
            .post(
                "entities/insert",
                json!({"collectionName": "h", "data": [row]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap_or("").contains(want), "{v}");
    }
    let n = t
        .ok(
            "entities/query",
            json!({"collectionName": "h", "filter": "", "outputFields": ["count(*)"]}),
        )
        .await;
    assert_eq!(n[0]["count(*)"], json!(40));
    t.healthy().await;
}

pub async fn bm25_full_text_search_over_rest(t: &T) {
    let create = |analyzer: Value, metric: &str| {
        json!({"collectionName": "kb", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 500, "enable_analyzer": true, "enable_match": true, "analyzer_params": analyzer}},
            {"fieldName": "sparse", "dataType": "SparseFloatVector"},
            {"fieldName": "dense", "dataType": "FloatVector", "elementTypeParams": {"dim": 2}}],
            "functions": [{"name": "bm", "type": "BM25", "inputFieldNames": ["text"], "outputFieldNames": ["sparse"], "params": {}}]},
            "indexParams": [{"fieldName": "sparse", "metricType": metric, "indexType": "SPARSE_INVERTED_INDEX", "params": {"bm25_k1": 1.2, "bm25_b": 0.75}},
                            {"fieldName": "dense", "metricType": "L2", "indexType": "FLAT"}]})
    };
    // Bad analyzers and metrics: a 400 naming them, nothing created.
    for (body, want) in [
        (create(json!({"type": "klingon"}), "BM25"), "klingon"),
        (
            create(
                json!({"tokenizer": "standard", "filter": ["shout"]}),
                "BM25",
            ),
            "shout",
        ),
        (create(json!({"type": "english"}), "IP"), "metric BM25"),
    ] {
        let (s, v) = t.post("collections/create", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap_or("").contains(want), "{v}");
    }
    t.ok(
        "collections/create",
        create(json!({"type": "english"}), "BM25"),
    )
    .await;
    let d = t
        .ok("collections/describe", json!({"collectionName": "kb"}))
        .await;
    assert!(d.to_string().contains("enable_analyzer"), "{d}");
    let docs = [
        "Magpie searches vectors and text",
        "The quick brown fox jumps over the lazy dog",
        "Sparse vectors make keyword search exact",
        "Dogs and foxes are animals",
    ];
    let rows: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"id": i, "text": d, "dense": [i as f32, 0.0]}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "kb", "data": rows}),
    )
    .await;
    // Stemming: "searching" and "vector" find "searches" and "vectors".
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "kb", "annsField": "sparse", "data": ["searching vector"], "limit": 3, "outputFields": ["text"]}),
        )
        .await;
    let ids: Vec<i64> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids[..2], [0, 2], "{hits}");
    assert!(hits[0]["distance"].as_f64().unwrap() > hits[1]["distance"].as_f64().unwrap());
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "kb", "annsField": "sparse", "data": ["fox dog"], "limit": 5}),
        )
        .await;
    let mut ids: Vec<i64> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 3], "{hits}");
    // TEXT_MATCH and PHRASE_MATCH filter on the analyzed terms.
    let rows = t
        .ok(
            "entities/query",
            json!({"collectionName": "kb", "filter": "TEXT_MATCH(text, 'foxes')", "outputFields": ["id"]}),
        )
        .await;
    let mut ids: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 3], "{rows}");
    let rows = t
        .ok(
            "entities/query",
            json!({"collectionName": "kb", "filter": "PHRASE_MATCH(text, 'quick fox', 1)", "outputFields": ["id"]}),
        )
        .await;
    assert_eq!(rows, json!([{"id": 1}]), "{rows}");
    // Text and dense queries in one hybrid search.
    let fused = t
        .ok(
            "entities/hybrid_search",
            json!({"collectionName": "kb", "search": [
                {"annsField": "sparse", "data": ["keyword search"], "limit": 4},
                {"annsField": "dense", "data": [[2.0, 0.0]], "limit": 4}],
                "rerank": {"strategy": "rrf"}, "limit": 2}),
        )
        .await;
    assert_eq!(fused[0]["id"], json!(2), "{fused}");
    // The BM25 output cannot be written, and text search needs the BM25 field.
    let (s, v) = t
        .post(
            "entities/insert",
            json!({"collectionName": "kb", "data": [{"id": 9, "text": "x", "sparse": {"1": 1.0}, "dense": [0.0, 0.0]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("computed by function 'bm'"),
        "{v}"
    );
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "kb", "annsField": "sparse", "data": [{"1": 1.0}], "limit": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("search it with texts"),
        "{v}"
    );
    t.healthy().await;
}

/// The `chinese` analyzer (jieba word segmentation): a BM25 search in Chinese finds the
/// document with the word, and TEXT_MATCH matches segmented words.
pub async fn bm25_in_chinese_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "zh", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 500, "enable_analyzer": true, "enable_match": true, "analyzer_params": {"type": "chinese"}}},
            {"fieldName": "sparse", "dataType": "SparseFloatVector"}],
            "functions": [{"name": "bm", "type": "BM25", "inputFieldNames": ["text"], "outputFieldNames": ["sparse"], "params": {}}]},
            "indexParams": [{"fieldName": "sparse", "metricType": "BM25", "indexType": "SPARSE_INVERTED_INDEX"}]}),
    )
    .await;
    let docs = [
        "我来到北京清华大学",
        "向量数据库支持全文检索",
        "今天天气很好，我们去公园散步",
    ];
    let rows: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"id": i, "text": d}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "zh", "data": rows}),
    )
    .await;
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|h| h["id"].as_i64().unwrap())
            .collect()
    };
    for (q, want) in [("清华大学在哪里", 0), ("全文检索", 1), ("公园", 2)] {
        let v = t
            .ok("entities/search", json!({"collectionName": "zh", "annsField": "sparse", "data": [q], "limit": 3, "consistencyLevel": "Strong"}))
            .await;
        assert_eq!(ids(&v).first(), Some(&want), "{q}: {v}");
    }
    let v = t
        .ok("entities/query", json!({"collectionName": "zh", "filter": "TEXT_MATCH(text, '数据库')", "outputFields": ["id"], "consistencyLevel": "Strong"}))
        .await;
    assert_eq!(ids(&v), [1], "{v}");
}

/// Decay and boost rerankers (`functionScore`) on search and hybrid search: scores follow
/// the formulas, pages are slices of one reranked list, bad functions are named.
pub async fn decay_and_boost_rerankers_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "news", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": 2}},
            {"fieldName": "w", "dataType": "FloatVector", "elementTypeParams": {"dim": 2}},
            {"fieldName": "ts", "dataType": "Int64"},
            {"fieldName": "tag", "dataType": "VarChar", "elementTypeParams": {"max_length": 16}}]},
            "indexParams": [{"fieldName": "v", "metricType": "IP", "indexType": "FLAT"},
                            {"fieldName": "w", "metricType": "L2", "indexType": "FLAT"}]}),
    )
    .await;
    // Row i: similarity to the query (1, 0) is 1 - i/100; its timestamp is 10·i.
    let rows: Vec<Value> = (0..20)
        .map(|i| {
            let s = 1.0 - i as f32 / 100.0;
            json!({"id": i, "v": [s, 0.0], "w": [i as f32, 0.0], "ts": 10 * i,
                "tag": if i % 5 == 0 { "hot" } else { "plain" }})
        })
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "news", "data": rows}),
    )
    .await;
    let decay = json!({"name": "fresh", "type": "Rerank", "inputFieldNames": ["ts"],
        "params": {"reranker": "decay", "function": "gauss", "origin": 190, "scale": 50, "offset": 0, "decay": 0.5}});
    let search = |fs: Value, limit: usize, offset: usize| {
        json!({"collectionName": "news", "annsField": "v", "data": [[1.0, 0.0]], "limit": limit,
            "offset": offset, "outputFields": ["tag"], "consistencyLevel": "Strong", "functionScore": fs})
    };
    let v = t
        .ok(
            "entities/search",
            search(json!({"functions": [decay.clone()]}), 20, 0),
        )
        .await;
    let hits = v.as_array().unwrap();
    // Expected: similarity × gauss(ts), sorted.
    let gauss = |ts: f64| {
        let sigma2 = -50.0f64 * 50.0 / (2.0 * 0.5f64.ln());
        (-(ts - 190.0).powi(2) / (2.0 * sigma2)).exp()
    };
    let mut want: Vec<(i64, f64)> = (0..20)
        .map(|i| (i, (1.0 - i as f64 / 100.0) * gauss(10.0 * i as f64)))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (h, (id, s)) in hits.iter().zip(&want) {
        assert_eq!(h["id"].as_i64(), Some(*id), "{v}");
        assert!(
            (h["distance"].as_f64().unwrap() - s).abs() < 1e-5,
            "{h} vs {s}"
        );
        assert!(
            h.get("ts").is_none(),
            "the decay field is not returned unless asked: {h}"
        );
    }
    assert_eq!(hits[0]["id"], json!(19), "the newest row wins: {v}");
    // Pages are slices of the same reranked list.
    let p2 = t
        .ok(
            "entities/search",
            search(json!({"functions": [decay.clone()]}), 5, 5),
        )
        .await;
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(&p2),
        want[5..10].iter().map(|w| w.0).collect::<Vec<_>>()
    );
    // Boost: rows tagged hot ×3, others as they are (summed with the decay would add).
    let boost = json!({"name": "hot", "type": "Rerank", "params": {"reranker": "boost", "filter": "tag == \"hot\"", "weight": 3}});
    let v = t
        .ok(
            "entities/search",
            search(json!({"functions": [boost.clone()]}), 4, 0),
        )
        .await;
    assert_eq!(ids(&v), [0, 5, 10, 15], "{v}");
    assert!(
        (v[1]["distance"].as_f64().unwrap() - 3.0 * 0.95).abs() < 1e-5,
        "{v}"
    );
    // Two functions summed, added to the score.
    let v = t
        .ok("entities/search", search(json!({"functions": [decay.clone(), boost.clone()], "params": {"function_mode": "sum", "boost_mode": "sum"}}), 1, 0))
        .await;
    let top = v[0]["id"].as_i64().unwrap();
    let s = |i: i64| {
        1.0 - i as f64 / 100.0 + gauss(10.0 * i as f64) + if i % 5 == 0 { 3.0 } else { 0.0 }
    };
    let best = (0..20).max_by(|a, b| s(*a).total_cmp(&s(*b))).unwrap();
    assert_eq!(top, best, "{v}");
    assert!(
        (v[0]["distance"].as_f64().unwrap() - s(best)).abs() < 1e-5,
        "{v}"
    );

    // L2 scores become 1 - 2·atan(d)/π before the decay.
    let v = t
        .ok(
            "entities/search",
            json!({"collectionName": "news", "annsField": "w", "data": [[0.0, 0.0]], "limit": 1,
            "consistencyLevel": "Strong", "functionScore": {"functions": [decay.clone()]}}),
        )
        .await;
    let i = v[0]["id"].as_i64().unwrap();
    let l2 = |i: i64| {
        (1.0 - 2.0 * ((i * i) as f64).atan() / std::f64::consts::PI) * gauss(10.0 * i as f64)
    };
    let best = (0..20).max_by(|a, b| l2(*a).total_cmp(&l2(*b))).unwrap();
    assert_eq!(i, best, "{v}");

    // Hybrid: functions alone fuse by the best normalised score; with rrf, after fusion.
    let sub = |f: &str, q: Value| json!({"annsField": f, "data": [q], "limit": 20});
    let v = t
        .ok("entities/hybrid_search", json!({"collectionName": "news", "search": [sub("v", json!([1.0, 0.0])), sub("w", json!([0.0, 0.0]))],
            "limit": 3, "consistencyLevel": "Strong", "functionScore": {"functions": [decay.clone()]}}))
        .await;
    let hy = |i: i64| {
        (1.0 - i as f64 / 100.0).max(1.0 - 2.0 * ((i * i) as f64).atan() / std::f64::consts::PI)
            * gauss(10.0 * i as f64)
    };
    let mut want: Vec<i64> = (0..20).collect();
    want.sort_by(|a, b| hy(*b).total_cmp(&hy(*a)));
    assert_eq!(ids(&v), want[..3], "{v}");
    let v = t
        .ok("entities/hybrid_search", json!({"collectionName": "news", "search": [sub("v", json!([1.0, 0.0])), sub("w", json!([0.0, 0.0]))],
            "rerank": {"strategy": "rrf", "params": {"k": 60}}, "limit": 2, "consistencyLevel": "Strong",
            "functionScore": {"functions": [boost.clone()]}}))
        .await;
    assert_eq!(ids(&v), [0, 5], "{v}");

    // Bad input: a 400 naming the problem.
    for (body, want) in [
        (
            search(
                json!({"functions": [{"name": "d", "type": "Rerank", "inputFieldNames": ["tag"],
            "params": {"reranker": "decay", "function": "gauss", "origin": 0, "scale": 1}}]}),
                5,
                0,
            ),
            "must be numeric",
        ),
        (
            search(
                json!({"functions": [{"name": "d", "type": "Rerank", "inputFieldNames": ["nosuch"],
            "params": {"reranker": "decay", "function": "gauss", "origin": 0, "scale": 1}}]}),
                5,
                0,
            ),
            "'nosuch' does not exist",
        ),
        (
            search(
                json!({"functions": [{"name": "b", "type": "Rerank", "params": {"reranker": "boost", "filter": "tag ==", "weight": 2}}]}),
                5,
                0,
            ),
            "boost ranker's filter",
        ),
        (search(json!({"functions": []}), 5, 0), "1 to 8 functions"),
        (
            search(json!({"functions": [decay.clone()], "mode": 1}), 5, 0),
            "no 'mode'",
        ),
        (search(json!([decay.clone()]), 5, 0), "must be an object"),
    ] {
        let (s, v) = t.post("entities/search", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{want}: {v}");
    }
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "news", "annsField": "v", "data": [[1.0, 0.0]], "limit": 3,
            "groupingField": "tag", "functionScore": {"functions": [decay.clone()]}}),
        )
        .await;
    assert!(
        s == StatusCode::BAD_REQUEST && v["message"].as_str().unwrap().contains("grouped"),
        "{v}"
    );
    let (s, v) = t
        .post(
            "entities/hybrid_search",
            json!({"collectionName": "news", "search": [sub("v", json!([1.0, 0.0]))], "limit": 3}),
        )
        .await;
    assert!(
        s == StatusCode::BAD_REQUEST && v["message"].as_str().unwrap().contains("rerank"),
        "{v}"
    );
    t.healthy().await;
}

pub async fn half_precision_vectors_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "h", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "f16", "dataType": "Float16Vector", "elementTypeParams": {"dim": 3}},
            {"fieldName": "bf16", "dataType": "BFloat16Vector", "elementTypeParams": {"dim": 3}}]},
            "indexParams": [
                {"fieldName": "f16", "metricType": "L2", "indexType": "HNSW"},
                {"fieldName": "bf16", "metricType": "COSINE", "indexType": "FLAT"}]}),
    )
    .await;
    let d = t
        .ok("collections/describe", json!({"collectionName": "h"}))
        .await;
    let s = d.to_string();
    assert!(
        s.contains("Float16Vector") && s.contains("BFloat16Vector"),
        "{d}"
    );
    // 0.1 is not a half-precision value: what comes back is its rounding to each type.
    let rows: Vec<Value> = (0..20)
        .map(|i| json!({"id": i, "f16": [0.1, i as f32, 1.0], "bf16": [0.1, i as f32, 1.0]}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "h", "data": rows}),
    )
    .await;
    let r = t
        .ok(
            "entities/query",
            json!({"collectionName": "h", "filter": "id == 5", "outputFields": ["f16", "bf16"], "consistencyLevel": "Strong"}),
        )
        .await;
    assert_eq!(r[0]["f16"], json!([0.0999755859375, 5.0, 1.0]), "{r}");
    assert_eq!(r[0]["bf16"], json!([0.10009765625, 5.0, 1.0]), "{r}");
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "h", "annsField": "f16", "data": [[0.1, 7.2, 1.0]], "limit": 2, "consistencyLevel": "Strong"}),
        )
        .await;
    assert_eq!(hits[0]["id"], json!(7), "{hits}");
    let want = (0.1f32 - 0.099_975_586).powi(2) + 0.2f32.powi(2);
    assert!(
        (hits[0]["distance"].as_f64().unwrap() as f32 - want).abs() < 1e-5,
        "{hits}"
    );
    // Out of float16's range: a 400 naming the row, the field and the element.
    let (s, v) = t
        .post(
            "entities/insert",
            json!({"collectionName": "h", "data": [{"id": 100, "f16": [1.0, 65520.0, 0.0], "bf16": [1.0, 65520.0, 0.0]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("'f16'") && m.contains("element 1") && m.contains("outside the range"),
        "{v}"
    );
    let c = t
        .ok(
            "entities/query",
            json!({"collectionName": "h", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}),
        )
        .await;
    assert_eq!(c[0]["count(*)"], json!(20), "nothing written: {c}");
}

pub async fn binary_vectors_over_rest(t: &T) {
    t.ok(
        "collections/create",
        json!({"collectionName": "b", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "bits", "dataType": "BinaryVector", "elementTypeParams": {"dim": 16}}]},
            "indexParams": [{"fieldName": "bits", "metricType": "HAMMING", "indexType": "BIN_IVF_FLAT", "params": {"nlist": 4}}]}),
    )
    .await;
    // Two bytes per row; row i is [i, 255 - i].
    let rows: Vec<Value> = (0..64)
        .map(|i| json!({"id": i, "bits": [i, 255 - i]}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "b", "data": rows}),
    )
    .await;
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "b", "data": [[5, 250]], "limit": 3, "outputFields": ["bits"], "consistencyLevel": "Strong"}),
        )
        .await;
    assert_eq!(hits[0]["id"], json!(5), "{hits}");
    assert_eq!(hits[0]["distance"], json!(0.0), "{hits}");
    assert_eq!(hits[0]["bits"], json!([5, 250]), "{hits}");
    // The nearest others (rows 1, 4 and 7) differ from [5, 250] in one bit per byte.
    for h in hits.as_array().unwrap() {
        let i = h["id"].as_i64().unwrap() as u8;
        let d = (i ^ 5).count_ones() + ((255 - i) ^ 250).count_ones();
        assert_eq!(h["distance"], json!(d as f64), "{hits}");
    }
    assert_eq!(hits[1]["distance"], json!(2.0), "{hits}");
    for (body, frag) in [
        (
            json!({"collectionName": "b", "data": [{"id": 100, "bits": [1, 300]}]}),
            "byte 1",
        ),
        (
            json!({"collectionName": "b", "data": [{"id": 100, "bits": [1]}]}),
            "dimension 1",
        ),
    ] {
        let (s, v) = t.post("entities/insert", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["message"].as_str().unwrap_or_default().contains(frag),
            "{v}"
        );
    }
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "b", "data": [[1, 2, 3]], "limit": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("16 bits"),
        "{v}"
    );
    let (s, v) = t
        .post(
            "indexes/create",
            json!({"collectionName": "b", "indexParams": [{"fieldName": "bits", "metricType": "L2", "indexType": "BIN_FLAT"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t
        .post(
            "collections/create",
            json!({"collectionName": "b2", "schema": {"fields": [
                {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
                {"fieldName": "bits", "dataType": "BinaryVector", "elementTypeParams": {"dim": 12}}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("multiple of 8"),
        "{v}"
    );
    // An index that names no metric gets Milvus's default for binary fields, HAMMING,
    // on create and on indexes/create.
    t.ok(
        "collections/create",
        json!({"collectionName": "b3", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "bits", "dataType": "BinaryVector", "elementTypeParams": {"dim": 8}}]},
            "indexParams": [{"fieldName": "bits", "indexType": "BIN_FLAT"}]}),
    )
    .await;
    let d = t
        .ok(
            "indexes/describe",
            json!({"collectionName": "b3", "indexName": "bits"}),
        )
        .await;
    assert_eq!(d[0]["metricType"], json!("HAMMING"), "{d}");
    t.ok(
        "indexes/drop",
        json!({"collectionName": "b3", "indexName": "bits"}),
    )
    .await;
    t.ok(
        "indexes/create",
        json!({"collectionName": "b3", "indexParams": [{"fieldName": "bits", "indexType": "AUTOINDEX"}]}),
    )
    .await;
    let d = t
        .ok(
            "indexes/describe",
            json!({"collectionName": "b3", "indexName": "bits"}),
        )
        .await;
    assert_eq!(d[0]["metricType"], json!("HAMMING"), "{d}");
}

pub fn rows(n: i64) -> Value {
    Value::Array((0..n).map(|i| json!({"id": i, "vector": [i as f32, 1.0, 0.0, 0.5], "age": i % 10, "tag": format!("t{}", i % 3)})).collect())
}

pub async fn count_in(t: &T, db: &str, coll: &str) -> Value {
    t.ok(
        "entities/query",
        json!({"dbName": db, "collectionName": coll, "filter": "", "outputFields": ["count(*)"]}),
    )
    .await[0]["count(*)"]
        .clone()
}

/// Row `i` of the hybrid collection: a dense vector and a sparse one (both JSON forms).
pub fn hybrid_row(i: i64) -> Value {
    let a = (i % 7) as u32;
    let b = 10 + (i % 5) as u32;
    let sp = if i % 2 == 0 {
        json!({a.to_string(): 1.0 + i as f32 / 10.0, b.to_string(): 0.5})
    } else {
        json!({"indices": [a, b], "values": [1.0 + i as f32 / 10.0, 0.5]})
    };
    json!({"id": i, "dense": [i as f32, 1.0, 0.0, 0.5], "sp": sp, "n": i % 4})
}
