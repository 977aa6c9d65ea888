//! Regression tests of the hardening issue: each attack here worked on the code before
//! it (any file readable over HTTP, a short filter that aborted the process, unbounded
//! requests, cross-site and DNS-rebinding requests) and must now get a clear 4xx while
//! the server keeps serving. None needs model weights: the attacks need none either.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use magpie_engine::{Engine, EngineConfig};
use magpie_server::images_api::ImageService;
use magpie_server::{router, AppState};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

struct T {
    app: axum::Router,
    svc: Arc<ImageService>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Opts {
    token: Option<&'static str>,
    hosts: Option<Vec<String>>,
    allowed_roots: Vec<std::path::PathBuf>,
    engine: EngineConfig,
}

fn setup(o: Opts) -> T {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), o.engine).unwrap());
    let store = magpie_embed::models::ModelStore::new(dir.path().join("models"));
    let emb = Arc::new(magpie_app::embedder::ModelEmbedder::new(store));
    engine.set_embedder(emb.clone());
    let svc = Arc::new(ImageService::new(
        emb,
        dir.path().to_path_buf(),
        o.allowed_roots,
    ));
    let st = Arc::new(AppState {
        engine,
        metrics: Default::default(),
        token: o.token.map(String::from),
        images: Some(svc.clone()),
        allowed_hosts: o.hosts,
        backups: None,
        inline: Default::default(),
    });
    T {
        app: router(st, 8 << 20),
        svc,
        dir,
    }
}

impl T {
    async fn send(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let s = resp.status();
        let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (s, b.to_vec())
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let (s, b) = self.send(req).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
    async fn ok(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.post(path, body).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v["data"].clone()
    }
    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }
    async fn healthy(&self) {
        assert_eq!(self.get("/healthz").await.0, StatusCode::OK);
    }
}

