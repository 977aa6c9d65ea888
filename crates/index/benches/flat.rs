use criterion::{criterion_group, criterion_main, Criterion};
use magpie_index::{FlatIndex, Metric, SearchParams, VectorIndexRead, VectorSlice};
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
