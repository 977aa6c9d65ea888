//! Background index builds.
//!
//! One builder thread per engine takes jobs (collection, segment, index definition) from
//! a queue. A job reads the flushed segment's memory-mapped vectors without holding the
//! collection lock, builds the index (the build itself may use several threads), writes
//! `segments/<id>/index_<field>_<index id>.bin` and fsyncs it, then takes the collection's
//! write lock, checks that the segment and the index definition still exist, attaches
//! the index and rewrites the manifest to list the file. Until then the segment is
//! searched exactly. A crash before the manifest names the file leaves an orphan that
//! the next open removes; the segment is then simply scheduled again.
//!
//! A second builder (same queue type, its own thread) grows the in-memory interim graphs
//! of growing segments ([`crate::segment::Interim`], `run_interim`), so those never wait
//! behind a long build of a flushed segment. While the first builder builds a segment's
//! index, the interim builder leaves that segment alone ([`Shared::hold`]): its running
//! job there is cancelled and none is started until the build ends. Otherwise, when rows
//! arrive faster than the interim graph grows (a bulk insert, then a flush), the interim
//! builder covers the flushed segment's remaining rows *while* the real index is built over
//! all of them, and the two split the cores: a 500k-row HNSW_SQ build took twice as long
//! (docs/BENCHMARKS.md, "The interim graph no longer races the index build").

use crate::catalog::ManifestIndex;
use crate::collection::Collection;
use crate::indexspec;
use crate::segment::{SegIndex, SegState};
use magpie_index::{Cancel, IndexError};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) type CollRef = Arc<RwLock<Collection>>;

/// Identifies one build: a collection, one of its segments, and an index definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct JobKey {
    pub coll: u64,
    pub segment: u64,
    pub index: u64,
}

#[derive(Clone)]
pub(crate) struct Job {
    pub key: JobKey,
    pub coll: CollRef,
    /// Vector field, by position among the schema's vector fields.
    pub field: usize,
}

/// What the interim builder grows ([`crate::segment::Interim`]): a graph once a growing
/// segment has `min_rows` rows, extended whenever `step_rows` more have arrived.
#[derive(Clone, Debug)]
pub(crate) struct InterimParams {
    pub min_rows: usize,
    pub step_rows: usize,
    pub m: usize,
    pub ef_construction: usize,
}

/// A failed build and when it may be tried again.
struct Failure {
    msg: String,
    attempts: u32,
    retry_at: Instant,
}

/// Wait before the next try after `attempts` failures: 5 s, doubling, at most 10 min. A
/// failure may be transient (a full disk, memory pressure); a permanent one costs one
/// build every 10 minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.saturating_sub(1).min(7)))
        .min(Duration::from_secs(600))
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    queued: HashSet<JobKey>,
    running: Option<(JobKey, Arc<Cancel>)>,
    failed: HashMap<JobKey, Failure>,
    /// Segments (collection, segment) this builder keeps off: their index is being built
    /// by the other builder ([`Shared::hold`]).
    held: HashMap<(u64, u64), usize>,
    shutdown: bool,
}

impl State {
    /// Whether a job for `key` may be queued now: not queued or running already, not
    /// failed recently (see [`backoff`]), and its segment not held.
    fn admits(&self, key: &JobKey, now: Instant) -> bool {
        !(self.shutdown
            || self.queued.contains(key)
            || self.held.contains_key(&(key.coll, key.segment))
            || self.failed.get(key).is_some_and(|f| now < f.retry_at)
            || self.running.as_ref().is_some_and(|r| r.0 == *key))
    }

    fn record_failure(&mut self, key: JobKey, msg: String, now: Instant) {
        let attempts = self.failed.get(&key).map_or(0, |f| f.attempts) + 1;
        let wait = backoff(attempts);
        tracing::warn!(
            segment = key.segment,
            attempts,
            retry_in_s = wait.as_secs(),
            "index build failed: {msg}"
        );
        self.failed.insert(
            key,
            Failure {
                msg,
                attempts,
                retry_at: now + wait,
            },
        );
    }
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    threads: usize,
    /// Set for the interim builder: its jobs grow interim graphs of growing segments
    /// instead of building and persisting indexes of flushed ones.
    interim: Option<InterimParams>,
    /// For the index builder: the interim builder, held off each segment it builds.
    supersedes: Option<Arc<Shared>>,
}