fn png(w: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, w, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

const V: &str = "/v2/vectordb";

/// Finding 1, as reported: `/v2/images/index` with folder "/" registered "/" as a root
/// before anything was checked, and `/images/{c}/{id}/file` then served the `file` value
/// of any row of any collection, e.g. /etc/passwd.
#[tokio::test]
async fn the_reported_file_read_is_closed() {
    let t = setup(Opts::default());
    for folder in ["/", "/etc", "/no/such/folder", "../../.."] {
        let (s, v) = t
            .post(
                "/v2/images/index",
                json!({"collectionName": "x", "folder": folder}),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{folder}: {v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("not under an image root"), "{m}");
        // The same words whether or not the folder exists.
        assert!(!m.contains("No such file"), "{m}");
    }
    assert!(!t.dir.path().join("images.json").exists());
    assert!(t
        .svc
        .embedder
        .resolve("/etc/passwd")
        .unwrap_err()
        .contains("no image roots"));
    t.ok(
        &format!("{V}/collections/create"),
        json!({"collectionName": "c", "dimension": 2}),
    )
    .await;
    t.ok(
        &format!("{V}/entities/insert"),
        json!({"collectionName": "c", "data": [{"id": 1, "vector": [0, 0], "file": "/etc/passwd"}]}),
    )
    .await;
    let (s, body) = t.get("/images/c/1/file").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("root:"), "{text}");
    assert!(text.contains("no image with id 1 in 'c'"), "{text}");
    t.healthy().await;
}

/// An image collection serves only image files under its own root: not another
/// collection's root, not through `..` or a symlink out, not a non-image file with an
/// image name, not a text file; every refusal is the same 404.
#[tokio::test]
async fn image_files_come_only_from_the_collections_own_root() {
    let allowed = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (allowed.path().join("a"), allowed.path().join("b"));
    std::fs::create_dir_all(&root_a).unwrap();
    std::fs::create_dir_all(&root_b).unwrap();
    std::fs::write(root_a.join("ok.png"), png(16)).unwrap();
    std::fs::write(
        root_a.join("fake.png"),
        b"root:x:0:0:root:/root:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(root_a.join("notes.txt"), b"secret notes").unwrap();
    std::fs::write(root_b.join("other.png"), png(16)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.png"), png(16)).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.png"), root_a.join("link.png")).unwrap();
    let t = setup(Opts {
        allowed_roots: vec![allowed.path().to_path_buf()],
        ..Default::default()
    });
    // Collections with the image app's field names (created directly: no model needed),
    // registered as the image app registers them.
    for (name, root) in [("a", &root_a), ("b", &root_b)] {
        t.ok(
            &format!("{V}/collections/create"),
            json!({"collectionName": name, "schema": {"fields": [
                {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
                {"fieldName": "file", "dataType": "VarChar", "elementTypeParams": {"max_length": 4096}},
                {"fieldName": "image_vec", "dataType": "FloatVector", "elementTypeParams": {"dim": 2}}]}}),
        )
        .await;
        let mut roots: serde_json::Map<String, Value> =
            std::fs::read(t.dir.path().join("images.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        roots.insert(name.into(), json!(root.canonicalize().unwrap()));
        std::fs::write(
            t.dir.path().join("images.json"),
            serde_json::to_vec(&roots).unwrap(),
        )
        .unwrap();
    }
    let a = |f: &Path| f.to_str().unwrap().to_string();
    let rows = json!([
        {"id": 1, "file": a(&root_a.join("ok.png")), "image_vec": [1, 0]},
        {"id": 2, "file": a(&root_b.join("other.png")), "image_vec": [1, 0]},
        {"id": 3, "file": format!("{}/../../{}/secret.png", root_a.display(), outside.path().file_name().unwrap().to_str().unwrap()), "image_vec": [1, 0]},
        {"id": 4, "file": a(&root_a.join("link.png")), "image_vec": [1, 0]},
        {"id": 5, "file": a(&root_a.join("fake.png")), "image_vec": [1, 0]},
        {"id": 6, "file": a(&root_a.join("notes.txt")), "image_vec": [1, 0]},
        {"id": 7, "file": "/etc/passwd", "image_vec": [1, 0]},
        {"id": 8, "file": a(&root_a.join("missing.png")), "image_vec": [1, 0]},
    ]);
    t.ok(
        &format!("{V}/entities/insert"),
        json!({"collectionName": "a", "data": rows}),
    )
    .await;
    let (s, body) = t.get("/images/a/1/file").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, png(16));
    let (s, thumb) = t.get("/images/a/1/thumb").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&thumb[..2], b"\xff\xd8", "a JPEG thumbnail");
    for id in 2..=8 {
        for kind in ["file", "thumb"] {
            let (s, body) = t.get(&format!("/images/a/{id}/{kind}")).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "id {id} {kind}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v["message"],
                json!(format!("no image with id {id} in 'a'")),
                "id {id} {kind}"
            );
        }
    }
    // Thumbnails are cached on disk, keyed by path, size and mtime.
    let cached = walk(&t.dir.path().join("thumbs"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(std::fs::read(&cached[0]).unwrap(), thumb);
    // Indexing: a folder under the allowed root passes the check (the job then needs
    // models); one outside does not, even through a symlink inside the allowed root.
    std::os::unix::fs::symlink(outside.path(), allowed.path().join("escape")).unwrap();
    let (s, v) = t
        .post(
            "/v2/images/index",
            json!({"collectionName": "z", "folder": allowed.path().join("escape")}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(t
        .svc
        .check_folder("z", &root_a)
        .is_ok_and(|c| c == root_a.canonicalize().unwrap()));
    let (s, v) = t
        .post(
            "/v2/images/index",
            json!({"collectionName": "z", "folder": allowed.path().join("nope")}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A job that fails its checks (no models installed) registers no root.
    t.ok(
        "/v2/images/index",
        json!({"collectionName": "z", "folder": root_a}),
    )
    .await;
    for _ in 0..600 {
        let st = t
            .ok("/v2/images/status", json!({"collectionName": "z"}))
            .await;
        if st["running"] == json!(false) {
            assert!(
                st["error"].as_str().unwrap().contains("models fetch"),
                "{st}"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let roots: Value =
        serde_json::from_slice(&std::fs::read(t.dir.path().join("images.json")).unwrap()).unwrap();
    assert!(roots.get("z").is_none(), "{roots}");
    t.healthy().await;
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Finding 2: filters a few KB long used to overflow the stack and abort the process,
/// on every endpoint that takes one.
#[tokio::test]
async fn deep_filters_are_refused_on_every_endpoint() {
    let t = setup(Opts::default());
    t.ok(
        &format!("{V}/collections/create"),
        json!({"collectionName": "c", "dimension": 2}),
    )
    .await;
    t.ok(
        &format!("{V}/entities/insert"),
        json!({"collectionName": "c", "data": [{"id": 1, "vector": [0, 1], "tags": [1]}]}),
    )
    .await;
    let n = 3000;
    let filters = [
        format!("{}id > 1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}id > 1", "not ".repeat(n)),
        format!("{}1 < id", "-".repeat(10_000)),
        format!("id > {}", vec!["1"; 1500].join(" + ")),
        format!("tags{} == 1", "[0]".repeat(n)),
        format!("id in {}1{}", "[".repeat(1000), "]".repeat(1000)),
    ];
    for f in &filters {
        for (ep, body) in [
            ("query", json!({"collectionName": "c", "filter": f})),
            (
                "search",
                json!({"collectionName": "c", "data": [[0, 1]], "filter": f}),
            ),
            ("delete", json!({"collectionName": "c", "filter": f})),
        ] {
            let (s, v) = t.post(&format!("{V}/entities/{ep}"), body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{ep}: {v}");
            let m = v["message"].as_str().unwrap();
            assert!(m.contains("deeper than 64 levels"), "{ep}: {m}");
            assert!(m.len() < 500, "the error does not echo the filter");
        }
        let (s, v) = t
            .post(
                "/v2/images/search",
                json!({"collectionName": "c", "text": "x", "filter": f}),
            )
            .await;
        assert!(s.is_client_error(), "{v}");
    }
    // The row is still there.
    let r = t
        .ok(
            &format!("{V}/entities/query"),
            json!({"collectionName": "c", "filter": "id == 1", "outputFields": ["count(*)"]}),
        )
        .await;
    assert_eq!(r[0]["count(*)"], json!(1));
    t.healthy().await;
}

/// Findings 3 and 6: request budgets and checked arithmetic.
#[tokio::test]
async fn request_budgets_and_checked_limits() {
    let t = setup(Opts {
        engine: EngineConfig {
            max_nq: 8,
            max_result_rows: 1000,
            ..Default::default()
        },
        ..Default::default()
    });
    t.ok(
        &format!("{V}/collections/create"),
        json!({"collectionName": "c", "dimension": 2, "metricType": "L2"}),
    )
    .await;
    t.ok(
        &format!("{V}/entities/insert"),
        json!({"collectionName": "c", "data": [{"id": 1, "vector": [0, 1]}, {"id": 2, "vector": [1, 1]}]}),
    )
    .await;
    let search = |body: Value| {
        let mut b = json!({"collectionName": "c"});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        b
    };
    let cases = [
        (json!({"data": vec![[0.0, 1.0]; 9]}), "at most 8 queries"),
        (
            json!({"data": vec![[0.0, 1.0]; 2], "limit": 600}),
            "over the 1000-hit limit",
        ),
        (
            json!({"data": [[0, 1]], "limit": 18446744073709551615u64, "offset": 1}),
            "limit + offset must be at most 16384",
        ),
        (json!({"data": [[3e38, 3e38]]}), "would overflow float32"),
    ];
    for (body, want) in cases {
        let (s, v) = t.post(&format!("{V}/entities/search"), search(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{want}: {v}");
    }
    // Query: the wrapping limit used to be accepted and return every row.
    let (s, v) = t
        .post(
            &format!("{V}/entities/query"),
            json!({"collectionName": "c", "filter": "id > 0", "limit": 18446744073709551615u64, "offset": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A vector whose distances would overflow is refused at insert, so no stored
    // distance can be infinite (it was returned as null).
    let (s, v) = t
        .post(
            &format!("{V}/entities/insert"),
            json!({"collectionName": "c", "data": [{"id": 3, "vector": [3e38, 3e38]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("overflow"), "{v}");
    let hits = t
        .ok(
            &format!("{V}/entities/search"),
            json!({"collectionName": "c", "data": [[5e18, 5e18]], "limit": 2}),
        )
        .await;
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| h["distance"].is_f64()),
        "{hits}"
    );
    t.healthy().await;
}

/// A query with a filter and no limit returned every matching row, whatever their size;
/// reads are now bounded in bytes too (max_output_bytes), with a 400 naming the limit.
#[tokio::test]
async fn reads_are_bounded_in_bytes() {
    let t = setup(Opts {
        engine: EngineConfig {
            max_output_bytes: 64 << 10,
            ..Default::default()
        },
        ..Default::default()
    });
    t.ok(
        &format!("{V}/collections/create"),
        json!({"collectionName": "c", "dimension": 2, "metricType": "L2"}),
    )
    .await;
    let text = "x".repeat(1000);
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0], "text": text}))
        .collect();
    t.ok(
        &format!("{V}/entities/insert"),
        json!({"collectionName": "c", "data": rows}),
    )
    .await;
    // ~200 KB of rows: over the 64 KiB limit, whether asked by query or by search.
    for (ep, body) in [
        (
            "query",
            json!({"collectionName": "c", "filter": "id >= 0", "outputFields": ["*"]}),
        ),
        (
            "search",
            json!({"collectionName": "c", "data": [[0, 1]], "limit": 200, "outputFields": ["text"]}),
        ),
    ] {
        let (s, v) = t.post(&format!("{V}/entities/{ep}"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{ep}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("max_output_bytes"),
            "{v}"
        );
    }
    // Pages under the limit work, and so do reads without the large field.
    let page = t
        .ok(
            &format!("{V}/entities/query"),
            json!({"collectionName": "c", "filter": "id >= 0", "outputFields": ["*"], "limit": 50}),
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 50);
    let ids = t
        .ok(
            &format!("{V}/entities/query"),
            json!({"collectionName": "c", "filter": "id >= 0", "outputFields": ["id"]}),
        )
        .await;
    assert_eq!(ids.as_array().unwrap().len(), 200);
    t.healthy().await;
}

/// Finding 7: bodies must be JSON by Content-Type (a cross-site form or text/plain POST
/// needs no preflight); the token is compared in the header only, except on image URLs.
#[tokio::test]
async fn content_type_token_and_host() {
    let t = setup(Opts {
        token: Some("s3cret"),
        hosts: Some(vec![]),
        ..Default::default()
    });
    let body = br#"{"collectionName":"c","dimension":2}"#.to_vec();
    let req = |ct: Option<&str>, auth: Option<&str>, host: &str, uri: &str| {
        let mut r = Request::post(uri).header("host", host);
        if let Some(c) = ct {
            r = r.header("content-type", c);
        }
        if let Some(a) = auth {
            r = r.header("authorization", format!("Bearer {a}"));
        }
        r.body(Body::from(body.clone())).unwrap()
    };
    let create = "/v2/vectordb/collections/create";
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (s, b) = t
            .send(req(ct, Some("s3cret"), "127.0.0.1:19530", create))
            .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert!(String::from_utf8_lossy(&b).contains("application/json"));
    }

    // ?token= is not accepted on the API.
    let (s, _) = t
        .send(req(
            Some("application/json"),
            None,
            "localhost:19530",
            "/v2/vectordb/collections/create?token=s3cret",
        ))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for wrong in ["s3cre", "s3cret!", "S3cret", ""] {
        let (s, _) = t
            .send(req(
                Some("application/json"),
                Some(wrong),
                "localhost",
                create,
            ))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // DNS rebinding: a foreign Host is refused even with the right token.
    let (s, b) = t
        .send(req(
            Some("application/json"),
            Some("s3cret"),
            "evil.example:19530",
            create,
        ))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&b).contains("allowed_hosts"));
    let (s, _) = t
        .send(req(
            Some("application/json; charset=utf-8"),
            Some("s3cret"),
            "[::1]:19530",
            create,
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Image URLs take ?token= (an <img> cannot send headers); a wrong one is refused.
    let img = |q: &str| {
        Request::get(format!("/images/c/1/file{q}"))
            .header("host", "localhost")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(t.send(img("?token=nope")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(t.send(img("?token=s3cret")).await.0, StatusCode::NOT_FOUND);
    // The official Node SDK's HttpClient: text/plain plus its own `ContentType` header,
    // which a cross-site page cannot send without a preflight; any other value of it does
    // not count. (The collection exists by now: CONFLICT means the body was read.)
    for (v, want) in [
        ("application/json", StatusCode::CONFLICT),
        ("text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let mut r = req(
            Some("text/plain;charset=UTF-8"),
            Some("s3cret"),
            "localhost",
            create,
        );
        r.headers_mut().insert("contenttype", v.parse().unwrap());
        let (s, b) = t.send(r).await;
        assert_eq!(s, want, "{v}: {}", String::from_utf8_lossy(&b));
    }
    // A token with characters the UI percent-encodes (encodeURIComponent) is decoded.
    let t = setup(Opts {
        token: Some("a+b/c=&d é"),
        ..Default::default()
    });
    let enc = "a%2Bb%2Fc%3D%26d%20%C3%A9";
    assert_eq!(
        t.send(img(&format!("?x=1&token={enc}"))).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.send(img("?token=a+b/c=&d")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Finding 3: a `data:` URI longer than its field's max_length is refused before it is
/// decoded (it used to be decoded first).
#[tokio::test]
async fn oversized_data_uris_are_refused_before_decoding() {
    use base64::Engine as _;
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../embed/tests/fixtures/clip-tiny");
    let t = setup(Opts::default());
    let models = t.dir.path().join("models").join("clip-vit-base-patch32");
    std::fs::create_dir_all(&models).unwrap();
    for f in magpie_embed::clip::FILES {
        std::fs::copy(fixture.join(f), models.join(f)).unwrap();
    }
    t.ok(&format!("{V}/collections/create"), json!({"collectionName": "pics", "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "file", "dataType": "VarChar", "elementTypeParams": {"max_length": 200}},
            {"fieldName": "vec", "dataType": "FloatVector", "elementTypeParams": {"dim": 24}}],
          "functions": [{"name": "clip", "type": "ImageEmbedding", "inputFieldNames": ["file"],
                         "outputFieldNames": ["vec"], "params": {"model": "clip-vit-base-patch32"}}]}})).await;
    // A 4000×4000 PNG is small encoded but would cost ~128 MB to decode.
    let big = {
        let img = image::RgbImage::new(4000, 4000);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&big)
    );
    let (s, v) = t
        .post(
            &format!("{V}/entities/insert"),
            json!({"collectionName": "pics", "data": [{"id": 1, "file": uri}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("max_length is 200") && m.contains("row 0"),
        "{m}"
    );
    t.healthy().await;
}
