//! Sparse vectors and their inverted index (Milvus's `SparseFloatVector`,
//! `SPARSE_INVERTED_INDEX` / `SPARSE_WAND`, metric IP).
//!
//! # Layout
//! [`SparseIndex`] holds one posting list per dimension ("term") that occurs in the
//! segment: the rows that have it (ascending offsets) and their values, in two flat
//! arrays shared by all lists (CSR), plus the largest and smallest value of each list
//! for the upper bounds below. That is 8 bytes per stored non-zero, the same as the raw
//! vectors (`u32` index + `f32` value), plus 16 bytes per distinct term.
//!
//! # Search
//! The score is the inner product over the query's terms. Three exact algorithms (the
//! `inverted_index_algo` of Milvus) give the same top-k; they differ in what they touch:
//! - [`SparseAlgo::TaatNaive`]: term at a time; every posting of every query term is
//!   added into a score per row, then the best rows are picked. Cost: all postings.
//! - [`SparseAlgo::DaatWand`]: document at a time with WAND (Broder et al., 2003): lists
//!   are kept sorted by their current row; the *pivot* is the first list at which the sum
//!   of upper bounds passes the current k-th score; rows before the pivot's row cannot
//!   enter the top-k and are skipped by seeking.
//! - [`SparseAlgo::DaatMaxScore`]: document at a time with MaxScore (Turtle & Flood,
//!   1995): lists sorted by upper bound; the longest prefix whose bounds sum to at most
//!   the k-th score is *non-essential* (a row only in those cannot enter), so candidates
//!   come from the essential lists and the others are only probed, stopping as soon as
//!   the bound falls below the k-th score.
//!
//! A term's upper bound is `max(w·max, w·min, 0)` for query weight `w`, so negative
//! values are handled. Rows that share no term with the query are never returned (their
//! score would be 0). `drop_ratio` drops that fraction of the query's terms with the
//! smallest absolute weights first (Milvus's `drop_ratio_search`): faster, approximate.
//! Pruning compares with a small relative margin, so rounding can never drop a row that
//! belongs in the top-k.

use crate::{Bitset, IndexError, Result, Scored, TopK};

/// A sparse vector: strictly increasing indices with their finite values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseVector {
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// Largest index a sparse vector may use (Milvus: indices in `[0, 2^32 - 1)`).
pub const MAX_SPARSE_INDEX: u32 = u32::MAX - 1;

impl SparseVector {
    /// From `(index, value)` pairs in any order; duplicates, the index `u32::MAX` and
    /// non-finite values are refused with a message naming the offending entry.
    pub fn from_pairs(mut pairs: Vec<(u32, f32)>) -> std::result::Result<Self, String> {
        for &(i, v) in &pairs {
            if i > MAX_SPARSE_INDEX {
                return Err(format!(
                    "sparse index {i} is out of range (indices are 0..={MAX_SPARSE_INDEX})"
                ));
            }
            if !v.is_finite() {
                return Err(format!(
                    "the value at sparse index {i} is not a finite float32"
                ));
            }
        }
        pairs.sort_unstable_by_key(|p| p.0);
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("sparse index {} appears more than once", w[0].0));
        }
        Ok(SparseVector {
            indices: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        })
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Number of non-zero entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.indices
            .iter()
            .copied()
            .zip(self.values.iter().copied())
    }

    /// Inner product (a merge of the two sorted index lists).
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (a, b) = (&self.indices, &other.indices);
        let (mut i, mut j, mut s) = (0, 0, 0.0f32);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    s += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        s
    }

    /// The score of `doc` for this query as [`SparseIndex::search`] computes it: `None`
    /// when they share no index at which the query is non-zero, else the inner product.
    pub fn score(&self, doc: &SparseVector) -> Option<f32> {
        let (a, b) = (&self.indices, &doc.indices);
        let (mut i, mut j, mut s, mut hit) = (0, 0, 0.0f32, false);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if self.values[i] != 0.0 {
                        hit = true;
                        s += self.values[i] * doc.values[j];
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        hit.then_some(s)
    }

    /// [`Self::score`] under BM25 (`self` holds the query's term weights, `doc` the
    /// row's term frequencies): `None` when they share no term.
    pub fn score_with(&self, doc: &SparseVector, scoring: Scoring) -> Option<f32> {
        let Scoring::Bm25(p) = scoring else {
            return self.score(doc);
        };
        let dl = doc.len();
        let (a, b) = (&self.indices, &doc.indices);
        let (mut i, mut j, mut s, mut hit) = (0, 0, 0.0f32, false);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if self.values[i] != 0.0 {
                        hit = true;
                        s += p.term(self.values[i], doc.values[j], dl);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        hit.then_some(s)
    }

    /// The sum of the values (a BM25 document's length in terms).
    pub fn len(&self) -> f32 {
        self.values.iter().sum()
    }

    /// The vector without the `ratio` fraction of its entries with the smallest absolute
    /// values (`drop_ratio_search`).
    pub fn drop_smallest(&self, ratio: f32) -> SparseVector {
        let drop = ((self.nnz() as f32) * ratio).floor() as usize;
        if drop == 0 {
            return self.clone();
        }
        let mut order: Vec<usize> = (0..self.nnz()).collect();
        order.sort_by(|&a, &b| {
            self.values[a]
                .abs()
                .total_cmp(&self.values[b].abs())
                .then(a.cmp(&b))
        });
        let mut keep = vec![true; self.nnz()];
        for &i in &order[..drop.min(order.len())] {
            keep[i] = false;
        }
        SparseVector {
            indices: (0..self.nnz())
                .filter(|&i| keep[i])
                .map(|i| self.indices[i])
                .collect(),
            values: (0..self.nnz())
                .filter(|&i| keep[i])
                .map(|i| self.values[i])
                .collect(),
        }
    }
}

/// How [`SparseIndex::search`] walks the posting lists (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SparseAlgo {
    TaatNaive,
    DaatWand,
    #[default]
    DaatMaxScore,
}

