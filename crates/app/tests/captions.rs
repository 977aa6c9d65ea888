//! Captions in the image app: the demo's flags, captioned with their country's name and
//! a description of their colours and shapes, are found by what they look like and by
//! name. Needs EfficientNet-Lite0, multilingual-e5-small and use-multilingual (PyPI) and
//! `../shared`; each absence is a reported skip (CI provides them all).

use magpie_app::embedder::{ModelEmbedder, DEFAULT_IMAGE_TEXT_MODEL};
use magpie_app::images::{self, Effort, ImageQuery};
use magpie_engine::Engine;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn index(
    engine: &Engine,
    emb: &ModelEmbedder,
    data: &std::path::Path,
    dir: &std::path::Path,
) -> images::IndexReport {
    images::index_folder(
        engine,
        emb,
        data,
        "flags",
        dir,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap()
}

fn top(engine: &Engine, q: &str, k: usize) -> Vec<String> {
    images::search(
        engine,
        "flags",
        &ImageQuery::Text(q.into()),
        None,
        k,
        Effort::default(),
    )
    .unwrap()
    .iter()
    .map(|h| {
        h.fields["name"]
            .as_str()
            .unwrap()
            .trim_end_matches(".png")
            .to_string()
    })
    .collect()
}

#[test]
fn flags_are_found_by_caption_and_image_together() {
    let Some(flags) = magpie_testkit::shared("data/flags/svg-country-flags-png250px") else {
        return;
    };
    let names: BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(flags.join("../svg-country-flags-countries.json")).unwrap(),
    )
    .unwrap();
    let store = magpie_embed::models::ModelStore::new(magpie_testkit::models_dir());
    if let Err(e) = store.require(DEFAULT_IMAGE_TEXT_MODEL) {
        return magpie_testkit::skip("models", e);
    }
    let src = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&flags).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, src.path().join(p.file_name().unwrap())).unwrap();
    }
    let title = |stem: &str| {
        names
            .get(&stem.to_uppercase())
            .map(|n| format!("Flag of {n}."))
    };
    let written = magpie_app::describe::write_captions(src.path(), &title).unwrap();
    assert_eq!(written, 256);
    // A second run writes nothing: captions that exist are kept.
    assert_eq!(
        magpie_app::describe::write_captions(src.path(), &title).unwrap(),
        0
    );
    let us = std::fs::read_to_string(src.path().join("us.txt")).unwrap();
    assert!(
        us.starts_with("Flag of United States. Red, white and blue."),
        "{us}"
    );
    assert!(
        us.contains("horizontal stripes") && us.contains("stars"),
        "{us}"
    );

    let data = tempfile::tempdir().unwrap();
    let engine = Engine::open(data.path(), Default::default()).unwrap();
    let emb = Arc::new(ModelEmbedder::new(store).with_threads(2));
    engine.set_embedder(emb.clone());
    let rep = index(&engine, &emb, data.path(), src.path());
    assert_eq!(rep.added, 256, "{rep:?}");

    // A text search's query is embedded by e5 once: the caption side uses e5's vector,
    // and the image side (the e5 + USE ensemble) is made from that same vector (its
    // first 384 dimensions, scaled by √0.7) and USE's.
    {
        use magpie_engine::Embedder;
        let a = emb
            .embed_queries("multilingual-e5-small", &["a red flag"])
            .unwrap();
        let b = emb
            .embed_queries(DEFAULT_IMAGE_TEXT_MODEL, &["a red flag"])
            .unwrap();
        let u = emb
            .embed_queries("use-multilingual", &["a red flag"])
            .unwrap();
        assert_eq!(b[0].len(), 896);
        let s = 0.7f32.sqrt();
        assert!(a[0]
            .iter()
            .zip(&b[0])
            .all(|(x, y)| (x * s - y).abs() < 1e-6));
        let s = 0.3f32.sqrt();
        assert!(u[0]
            .iter()
            .zip(&b[0][384..])
            .all(|(x, y)| (x * s - y).abs() < 1e-6));
        let c = emb
            .embed_queries("multilingual-e5-small", &["a red flag", "x"])
            .unwrap();
        assert_eq!(a[0], c[0]);
    }
    // The README's demo queries: through caption and image together.
    for (q, want) in [("stars and stripes", "us"), ("red circle on white", "jp")] {
        let t = top(&engine, q, 3);
        eprintln!("{q:?} → {t:?}");
        assert!(
            t.contains(&want.to_string()),
            "{q:?} → {t:?}, want {want} in the top 3"
        );
    }
    // More descriptions, and names in other languages (the caption's sentence encoder is
    // multilingual e5).
    for (q, want) in [
        ("yellow cross on blue", "se"),
        ("white cross on a red field", "ch"),
        ("three vertical bands green white red", "it"),
        ("black red and yellow horizontal bands", "de"),
        ("yellow star on red", "vn"),
        ("drapeau du Japon", "jp"),
        ("Flagge von Deutschland", "de"),
    ] {
        let t = top(&engine, q, 3);
        eprintln!("{q:?} → {t:?}");
        assert!(
            t.contains(&want.to_string()),
            "{q:?} → {t:?}, want {want} in the top 3"
        );
    }
    // Every fourth country by its name.
    let mut hit1 = 0;
    for (code, name) in names.iter().step_by(4) {
        let t = top(&engine, name, 1);
        hit1 += (t[0] == code.to_lowercase()) as usize;
    }
    eprintln!("country names: hit@1 {hit1}/64");
    assert!(hit1 >= 62, "{hit1}/64");

    // A caption edited, then every caption removed: each change re-indexes its image,
    // and without captions the order is the image model's alone.
    std::fs::write(
        src.path().join("fr.txt"),
        "Drapeau de la République, le drapeau bleu-blanc-rouge.\n",
    )
    .unwrap();
    let rep = index(&engine, &emb, data.path(), src.path());
    assert_eq!((rep.updated, rep.unchanged), (1, 255), "{rep:?}");
    let hit = images::get(&engine, "flags", images::path_id("fr.png")).unwrap();
    assert!(hit.fields["caption"]
        .as_str()
        .unwrap()
        .starts_with("Drapeau de la République"));
    for e in std::fs::read_dir(src.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "txt") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let rep = index(&engine, &emb, data.path(), src.path());
    assert_eq!(rep.updated, 256, "{rep:?}");
    let q = "stars and stripes";
    let fused = images::search(
        &engine,
        "flags",
        &ImageQuery::Text(q.into()),
        None,
        10,
        Effort::default(),
    )
    .unwrap();
    let plain = engine
        .search(
            "flags",
            &magpie_engine::SearchRequest {
                anns_field: Some(images::TEXT_VEC.into()),
                texts: vec![q.into()],
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    let ids = |v: Vec<i64>| v;
    assert_eq!(
        ids(fused.iter().map(|h| h.id).collect()),
        ids(plain[0]
            .iter()
            .map(|h| match h.id {
                magpie_engine::PrimaryKey::Int(i) => i,
                _ => -1,
            })
            .collect()),
        "without captions a text search ranks by the image model alone"
    );
}
