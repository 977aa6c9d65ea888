//! Calibrating the duplicate threshold of [`crate::images::dupes`] on real photos.
//!
//! Each photo of a folder gets copies made the way duplicates arise in practice
//! ([`TRANSFORMS`]: re-encoded, resized, cropped), encoded to bytes and decoded again
//! through the same path as a file on disk. Every image is embedded with
//! EfficientNet-Lite0 (the features `dupes` compares), and every pair of images is
//! scored by cosine similarity. A pair is a duplicate when both come from the same
//! photo (a photo and its copy, or two copies of it); every other pair is not. For each
//! threshold, a pair is *predicted* a duplicate when its similarity is at least the
//! threshold; precision and recall are over pairs.
//!
//! `dupes` itself links each image to those of its 16 nearest neighbours above the
//! threshold, so on a folder with more than 16 copies of one photo it can find fewer
//! pairs than this measures; the folders used here have at most six.

use crate::{AppError, Result};
use image::{imageops, ImageEncoder as _, RgbImage};
use magpie_embed::image::{decode_bytes, decode_file, DecodeLimits};
use magpie_embed::vision::{par_map, ImageEncoder};
use serde::Serialize;
use std::path::PathBuf;

/// A way a duplicate arises: its name and the bytes of the copy.
pub struct Transform {
    pub name: &'static str,
    pub make: fn(&RgbImage) -> Vec<u8>,
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("encoding a JPEG into memory");
    out
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding a PNG into memory");
    out
}

fn scaled(img: &RgbImage, f: f64) -> RgbImage {
    let (w, h) = (
        ((img.width() as f64 * f).round() as u32).max(1),
        ((img.height() as f64 * f).round() as u32).max(1),
    );
    imageops::resize(img, w, h, imageops::FilterType::Triangle)
}

/// The centre `f` of each side.
fn centre(img: &RgbImage, f: f64) -> RgbImage {
    let (w, h) = (
        ((img.width() as f64 * f).round() as u32).max(1),
        ((img.height() as f64 * f).round() as u32).max(1),
    );
    imageops::crop_imm(img, (img.width() - w) / 2, (img.height() - h) / 2, w, h).to_image()
}

/// The copies made of each photo.
pub const TRANSFORMS: [Transform; 5] = [
    Transform {
        name: "jpeg-q50",
        make: |i| jpeg(i, 50),
    },
    Transform {
        name: "resize80-q70",
        make: |i| jpeg(&scaled(i, 0.8), 70),
    },
    Transform {
        name: "resize50-png",
        make: |i| png(&scaled(i, 0.5)),
    },
    Transform {
        name: "crop90-q85",
        make: |i| jpeg(&centre(i, 0.9), 85),
    },
    Transform {
        name: "crop75-q85",
        make: |i| jpeg(&centre(i, 0.75), 85),
    },
];

/// Precision and recall at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    /// Duplicate pairs at or above the threshold.
    pub true_pairs: usize,
    /// Other pairs at or above the threshold.
    pub false_pairs: usize,
    /// Per transform (in [`TRANSFORMS`] order): the share of photo–copy pairs found.
    pub recall_by_transform: Vec<f64>,
}

/// The result of [`sweep`].
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub photos: usize,
    /// Files that could not be read or decoded (left out).
    pub skipped: Vec<(String, String)>,
    pub transforms: Vec<&'static str>,
    pub duplicate_pairs: usize,
    pub other_pairs: usize,
    /// Least similar duplicate pair and most similar other pair.
    pub min_duplicate: f32,
    pub max_other: f32,
    pub rows: Vec<SweepRow>,
    /// The highest threshold with recall ≥ 0.95 and precision ≥ 0.99, if any.
    pub best: Option<f32>,
}

/// Thresholds 0.50, 0.51, …, 0.99.
pub fn default_thresholds() -> Vec<f32> {
    (50..100).map(|i| i as f32 / 100.0).collect()
}