impl SparseAlgo {
    /// Milvus's `inverted_index_algo` names.
    pub fn parse(s: &str) -> Option<SparseAlgo> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TAAT_NAIVE" => SparseAlgo::TaatNaive,
            "DAAT_WAND" => SparseAlgo::DaatWand,
            "DAAT_MAXSCORE" => SparseAlgo::DaatMaxScore,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SparseAlgo::TaatNaive => "TAAT_NAIVE",
            SparseAlgo::DaatWand => "DAAT_WAND",
            SparseAlgo::DaatMaxScore => "DAAT_MAXSCORE",
        }
    }
}

/// BM25's parameters and the collection's average document length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25 {
    pub k1: f32,
    pub b: f32,
    pub avgdl: f32,
}

impl Bm25 {
    /// One term's part of a row's score: query weight `w` (its IDF times its count in
    /// the query), frequency `tf` in a row of `dl` terms.
    #[inline]
    pub fn term(&self, w: f32, tf: f32, dl: f32) -> f32 {
        let norm = self.k1 * (1.0 - self.b + self.b * dl / self.avgdl.max(f32::MIN_POSITIVE));
        w * (tf * (self.k1 + 1.0)) / (tf + norm)
    }
}

/// How a row's values and the query's weights make a score.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Scoring {
    /// The inner product.
    #[default]
    Ip,
    /// BM25 over term frequencies (the query holds each term's weight).
    Bm25(Bm25),
}

/// Parameters of one sparse search.
#[derive(Clone, Copy, Debug)]
pub struct SparseSearch<'a> {
    pub scoring: Scoring,
    pub k: usize,
    /// Rows that may be returned (`None`: all).
    pub allow: Option<&'a Bitset>,
    pub algo: SparseAlgo,
    /// Fraction of the query's smallest entries to drop, in `[0, 1)`.
    pub drop_ratio: f32,
    /// Keep only scores `> min_score` / `<= max_score` (range search).
    pub min_score: Option<f32>,
    pub max_score: Option<f32>,
}

impl SparseSearch<'_> {
    pub fn top_k(k: usize) -> Self {
        SparseSearch {
            scoring: Scoring::Ip,
            k,
            allow: None,
            algo: SparseAlgo::default(),
            drop_ratio: 0.0,
            min_score: None,
            max_score: None,
        }
    }

    fn admits(&self, row: u32, score: f32) -> bool {
        self.allow.is_none_or(|a| a.get(row as usize))
            && self.min_score.is_none_or(|m| score > m)
            && self.max_score.is_none_or(|m| score <= m)
    }
}

