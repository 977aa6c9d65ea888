//! pymilvus, unchanged, against the `magpie` binary: the script tests/pymilvus/suite.py
//! (the MilvusClient quickstart and the common operations, each checked) runs against
//! Magpie and against Milvus Lite (the reference implementation pymilvus ships with),
//! and the two runs must agree: the same ids and counts, scores within 1e-4.
//!
//! pymilvus and Milvus Lite come from PyPI into `target/pymilvus-venv`
//! (tests/pymilvus/setup.sh; `.ci/run` prepares it in the background). Without PyPI the
//! tests are skipped with a message, and fail under MAGPIE_REQUIRE_ALL_TESTS=1.

use magpie_testkit::pymilvus::{diff, python, root, suite};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
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
        Server {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pymilvus_suite_gives_milvus_lites_answers() {
    let Some(py) = python() else { return };
    let s = Server::start(&[]);
    let ours = suite(&py, &s.url, None);
    let lite_dir = tempfile::tempdir().unwrap();
    let lite = suite(
        &py,
        lite_dir.path().join("milvus.db").to_str().unwrap(),
        None,
    );
    let mut d = Vec::new();
    diff(&lite, &ours, "", &mut d);
    assert!(
        d.is_empty(),
        "Magpie and Milvus Lite disagree:\n{}",
        d.join("\n")
    );
    // The comparison covered real results, not two empty documents.
    assert_eq!(ours["count"], 100);
    assert_eq!(ours["search"][0].as_array().map(Vec::len), Some(5));
}

#[test]
fn pymilvus_with_a_token() {
    let Some(py) = python() else { return };
    let s = Server::start(&["--token", "s3cret"]);
    // The whole suite with the token.
    let ours = suite(&py, &s.url, Some("s3cret"));
    assert_eq!(ours["count"], 100);
    // Without it, or with another, the client is refused at connect.
    for token in ["", "wrong"] {
        let out = Command::new(&py)
            .args([
                "-c",
                "import sys\nfrom pymilvus import MilvusClient\ntry:\n    MilvusClient(uri=sys.argv[1], token=sys.argv[2]).list_collections()\nexcept Exception as e:\n    print(type(e).__name__, e)\n    sys.exit(3)\n",
                &s.url,
                token,
            ])
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(3),
            "token {token:?} accepted: {msg}"
        );
    }
}

#[test]
fn readme_pymilvus_quickstart_runs_unchanged_but_for_the_uri() {
    let Some(py) = python() else { return };
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("README has a pymilvus quickstart");
    let body = &readme[start + 10..];
    let code = &body[..body.find("```").unwrap()];
    assert!(code.contains("http://localhost:19530"), "{code}");
    let s = Server::start(&[]);
    let code = code.replace("http://localhost:19530", &s.url);
    let out = Command::new(&py).args(["-c", &code]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The search finds both rows, the nearest first; the query finds the math row.
    assert!(
        stdout.contains("[[{'id': 1, 'distance': 1.0, 'entity': {'subject': 'history'}}, {'id': 2"),
        "{stdout}"
    );
    assert!(stdout.contains("{'id': 2, 'subject': 'math'}"), "{stdout}");
}

/// pymilvus's bulk-import helpers, unchanged (tests/pymilvus/bulk_import.py): a NumPy
/// group, a JSON file and a Parquet file (written by pyarrow) from the server's import
/// folder through the REST helpers
/// (bulk_import, get_import_progress, list_import_jobs), a JSON file through the ORM's
/// gRPC `utility.do_bulk_insert`, the jobs' progress and listings, a path outside the
/// folder refused, and the rows in queries and searches.
#[test]
fn pymilvus_bulk_import_helpers() {
    let Some(py) = python() else { return };
    let s = Server::start(&[]);
    let root = s._dir.path().join("import");
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new(&py)
        .arg(self::root().join("tests/pymilvus/bulk_import.py"))
        .arg(&s.url)
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bulk_import.py failed:\n{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bulk_import.py printed no JSON ({e}): {stderr}"));
    assert_eq!(v["state"], "Completed", "{v}");
    assert_eq!(v["importedRows"], 3350, "{v}");
    assert_eq!(v["files"], 3, "{v}");
    assert_eq!(v["listed"], true, "{v}");
    // utility.do_bulk_insert over gRPC, into the same collection.
    assert_eq!(v["grpc_state"], "Completed", "{v}");
    assert_eq!(v["grpc_rows"], 100, "{v}");
    assert_eq!(v["grpc_tasks"], 2, "{v}");
    assert!(
        v["grpc_refused"]
            .as_str()
            .unwrap()
            .contains("may not contain '..'"),
        "{v}"
    );
    assert_eq!(
        (&v["count"], &v["json_rows"], &v["parquet_rows"]),
        (&json!(3450), &json!(200), &json!(150)),
        "{v}"
    );
    assert_eq!(v["nearest_of_1234"], 1234, "{v}");
}
