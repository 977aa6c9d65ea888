//! Scalar indexes over sealed columns (see [`SortedIndex`]).

use super::{Column, StrData};
use serde_json::Value;

/// A scalar index over one sealed column: its valid rows sorted by value (4 bytes per
/// row). It serves Milvus's INVERTED, STL_SORT, TRIE and BITMAP index types: equality,
/// `in`, ranges and `like 'prefix%'` become binary searches, and only the matching rows
/// are touched. Built in memory on first use per segment (sorting 100,000 rows takes
/// milliseconds), never written to storage.
#[derive(Clone, Debug, PartialEq)]
pub struct SortedIndex {
    perm: Vec<u32>,
}

/// A value of the sort order, for binary searches.
enum Key<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl SortedIndex {
    /// The index of a typed column (`None` for values, JSON and boolean columns).
    pub fn build(col: &Column) -> Option<SortedIndex> {
        let n = col.len();
        let mut perm: Vec<u32> = (0..n as u32)
            .filter(|&r| col.is_valid(r as usize))
            .collect();
        match col {
            Column::Int(c) => perm.sort_unstable_by_key(|&r| c.vals[r as usize]),
            Column::Float(c) => {
                perm.sort_unstable_by(|&a, &b| c.vals[a as usize].total_cmp(&c.vals[b as usize]))
            }
            Column::Str(c) => match &c.data {
                StrData::Dict { dict, codes } => {
                    // Rank the distinct strings once, then sort rows by rank.
                    let mut order: Vec<u32> = (0..dict.len() as u32).collect();
                    order.sort_unstable_by(|&a, &b| dict.get(a as usize).cmp(dict.get(b as usize)));
                    let mut rank = vec![0u32; dict.len()];
                    for (r, &d) in order.iter().enumerate() {
                        rank[d as usize] = r as u32;
                    }
                    perm.sort_unstable_by_key(|&r| rank[codes[r as usize] as usize]);
                }
                StrData::Plain(_) => {
                    perm.sort_unstable_by(|&a, &b| c.get(a as usize).cmp(c.get(b as usize)))
                }
            },
            _ => return None,
        }
        Some(SortedIndex { perm })
    }

    /// Heap bytes.
    pub fn bytes(&self) -> usize {
        self.perm.len() * 4
    }

    /// First position whose value is not `before` the key.
    fn point(&self, col: &Column, k: &Key<'_>, inclusive: bool) -> usize {
        use std::cmp::Ordering::*;
        let cmp = |r: &u32| -> std::cmp::Ordering {
            let r = *r as usize;
            match (col, k) {
                (Column::Int(c), Key::Int(l)) => c.vals[r].cmp(l),
                (Column::Int(c), Key::Float(l)) => {
                    (c.vals[r] as f64).partial_cmp(l).unwrap_or(Greater)
                }
                (Column::Float(c), Key::Float(l)) => c.vals[r].partial_cmp(l).unwrap_or(Greater),
                (Column::Float(c), Key::Int(l)) => {
                    c.vals[r].partial_cmp(&(*l as f64)).unwrap_or(Greater)
                }
                (Column::Str(c), Key::Str(l)) => c.get(r).cmp(l),
                _ => Greater,
            }
        };
        self.perm.partition_point(|r| match cmp(r) {
            Less => true,
            Equal => inclusive,
            Greater => false,
        })
    }

    fn key<'a>(col: &Column, lit: &'a Value) -> Option<Key<'a>> {
        match (col, lit) {
            (Column::Int(_) | Column::Float(_), Value::Number(n)) => Some(match n.as_i64() {
                Some(i) => Key::Int(i),
                None => Key::Float(n.as_f64()?),
            }),
            (Column::Str(_), Value::String(s)) => Some(Key::Str(s)),
            _ => None,
        }
    }

    /// Positions (in sorted order) of the rows where `col op lit` holds, for `op` one of
    /// `==`, `<`, `<=`, `>`, `>=` (as `"=="`, `"<"`, ...); `None` when the index cannot
    /// answer it (another operator, a literal of another type).
    pub fn range(&self, col: &Column, op: &str, lit: &Value) -> Option<std::ops::Range<usize>> {
        let k = Self::key(col, lit)?;
        let n = self.perm.len();
        Some(match op {
            "==" => self.point(col, &k, false)..self.point(col, &k, true),
            "<" => 0..self.point(col, &k, false),
            "<=" => 0..self.point(col, &k, true),
            ">" => self.point(col, &k, true)..n,
            ">=" => self.point(col, &k, false)..n,
            _ => return None,
        })
    }

    /// Positions of the strings that start with `prefix` (a string column).
    pub fn prefix_range(&self, col: &Column, prefix: &str) -> Option<std::ops::Range<usize>> {
        let Column::Str(c) = col else { return None };
        let lo = self.point(col, &Key::Str(prefix), false);
        let hi = lo + self.perm[lo..].partition_point(|&r| c.get(r as usize).starts_with(prefix));
        Some(lo..hi)
    }

    /// Rows at sorted positions `range`.
    pub fn rows(&self, range: std::ops::Range<usize>) -> &[u32] {
        &self.perm[range]
    }
}