impl Shared {
    /// Keeps this builder off segment `segment` of `coll` until [`Shared::release`]:
    /// drops its queued jobs there, cancels its running one, and admits none. Holds
    /// nest (counted).
    fn hold(&self, coll: u64, segment: u64) {
        let mut st = self.state.lock();
        *st.held.entry((coll, segment)).or_default() += 1;
        let on = |k: &JobKey| k.coll == coll && k.segment == segment;
        st.jobs.retain(|j| !on(&j.key));
        st.queued.retain(|k| !on(k));
        if let Some((k, c)) = &st.running {
            if on(k) {
                c.cancel();
            }
        }
        self.done.notify_all();
    }

    /// Ends one [`Shared::hold`] of the segment.
    fn release(&self, coll: u64, segment: u64) {
        let mut st = self.state.lock();
        if let Some(n) = st.held.get_mut(&(coll, segment)) {
            *n -= 1;
            if *n == 0 {
                st.held.remove(&(coll, segment));
            }
        }
    }
}

/// A [`Shared::hold`] that ends when dropped (the build returned, failed or panicked).
struct Hold<'a> {
    on: &'a Shared,
    coll: u64,
    segment: u64,
}

impl<'a> Hold<'a> {
    fn new(on: &'a Shared, coll: u64, segment: u64) -> Self {
        on.hold(coll, segment);
        Hold { on, coll, segment }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.on.release(self.coll, self.segment);
    }
}

pub(crate) struct Builder {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Builder {
    /// Starts the builder thread. `threads` is passed to index builds (0 = all cores);
    /// `nice` is the builder's scheduling priority (see [`lower_priority`]). While it
    /// builds a segment's index, `interim` (the interim builder) leaves that segment
    /// alone.
    pub fn start(threads: usize, nice: i32, interim: &Builder) -> Builder {
        Self::start_with(threads, nice, None, Some(interim.shared.clone()))
    }

    /// Starts the interim builder: a second queue and thread, so a graph over growing
    /// rows never waits behind a long build of a flushed segment.
    pub fn start_interim(threads: usize, nice: i32, p: InterimParams) -> Builder {
        Self::start_with(threads, nice, Some(p), None)
    }

    fn start_with(
        threads: usize,
        nice: i32,
        interim: Option<InterimParams>,
        supersedes: Option<Arc<Shared>>,
    ) -> Builder {
        let name = if interim.is_some() {
            "magpie-interim-builder"
        } else {
            "magpie-index-builder"
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            threads,
            interim,
            supersedes,
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_priority(nice);
                worker(s)
            })
            .expect("spawn index builder thread");
        Builder {
            shared,
            handle: Mutex::new(Some(handle)),
        }
    }

    /// Queues a job unless it is queued, running, or failed too recently to retry.
    pub fn enqueue(&self, job: Job) {
        let mut st = self.shared.state.lock();
        if !st.admits(&job.key, Instant::now()) {
            return;
        }
        st.queued.insert(job.key);
        st.jobs.push_back(job);
        self.shared.work.notify_one();
    }

    /// Jobs queued or running for a collection.
    pub fn pending(&self, coll: u64) -> usize {
        let st = self.shared.state.lock();
        st.queued.iter().filter(|k| k.coll == coll).count()
            + usize::from(st.running.as_ref().is_some_and(|r| r.0.coll == coll))
    }

    /// Failure messages of builds of `(coll, index)`.
    pub fn failure(&self, coll: u64, index: u64) -> Option<String> {
        let st = self.shared.state.lock();
        st.failed
            .iter()
            .find(|(k, _)| k.coll == coll && k.index == index)
            .map(|(k, f)| {
                format!(
                    "segment {}: {} ({} attempt(s); retried with backoff)",
                    k.segment, f.msg, f.attempts
                )
            })
    }