/// True when a row bounded by `bound` cannot beat `theta` (with a margin for rounding).
#[inline]
fn cannot_beat(bound: f32, theta: f32) -> bool {
    bound + (bound.abs() + theta.abs()) * 1e-5 < theta
}

/// The inverted index of one segment's sparse vectors (module docs).
#[derive(Clone, Debug, Default)]
pub struct SparseIndex {
    n_rows: usize,
    /// Distinct terms, ascending.
    terms: Vec<u32>,
    /// Posting list `t` is `rows[starts[t]..starts[t + 1]]` (and the same of `vals`).
    starts: Vec<usize>,
    rows: Vec<u32>,
    vals: Vec<f32>,
    max_val: Vec<f32>,
    min_val: Vec<f32>,
    /// Per row, the sum of its values (a BM25 document's length); per list, the
    /// smallest such length among its rows (for BM25's upper bounds).
    row_len: Vec<f32>,
    min_len: Vec<f32>,
    /// The sum of `row_len` (so BM25's corpus statistics cost nothing per query when
    /// every row is visible, and little when few are not).
    total_len: f64,
}

impl SparseIndex {
    /// Builds the index of `n_rows` rows from `(row, vector)` pairs (rows need not be in
    /// order and may be missing: a row without a vector has no postings).
    pub fn build<'v>(
        n_rows: usize,
        vectors: impl IntoIterator<Item = (u32, &'v SparseVector)>,
    ) -> Result<SparseIndex> {
        let mut entries: Vec<(u32, u32, f32)> = Vec::new();
        let mut row_len = vec![0.0f32; n_rows];
        for (row, v) in vectors {
            if row as usize >= n_rows {
                return Err(IndexError::Param(format!(
                    "row {row} is outside the segment's {n_rows} rows"
                )));
            }
            row_len[row as usize] = v.len();
            entries.extend(v.iter().map(|(t, x)| (t, row, x)));
        }
        entries.sort_unstable_by_key(|e| (e.0, e.1));
        let mut ix = SparseIndex {
            n_rows,
            rows: Vec::with_capacity(entries.len()),
            vals: Vec::with_capacity(entries.len()),
            ..Default::default()
        };
        for (i, &(t, row, x)) in entries.iter().enumerate() {
            if i > 0 && entries[i - 1].0 == t && entries[i - 1].1 == row {
                return Err(IndexError::Param(format!(
                    "row {row} is given more than once"
                )));
            }
            if ix.terms.last() != Some(&t) {
                ix.terms.push(t);
                ix.starts.push(ix.rows.len());
                ix.max_val.push(x);
                ix.min_val.push(x);
            }
            let last = ix.terms.len() - 1;
            ix.max_val[last] = ix.max_val[last].max(x);
            ix.min_val[last] = ix.min_val[last].min(x);
            ix.rows.push(row);
            ix.vals.push(x);
        }
        ix.starts.push(ix.rows.len());
        ix.min_len = (0..ix.terms.len())
            .map(|l| {
                let (rows, _) = ix.list(l);
                rows.iter()
                    .map(|&r| row_len[r as usize])
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();
        ix.total_len = row_len.iter().map(|&x| x as f64).sum();
        ix.row_len = row_len;
        Ok(ix)
    }

    pub fn rows(&self) -> usize {
        self.n_rows
    }

    /// Stored non-zeros.
    pub fn postings(&self) -> usize {
        self.rows.len()
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.rows.len() * 8 + self.terms.len() * 4 * 4 + self.starts.len() * 8 + self.n_rows * 4
    }

    /// Row `r`'s length (the sum of its values).
    pub fn row_len(&self, r: usize) -> f32 {
        self.row_len[r]
    }

    /// Rows in `allow` (all when `None`) that hold `term` (BM25's document frequency).
    pub fn doc_freq(&self, term: u32, allow: Option<&Bitset>) -> usize {
        let Ok(l) = self.terms.binary_search(&term) else {
            return 0;
        };
        let (rows, _) = self.list(l);
        match allow {
            None => rows.len(),
            Some(a) => rows.iter().filter(|&&r| a.get(r as usize)).count(),
        }
    }

    /// Rows in `allow` and the sum of their lengths (BM25's corpus statistics).
    pub fn len_stats(&self, allow: Option<&Bitset>) -> (usize, f64) {
        let Some(a) = allow else {
            return (self.n_rows, self.total_len);
        };
        let ones = a.count_ones();
        if ones * 2 >= self.n_rows {
            // Mostly visible: subtract the rows left out.
            let mut hidden = 0.0;
            for (wi, &w) in a.words().iter().enumerate() {
                let mut z = !w;
                while z != 0 {
                    let r = wi * 64 + z.trailing_zeros() as usize;
                    z &= z - 1;
                    if r >= self.n_rows {
                        break;
                    }
                    hidden += self.row_len[r] as f64;
                }
            }
            (ones, self.total_len - hidden)
        } else {
            let sum = a.iter_ones().map(|r| self.row_len[r] as f64).sum();
            (ones, sum)
        }
    }

    /// The query's terms that occur here: `(list, weight, upper bound)` in query order.
    fn lists(&self, q: &SparseVector, scoring: Scoring) -> Vec<(usize, f32, f32)> {
        q.iter()
            .filter(|(_, w)| *w != 0.0)
            .filter_map(|(t, w)| {
                let l = self.terms.binary_search(&t).ok()?;
                let ub = match scoring {
                    Scoring::Ip => (w * self.max_val[l]).max(w * self.min_val[l]),
                    // Increasing in tf, decreasing in the row's length (for tf, w >= 0).
                    Scoring::Bm25(p) => p.term(w, self.max_val[l], self.min_len[l]),
                };
                Some((l, w, ub.max(0.0)))
            })
            .collect()
    }

    #[inline]
    fn contrib(&self, scoring: Scoring, w: f32, x: f32, row: u32) -> f32 {
        match scoring {
            Scoring::Ip => w * x,
            Scoring::Bm25(p) => p.term(w, x, self.row_len[row as usize]),
        }
    }

    fn list(&self, l: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.starts[l], self.starts[l + 1]);
        (&self.rows[a..b], &self.vals[a..b])
    }

    /// The best `p.k` rows by inner product with `q` (descending score, ties by offset).
    pub fn search(&self, q: &SparseVector, p: &SparseSearch<'_>) -> Result<Vec<Scored>> {
        if !(0.0..1.0).contains(&p.drop_ratio) {
            return Err(IndexError::Param(format!(
                "drop_ratio_search must be in [0, 1), got {}",
                p.drop_ratio
            )));
        }
        if let Some(a) = p.allow {
            if a.len() != self.n_rows {
                return Err(IndexError::Param(format!(
                    "the filter covers {} rows, the segment has {}",
                    a.len(),
                    self.n_rows
                )));
            }
        }
        let dropped;
        let q = if p.drop_ratio > 0.0 {
            dropped = q.drop_smallest(p.drop_ratio);
            &dropped
        } else {
            q
        };
        let lists = self.lists(q, p.scoring);
        if lists.is_empty() || p.k == 0 {
            return Ok(Vec::new());
        }
        Ok(match p.algo {
            SparseAlgo::TaatNaive => self.taat(&lists, p),
            SparseAlgo::DaatWand => self.wand(&lists, p),
            SparseAlgo::DaatMaxScore => self.maxscore(&lists, p),
        })
    }

    fn taat(&self, lists: &[(usize, f32, f32)], p: &SparseSearch<'_>) -> Vec<Scored> {
        let mut acc = vec![0.0f32; self.n_rows];
        let mut hit = Bitset::zeros(self.n_rows);
        for &(l, w, _) in lists {
            let (rows, vals) = self.list(l);
            for (&r, &x) in rows.iter().zip(vals) {
                acc[r as usize] += self.contrib(p.scoring, w, x, r);
                hit.set(r as usize, true);
            }
        }
        let mut top = TopK::new(p.k);
        for r in hit.iter_ones() {
            if p.admits(r as u32, acc[r]) {
                top.push(r as u32, acc[r]);
            }
        }
        top.into_sorted()
    }

    /// A cursor at the start of each of the query's lists.
    fn cursors(&self, lists: &[(usize, f32, f32)]) -> Vec<Cursor<'_>> {
        lists
            .iter()
            .enumerate()
            .map(|(qi, &(l, w, ub))| {
                let (rows, vals) = self.list(l);
                Cursor {
                    rows,
                    vals,
                    pos: 0,
                    w,
                    ub,
                    qi,
                }
            })
            .collect()
    }

