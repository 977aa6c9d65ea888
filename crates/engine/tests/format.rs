//! Segment format 2 (typed columns): filters evaluated a column at a time agree with
//! row-by-row evaluation on any data; format-1 segments still open and compaction
//! rewrites them; the scalar data of the quickstart schema takes at most a third of
//! format 1's bytes on disk.

use magpie_engine::column::Column;
use magpie_engine::filter::{Columns, Filter};
use magpie_engine::segment::Segment;
use magpie_engine::storage::{MemoryStorage, Storage};
use magpie_engine::*;
use magpie_index::Bitset;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

fn schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("v", DataType::FloatVector).with_dim(4),
            FieldSchema::new("age", DataType::Int32).nullable(),
            FieldSchema::new("score", DataType::Double).nullable(),
            FieldSchema::new("name", DataType::VarChar)
                .with_max_length(64)
                .nullable(),
            FieldSchema::new("ok", DataType::Bool).nullable(),
            FieldSchema::new("meta", DataType::JSON).nullable(),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    }
}

fn small_str() -> impl Strategy<Value = Value> {
    prop_oneof![Just("red"), Just("blue"), Just("Ab"), Just(""), Just("a%b")].prop_map(Value::from)
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::from),
        (-5i64..5).prop_map(|x| json!(x as f64 + 0.5)),
    ]
}

fn opt(s: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 4 => s]
}

/// One row's scalar values (schema order) and dynamic object.
fn row() -> impl Strategy<Value = (Vec<Value>, Value)> {
    let obj = prop::collection::vec(
        (
            prop_oneof![Just("a"), Just("b"), Just("city"), Just("rank")],
            prop_oneof![small_str(), number(), any::<bool>().prop_map(Value::from)],
        ),
        0..4,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    (
        opt((-5i64..5).prop_map(Value::from)),
        opt((-5i64..5).prop_map(|x| json!(x as f64 / 2.0))),
        opt(small_str()),
        opt(any::<bool>().prop_map(Value::from)),
        opt(prop_oneof![3 => obj.clone(), 1 => number()]),
        prop_oneof![3 => obj, 1 => Just(Value::Null), 1 => number()],
    )
        .prop_map(|(a, s, n, o, m, d)| (vec![a, s, n, o, m], d))
}

/// Filters built from the leaves column-wise evaluation handles, and some it does not.
fn filter() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("age"),
        Just("score"),
        Just("name"),
        Just("ok"),
        Just("city"),
        Just("rank"),
        Just("a"),
        Just("meta[\"a\"]"),
        Just("meta[\"rank\"]"),
        Just("id"),
    ];
    let lit = prop_oneof![
        (-6i64..6).prop_map(|x| x.to_string()),
        (-6i64..6).prop_map(|x| format!("{}.5", x)),
        Just("'red'".to_string()),
        Just("\"Ab\"".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
    ];
    let op = prop_oneof![
        Just("=="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">=")
    ];
    let leaf = prop_oneof![
        (field.clone(), op, lit.clone()).prop_map(|(f, o, l)| format!("{f} {o} {l}")),
        (lit.clone(), field.clone()).prop_map(|(l, f)| format!("{l} < {f}")),
        (
            field.clone(),
            prop::collection::vec(lit, 1..4),
            any::<bool>()
        )
            .prop_map(|(f, l, neg)| format!(
                "{f} {}in [{}]",
                if neg { "not " } else { "" },
                l.join(", ")
            )),
        (
            field.clone(),
            prop_oneof![Just("'r%'"), Just("'%b'"), Just("'A_'")],
            any::<bool>()
        )
            .prop_map(|(f, p, neg)| format!("{f} {}like {p}", if neg { "not " } else { "" })),
        (field.clone(), any::<bool>())
            .prop_map(|(f, neg)| format!("{f} is {}null", if neg { "not " } else { "" })),
        field.clone().prop_map(|f| format!("{f} + 1 > 2")),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn column_wise_evaluation_agrees_with_row_by_row(
        rows in prop::collection::vec(row(), 1..150),
        filters in prop::collection::vec(filter(), 1..6),
        mask_seed in any::<u64>(),
    ) {
        let schema = schema();
        let n = rows.len();
        let pks: Vec<PrimaryKey> = (0..n as i64).map(PrimaryKey::Int).collect();
        let values: Vec<Column> = (0..5)
            .map(|k| Column::Values(rows.iter().map(|r| r.0[k].clone()).collect()))
            .collect();
        let dyn_values = Column::Values(rows.iter().map(|r| r.1.clone()).collect());
        let mut sealed = values.clone();
        sealed.iter_mut().for_each(Column::seal);
        let mut dyn_sealed = dyn_values.clone();
        dyn_sealed.seal();
        let grow = Columns::new(&pks, &values, &dyn_values);
        let typed = Columns::new(&pks, &sealed, &dyn_sealed);
        // Scalar indexes on every field, used whenever one applies.
        let slots: Vec<once_cell::sync::OnceCell<Option<magpie_engine::column::SortedIndex>>> =
            sealed.iter().map(|_| Default::default()).collect();
        let all = vec![true; sealed.len()];
        let indexed = Columns { indexed: &all, sorted: &slots, always_use_indexes: true, ..typed };
        for i in 0..n {
            for k in 0..5 {
                prop_assert_eq!(sealed[k].get(i), values[k].get(i));
            }
            prop_assert_eq!(dyn_sealed.get(i), dyn_values.get(i));
        }
        for src in filters {
            let f = Filter::compile(&src, &schema).unwrap();
            // A mask with some rows already excluded (as deletes would).
            let mut mask = Bitset::ones(n);
            for i in 0..n {
                if (mask_seed >> (i % 64)) & 1 == 1 && i % 3 == 0 {
                    mask.set(i, false);
                }
            }
            let mut by_cols = mask.clone();
            f.eval_columns(&typed, &mut by_cols);
            let mut by_vals = mask.clone();
            f.eval_columns(&grow, &mut by_vals);
            let mut by_index = mask.clone();
            f.eval_columns(&indexed, &mut by_index);
            for (i, r) in rows.iter().enumerate() {
                let want = mask.get(i) && f.eval(&grow.row(i));
                prop_assert_eq!(by_cols.get(i), want, "typed, row {} of {:?}: {:?}", i, src, r);
                prop_assert_eq!(by_vals.get(i), want, "values, row {} of {:?}", i, src);
                prop_assert_eq!(by_index.get(i), want, "indexed, row {} of {:?}", i, src);
                prop_assert_eq!(f.eval(&typed.row(i)), f.eval(&grow.row(i)));
            }
        }
    }
}

fn quickstart_rows(range: std::ops::Range<i64>) -> Vec<Value> {
    let colors = ["red", "green", "blue", "yellow", "purple"];
    range
        .map(|i| {
            let v: Vec<f32> = (0..4).map(|d| ((i * 7 + d) % 13) as f32).collect();
            json!({"id": i, "vector": v, "color": colors[(i * 7 % 5) as usize],
                   "age": (i * 37) % 90 + 5})
        })
        .collect()
}

/// The README quickstart's collection (`id`, a 4-d vector, dynamic fields), segments
/// sealed at `seal_rows`.
fn quickstart(root: &Path, store: &Arc<dyn Storage>, seal_rows: usize) -> Engine {
    let e = Engine::open_with_storage(
        root,
        EngineConfig {
            seal_rows,
            index_min_rows: 1_000_000,
            ..Default::default()
        },
        store.clone(),
    )
    .unwrap();
    if !e.has_collection("demo") {
        let schema = CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("vector", DataType::FloatVector).with_dim(4),
            ],
            enable_dynamic_field: true,
            description: String::new(),
            functions: Vec::new(),
        };
        e.create_collection("demo", schema, vec![], Consistency::Strong, "")
            .unwrap();
    }
    e
}

