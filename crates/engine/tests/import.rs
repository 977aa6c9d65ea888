//! Bulk import through the engine's public API: NumPy and JSON files become flushed
//! segments, visible whole or not at all, durable across a restart, indexed like any
//! flushed segment; bad files fail the job with a reason and leave nothing behind.

use magpie_engine::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIM: usize = 16;

fn schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("vec", DataType::FloatVector).with_dim(DIM),
            FieldSchema::new("age", DataType::Int32),
            FieldSchema::new("name", DataType::VarChar)
                .with_max_length(32)
                .nullable(),
        ],
        enable_dynamic_field: false,
        description: String::new(),
        functions: Vec::new(),
    }
}

fn hnsw() -> Vec<IndexMeta> {
    vec![IndexMeta {
        id: 0,
        index_name: "vec".into(),
        field_name: "vec".into(),
        index_type: "HNSW".into(),
        metric_type: Metric::L2,
        params: Default::default(),
    }]
}

/// A NumPy v1 file, as `numpy.save` writes it.
fn npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let mut out = magpie_engine::import::npy::header(descr, shape);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..DIM).map(|_| r.gen_range(-1.0..1.0)).collect())
        .collect()
}

/// Writes ids `start..start+n` as a NumPy group under `dir`; returns the file names.
fn npy_group(dir: &Path, start: i64, v: &[Vec<f32>]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let n = v.len();
    let ids: Vec<u8> = (start..start + n as i64)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    npy(&dir.join("id.npy"), "<i8", &[n], &ids);
    let flat: Vec<u8> = v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    npy(&dir.join("vec.npy"), "<f4", &[n, DIM], &flat);
    let ages: Vec<u8> = (0..n as i32)
        .flat_map(|i| (i % 100).to_le_bytes())
        .collect();
    npy(&dir.join("age.npy"), "<i4", &[n], &ages);
    // '<U6': 6 UTF-32 code units per name, NUL-padded.
    let names: Vec<u8> = (0..n)
        .flat_map(|i| {
            let mut s: Vec<u32> = format!("n{}", i % 1000).chars().map(|c| c as u32).collect();
            s.resize(6, 0);
            s.into_iter().flat_map(|u| u.to_le_bytes())
        })
        .collect();
    npy(&dir.join("name.npy"), "<U6", &[n], &names);
    let rel = dir.file_name().unwrap().to_string_lossy();
    ["id", "vec", "age", "name"]
        .iter()
        .map(|f| format!("{rel}/{f}.npy"))
        .collect()
}

