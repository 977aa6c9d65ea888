//! Filter evaluation over one segment of 1M rows: row by row over the values a growing
//! (or format-1) segment holds, against column-wise over the sealed typed columns of
//! format 2, and with scalar indexes on `price` and `title` and JSON path indexes on
//! `shop["city"]` and `shop["stars"]` (a nested object of the dynamic field). Results in docs/BENCHMARKS.md ("Typed columns").
//!
//! `cargo bench -p magpie-engine --bench filter`

use criterion::{criterion_group, criterion_main, Criterion};
use magpie_engine::column::{Column, JsonCast, PathIndex, SortedIndex};
use magpie_engine::filter::{Columns, Filter, JsonPath};
use magpie_engine::{CollectionSchema, DataType, FieldSchema, PrimaryKey};
use magpie_index::Bitset;
use once_cell::sync::OnceCell;
use serde_json::json;
use std::hint::black_box;

const N: usize = 1_000_000;

fn schema() -> CollectionSchema {
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("vector", DataType::FloatVector).with_dim(4),
            FieldSchema::new("price", DataType::Int64),
            FieldSchema::new("title", DataType::VarChar).with_max_length(64),
        ],
        enable_dynamic_field: true,
        description: String::new(),
        functions: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let colors = ["red", "green", "blue", "yellow", "purple"];
    // A deterministic spread (an LCG), so every run sees the same rows.
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let mut price = Vec::with_capacity(N);
    let mut title = Vec::with_capacity(N);
    let mut dynamic = Vec::with_capacity(N);
    for i in 0..N {
        price.push(json!(next() % 1000));
        title.push(json!(format!("item {i} {}", colors[next() % 5])));
        let shop = json!({"city": format!("city{}", next() % 50), "stars": next() % 5 + 1});
        dynamic.push(json!({"color": colors[next() % 5], "age": next() % 90 + 5, "shop": shop}));
    }
    let pks: Vec<PrimaryKey> = (0..N as i64).map(PrimaryKey::Int).collect();
    let values = vec![Column::Values(price), Column::Values(title)];
    let dyn_values = Column::Values(dynamic);
    let mut sealed = values.clone();
    sealed.iter_mut().for_each(Column::seal);
    let mut dyn_sealed = dyn_values.clone();
    dyn_sealed.seal();
    let rows = Columns::new(&pks, &values, &dyn_values);
    let typed = Columns::new(&pks, &sealed, &dyn_sealed);
    // The same with scalar indexes on price and title (built before timing).
    let slots: Vec<OnceCell<Option<SortedIndex>>> = sealed
        .iter()
        .map(|c| OnceCell::with_value(SortedIndex::build(c)))
        .collect();
    let indexed_fields = [true, true];
    let schema = schema();
    let paths: Vec<_> = [
        ("shop[\"city\"]", JsonCast::Varchar),
        ("shop[\"stars\"]", JsonCast::Double),
    ]
    .into_iter()
    .map(|(src, cast)| {
        let p = JsonPath::parse(src, &schema).unwrap();
        let ix = PathIndex::build(N, cast, |i| p.value(&typed, i)).unwrap();
        (p, std::sync::Arc::new(ix))
    })
    .collect();
    let indexed = Columns {
        indexed: &indexed_fields,
        sorted: &slots,
        paths: &paths,
        ..typed
    };
    let mut g = c.benchmark_group("filter_1M");
    g.sample_size(10);
    for (name, src) in [
        ("price<10", "price < 10"),
        ("age<10_dynamic", "age < 10"),
        ("quickstart", "color == \"blue\" and 10 < age < 20"),
        ("in_list", "price in [1, 2, 3, 500, 999]"),
        ("like_prefix", "title like \"item 12%\""),
        ("price==7", "price == 7"),
        ("price<500", "price < 500"),
        ("nested_eq", "shop[\"city\"] == \"city7\""),
        ("nested_range", "shop[\"stars\"] >= 4"),
    ] {
        let f = Filter::compile(src, &schema).unwrap();
        let run = |cols: &Columns<'_>| {
            let mut m = Bitset::ones(N);
            f.eval_columns(cols, &mut m);
            m.count_ones()
        };
        assert_eq!(run(&rows), run(&typed), "{src}");
        assert_eq!(run(&rows), run(&indexed), "{src}");
        g.bench_function(format!("{name}/rows"), |b| b.iter(|| black_box(run(&rows))));
        g.bench_function(format!("{name}/columns"), |b| {
            b.iter(|| black_box(run(&typed)))
        });
        g.bench_function(format!("{name}/indexed"), |b| {
            b.iter(|| black_box(run(&indexed)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
