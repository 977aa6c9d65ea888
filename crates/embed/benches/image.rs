//! Image embedding costs: Lite0's forward pass (with generated weights: the cost does not
//! depend on their values), its preprocessing, and the crop-only resize.

use criterion::{criterion_group, criterion_main, Criterion};
use magpie_embed::effnet::{Lite0, INPUT};
use magpie_embed::resize::resize_crop;
use magpie_embed::vision::lite0_input;
use std::hint::black_box;

fn photo() -> image::RgbImage {
    // The shape of the ImageNet sample's photos: shorter side 256.
    image::RgbImage::from_fn(341, 256, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    })
}

fn bench(c: &mut Criterion) {
    let net = Lite0::random(1);
    let img = photo();
    let input = lite0_input(&img);
    c.bench_function("lite0_forward_224", |b| {
        b.iter(|| black_box(net.forward(black_box(&input))))
    });
    c.bench_function("lite0_preprocess_341x256", |b| {
        b.iter(|| black_box(lite0_input(black_box(&img))))
    });
    c.bench_function("resize_crop_341x256_to_224", |b| {
        b.iter(|| {
            black_box(resize_crop(
                black_box(&img),
                298,
                224,
                37,
                0,
                INPUT as u32,
                INPUT as u32,
            ))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