fn wait(e: &Engine, id: &str) -> ImportProgress {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = e.import_job(id).unwrap();
        if matches!(p.state, "Completed" | "Failed") {
            return p;
        }
        assert!(Instant::now() < deadline, "import never finished: {p:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(e: &Engine, filter: &str) -> u64 {
    let q = QueryRequest {
        filter: Some(filter.into()),
        output_fields: vec!["count(*)".into()],
        ..Default::default()
    };
    e.query("c", &q).unwrap()[0]["count(*)"].as_u64().unwrap()
}

fn segment_dirs(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(colls) = std::fs::read_dir(dir.join("collections")) else {
        return 0;
    };
    for c in colls.flatten() {
        if let Ok(s) = std::fs::read_dir(c.path().join("segments")) {
            n += s.count();
        }
    }
    n
}

#[test]
fn numpy_and_json_imports_land_as_indexed_segments() {
    let d = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        seal_rows: 12_000,
        index_build_threads: 2,
        ..Default::default()
    };
    let e = Arc::new(Engine::open(d.path(), cfg.clone()).unwrap());
    e.create_collection("c", schema(), hnsw(), Consistency::Strong, "")
        .unwrap();
    let root = e.import_root();
    // Rows inserted the usual way beside the import.
    let live: Vec<Value> = (0..10)
        .map(|i| json!({"id": 1_000_000 + i, "vec": vec![0.5f32; DIM], "age": 7}))
        .collect();
    e.insert("c", None, &live).unwrap();

    // 30,000 rows from NumPy (three segments at seal_rows 12,000), 500 from JSON.
    let v = vectors(30_000, 1);
    let group = npy_group(&root.join("npy"), 0, &v);
    let rows: Vec<Value> = (0..500)
        .map(|i| json!({"id": 50_000 + i, "vec": vectors(1, 100 + i as u64)[0], "age": 3, "name": null}))
        .collect();
    std::fs::write(
        root.join("rows.json"),
        serde_json::to_vec(&json!({ "rows": rows })).unwrap(),
    )
    .unwrap();
    let id = e
        .create_import_job("c", None, &[group, vec!["rows.json".into()]])
        .unwrap();
    let p = wait(&e, &id);
    assert_eq!(p.state, "Completed", "{p:?}");
    assert_eq!(
        (p.imported_rows, p.total_rows, p.progress),
        (30_500, 30_500, 100)
    );
    assert_eq!(p.files.len(), 2);
    assert_eq!(e.import_jobs(Some("c")).len(), 1);

    assert_eq!(count(&e, ""), 30_510);
    assert_eq!(count(&e, "age == 42"), 300);
    assert_eq!(count(&e, "name == \"n17\""), 30);
    assert_eq!(count(&e, "name is null"), 510);
    // Every imported row is where its key says.
    let got = e
        .query(
            "c",
            &QueryRequest {
                filter: Some("id in [0, 12345, 29999, 50499]".into()),
                output_fields: vec!["id".into(), "vec".into(), "name".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[1]["vec"], json!(v[12345]));
    assert_eq!(got[1]["name"], json!("n345"));
    // Indexed like any flushed segment; exact answers through the index.
    assert!(e.wait_for_indexes("c", Duration::from_secs(120)).unwrap());
    let r = SearchRequest {
        vectors: vec![v[777].clone()],
        limit: 1,
        ..Default::default()
    };
    let o = e.search_ex("c", &r).unwrap();
    assert!(o.indexed_segments >= 2, "{o:?}");
    assert_eq!(o.hits[0][0].id, PrimaryKey::Int(777));

    // A second import of keys already present fails whole: nothing added, no files.
    let dirs = segment_dirs(d.path());
    let again = npy_group(&root.join("again"), 29_000, &vectors(2_000, 2));
    let p = wait(&e, &e.create_import_job("c", None, &[again]).unwrap());
    assert_eq!(p.state, "Failed");
    assert!(
        p.reason.contains("primary key 29000 already exists"),
        "{}",
        p.reason
    );
    assert_eq!(count(&e, ""), 30_510);
    assert_eq!(segment_dirs(d.path()), dirs);

    // Durable: a restart finds the imported rows in the manifest.
    drop(e);
    let e = Arc::new(Engine::open(d.path(), cfg).unwrap());
    assert_eq!(count(&e, ""), 30_510);
    assert_eq!(count(&e, "id >= 50000 and id < 60000"), 500);
}

/// A Parquet file as pymilvus's BulkWriter writes one: vectors as lists of floats (here
/// also fixed-size lists), nullable strings, Snappy pages.
fn parquet_file(path: &Path, ids: std::ops::Range<i64>, v: &[Vec<f32>], fixed: bool, dim: usize) {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
    use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
    let n = v.len();
    let vec_col: ArrayRef = if fixed {
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
        for r in v {
            b.values().append_slice(&r[..dim]);
            b.append(true);
        }
        Arc::new(b.finish())
    } else {
        let mut b = ListBuilder::new(Float32Builder::new());
        for r in v {
            b.values().append_slice(&r[..dim]);
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let names: Vec<Option<String>> = (0..n)
        .map(|i| (i % 4 != 0).then(|| format!("p{}", i % 7)))
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
        ),
        ("vec", vec_col),
        (
            "age",
            Arc::new(Int32Array::from_iter_values((0..n as i32).map(|i| i % 50))) as ArrayRef,
        ),
        ("name", Arc::new(StringArray::from(names)) as ArrayRef),
    ])
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(3000))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_imports_as_pymilvus_writes_them() {
    let d = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(d.path(), EngineConfig::default()).unwrap());
    e.create_collection("c", schema(), hnsw(), Consistency::Strong, "")
        .unwrap();
    let root = e.import_root();
    std::fs::create_dir_all(&root).unwrap();
    let v = vectors(10_000, 9);
    parquet_file(&root.join("a.parquet"), 0..10_000, &v, false, DIM);
    parquet_file(
        &root.join("b.parquet"),
        10_000..10_100,
        &v[..100],
        true,
        DIM,
    );
    let p = wait(
        &e,
        &e.create_import_job(
            "c",
            None,
            &[vec!["a.parquet".into()], vec!["b.parquet".into()]],
        )
        .unwrap(),
    );
    assert_eq!(p.state, "Completed", "{p:?}");
    assert_eq!((p.imported_rows, p.total_rows), (10_100, 10_100));
    assert_eq!(count(&e, ""), 10_100);
    assert_eq!(count(&e, "name is null"), 2_525);
    assert_eq!(count(&e, "name == \"p3\" and age < 10"), {
        (0..10_000)
            .filter(|i| i % 4 != 0 && i % 7 == 3 && i % 50 < 10)
            .count() as u64
            + (0..100)
                .filter(|i| i % 4 != 0 && i % 7 == 3 && i % 50 < 10)
                .count() as u64
    });
    let got = e
        .query(
            "c",
            &QueryRequest {
                filter: Some("id in [4321, 10042]".into()),
                output_fields: vec!["vec".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got[0]["vec"], json!(v[4321]));
    assert_eq!(got[1]["vec"], json!(v[42]));
    // Vectors of the wrong length, and a file that is no Parquet, fail saying so.
    parquet_file(
        &root.join("short.parquet"),
        20_000..20_010,
        &v[..10],
        false,
        DIM - 1,
    );
    std::fs::write(root.join("junk.parquet"), b"PAR1 not really").unwrap();
    for (f, why) in [
        ("short.parquet", "holds 15 values; the field's dim is 16"),
        ("junk.parquet", "not a readable Parquet file"),
    ] {
        let p = wait(
            &e,
            &e.create_import_job("c", None, &[vec![f.into()]]).unwrap(),
        );
        assert_eq!(p.state, "Failed", "{f}");
        assert!(p.reason.contains(why), "{f}: {}", p.reason);
    }
    assert_eq!(count(&e, ""), 10_100);
}

#[test]
fn bad_imports_are_refused_or_fail_with_a_reason() {
    let d = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(d.path(), EngineConfig::default()).unwrap());
    e.create_collection("c", schema(), hnsw(), Consistency::Strong, "")
        .unwrap();
    // Refused at once (the job is never created): paths and formats.
    let err = |files: &[&str]| {
        e.create_import_job("c", None, &[files.iter().map(|s| s.to_string()).collect()])
            .unwrap_err()
            .to_string()
    };
    assert!(err(&["a.json"]).contains("--import-root"));
    let root = e.import_root();
    std::fs::create_dir_all(&root).unwrap();
    assert!(err(&["../catalog.json"]).contains("'..'"));
    assert!(err(&["a.json"]).contains("not found"));
    std::fs::write(root.join("a.csv"), "id\n1\n").unwrap();
    assert!(err(&["a.csv"]).contains("unsupported file type"));
    assert!(e
        .create_import_job("c", Some("nope"), &[vec!["a.csv".into()]])
        .unwrap_err()
        .to_string()
        .contains("partition 'nope' does not exist"));
    assert!(e.import_jobs(None).is_empty());

    // Fail in the background, saying why; nothing is imported.
    let cases: Vec<(Vec<String>, &str)> = {
        let v = vectors(10, 3);
        let g = npy_group(&root.join("nonames"), 0, &v);
        std::fs::remove_file(root.join("nonames/age.npy")).unwrap();
        let missing = g.iter().filter(|f| !f.contains("age")).cloned().collect();
        let g = npy_group(&root.join("short"), 0, &v);
        npy(&root.join("short/age.npy"), "<i4", &[9], &[0; 36]);
        let short = g;
        let g = npy_group(&root.join("dim"), 0, &v);
        npy(&root.join("dim/vec.npy"), "<f4", &[10, 8], &[0; 320]);
        let dim = g;
        std::fs::write(
            root.join("nan.json"),
            r#"[{"id": 1, "vec": [1.0, 2.0], "age": 1}]"#,
        )
        .unwrap();
        std::fs::write(
            root.join("dup.json"),
            serde_json::to_vec(&json!([
                {"id": 5, "vec": vec![0.0f32; DIM], "age": 1},
                {"id": 5, "vec": vec![0.0f32; DIM], "age": 1}
            ]))
            .unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("broken.json"), "[{\"id\": 1,").unwrap();
        vec![
            (missing, "no file for field 'age'"),
            (short, "9 rows; the group's other files hold 10"),
            (dim, "shape (rows, 16)"),
            (vec!["nan.json".into()], "row 0"),
            (
                vec!["dup.json".into()],
                "row 1, field 'id': duplicate primary key 5",
            ),
            (vec!["broken.json".into()], "invalid JSON"),
        ]
    };
    for (files, why) in cases {
        let p = wait(
            &e,
            &e.create_import_job("c", None, std::slice::from_ref(&files))
                .unwrap(),
        );
        assert_eq!(p.state, "Failed", "{files:?}");
        assert!(p.reason.contains(why), "{files:?}: {}", p.reason);
        assert!(p.files.iter().any(|f| f.2 == "Failed"), "{p:?}");
    }
    // The same key in two files of one job (rows are numbered across the job).
    std::fs::write(
        root.join("one.json"),
        r#"[{"id": 5, "vec": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0], "age": 1}]"#,
    )
    .unwrap();
    let p = wait(
        &e,
        &e.create_import_job(
            "c",
            None,
            &[vec!["one.json".into()], vec!["one.json".into()]],
        )
        .unwrap(),
    );
    assert!(
        p.reason
            .contains("row 1, field 'id': primary key 5 appears twice in the import"),
        "{}",
        p.reason
    );
    assert_eq!(count(&e, ""), 0);
    assert_eq!(segment_dirs(d.path()), 0);

    // An importer dropped before `finish` removes the segments it wrote.
    let mut imp = e.importer("c", None).unwrap();
    let rows: Vec<Value> = (0..300_000).map(|i| json!({"id": i, "age": 1})).collect();
    let flat: Vec<f32> = vec![0.25; 300_000 * DIM];
    imp.push(&rows, &[("vec".into(), flat)]).unwrap();
    assert!(segment_dirs(d.path()) > 0, "a full segment was written");
    drop(imp);
    assert_eq!(segment_dirs(d.path()), 0);
    assert_eq!(count(&e, ""), 0);
}

/// Copies every file under `dir` into `store` under `prefix/` (as a user uploads files to
/// a bucket).
fn upload(store: &dyn storage::Storage, dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            upload(store, &e.path(), &name);
        } else {
            store.put(&name, &std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// Files in an object store (`EngineConfig::import_store`): NumPy and JSON groups are
/// downloaded, imported and their copies deleted; a missing object is refused naming
/// its URL, paths cannot leave the store's keys, and nothing of the import source is
/// written.
#[test]
fn imports_from_an_object_store() {
    use storage::Storage;
    let d = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let bucket = Arc::new(storage::MemoryStorage::new());
    let v = vectors(3_000, 7);
    npy_group(&files.path().join("npy"), 0, &v);
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"id": 10_000 + i, "vec": vectors(1, 300 + i as u64)[0], "age": 9}))
        .collect();
    std::fs::write(
        files.path().join("rows.json"),
        serde_json::to_vec(&rows).unwrap(),
    )
    .unwrap();
    upload(&*bucket, files.path(), "incoming");
    let uploaded = bucket.list("").unwrap();
    let cfg = EngineConfig {
        import_store: Some(bucket.clone()),
        ..Default::default()
    };
    let e = Arc::new(Engine::open(d.path(), cfg).unwrap());
    e.create_collection("c", schema(), hnsw(), Consistency::Strong, "")
        .unwrap();
    assert!(matches!(
        e.import_source(),
        import::ImportSource::Store { ref prefix, .. } if prefix.is_empty()
    ));

    let group: Vec<String> = ["id", "vec", "age", "name"]
        .iter()
        .map(|f| format!("incoming/npy/{f}.npy"))
        .collect();
    let id = e
        .create_import_job("c", None, &[group, vec!["incoming/rows.json".into()]])
        .unwrap();
    let p = wait(&e, &id);
    assert_eq!(p.state, "Completed", "{p:?}");
    assert_eq!(p.imported_rows, 3_200);
    let sizes: u64 = uploaded.iter().map(|k| bucket.size(k).unwrap()).sum();
    assert_eq!(p.bytes, sizes, "sizes come from the store");
    assert_eq!(count(&e, ""), 3_200);
    assert_eq!(count(&e, "age == 9"), 200 + 30);
    let got = e
        .query(
            "c",
            &QueryRequest {
                filter: Some("id == 2345".into()),
                output_fields: vec!["vec".into(), "name".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got[0]["vec"], json!(v[2345]));
    assert_eq!(got[0]["name"], json!("n345"));
    // The downloaded copies are gone; the source is as it was.
    let tmp = d.path().join("import-tmp");
    assert!(
        !tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "copies left in {}",
        tmp.display()
    );
    assert_eq!(bucket.list("").unwrap(), uploaded);

    // Refused when the job is created, naming the object.
    let err = |f: &str| {
        e.create_import_job("c", None, &[vec![f.to_string()]])
            .unwrap_err()
            .to_string()
    };
    let m = err("incoming/nope.json");
    assert!(m.contains("not found at memory:/incoming/nope.json"), "{m}");
    assert!(err("incoming/../x.json").contains("'..'"));
    assert!(err("/incoming/rows.json").contains("'..'"));
    assert!(err("incoming\\rows.json").contains("'\\'"));

    // A file that fails to parse fails the job and leaves no copies either.
    bucket.put("incoming/broken.json", b"[{\"id\": 1,").unwrap();
    let p = wait(
        &e,
        &e.create_import_job("c", None, &[vec!["incoming/broken.json".into()]])
            .unwrap(),
    );
    assert_eq!(p.state, "Failed");
    assert!(p.reason.contains("invalid JSON"), "{}", p.reason);
    assert!(!tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none());
    assert_eq!(count(&e, ""), 3_200);
}
