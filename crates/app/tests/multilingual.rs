//! Text → image search in other languages than English through the image app with its
//! default text model (`conse-multilingual-use`): the queries the issue found returning
//! nonsense with MiniLM ConSE ("un chien" → chime, chiton; "Hund" → ox; "perro en la
//! playa" → patas monkey) return dogs. Needs EfficientNet-Lite0, multilingual-e5-small
//! and use-multilingual (PyPI) and `../shared`; each absence is a reported skip (CI
//! provides them all).

use magpie_app::embedder::{ModelEmbedder, CONSE_MULTILINGUAL_USE, DEFAULT_IMAGE_TEXT_MODEL};
use magpie_app::images::{self, Effort, ImageQuery};
use magpie_engine::Engine;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn queries_in_five_languages_find_dogs() {
    let Some(sample) = magpie_testkit::shared("data/imagenet-sample-256") else {
        return;
    };
    let store = magpie_embed::models::ModelStore::new(magpie_testkit::models_dir());
    if let Err(e) = store.require(CONSE_MULTILINGUAL_USE) {
        return magpie_testkit::skip("models", e);
    }
    assert_eq!(DEFAULT_IMAGE_TEXT_MODEL, CONSE_MULTILINGUAL_USE);
    // Every 8th photo of the sample (125 of 1000, 15 of them dogs), copied to a folder.
    let labels = std::fs::read_to_string(sample.join("labels.tsv")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut dogs = std::collections::HashSet::new();
    for (_, line) in labels.lines().enumerate().filter(|(i, _)| i % 8 == 0) {
        let (file, label) = line.split_once('\t').unwrap();
        std::fs::copy(sample.join(file), src.path().join(file)).unwrap();
        if label == "dog" {
            dogs.insert(file.to_string());
        }
    }
    assert!(dogs.len() >= 10, "{}", dogs.len());
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::open(data.path(), Default::default()).unwrap();
    let emb = Arc::new(ModelEmbedder::new(store).with_threads(2));
    engine.set_embedder(emb.clone());
    let rep = images::index_folder(
        &engine,
        &emb,
        data.path(),
        "photos",
        src.path(),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(rep.added, 125, "{rep:?}");
    let meta = engine.describe_collection("photos").unwrap();
    let model = meta
        .schema
        .function_for_output(images::TEXT_VEC)
        .and_then(|f| f.model())
        .unwrap();
    assert_eq!(model, CONSE_MULTILINGUAL_USE);
    // Each query's first hit is a dog, and 17 of the 18 top-3 hits are: with the default
    // (e5 and USE), "perro en la playa" (a dog on the beach) ranks a pelican second,
    // where e5 alone returned three dogs (docs/BENCHMARKS.md, "Multilingual text →
    // image").
    let mut dog_hits = 0;
    for q in [
        "a dog",
        "un chien",
        "Hund",
        "perro en la playa",
        "犬",
        "一只狗",
    ] {
        let hits = images::search(
            &engine,
            "photos",
            &ImageQuery::Text(q.into()),
            None,
            3,
            Effort::default(),
        )
        .unwrap();
        let names: Vec<&str> = hits
            .iter()
            .map(|h| h.fields["name"].as_str().unwrap())
            .collect();
        eprintln!("{q:?}: {names:?}");
        assert_eq!(names.len(), 3, "{q:?}");
        assert!(
            dogs.contains(names[0]),
            "{q:?}: the first of {names:?} is not a dog"
        );
        dog_hits += names.iter().filter(|n| dogs.contains(**n)).count();
    }
    assert!(dog_hits >= 17, "{dog_hits} of 18 top-3 hits are dogs");
}