    /// Blocks until no job of `coll` is queued or running, or `deadline` passes; true if
    /// idle.
    pub fn wait_idle(&self, coll: u64, deadline: Instant) -> bool {
        let mut st = self.shared.state.lock();
        loop {
            let busy = st.queued.iter().any(|k| k.coll == coll)
                || st.running.as_ref().is_some_and(|r| r.0.coll == coll);
            if !busy {
                return true;
            }
            if self.shared.done.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
    }

    /// Drops queued jobs matching `pred` and cancels a running one.
    pub fn cancel_where(&self, pred: impl Fn(&JobKey) -> bool) {
        let mut st = self.shared.state.lock();
        st.jobs.retain(|j| !pred(&j.key));
        st.queued.retain(|k| !pred(k));
        st.failed.retain(|k, _| !pred(k));
        if let Some((k, c)) = &st.running {
            if pred(k) {
                c.cancel();
            }
        }
        self.shared.done.notify_all();
    }

    /// Stops the thread: cancels the running build and drops the queue.
    pub fn shutdown(&self) {
        {
            let mut st = self.shared.state.lock();
            st.shutdown = true;
            st.jobs.clear();
            st.queued.clear();
            if let Some((_, c)) = &st.running {
                c.cancel();
            }
            self.shared.work.notify_all();
            self.shared.done.notify_all();
        }
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

fn worker(sh: Arc<Shared>) {
    loop {
        let (job, cancel) = {
            let mut st = sh.state.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if let Some(j) = st.jobs.pop_front() {
                    st.queued.remove(&j.key);
                    let c = Arc::new(Cancel::new());
                    st.running = Some((j.key, c.clone()));
                    break (j, c);
                }
                sh.work.wait(&mut st);
            }
        };
        let r = match &sh.interim {
            None => run(&job, &cancel, sh.threads, sh.supersedes.as_deref()).map(|()| false),
            Some(p) => run_interim(&job, &cancel, sh.threads, p),
        };
        let mut st = sh.state.lock();
        st.running = None;
        match r {
            Err(msg) => st.record_failure(job.key, msg, Instant::now()),
            Ok(again) => {
                st.failed.remove(&job.key);
                // Rows arrived during the build: grow the graph again.
                if again && st.admits(&job.key, Instant::now()) {
                    st.queued.insert(job.key);
                    st.jobs.push_back(job);
                }
            }
        }
        sh.done.notify_all();
    }
}

/// Builds, persists and attaches one index. `Ok` also covers jobs that became moot (the
/// segment was compacted away, the index dropped, the build cancelled). `interim` is held
/// off the segment for the whole build.
fn run(job: &Job, cancel: &Cancel, threads: usize, interim: Option<&Shared>) -> Result<(), String> {
    let field = job.field;
    let (data, inv, dim, elem, metric, kind, store, prefix) = {
        let g = job.coll.read();
        let Some(seg) = g.segments.iter().find(|s| s.id == job.key.segment) else {
            return Ok(());
        };
        if seg.state != SegState::Flushed || seg.indexes.get(field).is_none_or(|i| i.is_some()) {
            return Ok(());
        }
        let Some(def) = g.meta.indexes.iter().find(|i| i.id == job.key.index) else {
            return Ok(());
        };
        let col = &seg.vectors[field];
        let kind = indexspec::parse(def, col.dim, threads).map_err(|e| e.to_string())?;
        let col = col.get().map_err(|e| e.to_string())?;
        let Some(data) = col.data.share() else {
            return Ok(());
        };
        // The segment already holds 1/‖x‖ per row; copy it rather than recompute.
        (
            data,
            col.inv_norms.clone(),
            col.dim,
            col.elem,
            def.metric_type,
            kind,
            g.store.clone(),
            g.seg_prefix(seg.id),
        )
    };
    // The interim graph would only race this build for the cores; the segment is
    // searched through what the graph covers now (and exactly past it) until the index
    // is attached, which also drops the graph.
    let _hold = interim.map(|i| Hold::new(i, job.key.coll, job.key.segment));
    let v = data.slice(dim, elem);
    let t = Instant::now();
    let ix = match indexspec::build(&kind, v, &inv, metric, cancel) {
        Ok(ix) => ix,
        Err(IndexError::Cancelled) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let build_ms = t.elapsed().as_millis() as u64;
    let file = format!("index_{field}_{}.bin", job.key.index);
    let key = format!("{prefix}{file}");
    // Streamed into the store with its checksum taken on the way: a serialised copy of
    // the index would double its memory at the build's peak (+522 MiB for 2M × 128
    // HNSW_SQ, docs/BENCHMARKS.md).
    let mut crc = 0u32;
    let put = store.put_with(&key, &mut |out| {
        indexspec::write_to(
            &ix,
            &mut Crc32c {
                inner: out,
                crc: &mut crc,
            },
        )
    });
    let len = match put {
        Ok(n) => n,
        Err(e) => {
            // The segment may have been removed by compaction or a drop meanwhile.
            if !store.exists(&format!("{prefix}meta.json")).unwrap_or(true) {
                return Ok(());
            }
            return Err(e.to_string());
        }
    };
    let mut g = job.coll.write();
    let def_ok = g.meta.indexes.iter().any(|i| i.id == job.key.index);
    let Some(seg) = g
        .segments
        .iter_mut()
        .find(|s| s.id == job.key.segment)
        .filter(|_| def_ok)
    else {
        let _ = store.delete(&key);
        return Ok(());
    };
    seg.indexes[field] = Some(SegIndex::ready(
        ManifestIndex {
            field,
            index_id: job.key.index,
            file,
            crc,
            bytes: len,
            build_ms,
        },
        Arc::new(ix),
    ));
    let ts = g.flushed_ts;
    if let Err(e) = g.save_manifest(ts) {
        if let Some(seg) = g.segments.iter_mut().find(|s| s.id == job.key.segment) {
            seg.indexes[field] = None;
        }
        let _ = store.delete(&key);
        return Err(e.to_string());
    }
    // The built index replaces the interim graph.
    if let Some(seg) = g.segments.iter_mut().find(|s| s.id == job.key.segment) {
        seg.interim[field] = None;
    }
    tracing::info!(
        segment = job.key.segment,
        rows = v.len(),
        build_ms,
        "index built"
    );
    Ok(())
}

/// Rows an interim job reads: the segment's own once flushed (shared, read without the
/// lock), else a copy taken under the read lock (a growing segment's rows move as it
/// grows).
enum Rows {
    Shared(crate::segment::SharedVectors),
    F32(Vec<f32>),
    Half(Vec<u16>, bool),
}

impl Rows {
    fn slice(&self, dim: usize, elem: magpie_index::Elem) -> magpie_index::VectorSlice<'_> {
        match self {
            Rows::Shared(s) => s.slice(dim, elem),
            Rows::F32(v) => magpie_index::VectorSlice::new(v, dim),
            Rows::Half(v, bf) => magpie_index::VectorSlice::half(v, dim, *bf),
        }
    }
}

/// Grows the interim graph of one segment's vector field to the rows it has now (see
/// [`crate::segment::Interim`]). Returns whether enough rows arrived meanwhile for
/// another step. Moot jobs (segment gone or indexed, definition dropped, too few new
/// rows) return `Ok(false)`.
fn run_interim(
    job: &Job,
    cancel: &Cancel,
    threads: usize,
    p: &InterimParams,
) -> Result<bool, String> {
    use magpie_index::{HnswIndex, HnswParams, VectorIndexRead};
    let field = job.field;
    let (rows, inv, n, dim, elem, metric, base, curve_rows) = {
        let g = job.coll.read();
        let Some(seg) = g.segments.iter().find(|s| s.id == job.key.segment) else {
            return Ok(false);
        };
        if seg.indexes.get(field).is_none_or(|i| i.is_some()) {
            return Ok(false);
        }
        let Some(def) = g.meta.indexes.iter().find(|i| i.id == job.key.index) else {
            return Ok(false);
        };
        let n = seg.len();
        let cur = seg.interim[field].as_ref().filter(|i| i.index_id == def.id);
        let have = cur.map_or(0, |i| i.rows);
        let growing = seg.state == SegState::Growing;
        let due = match (have, growing) {
            (0, true) => n >= p.min_rows,
            // Sealed or flushed without a graph: its real build is due; no race with it.
            (0, false) => false,
            (_, true) => n >= have + p.step_rows,
            // Sealed while rows were waiting: cover them once.
            (_, false) => n > have,
        };
        if !due {
            return Ok(false);
        }
        let col = seg.vectors[field].get().map_err(|e| e.to_string())?;
        let rows = match col.data.share() {
            Some(sh) => Rows::Shared(sh),
            None => match col.slice().rows {
                magpie_index::Rows::F32(d) => Rows::F32(d[..n * col.dim].to_vec()),
                magpie_index::Rows::Half(d, bf) => Rows::Half(d[..n * col.dim].to_vec(), bf),
                magpie_index::Rows::Bin(_) => return Ok(false),
            },
        };
        (
            rows,
            col.inv_norms.get(..n).unwrap_or(&[]).to_vec(),
            n,
            col.dim,
            col.elem,
            def.metric_type,
            cur.map(|i| (i.graph.clone(), i.rows)),
            cur.map_or(0, |i| i.curve_rows),
        )
    };
    let v = rows.slice(dim, elem).rows_range(0, n);
    let measure = n >= 2 * curve_rows.max(1);
    let hp = HnswParams {
        m: p.m,
        ef_construction: p.ef_construction,
        threads,
        measure_recall: measure,
        ..Default::default()
    };
    let t = Instant::now();
    let built = match &base {
        Some((g, _)) => g.extend(v, &inv, &hp, cancel),
        None => HnswIndex::build_with(v, &inv, metric, &hp, cancel),
    };
    let graph = match built {
        Ok(g) => g,
        Err(IndexError::Cancelled) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let mut g = job.coll.write();
    let def_ok = g.meta.indexes.iter().any(|i| i.id == job.key.index);
    let Some(seg) = g
        .segments
        .iter_mut()
        .find(|s| s.id == job.key.segment)
        .filter(|s| def_ok && s.indexes[field].is_none())
    else {
        return Ok(false);
    };
    // Only over the graph this one grew from (a drop and re-create of the index in
    // between leaves nothing to replace).
    let cur = seg.interim[field].as_ref().map(|i| (i.index_id, i.rows));
    if cur != base.as_ref().map(|(_, r)| (job.key.index, *r)) {
        return Ok(false);
    }
    tracing::debug!(
        segment = seg.id,
        rows = n,
        added = n - base.as_ref().map_or(0, |b| b.1),
        ms = t.elapsed().as_millis() as u64,
        bytes = graph.memory_bytes(),
        "interim graph grown"
    );
    seg.interim[field] = Some(crate::segment::Interim {
        index_id: job.key.index,
        rows: n,
        graph: Arc::new(graph),
        curve_rows: if measure { n } else { curve_rows },
    });
    Ok(seg.len() > n && (seg.state != SegState::Growing || seg.len() >= n + p.step_rows))
}

/// Passes writes through, taking their CRC-32C on the way.
struct Crc32c<'a, 'b> {
    inner: &'a mut dyn std::io::Write,
    crc: &'b mut u32,
}

impl std::io::Write for Crc32c<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        *self.crc = crc32c::crc32c_append(*self.crc, &buf[..k]);
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_builds_are_retried_with_growing_backoff() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(600));
        let key = JobKey {
            coll: 1,
            segment: 2,
            index: 3,
        };
        let mut st = State::default();
        let t0 = Instant::now();
        assert!(st.admits(&key, t0));
        st.record_failure(key, "disk full".into(), t0);
        // Not before the backoff, then again (a failure used to be final).
        assert!(!st.admits(&key, t0 + Duration::from_secs(4)));
        assert!(st.admits(&key, t0 + Duration::from_secs(5)));
        st.record_failure(key, "disk full".into(), t0 + Duration::from_secs(5));
        assert_eq!(st.failed[&key].attempts, 2);
        assert!(!st.admits(&key, t0 + Duration::from_secs(14)));
        assert!(st.admits(&key, t0 + Duration::from_secs(15)));
    }

