//! Spare cores for one large search.
//!
//! A search request runs on one thread (an async worker or a blocking-pool thread, see
//! the server's `inline.rs`). When its exact scans are large (many rows, many queries),
//! the segments it scans exactly are split among that thread and *helpers*, and so are
//! its index searches (one per query and segment) when there are many: scoped
//! threads started for this request only, so nothing outlives it and the collection's
//! read lock covers them. Helpers come from one process-wide budget: a helper is taken
//! only while the searches in progress ([`enter`]; or, where more, the search requests a
//! server has in flight, [`request`]) and the helpers already running number fewer than
//! [`set_threads`] (every core by default); searches themselves are never held back. A
//! request takes what is free and never waits for more, so under load, when other
//! searches keep the cores busy, each runs on its own thread as before, and an idle
//! server spends its cores on the one request it has.
//!
//! Work is counted in multiply-adds (rows × queries × dimension; an index search counts
//! a fixed, low number of rows, `GRAPH_SEARCH_ROWS` in `collection/search.rs`); below
//! [`PAR_MIN_WORK`] per helper a thread's start (~20–50 µs) is not worth it.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// Multiply-adds per helper below which the scan stays on one thread: about a
/// millisecond of scanning, so a helper's start costs a few percent at most.
pub const PAR_MIN_WORK: usize = 1 << 22;

/// Threads that may search at once beyond one (`limit`), searches in progress
/// (`active`), search requests a server has in flight (`requests`, see [`request`]) and
/// helpers taken now (`in_use`), process-wide.
struct Budget {
    limit: AtomicUsize,
    active: AtomicUsize,
    requests: AtomicUsize,
    in_use: AtomicUsize,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            limit: AtomicUsize::new(limit),
            active: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
        }
    }

    /// Threads busy with searches besides the helpers: the searches in progress, or the
    /// search requests in flight where there are more (a request still reading its
    /// body, or writing its answer, keeps a core busy too), and at least the caller.
    fn searching(&self) -> usize {
        self.active
            .load(Relaxed)
            .max(self.requests.load(Relaxed))
            .max(1)
    }

    /// Takes up to `want` helpers; returns how many it got: none while the searches (see
    /// [`Budget::searching`]) and the helpers already taken fill the limit.
    fn take(&self, want: usize) -> usize {
        let mut got = 0;
        let _ = self.in_use.fetch_update(Relaxed, Relaxed, |used| {
            let busy = self.searching() + used;
            got = (self.limit.load(Relaxed) + 1)
                .saturating_sub(busy)
                .min(want);
            Some(used + got)
        });
        got
    }

    fn give_back(&self, n: usize) {
        self.in_use.fetch_sub(n, Relaxed);
    }

    /// More threads search than the limit allows (searches started after helpers were
    /// taken).
    fn oversubscribed(&self) -> bool {
        self.searching() + self.in_use.load(Relaxed) > self.limit.load(Relaxed) + 1
    }
}

fn budget() -> &'static Budget {
    static B: OnceLock<Budget> = OnceLock::new();
    B.get_or_init(|| Budget::new(default_threads() - 1))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One search in progress, counted while it lives (see [`enter`]).
pub(crate) struct Active(&'static Budget);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Counts a search in progress until the returned guard is dropped, so that other
/// searches take no helpers for the core it uses.
pub(crate) fn enter() -> Active {
    let b = budget();
    b.active.fetch_add(1, Relaxed);
    Active(b)
}

/// A search request in flight in a server, counted until dropped (see [`request`]).
pub struct InFlight(&'static Budget);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// Counts a search request from its arrival to its answer, for a server: a request
/// reading its body or writing its answer is not yet (or no longer) a search in
/// progress ([`enter`]) but uses a core all the same, so while requests in flight
/// outnumber the searches, they are what fills the budget. Without a server (in-process
/// callers) nothing is counted here.
pub fn request() -> InFlight {
    let b = budget();
    b.requests.fetch_add(1, Relaxed);
    InFlight(b)
}

/// Sets how many threads one search may use for its exact scans and index searches (0:
/// all cores; 1: never more than the request's own). Process-wide: the last engine opened sets it; helpers
/// already taken are given back as usual.
pub fn set_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    budget().limit.store(n - 1, Relaxed);
}

/// `items.map(f)`, in order, split among the calling thread and free helpers when the
/// `work` (multiply-adds) is worth it. Returns the results and the threads started with
/// (a helper stops early when other searches need the cores).
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    work: usize,
    f: impl Fn(&T) -> R + Sync,
) -> (Vec<R>, usize) {
    map_with(budget(), items, work, f)
}

