//! `magpie bench`: exact (FLAT) search through the engine on a .fvecs dataset with
//! ground truth, reported beside the memory-bandwidth bound measured in the same run.
//! (ANN index sweeps and peers join this command with the index issue.)

use crate::vecfile::read_fvecs;
use anyhow::{bail, Context, Result};
use magpie_engine::{Consistency, Engine, EngineConfig, IndexMeta, Metric, SearchRequest};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

fn read_ivecs(path: &Path) -> Result<(usize, Vec<i32>)> {
    let (k, raw) = read_fvecs(path)?;
    Ok((k, raw.into_iter().map(|f| f.to_bits() as i32).collect()))
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

pub fn run(dataset: &Path, queries: Option<usize>, k: usize, json_out: bool) -> Result<()> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dataset.join("manifest.json"))
            .with_context(|| format!("{}: no manifest.json", dataset.display()))?,
    )?;
    let metric = match manifest["metric"].as_str().unwrap_or("l2") {
        "l2" => Metric::L2,
        "ip" => Metric::IP,
        "cosine" => Metric::COSINE,
        m => bail!("unknown metric '{m}' in the manifest"),
    };
    let (dim, base) = read_fvecs(&dataset.join("base.fvecs"))?;
    let (qdim, qs) = read_fvecs(&dataset.join("query.fvecs"))?;
    let (gt_k, gt) = read_ivecs(&dataset.join("groundtruth.ivecs"))?;
    if qdim != dim || gt_k < k {
        bail!("dataset shapes disagree (dim {dim} vs {qdim}, ground truth k {gt_k} < {k})");
    }
    let n = base.len() / dim;
    let nq = queries.unwrap_or(qs.len() / dim).min(qs.len() / dim);
    let dir = std::env::temp_dir().join(format!("magpie-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open(
        &dir,
        EngineConfig {
            seal_rows: n + 1,
            ..Default::default()
        },
    )?;
    let schema = magpie_engine::CollectionSchema {
        fields: vec![
            magpie_engine::FieldSchema::new("id", magpie_engine::DataType::Int64).primary(false),
            magpie_engine::FieldSchema::new("vector", magpie_engine::DataType::FloatVector)
                .with_dim(dim),
        ],
        enable_dynamic_field: false,
        description: String::new(),
    };
    let ix = IndexMeta {
        id: 0,
        index_name: "vector".into(),
        field_name: "vector".into(),
        index_type: "FLAT".into(),
        metric_type: metric,
        params: Default::default(),
    };
    engine.create_collection("bench", schema, vec![ix], Consistency::Session, "")?;
    let t = Instant::now();
    for start in (0..n).step_by(10_000) {
        let rows: Vec<Value> = (start..(start + 10_000).min(n))
            .map(|i| json!({"id": i, "vector": &base[i * dim..(i + 1) * dim]}))
            .collect();
        engine.insert("bench", None, &rows)?;
    }
    engine.flush("bench")?;
    let load_s = t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(nq);
    let mut hits = 0usize;
    let t = Instant::now();
    for qi in 0..nq {
        let req = SearchRequest {
            vectors: vec![qs[qi * dim..(qi + 1) * dim].to_vec()],
            limit: k,
            ..Default::default()
        };
        let t1 = Instant::now();
        let res = engine.search("bench", &req)?;
        lat.push(t1.elapsed().as_secs_f64());
        let truth = &gt[qi * gt_k..qi * gt_k + k];
        hits += res[0].iter().filter(|h| matches!(h.id, magpie_engine::PrimaryKey::Int(i) if truth.contains(&(i as i32)))).count();
    }
    let total = t.elapsed().as_secs_f64();
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_by(f64::total_cmp);
    let qps = nq as f64 / total;
    let recall = hits as f64 / (nq * k) as f64;
    let bw = measure_bandwidth();
    let bytes_per_query = (n * dim * 4) as f64;
    let bound = bw / bytes_per_query;
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] * 1e3;
    let out = json!({
        "dataset": dataset.display().to_string(), "n": n, "dim": dim, "metric": metric.as_str(), "queries": nq, "k": k,
        "index": "FLAT", "threads": 1, "simd": magpie_linalg::active_isa(), "load_seconds": load_s,
        "qps": qps, "p50_ms": p(0.5), "p99_ms": p(0.99), "recall_at_k": recall,
        "bandwidth_gb_s": bw / 1e9, "bytes_scanned_per_query": bytes_per_query, "bandwidth_bound_qps": bound,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("| dataset | index | threads | QPS | p50 ms | p99 ms | recall@{k} | bound QPS (bandwidth {:.1} GB/s) |", bw / 1e9);
        println!("|---|---|---|---|---|---|---|---|");
        println!("| {} ({n}×{dim}, {}) | FLAT ({}) | 1 | {qps:.1} | {:.2} | {:.2} | {recall:.4} | {bound:.1} |", dataset.file_name().and_then(|s| s.to_str()).unwrap_or("?"), metric.as_str(), magpie_linalg::active_isa(), p(0.5), p(0.99));
    }
    Ok(())
}
