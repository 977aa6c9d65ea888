//! Bounded top-k collection by descending score.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A candidate: segment offset and internal score (greater = closer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub offset: u32,
    pub score: f32,
}

/// Heap entry ordered so that the *worst* candidate is on top (min-heap on score; ties
/// broken by larger offset being worse, which makes results deterministic).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Worst(Scored);

impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.offset.cmp(&other.0.offset))
    }
}

/// Keeps the `k` best candidates seen.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
        }
    }

    /// Score a candidate must beat to enter (−∞ until full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score)
        }
    }

    #[inline]
    pub fn push(&mut self, offset: u32, score: f32) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(Scored { offset, score }));
        } else if score > self.threshold() {
            self.heap.pop();
            self.heap.push(Worst(Scored { offset, score }));
        }
    }

    /// Results by descending score (ties by ascending offset).
    pub fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|w| w.0).collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.offset.cmp(&b.offset)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn equals_full_sort(scores in prop::collection::vec(-1000.0f32..1000.0, 0..200), k in 0usize..50) {
            let mut t = TopK::new(k);
            for (i, s) in scores.iter().enumerate() { t.push(i as u32, *s); }
            let got: Vec<u32> = t.into_sorted().iter().map(|s| s.offset).collect();
            let mut all: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, s)| (i as u32, *s)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let want: Vec<u32> = all.iter().take(k).map(|x| x.0).collect();
            prop_assert_eq!(got, want);
        }
    }
}
