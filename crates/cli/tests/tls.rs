//! `magpie serve --tls-cert --tls-key`: REST over HTTPS and Milvus's gRPC over TLS
//! (pymilvus with `server_pem_path`), with a certificate made for the test; plain HTTP
//! to the TLS port gets no answer, and a bad key file is named at start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, cert: &Path, key: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("MAGPIE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on https://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (Server(child), addr)
}

#[test]
fn rest_and_grpc_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let (_server, port) = start(dir.path(), &cert, &key);

    // REST over HTTPS, trusting only the test's certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(tls))
        .timeout(Duration::from_secs(10))
        .build();
    let base = format!("https://localhost:{port}");
    assert_eq!(
        agent
            .get(&format!("{base}/healthz"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
        "ok"
    );
    let r: serde_json::Value = agent
        .post(&format!("{base}/v2/vectordb/collections/create"))
        .send_json(serde_json::json!({"collectionName": "t", "dimension": 2}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["code"], 0, "{r}");

    // Plain HTTP to the TLS port is not served.
    let plain = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&format!("http://127.0.0.1:{port}/healthz"))
        .call();
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // gRPC over TLS with pymilvus, when the pymilvus environment exists (made by the
    // pymilvus tests' setup; crates/cli/tests/pymilvus.rs).
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pymilvus-venv/bin/python");
    let setup = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pymilvus/setup.sh"))
        .arg(py.parent().unwrap().parent().unwrap())
        .output();
    match setup {
        Ok(o) if o.status.success() => {
            let out = Command::new(&py)
                .args([
                    "-c",
                    "import sys\nfrom pymilvus import MilvusClient\nc = MilvusClient(uri=sys.argv[1], server_pem_path=sys.argv[2], server_name='localhost')\nprint(c.list_collections())\n",
                    &base,
                ])
                .arg(&cert)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("['t']"),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(o) => magpie_testkit::skip("pymilvus", String::from_utf8_lossy(&o.stderr)),
        Err(e) => magpie_testkit::skip("pymilvus", e),
    }
}

#[test]
fn a_bad_key_file_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_magpie"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("key.pem") && stderr.contains("private key"),
        "{stderr}"
    );
}