    fn wand(&self, lists: &[(usize, f32, f32)], p: &SparseSearch<'_>) -> Vec<Scored> {
        let mut cur = self.cursors(lists);
        let mut top = TopK::new(p.k);
        let mut contrib = vec![0.0f32; lists.len()];
        loop {
            cur.retain(|c| c.pos < c.rows.len());
            if cur.is_empty() {
                break;
            }
            cur.sort_by_key(|c| c.doc());
            let theta = top.threshold();
            let mut acc = 0.0f32;
            let mut pivot = None;
            for (i, c) in cur.iter().enumerate() {
                acc += c.ub;
                if !cannot_beat(acc, theta) {
                    pivot = Some(i);
                    break;
                }
            }
            let Some(pv) = pivot else { break };
            let d = cur[pv].doc();
            if cur[0].doc() == d {
                // Every list before the pivot is at `d`: score it.
                for c in contrib.iter_mut() {
                    *c = 0.0;
                }
                for c in cur.iter_mut() {
                    if c.pos < c.rows.len() && c.doc() == d {
                        contrib[c.qi] = self.contrib(p.scoring, c.w, c.vals[c.pos], d);
                        c.pos += 1;
                    }
                }
                let s: f32 = contrib.iter().sum();
                if p.admits(d, s) {
                    top.push(d, s);
                }
            } else {
                for c in cur[..pv].iter_mut() {
                    c.seek(d);
                }
            }
        }
        top.into_sorted()
    }

