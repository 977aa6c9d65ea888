//! Where a search runs: on the async worker that read the request, or on tokio's
//! blocking pool.
//!
//! Handing a search to the blocking pool costs two thread wake-ups per request (a pool
//! thread, then the worker again to write the response). Measured on the 2-core VM of
//! docs/BENCHMARKS.md ("The request path", HNSW_SQ at recall ≥ 0.95): with short
//! searches on the workers, one client went from 4,333 to 5,714 searches/s on
//! 100k × 128 and from 2,770 to 3,141 on 50k × 384; two clients from 7,436 to 14,534 and
//! from 4,426 to 7,797.
//!
//! A long search on a worker, though, holds up every other request that worker would
//! have served: with the few workers tokio starts (one per core), a handful of exact
//! scans of a large growing segment would stall even `/healthz`. So a search runs on the
//! worker only when it is known to be short: [`InlineGate`] keeps, per collection, a
//! moving average of how long its searches took, and sends a search to the blocking pool
//! while that average is at or above `search_inline_us` ([`DEFAULT_INLINE_MAX_US`]
//! unless configured; 0 turns this off) or not yet known (the first
//! search of a collection). A worker is then not held for much longer than that bound,
//! except by searches much slower than the collection's recent ones, for the few it
//! takes the average to catch up.
//!
//! Only requests that wait on nothing but the CPU qualify: no text or image to embed, no
//! Strong read (it may wait for the WAL's group commit), no segment still to fetch from
//! remote storage (see `Engine::search_may_block`), at most [`MAX_INLINE_NQ`] queries,
//! and a multi-thread runtime with at least two workers.
//!
//! # Time limits and clients that go away
//! Every search carries a cancel flag ([`magpie_engine::SearchRequest::cancel`]) that the
//! engine polls between segments and every few thousand rows of a scan. A search on the
//! pool is stopped through it
//! - when its time limit passes: the server's `search_timeout_ms`, or a gRPC client's
//!   deadline (`grpc-timeout`) where that is shorter. The request then answers 408 (over
//!   gRPC, the same error in the reply's status) naming the limit;
//! - when its client goes away: the connection closes or the HTTP/2 stream is reset
//!   (a pymilvus `timeout` does that), so the request's future is dropped, and with it
//!   the guard that sets the flag.
//!
//! Either way the pool thread is free again within a few thousand rows instead of
//! finishing work nobody waits for; `magpie_searches_cancelled_total` counts them. A
//! search on a worker is short by the rule above and is not stopped.
//!
//! Queries (`query`, `get`, `count(*)`, REST and gRPC) always run on the pool and are
//! stopped the same way ([`Op::Query`], [`magpie_engine::Engine::query_with`]): the engine
//! polls their flag before each segment's filter and every 1,024 rows it renders;
//! `magpie_queries_cancelled_total` counts them.

use crate::error::ApiError;
use crate::AppState;
use axum::http::StatusCode;
use magpie_engine::{Engine, EngineError, SearchRequest};
use magpie_index::Cancel;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// By default, a collection whose searches average less than this runs them on the
/// workers (`search_inline_us`). One millisecond is five to twenty HNSW searches at
/// recall 0.95 on the benchmark sets, and short enough that a request queued behind such
/// a search does not notice.
pub const DEFAULT_INLINE_MAX_US: u64 = 1_000;

/// At most this many queries in one request run on a worker; larger batches are long.
const MAX_INLINE_NQ: usize = 16;

/// Moving averages kept for at most this many collections (names are forgotten all at
/// once beyond it; they are relearned from the next search).
const MAX_TRACKED: usize = 10_000;

/// "Not measured yet".
const UNKNOWN: u64 = u64::MAX;

/// Per collection, the moving average of its searches' durations.
pub struct InlineGate {
    recent: RwLock<HashMap<String, Arc<AtomicU64>>>,
    /// Searches averaging below this run on the workers; 0 = never.
    max_us: u64,
    /// The longest a search on the pool, or a query, may run (`search_timeout_ms`);
    /// `None`: no limit.
    timeout: Option<Duration>,
}

impl Default for InlineGate {
    fn default() -> Self {
        Self::new(DEFAULT_INLINE_MAX_US)
    }
}

