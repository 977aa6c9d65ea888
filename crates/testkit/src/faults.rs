//! A TCP proxy that injects network faults between a client and a server (the object
//! store tests put it between Magpie and the S3 server): slow responses, an upload cut
//! off midway, and an outage. Plain threads and blocking sockets; one pair of pump
//! threads per connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does to the traffic; every field can be changed while it runs.
#[derive(Default)]
pub struct Faults {
    /// Delay before each chunk of a response is passed on (slow reads).
    pub delay_ms: AtomicU64,
    /// The next this-many `PUT` requests are cut off after half of their first chunk
    /// (a connection dropped mid-upload).
    pub cut_puts: AtomicUsize,
    /// While set, every connection is closed as soon as it is used or accepted.
    pub outage: AtomicBool,
    /// Counters of what was done.
    pub puts_cut: AtomicUsize,
    pub chunks_delayed: AtomicUsize,
    pub closed_by_outage: AtomicUsize,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`
    /// or `host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let faults = Arc::new(Faults::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (faults.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if f.outage.load(Ordering::SeqCst) {
                    f.closed_by_outage.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let f1 = f.clone();
                std::thread::spawn(move || pump_requests(client, server, &f1));
                let f2 = f.clone();
                std::thread::spawn(move || pump_responses(s2, c2, &f2));
            }
        });
        FaultProxy { addr, faults, stop }
    }

    /// The proxy's URL, to use as the client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| x.checked_sub(1))
        .is_ok()
}

/// Client → server. A request line starts a read (clients write a request at once), so
/// a chunk beginning with `PUT ` is the start of an upload.
fn pump_requests(mut from: TcpStream, mut to: TcpStream, f: &Faults) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if f.outage.load(Ordering::SeqCst) {
            f.closed_by_outage.fetch_add(1, Ordering::SeqCst);
            close(&from, &to);
            return;
        }
        if buf[..n].starts_with(b"PUT ") && take_one(&f.cut_puts) {
            let _ = to.write_all(&buf[..n / 2]);
            f.puts_cut.fetch_add(1, Ordering::SeqCst);
            close(&from, &to);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            close(&from, &to);
            return;
        }
    }
}

/// Server → client, each chunk after the configured delay.
fn pump_responses(mut from: TcpStream, mut to: TcpStream, f: &Faults) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let d = f.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            f.chunks_delayed.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(d));
        }
        if to.write_all(&buf[..n]).is_err() {
            close(&from, &to);
            return;
        }
    }
}
