//! `magpie eval`: retrieval quality of a collection on a test set with relevance
//! judgements, for each retrieval mode (BM25, dense, hybrid by RRF, hybrid weighted).
//!
//! Test sets are read in three layouts (auto-detected in `--dataset DIR`):
//! - BEIR: `corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl` (`{"_id",
//!   "text"}`), `qrels/test.tsv` (`query-id corpus-id score`, with a header; score 0 is
//!   not relevant);
//! - Cranfield: `cran.all.1400`, `cran.qry` (its `.I` numbers are not consecutive; the
//!   judgements use the query's ordinal), `cranqrel`;
//! - CISI: `CISI.ALL`, `CISI.QRY`, `CISI.REL`.
//!
//! Cranfield and CISI judgements count as relevant (gain 1); BEIR uses its grades as
//! gains. Metrics, per query then averaged over the queries that have a relevant
//! document: nDCG@10 (linear gains, ideal order from the judgements), recall@10 and
//! recall@100, MAP@100 (average precision over the first 100, divided by the number of
//! relevant documents) and MRR@100.
//!
//! `--load` first creates the collection from the corpus (primary key `doc_id`, text =
//! title + text, a BM25 function with the english analyzer, and with `--dense-model` a
//! TextEmbedding function); otherwise the collection must have those fields.

use crate::client::call;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub struct Dataset {
    pub docs: Vec<(String, String)>,
    pub queries: Vec<(String, String)>,
    /// Query id → document id → gain (> 0).
    pub qrels: HashMap<String, HashMap<String, f64>>,
}

/// `.I n` records of the SMART-style files (Cranfield, CISI): id → (field letter → text).
fn smart_records(text: &str) -> Vec<(String, BTreeMap<char, String>)> {
    let mut out: Vec<(String, BTreeMap<char, String>)> = Vec::new();
    let mut field = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix(".I") {
            out.push((id.trim().to_string(), BTreeMap::new()));
            field = None;
        } else if line.len() == 2 && line.starts_with('.') {
            field = line.chars().nth(1);
        } else if let (Some(f), Some(rec)) = (field, out.last_mut()) {
            let s = rec.1.entry(f).or_default();
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(line.trim());
        }
    }
    out
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn jsonl(p: &Path) -> Result<Vec<Value>> {
    read(p)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", p.display(), i + 1))
        })
        .collect()
}

impl Dataset {
    pub fn load(dir: &Path) -> Result<Dataset> {
        let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
        if dir.join("corpus.jsonl").exists() {
            let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
            let docs = jsonl(&dir.join("corpus.jsonl"))?
                .iter()
                .map(|v| {
                    let t = format!("{} {}", text(v, "title"), text(v, "text"));
                    (text(v, "_id"), t.trim().to_string())
                })
                .collect();
            let queries = jsonl(&dir.join("queries.jsonl"))?
                .iter()
                .map(|v| (text(v, "_id"), text(v, "text")))
                .collect();
            let q = dir.join("qrels").join("test.tsv");
            for (i, line) in read(&q)?.lines().enumerate().skip(1) {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 3 {
                    bail!(
                        "{} line {}: expected query-id, corpus-id, score",
                        q.display(),
                        i + 1
                    );
                }
                let g: f64 = f[2]
                    .trim()
                    .parse()
                    .with_context(|| format!("{} line {}", q.display(), i + 1))?;
                if g > 0.0 {
                    qrels
                        .entry(f[0].to_string())
                        .or_default()
                        .insert(f[1].to_string(), g);
                }
            }
            return Ok(Dataset {
                docs,
                queries,
                qrels,
            });
        }
        let (all, qry, rel, ordinal) = if dir.join("cran.all.1400").exists() {
            ("cran.all.1400", "cran.qry", "cranqrel", true)
        } else if dir.join("CISI.ALL").exists() {
            ("CISI.ALL", "CISI.QRY", "CISI.REL", false)
        } else {
            bail!(
                "{}: no test set found (expected BEIR's corpus.jsonl, Cranfield's cran.all.1400 or CISI's CISI.ALL)",
                dir.display()
            );
        };
        let docs = smart_records(&read(&dir.join(all))?)
            .into_iter()
            .map(|(id, f)| {
                let t = format!(
                    "{} {}",
                    f.get(&'T').map_or("", |s| s),
                    f.get(&'W').map_or("", |s| s)
                );
                (id, t.trim().to_string())
            })
            .collect();
        let queries: Vec<(String, String)> = smart_records(&read(&dir.join(qry))?)
            .into_iter()
            .enumerate()
            .map(|(i, (id, f))| {
                // Cranfield's judgements number queries by position.
                let id = if ordinal {
                    (i + 1).to_string()
                } else {
                    id.trim_start_matches('0').to_string()
                };
                (id, f.get(&'W').cloned().unwrap_or_default())
            })
            .collect();
        for line in read(&dir.join(rel))?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 2 {
                let q = f[0].trim_start_matches('0').to_string();
                qrels.entry(q).or_default().insert(f[1].to_string(), 1.0);
            }
        }
        Ok(Dataset {
            docs,
            queries,
            qrels,
        })
    }
}

