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

use crate::catalog::ManifestIndex;
use crate::collection::Collection;
use crate::fsutil;
use crate::indexspec;
use crate::segment::{SegIndex, SegState};
use magpie_index::{Cancel, IndexError, VectorSlice};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

pub(crate) type CollRef = Arc<RwLock<Collection>>;

/// Identifies one build: a collection, one of its segments, and an index definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct JobKey {
    pub coll: u64,
    pub segment: u64,
    pub index: u64,
}

pub(crate) struct Job {
    pub key: JobKey,
    pub coll: CollRef,
    /// Vector field, by position among the schema's vector fields.
    pub field: usize,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    queued: HashSet<JobKey>,
    running: Option<(JobKey, Arc<Cancel>)>,
    failed: HashMap<JobKey, String>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    threads: usize,
}

pub(crate) struct Builder {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Builder {
    /// Starts the builder thread. `threads` is passed to index builds (0 = all cores).
    pub fn start(threads: usize) -> Builder {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            threads,
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("magpie-index-builder".into())
            .spawn(move || worker(s))
            .expect("spawn index builder thread");
        Builder {
            shared,
            handle: Mutex::new(Some(handle)),
        }
    }

    /// Queues a job unless it is queued, running, or failed before.
    pub fn enqueue(&self, job: Job) {
        let mut st = self.shared.state.lock();
        if st.shutdown
            || st.queued.contains(&job.key)
            || st.failed.contains_key(&job.key)
            || st.running.as_ref().is_some_and(|r| r.0 == job.key)
        {
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
            .map(|(k, m)| format!("segment {}: {m}", k.segment))
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
        let r = run(&job, &cancel, sh.threads);
        let mut st = sh.state.lock();
        st.running = None;
        if let Err(msg) = r {
            tracing::warn!(segment = job.key.segment, "index build failed: {msg}");
            st.failed.insert(job.key, msg);
        }
        sh.done.notify_all();
    }
}

/// Builds, persists and attaches one index. `Ok` also covers jobs that became moot (the
/// segment was compacted away, the index dropped, the build cancelled).
fn run(job: &Job, cancel: &Cancel, threads: usize) -> Result<(), String> {
    let field = job.field;
    let (data, inv, dim, metric, kind, dir) = {
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
        let Some(data) = col.data.share() else {
            return Ok(());
        };
        // The segment already holds 1/‖x‖ per row; copy it rather than recompute.
        (
            data,
            col.inv_norms.clone(),
            col.dim,
            def.metric_type,
            kind,
            g.segments_dir().join(seg.id.to_string()),
        )
    };
    let v = VectorSlice::new(data.as_slice(), dim);
    let t = Instant::now();
    let ix = match indexspec::build(&kind, v, &inv, metric, cancel) {
        Ok(ix) => ix,
        Err(IndexError::Cancelled) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let build_ms = t.elapsed().as_millis() as u64;
    let bytes = indexspec::to_bytes(&ix);
    let file = format!("index_{field}_{}.bin", job.key.index);
    let path = dir.join(&file);
    if let Err(e) = fsutil::write_synced(&path, &bytes).and_then(|_| fsutil::sync_dir(&dir)) {
        // The segment directory may have been removed by compaction or a drop meanwhile.
        if !dir.exists() {
            return Ok(());
        }
        return Err(e.to_string());
    }
    let mut g = job.coll.write();
    let def_ok = g.meta.indexes.iter().any(|i| i.id == job.key.index);
    let Some(seg) = g
        .segments
        .iter_mut()
        .find(|s| s.id == job.key.segment)
        .filter(|_| def_ok)
    else {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    seg.indexes[field] = Some(SegIndex {
        file: ManifestIndex {
            field,
            index_id: job.key.index,
            file,
            crc: crc32c::crc32c(&bytes),
            bytes: bytes.len() as u64,
            build_ms,
        },
        index: Arc::new(ix),
    });
    let ts = g.flushed_ts;
    if let Err(e) = g.save_manifest(ts) {
        if let Some(seg) = g.segments.iter_mut().find(|s| s.id == job.key.segment) {
            seg.indexes[field] = None;
        }
        let _ = std::fs::remove_file(&path);
        return Err(e.to_string());
    }
    tracing::info!(
        segment = job.key.segment,
        rows = v.len(),
        build_ms,
        "index built"
    );
    Ok(())
}
