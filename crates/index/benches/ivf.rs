//! IVF search (FLAT, SQ8, PQ codecs) on 20k clustered 128-d vectors (L2), nlist 128.

use criterion::{criterion_group, criterion_main, Criterion};
use magpie_index::{
    Cancel, CodecKind, IvfIndex, IvfParams, Metric, SearchParams, VectorIndexBuild,
    VectorIndexRead, VectorSlice,
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
    for (name, codec) in [
        ("flat", CodecKind::Flat),
        ("sq8", CodecKind::Sq8),
        ("pq32", CodecKind::Pq { m: 32 }),
    ] {
        let p = IvfParams {
            nlist: 128,
            codec,
            measure_recall: false,
            ..Default::default()
        };
        let idx = IvfIndex::build(v, Metric::L2, &p, &Cancel::new()).unwrap();
        let mut i = 0;
        c.bench_function(
            &format!("ivf_{name}/search/20k x 128/nlist128 nprobe8/top10"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % 100;
                    let sp = SearchParams {
                        nprobe: Some(8),
                        ..SearchParams::top_k(10)
                    };
                    idx.search(v, &[], &queries[i * dim..(i + 1) * dim], &sp)
                        .unwrap()
                })
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
