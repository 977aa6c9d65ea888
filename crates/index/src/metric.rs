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
    /// Bits that differ between two binary vectors (smaller is closer).
    HAMMING,
    /// `1 − |a∧b| / |a∨b|` between two binary vectors (smaller is closer).
    JACCARD,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s.to_ascii_uppercase().as_str() {
            "L2" => Some(Metric::L2),
            "IP" => Some(Metric::IP),
            "COSINE" => Some(Metric::COSINE),
            "BM25" => Some(Metric::BM25),
            "HAMMING" => Some(Metric::HAMMING),
            "JACCARD" => Some(Metric::JACCARD),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Metric::L2 => "L2",
            Metric::IP => "IP",
            Metric::COSINE => "COSINE",
            Metric::BM25 => "BM25",
            Metric::HAMMING => "HAMMING",
            Metric::JACCARD => "JACCARD",
        }
    }

    /// Internal score of `x` against `q`. For COSINE, `q` must already be unit length and
    /// `inv_norm_x` is `1/‖x‖` (0 for a zero vector).
    #[inline]
    pub fn score(&self, q: &[f32], x: &[f32], inv_norm_x: f32) -> f32 {
        match self {
            // Binary metrics on f32 lanes holding one byte each (0..=255): the same
            // values the packed kernels compute (see `VectorSlice::binary`).
            Metric::HAMMING | Metric::JACCARD => {
                let (a, b) = (pack_bytes(q), pack_bytes(x));
                -self.binary_distance(&a, &b)
            }
            Metric::L2 => -magpie_linalg::l2_sq(q, x),
            Metric::IP | Metric::BM25 => magpie_linalg::dot(q, x),
            Metric::COSINE => magpie_linalg::dot(q, x) * inv_norm_x,
        }
    }

    /// Distance between two packed bit strings under a binary metric (0 for others).
    #[inline]
    pub fn binary_distance(&self, a: &[u8], b: &[u8]) -> f32 {
        match self {
            Metric::HAMMING => magpie_linalg::hamming(a, b) as f32,
            Metric::JACCARD => magpie_linalg::jaccard(a, b),
            _ => 0.0,
        }
    }

    /// A metric of binary vectors (HAMMING, JACCARD).
    pub fn is_binary(&self) -> bool {
        matches!(self, Metric::HAMMING | Metric::JACCARD)
    }

    /// The value reported to users (Milvus semantics): squared L2, Hamming or Jaccard
    /// distance (smaller is closer), or the IP / cosine similarity (larger is closer).
    #[inline]
    pub fn user_distance(&self, score: f32) -> f32 {
        if self.higher_is_closer() {
            score
        } else {
            -score
        }
    }

    /// Inverse of [`Metric::user_distance`].
    #[inline]
    pub fn score_from_user(&self, d: f32) -> f32 {
        self.user_distance(d)
    }

    /// True when larger user-facing values are closer.
    pub fn higher_is_closer(&self) -> bool {
        !matches!(self, Metric::L2 | Metric::HAMMING | Metric::JACCARD)
    }
}

/// f32 lanes holding one byte each (0..=255, as binary vectors travel inside the
/// engine) packed back into bytes.
pub fn pack_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().map(|&b| b as u8).collect()
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
        assert_eq!(Metric::parse("hamming"), Some(Metric::HAMMING));
        assert_eq!(Metric::parse("manhattan"), None);
        // Binary metrics are distances: smaller is closer, reported as is.
        let q = [0b1010_1010 as f32];
        let near = [0b1010_1011 as f32];
        let far = [0b0101_0101 as f32];
        assert_eq!(Metric::HAMMING.score(&q, &near, 1.0), -1.0);
        assert_eq!(
            Metric::HAMMING.user_distance(Metric::HAMMING.score(&q, &far, 1.0)),
            8.0
        );
        assert!(Metric::JACCARD.score(&q, &near, 1.0) > Metric::JACCARD.score(&q, &far, 1.0));
        assert_eq!(
            Metric::JACCARD.user_distance(Metric::JACCARD.score(&q, &far, 1.0)),
            1.0
        );
    }
}
