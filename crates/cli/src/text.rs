//! `magpie text ...`: the text (RAG) app from the terminal. `index` reads documents here
//! and writes passages either into a data directory opened in process or, with `--url`,
//! through a running server's REST API (the server embeds them); `search` asks the
//! engine in process or the server's `/v2/text/search`.

use crate::images::{cancel_on_ctrl_c, print_report, Local, INTERRUPTED};
use anyhow::{Context, Result};
use clap::Subcommand;
use magpie_app::text::{self, Mode, Store, TextHit, TextOptions};
use magpie_app::walk::Progress;
use magpie_app::AppError;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum TextCmd {
    /// Index a folder of documents (.txt, .md, .html, .jsonl) or one such file
    /// (incremental: unchanged documents are skipped, changed ones re-indexed, vanished
    /// ones removed; safe to interrupt and run again).
    Index {
        /// Folder or file to index.
        src: PathBuf,
        #[arg(long, default_value = "text")]
        collection: String,
        /// Embedding model of a new collection, or `none` for BM25 only.
        #[arg(long, default_value = text::DEFAULT_MODEL)]
        model: String,
        /// Words per passage.
        #[arg(long, default_value_t = 200)]
        passage_words: usize,
        /// Words shared by consecutive passages.
        #[arg(long, default_value_t = 40)]
        overlap: usize,
        /// Analyzer of a new collection (Milvus analyzer_params as JSON).
        #[arg(long, default_value = r#"{"type": "english"}"#)]
        analyzer: String,
        #[command(flatten)]
        local: Local,
    },
    /// Search a text collection: passages with their document, title and score.
    Search {
        /// The question or keywords.
        query: String,
        #[arg(long, default_value = "text")]
        collection: String,
        /// bm25 (exact terms), dense (meaning) or hybrid (both, fused by RRF).
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Filter expression over doc, title, passage, file (e.g. `doc like "guide/%"`).
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 5)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// BM25 speed on one thread: index a corpus (JSON lines) into a temporary
    /// collection, then run each query (one per line) and report queries per second
    /// and latency (see bench/bm25/speed.sh for the side-by-side run with peers).
    Bench {
        /// Documents, `{"id", "title", "text"}` per line.
        corpus: PathBuf,
        /// Queries, one per line.
        #[arg(long)]
        queries: PathBuf,
        /// Hits per query.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Timed passes over the queries (after one untimed warm-up pass).
        #[arg(long, default_value_t = 3)]
        passes: usize,
        #[arg(long)]
        json: bool,
    },
}

/// A server's REST API as the text app's [`Store`].
struct RestStore<'a> {
    url: &'a str,
    token: Option<&'a str>,
}

impl RestStore<'_> {
    fn call(&self, endpoint: &str, body: Value) -> magpie_app::Result<Value> {
        crate::client::call(self.url, self.token, endpoint, &body)
            .map_err(|e| AppError::Remote(format!("{e:#}")))
    }
}

/// Rows per page when reading a collection through REST.
const PAGE: usize = 10_000;

