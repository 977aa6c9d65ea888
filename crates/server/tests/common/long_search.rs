//! A search that runs for seconds, for the tests of time limits and clients that go
//! away (server `inline.rs`): a collection of 100,000 growing 128-d rows, scanned
//! exactly, and 1,024 queries; and the counters of `/metrics` that show what happened.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::Request;
use magpie_engine::{Engine, EngineConfig};
use magpie_server::{router, AppState};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

/// A server whose collection "c" holds 100,000 growing 128-d rows (scanned exactly, no
/// index), and `/metrics`' cancelled and running searches. [`body`] asks it
/// for the top 10 of 1,024 queries: about 13 G multiply-adds, seconds on two cores.
pub fn server(inline: magpie_server::inline::InlineGate) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let schema = magpie_engine::CollectionSchema {
        fields: vec![
            magpie_engine::FieldSchema::new("id", magpie_engine::DataType::Int64).primary(false),
            magpie_engine::FieldSchema::new("vec", magpie_engine::DataType::FloatVector)
                .with_dim(128),
        ],
        enable_dynamic_field: false,
        description: String::new(),
        functions: Vec::new(),
    };
    engine
        .create_collection(
            "c",
            schema,
            Vec::new(),
            magpie_engine::Consistency::Eventually,
            "",
        )
        .unwrap();
    let mut x = 1u64;
    for b in 0..10 {
        let rows: Vec<Value> = (0..10_000).map(|i| json!({"id": b * 10_000 + i})).collect();
        let v: Vec<f32> = (0..10_000 * 128).map(|_| lcg(&mut x)).collect();
        engine
            .write_columns("c", None, &rows, &[("vec".into(), v)], false)
            .unwrap();
    }
    let st = Arc::new(AppState {
        engine,
        metrics: Default::default(),
        token: None,
        images: None,
        allowed_hosts: None,
        backups: None,
        inline,
    });
    (router(st, 64 << 20), dir)
}

/// Pseudo-random floats in [0, 1).
fn lcg(x: &mut u64) -> f32 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*x >> 40) as f32 / (1u64 << 24) as f32
}

/// The 1,024 queries of a long search.
pub fn queries() -> Vec<Vec<f32>> {
    let mut x = 7u64;
    (0..1024)
        .map(|_| (0..128).map(|_| lcg(&mut x)).collect())
        .collect()
}

/// The REST body of a long search.
pub fn body() -> String {
    json!({"collectionName": "c", "data": queries(), "limit": 10}).to_string()
}

/// POSTs `body` to `path`, which must answer 408; its message.
pub async fn post_past_limit(app: &axum::Router, path: &str, body: String) -> String {
    let resp = app
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        axum::http::StatusCode::REQUEST_TIMEOUT,
        "{path}"
    );
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    body["message"].as_str().unwrap().to_string()
}

/// The text of `/metrics`.
pub async fn metrics_text(app: &axum::Router) -> String {
    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

/// The value of the unlabelled metric `name` in /metrics' `text`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `magpie_searches_cancelled_total` and `magpie_searches_running` from /metrics.
pub async fn cancel_counters(app: &axum::Router) -> (u64, u64) {
    let text = metrics_text(app).await;
    (
        metric(&text, "magpie_searches_cancelled_total"),
        metric(&text, "magpie_searches_running"),
    )
}

/// A query that runs for a long time on [`server`]'s collection: every one of its
/// 100,000 rows with its vector (about 1.3 KB of JSON each, so the output budget of
/// 64 MiB stops it after some 50,000 rows if nothing else does), as REST's body.
pub fn long_query_body() -> String {
    json!({"collectionName": "c", "filter": "id >= 0", "outputFields": ["id", "vec"]}).to_string()
}

/// Polls /metrics every 10 ms until `magpie_queries_cancelled_total` is `want`; fails
/// after a minute, naming `what`.
pub async fn wait_for_queries_cancelled(app: &axum::Router, what: &str, want: u64) {
    let t0 = std::time::Instant::now();
    loop {
        let n = metric(&metrics_text(app).await, "magpie_queries_cancelled_total");
        if n == want {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{what}: queries cancelled still {n}, not {want}, after a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Polls /metrics every 10 ms until `want` holds of the (cancelled, running) counters;
/// fails after a minute, naming `what`.
pub async fn wait_for_counters(app: &axum::Router, what: &str, want: impl Fn((u64, u64)) -> bool) {
    let t0 = std::time::Instant::now();
    loop {
        let c = cancel_counters(app).await;
        if want(c) {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{what}: (cancelled, running) still {c:?} after a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
