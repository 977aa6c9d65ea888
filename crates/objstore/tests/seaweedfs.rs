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
    // A streamed value over two parts goes up as one multipart upload: S3 gives such an
    // object an ETag ending in "-<parts>".
    let st = open_store("s3://magpie-test/contract", d0.path()).unwrap();
    let len = (2 * magpie_objstore::PART_BYTES).next_multiple_of(1000) + 1000;
    let n = st
        .put_with("multi/v", &mut |out| {
            for i in 0..len / 1000 {
                out.write_all(&[(i % 251) as u8; 1000])?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(n, len as u64);
    let (back, version) = st.get_versioned("multi/v").unwrap().unwrap();
    assert_eq!(back.len(), len);
    assert!(back
        .chunks(1000)
        .enumerate()
        .all(|(i, c)| c == [(i % 251) as u8; 1000]));
    assert!(version.0.trim_matches('"').ends_with("-3"), "{version:?}");
    st.delete("multi/v").unwrap();

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

/// Network faults between Magpie and the bucket, injected by a proxy in front of the S3
/// server: uploads cut off midway are retried and the flush succeeds; during an outage
/// a flush fails with an error naming the bucket while writes are still accepted (into
/// the WAL) and reads still answered, and the next flush after it writes everything;
/// a fresh machine reading through a slow link opens with identical answers.
#[test]
fn faults_between_magpie_and_the_bucket() {
    use magpie_testkit::faults::FaultProxy;
    use std::sync::atomic::Ordering::SeqCst;
    let Some(s3) = magpie_testkit::seaweedfs("magpie-faults") else {
        return;
    };
    let proxy = FaultProxy::start(&s3.endpoint);
    let endpoint = proxy.endpoint();
    let mut opts: Vec<(&str, &str)> = Vec::new();
    let base = s3.options();
    for (k, v) in &base {
        opts.push((k, if *k == "aws_endpoint" { &endpoint } else { v }));
    }
    let open = |dir: &Path| {
        let s = ObjectStorage::open_s3(
            "s3://magpie-faults/db",
            &opts,
            Some(CacheConfig {
                dir: dir.join("cache"),
                max_bytes: 256 << 20,
            }),
        )
        .unwrap();
        Engine::open_with_storage(dir, EngineConfig::default(), Arc::new(s)).unwrap()
    };
    let count = |e: &Engine| {
        e.query(
            "c",
            &QueryRequest {
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .unwrap()[0]["count(*)"]
            .clone()
    };
    let d1 = tempfile::tempdir().unwrap();
    let e = open(d1.path());
    common::fill(&e);

    // 1. Two uploads cut off midway: retried, the flush succeeds.
    e.insert("c", None, &common::rows(3000..3500)).unwrap();
    proxy.faults.cut_puts.store(2, SeqCst);
    e.flush("c").unwrap();
    assert_eq!(
        proxy.faults.puts_cut.load(SeqCst),
        2,
        "the proxy cut two uploads"
    );

    // 2. An outage: writes are accepted, reads answered, the flush fails clearly.
    proxy.faults.outage.store(true, SeqCst);
    e.insert("c", None, &common::rows(4000..4200)).unwrap();
    assert_eq!(count(&e), serde_json::json!(2100 - 3 + 500 + 200));
    let err = e.flush("c").unwrap_err().to_string();
    assert!(
        err.contains("s3://magpie-faults/db"),
        "the error names the bucket: {err}"
    );
    assert!(proxy.faults.closed_by_outage.load(SeqCst) > 0);
    // Still up: more writes, and the flush after the outage writes everything.
    e.insert("c", None, &common::rows(4200..4300)).unwrap();
    proxy.faults.outage.store(false, SeqCst);
    e.flush("c").unwrap();
    assert!(e
        .wait_for_indexes("c", std::time::Duration::from_secs(120))
        .unwrap());
    let before = (shared_answers(&e), count(&e));
    assert_eq!(before.1, serde_json::json!(2100 - 3 + 500 + 300));
    drop(e);

    // 3. A fresh machine through a slow link: every response chunk 20 ms late.
    proxy.faults.delay_ms.store(20, SeqCst);
    let d2 = tempfile::tempdir().unwrap();
    let e = open(d2.path());
    assert!(proxy.faults.chunks_delayed.load(SeqCst) > 0);
    assert_eq!((shared_answers(&e), count(&e)), before);
}

/// Conditional PUTs (`If-Match`, `If-None-Match: *`) as a real S3 server checks them:
/// a data node that resumes after another took its shard's prefix over is fenced.
#[test]
fn a_former_owner_of_a_prefix_is_fenced_by_seaweedfs() {
    let Some(s3) = magpie_testkit::seaweedfs("magpie-fence") else {
        return;
    };
    let opts = s3.options();
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::a_former_owner_is_fenced(&|dir: &Path| {
        let cache = CacheConfig {
            dir: dir.join("cache"),
            max_bytes: 64 << 20,
        };
        Arc::new(ObjectStorage::open_s3("s3://magpie-fence/shard", &opts, Some(cache)).unwrap())
    });
}
