//! Replays every seed of `fuzz/corpus/<target>/` and every crash ever found
//! (`fuzz/regressions/<target>/`) through the fuzz targets' bodies, so that what the
//! fuzzer established keeps holding on every `cargo test`, with no fuzzer installed.

use std::path::PathBuf;

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus_and_replays_it() {
    let mut total = 0;
    for (name, run) in magpie_fuzzing::TARGETS {
        let seeds = files("corpus", name);
        assert!(
            seeds.len() >= 3,
            "fuzz/corpus/{name} has {} files; every target keeps its seeds in the repository",
            seeds.len()
        );
        for path in seeds.iter().chain(&files("regressions", name)) {
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} fails", path.display());
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus and regression files");
}
