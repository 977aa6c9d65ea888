//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`, made with
//! the real writers (engine, WAL, index builders, torch writer, image encoders), so the
//! fuzzer starts from valid inputs and mutates from there.
//!
//! `cargo run -p magpie-fuzzing --example seeds` (the output is committed; rerun it
//! when a format changes).

use magpie_engine::catalog::IndexMeta;
use magpie_engine::collection::WalOp;
use magpie_engine::schema::RowBatch;
use magpie_engine::{Consistency, Engine, EngineConfig, Metric, PrimaryKey};
use magpie_index::{Cancel, CodecKind, HnswIndex, HnswParams, IvfIndex, IvfParams, VectorSlice};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn out(target: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(out(target).join(name), bytes).unwrap();
}

fn rows() -> Vec<Value> {
    (0..6)
        .map(|i| {
            json!({
                "id": i, "v": [i as f32 / 3.0, 1.0 - i as f32 / 7.0], "age": i * 10,
                "score": if i % 2 == 0 { json!(i as f64 / 2.0) } else { Value::Null },
                "name": format!("name {i}"), "ok": i % 3 == 0,
                "meta": {"n": [i, i + 1], "color": if i % 2 == 0 { "red" } else { "blue" }},
                "tags": [i, 2 * i], "city": "Oslo"
            })
        })
        .collect()
}

fn filters() {
    for (i, f) in [
        "age > 10 && age < 40",
        "name like 'name%' or score is null",
        "meta['n'][0] in [1, 2, 3] and not ok",
        "array_contains(tags, 2) || city == \"Oslo\"",
        "(age + 2) * 3 % 5 == 1 and -score < 0.5",
        "json_contains_any(meta['n'], [1, 9]) and meta['color'] is not null",
        "id not in [1, 2] and 1 <= age <= 50 and name != ''",
        "array_length(tags) == 2 and tags[1] >= 0 and $meta['city'] like '%sl%'",
    ]
    .iter()
    .enumerate()
    {
        if let Err(e) = magpie_engine::filter::Filter::compile(f, &magpie_fuzzing::schema()) {
            panic!("seed filter {f:?}: {e}");
        }
        put("filter", &format!("seed-{i}"), f.as_bytes());
    }
}

fn batch(n: usize) -> RowBatch {
    RowBatch {
        pks: (0..n as i64).map(PrimaryKey::Int).collect(),
        vectors: vec![(0..2 * n).map(|i| i as f32 / 10.0).collect()],
        scalars: vec![
            (0..n).map(|i| json!(i)).collect(),
            (0..n).map(|i| json!(i as f64 + 0.5)).collect(),
            (0..n).map(|i| json!(format!("A{i}"))).collect(),
            (0..n).map(|i| json!(i % 2 == 0)).collect(),
            (0..n).map(|i| json!({"n": [i]})).collect(),
            (0..n).map(|i| json!([i])).collect(),
        ],
        dynamic: (0..n).map(|i| json!({"city": format!("c{i}")})).collect(),
    }
}

fn wal(engine_dir: &Path) {
    let ops = [
        WalOp::Insert {
            partition: 1,
            batch: batch(3),
        },
        WalOp::Upsert {
            partition: 1,
            batch: batch(5),
        },
        WalOp::Delete {
            pks: vec![PrimaryKey::Int(1), PrimaryKey::Int(4)],
        },
    ];
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let bytes = rmp_serde::to_vec(op).unwrap();
        put("wal", &format!("op-{i}"), &bytes);
        magpie_engine::wal::encode(i as u64 + 1, 7, &bytes, &mut log);
    }
    put("wal", "log-3-records", &log);
    // A real log file written by the engine.
    let wal_dir = engine_dir.join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let b = std::fs::read(f).unwrap();
        if !b.is_empty() && b.len() < 64 << 10 {
            put("wal", &format!("engine-log-{i}"), &b);
        }
    }
}

