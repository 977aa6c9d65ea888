//! Distance evaluation shared by the graph and IVF indexes: a segment's vectors plus the
//! metric, expressed as a *distance* (smaller = closer) because graph search is written
//! that way. `distance = -score` for every metric, so the crate-wide "greater score =
//! closer" convention is recovered by negating once at the API boundary.

use crate::{Metric, VectorSlice};
use std::cmp::Ordering;

#[derive(Clone, Copy)]
pub(crate) struct Space<'a> {
    pub v: VectorSlice<'a>,
    pub inv: &'a [f32],
    pub metric: Metric,
}

impl<'a> Space<'a> {
    pub fn new(v: VectorSlice<'a>, inv: &'a [f32], metric: Metric) -> Self {
        Self { v, inv, metric }
    }

    /// Starts loading row `i` into cache.
    #[inline(always)]
    pub fn prefetch(&self, i: u32, lines: usize) {
        self.v.prefetch(i as usize, lines)
    }

    /// Distance from a prepared query (see [`Space::prepare`]) to row `i`.
    #[inline(always)]
    pub fn dist(&self, q: &[f32], i: u32) -> f32 {
        match self.metric {
            Metric::L2 => self.v.l2_sq(q, i as usize),
            Metric::IP | Metric::BM25 => -self.v.dot(q, i as usize),
            Metric::COSINE => -self.v.dot(q, i as usize) * self.inv[i as usize],
            // Graph and IVF indexes refuse binary metrics at build; kept correct anyway.
            Metric::HAMMING | Metric::JACCARD => -self.v.score(self.metric, q, i as usize, 1.0),
        }
    }

    /// Distance between two stored rows.
    #[inline]
    pub fn dist_nodes(&self, a: u32, b: u32) -> f32 {
        match self.v.rows {
            crate::Rows::F32(_) => {
                let (x, y) = (self.v.row(a as usize), self.v.row(b as usize));
                match self.metric {
                    Metric::L2 => magpie_linalg::l2_sq(&x, &y),
                    Metric::IP | Metric::BM25 => -magpie_linalg::dot(&x, &y),
                    Metric::COSINE => {
                        -magpie_linalg::dot(&x, &y) * self.inv[a as usize] * self.inv[b as usize]
                    }
                    Metric::HAMMING | Metric::JACCARD => -self.metric.score(&x, &y, 1.0),
                }
            }
            crate::Rows::Half(..) | crate::Rows::Bin(_) => {
                let x = self.v.row(a as usize);
                match self.metric {
                    Metric::L2 => self.v.l2_sq(&x, b as usize),
                    Metric::IP | Metric::BM25 => -self.v.dot(&x, b as usize),
                    Metric::COSINE => {
                        -self.v.dot(&x, b as usize) * self.inv[a as usize] * self.inv[b as usize]
                    }
                    Metric::HAMMING | Metric::JACCARD => {
                        -self.v.score(self.metric, &x, b as usize, 1.0)
                    }
                }
            }
        }
    }

    /// A query ready for [`Space::dist`]: unit length for COSINE, as given otherwise.
    pub fn prepare(&self, q: &[f32]) -> Vec<f32> {
        let mut q = q.to_vec();
        if self.metric == Metric::COSINE {
            magpie_linalg::normalize(&mut q);
        }
        q
    }

    /// Row `i` as a prepared query.
    pub fn node_query(&self, i: u32) -> Vec<f32> {
        let mut q = self.v.row(i as usize).into_owned();
        if self.metric == Metric::COSINE {
            let s = self.inv[i as usize];
            q.iter_mut().for_each(|x| *x *= s);
        }
        q
    }
}

/// A candidate during graph or list search: distance (smaller = closer) and row offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand {
    pub d: f32,
    pub id: u32,
}

impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    #[inline]
    fn cmp(&self, o: &Self) -> Ordering {
        self.d
            .partial_cmp(&o.d)
            .unwrap_or(Ordering::Equal)
            .then(self.id.cmp(&o.id))
    }
}

/// Visited marks with an epoch, so clearing between searches is O(1).
pub(crate) struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Visited {
    pub fn new(n: usize) -> Self {
        Self {
            marks: vec![0; n],
            epoch: 0,
        }
    }
    pub fn reset(&mut self, n: usize) {
        if self.marks.len() != n {
            self.marks = vec![0; n];
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }
    /// Marks `i`; true if it was already marked in this epoch.
    #[inline(always)]
    pub fn check_set(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.epoch {
            true
        } else {
            *m = self.epoch;
            false
        }
    }
    #[inline(always)]
    pub fn prefetch(&self, i: u32) {
        if let Some(m) = self.marks.get(i as usize..i as usize + 1) {
            magpie_linalg::prefetch(m, 1);
        }
    }
}

/// A pool of [`Visited`] buffers so concurrent searches on one index do not allocate.
#[derive(Default)]
pub(crate) struct VisitedPool(parking_lot::Mutex<Vec<Visited>>);

impl VisitedPool {
    pub fn get(&self, n: usize) -> Visited {
        let mut v = self.0.lock().pop().unwrap_or_else(|| Visited::new(n));
        v.reset(n);
        v
    }
    pub fn put(&self, v: Visited) {
        let mut g = self.0.lock();
        if g.len() < 64 {
            g.push(v);
        }
    }
}

/// splitmix64: a small deterministic generator for level draws and sampling.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `t` build threads, 0 meaning every available core.
pub(crate) fn resolve_threads(t: usize) -> usize {
    if t == 0 {
        std::thread::available_parallelism().map_or(1, |x| x.get())
    } else {
        t
    }
}

/// `want` distinct row offsets out of `n` (all of them when `want >= n`), deterministic
/// in `seed` (a partial Fisher–Yates shuffle).
pub(crate) fn sample(n: usize, want: usize, seed: u64) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    if want >= n {
        return idx;
    }
    for i in 0..want {
        let j = i + (splitmix64(seed ^ i as u64) % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(want);
    idx
}

/// Uniform in (0, 1].
pub(crate) fn unit(x: u64) -> f64 {
    ((splitmix64(x) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}