    fn maxscore(&self, lists: &[(usize, f32, f32)], p: &SparseSearch<'_>) -> Vec<Scored> {
        let mut cur = self.cursors(lists);
        // Ascending upper bound; prefix[i] = sum of the bounds of lists 0..i.
        cur.sort_by(|a, b| a.ub.total_cmp(&b.ub));
        let mut prefix = vec![0.0f32; cur.len() + 1];
        for i in 0..cur.len() {
            prefix[i + 1] = prefix[i] + cur[i].ub;
        }
        let mut top = TopK::new(p.k);
        let mut contrib = vec![0.0f32; lists.len()];
        // Lists [0, first) are non-essential.
        let mut first = 0;
        loop {
            let theta = top.threshold();
            while first < cur.len() && cannot_beat(prefix[first + 1], theta) {
                first += 1;
            }
            if first == cur.len() {
                break;
            }
            let Some(d) = cur[first..]
                .iter()
                .filter(|c| c.pos < c.rows.len())
                .map(|c| c.doc())
                .min()
            else {
                break;
            };
            for c in contrib.iter_mut() {
                *c = 0.0;
            }
            let mut partial = 0.0f32;
            for c in cur[first..].iter_mut() {
                if c.pos < c.rows.len() && c.doc() == d {
                    let x = self.contrib(p.scoring, c.w, c.vals[c.pos], d);
                    contrib[c.qi] = x;
                    partial += x;
                    c.pos += 1;
                }
            }
            if !p.allow.is_none_or(|a| a.get(d as usize)) {
                continue;
            }
            // Probe the non-essential lists, largest bound first, while the row can still
            // enter.
            let mut alive = true;
            for i in (0..first).rev() {
                if cannot_beat(partial + prefix[i + 1], theta) {
                    alive = false;
                    break;
                }
                let c = &mut cur[i];
                c.seek(d);
                if c.pos < c.rows.len() && c.doc() == d {
                    let x = self.contrib(p.scoring, c.w, c.vals[c.pos], d);
                    contrib[c.qi] = x;
                    partial += x;
                }
            }
            if !alive {
                continue;
            }
            let s: f32 = contrib.iter().sum();
            if p.admits(d, s) {
                top.push(d, s);
            }
        }
        top.into_sorted()
    }
}

struct Cursor<'a> {
    rows: &'a [u32],
    vals: &'a [f32],
    pos: usize,
    w: f32,
    ub: f32,
    /// Position of the term in the query (scores are summed in query order).
    qi: usize,
}

