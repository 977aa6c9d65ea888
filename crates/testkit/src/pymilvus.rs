//! pymilvus from PyPI for the tests that run Python clients against Magpie
//! (`tests/pymilvus`), and the comparison of two runs of its suite.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtual environment's python (`target/pymilvus-venv`, made by
/// tests/pymilvus/setup.sh once per test binary), or a [`crate::skip`] and `None`.
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = PY.get_or_init(|| {
        if let Ok(p) = std::env::var("MAGPIE_PYMILVUS_PYTHON") {
            return Ok(PathBuf::from(p));
        }
        let venv = root().join("target/pymilvus-venv");
        let out = Command::new("sh")
            .arg(root().join("tests/pymilvus/setup.sh"))
            .arg(&venv)
            .output()
            .map_err(|e| format!("cannot run tests/pymilvus/setup.sh: {e}"))?;
        if out.status.success() {
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        } else {
            Err(format!(
                "tests/pymilvus/setup.sh failed (is PyPI reachable?): {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ))
        }
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            crate::skip("pymilvus", e);
            None
        }
    }
}

/// Runs suite.py against `uri`; its JSON summary.
pub fn suite(py: &Path, uri: &str, token: Option<&str>) -> Value {
    suite_with(py, uri, token, &[])
}

/// [`suite`] with environment variables for the script (`SUITE_SHARDS`: the shard
/// count of the collections it creates).
pub fn suite_with(py: &Path, uri: &str, token: Option<&str>, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(py);
    cmd.arg(root().join("tests/pymilvus/suite.py")).arg(uri);
    cmd.envs(env.iter().copied());
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "suite.py against {uri} failed:\n{}",
        stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("suite.py printed no JSON ({e}): {stderr}"))
}

/// Differences between two summaries: numbers within 1e-4, everything else equal.
pub fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(p, q, &format!("{path}/{k}"), out),
                    _ => out.push(format!("{path}/{k}: only in one run")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > 1e-4 {
                out.push(format!("{path}: {x} vs {y}"));
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}