impl InlineGate {
    /// A gate that lets a collection's searches run on the workers while they average
    /// less than `max_us` microseconds (0: never).
    pub fn new(max_us: u64) -> Self {
        Self {
            recent: RwLock::new(HashMap::new()),
            max_us,
            timeout: None,
        }
    }

    /// The same gate, with searches on the pool stopped after `ms` milliseconds (0: no
    /// limit).
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout = (ms > 0).then(|| Duration::from_millis(ms));
        self
    }

    fn slot(&self, coll: &str) -> Arc<AtomicU64> {
        if let Some(s) = self.recent.read().get(coll) {
            return s.clone();
        }
        let mut w = self.recent.write();
        if w.len() >= MAX_TRACKED {
            w.clear();
        }
        w.entry(coll.to_string())
            .or_insert_with(|| Arc::new(AtomicU64::new(UNKNOWN)))
            .clone()
    }

    /// Whether `coll`'s searches have been short.
    pub fn is_short(&self, coll: &str) -> bool {
        self.recent
            .read()
            .get(coll)
            .is_some_and(|s| s.load(Ordering::Relaxed) < self.max_us)
    }

    /// Adds one search's duration to `coll`'s average (weight 1/8; the first one sets it).
    pub fn record(&self, coll: &str, micros: u64) {
        let slot = self.slot(coll);
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == UNKNOWN {
                micros
            } else {
                old - old / 8 + micros / 8
            })
        });
    }
}

/// Whether this task runs on a multi-thread runtime with at least two workers (so that a
/// search on one leaves another for I/O).
fn on_shared_workers() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
}

/// The queries of a request: vectors, sparse vectors, primary keys, texts or images.
fn nq(req: &SearchRequest) -> usize {
    req.vectors
        .len()
        .max(req.sparse.len())
        .max(req.ids.as_ref().map_or(0, Vec::len))
        .max(req.texts.len())
        .max(req.images.len())
}

/// Sets a search's cancel flag when dropped armed: the request's future was dropped
/// before the search ended (its client went away).
struct CancelOnDrop(Option<Arc<Cancel>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

/// Runs `f`, a search of `req` in `coll`, on this worker when the request qualifies (see
/// the module's documentation) and `coll`'s searches have been short; on the blocking
/// pool otherwise. Either way, the time `f` takes goes into `coll`'s average. On the
/// pool the search stops after the server's time limit or `deadline` (a client's),
/// whichever is shorter, or when this future is dropped.
pub(crate) async fn search<T: Send + 'static>(
    st: &Arc<AppState>,
    coll: String,
    mut req: SearchRequest,
    deadline: Option<Duration>,
    f: impl FnOnce(&Engine, &str, &SearchRequest) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    if nq(&req) <= MAX_INLINE_NQ
        && st.inline.is_short(&coll)
        && on_shared_workers()
        && !st.engine.search_may_block(&coll, &req)
    {
        let _running = st.metrics.search_running();
        let t0 = Instant::now();
        // A panic answers 500 as it does from the pool, instead of dropping the
        // connection with the task.
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&st.engine, &coll, &req)))
                .map_err(|_| crate::api::task_failed("the search panicked"))?;
        let us = t0.elapsed().as_micros() as u64;
        st.inline.record(&coll, us);
        st.metrics.observe_search(us, true);
        return out.map_err(ApiError::from);
    }
    // Only a search on the pool can be stopped: one on this worker runs to its end.
    let cancel = Arc::new(Cancel::new());
    req.cancel = Some(cancel.clone());
    let st2 = st.clone();
    on_pool_cancellable(st, Op::Search, cancel, deadline, move |e| {
        let t0 = Instant::now();
        let out = f(e, &coll, &req);
        let us = t0.elapsed().as_micros() as u64;
        st2.inline.record(&coll, us);
        st2.metrics.observe_search(us, false);
        out
    })
    .await
}

/// Runs `f`, a query (query, get, `count(*)`) that polls the flag it is given, on the
/// blocking pool through [`on_pool_cancellable`]: stopped at the server's time limit or
/// `deadline` (a client's), whichever is shorter, or when its client goes away.
pub(crate) async fn query<T: Send + 'static>(
    st: &Arc<AppState>,
    deadline: Option<Duration>,
    f: impl FnOnce(&Engine, &Cancel) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let cancel = Arc::new(Cancel::new());
    let flag = cancel.clone();
    on_pool_cancellable(st, Op::Query, cancel, deadline, move |e| f(e, &flag)).await
}