impl Cursor<'_> {
    #[inline]
    fn doc(&self) -> u32 {
        self.rows.get(self.pos).copied().unwrap_or(u32::MAX)
    }

    /// Moves to the first row `>= d` (galloping, then binary search).
    fn seek(&mut self, d: u32) {
        if self.doc() >= d {
            return;
        }
        let mut step = 1;
        let mut hi = self.pos + 1;
        while hi < self.rows.len() && self.rows[hi] < d {
            self.pos = hi;
            step *= 2;
            hi = self.pos + step;
        }
        let hi = hi.min(self.rows.len());
        self.pos += self.rows[self.pos..hi].partition_point(|&r| r < d);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn corpus_statistics_match_a_plain_sum() {
        let vs: Vec<SparseVector> = (0..300)
            .map(|i| SparseVector::from_pairs(vec![(i % 7, 1.0 + (i % 5) as f32)]).unwrap())
            .collect();
        let ix =
            SparseIndex::build(300, vs.iter().enumerate().map(|(i, v)| (i as u32, v))).unwrap();
        let plain = |keep: &dyn Fn(usize) -> bool| {
            let rows: Vec<usize> = (0..300).filter(|&r| keep(r)).collect();
            (
                rows.len(),
                rows.iter().map(|&r| vs[r].len() as f64).sum::<f64>(),
            )
        };
        assert_eq!(ix.len_stats(None), plain(&|_| true));
        // Few rows hidden (the subtracting path) and most rows hidden.
        for keep in [
            &(|r: usize| r % 50 != 3) as &dyn Fn(usize) -> bool,
            &|r: usize| r.is_multiple_of(9),
        ] {
            let mut b = Bitset::zeros(300);
            (0..300).filter(|&r| keep(r)).for_each(|r| b.set(r, true));
            let (n, s) = ix.len_stats(Some(&b));
            let (pn, ps) = plain(keep);
            assert_eq!(n, pn);
            assert!((s - ps).abs() < 1e-6, "{s} vs {ps}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn brute(rows: &[Option<SparseVector>], q: &SparseVector, p: &SparseSearch) -> Vec<Scored> {
        let mut top = TopK::new(p.k);
        for (i, v) in rows.iter().enumerate() {
            let Some(v) = v else { continue };
            let Some(s) = q.score_with(v, p.scoring) else {
                continue;
            };
            if p.admits(i as u32, s) {
                top.push(i as u32, s);
            }
        }
        top.into_sorted()
    }

    fn vector(dims: u32, max_nnz: usize) -> impl Strategy<Value = SparseVector> {
        // Values on a grid of eighths, so that every sum is exact and the algorithms must
        // agree bit for bit, ties included.
        prop::collection::btree_map(0..dims, -8i32..=32, 0..max_nnz).prop_map(|m| {
            SparseVector::from_pairs(m.into_iter().map(|(i, x)| (i, x as f32 / 8.0)).collect())
                .unwrap()
        })
    }

    proptest! {
        #[test]
        fn every_algorithm_equals_brute_force(
            rows in prop::collection::vec(prop::option::weighted(0.9, vector(40, 12)), 0..120),
            q in vector(40, 10),
            k in 1usize..15,
            filter_seed in any::<u64>(),
            filtered in any::<bool>(),
            ranged in any::<bool>(),
            bm25 in any::<bool>(),
        ) {
            // BM25 needs positive frequencies and weights.
            let positive = |v: &SparseVector| SparseVector::from_pairs(v.iter().map(|(i, x)| (i, x.abs() + 0.125)).collect()).unwrap();
            let (rows, q) = if bm25 {
                (rows.iter().map(|r| r.as_ref().map(positive)).collect::<Vec<_>>(), positive(&q))
            } else {
                (rows, q)
            };
            let ix = SparseIndex::build(
                rows.len(),
                rows.iter().enumerate().filter_map(|(i, v)| v.as_ref().map(|v| (i as u32, v))),
            ).unwrap();
            let mut allow = Bitset::zeros(rows.len());
            for i in 0..rows.len() {
                allow.set(i, (filter_seed >> (i % 64)) & 1 == 1 || i % 3 == 0);
            }
            let mut p = SparseSearch::top_k(k);
            if filtered {
                p.allow = Some(&allow);
            }
            if bm25 {
                p.scoring = Scoring::Bm25(Bm25 { k1: 1.2, b: 0.75, avgdl: 3.5 });
            }
            if ranged {
                p.min_score = Some(0.5);
                p.max_score = Some(20.0);
            }
            let want = brute(&rows, &q, &p);
            for algo in [SparseAlgo::TaatNaive, SparseAlgo::DaatWand, SparseAlgo::DaatMaxScore] {
                p.algo = algo;
                let got = ix.search(&q, &p).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", algo);
            }
        }

        #[test]
        fn arbitrary_floats_agree_within_rounding(
            rows in prop::collection::vec(prop::collection::vec((0u32..64, -1.0f32..5.0), 0..20), 1..80),
            qv in prop::collection::vec((0u32..64, 0.01f32..3.0), 1..16),
            k in 1usize..10,
        ) {
            let dedup = |v: Vec<(u32, f32)>| {
                let m: std::collections::BTreeMap<u32, f32> = v.into_iter().collect();
                SparseVector::from_pairs(m.into_iter().collect()).unwrap()
            };
            let rows: Vec<Option<SparseVector>> = rows.into_iter().map(|v| Some(dedup(v))).collect();
            let q = dedup(qv);
            let ix = SparseIndex::build(rows.len(), rows.iter().enumerate().map(|(i, v)| (i as u32, v.as_ref().unwrap()))).unwrap();
            let mut p = SparseSearch::top_k(k);
            let want = brute(&rows, &q, &p);
            for algo in [SparseAlgo::TaatNaive, SparseAlgo::DaatWand, SparseAlgo::DaatMaxScore] {
                p.algo = algo;
                let got = ix.search(&q, &p).unwrap();
                prop_assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    prop_assert!((g.score - w.score).abs() <= 1e-4 * (1.0 + w.score.abs()), "{:?}: {:?} vs {:?}", algo, got, want);
                }
            }
        }
    }

    #[test]
    fn bad_vectors_are_refused_with_the_entry() {
        let e = SparseVector::from_pairs(vec![(3, 1.0), (3, 2.0)]).unwrap_err();
        assert!(e.contains("3 appears more than once"), "{e}");
        let e = SparseVector::from_pairs(vec![(u32::MAX, 1.0)]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = SparseVector::from_pairs(vec![(1, f32::NAN)]).unwrap_err();
        assert!(e.contains("index 1 is not a finite"), "{e}");
    }

    #[test]
    fn drop_ratio_drops_the_smallest_query_terms() {
        let docs = [
            SparseVector::from_pairs(vec![(1, 1.0)]).unwrap(),
            SparseVector::from_pairs(vec![(2, 1.0)]).unwrap(),
        ];
        let ix =
            SparseIndex::build(2, docs.iter().enumerate().map(|(i, v)| (i as u32, v))).unwrap();
        let q = SparseVector::from_pairs(vec![(1, 0.1), (2, 5.0)]).unwrap();
        let mut p = SparseSearch::top_k(10);
        assert_eq!(ix.search(&q, &p).unwrap().len(), 2);
        p.drop_ratio = 0.5;
        let got = ix.search(&q, &p).unwrap();
        assert_eq!(
            got,
            vec![Scored {
                offset: 1,
                score: 5.0
            }]
        );
        p.drop_ratio = 1.0;
        assert!(ix.search(&q, &p).is_err());
    }

    #[test]
    fn memory_is_eight_bytes_per_posting_plus_the_term_directory() {
        let docs: Vec<SparseVector> = (0..1000u32)
            .map(|i| {
                SparseVector::from_pairs((0..20).map(|j| ((i * 7 + j * 13) % 500, 1.0)).collect())
                    .unwrap()
            })
            .collect();
        let ix =
            SparseIndex::build(1000, docs.iter().enumerate().map(|(i, v)| (i as u32, v))).unwrap();
        let raw = ix.postings() * 8;
        assert_eq!(ix.postings(), 20_000);
        assert!(
            ix.bytes() as f64 <= raw as f64 * 1.5,
            "{} vs raw {raw}",
            ix.bytes()
        );
    }
}
