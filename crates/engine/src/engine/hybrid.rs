//! Hybrid search: several searches of one collection (dense, sparse, by text through an
//! embedding function; each with its own field, filter and limit) fused into one ranking
//! (Milvus's `hybrid_search`).
//!
//! Every sub-search reads the same snapshot, so the fused ranking never mixes two states
//! of the collection. A sub-search returns its own `limit` best hits whatever the
//! top-level `offset`, so the fused list does not depend on the page asked for: page 2 is
//! exactly the rows after page 1 (a known complaint about systems that deepen the
//! sub-searches by the offset).
//!
//! **Rankers** (Milvus's):
//! - `rrf` (reciprocal rank fusion, Cormack et al., 2009): a row scores `Σ 1 / (k + rank)`
//!   over the sub-searches that found it, `rank` counting from 1; `k` defaults to 60.
//! - `weighted`: `Σ wᵢ · sᵢ` where `sᵢ` is the row's score in sub-search `i`. With
//!   `norm_score` (the default) scores are first mapped into [0, 1] by their metric, as
//!   Milvus does: IP `0.5 + atan(d)/π`, COSINE `(1 + d) / 2`, L2 `1 − 2·atan(d)/π`,
//!   BM25 `2·atan(d)/π`;
//!   without it the raw score is used, except that L2 distances still become
//!   `1 − 2·atan(d)/π` so that larger is better.
//!
//! Ties in the fused score are broken by primary key, so the order is total.

use super::{check_topk, invalid, Engine, Result, SearchRequest};
use crate::collection::Hit;
use crate::types::{Consistency, PrimaryKey};
use magpie_index::Metric;
use std::collections::HashMap;

/// Most sub-searches of one hybrid search (Milvus's limit).
pub const MAX_HYBRID_SEARCHES: usize = 16;

/// How the sub-searches' rankings are fused.
#[derive(Clone, Debug, PartialEq)]
pub enum Rerank {
    Rrf {
        k: f32,
    },
    Weighted {
        weights: Vec<f32>,
        norm_score: bool,
    },
    /// The best of a row's scores, each made "larger is better" as decay rankers do
    /// (L2 → `1 − 2·atan(d)/π`, others as they are): Milvus's fusion when a hybrid
    /// search's only ranker is a function (decay, boost).
    Max,
}

/// A hybrid search: the sub-searches (their `limit`, `filter`, `anns_field`, data and
/// knobs are used; output fields, partitions and consistency come from here).
#[derive(Clone, Debug)]
pub struct HybridRequest {
    pub searches: Vec<SearchRequest>,
    pub rerank: Rerank,
    pub limit: usize,
    pub offset: usize,
    pub output_fields: Vec<String>,
    pub partitions: Vec<String>,
    pub consistency: Option<Consistency>,
    /// Rerank the fused hits by functions of the rows (see [`super::rerank`]); the
    /// fused score is the base score.
    pub function_score: Option<super::rerank::FunctionScore>,
}

/// A distance as a "larger is better" score in [0, 1] (`norm`) or raw.
fn normalized(metric: Metric, d: f32, norm: bool) -> f32 {
    use std::f32::consts::PI;
    match (metric, norm) {
        // Distances (L2, HAMMING, JACCARD) are turned to "larger is better" either way,
        // as Milvus does for L2.
        (Metric::L2 | Metric::HAMMING | Metric::JACCARD, _) => 1.0 - 2.0 * d.atan() / PI,
        (Metric::COSINE, true) => (1.0 + d) / 2.0,
        (Metric::BM25, true) => 2.0 * d.atan() / PI,
        (_, true) => 0.5 + d.atan() / PI,
        (_, false) => d,
    }
}

