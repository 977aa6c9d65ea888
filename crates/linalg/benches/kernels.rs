use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    for dim in [128usize, 384, 768] {
        let a: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.11).cos()).collect();
        c.bench_function(
            &format!("dot/{}/{dim}", magpie_linalg::active_isa()),
            |bn| bn.iter(|| magpie_linalg::dot(black_box(&a), black_box(&b))),
        );
        c.bench_function(
            &format!("l2_sq/{}/{dim}", magpie_linalg::active_isa()),
            |bn| bn.iter(|| magpie_linalg::l2_sq(black_box(&a), black_box(&b))),
        );
        // SQ8 codes (HNSW_SQ's walk, IVF_SQ8's scan).
        let steps: Vec<f32> = (0..dim).map(|i| 0.01 + (i % 5) as f32 * 0.001).collect();
        let codes: Vec<u8> = (0..dim).map(|i| (i * 37 % 256) as u8).collect();
        c.bench_function(
            &format!("sq8_l2/{}/{dim}", magpie_linalg::active_isa()),
            |bn| {
                bn.iter(|| {
                    magpie_linalg::sq8_l2(black_box(&a), black_box(&steps), black_box(&codes))
                })
            },
        );
        c.bench_function(
            &format!("sq8_dot/{}/{dim}", magpie_linalg::active_isa()),
            |bn| bn.iter(|| magpie_linalg::sq8_dot(black_box(&a), black_box(&codes))),
        );
        c.bench_function(&format!("dot/scalar/{dim}"), |bn| {
            bn.iter(|| magpie_linalg::scalar::dot(black_box(&a), black_box(&b)))
        });
        // Half-precision rows read through the converting kernels.
        let h: Vec<u16> = b
            .iter()
            .map(|&x| magpie_linalg::f32_to_half(x, false).unwrap())
            .collect();
        let bf: Vec<u16> = b
            .iter()
            .map(|&x| magpie_linalg::f32_to_half(x, true).unwrap())
            .collect();
        c.bench_function(&format!("dot_f16/{dim}"), |bn| {
            bn.iter(|| magpie_linalg::dot_half(black_box(&a), black_box(&h), false))
        });
        c.bench_function(&format!("dot_bf16/{dim}"), |bn| {
            bn.iter(|| magpie_linalg::dot_half(black_box(&a), black_box(&bf), true))
        });
        c.bench_function(&format!("l2_sq_f16/{dim}"), |bn| {
            bn.iter(|| magpie_linalg::l2_sq_half(black_box(&a), black_box(&h), false))
        });
        // Binary vectors of `dim` bits.
        let x: Vec<u8> = (0..dim / 8).map(|i| (i * 37) as u8).collect();
        let y: Vec<u8> = (0..dim / 8).map(|i| (i * 11 + 5) as u8).collect();
        c.bench_function(&format!("hamming/{dim}bits"), |bn| {
            bn.iter(|| magpie_linalg::hamming(black_box(&x), black_box(&y)))
        });
        c.bench_function(&format!("jaccard/{dim}bits"), |bn| {
            bn.iter(|| magpie_linalg::jaccard(black_box(&x), black_box(&y)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
