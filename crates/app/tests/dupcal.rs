//! The duplicate-threshold calibration on real photos (`magpie images dupes-sweep`):
//! pair counts, monotone curves, and the default threshold finding resized and
//! re-encoded copies without false pairs. Needs EfficientNet-Lite0's weights and
//! `../shared`; each absence is a reported skip (CI provides both).

use magpie_app::dupcal::{sweep, TRANSFORMS};
use magpie_app::embedder::LITE0;
use magpie_app::images::DEFAULT_DUP_THRESHOLD;

#[test]
fn default_threshold_finds_resized_and_reencoded_copies_and_nothing_else() {
    let Some(dir) = magpie_testkit::shared("data/imagenet-sample-256") else {
        return;
    };
    let store = magpie_embed::models::ModelStore::new(magpie_testkit::models_dir());
    let path = match store.require(LITE0) {
        Ok(p) => p,
        Err(e) => return magpie_testkit::skip("models", e),
    };
    let enc = magpie_embed::vision::ImageEncoder::load(&path).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    // Eight photos far apart in ImageNet's class order (one photo per class).
    let files: Vec<_> = files.into_iter().step_by(125).take(8).collect();
    let ts = [0.5, DEFAULT_DUP_THRESHOLD, 0.99];
    let s = sweep(&enc, &files, &ts, 2, &|_| {}).unwrap();
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.photos, 8);
    let per = TRANSFORMS.len() + 1;
    assert_eq!(s.duplicate_pairs, 8 * per * (per - 1) / 2);
    assert_eq!(
        s.other_pairs,
        (8 * per) * (8 * per - 1) / 2 - s.duplicate_pairs
    );
    assert_eq!(s.rows[0].recall == 1.0, s.min_duplicate >= ts[0], "{s:?}");
    for w in s.rows.windows(2) {
        assert!(w[0].recall >= w[1].recall, "{:?}", s.rows);
        assert!(w[0].true_pairs + w[0].false_pairs >= w[1].true_pairs + w[1].false_pairs);
    }
    let at_default = &s.rows[1];
    assert_eq!(at_default.false_pairs, 0, "{at_default:?}");
    // The copies the issue reported as missed at 0.99 (80 % size, JPEG quality 70) and
    // plain re-encodes are all found at the default.
    for name in ["jpeg-q50", "resize80-q70", "resize50-png"] {
        let k = TRANSFORMS.iter().position(|t| t.name == name).unwrap();
        assert_eq!(
            at_default.recall_by_transform[k], 1.0,
            "{name}: {at_default:?}"
        );
    }
    assert!(at_default.recall >= 0.95, "{at_default:?}");
    assert!(s.max_other < DEFAULT_DUP_THRESHOLD, "{}", s.max_other);
}
