//! Cluster mode end to end: real etcd, NATS JetStream and SeaweedFS (S3), and `magpie
//! serve --role ...` processes, started on free ports and stopped by the test.

#[path = "../../server/tests/common/rest_suite.rs"]
mod rest_suite;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Deps {
    etcd: magpie_testkit::Service,
    nats: magpie_testkit::Service,
    s3: magpie_testkit::S3Server,
    /// Between the nodes and S3, to cut it off.
    s3_faults: magpie_testkit::faults::FaultProxy,
    dir: tempfile::TempDir,
}

fn deps() -> Option<Deps> {
    let etcd = magpie_testkit::etcd()?;
    let nats = magpie_testkit::nats()?;
    let s3 = magpie_testkit::seaweedfs("cluster")?;
    let s3_faults = magpie_testkit::faults::FaultProxy::start(&s3.endpoint);
    Some(Deps {
        etcd,
        nats,
        s3,
        s3_faults,
        dir: tempfile::tempdir().unwrap(),
    })
}

struct Proc {
    child: Child,
    url: String,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Deps {
    /// A failing test prints every node's log: a timeout alone does not say which node
    /// was stuck or why.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(dir) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("----- {} (last {} lines) -----", p.display(), tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Deps {
    fn env(&self) -> Vec<(String, String)> {
        self.s3
            .options()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .map(|(k, v)| {
                if k == "AWS_ENDPOINT" {
                    (k, self.s3_faults.endpoint())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    /// A cluster process with `roles`, named `name` (its node id and data directory).
    fn node(&self, name: &str, roles: &str) -> Proc {
        self.node_with(name, roles, &[])
    }

    fn node_with(&self, name: &str, roles: &str, extra: &[&str]) -> Proc {
        let data: PathBuf = self.dir.path().join(name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(["serve", "--listen", "127.0.0.1:0", "--role", roles])
            .args(["--etcd", &self.etcd.url, "--log", &self.nats.url])
            .args(["--storage", &format!("s3://{}/magpie", self.s3.bucket)])
            .args(["--node-id", name, "--lease-ttl", "2"])
            // 0.5 s unless `extra` sets it.
            .args(if extra.contains(&"--checkpoint-secs") {
                &[][..]
            } else {
                &["--checkpoint-secs", "0.5"][..]
            })
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .envs(self.env())
            // No models unless `extra` names them (`--models-dir`).
            .env_remove("MAGPIE_MODELS_DIR")
            .env("MAGPIE_LOG", "warn,magpie_cluster=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("spawn magpie");
        let url = listening_url(&mut child).unwrap_or_else(|line| {
            panic!(
                "{name}: unexpected first line {line:?}; log:\n{}",
                self.log(name)
            )
        });
        Proc {
            child,
            url,
            name: name.to_string(),
        }
    }

    /// A standalone server (no cluster role) beside the cluster, to compare answers with.
    fn standalone(&self, extra: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join("standalone"))
            .args(extra)
            .env("MAGPIE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = listening_url(&mut child).expect("standalone: its first line");
        Proc {
            child,
            url,
            name: "standalone".into(),
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// The URL from the "listening on …" line a `magpie serve` prints first, or that line.
fn listening_url(child: &mut Child) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    match line.trim().strip_prefix("listening on ") {
        Some(u) => Ok(u.to_string()),
        None => Err(line),
    }
}

fn call(url: &str, ep: &str, body: &Value) -> Result<Value, String> {
    let r = ureq::post(&format!("{url}/v2/vectordb/{ep}"))
        .timeout(Duration::from_secs(60))
        .send_json(body.clone());
    let v: Value = match r {
        Ok(r) => r.into_json().map_err(|e| e.to_string())?,
        Err(ureq::Error::Status(s, r)) => {
            let v: Value = r.into_json().map_err(|e| e.to_string())?;
            return Err(format!("{s}: {}", v["message"]));
        }
        Err(e) => return Err(e.to_string()),
    };
    if v["code"] == json!(0) {
        Ok(v)
    } else {
        Err(v["message"].to_string())
    }
}

fn ok(url: &str, ep: &str, body: Value) -> Value {
    call(url, ep, &body).unwrap_or_else(|e| panic!("{ep} {body}: {e}"))
}

/// Waits until `f` holds (60 s at most: CI runs these tests side by side on 2 cores).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Shown when the test fails, beside the nodes' logs.
    eprintln!("waited {:?} for {what}", t0.elapsed());
}

fn ready(p: &Proc) -> bool {
    ureq::get(&format!("{}/readyz", p.url))
        .timeout(Duration::from_secs(2))
        .call()
        .is_ok()
}

fn vector(i: u64) -> Vec<f32> {
    // Deterministic pseudo-random vectors.
    let mut x = i.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 1000.0 - 0.5
        })
        .collect()
}

fn schema(shards: u32) -> Value {
    json!({
        "collectionName": "docs",
        "shardsNum": shards,
        "schema": {"autoId": false, "enableDynamicField": true, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": 8}},
            {"fieldName": "color", "dataType": "VarChar", "elementTypeParams": {"max_length": 16}},
            {"fieldName": "n", "dataType": "Int64"},
            {"fieldName": "g", "dataType": "Int64"}
        ]},
        "indexParams": [{"fieldName": "v", "indexName": "v", "metricType": "L2", "indexType": "HNSW", "params": {"M": 8, "efConstruction": 64}}]
    })
}

fn rows(range: std::ops::Range<u64>) -> Value {
    let colors = ["red", "green", "blue"];
    json!(range
        .map(|i| json!({"id": i, "v": vector(i), "color": colors[(i % 3) as usize], "n": i, "g": i % 40, "extra": format!("e{i}")}))
        .collect::<Vec<_>>())
}

/// Row count and flushed segments from `collections/get_stats`.
fn wait_rows(url: &str) -> (u64, u64) {
    let v = ok(
        url,
        "collections/get_stats",
        json!({"collectionName": "docs"}),
    );
    (
        v["data"]["rowCount"].as_u64().unwrap_or(0),
        v["data"]["segments"]["flushed"].as_u64().unwrap_or(0),
    )
}

/// Runs the same workload on `url` and returns every answer it got.
fn workload(url: &str, embed: bool) -> Vec<Value> {
    ok(url, "collections/create", schema(3));
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "docs", "data": rows(0..600)}),
    );
    ok(
        url,
        "entities/upsert",
        json!({"collectionName": "docs", "data": rows(590..620)}),
    );
    let del = ok(
        url,
        "entities/delete",
        json!({"collectionName": "docs", "ids": [1, 2, 3, 9999]}),
    );
    let del_f = ok(
        url,
        "entities/delete",
        json!({"collectionName": "docs", "filter": "n >= 100 and n < 110"}),
    );
    ok(
        url,
        "partitions/create",
        json!({"collectionName": "docs", "partitionName": "p1"}),
    );
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "docs", "partitionName": "p1", "data": rows(1000..1010)}),
    );
    let strong = |mut b: Value| {
        b["collectionName"] = json!("docs");
        b["consistencyLevel"] = json!("Strong");
        b
    };
    let mut out = vec![del["data"].clone(), del_f["data"].clone()];
    // An insert that repeats a stored key (one on another shard than the batch's first
    // rows) is refused as a whole, with standalone's status and message; none of the
    // batch's new keys are stored (counted below).
    let mut batch = rows(2000..2003);
    batch.as_array_mut().unwrap().push(rows(5..6)[0].clone());
    let dup = call(
        url,
        "entities/insert",
        &json!({"collectionName": "docs", "data": batch}),
    )
    .expect_err("an insert repeating stored key 5 must be refused");
    assert!(dup.contains("already exists"), "{dup}");
    out.push(json!({"duplicate insert": dup}));
    // Eight inserts of one new key at once: exactly one is accepted (through one proxy
    // the cluster serialises the key lookups of a collection's inserts).
    let accepted = std::thread::scope(|s| {
        let racers: Vec<_> = (0..8u64)
            .map(|t| {
                s.spawn(move || {
                    let mut row = rows(3000..3001);
                    row[0]["n"] = json!(t);
                    call(
                        url,
                        "entities/insert",
                        &json!({"collectionName": "docs", "data": row}),
                    )
                    .is_ok()
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(accepted, 1, "inserts of one new key accepted at once");
    ok(
        url,
        "entities/delete",
        json!({"collectionName": "docs", "ids": [3000]}),
    );
    out.push(
        ok(
            url,
            "entities/query",
            strong(json!({"filter": "", "outputFields": ["count(*)"]})),
        )["data"]
            .clone(),
    );
    out.push(
        ok(
            url,
            "entities/query",
            strong(json!({"filter": "color == \"red\" and n < 300", "outputFields": ["count(*)"]})),
        )["data"]
            .clone(),
    );
    let mut q = ok(
        url,
        "entities/query",
        strong(json!({"filter": "n >= 590 and n < 625", "outputFields": ["id", "color", "extra"]})),
    )["data"]
        .clone();
    q.as_array_mut().unwrap().sort_by_key(|r| r["id"].as_i64());
    out.push(q);
    let mut g = ok(
        url,
        "entities/get",
        strong(json!({"id": [0, 1, 5, 1005], "outputFields": ["id", "n"]})),
    )["data"]
        .clone();
    g.as_array_mut().unwrap().sort_by_key(|r| r["id"].as_i64());
    out.push(g);
    for (i, f) in ["", "color == \"blue\"", "n > 500"].iter().enumerate() {
        let s = ok(
            url,
            "entities/search",
            strong(
                json!({"data": [vector(7 + i as u64), vector(400)], "annsField": "v", "limit": 10, "filter": f, "outputFields": ["color"]}),
            ),
        );
        out.push(json!({"data": s["data"], "topks": s["topks"]}));
    }
    let s = ok(
        url,
        "entities/search",
        strong(json!({"data": [vector(3)], "limit": 5, "offset": 5})),
    );
    out.push(json!({"data": s["data"]}));
    // Hybrid search: sub-searches merged across shards, then fused.
    for rerank in [
        json!({"strategy": "rrf", "params": {"k": 60}}),
        json!({"strategy": "weighted", "params": {"weights": [0.7, 0.3]}}),
    ] {
        let s = ok(
            url,
            "entities/hybrid_search",
            strong(json!({"search": [
                {"annsField": "v", "data": [vector(5)], "limit": 12},
                {"annsField": "v", "data": [vector(9)], "limit": 12, "filter": "color == \"red\""}],
                "rerank": rerank, "limit": 6, "offset": 2, "outputFields": ["n"]})),
        );
        out.push(json!({"data": s["data"], "topks": s["topks"]}));
    }
    // Rerank functions run on the hits merged from every shard: decay on a field and a
    // boost by filter, on a search (with a window and a page) and on a hybrid search.
    let decay = json!({"name": "near300", "type": "Rerank", "inputFieldNames": ["n"],
        "params": {"reranker": "decay", "function": "gauss", "origin": 300, "scale": 100, "decay": 0.5}});
    let boost = json!({"name": "red", "type": "Rerank",
        "params": {"reranker": "boost", "filter": "color == \"red\"", "weight": 1.5}});
    let s = ok(
        url,
        "entities/search",
        strong(
            json!({"data": [vector(290), vector(10)], "limit": 6, "offset": 1, "outputFields": ["color"],
            "functionScore": {"functions": [decay, boost], "params": {"window": 40}}}),
        ),
    );
    assert_eq!(s["topks"], json!([6, 6]), "{s}");
    assert!(
        s["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h.get("n").is_none()),
        "the decay's field is not returned unless asked for: {s}"
    );
    out.push(json!({"data": s["data"], "topks": s["topks"]}));
    let s = ok(
        url,
        "entities/hybrid_search",
        strong(json!({"search": [
            {"annsField": "v", "data": [vector(5)], "limit": 12},
            {"annsField": "v", "data": [vector(300)], "limit": 12}],
            "rerank": {"strategy": "rrf", "params": {"k": 60}},
            "functionScore": {"functions": [boost], "params": {"boost_mode": "sum"}},
            "limit": 5, "outputFields": ["n"]})),
    );
    out.push(json!({"data": s["data"], "topks": s["topks"]}));
    let s = ok(
        url,
        "entities/search",
        strong(json!({"ids": [42], "limit": 3, "partitionNames": ["p1"]})),
    );
    out.push(json!({"data": s["data"]}));
    // Grouped searches: groups straddle the shards (the proxy's second round).
    for (limit, size, offset, field) in [
        (2, 3, 0, "color"),
        (2, 2, 1, "color"),
        (4, 1, 0, "n"),
        (3, 3, 0, "g"),
        (2, 4, 2, "g"),
    ] {
        let s = ok(
            url,
            "entities/search",
            strong(
                json!({"data": [vector(5), vector(8)], "limit": limit, "groupingField": field, "groupSize": size, "offset": offset, "filter": "n < 500", "outputFields": ["n"]}),
            ),
        );
        out.push(json!({"data": s["data"], "topks": s["topks"]}));
    }
    out.push(ok(url, "partitions/list", json!({"collectionName": "docs"}))["data"].clone());
    // Pages of a query, a range search, the description and the statistics.
    out.push(
        ok(
            url,
            "entities/query",
            strong(json!({"filter": "n >= 0", "outputFields": ["id"], "limit": 7, "offset": 20})),
        )["data"]
            .clone(),
    );
    let s = ok(
        url,
        "entities/search",
        strong(
            json!({"data": [vector(11)], "limit": 50, "searchParams": {"params": {"radius": 0.5, "range_filter": 0.05}}}),
        ),
    );
    out.push(json!({"data": s["data"]}));
    let d = ok(
        url,
        "collections/describe",
        json!({"collectionName": "docs"}),
    )["data"]
        .clone();
    out.push(json!([
        d["fields"],
        d["indexes"],
        d["load"],
        d["consistencyLevel"],
        d["autoId"],
        d["enableDynamicField"],
        d["partitionsNum"]
    ]));
    out.push(
        ok(
            url,
            "partitions/has",
            json!({"collectionName": "docs", "partitionName": "p1"}),
        )["data"]
            .clone(),
    );
    out.push(ok(url, "indexes/list", json!({"collectionName": "docs"}))["data"].clone());
    ok(url, "collections/flush", json!({"collectionName": "docs"}));
    ok(
        url,
        "collections/compact",
        json!({"collectionName": "docs"}),
    );
    let idx = ok(url, "indexes/describe", strong(json!({"indexName": "v"})))["data"][0].clone();
    out.push(json!([
        idx["indexName"],
        idx["fieldName"],
        idx["indexType"],
        idx["metricType"],
        idx["totalRows"]
    ]));
    let (rows_, _) = wait_rows(url);
    out.push(json!(rows_));
    // Release refuses searches, load brings them back; a dropped partition's rows go.
    ok(
        url,
        "collections/release",
        json!({"collectionName": "docs"}),
    );
    out.push(
        ok(
            url,
            "collections/get_load_state",
            json!({"collectionName": "docs"}),
        )["data"]["loadState"]
            .clone(),
    );
    let e = call(
        url,
        "entities/search",
        &strong(json!({"data": [vector(1)], "limit": 1})),
    )
    .unwrap_err();
    out.push(json!(e));
    ok(url, "collections/load", json!({"collectionName": "docs"}));
    ok(
        url,
        "partitions/drop",
        json!({"collectionName": "docs", "partitionName": "p1"}),
    );
    out.push(
        ok(
            url,
            "entities/query",
            strong(json!({"filter": "", "outputFields": ["count(*)"]})),
        )["data"]
            .clone(),
    );
    // Another index, another metric.
    ok(
        url,
        "indexes/drop",
        json!({"collectionName": "docs", "indexName": "v"}),
    );
    ok(
        url,
        "indexes/create",
        json!({"collectionName": "docs", "indexParams": [{"fieldName": "v", "indexName": "v2", "metricType": "IP", "params": {"index_type": "FLAT"}}]}),
    );
    let s = ok(
        url,
        "entities/search",
        strong(json!({"data": [vector(21)], "limit": 4})),
    );
    out.push(json!({"data": s["data"]}));
    // Every scalar type, auto ids (their values differ between the two; the rows do not).
    ok(
        url,
        "collections/create",
        json!({"collectionName": "s", "shardsNum": 2, "schema": {"autoId": true, "enableDynamicField": false, "fields": [
        {"fieldName": "pk", "dataType": "Int64", "isPrimary": true},
        {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": "2"}},
        {"fieldName": "b", "dataType": "Bool"}, {"fieldName": "i8", "dataType": "Int8"},
        {"fieldName": "f", "dataType": "Float", "nullable": true}, {"fieldName": "d", "dataType": "Double", "defaultValue": 2.5},
        {"fieldName": "s", "dataType": "VarChar", "elementTypeParams": {"max_length": 8}},
        {"fieldName": "j", "dataType": "JSON"},
        {"fieldName": "a", "dataType": "Array", "elementDataType": "VarChar", "elementTypeParams": {"max_capacity": 4, "max_length": 4}}]},
        "indexParams": [{"fieldName": "v", "metricType": "COSINE", "indexType": "AUTOINDEX"}]}),
    );
    let data: Vec<Value> = (0..40).map(|i| json!({"v": [1, i], "b": i % 2 == 0, "i8": i % 7, "s": format!("s{i}"), "j": {"k": [i % 3, 2]}, "a": ["x", if i % 4 == 0 {"y"} else {"z"}]})).collect();
    let ins = ok(
        url,
        "entities/insert",
        json!({"collectionName": "s", "data": data}),
    );
    let ids = ins["data"]["insertIds"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 40);
    let uniq: std::collections::HashSet<String> = ids.iter().map(|v| v.to_string()).collect();
    assert_eq!(uniq.len(), 40, "auto ids repeat");
    let mut q = ok(url, "entities/query", json!({"collectionName": "s", "filter": "j['k'][0] == 1 and array_contains(a, 'y') and d == 2.5 and f is null", "outputFields": ["b", "i8", "f", "d", "s", "j", "a"], "consistencyLevel": "Strong"}))["data"].clone();
    for r in q.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("pk");
    }
    q.as_array_mut()
        .unwrap()
        .sort_by_key(|r| r["s"].as_str().unwrap().to_string());
    out.push(q);
    // Rename: the rows follow, writes under the new name land, the old name is free.
    ok(
        url,
        "collections/rename",
        json!({"collectionName": "s", "newCollectionName": "s2"}),
    );
    out.push(ok(url, "collections/has", json!({"collectionName": "s"}))["data"].clone());
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "s2", "data": [{"v": [2, 1], "b": true, "i8": 1, "s": "late", "j": {}, "a": []}]}),
    );
    out.push(ok(url, "entities/query", json!({"collectionName": "s2", "filter": "i8 >= 0", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}))["data"].clone());
    let e = call(
        url,
        "collections/rename",
        &json!({"collectionName": "s2", "newCollectionName": "docs"}),
    )
    .unwrap_err();
    out.push(json!(e));
    out.push(json!(ok(url, "collections/list", json!({}))["data"]
        .as_array()
        .map(|a| {
            let mut v: Vec<String> = a.iter().map(|x| x.as_str().unwrap().to_string()).collect();
            v.sort();
            v
        })));
    // Binary and half-precision vectors, sharded: the merge orders distances ascending
    // for HAMMING (only the distances are compared: rows at equal Hamming distance may
    // come from either shard first) and the rounded float16 values come back.
    ok(
        url,
        "collections/create",
        json!({"collectionName": "bits", "shardsNum": 2, "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "b", "dataType": "BinaryVector", "elementTypeParams": {"dim": 16}},
            {"fieldName": "h", "dataType": "Float16Vector", "elementTypeParams": {"dim": 2}}]},
            "indexParams": [
                {"fieldName": "b", "metricType": "HAMMING", "indexType": "BIN_FLAT"},
                {"fieldName": "h", "metricType": "L2", "indexType": "FLAT"}]}),
    );
    let brows: Vec<Value> = (0..100u64)
        .map(|i| json!({"id": i, "b": [i * 37 % 256, i * 11 % 256], "h": [i as f64 * 0.1, 1.0 / (i as f64 + 3.0)]}))
        .collect();
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "bits", "data": brows}),
    );
    let hits = ok(url, "entities/search", json!({"collectionName": "bits", "annsField": "b", "data": [[37, 11]], "limit": 8, "consistencyLevel": "Strong"}))["data"].clone();
    let dists: Vec<Value> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["distance"].clone())
        .collect();
    assert!(
        dists.windows(2).all(|w| w[0].as_f64() <= w[1].as_f64()),
        "ascending: {dists:?}"
    );
    out.push(json!(dists));
    out.push(ok(url, "entities/search", json!({"collectionName": "bits", "annsField": "h", "data": [[2.0, 0.1]], "limit": 3, "consistencyLevel": "Strong"}))["data"].clone());
    out.push(ok(url, "entities/query", json!({"collectionName": "bits", "filter": "id in [7, 8]", "outputFields": ["b", "h"], "consistencyLevel": "Strong"}))["data"].clone());
    // BM25 full-text search over 3 shards: each shard weighs the query's terms by the
    // whole collection's statistics (summed by the proxy), so scores equal standalone's.
    // Documents are spread so that no shard's own statistics match the collection's.
    ok(
        url,
        "collections/create",
        json!({"collectionName": "kb", "shardsNum": 3, "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 200, "enable_analyzer": true, "analyzer_params": {"type": "english"}}},
            {"fieldName": "sparse", "dataType": "SparseFloatVector"},
            {"fieldName": "dense", "dataType": "FloatVector", "elementTypeParams": {"dim": 2}}],
            "functions": [{"name": "bm", "type": "BM25", "inputFieldNames": ["text"], "outputFieldNames": ["sparse"], "params": {}}]},
            "indexParams": [{"fieldName": "sparse", "metricType": "BM25", "indexType": "SPARSE_INVERTED_INDEX"},
                            {"fieldName": "dense", "metricType": "L2", "indexType": "FLAT"}]}),
    );
    let words = [
        "fox", "dog", "magpie", "vector", "search", "river", "stone", "light",
    ];
    let krows: Vec<Value> = (0..60u64)
        .map(|i| {
            let n = 1 + (i * 7 % 5) as usize;
            let text: Vec<&str> = (0..n)
                .map(|k| words[((i * 3 + k as u64 * (i % 4 + 1)) % 8) as usize])
                .collect();
            json!({"id": i, "text": text.join(" "), "dense": [i as f32, 1.0]})
        })
        .collect();
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "kb", "data": krows}),
    );
    let refused = call(
        url,
        "entities/insert",
        &json!({"collectionName": "kb", "data": [{"id": 99, "text": "x", "sparse": {"1": 0.5}, "dense": [0.0, 0.0]}]}),
    )
    .expect_err("a BM25 output given by the client is refused");
    out.push(json!({"bm25 output given": refused}));
    for q in ["fox magpie", "stone river light", "searching vectors"] {
        let s = ok(
            url,
            "entities/search",
            json!({"collectionName": "kb", "annsField": "sparse", "data": [q], "limit": 8, "outputFields": ["text"], "consistencyLevel": "Strong"}),
        );
        assert!(!s["data"].as_array().unwrap().is_empty(), "{q}: {s}");
        out.push(json!({"data": s["data"], "topks": s["topks"]}));
    }
    let s = ok(
        url,
        "entities/hybrid_search",
        json!({"collectionName": "kb", "search": [
            {"annsField": "sparse", "data": ["dog light"], "limit": 10},
            {"annsField": "dense", "data": [[20.0, 1.0]], "limit": 10}],
            "rerank": {"strategy": "weighted", "params": {"weights": [0.6, 0.4]}}, "limit": 6, "consistencyLevel": "Strong"}),
    );
    out.push(json!({"data": s["data"], "topks": s["topks"]}));
    out.extend(namespace_workload(url));
    if embed {
        out.extend(embedding_workload(url));
    }
    // Distances are rounded so that float summation order cannot differ.
    for v in out.iter_mut() {
        round(v);
    }
    out
}

