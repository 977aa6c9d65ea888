//! The bodies of Magpie's fuzz targets.
//!
//! Each function takes arbitrary bytes and drives one parser or decoder that reads
//! untrusted input (a request, a file on disk that may be damaged, a model file, an
//! image), checking the properties that must hold whatever the input: no panic, no
//! unbounded allocation, errors instead of garbage, and round trips where the format
//! has one. A broken property panics, which is what the fuzzer looks for.
//!
//! They are called from two places:
//! - `fuzz/fuzz_targets/*.rs`, the cargo-fuzz (libFuzzer) targets, for coverage-guided
//!   runs (`scripts/fuzz.sh`; a short run of the light targets in `.ci/run`);
//! - `tests/corpus.rs`, which replays every file of `fuzz/corpus/<target>/` and
//!   `fuzz/regressions/<target>/` through them on every `cargo test`, so the seeds and
//!   every crash ever found stay checked without a fuzzer installed.
//!
//! | target | reads | checks |
//! |---|---|---|
//! | `filter` | filter expressions | parse + compile + evaluate on rows with nulls, JSON, arrays, dynamic fields; bounded error text |
//! | `wal` | log files, log records | framing: valid prefix re-encodes byte for byte, framed records decode exactly; record bodies: schema check, then apply + read back |
//! | `segment` | segment files | meta/rows/vectors/tombstones give a checked segment or an error, every row readable |
//! | `index_file` | HNSW / IVF files | parse, then search a segment of the shape the file claims |
//! | `sparse` | sparse vectors (JSON), analyzer input | a vector parses to its canonical form and back; the three inverted-index walks equal scoring every row (IP and BM25); analyzers give bounded, non-empty terms |
//! | `torch` | legacy `torch.save` files | the unpickler returns tensors whose sizes match their shapes, or an error |
//! | `image` | encoded images | decode under small limits: an image within them, or an error |
//! | `request` | HTTP bodies | every REST endpoint answers below 500, and the server keeps answering |

use magpie_engine::catalog::{CollectionMeta, PartitionMeta};
use magpie_engine::collection::{Collection, SealPolicy, WalOp};
use magpie_engine::column::{Column, JsonCast, PathIndex};
use magpie_engine::filter::{parse, Columns, Filter, RowAccess};
use magpie_engine::segment::{Segment, VecData, VecSource};
use magpie_engine::{CollectionSchema, DataType, FieldSchema, PrimaryKey};
use magpie_index::Bitset;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("filter", filter),
    ("wal", wal),
    ("segment", segment),
    ("index_file", index_file),
    ("sparse", sparse),
    ("import_file", import_file),
    #[cfg(feature = "models")]
    ("torch", torch),
    #[cfg(feature = "models")]
    ("image", image),
    #[cfg(feature = "server")]
    ("request", request),
];