/// What a call stopped by [`on_pool_cancellable`] is: named in its 408 and counted
/// apart in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A search or hybrid search (`magpie_searches_cancelled_total`).
    Search,
    /// A query, get or `count(*)` (`magpie_queries_cancelled_total`).
    Query,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Search => "search",
            Op::Query => "query",
        }
    }
}

/// Runs `f`, a search or query (`op`) whose requests carry `cancel`, on the blocking
/// pool, and sets `cancel` once the server's time limit or `deadline` (a client's),
/// whichever is shorter, passes (answering 408 naming the limit), or when this future is
/// dropped (its client went away). Counts a search in `magpie_searches_running`, and
/// each call the engine stopped in `magpie_searches_cancelled_total` or
/// `magpie_queries_cancelled_total`.
pub(crate) async fn on_pool_cancellable<T: Send + 'static>(
    st: &Arc<AppState>,
    op: Op,
    cancel: Arc<Cancel>,
    deadline: Option<Duration>,
    f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let st2 = st.clone();
    let mut guard = CancelOnDrop(Some(cancel));
    let task = crate::api::blocking(st, move |e| {
        let _running = (op == Op::Search).then(|| st2.metrics.search_running());
        let out = f(e);
        if matches!(out, Err(EngineError::Cancelled)) {
            st2.metrics.cancelled(op == Op::Query);
        }
        out
    });
    let limit = match (st.inline.timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let out = match limit {
        None => task.await,
        Some(d) => match tokio::time::timeout(d, task).await {
            Ok(out) => out,
            // The guard sets the flag; the pool thread stops within a few thousand rows.
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    65535,
                    format!(
                        "the {} ran past its time limit of {} ms and was stopped (the server's search_timeout_ms, or the client's deadline)",
                        op.name(),
                        d.as_millis()
                    ),
                ))
            }
        },
    };
    guard.0 = None;
    out
}

/// A gRPC request's deadline, from its `grpc-timeout` header (an integer of at most 8
/// digits and a unit: H, M, S, m, u or n); `None` when absent or malformed.
pub(crate) fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_is_short_once_its_average_is_below_the_bound() {
        let g = InlineGate::default();
        assert!(!g.is_short("c"), "unknown until measured");
        g.record("c", 200);
        assert!(g.is_short("c"));
        assert!(!g.is_short("other"));
        // One slow search moves the average by an eighth of the difference…
        g.record("c", 4_000);
        assert!(g.is_short("c"), "200 + 3800/8 = 675 µs");
        // …and a run of them sends the collection to the pool.
        g.record("c", 4_000);
        g.record("c", 4_000);
        assert!(!g.is_short("c"));
        // Fast searches bring it back.
        for _ in 0..40 {
            g.record("c", 100);
        }
        assert!(g.is_short("c"));
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_malformed_ones() {
        let t = |v: &str| {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&md)
        };
        assert_eq!(t("50m"), Some(Duration::from_millis(50)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("250u"), Some(Duration::from_micros(250)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "5", "5x", "-5m", "123456789S", "1.5S", "5 m"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn zero_sends_everything_to_the_pool() {
        let g = InlineGate::new(0);
        g.record("c", 1);
        assert!(!g.is_short("c"));
    }

    #[test]
    fn tracked_names_are_bounded() {
        let g = InlineGate::default();
        for i in 0..MAX_TRACKED + 5 {
            g.record(&format!("c{i}"), 10);
        }
        assert!(g.recent.read().len() <= MAX_TRACKED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_share() {
        assert!(on_shared_workers());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn one_worker_never_runs_searches() {
        assert!(!on_shared_workers());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_never_runs_searches() {
        assert!(!on_shared_workers());
    }

    #[test]
    fn nq_counts_every_kind_of_query() {
        let dense = SearchRequest {
            vectors: vec![vec![0.0; 4]; 3],
            ..Default::default()
        };
        assert_eq!(nq(&dense), 3);
        let ids = SearchRequest {
            ids: Some(vec![1.into(), 2.into()]),
            ..Default::default()
        };
        assert_eq!(nq(&ids), 2);
        let text = SearchRequest {
            texts: vec!["a dog".into()],
            ..Default::default()
        };
        assert_eq!(nq(&text), 1);
    }
}
