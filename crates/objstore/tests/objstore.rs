//! The object-store storage over `object_store`'s in-memory store: the storage contract,
//! the engine on it (a fresh data directory pointed at the same bucket opens the same
//! collections with identical answers), the cache and its limit, and a prefix with
//! foreign objects refused.

mod common;

use common::{answers, fill};
use magpie_engine::storage::{conformance, Storage};
use magpie_engine::*;
use magpie_objstore::{parse_url, CacheConfig, ObjStoreError, ObjectStorage};
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::Path;
use std::sync::Arc;

fn cache(dir: &Path, max_bytes: u64) -> Option<CacheConfig> {
    Some(CacheConfig {
        dir: dir.join("cache"),
        max_bytes,
    })
}

#[test]
fn keeps_the_storage_contract_with_and_without_a_prefix() {
    for prefix in ["", "some/prefix"] {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let d = tempfile::tempdir().unwrap();
        let s = ObjectStorage::with_store(mem, "s3://b", prefix, cache(d.path(), 1 << 20)).unwrap();
        conformance(&s);
    }
}

#[test]
fn a_fresh_data_directory_on_the_same_bucket_gives_the_same_answers() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let open = |dir: &Path| {
        let s =
            ObjectStorage::with_store(mem.clone(), "s3://b", "db", cache(dir, 64 << 20)).unwrap();
        Engine::open_with_storage(dir, EngineConfig::default(), Arc::new(s)).unwrap()
    };
    let d1 = tempfile::tempdir().unwrap();
    let before = {
        let e = open(d1.path());
        fill(&e)
    };
    // Another machine: nothing local, same bucket.
    let d2 = tempfile::tempdir().unwrap();
    let e = open(d2.path());
    assert_eq!(answers(&e), before);
    assert_eq!(e.collection_stats("c").unwrap().row_count, 2100 - 3);
    // Vectors are served memory-mapped from the cache directory.
    let cached: u64 = walk(&d2.path().join("cache"));
    assert!(cached >= 2100 * 16 * 4, "cache holds {cached} bytes");
    // The objects are in the bucket under the prefix, next to the marker.
    let listed: Vec<String> = futures_list(&mem);
    assert!(listed.iter().any(|k| k == "db/magpie.json"), "{listed:?}");
    assert!(listed.iter().any(|k| k == "db/catalog.json"), "{listed:?}");
    assert!(listed.iter().any(|k| k.contains("/index_")), "{listed:?}");
}

fn walk(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { walk(&e.path()) } else { m.len() };
    }
    total
}

fn futures_list(mem: &Arc<dyn ObjectStore>) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::TryStreamExt;
        let v: Vec<object_store::ObjectMeta> = mem.list(None).try_collect().await.unwrap();
        v.into_iter().map(|m| m.location.to_string()).collect()
    })
}

#[test]
fn the_cache_stays_under_its_limit_and_evicts_least_recently_used() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let d = tempfile::tempdir().unwrap();
    let s = ObjectStorage::with_store(mem, "s3://b", "", cache(d.path(), 2500)).unwrap();
    for k in ["a", "b", "c"] {
        s.put(&format!("seg/{k}"), &[k.as_bytes()[0]; 1000])
            .unwrap();
    }
    assert_eq!(s.get_mapped("seg/a").unwrap()[0], b'a');
    assert_eq!(s.get_mapped("seg/b").unwrap()[0], b'b');
    let a_again = s.get_mapped("seg/a").unwrap(); // a is now the most recent
    assert_eq!(s.get_mapped("seg/c").unwrap()[0], b'c'); // evicts b
    let cache_dir = d.path().join("cache");
    assert!(walk(&cache_dir) <= 2500);
    assert!(cache_dir.join("seg/a").exists() && cache_dir.join("seg/c").exists());
    assert!(
        !cache_dir.join("seg/b").exists(),
        "b was the least recently used"
    );
    // A map of an evicted entry stays valid, and a value larger than the cache is
    // still served (from memory).
    assert_eq!(a_again.len(), 1000);
    s.put("seg/big", &[7u8; 4000]).unwrap();
    assert_eq!(s.get_mapped("seg/big").unwrap().len(), 4000);
    assert!(walk(&cache_dir) <= 2500);
    // A put replaces what the cache holds.
    s.put("seg/a", b"new").unwrap();
    assert_eq!(&*s.get_mapped("seg/a").unwrap(), b"new");
}

#[test]
fn foreign_objects_and_bad_urls_are_refused() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        mem.put(&"photos/cat.jpg".into(), b"jpeg".to_vec().into())
            .await
            .unwrap()
    });
    let e = ObjectStorage::with_store(mem.clone(), "s3://b/photos", "photos", None).unwrap_err();
    assert!(matches!(e, ObjStoreError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("cat.jpg"), "{e}");
    // Another prefix of the same bucket is fine, and stays a database after reopening;
    // files uploaded for bulk import before the first start are not foreign.
    rt.block_on(async {
        mem.put(&"db/import/rows.json".into(), b"[]".to_vec().into())
            .await
            .unwrap()
    });
    ObjectStorage::with_store(mem.clone(), "s3://b/db", "db", None).unwrap();
    let s = ObjectStorage::with_store(mem.clone(), "s3://b/db", "db", None).unwrap();
    assert_eq!(s.size("import/rows.json").unwrap(), 2);
    // A source is only read: no marker, foreign objects fine.
    let src = ObjectStorage::with_store_source(mem.clone(), "s3://b/photos", "photos").unwrap();
    assert_eq!(src.size("cat.jpg").unwrap(), 4);
    assert!(!src.exists("magpie.json").unwrap());
    for (url, want) in [
        ("http://bucket/x", "expected s3://"),
        ("s3://", "bucket name"),
        ("s3://Bad_Bucket/x", "bucket name"),
        ("s3://b/../x", "'..'"),
    ] {
        let e = parse_url(url).unwrap_err().to_string();
        assert!(e.contains(want), "{url}: {e}");
    }
    assert_eq!(
        parse_url("s3://my-bucket/a/b/").unwrap(),
        ("s3://my-bucket".to_string(), "a/b".to_string())
    );
}

#[test]
fn a_former_owner_of_a_prefix_is_fenced() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    common::a_former_owner_is_fenced(&|dir: &Path| {
        Arc::new(
            ObjectStorage::with_store(mem.clone(), "s3://b", "shard", cache(dir, 64 << 20))
                .unwrap(),
        )
    });
}