impl Store for RestStore<'_> {
    fn fields(&self, coll: &str) -> magpie_app::Result<Option<Vec<String>>> {
        let has = self.call("collections/has", json!({"collectionName": coll}))?;
        if has["data"]["has"] != json!(true) {
            return Ok(None);
        }
        let d = self.call("collections/describe", json!({"collectionName": coll}))?;
        Ok(Some(
            d["data"]["fields"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        ))
    }
    fn create(&self, coll: &str, o: &TextOptions) -> magpie_app::Result<()> {
        self.call("collections/create", text::create_body(coll, o)?)?;
        Ok(())
    }
    fn rows(&self, coll: &str, fields: &[&str]) -> magpie_app::Result<Vec<Map<String, Value>>> {
        // Pages in primary-key order, each after the last key of the one before.
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let filter = match &after {
                None => "passage >= 0".to_string(),
                Some(k) => format!("id > \"{}\"", k.replace('\\', "\\\\").replace('"', "\\\"")),
            };
            let r = self.call(
                "entities/query",
                json!({"collectionName": coll, "filter": filter, "outputFields": fields,
                    "limit": PAGE, "consistencyLevel": "Strong"}),
            )?;
            let page: Vec<Map<String, Value>> = r["data"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
                .unwrap_or_default();
            let n = page.len();
            after = page
                .last()
                .and_then(|m| m.get("id"))
                .and_then(|v| v.as_str())
                .map(String::from);
            out.extend(page);
            if n < PAGE || after.is_none() {
                return Ok(out);
            }
        }
    }
    fn upsert(&self, coll: &str, rows: &[Value]) -> magpie_app::Result<()> {
        self.call(
            "entities/upsert",
            json!({"collectionName": coll, "data": rows}),
        )?;
        Ok(())
    }
    fn delete(&self, coll: &str, ids: &[Value]) -> magpie_app::Result<usize> {
        let mut n = 0;
        for chunk in ids.chunks(1000) {
            let list: Vec<String> = chunk.iter().map(|v| v.to_string()).collect();
            let r = self.call(
                "entities/delete",
                json!({"collectionName": coll, "filter": format!("id in [{}]", list.join(","))}),
            )?;
            n += r["data"]["deleteCount"].as_u64().unwrap_or(0) as usize;
        }
        Ok(n)
    }
    fn flush(&self, coll: &str) -> magpie_app::Result<()> {
        self.call("collections/flush", json!({"collectionName": coll}))?;
        Ok(())
    }
}