fn segments(coll_dir: &Path) {
    let segdir = coll_dir.join("segments");
    let mut n = 0;
    for e in std::fs::read_dir(&segdir).unwrap().flatten() {
        let d = e.path();
        let read = |name: &str| std::fs::read(d.join(name)).unwrap_or_default();
        let mut deletes = Vec::new();
        for f in std::fs::read_dir(&d).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.starts_with("deletes-") {
                deletes = read(&name);
            }
        }
        let mut b = Vec::new();
        // Format 2 (`columns.bin`); the format-1 seeds (`rows.mpk`) of earlier runs stay
        // in the corpus under their old names.
        for part in [read("meta.json"), read("columns.bin"), deletes] {
            b.extend((part.len() as u32).to_le_bytes());
            b.extend(part);
        }
        b.extend(read("vector_0.f32"));
        put("segment", &format!("segment-v2-{n}"), &b);
        // The same without tombstones (an empty deletes part).
        let meta = read("meta.json");
        let rows = read("columns.bin");
        let mut b = Vec::new();
        for part in [meta, rows, Vec::new()] {
            b.extend((part.len() as u32).to_le_bytes());
            b.extend(part);
        }
        b.extend(read("vector_0.f32"));
        put("segment", &format!("segment-v2-{n}-live"), &b);
        n += 1;
    }
    assert!(n >= 1, "no flushed segment under {}", segdir.display());
}

fn indexes() {
    let n = 300;
    let dim = 8;
    let data: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 7919) % 1009) as f32 / 1009.0 - 0.5)
        .collect();
    let v = VectorSlice::new(&data, dim);
    let inv = v.inv_norms();
    let cancel = Cancel::new();
    for (name, sq8, metric) in [
        ("hnsw-l2", false, Metric::L2),
        ("hnsw-sq-cosine", true, Metric::COSINE),
    ] {
        let p = HnswParams {
            m: 4,
            ef_construction: 32,
            threads: 1,
            sq8,
            ..Default::default()
        };
        let ix = HnswIndex::build_with(v, &inv, metric, &p, &cancel).unwrap();
        let mut b = vec![0u8];
        b.extend(ix.to_bytes());
        put("index_file", name, &b);
    }
    for (name, codec) in [
        ("ivf-flat", CodecKind::Flat),
        ("ivf-sq8", CodecKind::Sq8),
        ("ivf-pq", CodecKind::Pq { m: 4 }),
    ] {
        let p = IvfParams {
            nlist: 8,
            codec,
            threads: 1,
            ..Default::default()
        };
        let ix = IvfIndex::build_with(v, &inv, Metric::IP, &p, &cancel).unwrap();
        let mut b = vec![1u8];
        b.extend(ix.to_bytes());
        put("index_file", name, &b);
    }
    let bits: Vec<u8> = (0..n * 4).map(|i| (i * 7919 % 251) as u8).collect();
    let p = magpie_index::BinIvfParams {
        nlist: 8,
        threads: 1,
        ..Default::default()
    };
    let ix = magpie_index::BinIvfIndex::build(
        VectorSlice::binary(&bits, 4),
        Metric::HAMMING,
        &p,
        &cancel,
    )
    .unwrap();
    let mut b = vec![2u8];
    b.extend(ix.to_bytes());
    put("index_file", "bin-ivf-hamming", &b);
}

