//! Prometheus text metrics: request counts and latency histograms per endpoint, searches
//! by where they ran and their time in the engine, engine gauges (rows, segments, WAL
//! bytes, disk bytes), resident memory and process CPU time.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default)]
struct Series {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

#[derive(Default)]
pub struct Metrics {
    /// (path, status) -> request count; path -> latency histogram.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Series>>,
    /// Searches (REST and gRPC) run on an async worker / on the blocking pool, and the
    /// microseconds all of them spent in the engine.
    searches_worker: AtomicU64,
    searches_pool: AtomicU64,
    search_engine_micros: AtomicU64,
    /// Searches the engine stopped early: their time limit passed, or their client went
    /// away (see [`crate::inline::search`]).
    searches_cancelled: AtomicU64,
    /// Queries (query, get, count) the engine stopped early, likewise.
    queries_cancelled: AtomicU64,
    /// Searches in the engine now (REST and gRPC, on a worker or the pool).
    searches_running: AtomicU64,
}

/// A search in the engine, counted in `magpie_searches_running` until dropped.
pub struct Running<'a>(&'a Metrics);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.searches_running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn observe(&self, path: &str, status: u16, secs: f64) {
        *self
            .requests
            .lock()
            .entry((path.to_string(), status))
            .or_default() += 1;
        let mut l = self.latency.lock();
        let s = l.entry(path.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.counts[i] += 1;
            }
        }
        s.sum += secs;
        s.total += 1;
    }

    /// One search's time in the engine, and where it ran (see [`crate::inline`]).
    pub fn observe_search(&self, micros: u64, on_worker: bool) {
        self.search_engine_micros
            .fetch_add(micros, Ordering::Relaxed);
        if on_worker {
            &self.searches_worker
        } else {
            &self.searches_pool
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a search in the engine until the guard is dropped.
    pub fn search_running(&self) -> Running<'_> {
        self.searches_running.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }

    /// A search (or, with `query`, a query) that the engine stopped by its cancel flag.
    pub fn cancelled(&self, query: bool) {
        if query {
            &self.queries_cancelled
        } else {
            &self.searches_cancelled
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, engine: &magpie_engine::EngineStats) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP magpie_searches_cancelled_total Searches stopped before they finished: their time limit passed, or their client went away.\n# TYPE magpie_searches_cancelled_total counter\nmagpie_searches_cancelled_total {}",
            self.searches_cancelled.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP magpie_queries_cancelled_total Queries (query, get, count) stopped before they finished: their time limit passed, or their client went away.\n# TYPE magpie_queries_cancelled_total counter\nmagpie_queries_cancelled_total {}",
            self.queries_cancelled.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP magpie_searches_running Searches in the engine now.\n# TYPE magpie_searches_running gauge\nmagpie_searches_running {}",
            self.searches_running.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP magpie_searches_total Searches (REST and gRPC) by where they ran: on an async worker or on the blocking pool.\n# TYPE magpie_searches_total counter\nmagpie_searches_total{{thread=\"worker\"}} {}\nmagpie_searches_total{{thread=\"pool\"}} {}",
            self.searches_worker.load(Ordering::Relaxed),
            self.searches_pool.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP magpie_search_engine_seconds_total Time searches spent in the engine, without parsing, queueing and network.\n# TYPE magpie_search_engine_seconds_total counter\nmagpie_search_engine_seconds_total {:.6}",
            self.search_engine_micros.load(Ordering::Relaxed) as f64 * 1e-6
        );
        o.push_str("# HELP magpie_http_requests_total HTTP requests by endpoint and status.\n# TYPE magpie_http_requests_total counter\n");
        for ((p, s), n) in self.requests.lock().iter() {
            let _ = writeln!(
                o,
                "magpie_http_requests_total{{path=\"{p}\",status=\"{s}\"}} {n}"
            );
        }
        o.push_str("# HELP magpie_http_request_duration_seconds Request latency by endpoint.\n# TYPE magpie_http_request_duration_seconds histogram\n");
        for (p, s) in self.latency.lock().iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "magpie_http_request_duration_seconds_bucket{{path=\"{p}\",le=\"{b}\"}} {}",
                    s.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "magpie_http_request_duration_seconds_bucket{{path=\"{p}\",le=\"+Inf\"}} {}",
                s.total
            );
            let _ = writeln!(
                o,
                "magpie_http_request_duration_seconds_sum{{path=\"{p}\"}} {}",
                s.sum
            );
            let _ = writeln!(
                o,
                "magpie_http_request_duration_seconds_count{{path=\"{p}\"}} {}",
                s.total
            );
        }
        let gauges = [
            (
                "magpie_collections",
                "Collections.",
                engine.collections as u64,
            ),
            (
                "magpie_rows",
                "Live rows across collections.",
                engine.rows as u64,
            ),
            (
                "magpie_segments",
                "Segments (growing, sealed and flushed).",
                engine.segments as u64,
            ),
            (
                "magpie_wal_bytes",
                "Bytes held by write-ahead log files.",
                engine.wal_bytes,
            ),
            (
                "magpie_disk_bytes",
                "Bytes on disk under the data directory.",
                engine.disk_bytes,
            ),
            (
                "magpie_resident_memory_bytes",
                "Resident set size of the process.",
                resident_bytes(),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP process_cpu_seconds_total User and system CPU time of the process.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:.6}",
            cpu_seconds()
        );
        let _ = writeln!(o, "# HELP magpie_simd_info Distance kernel set in use.\n# TYPE magpie_simd_info gauge\nmagpie_simd_info{{isa=\"{}\"}} 1", magpie_linalg::active_isa());
        o
    }
}

/// Resident set size from /proc (0 where unavailable).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// User plus system CPU seconds of the whole process so far (microsecond resolution).
pub fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers; all zeros is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage for the call's duration.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}