/// Databases and aliases, refusals included: every answer (and error message) must be
/// standalone's. Collections in database `prod` have 2 shards.
fn namespace_workload(url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut both = |ep: &str, body: Value| {
        let r = match call(url, ep, &body) {
            // Ids, times and shard counts differ by design.
            Ok(v) if ep == "collections/describe" => {
                let d = &v["data"];
                json!({"collectionName": d["collectionName"], "dbName": d["dbName"], "aliases": d["aliases"], "fields": d["fields"]})
            }
            Ok(v) => json!({"data": v["data"], "topks": v.get("topks")}),
            Err(e) => json!({"error": e}),
        };
        out.push(json!({"ep": ep, "body": body, "got": r}));
        r
    };
    let coll = |name: &str, base: u64| {
        let rows: Vec<Value> = (0..20u64)
            .map(|i| json!({"id": i, "vector": vector(base + i)}))
            .collect();
        (
            json!({"dbName": "prod", "collectionName": name, "dimension": 8, "shardsNum": 2, "metricType": "L2", "consistencyLevel": "Strong"}),
            json!({"dbName": "prod", "collectionName": name, "data": rows}),
        )
    };
    both("databases/create", json!({"dbName": "prod"}));
    both("databases/create", json!({"dbName": "prod"}));
    both("databases/create", json!({"dbName": "bad-name"}));
    both("databases/list", json!({}));
    both("databases/describe", json!({"dbName": "nosuch"}));
    let (c1, r1) = coll("items", 1000);
    let (c2, r2) = coll("items2", 5000);
    both("collections/create", c1);
    both("entities/insert", r1);
    both("collections/create", c2);
    both("entities/insert", r2);
    both(
        "collections/create",
        json!({"dbName": "nosuch", "collectionName": "x", "dimension": 8}),
    );
    both("collections/list", json!({"dbName": "prod"}));
    both("collections/list", json!({}));
    // The same name in two databases is two collections.
    both("collections/has", json!({"collectionName": "items"}));
    both(
        "entities/query",
        json!({"dbName": "nosuch", "collectionName": "items", "filter": "id >= 0"}),
    );
    let search = |name: &str| json!({"dbName": "prod", "collectionName": name, "data": [vector(1003)], "limit": 3, "consistencyLevel": "Strong"});
    both("entities/search", search("items"));
    both(
        "aliases/create",
        json!({"dbName": "prod", "aliasName": "live", "collectionName": "items"}),
    );
    both(
        "aliases/create",
        json!({"dbName": "prod", "aliasName": "live", "collectionName": "items2"}),
    );
    both(
        "aliases/create",
        json!({"dbName": "prod", "aliasName": "items2", "collectionName": "items"}),
    );
    both(
        "aliases/create",
        json!({"dbName": "prod", "aliasName": "other", "collectionName": "live"}),
    );
    both(
        "aliases/alter",
        json!({"dbName": "prod", "aliasName": "nosuch", "collectionName": "items"}),
    );
    both(
        "collections/create",
        json!({"dbName": "prod", "collectionName": "live", "dimension": 8}),
    );
    both("entities/search", search("live"));
    both(
        "collections/describe",
        json!({"dbName": "prod", "collectionName": "live"}),
    );
    both(
        "aliases/describe",
        json!({"dbName": "prod", "aliasName": "live"}),
    );
    both("aliases/list", json!({"dbName": "prod"}));
    both(
        "collections/has",
        json!({"dbName": "prod", "collectionName": "live"}),
    );
    // The blue/green switch: the alias moves, searches through it follow at once.
    both(
        "aliases/alter",
        json!({"dbName": "prod", "aliasName": "live", "collectionName": "items2"}),
    );
    both("entities/search", search("live"));
    both(
        "entities/insert",
        json!({"dbName": "prod", "collectionName": "live", "data": [{"id": 100, "vector": vector(1003)}]}),
    );
    both("entities/search", search("items2"));
    both(
        "collections/drop",
        json!({"dbName": "prod", "collectionName": "items2"}),
    );
    both(
        "collections/drop",
        json!({"dbName": "prod", "collectionName": "live"}),
    );
    both(
        "collections/rename",
        json!({"dbName": "prod", "collectionName": "items2", "newCollectionName": "live"}),
    );
    both(
        "collections/rename",
        json!({"dbName": "prod", "collectionName": "items2", "newCollectionName": "items3"}),
    );
    both(
        "aliases/describe",
        json!({"dbName": "prod", "aliasName": "live"}),
    );
    both("entities/search", search("live"));
    both("databases/drop", json!({"dbName": "prod"}));
    both(
        "aliases/drop",
        json!({"dbName": "prod", "aliasName": "live"}),
    );
    both(
        "aliases/drop",
        json!({"dbName": "prod", "aliasName": "live"}),
    );
    both("aliases/list", json!({"dbName": "prod"}));
    both(
        "collections/drop",
        json!({"dbName": "prod", "collectionName": "items3"}),
    );
    both(
        "collections/drop",
        json!({"dbName": "prod", "collectionName": "items"}),
    );
    both("databases/drop", json!({"dbName": "prod"}));
    both("databases/list", json!({}));
    both("databases/drop", json!({"dbName": "default"}));
    out
}

