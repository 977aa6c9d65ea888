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

/// 64 queries over rows larger than the caches: one search per query against one pass
/// for the batch (`FlatIndex::search_batch`).
fn batch(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let nq = 64;
    for (n, dim) in [(400_000usize, 128usize), (100_000, 384)] {
        let data: Vec<f32> = (0..n * dim).map(|_| rng.gen::<f32>()).collect();
        let qs: Vec<Vec<f32>> = (0..nq)
            .map(|_| (0..dim).map(|_| rng.gen::<f32>()).collect())
            .collect();
        let v = VectorSlice::new(&data, dim);
        let idx = FlatIndex::new(Metric::IP);
        let p = SearchParams::top_k(10);
        let mut g = c.benchmark_group(format!("flat/ip/{}k x {dim}/{nq} queries", n / 1000));
        g.sample_size(10);
        g.bench_function("per query", |b| {
            b.iter(|| {
                qs.iter()
                    .map(|q| idx.search(v, &[], q, &p).unwrap())
                    .collect::<Vec<_>>()
            })
        });
        g.bench_function("batch", |b| {
            b.iter(|| idx.search_batch(v, &[], &qs, &p).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench, batch);
criterion_main!(benches);
