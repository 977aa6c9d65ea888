//! Similarity metrics and the score convention.

use serde::{Deserialize, Serialize};

/// Metric of a vector field. Scores are "greater = closer" (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Metric {
    L2,
    IP,
    COSINE,
    /// BM25 relevance, for sparse fields filled by a BM25 function (larger is closer).
    /// Dense indexes refuse it.
    BM25,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s.to_ascii_uppercase().as_str() {
            "L2" => Some(Metric::L2),
            "IP" => Some(Metric::IP),
            "COSINE" => Some(Metric::COSINE),
            "BM25" => Some(Metric::BM25),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Metric::L2 => "L2",
            Metric::IP => "IP",
            Metric::COSINE => "COSINE",
            Metric::BM25 => "BM25",
        }
    }

    /// Internal score of `x` against `q`. For COSINE, `q` must already be unit length and
    /// `inv_norm_x` is `1/‖x‖` (0 for a zero vector).
    #[inline]
    pub fn score(&self, q: &[f32], x: &[f32], inv_norm_x: f32) -> f32 {
        match self {
            Metric::L2 => -magpie_linalg::l2_sq(q, x),
            Metric::IP | Metric::BM25 => magpie_linalg::dot(q, x),
            Metric::COSINE => magpie_linalg::dot(q, x) * inv_norm_x,
        }
    }

    /// The value reported to users (Milvus semantics): squared L2 distance (smaller is
    /// closer), or the IP / cosine similarity (larger is closer).
    #[inline]
    pub fn user_distance(&self, score: f32) -> f32 {
        match self {
            Metric::L2 => -score,
            _ => score,
        }
    }

    /// Inverse of [`Metric::user_distance`].
    #[inline]
    pub fn score_from_user(&self, d: f32) -> f32 {
        match self {
            Metric::L2 => -d,
            _ => d,
        }
    }

    /// True when larger user-facing values are closer.
    pub fn higher_is_closer(&self) -> bool {
        !matches!(self, Metric::L2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_orientation() {
        let q = [1.0, 0.0];
        let near = [0.9, 0.1];
        let far = [-1.0, 0.0];
        for m in [Metric::L2, Metric::IP] {
            assert!(m.score(&q, &near, 1.0) > m.score(&q, &far, 1.0), "{m:?}");
        }
        let inv = 1.0 / magpie_linalg::norm(&near);
        assert!(Metric::COSINE.score(&q, &near, inv) > Metric::COSINE.score(&q, &far, 1.0));
        assert_eq!(Metric::L2.user_distance(-4.0), 4.0);
        assert_eq!(Metric::IP.user_distance(0.5), 0.5);
        assert_eq!(
            Metric::L2.score_from_user(Metric::L2.user_distance(-3.0)),
            -3.0
        );
        assert_eq!(Metric::parse("cosine"), Some(Metric::COSINE));
        assert_eq!(Metric::parse("hamming"), None);
    }
}