fn torch() {
    use magpie_embed::torch::write_legacy_state_dict;
    put(
        "torch",
        "one-tensor",
        &write_legacy_state_dict(&[("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]),
    );
    put(
        "torch",
        "three-tensors",
        &write_legacy_state_dict(&[
            ("conv.weight", &[1, 1, 2, 2], &[0.5, -0.5, 0.25, 1.0]),
            ("bn.bias", &[2], &[0.0, 1.0]),
            ("scalar", &[], &[3.0]),
        ]),
    );
    put("torch", "empty", &write_legacy_state_dict(&[]));
}

fn images() {
    use image::{ImageFormat, RgbImage};
    let img = RgbImage::from_fn(19, 11, |x, y| {
        image::Rgb([(x * 13) as u8, (y * 23) as u8, ((x + y) * 5) as u8])
    });
    for (name, fmt) in [
        ("png", ImageFormat::Png),
        ("jpeg", ImageFormat::Jpeg),
        ("gif", ImageFormat::Gif),
        ("webp", ImageFormat::WebP),
    ] {
        let mut c = std::io::Cursor::new(Vec::new());
        img.write_to(&mut c, fmt).unwrap();
        put("image", name, &c.into_inner());
    }
}

fn requests() {
    let eps = [
        (
            0,
            json!({"collectionName": "d", "dimension": 3, "metricType": "IP"}),
        ),
        (13, json!({"collectionName": "c", "data": rows()})),
        (
            17,
            json!({"collectionName": "c", "filter": "age > 3 and name like 'a%'", "limit": 5, "outputFields": ["*"]}),
        ),
        (
            18,
            json!({"collectionName": "c", "data": [[0.1, 0.2]], "limit": 3, "filter": "meta['k'][0] == 1", "outputFields": ["name"], "searchParams": {"params": {"ef": 16}}}),
        ),
        (15, json!({"collectionName": "c", "filter": "id in [1]"})),
        (
            11,
            json!({"collectionName": "c", "indexParams": [{"fieldName": "v", "indexName": "v", "metricType": "L2", "indexType": "HNSW", "params": {"M": 8}}]}),
        ),
        (
            16,
            json!({"collectionName": "c", "id": [1, 2], "outputFields": ["*"]}),
        ),
        (1, json!({"collectionName": "c"})),
        (
            19,
            json!({"collectionName": "c", "text": "a dog", "limit": 3}),
        ),
    ];
    for (i, (ep, body)) in eps.iter().enumerate() {
        let mut b = vec![*ep as u8];
        b.extend(serde_json::to_vec(body).unwrap());
        put("request", &format!("seed-{i}"), &b);
    }
}

fn sparse() {
    let seeds = [
        r#"{"3": 1.0, "17": 0.5}"#,
        r#"[{"3": 1.0, "9": 2.0}, {"3": 0.5}, {"indices": [3, 9, 40], "values": [1.0, 2.5, 0.25]}, {"9": 4.0}, {"7": -1.0, "3": 2.0}]"#,
        r#"[{"indices": [1, 2], "values": [1.0, 1.0]}, {"1": 3.0}, {"2": 1.5, "1": 0.5}, {"4294967294": 1.0}]"#,
        "The quick brown Foxes, naïve café 3.14 e-mail: a@b.com",
    ];
    for (i, s) in seeds.iter().enumerate() {
        put("sparse", &format!("seed-{i}"), s.as_bytes());
    }
}

fn import_file() {
    // A NumPy header and data, a JSON import file, a Parquet file (written here).
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }".to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        npy.extend_from_slice(&x.to_le_bytes());
    }
    put("import_file", "seed-npy", &npy);
    put(
        "import_file",
        "seed-json",
        br#"{"rows": [{"id": 1, "v": [0.5, 1.0]}, {"id": 2, "v": [1.5, -1.0], "extra": "x"}]}"#,
    );
    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    let v = arrow_array::FixedSizeListArray::try_new(
        std::sync::Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            true,
        )),
        2,
        std::sync::Arc::new(arrow_array::Float32Array::from(vec![
            0.5f32, 1.0, 1.5, -1.0,
        ])),
        None,
    )
    .unwrap();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            std::sync::Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ),
        ("v", std::sync::Arc::new(v) as ArrayRef),
    ])
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    put("import_file", "seed-parquet", &buf);
}

fn main() {
    sparse();
    import_file();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineConfig::default()).unwrap();
    engine
        .create_collection(
            "c",
            magpie_fuzzing::schema(),
            vec![IndexMeta {
                id: 0,
                index_name: "v".into(),
                field_name: "v".into(),
                index_type: "FLAT".into(),
                metric_type: Metric::L2,
                params: Default::default(),
            }],
            Consistency::Strong,
            "",
        )
        .unwrap();
    engine.insert("c", None, &rows()).unwrap();
    engine.delete("c", None, None, Some("id in [2]")).unwrap();
    wal(dir.path());
    engine.flush("c").unwrap();
    let more: Vec<Value> = rows()
        .into_iter()
        .map(|mut r| {
            r["id"] = json!(r["id"].as_i64().unwrap() + 100);
            r
        })
        .collect();
    engine.insert("c", None, &more).unwrap();
    engine.flush("c").unwrap();
    let id = engine.describe_collection("c").unwrap().id;
    segments(&dir.path().join("collections").join(id.to_string()));
    filters();
    indexes();
    torch();
    images();
    requests();
    println!("seeds written under fuzz/corpus/");
}
