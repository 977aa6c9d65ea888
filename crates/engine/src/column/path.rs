//! JSON path indexes: the values under one path of a JSON field (or one dynamic key),
//! cast to one type, as a typed column with its sorted order (see [`PathIndex`]).

use super::{Column, SortedIndex, StrData};
use magpie_index::Bitset;
use serde_json::Value;
use std::borrow::Cow;

/// The type a JSON path index casts its values to (Milvus's `json_cast_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonCast {
    Bool,
    Double,
    Varchar,
}

impl JsonCast {
    /// Milvus's names, in any case.
    pub fn parse(s: &str) -> Option<JsonCast> {
        match s.to_ascii_uppercase().as_str() {
            "BOOL" => Some(JsonCast::Bool),
            "DOUBLE" => Some(JsonCast::Double),
            "VARCHAR" => Some(JsonCast::Varchar),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JsonCast::Bool => "BOOL",
            JsonCast::Double => "DOUBLE",
            JsonCast::Varchar => "VARCHAR",
        }
    }
}

/// Integers up to this magnitude are exact as `f64`.
const EXACT_F64_INT: u64 = 1 << 53;

/// One sealed segment's index of a JSON path. Every row falls in one of three classes:
/// - **typed**: the value under the path has the cast type; it is in `col` (valid there)
///   and, for numbers and strings, in `sorted`;
/// - **other**: a value of another type (or a number a double cannot hold exactly);
///   filters evaluate these rows one by one, as without the index;
/// - **absent**: the path leads nowhere or to null; a filter leaf has the same answer on
///   all of them, computed once.
///
/// So a filter gives the same rows with the index as without it, whatever the data
/// holds; the index only changes how fast. Like the other scalar indexes it is built in
/// memory on first use per segment, never written to storage.
#[derive(Clone, Debug, PartialEq)]
pub struct PathIndex {
    pub col: Column,
    pub sorted: Option<SortedIndex>,
    pub other: Bitset,
}

impl PathIndex {
    /// The index of `n` rows whose values under the path are `value(i)`; `None` when
    /// the values cannot form a typed column (strings past 4 GiB).
    pub fn build<'a>(
        n: usize,
        cast: JsonCast,
        mut value: impl FnMut(usize) -> Option<Cow<'a, Value>>,
    ) -> Option<PathIndex> {
        let mut other = Bitset::zeros(n);
        let mut vals: Vec<Value> = Vec::with_capacity(n);
        let mut floats = false;
        for i in 0..n {
            let v = value(i);
            let typed = match v.as_deref() {
                None | Some(Value::Null) => None,
                Some(v @ Value::Bool(_)) if cast == JsonCast::Bool => Some(v.clone()),
                Some(v @ Value::String(_)) if cast == JsonCast::Varchar => Some(v.clone()),
                Some(Value::Number(x))
                    if cast == JsonCast::Double && (x.is_i64() || x.is_f64()) =>
                {
                    floats |= x.is_f64();
                    Some(Value::Number(x.clone()))
                }
                Some(_) => {
                    other.set(i, true);
                    None
                }
            };
            vals.push(typed.unwrap_or(Value::Null));
        }
        if floats {
            // Integers join the floats where a double holds them exactly.
            for (i, v) in vals.iter_mut().enumerate() {
                if let Some(x) = v.as_i64() {
                    if x.unsigned_abs() <= EXACT_F64_INT {
                        *v = serde_json::Number::from_f64(x as f64)
                            .map_or(Value::Null, Value::Number);
                    } else {
                        other.set(i, true);
                        *v = Value::Null;
                    }
                }
            }
        }
        let col = Column::from_values(vals);
        if matches!(col, Column::Json(_) | Column::Values(_)) {
            return None;
        }
        let sorted = SortedIndex::build(&col);
        Some(PathIndex { col, sorted, other })
    }

    /// Rows whose value has the cast type.
    pub fn typed(&self) -> Bitset {
        match self.col.validity() {
            Some(v) => v.clone(),
            None => Bitset::ones(self.col.len()),
        }
    }

    /// Heap bytes (the typed values, their validity, the sorted order, the other rows).
    pub fn bytes(&self) -> usize {
        let n = self.col.len();
        let bits = n.div_ceil(64) * 8;
        let vals = match &self.col {
            Column::Int(_) | Column::Float(_) => n * 8,
            Column::Bool(_) => bits,
            Column::Str(c) => match &c.data {
                StrData::Plain(s) => (0..s.len()).map(|i| s.get(i).len()).sum::<usize>() + 4 * n,
                StrData::Dict { dict, codes } => {
                    (0..dict.len())
                        .map(|i| dict.get(i).len() + 4)
                        .sum::<usize>()
                        + 4 * codes.len()
                }
            },
            _ => 0,
        };
        let valid = self.col.validity().map_or(0, |_| bits);
        vals + valid + bits + self.sorted.as_ref().map_or(0, |s| s.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(cast: JsonCast, rows: &[Value]) -> PathIndex {
        PathIndex::build(rows.len(), cast, |i| {
            (!rows[i].is_null()).then(|| Cow::Borrowed(&rows[i]))
        })
        .unwrap()
    }

    #[test]
    fn rows_fall_into_typed_other_and_absent() {
        let rows = [
            json!(3),
            json!("x"),
            Value::Null,
            json!(2.5),
            json!(1u64 << 60),
            json!([1]),
        ];
        let ix = build(JsonCast::Double, &rows);
        let typed: Vec<usize> = ix.typed().iter_ones().collect();
        let other: Vec<usize> = ix.other.iter_ones().collect();
        assert_eq!(typed, [0, 3]);
        // The string, the integer a double cannot hold, the array.
        assert_eq!(other, [1, 4, 5]);
        assert!(matches!(ix.col, Column::Float(_)));
        assert_eq!(ix.col.get(0).as_f64(), Some(3.0));

        // Integers alone stay integers (exact, whatever their size).
        let ints = build(JsonCast::Double, &[json!(1i64 << 60), json!(-4)]);
        assert!(matches!(ints.col, Column::Int(_)));
        assert_eq!(ints.other.count_ones(), 0);

        let s = build(
            JsonCast::Varchar,
            &[json!("b"), json!(1), json!("a"), json!(true)],
        );
        assert_eq!(s.typed().iter_ones().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(s.other.iter_ones().collect::<Vec<_>>(), [1, 3]);
        assert!(s.sorted.is_some() && s.bytes() > 0);

        let b = build(JsonCast::Bool, &[json!(true), json!("true"), json!(false)]);
        assert_eq!(b.typed().iter_ones().collect::<Vec<_>>(), [0, 2]);
        assert!(b.sorted.is_none());
    }

    #[test]
    fn cast_names_are_milvus_names() {
        for c in [JsonCast::Bool, JsonCast::Double, JsonCast::Varchar] {
            assert_eq!(JsonCast::parse(&c.name().to_lowercase()), Some(c));
        }
        assert_eq!(JsonCast::parse("ARRAY_DOUBLE"), None);
    }
}
