//! Against a real S3 server (SeaweedFS, started here on free ports): the quickstart
//! workload on the bucket, a fresh data directory on the same bucket with identical
//! answers, foreign objects refused, and an unreachable endpoint as a clear error.

use magpie_engine::storage::{conformance, Storage};
use magpie_engine::*;
use magpie_objstore::{CacheConfig, ObjStoreError, ObjectStorage};
use std::path::Path;
use std::sync::Arc;

mod common;

#[test]
fn the_engine_on_seaweedfs() {
    let Some(s3) = magpie_testkit::seaweedfs("magpie-test") else {
        return;
    };
    let opts = s3.options();
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let open_store = |url: &str, dir: &Path| {
        ObjectStorage::open_s3(
            url,
            &opts,
            Some(CacheConfig {
                dir: dir.join("cache"),
                max_bytes: 256 << 20,
            }),
        )
    };
    // The storage contract on a real bucket.
    let d0 = tempfile::tempdir().unwrap();
    conformance(&open_store("s3://magpie-test/contract", d0.path()).unwrap());

    let open = |dir: &Path| {
        let s = open_store("s3://magpie-test/db", dir).unwrap();
        Engine::open_with_storage(dir, EngineConfig::default(), Arc::new(s)).unwrap()
    };
    let d1 = tempfile::tempdir().unwrap();
    let before = {
        let e = open(d1.path());
        common::fill(&e)
    };
    let d2 = tempfile::tempdir().unwrap();
    let e = open(d2.path());
    assert_eq!(
        shared_answers(&e),
        before,
        "a fresh data directory on the same bucket"
    );
    drop(e);

    // The bucket root now holds the two databases' objects: not an empty prefix.
    let e = open_store("s3://magpie-test", d0.path()).unwrap_err();
    assert!(matches!(e, ObjStoreError::Foreign { .. }), "{e}");

    // Nothing listening: a clear error naming the endpoint's URL, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut bad = opts.clone();
    bad[0] = ("aws_endpoint", endpoint.as_str());
    let t = std::time::Instant::now();
    let e = ObjectStorage::open_s3("s3://magpie-test/x", &bad, None).unwrap_err();
    assert!(matches!(e, ObjStoreError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("s3://magpie-test/x"), "{e}");
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
    // The server works on after all of this.
    let s = open_store("s3://magpie-test/db", d0.path()).unwrap();
    assert!(s.exists("catalog.json").unwrap());
}

fn shared_answers(e: &Engine) -> serde_json::Value {
    common::answers(e)
}