/// Bulk-import files: the same bytes as a NumPy header, a NumPy file (as both columns
/// of a two-field collection), a JSON import file and a Parquet file. No reader may
/// panic or hand over more than it was asked for; a NumPy header it accepts promises
/// only data inside the input.
pub fn import_file(data: &[u8]) {
    use magpie_engine::import::{self, json, npy, ImportFile, Loc};
    use std::sync::atomic::AtomicU64;
    if let Ok((_, shape, off)) = npy::parse_header(data) {
        assert!(off <= data.len() && !shape.is_empty() && shape.len() <= 2);
    }
    let mut rows = 0usize;
    let _ = json::stream(data, 7, &mut |b| {
        assert!(!b.is_empty() && b.len() <= 7);
        rows += b.len();
        Ok(())
    });
    let dir = std::env::temp_dir().join(format!("magpie-fuzz-import-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (a, b, pq) = (dir.join("id.npy"), dir.join("v.npy"), dir.join("f.parquet"));
    for p in [&a, &b, &pq] {
        std::fs::write(p, data).unwrap();
    }
    let schema = magpie_engine::CollectionSchema {
        fields: vec![
            magpie_engine::FieldSchema::new("id", magpie_engine::DataType::Int64).primary(false),
            magpie_engine::FieldSchema::new("v", magpie_engine::DataType::FloatVector).with_dim(2),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    };
    let n = data.len() as u64;
    let files = [
        ImportFile::Npy {
            files: vec![
                ("id".into(), Loc::Local(a), n),
                ("v".into(), Loc::Local(b), n),
            ],
            shown: "npy".into(),
        },
        ImportFile::Parquet {
            path: Loc::Local(pq),
            shown: "parquet".into(),
            bytes: n,
        },
    ];
    for f in &files {
        let total = AtomicU64::new(0);
        let _ = import::read(f, schema.clone(), 5, &total, &mut |(r, v)| {
            assert!(r.len() <= 5, "{} rows in a batch of 5", r.len());
            for (name, col) in &v {
                assert_eq!(col.len(), r.len() * 2, "{name}");
            }
            Ok(())
        });
    }
}

/// Sparse vectors and text analysis. The input is JSON text (a sparse vector, or a list
/// of them: the first is the query, the rest the rows of a segment), also analyzed as
/// text.
pub fn sparse(data: &[u8]) {
    use magpie_engine::schema::{parse_sparse, sparse_to_json};
    use magpie_index::{Bm25, Scoring, SparseAlgo, SparseIndex, SparseSearch, SparseVector};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for p in [
        json!({"type": "standard"}),
        json!({"type": "english"}),
        json!({"tokenizer": "whitespace", "filter": ["asciifolding", "lowercase", {"type": "length", "max": 10}]}),
    ] {
        let a = magpie_engine::analyzer::Analyzer::from_params(Some(&p)).unwrap();
        for t in a.analyze(text) {
            assert!(
                !t.is_empty() && t.len() <= magpie_engine::analyzer::MAX_TOKEN_BYTES,
                "{t:?}"
            );
        }
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let items: Vec<Value> = match v {
        Value::Array(a) => a.into_iter().take(64).collect(),
        x => vec![x],
    };
    let vecs: Vec<SparseVector> = items
        .iter()
        .filter_map(|x| {
            let s = parse_sparse(x).ok()?;
            // The canonical form parses back to the same vector.
            assert_eq!(parse_sparse(&sparse_to_json(&s)).unwrap(), s, "{x}");
            Some(s)
        })
        .collect();
    let Some((q, rows)) = vecs.split_first() else {
        return;
    };
    let ix = SparseIndex::build(
        rows.len(),
        rows.iter().enumerate().map(|(i, r)| (i as u32, r)),
    )
    .unwrap();
    let positive = rows
        .iter()
        .chain([q])
        .all(|r| r.values().iter().all(|x| *x > 0.0 && *x < 1e6));
    let mut scorings = vec![Scoring::Ip];
    if positive {
        scorings.push(Scoring::Bm25(Bm25 {
            k1: 1.2,
            b: 0.75,
            avgdl: 2.0,
        }));
    }
    for scoring in scorings {
        let mut brute: Vec<(f32, u32)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| q.score_with(r, scoring).map(|s| (s, i as u32)))
            .collect();
        if brute.iter().any(|(s, _)| !s.is_finite()) {
            continue;
        }
        brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for algo in [
            SparseAlgo::TaatNaive,
            SparseAlgo::DaatWand,
            SparseAlgo::DaatMaxScore,
        ] {
            let p = SparseSearch {
                scoring,
                algo,
                ..SparseSearch::top_k(5)
            };
            let got = ix.search(q, &p).unwrap();
            assert_eq!(got.len(), brute.len().min(5), "{algo:?}");
            for (g, w) in got.iter().zip(&brute) {
                let tol = 1e-3 * (1.0 + w.0.abs());
                assert!(
                    (g.score - w.0).abs() <= tol,
                    "{algo:?} {scoring:?}: {got:?} vs {brute:?}"
                );
            }
        }
    }
}

/// The schema the engine-level targets use: every scalar kind a filter can touch.
pub fn schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("v", DataType::FloatVector).with_dim(2),
            FieldSchema::new("age", DataType::Int32),
            FieldSchema::new("score", DataType::Double).nullable(),
            FieldSchema::new("name", DataType::VarChar)
                .with_max_length(64)
                .nullable(),
            FieldSchema::new("ok", DataType::Bool),
            FieldSchema::new("meta", DataType::JSON),
            FieldSchema::new("tags", DataType::Array).array_of(DataType::Int64, 8),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    }
}

struct Row {
    pk: PrimaryKey,
    s: Vec<Value>,
    d: Value,
}

impl RowAccess for Row {
    fn pk(&self) -> &PrimaryKey {
        &self.pk
    }
    fn scalar(&self, i: usize) -> Cow<'_, Value> {
        Cow::Borrowed(&self.s[i])
    }
    fn dynamic(&self) -> Cow<'_, Value> {
        Cow::Borrowed(&self.d)
    }
}