/// Passages in the terminal: highlighted words in bold when stdout is a terminal.
fn print_hits(hits: &[TextHit], json: bool) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout().lock();
    let result = if json {
        writeln!(out, "{}", serde_json::to_string_pretty(hits)?)
    } else {
        let bold = std::io::stdout().is_terminal();
        (|| {
            for (i, h) in hits.iter().enumerate() {
                let title = if h.title.is_empty() {
                    String::new()
                } else {
                    format!("{}  ", h.title)
                };
                writeln!(
                    out,
                    "{:>2}. {:.4}  {title}[{} #{}]",
                    i + 1,
                    h.score,
                    h.doc,
                    h.passage
                )?;
                let mut s = String::new();
                let mut at = 0;
                for [a, b] in &h.highlights {
                    s.push_str(&h.text[at..*a]);
                    if bold {
                        s.push_str(&format!("\x1b[1m{}\x1b[0m", &h.text[*a..*b]));
                    } else {
                        s.push_str(&format!("[{}]", &h.text[*a..*b]));
                    }
                    at = *b;
                }
                s.push_str(&h.text[at..]);
                let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
                writeln!(out, "    {flat}\n")?;
            }
            Ok(())
        })()
    };
    // A closed pipe (`| head`) ends the output quietly.
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `magpie text bench` (see [`TextCmd::Bench`]).
fn bench(
    corpus: &std::path::Path,
    queries: &std::path::Path,
    k: usize,
    passes: usize,
    json: bool,
) -> Result<()> {
    use magpie_engine::{Engine, SearchRequest};
    use std::time::Instant;
    let qs: Vec<String> = std::fs::read_to_string(queries)
        .with_context(|| format!("reading {}", queries.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    anyhow::ensure!(!qs.is_empty(), "{}: no queries", queries.display());
    let dir = std::env::temp_dir().join(format!("magpie-text-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let engine = Engine::open(&dir, Default::default())?;
    let o = TextOptions {
        model: None,
        ..Default::default()
    };
    let t = Instant::now();
    let rep = text::index(
        &engine,
        None,
        "bench",
        corpus,
        &o,
        &mut |_| {},
        &AtomicBool::new(false),
    )?;
    let index_s = t.elapsed().as_secs_f64();
    let req = |q: &str| SearchRequest {
        anns_field: Some(text::SPARSE.into()),
        texts: vec![q.to_string()],
        limit: k,
        ..Default::default()
    };
    // Warm-up: builds each sealed segment's inverted index.
    let t = Instant::now();
    for q in &qs {
        engine.search("bench", &req(q))?;
    }
    let warm_s = t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(qs.len() * passes);
    let t = Instant::now();
    for _ in 0..passes.max(1) {
        for q in &qs {
            let t = Instant::now();
            let hits = engine.search("bench", &req(q))?;
            std::hint::black_box(hits);
            lat.push(t.elapsed().as_secs_f64());
        }
    }
    let total = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] * 1e3;
    let qps = lat.len() as f64 / total;
    let passages = text::Store::rows(&engine, "bench", &["id"])?.len();
    // The sparse field's inverted indexes (built by the warm-up) against their postings'
    // raw size: a u32 row and an f32 weight each.
    let (mut ix_bytes, mut postings) = (0u64, 0u64);
    for p in engine.index_progress("bench", None)? {
        if p.meta.field_name == text::SPARSE {
            for s in &p.segments {
                ix_bytes += s.index_bytes;
                postings += s.postings;
            }
        }
    }
    let raw = postings * 8;
    let out = json!({"documents": rep.found, "passages": passages, "queries": qs.len(), "k": k,
        "index_seconds": index_s, "warmup_seconds": warm_s, "qps": qps,
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "sparse_index_bytes": ix_bytes, "postings": postings, "postings_raw_bytes": raw});
    if json {
        println!("{out}");
    } else {
        println!(
            "{} documents ({} passages) indexed in {:.1} s; {} queries × {} passes, k = {}: {:.0} QPS on one thread, p50 {:.3} ms, p99 {:.3} ms",
            rep.found, passages, index_s, qs.len(), passes.max(1), k, qps, pct(0.5), pct(0.99)
        );
        println!(
            "sparse index: {:.1} MiB for {} postings ({:.1} MiB raw at 8 bytes each): {:.2}x",
            ix_bytes as f64 / 1048576.0,
            postings,
            raw as f64 / 1048576.0,
            ix_bytes as f64 / raw.max(1) as f64
        );
    }
    Ok(())
}

pub fn run(c: TextCmd) -> Result<()> {
    match c {
        TextCmd::Bench {
            corpus,
            queries,
            k,
            passes,
            json,
        } => bench(&corpus, &queries, k, passes, json),
        TextCmd::Index {
            src,
            collection,
            model,
            passage_words,
            overlap,
            analyzer,
            local,
        } => {
            let o = TextOptions {
                model: (!model.eq_ignore_ascii_case("none")).then_some(model),
                analyzer: serde_json::from_str(&analyzer)
                    .context("--analyzer must be JSON, e.g. {\"type\": \"english\"}")?,
                passage_words,
                overlap,
            };
            o.check()?;
            let t = std::time::Instant::now();
            let cancel = Arc::new(AtomicBool::new(false));
            cancel_on_ctrl_c(cancel.clone())?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} documents  {per_sec}  eta {eta}",
                )
                .unwrap(),
            );
            let mut progress = |p: Progress| {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
            };
            let rep = if let Some(url) = local.url.as_deref() {
                let store = RestStore {
                    url,
                    token: local.token.as_deref().filter(|t| !t.is_empty()),
                };
                text::index(&store, None, &collection, &src, &o, &mut progress, &cancel)?
            } else {
                if let Some(m) = &o.model {
                    local.fetch_missing(&[m.as_str()])?;
                }
                let (engine, _emb) = local.open()?;
                let rep = text::index(
                    &engine,
                    Some(&local.data_dir),
                    &collection,
                    &src,
                    &o,
                    &mut progress,
                    &cancel,
                )?;
                drop(engine);
                rep
            };
            bar.finish_and_clear();
            print_report(&collection, &rep, "documents", t.elapsed().as_secs_f64());
            if rep.cancelled {
                println!("interrupted: run the same command again to index the rest");
                std::process::exit(INTERRUPTED);
            }
            Ok(())
        }
        TextCmd::Search {
            query,
            collection,
            mode,
            filter,
            limit,
            json,
            local,
        } => {
            let m: Mode = mode.parse()?;
            let hits: Vec<TextHit> = if let Some(url) = local.url.as_deref() {
                let mut v = crate::client::post(
                    url,
                    local.token.as_deref().filter(|t| !t.is_empty()),
                    "/v2/text/search",
                    &json!({"collectionName": collection, "query": query, "mode": mode,
                        "filter": filter, "limit": limit}),
                )?;
                serde_json::from_value(v["data"].take())
                    .context("the server's reply is not a list of passages")?
            } else {
                let (engine, _emb) = local.open()?;
                text::search(&engine, &collection, &query, m, filter.as_deref(), limit)?
            };
            print_hits(&hits, json)
        }
    }
}