fn map_with<T: Sync, R: Send>(
    b: &Budget,
    items: &[T],
    work: usize,
    f: impl Fn(&T) -> R + Sync,
) -> (Vec<R>, usize) {
    let want = (items.len().saturating_sub(1)).min(work / PAR_MIN_WORK);
    let helpers = if want == 0 { 0 } else { b.take(want) };
    if helpers == 0 {
        return (items.iter().map(f).collect(), 1);
    }
    // Each helper is given back when it stops, however it stops (a panic in `f`
    // included).
    struct GiveBack<'a>(&'a Budget);
    impl Drop for GiveBack<'_> {
        fn drop(&mut self) {
            self.0.give_back(1);
        }
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let run = |helper: bool| loop {
        // A helper steps back when other searches started meanwhile and the cores are
        // oversubscribed; the caller finishes what is left.
        if helper && b.oversubscribed() {
            break;
        }
        let i = next.fetch_add(1, Relaxed);
        let Some(item) = items.get(i) else { break };
        *slots[i].lock() = Some(f(item));
    };
    std::thread::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|| {
                let _back = GiveBack(b);
                run(true)
            });
        }
        run(false);
    });
    let out = slots
        .into_iter()
        .map(|m| m.into_inner().expect("every item was run"))
        .collect();
    (out, helpers + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results come back in order whatever thread ran them; small work stays on the
    /// caller; helpers are taken only while free and always given back.
    #[test]
    fn splits_large_work_among_free_helpers() {
        let b = Budget::new(3);
        let items: Vec<usize> = (0..40).collect();
        let caller = std::thread::current().id();
        let (out, threads) = map_with(&b, &items, PAR_MIN_WORK * 8, |&i| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            (i * i, std::thread::current().id())
        });
        assert_eq!(threads, 4);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            items.iter().map(|i| i * i).collect::<Vec<_>>()
        );
        assert!(out.iter().any(|o| o.1 != caller), "helpers ran some");
        assert_eq!(b.in_use.load(Relaxed), 0, "helpers given back");
        // Too little work, or one item: the caller alone.
        let (_, threads) = map_with(&b, &items, PAR_MIN_WORK - 1, |&i| i);
        assert_eq!(threads, 1);
        let (_, threads) = map_with(&b, &items[..1], usize::MAX, |&i| i);
        assert_eq!(threads, 1);
        // At most one helper per PAR_MIN_WORK, and none while the budget is spent.
        let (_, threads) = map_with(&b, &items, PAR_MIN_WORK * 2, |&i| i);
        assert_eq!(threads, 3);
        b.in_use.store(3, Relaxed);
        let (out, threads) = map_with(&b, &items, usize::MAX, |&i| i + 1);
        assert_eq!((threads, out[39]), (1, 40));
        b.in_use.store(0, Relaxed);
        // A panic in one item still gives the helpers back.
        b.limit.store(2, Relaxed);
        let r = std::panic::catch_unwind(|| {
            map_with(&b, &items, usize::MAX, |&i| assert!(i != 17, "boom"))
        });
        assert!(r.is_err());
        assert_eq!(b.in_use.load(Relaxed), 0);
        // Other searches in progress use cores too: three of them leave one helper.
        b.limit.store(3, Relaxed);
        b.active.store(3, Relaxed);
        let (_, threads) = map_with(&b, &items, usize::MAX, |&i| i);
        assert_eq!(threads, 2);
        b.active.store(4, Relaxed);
        let (_, threads) = map_with(&b, &items, usize::MAX, |&i| i);
        assert_eq!(threads, 1);
        // Requests in flight count where they outnumber the searches: this search's own
        // request leaves all three helpers; with two more still reading their bodies,
        // one is left.
        b.active.store(1, Relaxed);
        b.requests.store(1, Relaxed);
        let (_, threads) = map_with(&b, &items, usize::MAX, |&i| i);
        assert_eq!(threads, 4);
        b.requests.store(3, Relaxed);
        let (_, threads) = map_with(&b, &items, usize::MAX, |&i| i);
        assert_eq!(threads, 2);
        b.requests.store(0, Relaxed);
        // A search that starts meanwhile sends the helpers back: the caller runs the
        // rest, and every item is still run once.
        b.active.store(1, Relaxed);
        let caller = std::thread::current().id();
        let started = std::sync::atomic::AtomicBool::new(false);
        let (out, threads) = map_with(&b, &items, usize::MAX, |&i| {
            // Item 0 (the first taken) starts the other search; no item ends before.
            if i == 0 {
                b.active.store(4, Relaxed);
                started.store(true, Relaxed);
            }
            while !started.load(Relaxed) {
                std::thread::yield_now();
            }
            (i, std::thread::current().id())
        });
        assert_eq!(threads, 4);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), items);
        let by_helpers = out.iter().filter(|o| o.1 != caller).count();
        assert!(
            by_helpers <= 3,
            "each helper ran at most its one item: {by_helpers}"
        );
        assert_eq!(b.in_use.load(Relaxed), 0);
    }
}