/// Checks that column-wise evaluation over `cols` agrees with row-wise evaluation.
fn agree(f: &Filter, cols: &Columns<'_>) {
    let n = cols.pks.len();
    let mut mask = Bitset::ones(n);
    f.eval_columns(cols, &mut mask);
    for i in 0..n {
        assert_eq!(
            mask.get(i),
            f.eval(&cols.row(i)),
            "row {i}: column-wise and row-wise evaluation of {:?} differ",
            f.text
        );
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            pk: PrimaryKey::Int(7),
            s: vec![
                json!(15),
                json!(2.5),
                json!("Alice 50%"),
                json!(true),
                json!({"color": "red", "n": [1, 2, {"deep": [null]}]}),
                json!([1, 2, 3]),
            ],
            d: json!({"city": "Oslo", "rank": 2.5, "list": [1, "a", null]}),
        },
        Row {
            pk: PrimaryKey::Int(i64::MIN),
            s: vec![
                json!(i32::MAX),
                Value::Null,
                Value::Null,
                json!(false),
                Value::Null,
                json!([]),
            ],
            d: Value::Null,
        },
        Row {
            pk: PrimaryKey::Int(-1),
            s: vec![
                json!(-3),
                json!(1e308),
                json!(""),
                json!(false),
                json!([[], {}, "x", 1e-300]),
                json!([i64::MAX, i64::MIN]),
            ],
            d: json!({"": 0, "city": ["Oslo"], "rank": "high"}),
        },
    ]
}

