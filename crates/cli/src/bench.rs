//! `magpie bench`: build an index over a `.fvecs` dataset with ground truth (the layout of
//! `shared/bench/*`: manifest.json, base.fvecs, query.fvecs, groundtruth.ivecs) and sweep
//! its search knob, in-process through the engine or against a running server over HTTP.
//!
//! Reported per knob value: recall@k against the ground truth, QPS with one and with two
//! threads (queries one at a time per thread), p50/p99 latency of the one-thread run; per
//! index: build seconds and vectors/s, index bytes and process RSS. Recall-target rows
//! ask for `recall` instead of a knob and report the knob the index chose. FLAT rows add
//! the memory-bandwidth bound measured in the same run. With `--filter-selectivity`,
//! rows also carry an Int64 field `sel` (row i gets `i * 7919 % 100`, so `sel < P` passes
//! exactly P % of the rows, spread over the whole set) and filtered rows are measured
//! against an exact filtered ground truth computed in this process. `--filter-field`
//! runs the same selectivities on the same value as a VarChar field (`tag < "s010"`,
//! `tag` = `"s"` and `sel` in three digits) and as a JSON path (`meta["sel"] < 10`, with
//! an INVERTED path index cast to DOUBLE, as a Milvus user would create). Output: a markdown
//! table, and JSON rows (the same shape `bench/peers/peers.py` writes) with `--json`.
//!
//! Over HTTP (`--url`) each client thread keeps one connection (`httpconn`); rows also
//! carry the round trip of `GET /healthz` on it (`http_floor_us`) and, from the server's
//! `/metrics` around the one-client run, its CPU and engine µs per search and the share
//! run on async workers (`server_1t`; `server_clients` for `--clients N`). `--keep` and
//! `--reuse` build a collection once and search it again; `--reopen` (in-process)
//! searches the engine as reopened from its files, as a server has it.

use crate::vecfile::read_fvecs;
use anyhow::{bail, Context, Result};
use magpie_engine::{
    Consistency, Engine, EngineConfig, IndexMeta, Metric, SearchKnobs, SearchRequest,
};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The field a filtered run filters on; every kind passes the same rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FilterField {
    /// `sel < P` on the Int64 field `sel`.
    Int,
    /// `tag < "sPPP"` on the VarChar field `tag` (`"s"` and `sel` in three digits).
    #[value(name = "varchar")]
    VarChar,
    /// `meta["sel"] < P` on the JSON field `meta`, through an INVERTED path index.
    Json,
}

impl FilterField {
    fn name(self) -> &'static str {
        match self {
            FilterField::Int => "int",
            FilterField::VarChar => "varchar",
            FilterField::Json => "json",
        }
    }

    /// The filter passing the rows whose `sel` is below `pass`.
    fn text(self, pass: u32) -> String {
        match self {
            FilterField::Int => format!("sel < {pass}"),
            FilterField::VarChar => format!("tag < \"s{pass:03}\""),
            FilterField::Json => format!("meta[\"sel\"] < {pass}"),
        }
    }
}

/// Row `i`'s VarChar value of [`FilterField::VarChar`].
fn tag_of(i: usize) -> String {
    format!("s{:03}", sel_of(i))
}

/// The JSON path index of [`FilterField::Json`] (Milvus's `indexes/create` parameters).
const META_INDEX: &str = "meta_sel";
fn meta_index_params() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("json_path".into(), json!("meta[\"sel\"]"));
    m.insert("json_cast_type".into(), json!("DOUBLE"));
    m
}

pub struct BenchOpts {
    pub dataset: PathBuf,
    pub index: String,
    pub params: Option<String>,
    pub sweep: Option<String>,
    pub recall_targets: Vec<f32>,
    pub queries: Option<usize>,
    pub filter_selectivity: Vec<u32>,
    /// Which field the filtered sweep filters on (each runs every selectivity).
    pub filter_fields: Vec<FilterField>,
    pub growing: bool,
    pub k: usize,
    pub build_threads: usize,
    pub url: Option<String>,
    pub token: Option<String>,
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    pub json_out: Option<PathBuf>,
    pub clients: Option<usize>,
    pub reuse: bool,
    pub reopen: bool,
    /// With `url`: load through Milvus's bulk import from NumPy files written into this
    /// folder (the server's import root) instead of REST inserts.
    pub import_dir: Option<PathBuf>,
    /// IVF_PQ / IVF_SQ8 / HNSW_SQ: rescore `refine · k` candidates with the raw vectors.
    pub refine: Option<usize>,
    /// With `url`: leave the collection on the server afterwards (to inspect its memory
    /// and files) instead of dropping it.
    pub keep: bool,
    /// How long to wait for a load, a bulk import or an index build before giving up.
    pub wait: Duration,
}

struct Dataset {
    name: String,
    metric: Metric,
    dim: usize,
    base: Vec<f32>,
    queries: Vec<f32>,
    gt: Vec<i32>,
    gt_k: usize,
}

impl Dataset {
    fn n(&self) -> usize {
        self.base.len() / self.dim
    }
    fn nq(&self) -> usize {
        self.queries.len() / self.dim
    }
    fn query(&self, i: usize) -> &[f32] {
        &self.queries[i * self.dim..(i + 1) * self.dim]
    }
    fn truth(&self, i: usize, k: usize) -> &[i32] {
        &self.gt[i * self.gt_k..i * self.gt_k + k]
    }
}

