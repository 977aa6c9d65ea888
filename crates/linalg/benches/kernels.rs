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
        c.bench_function(&format!("dot/scalar/{dim}"), |bn| {
            bn.iter(|| magpie_linalg::scalar::dot(black_box(&a), black_box(&b)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