/// Filter expressions: parse, compile against [`schema`], evaluate on [`rows`].
pub fn filter(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(src);
    match Filter::compile(src, &schema()) {
        Ok(f) => {
            assert!(parsed.is_ok(), "compiled what does not parse: {src:?}");
            let rows = rows();
            let mut want = Vec::new();
            for r in &rows {
                want.push(f.eval(r));
            }
            // The same rows as a segment's columns, growing (values) and sealed (typed):
            // both evaluations give the row-by-row answer.
            let pks: Vec<PrimaryKey> = rows.iter().map(|r| r.pk.clone()).collect();
            for sealed in [false, true] {
                let mut scalars: Vec<Column> = (0..rows[0].s.len())
                    .map(|k| Column::Values(rows.iter().map(|r| r.s[k].clone()).collect()))
                    .collect();
                let mut dynamic = Column::Values(rows.iter().map(|r| r.d.clone()).collect());
                if sealed {
                    scalars.iter_mut().for_each(Column::seal);
                    dynamic.seal();
                }
                let cols = Columns::new(&pks, &scalars, &dynamic);
                for (i, w) in want.iter().enumerate() {
                    assert_eq!(f.eval(&cols.row(i)), *w, "row {i} of {src:?}");
                }
                agree(&f, &cols);
                // And through scalar indexes on every field, whenever one applies.
                let slots: Vec<_> = scalars.iter().map(|_| Default::default()).collect();
                let all = vec![true; scalars.len()];
                let indexed = Columns {
                    indexed: &all,
                    sorted: &slots,
                    always_use_indexes: true,
                    ..cols
                };
                agree(&f, &indexed);
                // And through JSON path indexes on every path the filter reads, with
                // each cast type (rows of other types and absent paths included).
                if sealed {
                    for cast in [JsonCast::Bool, JsonCast::Double, JsonCast::Varchar] {
                        let built: Vec<_> = f
                            .paths()
                            .into_iter()
                            .filter(|p| !p.keys.is_empty())
                            .filter_map(|p| {
                                let ix = PathIndex::build(pks.len(), cast, |i| p.value(&cols, i))?;
                                Some((p, std::sync::Arc::new(ix)))
                            })
                            .collect();
                        for always in [false, true] {
                            let with_paths = Columns {
                                paths: &built,
                                always_use_indexes: always,
                                ..cols
                            };
                            agree(&f, &with_paths);
                        }
                    }
                }
            }
        }
        Err(e) => {
            // Errors name the problem without echoing a long filter back.
            let msg = e.to_string();
            assert!(msg.len() <= 1024, "error text of {} bytes", msg.len());
        }
    }
}

fn collection(schema: CollectionSchema) -> Collection {
    Collection {
        meta: CollectionMeta {
            id: 1,
            name: "fuzz".into(),
            schema,
            partitions: vec![PartitionMeta {
                id: 1,
                name: "_default".into(),
            }],
            indexes: Vec::new(),
            consistency: Default::default(),
            created_ms: 0,
            loaded: true,
            description: String::new(),
        },
        store: std::sync::Arc::new(magpie_engine::storage::MemoryStorage::new()),
        prefix: "collections/1/".into(),
        segments: Vec::new(),
        pk_index: HashMap::new(),
        flushed_ts: 0,
        applied_ts: 0,
        next_segment_id: 1,
    }
}

/// Reads every row of every segment the way searches and queries do.
fn read_back(c: &Collection, f: &Filter) {
    for s in &c.segments {
        let visible = s.visible(u64::MAX);
        agree(f, &s.columns());
        for i in 0..s.len() {
            let row = s.row(i);
            let _ = (row.pk(), row.dynamic(), visible.get(i));
            let _ = f.eval(&row);
            for k in 0..s.scalars.len() {
                let _ = row.scalar(k);
            }
            for col in &s.vectors {
                let v = col.get().expect("vectors in memory");
                assert_eq!(v.data.bytes().len(), s.len() * col.dim * col.elem.size());
            }
        }
    }
}

/// Log files and records.
///
/// The input is read three ways: as a log file (the valid prefix must re-encode byte for
/// byte); as a list of records that the harness frames itself (they must decode exactly,
/// so the decoder is exercised past the checksum); and as one record body, which replay
/// applies only if it fits the schema — and then every row must be readable.
pub fn wal(data: &[u8]) {
    use magpie_engine::wal::{decode_all, encode};
    let (records, valid, err) = decode_all(data);
    assert!(valid <= data.len());
    assert_eq!(err.is_none(), valid == data.len());
    let mut again = Vec::new();
    for r in &records {
        encode(r.ts, r.collection, &r.op, &mut again);
    }
    assert_eq!(again, &data[..valid], "the valid prefix does not re-encode");

    let mut framed = Vec::new();
    let mut want = Vec::new();
    for (i, chunk) in data.split(|b| *b == 0xff).enumerate() {
        encode(i as u64, chunk.len() as u64, chunk, &mut framed);
        want.push(chunk);
    }
    let (got, valid, err) = decode_all(&framed);
    assert!(err.is_none() && valid == framed.len(), "{err:?}");
    assert_eq!(got.len(), want.len());
    for (i, (r, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            (r.ts, r.collection, r.op.as_slice()),
            (i as u64, w.len() as u64, *w)
        );
    }

    let Ok(op) = rmp_serde::from_slice::<WalOp>(data) else {
        return;
    };
    let schema = schema();
    if op.check(&schema).is_err() {
        return;
    }
    let mut c = collection(schema.clone());
    let policy = SealPolicy {
        max_rows: 4,
        max_bytes: 1 << 20,
        max_age_ms: u64::MAX,
    };
    c.apply(&op, 1, &policy);
    c.apply(&op, 2, &policy);
    let f =
        Filter::compile("age > 1 or name like 'A%' or meta['n'][0] == 1", &schema).expect("filter");
    read_back(&c, &f);
}