fn answers(e: &Engine) -> Value {
    let q = |filter: &str| {
        e.query(
            "demo",
            &QueryRequest {
                filter: Some(filter.into()),
                output_fields: vec!["*".into()],
                limit: Some(1000),
                ..Default::default()
            },
        )
        .unwrap()
    };
    json!([
        q("color == 'blue' and 10 < age < 20"),
        q("color in ['red', 'green'] or age >= 90"),
        q("not (age < 50)"),
        e.collection_stats("demo").unwrap().row_count,
    ])
}

/// Segment ids of the collection, from its objects.
fn segment_prefixes(store: &dyn Storage) -> Vec<String> {
    let mut out: Vec<String> = store
        .list("collections/")
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with("/meta.json") && k.contains("/segments/"))
        .map(|k| k.trim_end_matches("meta.json").to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn format_1_segments_open_and_compaction_rewrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let before = {
        let e = quickstart(dir.path(), &store, 300);
        for b in 0..5 {
            e.insert("demo", None, &quickstart_rows(b * 200..(b + 1) * 200))
                .unwrap();
        }
        e.flush("demo").unwrap();
        answers(&e)
    };
    // Rewrite every segment as format 1 (as an older Magpie left them).
    let prefixes = segment_prefixes(&*store);
    assert!(prefixes.len() >= 3, "{prefixes:?}");
    for p in &prefixes {
        let seg = Segment::load(&store, p, 0).unwrap();
        seg.write_format(&*store, p, 1).unwrap();
        assert!(store.exists(&format!("{p}rows.mpk")).unwrap());
        assert!(!store.exists(&format!("{p}columns.bin")).unwrap());
    }
    let e = quickstart(dir.path(), &store, 300);
    assert_eq!(
        answers(&e),
        before,
        "format-1 segments give the same answers"
    );
    e.delete("demo", None, None, Some("age > 80")).unwrap();
    let after_delete = answers(&e);
    e.compact("demo").unwrap();
    assert_eq!(answers(&e), after_delete);
    let left = segment_prefixes(&*store);
    for p in &left {
        assert!(
            store.exists(&format!("{p}columns.bin")).unwrap(),
            "{p} rewritten as format 2"
        );
        assert!(!store.exists(&format!("{p}rows.mpk")).unwrap());
    }
    drop(e);
    let e = quickstart(dir.path(), &store, 300);
    assert_eq!(answers(&e), after_delete, "after a restart");
}

/// Disk bytes of the scalar data (everything but the vectors) of the quickstart schema,
/// 10,000 rows, in format 1 and format 2.
#[test]
fn format_2_scalar_data_is_at_most_a_third_of_format_1_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let e = quickstart(dir.path(), &store, 100_000);
    for b in 0..10 {
        e.insert("demo", None, &quickstart_rows(b * 1000..(b + 1) * 1000))
            .unwrap();
    }
    e.flush("demo").unwrap();
    let p = &segment_prefixes(&*store)[0];
    let v2 = store.get(&format!("{p}columns.bin")).unwrap().len();
    let seg = Segment::load(&store, p, 0).unwrap();
    assert_eq!(seg.len(), 10_000);
    seg.write_format(&*store, p, 1).unwrap();
    let v1 = store.get(&format!("{p}rows.mpk")).unwrap().len();
    println!(
        "quickstart scalar data on disk: format 1 {:.2} B/row, format 2 {:.2} B/row",
        v1 as f64 / 1e4,
        v2 as f64 / 1e4
    );
    assert!(v2 * 3 <= v1, "format 2 {v2} bytes vs format 1 {v1}");
}