/// A TextEmbedding function (all-MiniLM-L6-v2) over 2 shards. In cluster mode only the
/// proxy has the model (the nodes are started without one): it embeds each inserted row
/// and each search text once and sends vectors, so a node that ran the function itself
/// would reject the records and lose the rows.
fn embedding_workload(url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    ok(
        url,
        "collections/create",
        json!({"collectionName": "notes", "shardsNum": 2, "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "text", "dataType": "VarChar", "elementTypeParams": {"max_length": 200}},
            {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": 384}}],
            "functions": [{"name": "minilm", "type": "TextEmbedding", "inputFieldNames": ["text"], "outputFieldNames": ["v"], "params": {"model": "all-minilm-l6-v2"}}]},
            "indexParams": [{"fieldName": "v", "metricType": "COSINE", "indexType": "FLAT"}]}),
    );
    let texts = [
        "a magpie steals a shiny ring from the table",
        "the river floods the valley after heavy rain",
        "stock markets fell sharply on tuesday",
        "a recipe for bread with flour, water and salt",
        "the goalkeeper saved a penalty in the final minute",
        "crows and jays are clever birds that hide food",
        "a new vaccine was approved by the health agency",
        "the train to the coast leaves at nine",
        "how to repair a flat bicycle tyre",
        "the telescope photographed a distant galaxy",
    ];
    let rows: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "text": t}))
        .collect();
    let r = ok(
        url,
        "entities/insert",
        json!({"collectionName": "notes", "data": rows}),
    );
    out.push(r["data"]["insertCount"].clone());
    let refused = call(
        url,
        "entities/insert",
        &json!({"collectionName": "notes", "data": [{"id": 50, "text": "x", "v": vec![0.1f32; 384]}]}),
    )
    .expect_err("an embedding given by the client is refused");
    out.push(json!({"embedding given": refused}));
    for q in [
        "birds that take things",
        "weather and water",
        "space and stars",
    ] {
        let s = ok(
            url,
            "entities/search",
            json!({"collectionName": "notes", "data": [q], "limit": 3, "outputFields": ["text"], "consistencyLevel": "Strong"}),
        );
        assert_eq!(s["topks"], json!([3]), "{q}: {s}");
        out.push(json!({"data": s["data"], "topks": s["topks"]}));
    }
    let s = ok(
        url,
        "entities/search",
        json!({"collectionName": "notes", "data": ["a magpie stole a ring"], "limit": 1, "consistencyLevel": "Strong"}),
    );
    assert_eq!(s["data"][0]["id"], 0, "{s}");
    let s = ok(
        url,
        "entities/hybrid_search",
        json!({"collectionName": "notes", "search": [
            {"annsField": "v", "data": ["cooking"], "limit": 5},
            {"annsField": "v", "data": ["sport"], "limit": 5}],
            "rerank": {"strategy": "rrf", "params": {"k": 60}}, "limit": 4, "consistencyLevel": "Strong"}),
    );
    out.push(json!({"data": s["data"], "topks": s["topks"]}));
    let c = ok(
        url,
        "entities/query",
        json!({"collectionName": "notes", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}),
    );
    assert_eq!(c["data"][0]["count(*)"], 10, "{c}");
    // An ImageEmbedding function (EfficientNet-Lite0): rows carry images as data: URIs
    // (a proxy has no image roots), searches carry uploaded bytes.
    let Some(dir) = magpie_testkit::shared("data/imagenet-sample-256") else {
        return out;
    };
    use base64::Engine as _;
    let b64 = |f: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(f)).unwrap())
    };
    ok(
        url,
        "collections/create",
        json!({"collectionName": "pics", "shardsNum": 2, "schema": {"fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": true},
            {"fieldName": "file", "dataType": "VarChar", "elementTypeParams": {"max_length": 8192}},
            {"fieldName": "img", "dataType": "FloatVector", "elementTypeParams": {"dim": 1280}}],
            "functions": [{"name": "lite0", "type": "ImageEmbedding", "inputFieldNames": ["file"], "outputFieldNames": ["img"], "params": {"model": "efficientnet-lite0"}}]},
            "indexParams": [{"fieldName": "img", "metricType": "COSINE", "indexType": "FLAT"}]}),
    );
    let files = [
        "n01871265_tusker.jpg",
        "n03584829_iron.jpg",
        "n04023962_punching_bag.jpg",
        "n07716906_spaghetti_squash.jpg",
    ];
    let rows: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"id": i, "file": format!("data:image/jpeg;base64,{}", b64(f))}))
        .collect();
    ok(
        url,
        "entities/insert",
        json!({"collectionName": "pics", "data": rows}),
    );
    let s = ok(
        url,
        "entities/search",
        json!({"collectionName": "pics", "data": [{"image": b64(files[1])}], "limit": 4, "consistencyLevel": "Strong"}),
    );
    assert_eq!(s["data"][0]["id"], 1, "the iron finds itself first: {s}");
    out.push(json!({"data": s["data"], "topks": s["topks"]}));
    out
}

