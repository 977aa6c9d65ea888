//! Every endpoint through the router, plus the bad-input classes: each gets a JSON error
//! with a 4xx status, and /healthz still answers afterwards.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use magpie_engine::{Engine, EngineConfig};
use magpie_server::{router, AppState};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

#[path = "common/rest_suite.rs"]
mod suite;

#[path = "common/long_search.rs"]
mod long_search;

use suite::T;

fn setup(token: Option<&str>, max_body: usize) -> T {
    setup_with(token, max_body, EngineConfig::default())
}

fn setup_with(token: Option<&str>, max_body: usize, cfg: EngineConfig) -> T {
    setup_app(token, max_body, cfg).0
}

/// A standalone router over a fresh engine, and a [`T`] that sends requests to it.
fn setup_app(token: Option<&str>, max_body: usize, cfg: EngineConfig) -> (T, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), cfg).unwrap());
    let st = Arc::new(AppState {
        engine,
        metrics: Default::default(),
        token: token.map(String::from),
        images: None,
        allowed_hosts: None,
        backups: None,
        inline: Default::default(),
    });
    let app = router(st, max_body);
    (local(app.clone(), max_body, dir), app)
}

/// A [`T`] that sends its requests to `app` in process; `dir` lives as long as it.
fn local(app: axum::Router, max_body: usize, dir: tempfile::TempDir) -> T {
    let send: suite::Sender = Arc::new(move |method, path, body, auth| {
        let app = app.clone();
        Box::pin(async move {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", format!("Bearer {a}"));
            }
            let resp = app
                .oneshot(req.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    });
    T::new(send, max_body, Some(Box::new(dir)))
}

#[tokio::test]
async fn every_endpoint() {
    suite::every_endpoint(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn bad_inputs_get_clear_4xx_errors() {
    suite::bad_inputs_get_clear_4xx_errors(&setup(None, 4096)).await;
}

#[tokio::test]
async fn bearer_token_and_metrics() {
    let (t, app) = setup_app(Some("s3cret"), 1 << 20, EngineConfig::default());
    let (s, v) = t.post("collections/list", json!({})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["message"].as_str().unwrap().contains("Bearer"));
    let (s, _) = t
        .raw(
            "/v2/vectordb/collections/list",
            b"{}".to_vec(),
            Some("wrong"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = t
        .raw(
            "/v2/vectordb/collections/list",
            b"{}".to_vec(),
            Some("s3cret"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.healthy().await;
    let text = long_search::metrics_text(&app).await;
    assert!(
        text.contains(
            "magpie_http_requests_total{path=\"/v2/vectordb/collections/list\",status=\"401\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains(
        "magpie_http_request_duration_seconds_count{path=\"/v2/vectordb/collections/list\"} 3"
    ));
    for g in [
        "magpie_rows",
        "magpie_segments",
        "magpie_wal_bytes",
        "magpie_disk_bytes",
        "magpie_resident_memory_bytes",
    ] {
        assert!(text.contains(&format!("\n{g} ")), "{g} missing");
    }
    assert_eq!(t.get("/").await, StatusCode::OK);
}

/// Milvus's bulk import over REST: a job from a JSON file in the import folder, its
/// progress and listing, the rows queryable once completed; bad paths and unknown jobs
/// are 400s naming the problem.
#[tokio::test]
async fn bulk_import_jobs_over_rest() {
    let t = setup(None, 1 << 20);
    t.ok(
        "collections/create",
        json!({"collectionName": "imp", "schema": {"autoId": false, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}},
            {"fieldName": "tag", "dataType": "VarChar", "elementTypeParams": {"max_length": 16}}]}}),
    )
    .await;
    let root = t.kept::<tempfile::TempDir>().unwrap().path().join("import");
    std::fs::create_dir_all(root.join("batch1")).unwrap();
    let rows: Vec<Value> = (0..2500)
        .map(
            |i| json!({"id": i, "vector": [i as f32, 1.0, 2.0, 3.0], "tag": format!("t{}", i % 5)}),
        )
        .collect();
    std::fs::write(
        root.join("batch1/rows.json"),
        serde_json::to_vec(&rows).unwrap(),
    )
    .unwrap();
    let job = t
        .ok(
            "jobs/import/create",
            json!({"collectionName": "imp", "files": [["batch1/rows.json"]]}),
        )
        .await;
    let id = job["jobId"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let p = loop {
        let p = t.ok("jobs/import/get_progress", json!({"jobId": id})).await;
        if p["state"] == json!("Completed") || p["state"] == json!("Failed") {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "{p}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(p["state"], json!("Completed"), "{p}");
    assert_eq!(
        (&p["progress"], &p["importedRows"], &p["totalRows"]),
        (&json!(100), &json!(2500), &json!(2500))
    );
    assert_eq!(p["collectionName"], json!("imp"));
    assert_eq!(p["details"][0]["fileName"], json!("batch1/rows.json"));
    assert!(p["completeTime"].as_str().unwrap().ends_with('Z'), "{p}");
    let d = t.ok("jobs/import/describe", json!({"jobId": id})).await;
    assert_eq!(d["jobId"], json!(id));
    let l = t
        .ok("jobs/import/list", json!({"collectionName": "imp"}))
        .await;
    assert_eq!(l["records"][0]["jobId"], json!(id));
    assert_eq!(l["records"][0]["state"], json!("Completed"));
    let c = t
        .ok(
            "entities/query",
            json!({"collectionName": "imp", "filter": "tag == \"t3\"", "outputFields": ["count(*)"]}),
        )
        .await;
    assert_eq!(c[0]["count(*)"], json!(500));

    for (body, status, why) in [
        (
            json!({"collectionName": "imp", "files": [["../../etc/passwd"]]}),
            StatusCode::BAD_REQUEST,
            "may not contain '..'",
        ),
        (
            json!({"collectionName": "imp", "files": [["nope.json"]]}),
            StatusCode::BAD_REQUEST,
            "not found in the import folder",
        ),
        (
            json!({"collectionName": "imp", "files": []}),
            StatusCode::BAD_REQUEST,
            "no files given",
        ),
        (
            json!({"collectionName": "nope", "files": [["batch1/rows.json"]]}),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
    ] {
        let (s, v) = t.post("jobs/import/create", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let (s, v) = t
        .post("jobs/import/get_progress", json!({"jobId": "123"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    t.healthy().await;
}

/// Rows not yet flushed are searched through the growing segment's interim graph:
/// `indexes/describe` shows the rows it covers, `searchInfo` the segments searched
/// through one and the rows still scanned exactly.
#[tokio::test]
async fn growing_rows_are_searched_through_an_interim_graph_over_rest() {
    let t = setup_with(
        None,
        1 << 20,
        EngineConfig {
            interim_min_rows: 1000,
            interim_step_rows: 200,
            index_build_threads: 2,
            ..Default::default()
        },
    );
    let dim = 8;
    t.ok(
        "collections/create",
        json!({"collectionName": "g", "schema": {"autoId": false, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": dim}}]},
          "indexParams": [{"fieldName": "vector", "indexName": "vector", "metricType": "L2",
                           "params": {"index_type": "HNSW"}}]}),
    )
    .await;
    let vec_of = |i: usize| -> Vec<f32> {
        (0..dim)
            .map(|d| ((i * 7919 + d * 104729) % 1000) as f32 / 100.0)
            .collect()
    };
    let rows: Vec<Value> = (0..2000)
        .map(|i| json!({"id": i, "vector": vec_of(i)}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "g", "data": rows}),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let d = t
            .ok(
                "indexes/describe",
                json!({"collectionName": "g", "indexName": "vector"}),
            )
            .await;
        let seg = &d[0]["segments"][0];
        assert_eq!(seg["state"], json!("growing"), "{d}");
        if seg["interimRows"] == json!(2000) {
            assert!(seg["interimBytes"].as_u64().unwrap() > 0, "{d}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no interim graph: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "g", "data": [vec_of(7)], "limit": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], json!(7));
    let info = &v["searchInfo"];
    assert_eq!(
        (
            &info["interimSegments"],
            &info["exactSegments"],
            &info["exactRows"]
        ),
        (&json!(1), &json!(0), &json!(0)),
        "{v}"
    );
    assert!(info["ef"].as_u64().is_some(), "{v}");
    // A row inserted now is found at once, scanned exactly after the graph.
    t.ok(
        "entities/insert",
        json!({"collectionName": "g", "data": [{"id": 5000, "vector": vec![0.5f32; 8]}]}),
    )
    .await;
    let v = t
        .post(
            "entities/search",
            json!({"collectionName": "g", "data": [vec![0.5f32; 8]], "limit": 1}),
        )
        .await
        .1;
    assert_eq!(v["data"][0]["id"], json!(5000), "{v}");
    assert_eq!(v["searchInfo"]["exactRows"], json!(1), "{v}");
}

#[tokio::test]
async fn ann_index_over_rest() {
    suite::ann_index_over_rest(&setup(None, 1 << 20)).await;
}

/// A TextEmbedding function over REST with the real all-MiniLM-L6-v2 (installed with
/// `magpie models fetch all-minilm-l6-v2 --dir target/magpie-models`; skipped, saying
/// so, when absent): inserts carry text, searches carry text.
#[tokio::test]
async fn text_embedding_function_with_minilm() {
    let models = magpie_testkit::models_dir();
    let store = magpie_embed::models::ModelStore::new(models);
    if let Err(e) = store.require("all-minilm-l6-v2") {
        magpie_testkit::skip("models", e);
        return;
    }
    let t = setup(None, 1 << 20);
    let create = json!({"collectionName": "docs", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 500}},
            {"fieldName": "vec", "dataType": "FloatVector", "elementTypeParams": {"dim": 384}}],
          "functions": [{"name": "minilm", "type": "TextEmbedding", "inputFieldNames": ["text"],
                         "outputFieldNames": ["vec"], "params": {"model": "sentence-transformers/all-MiniLM-L6-v2"}}]},
        "indexParams": [{"fieldName": "vec", "metricType": "COSINE", "indexType": "FLAT"}]});
    // Without models in the process the definition is refused with a clear message.
    let (s, v) = t.post("collections/create", create.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no embedding models"),
        "{v}"
    );
    let t = setup_with_models(store);
    t.ok("collections/create", create).await;
    let docs = [
        "The weather is lovely today.",
        "He drove to the stadium.",
        "A recipe for apple pie with cinnamon.",
    ];
    let rows: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"id": i, "text": d}))
        .collect();
    t.ok(
        "entities/insert",
        json!({"collectionName": "docs", "data": rows}),
    )
    .await;
    let d = t
        .ok("collections/describe", json!({"collectionName": "docs"}))
        .await;
    assert_eq!(d["functions"][0]["type"], json!("TextEmbedding"));
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "docs", "data": ["It's so sunny outside!"], "limit": 3, "outputFields": ["text"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], json!(0), "{v}");
    let top = v["data"][0]["distance"].as_f64().unwrap();
    assert!((top - 0.6660).abs() < 1e-3, "cosine {top}");
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "docs", "data": [{"image": "AAAA"}], "limit": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    t.healthy().await;
}

fn setup_with_models(store: magpie_embed::models::ModelStore) -> T {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    engine.set_embedder(Arc::new(magpie_app::embedder::ModelEmbedder::new(store)));
    let st = Arc::new(AppState {
        engine,
        metrics: Default::default(),
        token: None,
        images: None,
        allowed_hosts: None,
        backups: None,
        inline: Default::default(),
    });
    local(router(st, 1 << 20), 1 << 20, dir)
}

fn models_store() -> magpie_embed::models::ModelStore {
    magpie_embed::models::ModelStore::new(magpie_testkit::models_dir())
}

/// A server with the image app over `store`, data in a temp dir.
fn setup_images(
    store: magpie_embed::models::ModelStore,
) -> (T, Arc<magpie_server::images_api::ImageService>, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let emb = Arc::new(magpie_app::embedder::ModelEmbedder::new(store));
    engine.set_embedder(emb.clone());
    let svc = Arc::new(magpie_server::images_api::ImageService::new(
        emb,
        dir.path().to_path_buf(),
        vec![],
    ));
    let st = Arc::new(AppState {
        engine: engine.clone(),
        metrics: Default::default(),
        token: None,
        images: Some(svc.clone()),
        allowed_hosts: None,
        backups: None,
        inline: Default::default(),
    });
    (local(router(st, 1 << 20), 1 << 20, dir), svc, engine)
}

fn image_fn_collection(model: &str) -> Value {
    json!({"collectionName": "pics", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "file", "dataType": "VarChar", "elementTypeParams": {"max_length": 65535}},
            {"fieldName": "vec", "dataType": "FloatVector", "elementTypeParams": {"dim": 1280}}],
          "functions": [{"name": "lite0", "type": "ImageEmbedding", "inputFieldNames": ["file"],
                         "outputFieldNames": ["vec"], "params": {"model": model}}]},
        "indexParams": [{"fieldName": "vec", "metricType": "COSINE", "indexType": "FLAT"}]})
}

/// Without the weights: an ImageEmbedding function names the missing model and the
/// command that fetches it; unknown and text-only models are refused; the image
/// endpoints answer clearly for unknown collections and missing ids.
#[tokio::test]
async fn image_functions_and_endpoints_without_weights() {
    let d = tempfile::tempdir().unwrap();
    let (t, _svc, _) = setup_images(magpie_embed::models::ModelStore::new(d.path()));
    for (model, want) in [
        (
            "efficientnet-lite0",
            "magpie models fetch efficientnet-lite0",
        ),
        ("no-such-model", "unknown model 'no-such-model'"),
        ("all-minilm-l6-v2", "is a text model"),
    ] {
        let (s, v) = t
            .post("collections/create", image_fn_collection(model))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains(want),
            "{model}: {v}"
        );
    }
    for (ep, body, status, want) in [
        (
            "search",
            r#"{"collectionName": "nope", "text": "dog"}"#,
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "search",
            r#"{"collectionName": "nope", "text": "dog", "like": 3}"#,
            StatusCode::BAD_REQUEST,
            "exactly one of",
        ),
        (
            "search",
            r#"{"collectionName": "x", "image": "***"}"#,
            StatusCode::BAD_REQUEST,
            "not valid base64",
        ),
        (
            "search",
            r#"{"collectionName": "x", "text": "dog", "bogus": 1}"#,
            StatusCode::BAD_REQUEST,
            "bogus",
        ),
        (
            "index",
            r#"{"collectionName": "x", "folder": "/no/such/folder"}"#,
            StatusCode::FORBIDDEN,
            "not under an image root",
        ),
        (
            "dupes",
            r#"{"collectionName": "x", "threshold": 7}"#,
            StatusCode::BAD_REQUEST,
            "between 0 and 1",
        ),
    ] {
        let (s, v) = t
            .raw(&format!("/v2/images/{ep}"), body.as_bytes().to_vec(), None)
            .await;
        assert_eq!(s, status, "{body}: {v}");
        let m = v["message"].as_str().unwrap().to_lowercase();
        assert!(m.contains(want), "{body}: {v}");
    }
    assert_eq!(t.get("/images/nope/1/thumb").await, StatusCode::NOT_FOUND);
    // Image queries against a collection without an image function.
    t.ok(
        "collections/create",
        json!({"collectionName": "plain", "dimension": 4}),
    )
    .await;
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "plain", "data": [{"image": "aGVsbG8="}], "limit": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no embedding function"),
        "{v}"
    );
    t.healthy().await;
}

/// With the weights: inserts embed image paths only under the allowed roots (no path
/// traversal), data: URIs work, a corrupt image fails its row without harming the rest,
/// and search takes {"image": base64}; thumbnails and files are served by id only.
#[tokio::test]
async fn image_functions_with_lite0() {
    use base64::Engine as _;
    let store = models_store();
    if let Err(e) = store.require("efficientnet-lite0") {
        magpie_testkit::skip("models", e);
        return;
    }
    let (t, svc, _) = setup_images(store);
    t.ok(
        "collections/create",
        image_fn_collection("efficientnet-lite0"),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let red = |w: u32| {
        let img = image::RgbImage::from_fn(w, w, |x, _| image::Rgb([200, (x % 50) as u8, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    std::fs::write(root.path().join("red.png"), red(64)).unwrap();
    std::fs::write(outside.path().join("secret.png"), red(64)).unwrap();
    std::fs::write(root.path().join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
    // No roots yet: paths are refused.
    let file = root.path().join("red.png").to_str().unwrap().to_string();
    let (s, v) = t
        .post(
            "entities/insert",
            json!({"collectionName": "pics", "data": [{"id": 1, "file": file}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no image roots"),
        "{v}"
    );
    svc.embedder.add_root(root.path()).unwrap();
    t.ok(
        "entities/insert",
        json!({"collectionName": "pics", "data": [{"id": 1, "file": file}]}),
    )
    .await;
    let traversal = format!(
        "{}/../{}/secret.png",
        root.path().display(),
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for (bad, want) in [
        (
            outside
                .path()
                .join("secret.png")
                .to_str()
                .unwrap()
                .to_string(),
            "outside the image roots",
        ),
        (traversal, "outside the image roots"),
        (
            root.path().join("broken.jpg").to_str().unwrap().to_string(),
            "cannot decode",
        ),
        ("data:image/png;base64,@@@".to_string(), "bad base64"),
    ] {
        let (s, v) = t
            .post("entities/insert", json!({"collectionName": "pics", "data": [{"id": 2, "file": "data:image/png;base64,".to_string() + &base64::engine::general_purpose::STANDARD.encode(red(32))}, {"id": 3, "file": bad}]}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains(want) && m.contains("row 1"), "{want}: {v}");
    }
    // Nothing of the failed batches was written.
    let n = t
        .ok(
            "entities/query",
            json!({"collectionName": "pics", "filter": "id >= 0", "outputFields": ["count(*)"]}),
        )
        .await;
    assert_eq!(n[0]["count(*)"], json!(1));
    // Search by an uploaded image (bytes of the same picture): itself, similarity ~1.
    let q = base64::engine::general_purpose::STANDARD.encode(red(64));
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "pics", "data": [{"image": q}], "limit": 1}),
        )
        .await;
    assert_eq!(hits[0]["id"], json!(1), "{hits}");
    assert!(hits[0]["distance"].as_f64().unwrap() > 0.999, "{hits}");
    // Text cannot search a Lite0 field: the message says what can.
    let (s, v) = t
        .post(
            "entities/search",
            json!({"collectionName": "pics", "data": ["a red square"], "limit": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("embeds images only"),
        "{v}"
    );
    t.healthy().await;
}

/// CLIP through the whole stack, with the tiny generated CLIP of the embed crate's test
/// fixtures installed as `clip-vit-base-patch32`: an ImageEmbedding function embeds
/// inserted images, and searches by text and by image use the same model.
#[tokio::test]
async fn clip_image_function_with_generated_weights() {
    use base64::Engine as _;
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../embed/tests/fixtures/clip-tiny");
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("clip-vit-base-patch32");
    std::fs::create_dir_all(&dir).unwrap();
    for f in magpie_embed::clip::FILES {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let (t, _svc, _) = setup_images(magpie_embed::models::ModelStore::new(models.path()));
    let mut create = image_fn_collection("openai/clip-vit-base-patch32");
    create["schema"]["fields"][2]["elementTypeParams"]["dim"] = json!(24);
    t.ok("collections/create", create).await;
    let png = |seed: u8| {
        let img =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, seed]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    };
    let fixture_png = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(fixture.join("image.png")).unwrap());
    let rows = json!([
        {"id": 1, "file": format!("data:image/png;base64,{fixture_png}")},
        {"id": 2, "file": format!("data:image/png;base64,{}", png(0))},
        {"id": 3, "file": format!("data:image/png;base64,{}", png(255))},
    ]);
    t.ok(
        "entities/insert",
        json!({"collectionName": "pics", "data": rows}),
    )
    .await;
    // The stored vector of the fixture image is the numpy reference's.
    let got = t
        .ok(
            "entities/get",
            json!({"collectionName": "pics", "id": [1], "outputFields": ["vec"]}),
        )
        .await;
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        serde_json::from_value(got[0]["vec"].clone()).unwrap(),
        serde_json::from_value(expected["image"].clone()).unwrap(),
    );
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4),
        "{a:?} vs {b:?}"
    );
    // By image: each finds itself.
    let hits = t
        .ok(
            "entities/search",
            json!({"collectionName": "pics", "data": [{"image": png(255)}], "limit": 1}),
        )
        .await;
    assert_eq!(hits[0]["id"], json!(3), "{hits}");
    // By text: the score is the cosine of the reference text and image vectors.
    let hits = t.ok("entities/search", json!({"collectionName": "pics", "data": ["a photo of a dog"], "limit": 3, "filter": "id == 1"})).await;
    let tv: Vec<f32> =
        serde_json::from_value(expected["texts"]["a photo of a dog"].clone()).unwrap();
    let want: f32 = tv.iter().zip(&b).map(|(x, y)| x * y).sum();
    let score = hits[0]["distance"].as_f64().unwrap() as f32;
    assert!((score - want).abs() < 1e-4, "{score} vs {want}");
}

/// Indexing stopped part-way (as by Ctrl-C between batches) keeps what it wrote; the next
/// run adds only the rest and leaves no duplicates. Needs the flags of ../shared.
#[test]
fn image_indexing_resumes_after_an_interruption() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let store = models_store();
    // The image app's default text model.
    if let Err(e) = store.require("conse-multilingual-use") {
        magpie_testkit::skip("models", e);
        return;
    }
    let flags = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/flags/svg-country-flags-png250px");
    if !flags.is_dir() {
        magpie_testkit::skip("shared", format!("{} is absent", flags.display()));
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let count = |e: &Engine| {
        e.query(
            "f",
            &magpie_engine::QueryRequest {
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .unwrap()[0]["count(*)"]
            .as_u64()
            .unwrap()
    };
    // Opens the engine with the models, and indexes the flags into "f".
    let open = || {
        let engine = Engine::open(data.path(), EngineConfig::default()).unwrap();
        let emb = Arc::new(magpie_app::embedder::ModelEmbedder::new(models_store()));
        engine.set_embedder(emb.clone());
        (engine, emb)
    };
    let index = |engine: &Engine,
                 emb: &magpie_app::embedder::ModelEmbedder,
                 progress: &mut dyn FnMut(magpie_app::images::Progress),
                 cancel: &AtomicBool| {
        magpie_app::images::index_folder(
            engine,
            emb,
            data.path(),
            "f",
            &flags,
            None,
            progress,
            cancel,
        )
        .unwrap()
    };
    {
        let (engine, emb) = open();
        let cancel = AtomicBool::new(false);
        let mut progress = |p: magpie_app::images::Progress| {
            if p.done >= 48 {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let rep = index(&engine, &emb, &mut progress, &cancel);
        assert!(rep.cancelled);
        assert_eq!(rep.added, 48);
        assert_eq!(count(&engine), 48);
        // The engine is dropped without a flush: the rows live only in the WAL.
    }
    let (engine, emb) = open();
    assert_eq!(count(&engine), 48, "recovered from the WAL");
    let rep = index(&engine, &emb, &mut |_| {}, &AtomicBool::new(false));
    assert_eq!(
        (rep.found, rep.added, rep.unchanged, rep.removed),
        (256, 208, 48, 0),
        "{rep:?}"
    );
    assert_eq!(count(&engine), 256);
}

/// An image search's filter error points into the user's own text: the app adds
/// parentheses and folder/date clauses around it, and positions used to count those.
#[tokio::test]
async fn image_search_filter_errors_point_into_the_users_text() {
    let (t, _svc, _engine) = setup_images(models_store());
    t.ok(
        "collections/create",
        json!({"collectionName": "pics", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "folder", "dataType": "VarChar", "elementTypeParams": {"max_length": 256}},
            {"fieldName": "vec", "dataType": "FloatVector", "elementTypeParams": {"dim": 4}}]}}),
    )
    .await;
    let (s, v) = t
        .raw(
            "/v2/images/search",
            serde_json::to_vec(&json!({"collectionName": "pics", "like": 1, "filter": "folder like", "folder": "a/b"}))
                .unwrap(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("in `folder like`"), "{m}");
    assert!(m.contains("position 7"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_indexes_over_rest() {
    suite::scalar_indexes_over_rest(&setup(None, 4 << 20)).await;
}

#[tokio::test]
async fn json_path_indexes_over_rest() {
    suite::json_path_indexes_over_rest(&setup(None, 4 << 20)).await;
}

#[tokio::test]
async fn databases_and_aliases_over_rest() {
    suite::databases_and_aliases_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn partition_key_over_rest() {
    suite::partition_key_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn sparse_vectors_and_hybrid_search_over_rest() {
    suite::sparse_vectors_and_hybrid_search_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn bm25_full_text_search_over_rest() {
    suite::bm25_full_text_search_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn bm25_in_chinese_over_rest() {
    suite::bm25_in_chinese_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn decay_and_boost_rerankers_over_rest() {
    suite::decay_and_boost_rerankers_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn half_precision_vectors_over_rest() {
    suite::half_precision_vectors_over_rest(&setup(None, 1 << 20)).await;
}

#[tokio::test]
async fn binary_vectors_over_rest() {
    suite::binary_vectors_over_rest(&setup(None, 1 << 20)).await;
}

/// `magpie_searches_total{thread=...}` and the engine-seconds counter from /metrics.
async fn search_counters(app: &axum::Router) -> (u64, u64, f64) {
    let text = long_search::metrics_text(app).await;
    let get = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    (
        get("magpie_searches_total{thread=\"worker\"} ") as u64,
        get("magpie_searches_total{thread=\"pool\"} ") as u64,
        get("magpie_search_engine_seconds_total "),
    )
}

// Where a search runs (server `inline.rs`): once a collection's searches are known to
// be short, they run on the async workers; the first one (not measured yet), Strong
// reads (they may wait for the WAL) and every search of a server with
// `search_inline_us = 0` go to the blocking pool. Answers are the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_searches_run_on_the_workers_unless_turned_off() {
    let mut answers = Vec::new();
    for max_us in [magpie_server::inline::DEFAULT_INLINE_MAX_US, 0] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
        let st = Arc::new(AppState {
            engine,
            metrics: Default::default(),
            token: None,
            images: None,
            allowed_hosts: None,
            backups: None,
            inline: magpie_server::inline::InlineGate::new(max_us),
        });
        let app = router(st, 1 << 20);
        let t = local(app.clone(), 1 << 20, dir);
        t.ok(
            "collections/create",
            json!({"collectionName": "c", "dimension": 4, "metricType": "L2"}),
        )
        .await;
        t.ok(
            "entities/insert",
            json!({"collectionName": "c", "data": suite::rows(30)}),
        )
        .await;
        let search = json!({"collectionName": "c", "data": [[0.1, 0.2, 0.3, 0.4]], "limit": 3,
            "consistencyLevel": "Eventually"});
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(t.ok("entities/search", search.clone()).await);
        }
        assert!(got.iter().all(|g| *g == got[0]), "{got:?}");
        let (worker, pool, engine_s) = search_counters(&app).await;
        if max_us > 0 {
            assert_eq!(
                (worker, pool),
                (4, 1),
                "the first search measures, the rest run on a worker"
            );
        } else {
            assert_eq!((worker, pool), (0, 5), "0 sends every search to the pool");
        }
        assert!(engine_s > 0.0);
        let mut strong = search.clone();
        strong["consistencyLevel"] = json!("Strong");
        assert_eq!(t.ok("entities/search", strong).await, got[0]);
        let (worker2, pool2, _) = search_counters(&app).await;
        assert_eq!(
            (worker2, pool2),
            (worker, pool + 1),
            "a Strong read goes to the pool"
        );
        answers.push(got[0].clone());
    }
    assert_eq!(answers[0], answers[1]);
}

// Time limits and clients that go away (server `inline.rs`): a search on the pool is
// stopped through its cancel flag, and `magpie_searches_cancelled_total` counts it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_its_time_limit_answers_408_and_is_stopped() {
    let gate = magpie_server::inline::InlineGate::default().with_timeout_ms(1);
    let (app, _dir) = long_search::server(gate);
    let hybrid = json!({"collectionName": "c", "limit": 10,
        "search": [{"data": long_search::queries(), "annsField": "vec", "limit": 10}],
        "rerank": {"strategy": "rrf", "params": {"k": 60}}})
    .to_string();
    for (n, (path, body)) in [("search", long_search::body()), ("hybrid_search", hybrid)]
        .into_iter()
        .enumerate()
    {
        let msg =
            long_search::post_past_limit(&app, &format!("/v2/vectordb/entities/{path}"), body)
                .await;
        assert!(msg.contains("time limit of 1 ms"), "{path}: {msg}");
        // The engine stops the scan it was in (it would otherwise run on for seconds).
        let want = n as u64 + 1;
        long_search::wait_for_counters(&app, path, |(c, r)| c == want && r == 0).await;
    }
    let health = app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// A query past the server's time limit answers 408 naming it, and the engine stops
/// rendering its rows (it would otherwise go on until the output budget ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_limit_answers_408_and_is_stopped() {
    let gate = magpie_server::inline::InlineGate::default().with_timeout_ms(1);
    let (app, _dir) = long_search::server(gate);
    for (n, body) in [
        long_search::long_query_body(),
        json!({"collectionName": "c", "filter": "id >= 0", "limit": 16384, "outputFields": ["vec"]})
            .to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let msg = long_search::post_past_limit(&app, "/v2/vectordb/entities/query", body).await;
        assert!(msg.contains("query ran past its time limit of 1 ms"), "{msg}");
        long_search::wait_for_queries_cancelled(&app, "query", n as u64 + 1).await;
    }
    // Queries are counted apart from searches.
    assert_eq!(long_search::cancel_counters(&app).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_whose_client_goes_away_is_stopped() {
    use tokio::io::AsyncWriteExt;
    let (app, _dir) = long_search::server(Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, served).await.unwrap() });
    let body = long_search::body();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v2/vectordb/entities/search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    long_search::wait_for_counters(&app, "the search to start", |(c, r)| c == 0 && r == 1).await;
    drop(s);
    long_search::wait_for_counters(&app, "after the client left", |(c, r)| c == 1 && r == 0).await;
    server.abort();
}
