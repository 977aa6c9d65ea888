//! Client commands that talk to a running server over its REST API.

use crate::vecfile;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;

/// The server could not be reached (exit code 2).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach magpie at {} (is `magpie serve` running? set --url or MAGPIE_URL)",
            self.0
        )
    }
}
impl std::error::Error for Unreachable {}

/// POSTs to `/v2/vectordb/{endpoint}` and returns the reply (its `data` holds the result),
/// or the server's error message.
pub fn call(url: &str, token: Option<&str>, endpoint: &str, body: &Value) -> Result<Value> {
    post(url, token, &format!("/v2/vectordb/{endpoint}"), body)
}

/// POSTs JSON to `path` (e.g. `/v2/images/search`) and returns the reply, or an error
/// carrying the server's message (or [`Unreachable`] when there is no server).
pub fn post(url: &str, token: Option<&str>, path: &str, body: &Value) -> Result<Value> {
    let endpoint = path.trim_start_matches('/');
    let full = format!("{}/{endpoint}", url.trim_end_matches('/'));
    let mut req = ureq::post(&full).set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.send_json(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(_)) => return Err(Unreachable(url.to_string()).into()),
    };
    let v: Value = resp
        .into_json()
        .with_context(|| format!("{endpoint}: the server's reply is not JSON"))?;
    if v["code"].as_i64() != Some(0) {
        bail!(
            "{endpoint}: {}",
            v["message"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(v)
}

/// Name of the primary-key field in a `collections/describe` reply.
fn pk_name(desc: &Value) -> String {
    desc["data"]["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["primaryKey"] == json!(true)))
        .and_then(|f| f["name"].as_str())
        .unwrap_or("id")
        .to_string()
}

pub fn collections(url: &str, token: Option<&str>) -> Result<()> {
    let list = call(url, token, "collections/list", &json!({}))?;
    let names: Vec<String> = list["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        println!("no collections");
        return Ok(());
    }
    println!("{:<32} {:>12}", "COLLECTION", "ROWS");
    for n in names {
        let st = call(
            url,
            token,
            "collections/get_stats",
            &json!({"collectionName": n}),
        )?;
        println!("{:<32} {:>12}", n, st["data"]["rowCount"].to_string());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn import(
    url: &str,
    token: Option<&str>,
    coll: &str,
    file: &Path,
    metric: &str,
    batch: usize,
    id_start: i64,
    limit: Option<usize>,
    clients: usize,
) -> Result<()> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let batch = batch.max(1);
    if ext == "jsonl" || ext == "json" || ext == "ndjson" {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let total = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap(),
        );
        let mut rows = Vec::new();
        let mut n = 0usize;
        for (lineno, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("{}: read error", file.display()))?;
            pb.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: invalid JSON", file.display(), lineno + 1))?;
            rows.push(v);
            n += 1;
            if rows.len() == batch {
                call(
                    url,
                    token,
                    "entities/insert",
                    &json!({"collectionName": coll, "data": rows}),
                )?;
                rows.clear();
            }
            if limit.is_some_and(|l| n >= l) {
                break;
            }
        }
        if !rows.is_empty() {
            call(
                url,
                token,
                "entities/insert",
                &json!({"collectionName": coll, "data": rows}),
            )?;
        }
        pb.finish_and_clear();
        println!("imported {n} rows into {coll}");
        return Ok(());
    }
    let (dim, data) = match ext.as_str() {
        "fvecs" => vecfile::read_fvecs(file)?,
        "npy" => vecfile::read_npy(file)?,
        _ => bail!(
            "{}: unknown format; use .fvecs, .npy or .jsonl",
            file.display()
        ),
    };
    let mut n = data.len() / dim;
    if let Some(l) = limit {
        n = n.min(l);
    }
    let has = call(
        url,
        token,
        "collections/has",
        &json!({"collectionName": coll}),
    )?;
    if has["data"]["has"] != json!(true) {
        call(
            url,
            token,
            "collections/create",
            &json!({"collectionName": coll, "dimension": dim, "metricType": metric}),
        )?;
        eprintln!("created collection {coll} (dim {dim}, {metric})");
    }
    let desc = call(
        url,
        token,
        "collections/describe",
        &json!({"collectionName": coll}),
    )?;
    let fields = desc["data"]["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pk = pk_name(&desc);
    let auto = desc["data"]["autoId"] == json!(true);
    let vecs: Vec<&Value> = fields
        .iter()
        .filter(|f| f["type"] == json!("FloatVector"))
        .collect();
    if vecs.len() != 1 {
        bail!(
            "collection {coll} has {} vector fields; import needs exactly one",
            vecs.len()
        );
    }
    let vf = vecs[0]["name"].as_str().unwrap_or("vector").to_string();
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}").unwrap(),
    );
    // Batches are handed out in order to `clients` threads, each sending one request at
    // a time; the first error stops the others after their current request.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let t0 = std::time::Instant::now();
    let send = || -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let start = next.fetch_add(1, Relaxed) * batch;
            if start >= n || failed.load(Relaxed) {
                return Ok(());
            }
            let end = (start + batch).min(n);
            let rows: Vec<Value> = (start..end)
                .map(|i| {
                    let mut o = serde_json::Map::new();
                    if !auto {
                        o.insert(pk.clone(), json!(id_start + i as i64));
                    }
                    o.insert(vf.clone(), json!(&data[i * dim..(i + 1) * dim]));
                    Value::Object(o)
                })
                .collect();
            if let Err(e) = call(
                url,
                token,
                "entities/insert",
                &json!({"collectionName": coll, "data": rows}),
            ) {
                failed.store(true, Relaxed);
                return Err(e.context(format!("rows {start}..{end}")));
            }
            pb.inc((end - start) as u64);
        }
    };
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients.max(1)).map(|_| s.spawn(send)).collect();
        hs.into_iter()
            .map(|h| h.join().expect("import client thread"))
            .collect::<Result<Vec<()>>>()
    })?;
    let secs = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    println!(
        "imported {n} vectors of dimension {dim} into {coll} in {secs:.1} s ({:.0} rows/s, {} client(s))",
        n as f64 / secs.max(1e-9),
        clients.max(1)
    );
    Ok(())
}

pub fn search(url: &str, token: Option<&str>, body: &Value, raw: bool) -> Result<()> {
    let coll = body["collectionName"].as_str().unwrap_or_default();
    let v = call(url, token, "entities/search", body)?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let desc = call(
        url,
        token,
        "collections/describe",
        &json!({"collectionName": coll}),
    )?;
    let pk = pk_name(&desc);
    let hits = v["data"].as_array().cloned().unwrap_or_default();
    if hits.is_empty() {
        println!("no results");
    }
    for (rank, h) in hits.iter().enumerate() {
        let mut rest = h.as_object().cloned().unwrap_or_default();
        let id = rest.remove(&pk).unwrap_or(Value::Null);
        let d = rest.remove("distance").unwrap_or(Value::Null);
        let extra = if rest.is_empty() {
            String::new()
        } else {
            Value::Object(rest).to_string()
        };
        println!(
            "{:>3}  {:<20} {:>12}  {}",
            rank + 1,
            id.to_string(),
            d.to_string(),
            extra
        );
    }
    Ok(())
}
