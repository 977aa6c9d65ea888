//! The official Milvus Node SDK (`@zilliz/milvus2-sdk-node` from npm, pinned in
//! tests/node-sdk/package-lock.json) runs its quickstart against the `magpie` binary,
//! through both of its clients: `MilvusClient` (gRPC) and `HttpClient` (REST v2).
//! tests/node-sdk/quickstart.mjs checks every step. The SDK is installed with `npm ci`
//! into `target/node-sdk`; without node or the npm registry the test is skipped with a
//! message (a failure under MAGPIE_REQUIRE_ALL_TESTS=1).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/node-sdk` with the SDK installed, or why not.
fn install() -> Result<PathBuf, String> {
    let src = root().join("tests/node-sdk");
    let dir = root().join("target/node-sdk");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for f in ["package.json", "package-lock.json", "quickstart.mjs"] {
        std::fs::copy(src.join(f), dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    if dir.join("node_modules/@zilliz/milvus2-sdk-node").is_dir() {
        return Ok(dir);
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if out.status.success() {
        Ok(dir)
    } else {
        Err(format!(
            "npm ci failed (is the npm registry reachable?): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ))
    }
}

#[test]
fn node_sdk_quickstart_over_grpc_and_rest() {
    let dir = match install() {
        Ok(d) => d,
        Err(e) => return magpie_testkit::skip("node-sdk", e),
    };
    let data = tempfile::tempdir().unwrap();
    for token in [None, Some("s3cret")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_magpie"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join(token.unwrap_or("open")));
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let mut child = cmd
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
        let mut node = Command::new("node");
        node.arg("quickstart.mjs").arg(&url).current_dir(&dir);
        if let Some(t) = token {
            node.arg(t);
        }
        let out = node.output().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("node sdk quickstart: ok"),
            "token {token:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