/// Takes a little-endian u32 length and that many bytes (or all that is left).
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 4 {
        let all = *data;
        *data = &[];
        return all;
    }
    let n = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let n = n.min(data.len() - 4);
    let out = &data[4..4 + n];
    *data = &data[4 + n..];
    out
}

/// Segment files: `[len][meta.json][len][columns.bin or rows.mpk][len][deletes.mpk][vector
/// bytes]` (the meta's `format` says which of the two row files it is).
/// The harness writes the right checksums into the meta (when it is a JSON object) so
/// that the decoder gets past them; a wrong checksum is tested by the unit tests.
pub fn segment(mut data: &[u8]) {
    let meta = take(&mut data);
    let rows = take(&mut data);
    let deletes = take(&mut data);
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let mut meta_v: Value = serde_json::from_slice(meta).unwrap_or(Value::Null);
    let n = meta_v["rows"].as_u64().unwrap_or(0) as usize;
    let dims: Vec<usize> = meta_v["dims"]
        .as_array()
        .map(|a| a.iter().map(|d| d.as_u64().unwrap_or(0) as usize).collect())
        .unwrap_or_default();
    let mut vectors = Vec::new();
    let mut rest = floats.as_slice();
    let mut crcs = Vec::new();
    for d in &dims {
        let want = n.saturating_mul(*d).min(rest.len());
        let (col, r) = rest.split_at(want);
        rest = r;
        let bytes: Vec<u8> = col.iter().flat_map(|x| x.to_le_bytes()).collect();
        crcs.push(crc32c::crc32c(&bytes));
        vectors.push(VecSource::Data(VecData::Owned(col.to_vec())));
    }
    if let Some(o) = meta_v.as_object_mut() {
        o.insert("crc_rows".into(), json!(crc32c::crc32c(rows)));
        o.insert("crc_vectors".into(), json!(crcs));
    }
    let meta_bytes = if meta_v.is_null() {
        meta.to_vec()
    } else {
        serde_json::to_vec(&meta_v).expect("json")
    };
    let deletes = (!deletes.is_empty()).then(|| (1, deletes.to_vec()));
    let dir = Path::new("/nonexistent/segments/1");
    let Ok(seg) = Segment::from_parts(dir, &meta_bytes, rows, vectors, deletes) else {
        return;
    };
    assert_eq!(seg.pks.len(), seg.len());
    assert!(seg.live_count() <= seg.len());
    let schema = schema();
    let mut c = collection(schema.clone());
    if seg.check_schema(&schema, dir).is_err() {
        return;
    }
    c.segments.push(seg);
    c.rebuild_pk_index();
    let f = Filter::compile(
        "age > 1 or name like 'A%' or meta['n'][0] == 1 or city == 'Oslo'",
        &schema,
    )
    .expect("filter");
    read_back(&c, &f);
}