fn round(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(round),
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "distance" {
                    *x = json!((x.as_f64().unwrap_or(0.0) * 1e4).round() / 1e4);
                } else {
                    round(x);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn a_cluster_answers_as_standalone_does() {
    let Some(d) = deps() else { return };
    // Only the proxy (and standalone) get the models: nodes run no embedding function.
    let models = magpie_testkit::models_dir();
    let embed =
        match magpie_embed::models::ModelStore::new(models.clone()).require("all-minilm-l6-v2") {
            Ok(_) => true,
            Err(e) => {
                magpie_testkit::skip("models", format!("the embedding-function part: {e}"));
                false
            }
        };
    let models_arg = models.to_string_lossy().to_string();
    let proxy = d.node_with("p1", "proxy,coordinator", &["--models-dir", &models_arg]);
    let _data = [d.node("d1", "data"), d.node("d2", "data")];
    let query = [
        d.node("q1", "query"),
        d.node("q2", "query"),
        d.node("q3", "query"),
    ];
    let got = workload(&proxy.url, embed);
    // The same on a standalone server.
    let standalone = d.standalone(&["--models-dir", &models_arg]);
    let want = workload(&standalone.url, embed);
    drop(standalone);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g, w,
            "answer {i} differs between the cluster and standalone"
        );
    }
    assert_eq!(got.len(), want.len());
    // Shards are spread: every query node serves one of the 3 shards.
    for q in &query {
        wait_for("query nodes to be ready", || ready(q));
        let st: Value = ureq::get(&format!("{}/node/status", q.url))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        let shards: Vec<&Value> = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["collection"] == "docs")
            .collect();
        assert_eq!(shards.len(), 1, "{}: {st}", q.name);
        assert_eq!(shards[0]["mode"], "replica");
    }
    let m = ureq::get(&format!("{}/metrics", query[0].url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        m.contains("magpie_node_shard_rows{collection=\"docs\""),
        "{m}"
    );
    // Bad input is refused by the proxy before anything is logged.
    let e = call(
        &proxy.url,
        "entities/insert",
        &json!({"collectionName": "docs", "data": [{"id": 1, "v": [1.0]}]}),
    )
    .unwrap_err();
    assert!(e.starts_with("400") && e.contains("dim"), "{e}");
    let e = call(
        &proxy.url,
        "entities/query",
        &json!({"collectionName": "docs", "filter": "nope >"}),
    )
    .unwrap_err();
    assert!(e.starts_with("400"), "{e}");
    let e = call(
        &proxy.url,
        "entities/search",
        &json!({"collectionName": "nosuch", "data": [vector(1)]}),
    )
    .unwrap_err();
    assert!(e.starts_with("404"), "{e}");
    let e = call(
        &proxy.url,
        "collections/create",
        &json!({"collectionName": "x", "dimension": 4, "shardsNum": 1000}),
    )
    .unwrap_err();
    assert!(e.starts_with("400") && e.contains("shardsNum"), "{e}");
    // gRPC reaches the bridge (pymilvus's runs are in
    // `pymilvus_through_a_proxy_gives_standalones_answers`): an RPC it does not bridge
    // is UNIMPLEMENTED naming the RPC, not a bare 404.
    let r = ureq::post(&format!(
        "{}/milvus.proto.milvus.MilvusService/ListResourceGroups",
        proxy.url
    ))
    .set("content-type", "application/grpc")
    .send_bytes(&[0, 0, 0, 0, 0])
    .expect("a gRPC error travels in headers of a 200");
    assert_eq!(r.header("grpc-status"), Some("12"));
    let m = r.header("grpc-message").unwrap_or_default();
    assert!(m.contains("ListResourceGroups"), "{m}");
    // What cluster mode does not serve is a JSON 404 naming it.
    let r = ureq::post(&format!("{}/v2/admin/backups/list", proxy.url)).send_json(json!({}));
    match r {
        Err(ureq::Error::Status(404, resp)) => {
            let v: Value = resp.into_json().unwrap();
            assert!(
                v["message"].as_str().unwrap().contains("cluster mode"),
                "{v}"
            );
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    // Dropping removes it everywhere; the name can be used again.
    ok(
        &proxy.url,
        "collections/drop",
        json!({"collectionName": "docs"}),
    );
    let has = ok(
        &proxy.url,
        "collections/has",
        json!({"collectionName": "docs"}),
    );
    assert_eq!(has["data"]["has"], false);
    ok(
        &proxy.url,
        "collections/create",
        json!({"collectionName": "docs", "dimension": 8, "shardsNum": 2}),
    );
    let c = ok(
        &proxy.url,
        "entities/query",
        json!({"collectionName": "docs", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}),
    );
    assert_eq!(
        c["data"][0]["count(*)"], 0,
        "a dropped collection's rows came back"
    );
}

#[test]
fn nodes_die_and_nothing_acknowledged_is_lost() {
    let Some(d) = deps() else { return };
    // Two proxies that are both coordinator candidates.
    let mut p1 = d.node("p1", "proxy,coordinator");
    let p2 = d.node("p2", "proxy,coordinator");
    let mut d1 = d.node("d1", "data");
    let _d2 = d.node("d2", "data");
    let mut q1 = d.node("q1", "query");
    let _q2 = d.node("q2", "query");
    let url = p2.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 2, "metricType": "L2"}),
    );
    ok(
        &url,
        "collections/load",
        json!({"collectionName": "c", "replicaNumber": 2}),
    );
    ok(
        &url,
        "entities/insert",
        json!({"collectionName": "c", "data": (0..200u64).map(|i| json!({"id": i, "vector": vector(i)})).collect::<Vec<_>>()}),
    );
    wait_for("replicas on both query nodes", || {
        [&q1, &_q2].iter().all(|q| {
            ureq::get(&format!("{}/node/status", q.url))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|s| s["shards"].as_array().is_some_and(|a| a.len() == 2))
        })
    });
    // Load: searches and inserts from two threads while nodes are killed.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(AtomicU64::new(200));
    let searcher = {
        let (stop, failed, url) = (stop.clone(), failed.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let b = json!({"collectionName": "c", "data": [vector(n)], "limit": 5, "consistencyLevel": "Eventually"});
                match call(&url, "entities/search", &b) {
                    Ok(v) if v["data"].as_array().is_some_and(|a| a.len() == 5) => {}
                    Ok(v) => failed.lock().unwrap().push(format!("short answer {v}")),
                    Err(e) => failed.lock().unwrap().push(e),
                }
                n += 1;
            }
            n
        })
    };
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let start = acked.load(Ordering::SeqCst);
                let b = json!({"collectionName": "c", "data": (start..start + 20).map(|i| json!({"id": i, "vector": vector(i)})).collect::<Vec<_>>()});
                if call(&url, "entities/insert", &b).is_ok() {
                    acked.fetch_add(20, Ordering::SeqCst);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // kill -9 a query node: searches go on on the other replica.
    q1.child.kill().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // kill -9 the coordinator if p1 leads (p2 takes over), and a data node: its shards move.
    p1.child.kill().unwrap();
    d1.child.kill().unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::SeqCst);
    let searches = searcher.join().unwrap();
    writer.join().unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(searches > 10, "only {searches} searches ran");
    assert!(
        failed.is_empty(),
        "{} of {searches} searches failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let total = acked.load(Ordering::SeqCst);
    assert!(total > 200, "no insert was acknowledged during the faults");
    // Every acknowledged row is there (the surviving data node replayed the dead one's log).
    let count = || {
        call(&url, "entities/query", &json!({"collectionName": "c", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}))
            .ok()
            .and_then(|v| v["data"][0]["count(*)"].as_u64())
    };
    wait_for("every acknowledged row to be counted", || {
        count() == Some(total)
    });
    let m = ureq::get(&format!("{}/metrics", p2.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        m.contains("magpie_cluster_coordinator_leader 1"),
        "p2 did not take over: {m}"
    );
    // Restart everything: the same answers.
    let probe = json!({"collectionName": "c", "data": [vector(5)], "limit": 10, "consistencyLevel": "Strong"});
    let before = ok(&url, "entities/search", probe.clone())["data"].clone();
    drop((p1, p2, d1, _d2, q1, _q2));
    let p = d.node("p3", "proxy,coordinator");
    let _n = [d.node("d3", "data"), d.node("q3", "query")];
    wait_for("the restarted cluster to answer", || {
        call(&p.url, "entities/search", &probe).is_ok()
    });
    let after = ok(&p.url, "entities/search", probe)["data"].clone();
    assert_eq!(before, after);
    let c = ok(
        &p.url,
        "entities/query",
        json!({"collectionName": "c", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}),
    );
    assert_eq!(c["data"][0]["count(*)"], total);
}

fn count(url: &str, coll: &str) -> Option<u64> {
    call(url, "entities/query", &json!({"collectionName": coll, "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Strong"}))
        .ok()
        .and_then(|v| v["data"][0]["count(*)"].as_u64())
}

fn insert(url: &str, ids: std::ops::Range<u64>) -> Result<Value, String> {
    call(
        url,
        "entities/insert",
        &json!({"collectionName": "c", "data": ids.map(|i| json!({"id": i, "vector": vector(i)})).collect::<Vec<_>>()}),
    )
}

fn status_of(url: &str, path: &str) -> u16 {
    match ureq::get(&format!("{url}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(_) => 0,
    }
}

#[test]
fn etcd_the_broker_and_s3_go_away_and_come_back() {
    let Some(mut d) = deps() else { return };
    let p = d.node("p1", "proxy,coordinator");
    let _n = [d.node("d1", "data"), d.node("q1", "query")];
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 2, "metricType": "L2"}),
    );
    insert(&url, 0..100).unwrap();
    wait_for("100 rows", || count(&url, "c") == Some(100));
    let search = json!({"collectionName": "c", "data": [vector(1)], "limit": 3, "consistencyLevel": "Eventually"});

    // The broker goes away: writes are refused at once (not lost, not hung), the proxy is
    // not ready, reads of what was applied go on.
    d.nats.stop();
    let t0 = Instant::now();
    let e = insert(&url, 100..110).unwrap_err();
    assert!(e.starts_with("503") && e.contains("log broker"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    wait_for("the proxy to report not ready", || {
        status_of(&url, "/readyz") == 503
    });
    ok(&url, "entities/search", search.clone());
    d.nats.start();
    wait_for("writes to be accepted again", || {
        insert(&url, 200..210).is_ok()
    });
    wait_for("the proxy to be ready", || {
        status_of(&url, "/readyz") == 200
    });
    // Whatever the failed insert did, the acknowledged rows are all there.
    wait_for("the rows after the broker came back", || {
        count(&url, "c").is_some_and(|n| n == 110 || n == 120)
    });
    let before_s3 = count(&url, "c").unwrap();
    assert_eq!(
        ok(
            &url,
            "entities/get",
            json!({"collectionName": "c", "id": [205], "consistencyLevel": "Strong"})
        )["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // S3 goes away: writes go on (they need only the log); checkpoints fail and are
    // retried; when S3 is back the data node catches up; a restarted data node finds it all.
    d.s3_faults.faults.outage.store(true, Ordering::SeqCst);
    insert(&url, 300..350).unwrap();
    wait_for("the rows written while S3 was away", || {
        count(&url, "c") == Some(before_s3 + 50)
    });
    std::thread::sleep(Duration::from_millis(1500)); // a few failed checkpoints
    d.s3_faults.faults.outage.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500)); // a checkpoint that succeeds
    let [d1, q1] = _n;
    drop((d1, q1));
    let _n2 = [d.node("d2", "data"), d.node("q2", "query")];
    wait_for("a new data node to serve every row", || {
        count(&url, "c") == Some(before_s3 + 50)
    });

    // etcd goes away for longer than the lease TTL: nodes stop their shards and say so;
    // writes go on into the log with the proxy's cached schema; DDL is refused; when etcd
    // is back the nodes register again and serve every acknowledged row.
    let total = before_s3 + 50;
    d.etcd.stop();
    insert(&url, 400..420).unwrap();
    let e = call(
        &url,
        "partitions/create",
        &json!({"collectionName": "c", "partitionName": "p"}),
    )
    .unwrap_err();
    assert!(e.starts_with("503") && e.contains("etcd"), "{e}");
    wait_for("a node to report its lease lost", || {
        status_of(&_n2[0].url, "/readyz") == 503
    });
    d.etcd.start();
    wait_for("the nodes to be ready again", || {
        _n2.iter().all(|n| status_of(&n.url, "/readyz") == 200)
    });
    wait_for("every acknowledged row after etcd came back", || {
        count(&url, "c") == Some(total + 20)
    });
    ok(
        &url,
        "partitions/create",
        json!({"collectionName": "c", "partitionName": "p"}),
    );
}

#[test]
fn query_nodes_serve_the_data_nodes_segments_and_indexes() {
    let Some(d) = deps() else { return };
    let fast = ["--replica-refresh-secs", "0.5", "--index-min-rows", "100"];
    let p = d.node_with("p1", "proxy,coordinator", &fast);
    let _d1 = d.node_with("d1", "data", &fast);
    let q1 = d.node_with("q1", "query", &fast);
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 1, "metricType": "L2"}),
    );
    insert(&url, 0..1500).unwrap();
    let probe = json!({"collectionName": "c", "data": [vector(77)], "limit": 5, "consistencyLevel": "Strong"});
    let exact = ok(&url, "entities/search", probe.clone());
    assert_eq!(exact["data"][0]["id"], 77);
    ok(&url, "collections/flush", json!({"collectionName": "c"}));
    // The replica builds no index of its own (it is configured not to): an indexed
    // segment in its answer is the data node's, loaded from S3 after a reopen.
    // Both at once: while the replica swaps its copy the proxy may answer from the data
    // node (which has the index too), so an indexed answer alone does not show the
    // replica reopened.
    let replica_reopened = || {
        ureq::get(&format!("{}/node/status", q1.url))
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok())
            .is_some_and(|st| st["shards"][0]["openedAtCheckpoint"].as_u64() > Some(0))
    };
    wait_for(
        "the replica to reopen at a checkpoint and search an index built by the data node",
        || {
            replica_reopened()
                && call(&url, "entities/search", &probe)
                    .is_ok_and(|v| v["searchInfo"]["indexedSegments"].as_u64() >= Some(1))
        },
    );
    let after = ok(&url, "entities/search", probe);
    assert_eq!(
        after["data"], exact["data"],
        "the reopened replica answers differently"
    );
    // Writes after the reopen are there too.
    insert(&url, 2000..2010).unwrap();
    assert_eq!(count(&url, "c"), Some(1510));
    // Every copy a reopen replaced is dropped once its requests are done: the node ends
    // up with one engine for its one shard, not one per reopen.
    let engines = || {
        ureq::get(&format!("{}/node/status", q1.url))
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok())
            .and_then(|st| st["engines"].as_u64())
    };
    wait_for("the replaced copies' engines to be dropped", || {
        engines() == Some(1)
    });
}

