//! Convolution kernels on EfficientNet-Lite0's shapes: `Conv1x1` (bias, ReLU6 and
//! residual applied in the kernel) against `matmul` followed by the same epilogue in a
//! second pass (the path CPUs without AVX-512F take).

use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    // (name, rows = pixels, input channels, output channels)
    let shapes = [
        ("expand_112x112_16to96", 112 * 112, 16, 96),
        ("project_56x56_144to24", 56 * 56, 144, 24),
        ("expand_14x14_80to480", 14 * 14, 80, 480),
        ("project_7x7_1152to320", 7 * 7, 1152, 320),
    ];
    for (name, m, k, n) in shapes {
        let (x, w, bias, res) = (data(m * k, 1), data(k * n, 2), data(n, 3), data(m * n, 4));
        let conv = magpie_linalg::Conv1x1::new(&w, &bias, k, n);
        let mut out = vec![0f32; m * n];
        c.bench_function(
            &format!("conv1x1/{}/{name}", magpie_linalg::active_isa()),
            |b| b.iter(|| conv.forward(black_box(&x), m, 0.0, 6.0, Some(&res), &mut out)),
        );
        c.bench_function(&format!("matmul_then_epilogue/{name}"), |b| {
            b.iter(|| {
                magpie_linalg::matmul(black_box(&x), &w, &mut out, m, k, n, false);
                for (row, r) in out.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
                    for ((o, b), r) in row.iter_mut().zip(&bias).zip(r) {
                        *o = (*o + b).clamp(0.0, 6.0) + r;
                    }
                }
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