    /// A builder's shared state with no thread behind it.
    fn idle_shared() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            threads: 1,
            interim: None,
            supersedes: None,
        }
    }

    /// While the index builder holds a segment, the interim builder's running job there
    /// is cancelled, its queued ones dropped and new ones refused; other segments are not
    /// touched, and the hold ends with the last build holding it.
    #[test]
    fn a_segment_being_built_gets_no_interim_work() {
        let sh = idle_shared();
        let key = |segment, index| JobKey {
            coll: 1,
            segment,
            index,
        };
        let running = Arc::new(Cancel::new());
        let elsewhere = Arc::new(Cancel::new());
        {
            let mut st = sh.state.lock();
            st.queued.extend([key(2, 4), key(3, 3)]);
            st.running = Some((key(2, 3), running.clone()));
        }
        let now = Instant::now();
        let first = Hold::new(&sh, 1, 2);
        assert!(running.is_cancelled());
        {
            let st = sh.state.lock();
            assert_eq!(st.queued, HashSet::from([key(3, 3)]));
            assert!(!st.admits(&key(2, 5), now));
            assert!(st.admits(&key(4, 3), now));
        }
        let second = Hold::new(&sh, 1, 2);
        drop(first);
        assert!(!sh.state.lock().admits(&key(2, 5), now));
        drop(second);
        assert!(sh.state.lock().admits(&key(2, 5), now));
        // A hold on another segment cancels nothing running elsewhere.
        sh.state.lock().running = Some((key(3, 3), elsewhere.clone()));
        drop(Hold::new(&sh, 1, 2));
        assert!(!elsewhere.is_cancelled());
    }

    /// A real build holds the interim builder off its segment: an interim job running
    /// there is cancelled when the build starts, and the hold ends with the build.
    #[test]
    fn an_index_build_cancels_the_interim_job_on_its_segment() {
        use crate::{
            CollectionSchema, Consistency, DataType, Engine, EngineConfig, FieldSchema, IndexMeta,
            Metric,
        };
        let d = tempfile::tempdir().unwrap();
        // No build and no interim graph of their own: the test runs the build.
        let e = Engine::open(
            d.path(),
            EngineConfig {
                index_min_rows: usize::MAX,
                interim_min_rows: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let schema = CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("vec", DataType::FloatVector).with_dim(4),
            ],
            enable_dynamic_field: false,
            description: String::new(),
            functions: Vec::new(),
        };
        let hnsw = IndexMeta {
            id: 0,
            index_name: "vec".into(),
            field_name: "vec".into(),
            index_type: "HNSW".into(),
            metric_type: Metric::L2,
            params: Default::default(),
        };
        e.create_collection("c", schema, vec![hnsw], Consistency::Strong, "")
            .unwrap();
        let rows: Vec<serde_json::Value> = (0..300)
            .map(|i| serde_json::json!({"id": i, "vec": [i as f32, 1.0, 2.0, (i % 7) as f32]}))
            .collect();
        e.insert("c", None, &rows).unwrap();
        e.flush("c").unwrap();
        let coll = e.coll_ref("c").unwrap();
        let key = {
            let g = coll.read();
            JobKey {
                coll: g.meta.id,
                segment: g.segments[0].id,
                index: g.meta.indexes[0].id,
            }
        };
        let interim = idle_shared();
        let growing = Arc::new(Cancel::new());
        interim.state.lock().running = Some((key, growing.clone()));
        let job = Job {
            key,
            coll: coll.clone(),
            field: 0,
        };
        run(&job, &Cancel::new(), 1, Some(&interim)).unwrap();
        assert!(growing.is_cancelled(), "the interim job raced the build");
        assert!(
            interim.state.lock().held.is_empty(),
            "the hold outlived the build"
        );
        assert!(coll.read().segments[0].indexes[0].is_some(), "built");
    }
}