fn replica_shards(p: &Proc) -> usize {
    ureq::get(&format!("{}/node/status", p.url))
        .call()
        .ok()
        .and_then(|r| r.into_json::<Value>().ok())
        .and_then(|s| s["shards"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

#[test]
fn a_joining_query_node_takes_its_share() {
    let Some(d) = deps() else { return };
    let p = d.node("p1", "proxy,coordinator");
    let _d1 = d.node("d1", "data");
    let q: Vec<Proc> = (1..=3).map(|i| d.node(&format!("q{i}"), "query")).collect();
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 8, "metricType": "L2"}),
    );
    insert(&url, 0..400).unwrap();
    wait_for("8 shards over 3 query nodes (3/3/2)", || {
        let mut n: Vec<usize> = q.iter().map(replica_shards).collect();
        n.sort();
        n == vec![2, 3, 3]
    });
    let probe = json!({"collectionName": "c", "data": [vector(9)], "limit": 5, "consistencyLevel": "Strong"});
    let before = ok(&url, "entities/search", probe.clone())["data"].clone();
    let q4 = d.node("q4", "query");
    wait_for("the 4th node to take two shards (2/2/2/2)", || {
        q.iter().chain([&q4]).all(|n| replica_shards(n) == 2)
    });
    assert_eq!(ok(&url, "entities/search", probe)["data"], before);
    assert_eq!(count(&url, "c"), Some(400));
}