fn load(dir: &Path, queries: Option<usize>, k: usize) -> Result<Dataset> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{}: no manifest.json", dir.display()))?,
    )
    .with_context(|| format!("{}: manifest.json is not JSON", dir.display()))?;
    let metric = match manifest["metric"].as_str().unwrap_or("l2") {
        "l2" => Metric::L2,
        "ip" => Metric::IP,
        "cosine" => Metric::COSINE,
        m => bail!("unknown metric '{m}' in the manifest"),
    };
    let (dim, base) = read_fvecs(&dir.join("base.fvecs"))?;
    let (qdim, mut qs) = read_fvecs(&dir.join("query.fvecs"))?;
    let (gt_k, raw) = read_fvecs(&dir.join("groundtruth.ivecs"))?;
    let gt: Vec<i32> = raw.into_iter().map(|f| f.to_bits() as i32).collect();
    if qdim != dim || gt_k < k {
        bail!("dataset shapes disagree (dim {dim} vs {qdim}, ground truth k {gt_k} < {k})");
    }
    if let Some(q) = queries {
        qs.truncate(q.min(qs.len() / dim) * dim);
    }
    Ok(Dataset {
        name: manifest["name"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| dir.display().to_string()),
        metric,
        dim,
        base,
        queries: qs,
        gt,
        gt_k,
    })
}

/// Best of three sequential read passes over a 256 MiB buffer, in bytes/second.
fn measure_bandwidth() -> f64 {
    let n = 64 << 20; // f32s = 256 MiB
    let buf: Vec<f32> = (0..n).map(|i| (i & 7) as f32).collect();
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut acc = [0.0f32; 8];
        for c in buf.chunks_exact(8) {
            for j in 0..8 {
                acc[j] += c[j];
            }
        }
        std::hint::black_box(acc);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The knob an index type sweeps, and its default sweep.
fn knob_of(index: &str) -> Option<(&'static str, Vec<usize>)> {
    match index {
        "HNSW" | "HNSW_SQ" | "AUTOINDEX" => Some(("ef", vec![16, 24, 32, 48, 64, 96, 128])),
        "IVF_FLAT" | "IVF_SQ8" | "IVF_PQ" => Some(("nprobe", vec![1, 2, 4, 8, 16, 32, 64])),
        _ => None,
    }
}

fn default_params(index: &str, dim: usize) -> Map<String, Value> {
    let v = match index {
        "HNSW" | "HNSW_SQ" | "AUTOINDEX" => json!({"M": 16, "efConstruction": 200}),
        "IVF_FLAT" | "IVF_SQ8" => json!({"nlist": 1024}),
        "IVF_PQ" => json!({"nlist": 1024, "m": (dim / 4).max(1), "nbits": 8}),
        _ => json!({}),
    };
    v.as_object().cloned().unwrap_or_default()
}

/// Where searches go: the engine in this process, or a server.
enum Target {
    Local(Box<Engine>, PathBuf),
    Http {
        url: String,
        token: Option<String>,
        agent: ureq::Agent,
    },
}

const COLL: &str = "magpie_bench";

impl Target {
    fn search(
        &self,
        q: &[f32],
        k: usize,
        knobs: SearchKnobs,
        filter: Option<&str>,
    ) -> Result<(Vec<i64>, Option<Value>)> {
        match self {
            Target::Local(e, _) => {
                let req = SearchRequest {
                    vectors: vec![q.to_vec()],
                    limit: k,
                    knobs,
                    filter: filter.map(str::to_string),
                    consistency: Some(Consistency::Eventually),
                    ..Default::default()
                };
                let o = e.search_ex(COLL, &req)?;
                let ids = o.hits[0]
                    .iter()
                    .map(|h| match h.id {
                        magpie_engine::PrimaryKey::Int(i) => i,
                        _ => -1,
                    })
                    .collect();
                Ok((ids, o.knob.map(|k| json!({k.name: k.value}))))
            }
            Target::Http { url, token, agent } => {
                let mut params = Map::new();
                if let Some(ef) = knobs.ef {
                    params.insert("ef".into(), json!(ef));
                }
                if let Some(np) = knobs.nprobe {
                    params.insert("nprobe".into(), json!(np));
                }
                if let Some(r) = knobs.recall {
                    params.insert("recall".into(), json!(r));
                }
                if let Some(r) = knobs.refine {
                    params.insert("refine".into(), json!(r));
                }
                // Serialised from the f32s (their shortest form, as a client holding
                // f32 vectors sends them), not through f64 `Value`s.
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Body<'a> {
                    collection_name: &'a str,
                    data: [&'a [f32]; 1],
                    limit: usize,
                    search_params: Value,
                    consistency_level: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    filter: Option<&'a str>,
                }
                let body = serde_json::to_vec(&Body {
                    collection_name: COLL,
                    data: [q],
                    limit: k,
                    search_params: json!({"params": params}),
                    consistency_level: "Eventually",
                    filter,
                })?;
                let v: Value = match crate::httpconn::split(url) {
                    Some((authority, base)) => {
                        let (status, bytes) = crate::httpconn::post(
                            authority,
                            &crate::httpconn::path(base, "v2/vectordb/entities/search"),
                            token.as_deref(),
                            body.into(),
                        )?;
                        serde_json::from_slice(&bytes).with_context(|| {
                            format!(
                                "search: HTTP {status}: {}",
                                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                            )
                        })?
                    }
                    None => {
                        let mut req = agent.post(&format!(
                            "{}/v2/vectordb/entities/search",
                            url.trim_end_matches('/')
                        ));
                        if let Some(t) = token {
                            req = req.set("Authorization", &format!("Bearer {t}"));
                        }
                        req.set("Content-Type", "application/json")
                            .send_bytes(&body)?
                            .into_json()?
                    }
                };
                if v["code"].as_i64() != Some(0) {
                    bail!("search: {}", v["message"]);
                }
                let ids = v["data"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|h| h["id"].as_i64()).collect())
                    .unwrap_or_default();
                let info = v["searchInfo"].clone();
                let knob = info.as_object().and_then(|o| {
                    ["ef", "nprobe"]
                        .iter()
                        .find_map(|k| o.get(*k).map(|v| json!({*k: v})))
                });
                Ok((ids, knob))
            }
        }
    }
}