impl Engine {
    /// Runs `r`'s sub-searches on one snapshot and fuses their hits; one list per query
    /// (every sub-search carries the same number of queries).
    pub fn hybrid_search(&self, coll: &str, r: &HybridRequest) -> Result<Vec<Vec<Hit>>> {
        let n = r.searches.len();
        if n == 0 || n > MAX_HYBRID_SEARCHES {
            return Err(invalid(format!(
                "a hybrid search needs 1 to {MAX_HYBRID_SEARCHES} sub-searches in 'search', got {n}"
            )));
        }
        if r.limit == 0 {
            return Err(invalid("limit must be at least 1"));
        }
        check_topk(r.limit, r.offset)?;
        check_rerank(&r.rerank, n)?;
        if r.rerank == Rerank::Max && r.function_score.is_none() {
            return Err(invalid(
                "a hybrid search needs a ranker: rrf, weighted, or rerank functions (decay, boost)",
            ));
        }
        if let Some(fs) = &r.function_score {
            self.check_function_score(coll, fs)?;
        }
        let c = self.coll(coll)?;
        let snap = self.read_snapshot(&c, r.consistency)?;
        drop(c);
        // Fields the rerank functions read, fetched with the hits and removed after.
        let added: Vec<String> = r
            .function_score
            .as_ref()
            .map(|fs| {
                fs.fields()
                    .into_iter()
                    .filter(|f| !r.output_fields.contains(f))
                    .collect()
            })
            .unwrap_or_default();
        let mut outcomes = Vec::with_capacity(n);
        let mut nq = None;
        for (i, s) in r.searches.iter().enumerate() {
            let sub = SearchRequest {
                output_fields: r.output_fields.iter().chain(&added).cloned().collect(),
                function_score: None,
                partitions: r.partitions.clone(),
                group_by: None,
                group_size: None,
                offset: 0,
                snapshot: Some(snap),
                ..s.clone()
            };
            if s.group_by.as_ref().is_some_and(|g| !g.is_empty()) {
                return Err(invalid(
                    "grouping in a hybrid search is not supported yet; search without groupingField",
                ));
            }
            let out = self.search_ex(coll, &sub).map_err(|e| prefix_error(i, e))?;
            match nq {
                None => nq = Some(out.hits.len()),
                Some(q) if q != out.hits.len() => {
                    return Err(invalid(format!(
                        "sub-search {i} has {} queries, sub-search 0 has {q}; every sub-search needs the same number",
                        out.hits.len()
                    )))
                }
                _ => {}
            }
            outcomes.push(out);
        }
        let nq = nq.unwrap_or(0);
        let mut results = Vec::with_capacity(nq);
        for qi in 0..nq {
            let lists: Vec<(Metric, &[Hit])> = outcomes
                .iter()
                .map(|o| (o.metric.unwrap_or(Metric::IP), o.hits[qi].as_slice()))
                .collect();
            match &r.function_score {
                None => results.push(fuse(&lists, &r.rerank, r.limit, r.offset)),
                Some(fs) => {
                    let window = r.limit.saturating_add(r.offset).max(fs.window);
                    let all = fuse(&lists, &r.rerank, window, 0);
                    results.push(self.apply_function_score(
                        coll,
                        fs,
                        Metric::IP,
                        all,
                        snap,
                        r.offset,
                        r.limit,
                        &added,
                    )?);
                }
            }
        }
        Ok(results)
    }
}

/// Checks a ranker for `n` sub-searches: RRF's `k` in (0, 16384); one weight in [0, 1]
/// per sub-search.
pub fn check_rerank(rerank: &Rerank, n: usize) -> Result<()> {
    match rerank {
        Rerank::Rrf { k } if !(*k > 0.0 && *k < 16384.0) => {
            return Err(invalid(format!(
                "the rrf ranker's k must be in (0, 16384), got {k}"
            )))
        }
        Rerank::Weighted { weights, .. } if weights.len() != n => {
            return Err(invalid(format!(
                "the weighted ranker has {} weights for {n} sub-searches; give one weight per sub-search",
                weights.len()
            )))
        }
        Rerank::Weighted { weights, .. } => {
            if let Some(w) = weights.iter().find(|w| !(0.0..=1.0).contains(*w)) {
                return Err(invalid(format!(
                    "weights of the weighted ranker must be in [0, 1], got {w}"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fuses the hit lists of one query's sub-searches (each in its metric, best first) by
/// `rerank` and returns the fused list's `offset..offset + limit` (module docs). A
/// row's fields come from the first list that has it.
pub fn fuse(lists: &[(Metric, &[Hit])], rerank: &Rerank, limit: usize, offset: usize) -> Vec<Hit> {
    let mut fused: HashMap<&PrimaryKey, (f32, usize, usize)> = HashMap::new();
    for (si, (metric, hits)) in lists.iter().enumerate() {
        for (rank, h) in hits.iter().enumerate() {
            let s = match rerank {
                Rerank::Max => {
                    let s = if metric.higher_is_closer() {
                        h.distance
                    } else {
                        1.0 - 2.0 * h.distance.atan() / std::f32::consts::PI
                    };
                    let e = fused.entry(&h.id).or_insert((s, si, rank));
                    if s > e.0 {
                        *e = (s, si, rank);
                    }
                    continue;
                }
                Rerank::Rrf { k } => 1.0 / (k + rank as f32 + 1.0),
                Rerank::Weighted {
                    weights,
                    norm_score,
                } => {
                    weights.get(si).copied().unwrap_or(0.0)
                        * normalized(*metric, h.distance, *norm_score)
                }
            };
            fused.entry(&h.id).or_insert((0.0, si, rank)).0 += s;
        }
    }
    let mut order: Vec<(&PrimaryKey, f32, usize, usize)> = fused
        .into_iter()
        .map(|(pk, (s, si, rank))| (pk, s, si, rank))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    order
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(pk, s, si, rank)| Hit {
            id: pk.clone(),
            distance: s,
            fields: lists[si].1[rank].fields.clone(),
        })
        .collect()
}

/// Names the sub-search an error came from.
fn prefix_error(i: usize, e: super::EngineError) -> super::EngineError {
    match e {
        super::EngineError::InvalidArgument(m) => invalid(format!("sub-search {i}: {m}")),
        other => other,
    }
}