/// A copy that opens from a catalog newer than the log position it replays from sees
/// DDL records whose effect it already has: a drop finds its index or partition gone.
/// That is a record already applied, not a rejected write. (The REST suite caught the
/// drop case in CI by timing; here the data node never checkpoints, so the query node
/// that joins afterwards replays every record over the newer catalog.)
#[test]
fn ddl_replayed_over_a_newer_catalog_is_applied_not_rejected() {
    let Some(d) = deps() else { return };
    let p = d.node("p1", "proxy,coordinator");
    let d1 = d.node_with("d1", "data", &["--checkpoint-secs", "3600"]);
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "metricType": "L2"}),
    );
    let index = ok(&url, "indexes/list", json!({"collectionName": "c"}))["data"][0]
        .as_str()
        .expect("quick setup's index")
        .to_string();
    ok(
        &url,
        "partitions/create",
        json!({"collectionName": "c", "partitionName": "p"}),
    );
    ok(
        &url,
        "indexes/drop",
        json!({"collectionName": "c", "indexName": index}),
    );
    ok(
        &url,
        "partitions/drop",
        json!({"collectionName": "c", "partitionName": "p"}),
    );
    insert(&url, 0..50).unwrap();
    let shard = |n: &Proc| shard_status(n).unwrap_or(Value::Null);
    let last = 4;
    wait_for("the data node to apply the 4 records", || {
        shard(&d1)["applied"].as_u64() >= Some(last)
    });
    assert_eq!(shard(&d1)["checkpoint"].as_u64().unwrap_or(0), 0);
    let q1 = d.node("q1", "query");
    wait_for(
        "the query node to open the shard and apply the records",
        || shard(&q1)["applied"].as_u64() >= Some(last),
    );
    // It opened before every record, so it replayed all of them.
    assert_eq!(
        shard(&q1)["openedAtCheckpoint"].as_u64().unwrap_or(0),
        0,
        "{}",
        shard(&q1)
    );
    assert_eq!(count(&url, "c"), Some(50));
    let parts = ok(&url, "partitions/list", json!({"collectionName": "c"}));
    assert_eq!(parts["data"], json!(["_default"]), "{parts}");
    for n in ["d1", "q1"] {
        let log = d.log(n);
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("log record rejected"))
            .collect();
        assert!(bad.is_empty(), "{n}:\n{}", bad.join("\n"));
    }
}

/// First and last sequence of every stream, from NATS's monitoring endpoint.
fn streams(d: &Deps) -> Vec<(String, u64, u64)> {
    let v: Value = ureq::get(&format!("{}/jsz?streams=true", d.nats.http))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let mut out = Vec::new();
    for acc in v["account_details"].as_array().into_iter().flatten() {
        for st in acc["stream_detail"].as_array().into_iter().flatten() {
            out.push((
                st["name"].as_str().unwrap_or("").to_string(),
                st["state"]["first_seq"].as_u64().unwrap_or(0),
                st["state"]["last_seq"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

#[test]
fn the_log_is_trimmed_behind_checkpoints_and_late_replicas_reopen() {
    let Some(d) = deps() else { return };
    let fast = ["--replica-refresh-secs", "0.5", "--log-retention-secs", "0"];
    let p = d.node_with("p1", "proxy,coordinator", &fast);
    let _d1 = d.node_with("d1", "data", &fast);
    let mut q1 = d.node_with("q1", "query", &fast);
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 1, "metricType": "L2"}),
    );
    for b in 0..10u64 {
        insert(&url, b * 50..(b + 1) * 50).unwrap();
    }
    ok(
        &url,
        "entities/delete",
        json!({"collectionName": "c", "ids": [3, 4]}),
    );
    wait_for("the log to be trimmed behind a checkpoint", || {
        streams(&d)
            .iter()
            .any(|(_, first, last)| *last >= 11 && *first > 1)
    });
    // A query node that joins now cannot replay from the start: it opens the data
    // node's flushed segments and the rest of the log.
    ok(
        &url,
        "collections/load",
        json!({"collectionName": "c", "replicaNumber": 2}),
    );
    let q2 = d.node_with("q2", "query", &fast);
    wait_for("q2 to serve the shard", || {
        replica_shards(&q2) == 1 && ready(&q2)
    });
    q1.child.kill().unwrap();
    insert(&url, 1000..1010).unwrap();
    wait_for("every row through q2", || count(&url, "c") == Some(508));
    let got = ok(
        &url,
        "entities/get",
        json!({"collectionName": "c", "id": [3, 5, 1009], "consistencyLevel": "Strong"}),
    );
    let ids: Vec<i64> = got["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![5, 1009]);
}

#[test]
fn a_joining_data_node_takes_shards_over_without_losing_writes() {
    let Some(d) = deps() else { return };
    let p = d.node("p1", "proxy,coordinator");
    let d1 = d.node("d1", "data");
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 4, "metricType": "L2"}),
    );
    insert(&url, 0..100).unwrap();
    wait_for("d1 to hold the 4 shards", || replica_shards(&d1) == 4);
    // Inserts go on while two shards move to d2 (d1 flushes, checkpoints and releases
    // each before d2 opens it).
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(100));
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let start = acked.load(Ordering::SeqCst);
                if insert(&url, start..start + 10).is_ok() {
                    acked.fetch_add(10, Ordering::SeqCst);
                }
            }
        })
    };
    let d2 = d.node("d2", "data");
    wait_for("d2 to take two shards", || {
        replica_shards(&d2) == 2 && replica_shards(&d1) == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let total = acked.load(Ordering::SeqCst);
    assert!(total > 100);
    wait_for("every acknowledged row", || count(&url, "c") == Some(total));
    let st: Value = ureq::get(&format!("{}/node/status", d2.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert!(
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["mode"] == "primary"),
        "{st}"
    );
}

fn signal(p: &Proc, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {}", p.name);
}

fn shard_status(p: &Proc) -> Option<Value> {
    let st: Value = ureq::get(&format!("{}/node/status", p.url))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    st["shards"].as_array()?.first().cloned()
}

/// A data node frozen (SIGSTOP) for longer than its lease loses its shard to another;
/// when it resumes it still holds rows it never flushed and flushes them on its way
/// out. S3 refuses that write (the new owner claimed the shard's manifest), so nothing
/// the new owner wrote is replaced: a third data node, opening the shard from S3 and
/// the log, finds every acknowledged row.
#[test]
fn a_frozen_data_node_that_resumes_cannot_overwrite_its_successor() {
    let Some(d) = deps() else { return };
    let p = d.node("p1", "proxy,coordinator");
    // d1 checkpoints rarely: it holds its rows unflushed when it is frozen.
    let d1 = d.node_with("d1", "data", &["--checkpoint-secs", "600"]);
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 1, "metricType": "L2"}),
    );
    insert(&url, 0..100).unwrap();
    wait_for("d1 to apply 100 rows", || count(&url, "c") == Some(100));
    assert_eq!(shard_status(&d1).unwrap()["checkpoint"], 0);
    signal(&d1, "-STOP");
    // The log is trimmed behind d2's checkpoints: a checkpoint moved back by d1 would
    // point into a log that no longer holds the rows after it.
    let trim = ["--log-retention-secs", "0"];
    let d2 = d.node_with("d2", "data", &trim);
    wait_for("d2 to own the shard", || {
        shard_status(&d2).is_some_and(|s| s["mode"] == "primary")
    });
    // Two inserts, each checkpointed: the log keeps only what follows d2's last
    // checkpoint, so the first of them is gone from it once d2 checkpointed the second.
    for (n, rows) in [(150, 100..150), (200, 150..200)] {
        insert(&url, rows).unwrap();
        wait_for("d2 to checkpoint the insert", || {
            count(&url, "c") == Some(n)
                && shard_status(&d2).is_some_and(|s| s["checkpoint"] == s["applied"])
        });
    }
    signal(&d1, "-CONT");
    wait_for("d1's late flush to be refused", || {
        d.log("d1").contains("fenced")
    });
    assert!(
        d.log("d1").contains("by another writer (a newer owner)"),
        "{}",
        d.log("d1")
    );
    // The shard opened from S3 and the log on a third data node: every row.
    drop(d2);
    drop(d1);
    let d3 = d.node_with("d3", "data", &trim);
    wait_for("d3 to own the shard", || {
        shard_status(&d3).is_some_and(|s| s["mode"] == "primary")
    });
    wait_for("all 200 rows on d3", || count(&url, "c").is_some());
    assert_eq!(count(&url, "c"), Some(200));
    let ids = ok(
        &url,
        "entities/query",
        json!({"collectionName": "c", "filter": "id >= 0", "outputFields": ["id"], "limit": 1000, "consistencyLevel": "Strong"}),
    );
    let mut got: Vec<u64> = ids["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (0..200).collect::<Vec<u64>>());
}