/// Quality of one ranking against the judgements of its query.
pub fn metrics(ranked: &[String], rel: &HashMap<String, f64>) -> [f64; 5] {
    let dcg = |gains: &mut dyn Iterator<Item = f64>| -> f64 {
        gains
            .enumerate()
            .map(|(i, g)| g / ((i + 2) as f64).log2())
            .sum()
    };
    let got = dcg(&mut ranked
        .iter()
        .take(10)
        .map(|d| rel.get(d).copied().unwrap_or(0.0)));
    let mut ideal: Vec<f64> = rel.values().copied().collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let best = dcg(&mut ideal.into_iter().take(10));
    let n_rel = rel.len() as f64;
    let hits = |k: usize| {
        ranked
            .iter()
            .take(k)
            .filter(|d| rel.contains_key(*d))
            .count() as f64
    };
    let (mut found, mut ap, mut rr) = (0.0, 0.0, 0.0);
    for (i, d) in ranked.iter().take(100).enumerate() {
        if rel.contains_key(d) {
            found += 1.0;
            ap += found / (i + 1) as f64;
            if rr == 0.0 {
                rr = 1.0 / (i + 1) as f64;
            }
        }
    }
    [
        if best > 0.0 { got / best } else { 0.0 },
        hits(10) / n_rel,
        hits(100) / n_rel,
        ap / n_rel,
        rr,
    ]
}

pub const METRICS: [&str; 5] = ["nDCG@10", "recall@10", "recall@100", "MAP@100", "MRR@100"];

pub struct EvalOpts<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub dataset: &'a Path,
    pub collection: &'a str,
    pub load: bool,
    pub dense_model: Option<&'a str>,
    pub k1: f64,
    pub b: f64,
    /// Hybrid weighted: BM25's and dense's weights.
    pub weights: [f64; 2],
    /// Hybrid RRF's k.
    pub rrf_k: u32,
    pub json: bool,
}