/// Default nice value of the builder threads (`EngineConfig::build_nice`).
///
/// Builds are background work: on 2 cores, REST inserts with 4 clients went from 41–42k
/// to 56–65k rows/s when the builders ran at nice 10 instead of 0 (docs/BENCHMARKS.md,
/// "REST inserts with concurrent clients"), because the interim graph over the rows
/// being inserted no longer took a core from the requests. Builds still get the CPU the
/// requests leave (and about a tenth of it under full load, by the kernel's weights), so
/// they catch up when the burst ends.
pub const DEFAULT_BUILD_NICE: i32 = 10;

/// Sets the calling thread's nice value (Linux applies `setpriority(PRIO_PROCESS, 0,
/// ..)` to the calling thread only, and threads it starts inherit it). 0 leaves it as it
/// is. Best effort: where it fails, or off Linux, the thread keeps its priority.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod nice_tests {
    use super::*;

    /// The builder thread runs at the nice value it was started with.
    #[test]
    fn builder_threads_run_at_their_nice_value() {
        // SAFETY: getpriority takes plain integers.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let seen = std::thread::spawn(|| {
            lower_priority(7);
            // SAFETY: getpriority takes plain integers.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .unwrap();
        // An unprivileged process may only raise its nice value; 7 is a raise from
        // the default 0 (or left as it was where the tests already run at 7 or more;
        // root may also lower it, to 7).
        assert!(
            seen == 7 || (seen == before && before > 7),
            "nice {seen}, before {before}"
        );
        // SAFETY: as above.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(here, before, "only the calling thread changed");
    }
}