/// Bounded reads see every write acknowledged longer ago than the staleness bound. With
/// a bound of 0 that is every acknowledged write: each read waits for the log's last
/// sequence, as Strong does. (Before, a cluster's Bounded read did not wait at all, and
/// a read right after an insert could miss it.)
#[test]
fn bounded_reads_see_writes_older_than_the_bound() {
    let Some(d) = deps() else { return };
    let p = d.node_with("p1", "proxy,coordinator", &["--bounded-staleness-ms", "0"]);
    let _d1 = d.node("d1", "data");
    let _q1 = d.node("q1", "query");
    let url = p.url.clone();
    ok(
        &url,
        "collections/create",
        json!({"collectionName": "c", "dimension": 8, "shardsNum": 2, "metricType": "L2"}),
    );
    wait_for("the collection to be served", || {
        count(&url, "c") == Some(0)
    });
    for i in 0..40u64 {
        insert(&url, i..i + 1).unwrap();
        let v = ok(
            &url,
            "entities/query",
            json!({"collectionName": "c", "filter": "", "outputFields": ["count(*)"], "consistencyLevel": "Bounded"}),
        );
        assert_eq!(v["data"][0]["count(*)"], json!(i + 1), "round {i}: {v}");
    }
}

/// Bulk import through a proxy: files under the storage's `import/` prefix, rows
/// written through the shards' logs, progress from the proxy; bad paths are 400s and a
/// bad file fails its job with the file's name.
#[test]
fn bulk_import_through_the_proxy() {
    use magpie_engine::storage::Storage;
    let Some(d) = deps() else { return };
    let opts = d.s3.options();
    let o: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bucket =
        magpie_objstore::ObjectStorage::open_s3_source(&format!("s3://{}", d.s3.bucket), &o)
            .unwrap();
    // A JSON group (rows 0..300) and a NumPy group (rows 1000..2000; 'v' is 8-d and
    // the other fields come as columns too).
    let json_rows = rows(0..300);
    bucket
        .put(
            "magpie/import/day1/rows.json",
            &serde_json::to_vec(&json_rows).unwrap(),
        )
        .unwrap();
    let n = 1000usize;
    let npy = |descr: &str, shape: &[usize], body: Vec<u8>| {
        let mut b = magpie_engine::import::npy::header(descr, shape);
        b.extend(body);
        b
    };
    let ids: Vec<i64> = (1000..1000 + n as i64).collect();
    let files = [
        (
            "id",
            npy(
                "<i8",
                &[n],
                ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ),
        ),
        (
            "v",
            npy(
                "<f4",
                &[n, 8],
                ids.iter()
                    .flat_map(|&i| vector(i as u64))
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        ),
        (
            "n",
            npy(
                "<i8",
                &[n],
                ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ),
        ),
        (
            "g",
            npy(
                "<i8",
                &[n],
                ids.iter().flat_map(|i| (i % 40).to_le_bytes()).collect(),
            ),
        ),
        (
            "color",
            // Fixed-width unicode: 8 UTF-32LE code units per element, zero-padded.
            npy(
                "<U8",
                &[n],
                ids.iter()
                    .flat_map(|&i| {
                        let c = ["red", "green", "blue"][(i % 3) as usize];
                        let mut u: Vec<u32> = c.chars().map(|ch| ch as u32).collect();
                        u.resize(8, 0);
                        u.into_iter().flat_map(|x| x.to_le_bytes())
                    })
                    .collect(),
            ),
        ),
    ];
    for (f, b) in &files {
        bucket.put(&format!("magpie/import/b1/{f}.npy"), b).unwrap();
    }
    // A file whose 200th row has a 3-d vector.
    let mut bad = rows(5000..5300);
    bad[199]["v"] = json!([1.0, 2.0, 3.0]);
    bucket
        .put(
            "magpie/import/bad/rows.json",
            &serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap();

    let p = d.node("p1", "proxy,coordinator");
    let _d1 = d.node("d1", "data");
    let url = p.url.clone();
    ok(&url, "collections/create", schema(2));
    let group =
        |fields: &[&str]| -> Vec<String> { fields.iter().map(|f| format!("b1/{f}.npy")).collect() };
    // Both groups in one job: the JSON file, then the NumPy files.
    let job = ok(
        &url,
        "jobs/import/create",
        json!({"collectionName": "docs", "files": [["day1/rows.json"], group(&["id", "v", "n", "g", "color"])]}),
    );
    let id = job["data"]["jobId"].as_str().unwrap().to_string();
    let progress =
        |id: &str| ok(&url, "jobs/import/get_progress", json!({"jobId": id}))["data"].clone();
    wait_for("the import to complete", || {
        progress(&id)["state"] == "Completed"
    });
    let pr = progress(&id);
    assert_eq!(
        (pr["importedRows"].as_u64(), pr["progress"].as_u64()),
        (Some(1300), Some(100)),
        "{pr}"
    );
    assert_eq!(pr["details"][0]["fileName"], "day1/rows.json", "{pr}");
    assert_eq!(pr["details"][1]["importedRows"], 1000, "{pr}");
    assert_eq!(count(&url, "docs"), Some(1300));
    // Vectors from the NumPy columns landed in their rows: each finds itself.
    for i in [1000u64, 1777] {
        let r = ok(
            &url,
            "entities/search",
            json!({"collectionName": "docs", "data": [vector(i)], "limit": 1, "consistencyLevel": "Strong", "outputFields": ["n", "color"]}),
        );
        let colors = ["red", "green", "blue"];
        assert_eq!(
            r["data"][0],
            json!({"id": i, "distance": 0.0, "n": i, "color": colors[(i % 3) as usize]}),
            "{r}"
        );
    }
    let got = ok(
        &url,
        "entities/query",
        json!({"collectionName": "docs", "filter": "id in [7, 299]", "outputFields": ["color", "extra"], "consistencyLevel": "Strong"}),
    );
    let mut got = got["data"].as_array().unwrap().clone();
    got.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        got,
        [
            json!({"id": 7, "color": "green", "extra": "e7"}),
            json!({"id": 299, "color": "blue", "extra": "e299"})
        ]
    );
    // A NumPy group without 'color' (which has no default): created, since its files
    // exist, then failed when read, naming the group and the field.
    let npy_id = ok(
        &url,
        "jobs/import/create",
        json!({"collectionName": "docs", "files": [group(&["id", "v", "n", "g"])]}),
    )["data"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the NumPy import to fail", || {
        progress(&npy_id)["state"] == "Failed"
    });
    let reason = progress(&npy_id)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("color"), "{reason}");

    // A bad row fails its job, naming the file and the row.
    let bad_id = ok(
        &url,
        "jobs/import/create",
        json!({"collectionName": "docs", "files": [["bad/rows.json"]]}),
    )["data"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the bad import to fail", || {
        progress(&bad_id)["state"] == "Failed"
    });
    let reason = progress(&bad_id)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("bad/rows.json"), "{reason}");
    assert!(reason.contains("dim"), "{reason}");
    // Both failed before a batch was logged (the bad row is in the first batch).
    assert_eq!(count(&url, "docs"), Some(1300));
    let listed = ok(&url, "jobs/import/list", json!({"collectionName": "docs"}));
    assert_eq!(
        listed["data"]["records"].as_array().unwrap().len(),
        3,
        "{listed}"
    );

    // Bad paths: refused when the job is created.
    for (files, says) in [
        (json!([["day9/rows.json"]]), "not found"),
        (json!([["../etc/passwd"]]), ".."),
        (json!("rows.json"), "file groups"),
    ] {
        let e = call(
            &url,
            "jobs/import/create",
            &json!({"collectionName": "docs", "files": files}),
        )
        .unwrap_err();
        assert!(e.starts_with("400") && e.contains(says), "{says}: {e}");
    }
    let e = call(&url, "jobs/import/get_progress", &json!({"jobId": "nope"})).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");

    // The same through pymilvus's gRPC calls (the ORM's utility.do_bulk_insert,
    // get_bulk_insert_state, list_bulk_insert_tasks), bridged to the calls above.
    let Some(py) = magpie_testkit::pymilvus::python() else {
        return;
    };
    bucket
        .put(
            "magpie/import/grpc/rows.json",
            &serde_json::to_vec(&rows(3000..3100)).unwrap(),
        )
        .unwrap();
    let script = r#"
