//! HNSW build and search on 20k clustered 128-d vectors (L2).

use criterion::{criterion_group, criterion_main, Criterion};
use magpie_index::{
    Cancel, HnswIndex, HnswParams, Metric, SearchParams, VectorIndexBuild, VectorIndexRead,
    VectorSlice,
};
use rand::{Rng, SeedableRng};

fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut c = rand::rngs::StdRng::seed_from_u64(99);
    let centres: Vec<f32> = (0..64 * dim).map(|_| c.gen_range(-5.0..5.0)).collect();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let k = r.gen_range(0..64);
        for d in 0..dim {
            out.push(centres[k * dim + d] + r.gen_range(-1.0..1.0));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let (n, dim) = (20_000usize, 128usize);
    let data = clustered(n, dim, 1);
    let queries = clustered(100, dim, 2);
    let v = VectorSlice::new(&data, dim);
    let p = HnswParams {
        measure_recall: false,
        threads: 1,
        ..Default::default()
    };
    let mut g = c.benchmark_group("hnsw");
    g.sample_size(10);
    g.bench_function("build/20k x 128/M16 efC200/1 thread", |b| {
        b.iter(|| HnswIndex::build(v, Metric::L2, &p, &Cancel::new()).unwrap())
    });
    g.finish();
    let idx = HnswIndex::build(v, Metric::L2, &p, &Cancel::new()).unwrap();
    for ef in [16usize, 64] {
        let mut i = 0;
        c.bench_function(&format!("hnsw/search/20k x 128/ef{ef}/top10"), |b| {
            b.iter(|| {
                i = (i + 1) % 100;
                let sp = SearchParams {
                    ef: Some(ef),
                    ..SearchParams::top_k(10)
                };
                idx.search(v, &[], &queries[i * dim..(i + 1) * dim], &sp)
                    .unwrap()
            })
        });
    }
    // The same data stored as float16 (half the bytes), graph built over those rows and
    // searched through the converting kernels.
    let half: Vec<u16> = data
        .iter()
        .map(|&x| magpie_linalg::f32_to_half(x, false).unwrap())
        .collect();
    let vh = VectorSlice::half(&half, dim, false);
    let idx = HnswIndex::build(vh, Metric::L2, &p, &Cancel::new()).unwrap();
    for ef in [16usize, 64] {
        let mut i = 0;
        c.bench_function(&format!("hnsw/search-f16/20k x 128/ef{ef}/top10"), |b| {
            b.iter(|| {
                i = (i + 1) % 100;
                let sp = SearchParams {
                    ef: Some(ef),
                    ..SearchParams::top_k(10)
                };
                idx.search(vh, &[], &queries[i * dim..(i + 1) * dim], &sp)
                    .unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