fn http_call(t: &Target, ep: &str, body: &Value) -> Result<Value> {
    let Target::Http { url, token, .. } = t else {
        unreachable!()
    };
    crate::client::call(url, token.as_deref(), ep, body)
}

/// Creates the collection, loads the vectors, flushes, waits for the index (or, with
/// `growing`, leaves the rows in the growing segment and waits for its interim graph to
/// cover them). Returns (load seconds, build seconds, index bytes).
#[allow(clippy::too_many_arguments)]
fn prepare(
    t: &Target,
    ds: &Dataset,
    index: &str,
    params: &Map<String, Value>,
    sel: &[FilterField],
    growing: bool,
    shards: Option<u32>,
    replicas: Option<u32>,
    import_dir: Option<&Path>,
    wait: Duration,
) -> Result<(f64, f64, u64)> {
    let n = ds.n();
    let dim = ds.dim;
    let with_sel = !sel.is_empty();
    let with_tag = sel.contains(&FilterField::VarChar);
    let with_meta = sel.contains(&FilterField::Json);
    let row = |i: usize| {
        let mut r = json!({"id": i, "vector": &ds.base[i * dim..(i + 1) * dim]});
        if with_sel {
            r["sel"] = json!(sel_of(i));
        }
        if with_tag {
            r["tag"] = json!(tag_of(i));
        }
        if with_meta {
            r["meta"] = json!({"sel": sel_of(i)});
        }
        r
    };
    match t {
        Target::Local(e, _) => {
            let mut fields = vec![
                magpie_engine::FieldSchema::new("id", magpie_engine::DataType::Int64)
                    .primary(false),
                magpie_engine::FieldSchema::new("vector", magpie_engine::DataType::FloatVector)
                    .with_dim(dim),
            ];
            if with_sel {
                fields.push(magpie_engine::FieldSchema::new(
                    "sel",
                    magpie_engine::DataType::Int64,
                ));
            }
            if with_tag {
                fields.push(
                    magpie_engine::FieldSchema::new("tag", magpie_engine::DataType::VarChar)
                        .with_max_length(8),
                );
            }
            if with_meta {
                fields.push(magpie_engine::FieldSchema::new(
                    "meta",
                    magpie_engine::DataType::JSON,
                ));
            }
            let schema = magpie_engine::CollectionSchema {
                fields,
                enable_dynamic_field: false,
                description: String::new(),
                functions: Vec::new(),
            };
            let ix = IndexMeta {
                id: 0,
                index_name: "vector".into(),
                field_name: "vector".into(),
                index_type: index.into(),
                metric_type: ds.metric,
                params: params.clone(),
            };
            let mut indexes = vec![ix];
            if with_meta {
                indexes.push(IndexMeta {
                    id: 0,
                    index_name: META_INDEX.into(),
                    field_name: "meta".into(),
                    index_type: "INVERTED".into(),
                    metric_type: ds.metric,
                    params: meta_index_params(),
                });
            }
            e.create_collection(COLL, schema, indexes, Consistency::Session, "")?;
            let t0 = Instant::now();
            for start in (0..n).step_by(10_000) {
                let rows: Vec<Value> = (start..(start + 10_000).min(n)).map(row).collect();
                e.insert(COLL, None, &rows)?;
            }
            if !growing {
                e.flush(COLL)?;
            }
            let load_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            if !e.wait_for_indexes(COLL, wait)? {
                bail!(
                    "index build did not finish within {} minutes (--wait-mins)",
                    wait.as_secs() / 60
                );
            }
            if growing {
                let probe = SearchRequest {
                    vectors: vec![ds.query(0).to_vec()],
                    limit: 1,
                    ..Default::default()
                };
                let o = e.search_ex(COLL, &probe)?;
                if o.interim_segments == 0 || o.exact_rows > 0 {
                    bail!(
                        "the growing rows are not covered by an interim graph ({} interim segment(s), {} rows scanned exactly)",
                        o.interim_segments,
                        o.exact_rows
                    );
                }
                return Ok((load_s, t1.elapsed().as_secs_f64(), 0));
            }
            let wall = t1.elapsed().as_secs_f64();
            let p = &e.index_progress(COLL, None)?[0];
            if p.state == "Failed" {
                bail!("index build failed: {}", p.fail_reason);
            }
            let bytes: u64 = p.segments.iter().map(|s| s.index_bytes).sum();
            let build_ms: u64 = p.segments.iter().map(|s| s.build_ms).sum();
            let build_s = if build_ms > 0 {
                build_ms as f64 / 1e3
            } else {
                wall
            };
            Ok((load_s, build_s, bytes))
        }
        Target::Http { .. } => {
            let _ = http_call(t, "collections/drop", &json!({"collectionName": COLL}));
            let mut ip = params.clone();
            ip.insert("index_type".into(), json!(index));
            let mut fields = vec![
                json!({"fieldName": "id", "dataType": "Int64", "isPrimary": true}),
                json!({"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": dim}}),
            ];
            if with_sel {
                fields.push(json!({"fieldName": "sel", "dataType": "Int64"}));
            }
            if with_tag {
                fields.push(json!({"fieldName": "tag", "dataType": "VarChar", "elementTypeParams": {"max_length": 8}}));
            }
            if with_meta {
                fields.push(json!({"fieldName": "meta", "dataType": "JSON"}));
            }
            let mut index_params = vec![
                json!({"fieldName": "vector", "indexName": "vector", "metricType": ds.metric.as_str(), "params": ip}),
            ];
            if with_meta {
                index_params.push(json!({"fieldName": "meta", "indexName": META_INDEX, "indexType": "INVERTED", "params": meta_index_params()}));
            }
            let mut create = json!({"collectionName": COLL,
                "schema": {"autoId": false, "enableDynamicField": false, "fields": fields},
                "indexParams": index_params});
            if let Some(s) = shards {
                create["shardsNum"] = json!(s);
            }
            http_call(t, "collections/create", &create)?;
            if let Some(r) = replicas {
                http_call(
                    t,
                    "collections/load",
                    &json!({"collectionName": COLL, "replicaNumber": r}),
                )?;
            }
            let t0 = Instant::now();
            match import_dir {
                Some(dir) => import_npy(t, ds, dir, sel, wait)?,
                None => {
                    for start in (0..n).step_by(2_000) {
                        let rows: Vec<Value> = (start..(start + 2_000).min(n)).map(row).collect();
                        http_call(
                            t,
                            "entities/insert",
                            &json!({"collectionName": COLL, "data": rows}),
                        )?;
                    }
                }
            }
            if !growing {
                http_call(t, "collections/flush", &json!({"collectionName": COLL}))?;
            }
            let load_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            if growing {
                loop {
                    let q = &ds.queries[..ds.dim];
                    let v = http_call(
                        t,
                        "entities/search",
                        &json!({"collectionName": COLL, "data": [q], "limit": 1, "consistencyLevel": "Strong"}),
                    )?;
                    let info = &v["searchInfo"];
                    if info["indexedSegments"].as_u64() != Some(0) {
                        bail!("the rows were sealed and indexed; start the server with --seal-rows above {n} and --seal-bytes above the data's size");
                    }
                    if info["interimSegments"].as_u64() > Some(0)
                        && info["exactRows"].as_u64() == Some(0)
                    {
                        return Ok((load_s, t1.elapsed().as_secs_f64(), 0));
                    }
                    if t1.elapsed() > wait {
                        bail!("the interim graph did not cover the rows within {} minutes (--wait-mins)", wait.as_secs() / 60);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            // When did the index first say Finished while searches still scanned rows
            // exactly (a segment not indexed yet, or below the server's index_min_rows)?
            let mut finished_but_exact: Option<Instant> = None;
            loop {
                let d = http_call(
                    t,
                    "indexes/describe",
                    &json!({"collectionName": COLL, "indexName": "vector"}),
                )?;
                let ix = &d["data"][0];
                let finished = ix["indexState"].as_str() == Some("Finished");
                // FLAT searches are exact by definition: every segment reports so.
                let exact = finished && index != "FLAT" && searched_exactly(t, ds)?;
                if exact
                    && finished_but_exact
                        .get_or_insert_with(Instant::now)
                        .elapsed()
                        > Duration::from_secs(60)
                {
                    bail!("the index is finished but searches still scan rows exactly after a minute; is the dataset ({n} rows) below the server's index_min_rows (`magpie serve --index-min-rows`)?");
                }
                match ix["indexState"].as_str() {
                    Some("Finished") if !exact => {
                        let segs = ix["segments"].as_array().cloned().unwrap_or_default();
                        let bytes: u64 = segs.iter().filter_map(|s| s["indexBytes"].as_u64()).sum();
                        let ms: u64 = segs.iter().filter_map(|s| s["buildMs"].as_u64()).sum();
                        let build_s = if ms > 0 {
                            ms as f64 / 1e3
                        } else {
                            t1.elapsed().as_secs_f64()
                        };
                        return Ok((load_s, build_s, bytes));
                    }
                    Some("Failed") => bail!("index build failed: {}", ix["failReason"]),
                    _ => {}
                }
                if t1.elapsed() > wait {
                    bail!(
                        "index build did not finish within {} minutes (--wait-mins)",
                        wait.as_secs() / 60
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Writes the dataset as NumPy files (`id`, `vector`, and the filter fields of `sel`) into
/// `dir/magpie_bench/`, imports them with one bulk-import job and waits for it.
fn import_npy(
    t: &Target,
    ds: &Dataset,
    dir: &Path,
    sel: &[FilterField],
    wait: Duration,
) -> Result<()> {
    let n = ds.n();
    let sub = dir.join(COLL);
    std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
    write_npy(&sub.join("id.npy"), "<i8", &[n], |w| {
        (0..n as i64).try_for_each(|i| w.write_all(&i.to_le_bytes()))
    })?;
    write_npy(&sub.join("vector.npy"), "<f4", &[n, ds.dim], |w| {
        ds.base
            .iter()
            .try_for_each(|x| w.write_all(&x.to_le_bytes()))
    })?;
    let mut files = vec![format!("{COLL}/id.npy"), format!("{COLL}/vector.npy")];
    if !sel.is_empty() {
        write_npy(&sub.join("sel.npy"), "<i8", &[n], |w| {
            (0..n).try_for_each(|i| w.write_all(&sel_of(i).to_le_bytes()))
        })?;
        files.push(format!("{COLL}/sel.npy"));
    }
    // Strings as NumPy unicode arrays (UTF-32LE, NUL-padded); JSON as its text.
    let strings = |name: &str, width: usize, of: &dyn Fn(usize) -> String| {
        write_npy(
            &sub.join(format!("{name}.npy")),
            &format!("<U{width}"),
            &[n],
            |w| {
                (0..n).try_for_each(|i| {
                    let s = of(i);
                    let mut chars = s.chars().map(|c| c as u32).chain(std::iter::repeat(0));
                    (0..width)
                        .try_for_each(|_| w.write_all(&chars.next().unwrap_or(0).to_le_bytes()))
                })
            },
        )
    };
    if sel.contains(&FilterField::VarChar) {
        strings("tag", 4, &tag_of)?;
        files.push(format!("{COLL}/tag.npy"));
    }
    if sel.contains(&FilterField::Json) {
        strings("meta", 12, &|i| format!("{{\"sel\":{}}}", sel_of(i)))?;
        files.push(format!("{COLL}/meta.npy"));
    }
    let job = http_call(
        t,
        "jobs/import/create",
        &json!({"collectionName": COLL, "files": [files]}),
    )?;
    let id = job["data"]["jobId"].clone();
    let t0 = Instant::now();
    loop {
        let p = http_call(t, "jobs/import/get_progress", &json!({"jobId": id}))?;
        match p["data"]["state"].as_str() {
            Some("Completed") => break,
            Some("Failed") => bail!("bulk import failed: {}", p["data"]["reason"]),
            _ => {}
        }
        if t0.elapsed() > wait {
            bail!(
                "bulk import did not finish within {} minutes (--wait-mins)",
                wait.as_secs() / 60
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&sub);
    Ok(())
}

/// A NumPy `.npy` file (format 1.0, C order) whose little-endian data `body` writes.
fn write_npy(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let out = magpie_engine::import::npy::header(descr, shape);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    f.write_all(&out)?;
    body(&mut f).with_context(|| format!("writing {}", path.display()))?;
    f.flush()?;
    Ok(())
}

/// Whether a search still goes through a segment without its index (a server's index
/// state says "Finished" for what it has; a cluster's query nodes pick up the data
/// nodes' indexes a little later).
fn searched_exactly(t: &Target, ds: &Dataset) -> Result<bool> {
    let q = &ds.queries[..ds.dim];
    let v = http_call(
        t,
        "entities/search",
        &json!({"collectionName": COLL, "data": [q], "limit": 1, "consistencyLevel": "Strong"}),
    )?;
    Ok(v["searchInfo"]["exactSegments"].as_u64().unwrap_or(0) > 0)
}

struct RunStats {
    recall: f64,
    qps1: f64,
    qps2: f64,
    /// With `--clients N`: QPS of N concurrent clients.
    qps_n: Option<f64>,
    /// Over HTTP: what a query cost the server with one client and with N.
    server_1t: Option<ServerCost>,
    server_n: Option<ServerCost>,
    p50_ms: f64,
    p99_ms: f64,
    knob: Option<Value>,
}

/// The `sel` value of row `i`: 0..100, spread so that every range of rows has each
/// value about equally often.
fn sel_of(i: usize) -> i64 {
    (i * 7919 % 100) as i64
}

/// Exact top-`k` ids of every query among the rows with `sel < pass` (two threads).
fn filtered_truth(ds: &Dataset, k: usize, pass: u32) -> Vec<Vec<i32>> {
    let dim = ds.dim;
    let rows: Vec<usize> = (0..ds.n()).filter(|&i| sel_of(i) < pass as i64).collect();
    let score = |q: &[f32], x: &[f32]| -> f32 {
        match ds.metric {
            Metric::L2 => -q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
            Metric::IP | Metric::BM25 => q.iter().zip(x).map(|(a, b)| a * b).sum(),
            Metric::COSINE => {
                let dot: f32 = q.iter().zip(x).map(|(a, b)| a * b).sum();
                let n = x.iter().map(|a| a * a).sum::<f32>().sqrt();
                if n > 0.0 {
                    dot / n
                } else {
                    0.0
                }
            }
            // The bench's datasets are float vectors; binary metrics score bytes.
            Metric::HAMMING | Metric::JACCARD => ds.metric.score(q, x, 1.0),
        }
    };
    let one = |qi: usize| -> Vec<i32> {
        let q = ds.query(qi);
        let mut best: Vec<(f32, usize)> = rows
            .iter()
            .map(|&i| (score(q, &ds.base[i * dim..(i + 1) * dim]), i))
            .collect();
        let k = k.min(best.len());
        if k == 0 {
            return Vec::new();
        }
        best.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        best.truncate(k);
        best.sort_by(|a, b| b.0.total_cmp(&a.0));
        best.into_iter().map(|(_, i)| i as i32).collect()
    };
    let nq = ds.nq();
    let mut out = vec![Vec::new(); nq];
    let half = nq / 2;
    let one = &one;
    std::thread::scope(|s| {
        let (a, b) = out.split_at_mut(half);
        s.spawn(move || a.iter_mut().enumerate().for_each(|(i, t)| *t = one(i)));
        s.spawn(move || {
            b.iter_mut()
                .enumerate()
                .for_each(|(i, t)| *t = one(half + i))
        });
    });
    out
}

/// Counters of the server's `/metrics` that split a search's cost (plain-http targets;
/// `None` otherwise or when the server does not report them).
#[derive(Clone, Copy)]
struct ServerCounters {
    /// `process_cpu_seconds_total`.
    cpu_s: f64,
    /// `magpie_search_engine_seconds_total`.
    engine_s: f64,
    /// `magpie_searches_total{thread="worker"}`.
    on_worker: f64,
}

impl ServerCounters {
    fn read(t: &Target) -> Option<Self> {
        let Target::Http { url, .. } = t else {
            return None;
        };
        let (authority, base) = crate::httpconn::split(url)?;
        let (status, body) =
            crate::httpconn::get(authority, &crate::httpconn::path(base, "metrics")).ok()?;
        if status != 200 {
            return None;
        }
        let text = std::str::from_utf8(&body).ok()?;
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some(ServerCounters {
            cpu_s: get("process_cpu_seconds_total ")?,
            engine_s: get("magpie_search_engine_seconds_total ")?,
            on_worker: get("magpie_searches_total{thread=\"worker\"} ")?,
        })
    }

    /// Per query of `nq` between `self` and `later`: server CPU µs, engine µs, and the
    /// share of searches that ran on an async worker.
    fn per_query(self, later: Option<Self>, nq: usize) -> Option<ServerCost> {
        let l = later?;
        let n = nq as f64;
        Some(ServerCost {
            cpu_us: (l.cpu_s - self.cpu_s) * 1e6 / n,
            engine_us: (l.engine_s - self.engine_s) * 1e6 / n,
            on_worker: (l.on_worker - self.on_worker) / n,
        })
    }
}

#[derive(Clone, Copy)]
struct ServerCost {
    cpu_us: f64,
    engine_us: f64,
    on_worker: f64,
}

impl ServerCost {
    fn json(self) -> Value {
        json!({"cpu_us": self.cpu_us, "engine_us": self.engine_us, "on_worker": self.on_worker})
    }
}

/// The mean round trip, in µs, of `GET /healthz` (no engine call) on the connection the
/// searches use: what HTTP costs on this machine before any work, so that one client's
/// QPS cannot pass `1e6 / floor`.
fn http_floor_us(authority: &str, base: &str) -> Result<f64> {
    let path = crate::httpconn::path(base, "healthz");
    for _ in 0..200 {
        crate::httpconn::get(authority, &path)?;
    }
    let n = 2000;
    let t0 = Instant::now();
    for _ in 0..n {
        let (status, _) = crate::httpconn::get(authority, &path)?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}");
        }
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    eprintln!("  HTTP round trip of GET /healthz on this connection: {us:.1} µs (≤ {:.0} requests/s on one client)", 1e6 / us);
    Ok(us)
}

/// QPS of `n` threads running the queries one at a time each (thread `w` takes queries
/// `w, w + n, …`).
fn qps_threads(
    t: &Target,
    ds: &Dataset,
    k: usize,
    knobs: SearchKnobs,
    f: Option<&str>,
    n: usize,
) -> Result<f64> {
    let nq = ds.nq();
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..n)
            .map(|w| {
                s.spawn(move || -> Result<()> {
                    for i in (w..nq).step_by(n) {
                        t.search(ds.query(i), k, knobs, f)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("bench thread")?;
        }
        Ok(())
    })?;
    Ok(nq as f64 / t0.elapsed().as_secs_f64())
}

fn run_queries(
    t: &Target,
    ds: &Dataset,
    k: usize,
    knobs: SearchKnobs,
    filter: Option<(&str, &[Vec<i32>])>,
    clients: Option<usize>,
) -> Result<RunStats> {
    let nq = ds.nq();
    let f = filter.map(|x| x.0);
    let truth = |i: usize| -> &[i32] {
        match filter {
            Some((_, gt)) => &gt[i][..k.min(gt[i].len())],
            None => ds.truth(i, k),
        }
    };
    // Warm-up: touch the index and vectors once.
    for i in 0..nq.min(50) {
        t.search(ds.query(i), k, knobs, f)?;
    }
    let mut lat = Vec::with_capacity(nq);
    let mut hits = 0usize;
    let mut knob = None;
    let c0 = ServerCounters::read(t);
    let t0 = Instant::now();
    for i in 0..nq {
        let t1 = Instant::now();
        let (ids, kn) = t.search(ds.query(i), k, knobs, f)?;
        lat.push(t1.elapsed().as_secs_f64());
        let truth = truth(i);
        hits += ids
            .iter()
            .filter(|id| truth.contains(&(**id as i32)))
            .count();
        if knob.is_none() {
            knob = kn;
        }
    }
    let qps1 = nq as f64 / t0.elapsed().as_secs_f64();
    // Server CPU per query, with one client: what a search costs the server, whatever
    // the client (on this machine, the same cores) costs.
    let server_1t = c0.and_then(|c| c.per_query(ServerCounters::read(t), nq));
    // Two threads, each running half the queries one at a time.
    let qps2 = qps_threads(t, ds, k, knobs, f, 2)?;
    let mut server_n = None;
    let qps_n = match clients {
        Some(n) if n > 0 => {
            let c0 = ServerCounters::read(t);
            let q = qps_threads(t, ds, k, knobs, f, n)?;
            server_n = c0.and_then(|c| c.per_query(ServerCounters::read(t), nq));
            Some(q)
        }
        _ => None,
    };
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] * 1e3;
    Ok(RunStats {
        recall: hits as f64 / (nq * k) as f64,
        qps1,
        qps2,
        qps_n,
        server_1t,
        server_n,
        p50_ms: p(0.5),
        p99_ms: p(0.99),
        knob,
    })
}

/// The in-process engine: one segment holding every row, indexed at any size.
fn local_config(ds: &Dataset, build_threads: usize) -> EngineConfig {
    EngineConfig {
        seal_rows: ds.n() + 1,
        seal_bytes: usize::MAX,
        seal_age_secs: 1 << 30,
        index_min_rows: 1,
        index_build_threads: build_threads,
        ..Default::default()
    }
}

pub fn run(o: BenchOpts) -> Result<()> {
    let ds = load(&o.dataset, o.queries, o.k)?;
    let index = o.index.to_ascii_uppercase();
    let mut params = default_params(&index, ds.dim);
    if let Some(p) = &o.params {
        let extra: Value = serde_json::from_str(p).context("--params must be a JSON object")?;
        let Value::Object(m) = extra else {
            bail!("--params must be a JSON object, e.g. '{{\"M\": 16}}'")
        };
        params.extend(m);
    }
    let system = match (o.url.is_some(), o.growing) {
        (false, false) => "magpie",
        (true, false) => "magpie (HTTP)",
        (false, true) => "magpie, growing segment",
        (true, true) => "magpie (HTTP), growing segment",
    };
    let target = match &o.url {
        Some(u) => Target::Http {
            url: u.clone(),
            token: o.token.clone(),
            agent: ureq::AgentBuilder::new().build(),
        },
        None => {
            let dir = std::env::temp_dir().join(format!("magpie-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let e = Engine::open(&dir, local_config(&ds, o.build_threads))?;
            Target::Local(Box::new(e), dir)
        }
    };
    eprintln!(
        "{}: {} rows × {} ({}), {} queries; building {index} {} with {} thread(s)…",
        ds.name,
        ds.n(),
        ds.dim,
        ds.metric.as_str(),
        ds.nq(),
        Value::Object(params.clone()),
        o.build_threads
    );
    if let Some(n) = o.clients.filter(|n| !(1..=1024).contains(n)) {
        bail!("--clients takes 1 to 1024 concurrent clients, got {n}");
    }
    let sel_fields: &[FilterField] = if o.filter_selectivity.is_empty() {
        &[]
    } else {
        &o.filter_fields
    };
    if let Some(p) = o.filter_selectivity.iter().find(|p| **p == 0 || **p > 100) {
        bail!("--filter-selectivity takes percentages from 1 to 100, got {p}");
    }
    let (load_s, build_s, index_bytes) = if o.reuse {
        let has = http_call(&target, "collections/has", &json!({"collectionName": COLL}))?;
        if has["data"]["has"] != json!(true) {
            bail!("--reuse: the server has no collection '{COLL}'; run once with --keep first");
        }
        let count = http_call(
            &target,
            "entities/query",
            &json!({"collectionName": COLL, "outputFields": ["count(*)"], "consistencyLevel": "Strong"}),
        )?;
        let rows = count["data"][0]["count(*)"].as_u64();
        if rows != Some(ds.n() as u64) {
            bail!(
                "--reuse: '{COLL}' on the server holds {rows:?} rows, the dataset {}; run once with --keep first",
                ds.n()
            );
        }
        eprintln!("  reusing '{COLL}' on the server (build not measured)");
        (None, None, None)
    } else {
        let (l, b, i) = prepare(
            &target,
            &ds,
            &index,
            &params,
            sel_fields,
            o.growing,
            o.shards,
            o.replicas,
            o.import_dir.as_deref(),
            o.wait,
        )?;
        (Some(l), Some(b), Some(i))
    };
    let target = match target {
        // Closed and opened again: the index and vectors as a restarted server has them
        // (vectors memory-mapped from their files, indexes read back), not as the build
        // left them.
        Target::Local(e, dir) if o.reopen => {
            drop(e);
            eprintln!("  reopening the engine from its files…");
            Target::Local(
                Box::new(Engine::open(&dir, local_config(&ds, o.build_threads))?),
                dir,
            )
        }
        t => t,
    };
    let rss = if o.url.is_none() { rss_bytes() } else { 0 };
    let floor_us = match o.url.as_deref().and_then(crate::httpconn::split) {
        Some((authority, base)) => Some(http_floor_us(authority, base)?),
        None => None,
    };
    let raw = (ds.n() * ds.dim * 4) as u64;
    let mut rows = Vec::new();
    let base = json!({
        "system": system, "dataset": ds.name, "n": ds.n(), "dim": ds.dim, "metric": ds.metric.as_str(),
        "k": o.k, "queries": ds.nq(), "index": index, "params": params, "build_threads": o.build_threads,
        "load_s": load_s, "build_s": build_s, "build_vectors_per_s": build_s.map(|b| ds.n() as f64 / b.max(1e-9)),
        "index_bytes": index_bytes, "raw_vector_bytes": raw, "http_floor_us": floor_us, "rss_bytes": rss, "simd": magpie_linalg::active_isa(),
    });
    // (recall target, knobs, filter: passing percentage and field).
    type Run = (Option<f32>, SearchKnobs, Option<(u32, FilterField)>);
    let mut runs: Vec<Run> = Vec::new();
    if let Some((name, default_sweep)) = knob_of(&index) {
        let sweep: Vec<usize> = match &o.sweep {
            Some(s) => s
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .context("--sweep must be a comma-separated list of integers")?,
            None => default_sweep,
        };
        for v in sweep {
            let mut k = SearchKnobs::default();
            if name == "ef" {
                k.ef = Some(v);
            } else {
                k.nprobe = Some(v);
            }
            runs.push((None, k, None));
        }
        for &r in &o.recall_targets {
            runs.push((
                Some(r),
                SearchKnobs {
                    recall: Some(r),
                    ..Default::default()
                },
                None,
            ));
        }
    } else {
        runs.push((None, SearchKnobs::default(), None));
    }
    // The filtered sweep, at the first recall target (exact search for FLAT).
    let target_knobs = runs
        .iter()
        .find(|r| r.0.is_some())
        .map_or((None, SearchKnobs::default()), |r| (r.0, r.1));
    for &f in sel_fields {
        for &p in &o.filter_selectivity {
            runs.push((target_knobs.0, target_knobs.1, Some((p, f))));
        }
    }
    let mut truths: Vec<(u32, Vec<Vec<i32>>)> = Vec::new();
    for (target_recall, mut knobs, pass) in runs {
        knobs.refine = o.refine;
        let text;
        let filter = match pass {
            Some((p, f)) => {
                // The same rows pass whatever the field: one truth per selectivity.
                if !truths.iter().any(|t| t.0 == p) {
                    eprintln!("  exact ground truth for sel < {p}…");
                    truths.push((p, filtered_truth(&ds, o.k, p)));
                }
                let gt = &truths.iter().find(|t| t.0 == p).unwrap().1;
                text = f.text(p);
                Some((text.as_str(), gt.as_slice()))
            }
            None => None,
        };
        let s = run_queries(&target, &ds, o.k, knobs, filter, o.clients)?;
        let mut row = base.clone();
        let m = row.as_object_mut().unwrap();
        let mut knob = s.knob.clone().unwrap_or(Value::Null);
        if let (Some(r), Some(o)) = (o.refine, knob.as_object_mut()) {
            o.insert("refine".into(), json!(r));
        }
        m.insert("knob".into(), knob);
        m.insert("recall_target".into(), json!(target_recall));
        m.insert("filter_pass_pct".into(), json!(pass.map(|p| p.0)));
        if let Some((_, f)) = pass {
            m.insert("filter_field".into(), json!(f.name()));
            m.insert("filter".into(), json!(filter.map(|x| x.0)));
        }
        m.insert("recall".into(), json!(s.recall));
        m.insert("qps_1t".into(), json!(s.qps1));
        m.insert("qps_2t".into(), json!(s.qps2));
        if let (Some(n), Some(q)) = (o.clients, s.qps_n) {
            m.insert("clients".into(), json!(n));
            m.insert("qps_clients".into(), json!(q));
            if let Some(c) = s.server_n {
                m.insert("server_clients".into(), c.json());
            }
        }
        if let Some(c) = s.server_1t {
            m.insert("server_1t".into(), c.json());
        }
        m.insert("p50_ms".into(), json!(s.p50_ms));
        m.insert("p99_ms".into(), json!(s.p99_ms));
        eprintln!(
            "  {} recall@{}={:.4} qps(1t)={:.0} qps(2t)={:.0}{} p50={:.3}ms p99={:.3}ms",
            s.knob.map_or("exact".into(), |k| k.to_string()),
            o.k,
            s.recall,
            s.qps1,
            s.qps2,
            match (o.clients, s.qps_n) {
                (Some(n), Some(q)) => format!(" qps({n} clients)={q:.0}"),
                _ => String::new(),
            } + &s.server_1t.map_or(String::new(), |c| {
                format!(
                    " [server, 1 client: CPU {:.0} µs/query, engine {:.0} µs, {:.0} % on workers]",
                    c.cpu_us,
                    c.engine_us,
                    c.on_worker * 100.0
                )
            }),
            s.p50_ms,
            s.p99_ms
        );
        rows.push(row);
    }
    if index == "FLAT" {
        let bw = measure_bandwidth();
        for r in &mut rows {
            r["bandwidth_gb_s"] = json!(bw / 1e9);
            r["bandwidth_bound_qps"] = json!(bw / raw as f64);
        }
    }
    if let Target::Local(e, dir) = target {
        drop(e);
        let _ = std::fs::remove_dir_all(&dir);
    } else if !o.keep && !o.reuse {
        let _ = http_call(
            &target,
            "collections/drop",
            &json!({"collectionName": COLL}),
        );
    }
    println!("{}", markdown(&rows));
    if let Some(p) = &o.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&rows)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The markdown table of result rows (shared with the peers' rows: same keys). A
/// "QPS N clients" column appears when some row has `qps_clients`.
pub fn markdown(rows: &[Value]) -> String {
    let clients = rows.iter().find_map(|r| r["clients"].as_u64());
    let mut s = format!(
        "| system | index | params | knob | recall@10 | QPS 1 thread | QPS 2 threads |{} p50 ms | p99 ms | build s | index MB | RSS MB |\n|---|---|---|---|---|---|---|{}---|---|---|---|---|\n",
        clients.map_or(String::new(), |n| format!(" QPS {n} clients |")),
        if clients.is_some() { "---|" } else { "" },
    );
    for r in rows {
        let mut knob = match (&r["knob"], &r["recall_target"]) {
            (k, Value::Number(t)) => {
                format!("recall≥{:.2} → {}", t.as_f64().unwrap_or(0.0), compact(k))
            }
            (Value::Null, _) => "exact".into(),
            (k, _) => compact(k),
        };
        if let Some(p) = r["filter_pass_pct"].as_u64() {
            knob = match r["filter_field"].as_str() {
                Some(f) if f != "int" => format!("filter {p} % ({f}) · {knob}"),
                _ => format!("filter {p} % · {knob}"),
            };
        }
        let mb = |v: &Value| v.as_f64().map_or("-".into(), |b| format!("{:.1}", b / 1e6));
        let n_clients = match clients {
            None => String::new(),
            Some(_) => format!(
                " {} |",
                r["qps_clients"]
                    .as_f64()
                    .map_or("-".into(), |q| format!("{q:.0}"))
            ),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {:.0} | {:.0} |{n_clients} {:.3} | {:.3} | {} | {} | {} |\n",
            r["system"].as_str().unwrap_or("?"),
            r["index"].as_str().unwrap_or("?"),
            compact(&r["params"]),
            knob,
            r["recall"].as_f64().unwrap_or(0.0),
            r["qps_1t"].as_f64().unwrap_or(0.0),
            r["qps_2t"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["build_s"]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.1}")),
            mb(&r["index_bytes"]),
            if r["rss_bytes"].as_u64().unwrap_or(0) == 0 {
                "-".into()
            } else {
                mb(&r["rss_bytes"])
            },
        ));
    }
    s
}

fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
