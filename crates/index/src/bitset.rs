//! A fixed-length bitset over segment offsets: the currency between filters and indexes.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitset {
    words: Vec<u64>,
    len: usize,
}

impl Bitset {
    /// All bits clear.
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// All bits set.
    pub fn ones(len: usize) -> Self {
        let mut b = Self {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        b.clear_tail();
        b
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << r) - 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bits `start..end` as a bitset of their own (bit `start` becomes bit 0): the part
    /// of a segment's bitset that an index over a range of its rows reads.
    pub fn slice(&self, start: usize, end: usize) -> Bitset {
        assert!(start <= end && end <= self.len, "bitset slice out of range");
        let len = end - start;
        let (w, sh) = (start / 64, start % 64);
        let words = (0..len.div_ceil(64))
            .map(|i| {
                let lo = self.words[w + i] >> sh;
                let hi = match (sh, self.words.get(w + i + 1)) {
                    (0, _) | (_, None) => 0,
                    (_, Some(n)) => n << (64 - sh),
                };
                lo | hi
            })
            .collect();
        let mut b = Bitset { words, len };
        b.clear_tail();
        b
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// This set lengthened to `len` bits (at least its own length), the new bits set to
    /// `fill`: a growing segment's cached filter result extended to the rows appended
    /// since.
    pub fn extended(&self, len: usize, fill: bool) -> Bitset {
        assert!(len >= self.len, "bitset cannot shrink");
        let mut words = self.words.clone();
        words.resize(len.div_ceil(64), if fill { u64::MAX } else { 0 });
        if fill {
            // Bits of the last old word past the old length.
            let r = self.len % 64;
            if r != 0 {
                words[self.len / 64] |= !((1u64 << r) - 1);
            }
        }
        let mut b = Bitset { words, len };
        b.clear_tail();
        b
    }

    #[inline]
    pub fn get(&self, i: usize) -> bool {
        debug_assert!(i < self.len);
        self.words[i >> 6] & (1u64 << (i & 63)) != 0
    }

    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        debug_assert!(i < self.len);
        if v {
            self.words[i >> 6] |= 1u64 << (i & 63);
        } else {
            self.words[i >> 6] &= !(1u64 << (i & 63));
        }
    }

    /// In-place intersection; both sets must have the same length.
    pub fn and_with(&mut self, other: &Bitset) {
        assert_eq!(self.len, other.len, "bitset length mismatch");
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// In-place union; both sets must have the same length.
    pub fn or_with(&mut self, other: &Bitset) {
        assert_eq!(self.len, other.len, "bitset length mismatch");
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// In-place difference (`self & !other`); both sets must have the same length.
    pub fn and_not_with(&mut self, other: &Bitset) {
        assert_eq!(self.len, other.len, "bitset length mismatch");
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
    }

    /// The 64-bit words, bit `i` of the set in bit `i % 64` of word `i / 64` (bits past
    /// `len` are zero).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// A set from its words (the layout of [`Bitset::words`]); `None` when the word
    /// count does not fit `len` or a bit past `len` is set.
    pub fn from_words(words: Vec<u64>, len: usize) -> Option<Bitset> {
        if words.len() != len.div_ceil(64) {
            return None;
        }
        let mut b = Bitset { words, len };
        let before = b.words.last().copied();
        b.clear_tail();
        (b.words.last().copied() == before).then_some(b)
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Offsets of the set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    None
                } else {
                    let t = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(wi * 64 + t)
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_vec_bool(bits in prop::collection::vec(any::<bool>(), 0..300)) {
            let mut b = Bitset::zeros(bits.len());
            for (i, &v) in bits.iter().enumerate() { b.set(i, v); }
            prop_assert_eq!(b.count_ones(), bits.iter().filter(|x| **x).count());
            let ones: Vec<usize> = b.iter_ones().collect();
            let want: Vec<usize> = bits.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| i).collect();
            prop_assert_eq!(ones, want);
            let mut all = Bitset::ones(bits.len());
            prop_assert_eq!(all.count_ones(), bits.len());
            all.and_with(&b);
            prop_assert_eq!(&all, &b);
            let back = Bitset::from_words(b.words().to_vec(), bits.len()).unwrap();
            prop_assert_eq!(&back, &b);
            let mut none = Bitset::ones(bits.len());
            none.and_not_with(&b);
            none.or_with(&b);
            prop_assert_eq!(none.count_ones(), bits.len());
        }

        #[test]
        fn extended_keeps_the_bits_and_fills_the_rest(
            bits in prop::collection::vec(any::<bool>(), 0..300),
            extra in 0usize..200,
            fill in any::<bool>(),
        ) {
            let mut b = Bitset::zeros(bits.len());
            for (i, &v) in bits.iter().enumerate() { b.set(i, v); }
            let e = b.extended(bits.len() + extra, fill);
            let want: Vec<bool> = bits.iter().copied().chain(std::iter::repeat_n(fill, extra)).collect();
            let got: Vec<bool> = (0..e.len()).map(|i| e.get(i)).collect();
            prop_assert_eq!(got, want);
            // Bits past the length stay clear (from_words checks it).
            prop_assert!(Bitset::from_words(e.words().to_vec(), e.len()).is_some());
        }

        #[test]
        fn slice_matches_the_bits_in_range(
            bits in prop::collection::vec(any::<bool>(), 0..300),
            a in 0usize..300,
            b in 0usize..300,
        ) {
            let mut set = Bitset::zeros(bits.len());
            for (i, &v) in bits.iter().enumerate() { set.set(i, v); }
            let (lo, hi) = (a.min(b).min(bits.len()), a.max(b).min(bits.len()));
            let s = set.slice(lo, hi);
            prop_assert_eq!(s.len(), hi - lo);
            let want: Vec<usize> = (lo..hi).filter(|&i| bits[i]).map(|i| i - lo).collect();
            prop_assert_eq!(s.iter_ones().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(s.count_ones(), want.len());
        }
    }
}