/// Index files: byte 0 chooses HNSW or IVF, the rest is the file. A file that parses is
/// searched over vectors of the shape it claims (up to a size that keeps runs fast).
pub fn index_file(data: &[u8]) {
    use magpie_index::{Bitset, HnswIndex, IvfIndex, SearchParams, VectorIndexRead, VectorSlice};
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let ix = match kind % 3 {
        0 => HnswIndex::from_bytes(body).map(magpie_index::AnyIndex::Hnsw),
        1 => IvfIndex::from_bytes(body).map(magpie_index::AnyIndex::Ivf),
        _ => magpie_index::BinIvfIndex::from_bytes(body).map(magpie_index::AnyIndex::BinIvf),
    };
    let Ok(ix) = ix else {
        return;
    };
    let (n, dim) = ix.shape().expect("file-backed index");
    if dim == 0 || n.saturating_mul(dim) > 1 << 16 {
        return;
    }
    let vectors: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
        .collect();
    let bytes: Vec<u8> = (0..n * dim).map(|i| (i * 7919 % 251) as u8).collect();
    let binary = matches!(ix, magpie_index::AnyIndex::BinIvf(_));
    let v = if binary {
        VectorSlice::binary(&bytes, dim)
    } else {
        VectorSlice::new(&vectors, dim)
    };
    let inv = v.inv_norms();
    let query: Vec<f32> = (0..dim)
        .map(|i| {
            if binary {
                (i * 31 % 256) as f32
            } else {
                (i % 5) as f32 - 2.0
            }
        })
        .collect();
    let mut allow = Bitset::zeros(n);
    for i in (0..n).step_by(3) {
        allow.set(i, true);
    }
    for (k, allow, recall) in [
        (10, None, None),
        (3, Some(&allow), None),
        (n + 5, None, Some(0.9)),
    ] {
        let mut p = SearchParams::top_k(k);
        p.allow = allow;
        p.recall = recall;
        if let Ok(hits) = ix.search(v, &inv, &query, &p) {
            assert!(hits.len() <= k.min(n));
            assert!(
                hits.iter().all(|h| (h.offset as usize) < n),
                "hit out of range"
            );
        }
    }
}

/// Legacy `torch.save` files (the format EfficientNet-Lite0's weights come in).
#[cfg(feature = "models")]
pub fn torch(data: &[u8]) {
    if let Ok(tensors) = magpie_embed::torch::read_legacy_state_dict(data) {
        for (_, t) in tensors {
            let want: usize = t.shape.iter().product();
            assert_eq!(t.data.len(), want, "tensor size does not match its shape");
        }
    }
}

/// Encoded images, decoded under limits small enough that a run stays fast.
#[cfg(feature = "models")]
pub fn image(data: &[u8]) {
    use magpie_embed::image::{decode_bytes, DecodeLimits};
    let lim = DecodeLimits {
        max_file_bytes: 1 << 20,
        max_side: 2048,
        max_pixels: 1 << 20,
        max_alloc: 64 << 20,
    };
    if let Ok(d) = decode_bytes(data, "fuzz", &lim) {
        let (w, h) = d.rgb.dimensions();
        assert!(
            w as u64 * h as u64 <= lim.max_pixels,
            "{w}×{h} is over the limit"
        );
        assert!(w <= lim.max_side && h <= lim.max_side);
    }
}

#[cfg(feature = "server")]
mod request_target {
    use axum::body::Body;
    use axum::http::Request;
    use magpie_engine::{Engine, EngineConfig};
    use magpie_server::{router, AppState};
    use std::sync::{Arc, OnceLock};
    use tower::ServiceExt;