import json, sys, time
from pymilvus import connections, utility, BulkInsertState
connections.connect(uri=sys.argv[1])
task = utility.do_bulk_insert(collection_name="docs", files=["grpc/rows.json"])
deadline = time.time() + 60
while True:
    st = utility.get_bulk_insert_state(task_id=task)
    if st.state in (BulkInsertState.ImportCompleted, BulkInsertState.ImportFailed) or time.time() > deadline:
        break
    time.sleep(0.05)
tasks = utility.list_bulk_insert_tasks(collection_name="docs")
try:
    utility.do_bulk_insert(collection_name="docs", files=["../etc/passwd"])
    refused = ""
except Exception as e:
    refused = str(e)
print(json.dumps({"state": st.state_name, "rows": st.row_count, "files": st.files,
                  "reason": st.failed_reason, "tasks": len(tasks), "refused": refused}))
"#;
    let out = Command::new(&py)
        .args(["-c", script, &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["state"], &v["rows"], &v["files"]),
        (&json!("Completed"), &json!(100), &json!("grpc/rows.json")),
        "{v}"
    );
    // The three jobs above and this one (the refused one was never created).
    assert_eq!(v["tasks"], 4, "{v}");
    assert!(v["refused"].as_str().unwrap().contains(".."), "{v}");
    assert_eq!(count(&url, "docs"), Some(1400));
}

/// pymilvus, unchanged, against a cluster: tests/pymilvus/suite.py (the MilvusClient
/// quickstart and the common operations, each step checked by the script) through a
/// proxy's gRPC port gives the same answers as through a standalone server's. The
/// script's collections get 2 shards here (`SUITE_SHARDS`), so searches and queries are
/// merged from both.
#[test]
fn pymilvus_through_a_proxy_gives_standalones_answers() {
    use magpie_testkit::pymilvus::{diff, python, suite_with};
    let Some(py) = python() else { return };
    let Some(d) = deps() else { return };
    let proxy = d.node("p1", "proxy,coordinator");
    let _data = [d.node("d1", "data"), d.node("d2", "data")];
    let _query = [d.node("q1", "query"), d.node("q2", "query")];
    wait_for("the proxy to be ready", || ready(&proxy));
    let env = [("SUITE_SHARDS", "2")];
    let got = suite_with(&py, &proxy.url, None, &env);
    let standalone = d.standalone(&[]);
    let want = suite_with(&py, &standalone.url, None, &env);
    let mut diffs = Vec::new();
    diff(&want, &got, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "the cluster and standalone disagree:\n{}",
        diffs.join("\n")
    );
    // The comparison covered real results, not two empty documents.
    assert_eq!(got["count"], 100);
    assert_eq!(got["search"][0].as_array().map(Vec::len), Some(5));
}

/// POSTs a body larger than the server's limit, by hand: the server answers 413 as
/// soon as the limit is passed and closes the connection, so a client that writes the
/// whole body first (ureq) gets a broken pipe instead of the answer. The body is
/// written on another thread while this one reads the reply.
fn oversized(url: &str, body: &[u8]) -> (axum::http::StatusCode, Value) {
    raw_post(url, body, None)
}

/// A POST written by hand (see [`oversized`]), with `host` in its Host header when given.
fn raw_post(url: &str, body: &[u8], host_header: Option<&str>) -> (axum::http::StatusCode, Value) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        host_header.unwrap_or(host),
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    let body = body.to_vec();
    let w = std::thread::spawn(move || {
        // The server may stop reading once it has refused the body.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if reply.is_empty() => panic!("POST {url}: no reply: {e}"),
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = w.join();
    let text = String::from_utf8_lossy(&reply);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("POST {url}: not an HTTP reply: {text:?}"));
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

/// A [`rest_suite::T`] that sends its requests over HTTP to `url`.
fn remote(url: &str, max_body: usize) -> rest_suite::T {
    let url = url.to_string();
    let send: rest_suite::Sender = Arc::new(move |method, path, body, auth| {
        let url = format!("{url}{path}");
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut req = ureq::request(method, &url).timeout(Duration::from_secs(120));
                if let Some(a) = auth {
                    req = req.set("authorization", &format!("Bearer {a}"));
                }
                if body.len() > max_body {
                    return oversized(&url, &body);
                }
                let r = if method == "GET" {
                    req.call()
                } else {
                    req.set("content-type", "application/json")
                        .send_bytes(&body)
                };
                let r = match r {
                    Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                    Err(e) => panic!("{method} {url}: {e}"),
                };
                let status = axum::http::StatusCode::from_u16(r.status()).unwrap();
                let text = r.into_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            })
            .await
            .unwrap()
        })
    });
    rest_suite::T::new(send, max_body, None)
}

/// The server crate's REST suite (`crates/server/tests/common/rest_suite.rs`, the
/// file `tests/api.rs` runs in process against standalone), unchanged, over HTTP
/// against a proxy with 2 data nodes and 3 query nodes. The suite asserts exact
/// answers, so each test passes only where the cluster answers as standalone does.
///
/// It runs twice: as written (one shard per collection, Milvus's default), then with
/// every collection on 2 shards, so that searches and queries merge both. The second
/// pass leaves out the three tests that assert one segment's layout (`segments[0]`
/// holds every row), which 2 shards split by design.
#[test]
fn the_rest_suite_passes_against_a_cluster() {
    let Some(d) = deps() else { return };
    // The suite's largest case needs 4 MiB bodies; its oversized case sends more.
    let max_body = 4 << 20;
    let proxy = d.node_with(
        "p1",
        "proxy,coordinator",
        &["--max-body-bytes", &max_body.to_string()],
    );
    let _data = [d.node("d1", "data"), d.node("d2", "data")];
    let _query = [
        d.node("q1", "query"),
        d.node("q2", "query"),
        d.node("q3", "query"),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Each test runs to its end (a failure is collected, not the end of the run), then
    // the cluster is emptied for the next.
    let mut failed = Vec::new();
    macro_rules! run {
        ($shards:expr; $($name:ident),* $(,)?) => {{
            let mut t = remote(&proxy.url, max_body);
            t.shards = $shards;
            let t = Arc::new(t);
            $(
                eprintln!("rest suite ({:?} shards): {}", $shards, stringify!($name));
                let t2 = t.clone();
                let task = rt.spawn(async move { rest_suite::$name(&t2).await });
                if let Err(e) = rt.block_on(task) {
                    failed.push(format!("{} ({:?} shards): {e}", stringify!($name), $shards));
                }
                rt.block_on(t.reset());
            )*
        }};
    }
    run!(None::<u32>;
        ann_index_over_rest,
        scalar_indexes_over_rest,
        json_path_indexes_over_rest,
    );
    for shards in [None, Some(2)] {
        run!(shards;
            every_endpoint,
            bad_inputs_get_clear_4xx_errors,
            databases_and_aliases_over_rest,
            partition_key_over_rest,
            sparse_vectors_and_hybrid_search_over_rest,
            bm25_full_text_search_over_rest,
            bm25_in_chinese_over_rest,
            decay_and_boost_rerankers_over_rest,
            half_precision_vectors_over_rest,
            binary_vectors_over_rest,
        );
    }
    // What the suite cannot send (its requests are always JSON): a cross-site form or
    // text/plain POST is refused as standalone refuses it, before anything is logged.
    let r = ureq::post(&format!("{}/v2/vectordb/collections/create", proxy.url))
        .set("content-type", "text/plain")
        .send_string(r#"{"collectionName": "csrf", "dimension": 4}"#);
    match r {
        Err(ureq::Error::Status(415, resp)) => {
            let v: Value = resp.into_json().unwrap();
            assert!(
                v["message"].as_str().unwrap().contains("application/json"),
                "{v}"
            );
        }
        other => panic!("expected a 415, got {other:?}"),
    }
    // Nor a page whose name was rebound to this address (DNS rebinding): its Host is
    // refused on every route of a node listening on loopback, as on standalone.
    for path in [
        "/v2/vectordb/collections/create",
        "/shard/1/0/v2/vectordb/entities/query",
    ] {
        let (st, v) = raw_post(
            &format!("{}{path}", proxy.url),
            br#"{"collectionName": "csrf", "dimension": 4}"#,
            Some("evil.example:19530"),
        );
        assert_eq!(st, axum::http::StatusCode::FORBIDDEN, "{path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("evil.example"),
            "{v}"
        );
    }
    let has = ok(
        &proxy.url,
        "collections/has",
        json!({"collectionName": "csrf"}),
    );
    assert_eq!(has["data"]["has"], false);
    // Every record the proxy logged applied on every copy: one a shard rejects is a
    // write the proxy acknowledged and the shard dropped. (Records replayed over state
    // that already reflects them, such as an index a shard opened with, or one it opened
    // after its drop, are not rejections.)
    for n in ["d1", "d2", "q1", "q2", "q3"] {
        let log = d.log(n);
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("log record rejected"))
            .collect();
        assert!(bad.is_empty(), "{n}:\n{}", bad.join("\n"));
    }
    assert!(
        failed.is_empty(),
        "{} of the suite's tests failed against the cluster:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
