use criterion::{criterion_group, criterion_main, Criterion};
use magpie_index::{Bitset, FlatIndex, Metric, SearchParams, VectorIndexRead, VectorSlice};
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let (n, dim) = (20_000usize, 128usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<f32> = (0..n * dim).map(|_| rng.gen::<f32>()).collect();
    let q: Vec<f32> = (0..dim).map(|_| rng.gen::<f32>()).collect();
    let v = VectorSlice::new(&data, dim);
    let idx = FlatIndex::new(Metric::L2);
    c.bench_function("flat/l2/20k x 128/top10", |b| {
        b.iter(|| idx.search(v, &[], &q, &SearchParams::top_k(10)).unwrap())
    });
    // The exact plan of a filtered search: 1 % of 1M rows passing, spread over the whole
    // set (as `magpie bench --filter-selectivity 1` spreads them), so every passing row
    // is a random read far from the last one.
    let n = 1_000_000usize;
    let data: Vec<f32> = (0..n * dim).map(|_| rng.gen::<f32>()).collect();
    let v = VectorSlice::new(&data, dim);
    let mut allow = Bitset::zeros(n);
    for i in 0..n {
        if i * 7919 % 100 < 1 {
            allow.set(i, true);
        }
    }
    let p = SearchParams {
        allow: Some(&allow),
        ..SearchParams::top_k(10)
    };
    c.bench_function("flat/l2/1M x 128, 1 % passing/top10", |b| {
        b.iter(|| idx.search(v, &[], &q, &p).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