    /// The endpoints the fuzzer reaches; byte 0 of the input picks one.
    pub const ENDPOINTS: &[&str] = &[
        "/v2/vectordb/collections/create",
        "/v2/vectordb/collections/describe",
        "/v2/vectordb/collections/list",
        "/v2/vectordb/collections/get_stats",
        "/v2/vectordb/collections/load",
        "/v2/vectordb/collections/release",
        "/v2/vectordb/collections/rename",
        "/v2/vectordb/collections/flush",
        "/v2/vectordb/collections/compact",
        "/v2/vectordb/partitions/create",
        "/v2/vectordb/partitions/list",
        "/v2/vectordb/indexes/create",
        "/v2/vectordb/indexes/describe",
        "/v2/vectordb/entities/insert",
        "/v2/vectordb/entities/upsert",
        "/v2/vectordb/entities/delete",
        "/v2/vectordb/entities/get",
        "/v2/vectordb/entities/query",
        "/v2/vectordb/entities/search",
        "/v2/images/search",
        "/v2/images/index",
        "/v2/images/dupes",
    ];

    struct Server {
        rt: tokio::runtime::Runtime,
        app: axum::Router,
        _dir: std::path::PathBuf,
    }

    fn server() -> &'static Server {
        static S: OnceLock<Server> = OnceLock::new();
        S.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("magpie-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let engine = Arc::new(Engine::open(&dir, EngineConfig::default()).expect("engine"));
            // The image app with no models installed: its endpoints parse and check
            // everything, then answer that the model is missing.
            let store = magpie_embed::models::ModelStore::new(dir.join("models"));
            let emb = Arc::new(magpie_app::embedder::ModelEmbedder::new(store));
            engine.set_embedder(emb.clone());
            let images = Arc::new(magpie_server::images_api::ImageService::new(
                emb,
                dir.clone(),
                vec![dir.join("images")],
            ));
            let st = Arc::new(AppState {
                engine,
                metrics: Default::default(),
                token: None,
                images: Some(images),
                allowed_hosts: None,
                backups: None,
                inline: Default::default(),
            });
            let s = Server {
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
                app: router(st, 1 << 20),
                _dir: dir,
            };
            // A collection with every field kind and a few rows, for the other
            // endpoints to act on.
            for (ep, body) in [
                ("/v2/vectordb/collections/create", r#"{"collectionName":"c","schema":{"enableDynamicField":true,"fields":[{"fieldName":"id","dataType":"Int64","isPrimary":true},{"fieldName":"v","dataType":"FloatVector","elementTypeParams":{"dim":2}},{"fieldName":"age","dataType":"Int32"},{"fieldName":"name","dataType":"VarChar","nullable":true,"elementTypeParams":{"max_length":32}},{"fieldName":"meta","dataType":"JSON"},{"fieldName":"tags","dataType":"Array","elementDataType":"Int64","elementTypeParams":{"max_capacity":4}}]}}"#),
                ("/v2/vectordb/entities/insert", r#"{"collectionName":"c","data":[{"id":1,"v":[0.1,0.2],"age":3,"name":"a","meta":{"k":[1]},"tags":[1,2]},{"id":2,"v":[1,0],"age":40,"name":null,"meta":{},"tags":[],"x":"dyn"}]}"#),
            ] {
                let st = s.post(ep, body.as_bytes());
                assert!(st < 300, "seeding {ep}: {st}");
            }
            s
        })
    }

    impl Server {
        fn post(&self, path: &str, body: &[u8]) -> u16 {
            let req = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_vec()))
                .expect("request");
            self.rt.block_on(async {
                let resp = self.app.clone().oneshot(req).await.expect("infallible");
                let status = resp.status().as_u16();
                let _ = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
                status
            })
        }
    }

    pub fn request(data: &[u8]) {
        let Some((&which, body)) = data.split_first() else {
            return;
        };
        let s = server();
        let ep = ENDPOINTS[which as usize % ENDPOINTS.len()];
        let status = s.post(ep, body);
        assert!(status < 500, "{ep} answered {status}");
        assert_eq!(s.post("/v2/vectordb/collections/list", b"{}"), 200);
    }
}

/// REST request bodies: byte 0 picks the endpoint (see `ENDPOINTS` in the source), the
/// rest is the body. Every answer must be below 500, and the server must keep answering.
#[cfg(feature = "server")]
pub fn request(data: &[u8]) {
    request_target::request(data)
}