/// Runs the calibration on `files` (module docs) with `threads` workers; `progress` is
/// called with the number of photos embedded so far.
pub fn sweep(
    enc: &ImageEncoder,
    files: &[PathBuf],
    thresholds: &[f32],
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Sweep> {
    if files.is_empty() {
        return Err(AppError::bad_request("no images to calibrate on"));
    }
    let lim = DecodeLimits::default();
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Per photo: its features and its copies' (unit length), or why it was left out.
    let per: Vec<std::result::Result<Vec<Vec<f32>>, String>> = par_map(files, threads, |f| {
        let r = (|| {
            let d = decode_file(f, &lim).map_err(|e| e.to_string())?;
            let mut feats = vec![unit(enc.run(&d.rgb).feature)];
            for t in &TRANSFORMS {
                let bytes = (t.make)(&d.rgb);
                let c = decode_bytes(&bytes, t.name, &lim).map_err(|e| e.to_string())?;
                feats.push(unit(enc.run(&c.rgb).feature));
            }
            Ok(feats)
        })();
        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        r
    });
    let mut skipped = Vec::new();
    let mut groups = Vec::new();
    for (f, r) in files.iter().zip(per) {
        match r {
            Ok(v) => groups.push(v),
            Err(e) => skipped.push((f.display().to_string(), e)),
        }
    }
    if groups.is_empty() {
        return Err(AppError::bad_request("no image could be decoded"));
    }
    let per_photo = TRANSFORMS.len() + 1;
    let items: Vec<(usize, usize, &[f32])> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, v)| v.iter().enumerate().map(move |(k, x)| (g, k, x.as_slice())))
        .collect();
    let lowest = thresholds.iter().copied().fold(f32::INFINITY, f32::min);
    // Duplicate pairs: (similarity, transform of a photo–copy pair or None for two
    // copies). Other pairs: only those that reach the lowest threshold, and the largest.
    struct Acc {
        dup: Vec<(f32, Option<usize>)>,
        other: Vec<f32>,
        max_other: f32,
        n_other: usize,
    }
    let rows: Vec<usize> = (0..items.len()).collect();
    let accs = par_map(&rows, threads, |&a| {
        let mut acc = Acc {
            dup: Vec::new(),
            other: Vec::new(),
            max_other: f32::NEG_INFINITY,
            n_other: 0,
        };
        let (ga, ka, xa) = items[a];
        for &(gb, kb, xb) in &items[a + 1..] {
            let s = magpie_linalg::dot(xa, xb);
            if ga == gb {
                acc.dup.push((s, (ka == 0).then(|| kb - 1)));
            } else {
                acc.n_other += 1;
                acc.max_other = acc.max_other.max(s);
                if s >= lowest {
                    acc.other.push(s);
                }
            }
        }
        acc
    });
    let mut dup = Vec::new();
    let mut other = Vec::new();
    let (mut max_other, mut n_other) = (f32::NEG_INFINITY, 0usize);
    for a in accs {
        dup.extend(a.dup);
        other.extend(a.other);
        max_other = max_other.max(a.max_other);
        n_other += a.n_other;
    }
    let min_duplicate = dup.iter().map(|d| d.0).fold(f32::INFINITY, f32::min);
    let per_transform = groups.len();
    let rows: Vec<SweepRow> = thresholds
        .iter()
        .map(|&t| {
            let true_pairs = dup.iter().filter(|d| d.0 >= t).count();
            let false_pairs = other.iter().filter(|&&s| s >= t).count();
            let found = true_pairs + false_pairs;
            SweepRow {
                threshold: t,
                precision: if found == 0 {
                    1.0
                } else {
                    true_pairs as f64 / found as f64
                },
                recall: true_pairs as f64 / dup.len().max(1) as f64,
                true_pairs,
                false_pairs,
                recall_by_transform: (0..TRANSFORMS.len())
                    .map(|k| {
                        dup.iter().filter(|d| d.1 == Some(k) && d.0 >= t).count() as f64
                            / per_transform as f64
                    })
                    .collect(),
            }
        })
        .collect();
    let best = rows
        .iter()
        .filter(|r| r.recall >= 0.95 && r.precision >= 0.99)
        .map(|r| r.threshold)
        .fold(None, |m: Option<f32>, t| Some(m.map_or(t, |m| m.max(t))));
    debug_assert_eq!(dup.len(), groups.len() * per_photo * (per_photo - 1) / 2);
    Ok(Sweep {
        photos: groups.len(),
        skipped,
        transforms: TRANSFORMS.iter().map(|t| t.name).collect(),
        duplicate_pairs: dup.len(),
        other_pairs: n_other,
        min_duplicate,
        max_other,
        rows,
        best,
    })
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    magpie_linalg::normalize(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_have_the_sizes_their_names_say() {
        let img = RgbImage::from_fn(200, 100, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let lim = DecodeLimits::default();
        let dims: Vec<(u32, u32)> = TRANSFORMS
            .iter()
            .map(|t| {
                let d = decode_bytes(&(t.make)(&img), t.name, &lim).unwrap();
                (d.rgb.width(), d.rgb.height())
            })
            .collect();
        assert_eq!(
            dims,
            [(200, 100), (160, 80), (100, 50), (180, 90), (150, 75)]
        );
    }
}