/// Creates `collection` from the corpus (module docs).
fn load(o: &EvalOpts, ds: &Dataset) -> Result<()> {
    let c = o.collection;
    let has = call(
        o.url,
        o.token,
        "collections/has",
        &json!({"collectionName": c}),
    )?;
    if has["data"]["has"].as_bool() == Some(true) {
        call(
            o.url,
            o.token,
            "collections/drop",
            &json!({"collectionName": c}),
        )?;
    }
    let mut fields = vec![
        json!({"fieldName": "doc_id", "dataType": "VarChar", "isPrimary": true, "elementTypeParams": {"max_length": 512}}),
        json!({"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 65535, "enable_analyzer": true, "analyzer_params": {"type": "english"}}}),
        json!({"fieldName": "sparse", "dataType": "SparseFloatVector"}),
    ];
    let mut functions = vec![
        json!({"name": "bm25", "type": "BM25", "inputFieldNames": ["text"], "outputFieldNames": ["sparse"], "params": {}}),
    ];
    let mut indexes = vec![
        json!({"fieldName": "sparse", "indexName": "sparse", "metricType": "BM25", "indexType": "SPARSE_INVERTED_INDEX",
        "params": {"bm25_k1": o.k1, "bm25_b": o.b}}),
    ];
    if let Some(m) = o.dense_model {
        fields.push(json!({"fieldName": "dense", "dataType": "FloatVector", "elementTypeParams": {"dim": 384}}));
        functions.push(json!({"name": "embed", "type": "TextEmbedding", "inputFieldNames": ["text"], "outputFieldNames": ["dense"], "params": {"model": m}}));
        indexes.push(json!({"fieldName": "dense", "indexName": "dense", "metricType": "COSINE", "indexType": "FLAT"}));
    }
    call(
        o.url,
        o.token,
        "collections/create",
        &json!({"collectionName": c, "schema": {"fields": fields, "functions": functions},
        "indexParams": indexes, "consistencyLevel": "Strong"}),
    )?;
    for chunk in ds.docs.chunks(256) {
        let rows: Vec<Value> = chunk
            .iter()
            // Within the field's limit, cut at a character boundary.
            .map(|(id, t)| json!({"doc_id": id, "text": magpie_app::text::clip(t, 65535)}))
            .collect();
        call(
            o.url,
            o.token,
            "entities/insert",
            &json!({"collectionName": c, "data": rows}),
        )?;
    }
    call(
        o.url,
        o.token,
        "collections/flush",
        &json!({"collectionName": c}),
    )?;
    Ok(())
}

/// The documents of a reply in rank order, each once (a document's rank is its best
/// passage's, for the text app's collections).
fn ids(reply: &Value, field: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    reply["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h[field].as_str().map(String::from))
                .filter(|d| seen.insert(d.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(o: EvalOpts) -> Result<()> {
    let ds = Dataset::load(o.dataset)?;
    if o.load {
        load(&o, &ds)?;
    }
    let desc = call(
        o.url,
        o.token,
        "collections/describe",
        &json!({"collectionName": o.collection}),
    )?;
    let has = |name: &str| {
        desc["data"]["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x["name"] == name))
    };
    let dense = has("dense");
    // `magpie eval --load` collections key rows by document; the text app's rows are
    // passages whose `doc` is the document's key (its id when a JSON-lines file was
    // indexed on its own).
    let (id_field, depth) = if has("doc_id") {
        ("doc_id", 100)
    } else if has("doc") && has("passage") {
        ("doc", 300)
    } else {
        bail!(
            "collection '{}' has neither 'doc_id' (made by --load) nor the text app's 'doc' and 'passage' fields",
            o.collection
        );
    };
    let mut modes = vec!["bm25"];
    if dense {
        modes.extend(["dense", "hybrid-rrf", "hybrid-weighted"]);
    }
    let c = o.collection;
    let sub = |field: &str, q: &str| json!({"annsField": field, "data": [q], "limit": depth});
    let mut sums: BTreeMap<&str, [f64; 5]> = BTreeMap::new();
    let mut judged = 0usize;
    let t0 = std::time::Instant::now();
    for (qid, text) in &ds.queries {
        let Some(rel) = ds.qrels.get(qid) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        judged += 1;
        for m in &modes {
            let reply = match *m {
                "bm25" | "dense" => {
                    let field = if *m == "bm25" { "sparse" } else { "dense" };
                    call(
                        o.url,
                        o.token,
                        "entities/search",
                        &json!({"collectionName": c, "annsField": field, "data": [text], "limit": depth, "outputFields": [id_field]}),
                    )?
                }
                _ => {
                    let rerank = if *m == "hybrid-rrf" {
                        json!({"strategy": "rrf", "params": {"k": o.rrf_k}})
                    } else {
                        json!({"strategy": "weighted", "params": {"weights": o.weights}})
                    };
                    call(
                        o.url,
                        o.token,
                        "entities/hybrid_search",
                        &json!({"collectionName": c, "search": [sub("sparse", text), sub("dense", text)],
                        "rerank": rerank, "limit": depth, "outputFields": [id_field]}),
                    )?
                }
            };
            let m_ = metrics(&ids(&reply, id_field), rel);
            let s = sums.entry(m).or_default();
            for (a, b) in s.iter_mut().zip(m_) {
                *a += b;
            }
        }
    }
    if judged == 0 {
        bail!(
            "no query of {} has relevance judgements",
            o.dataset.display()
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut out = serde_json::Map::new();
    for (m, s) in &sums {
        let row: serde_json::Map<String, Value> = METRICS
            .iter()
            .zip(s)
            .map(|(k, v)| (k.to_string(), json!(v / judged as f64)))
            .collect();
        out.insert(m.to_string(), Value::Object(row));
    }
    if o.json {
        println!(
            "{}",
            json!({"dataset": o.dataset.display().to_string(), "documents": ds.docs.len(), "queries": judged, "seconds": secs, "rrf_k": o.rrf_k, "weights": o.weights, "modes": out})
        );
        return Ok(());
    }
    println!(
        "{}: {} documents, {} judged queries, {:.1} s",
        o.dataset.display(),
        ds.docs.len(),
        judged,
        secs
    );
    if dense {
        println!(
            "hybrid-rrf: k {}; hybrid-weighted: bm25 {} dense {}",
            o.rrf_k, o.weights[0], o.weights[1]
        );
    }
    println!(
        "{:<16} {}",
        "mode",
        METRICS.map(|m| format!("{m:>11}")).join("")
    );
    for m in &modes {
        let row = &out[*m];
        println!(
            "{:<16} {}",
            m,
            METRICS
                .map(|k| format!("{:>11.4}", row[k].as_f64().unwrap_or(0.0)))
                .join("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let rel: HashMap<String, f64> = [("a".to_string(), 2.0), ("b".to_string(), 1.0)].into();
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Ideal order: nDCG 1, both found at ranks 1-2.
        assert_eq!(
            metrics(&r(&["a", "b", "x"]), &rel),
            [1.0, 1.0, 1.0, 1.0, 1.0]
        );
        // "b" first, "a" third: DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2 + 1/log2(3).
        let m = metrics(&r(&["b", "x", "a"]), &rel);
        assert!(
            (m[0] - 2.0 / (2.0 + 1.0 / 3f64.log2())).abs() < 1e-12,
            "{m:?}"
        );
        assert_eq!(m[1], 1.0);
        assert!((m[3] - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(m[4], 1.0);
        assert_eq!(metrics(&r(&["x"]), &rel), [0.0; 5]);
    }

    #[test]
    fn smart_format() {
        let recs = smart_records(".I 1\n.T\nA title\n.W\nline one\nline two\n.I 2\n.W\nx\n");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].1[&'T'], "A title");
        assert_eq!(recs[0].1[&'W'], "line one line two");
    }
}
