//! Typed scalar columns: how a flushed segment holds its scalar fields and dynamic
//! field, in memory and on disk (segment format 2).
//!
//! # In memory
//! A growing segment appends rows as JSON values ([`Column::Values`]). When it is
//! flushed, every column is *sealed* into the narrowest typed form that holds its values
//! exactly (the type is read off the values, so sealing never changes what a read
//! returns):
//!
//! | column | layout |
//! |---|---|
//! | [`Column::Int`] | `Vec<i64>` + validity bitmap |
//! | [`Column::Float`] | `Vec<f64>` + validity |
//! | [`Column::Bool`] | value bitmap + validity |
//! | [`Column::Str`] | offsets (`u32`) + one UTF-8 buffer, or a dictionary of distinct strings + `u32` codes when few are distinct; + validity |
//! | [`Column::Json`] | anything else (JSON and Array fields, the dynamic field): *shredded*, see below |
//!
//! The layout follows Arrow's (offsets + data buffers, validity as a bitmap whose bit
//! `i % 64` of word `i / 64` is row `i`; no bitmap when every row is valid), so that a
//! filter reads one field as one contiguous array. We do not use the `arrow` crates
//! themselves: the engine needs five column kinds, exact JSON round trips and its own
//! checked decoder, and the crates would add much to build time for little of that
//! (see docs/ARCHITECTURE.md, "Segment format 2").
//!
//! **JSON shredding.** A JSON column keeps each top-level key that always holds the same
//! scalar type (always an integer, always a float, always a boolean or always a string;
//! never null, never nested) as its own typed sub-column (at most [`MAX_SHRED_KEYS`]).
//! Per row it keeps a *shape*: the order of the row's keys, each either a shredded key or
//! "the next key of the rest", interned in a table (so rows written by the same code
//! share one shape and the row costs two bytes). Keys that are not shredded, and values
//! that are not objects, are kept MessagePack-encoded per row ("the rest"). A read
//! rebuilds the object with its keys in their original order; a filter on a shredded key
//! (`color == "red"` on the dynamic field) reads only that key's typed sub-column.
//! Invariant: in a column with shredded keys, every object row has an object shape and
//! a shredded key is present in a row exactly when its sub-column is valid there.
//!
//! # On disk
//! [`Column::encode`] / [`Column::decode`] write and read the columns with light,
//! seekless encodings: integers as frame-of-reference bit-packing (the minimum, a bit
//! width, then the packed differences), strings plain (lengths bit-packed + bytes) or
//! dictionary-coded, floats as f32 when every value is exactly an f32, else f64,
//! booleans and validity as bitmaps, the JSON rest as lengths + MessagePack bytes. The
//! decoder checks every length, code, offset and UTF-8 boundary and charges every
//! allocation to a budget set by the caller; bad bytes are an error, never a panic
//! (fuzzed through the `segment` target).

use magpie_index::Bitset;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;

static NULL: Value = Value::Null;

mod codec;
mod path;
mod sorted;
pub use codec::{Reader, Writer};
pub use path::{JsonCast, PathIndex};
pub use sorted::SortedIndex;

/// Most top-level keys of a JSON column that get their own typed sub-column.
pub const MAX_SHRED_KEYS: usize = 64;
/// Most distinct key orders (shapes) a JSON column keeps; past it nothing is shredded.
pub const MAX_SHAPES: usize = 16_384;
const SHAPE_NULL: u16 = 0;
const SHAPE_OPAQUE: u16 = 1;
const SHAPE_FIRST: u16 = 2;

/// Column of 64-bit integers (Int8 to Int64 fields, integer JSON keys).
#[derive(Clone, Debug, PartialEq)]
pub struct IntCol {
    pub vals: Vec<i64>,
    pub valid: Option<Bitset>,
}

/// Column of floats (Float, Double fields, float JSON keys).
#[derive(Clone, Debug, PartialEq)]
pub struct FloatCol {
    pub vals: Vec<f64>,
    pub valid: Option<Bitset>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BoolCol {
    pub vals: Bitset,
    pub valid: Option<Bitset>,
}

/// Strings stored one after another: string `i` is `text[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Strs {
    offsets: Vec<u32>,
    text: String,
}

impl Strs {
    fn with_capacity(n: usize) -> Strs {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        Strs {
            offsets,
            text: String::new(),
        }
    }

    /// Appends `s`; `false` (nothing appended) when the buffer would pass 4 GiB.
    fn push(&mut self, s: &str) -> bool {
        let end = self.text.len() + s.len();
        let Ok(end32) = u32::try_from(end) else {
            return false;
        };
        self.text.push_str(s);
        self.offsets.push(end32);
        true
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> &str {
        &self.text[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// String column: plain, or a dictionary of distinct strings with one code per row.
#[derive(Clone, Debug, PartialEq)]
pub enum StrData {
    Plain(Strs),
    Dict { dict: Strs, codes: Vec<u32> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct StrCol {
    pub data: StrData,
    pub valid: Option<Bitset>,
}

impl StrCol {
    pub fn len(&self) -> usize {
        match &self.data {
            StrData::Plain(s) => s.len(),
            StrData::Dict { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string of row `i` ("" for a null row).
    #[inline]
    pub fn get(&self, i: usize) -> &str {
        match &self.data {
            StrData::Plain(s) => s.get(i),
            StrData::Dict { dict, codes } => dict.get(codes[i] as usize),
        }
    }
}

/// A shredded JSON column (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonCol {
    /// Shredded keys and their typed sub-columns.
    pub keys: Vec<String>,
    pub cols: Vec<Column>,
    /// Shape `SHAPE_FIRST + j` is `shapes[j]`: per key of the row, in order, the shredded
    /// key's index or `None` for the next key of the rest.
    shapes: Vec<Vec<Option<u16>>>,
    shape_of: Vec<u16>,
    /// MessagePack per row (empty: nothing); `None` when no row has any.
    rest: Option<Blobs>,
}

#[derive(Clone, Debug, PartialEq)]
struct Blobs {
    offsets: Vec<u64>,
    bytes: Vec<u8>,
}

impl Blobs {
    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// One column of scalar values (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    /// Values as inserted (growing segments).
    Values(Vec<Value>),
    Int(IntCol),
    Float(FloatCol),
    Bool(BoolCol),
    Str(StrCol),
    Json(Box<JsonCol>),
}

impl Default for Column {
    fn default() -> Self {
        Column::Values(Vec::new())
    }
}

#[inline]
fn valid_at(valid: &Option<Bitset>, i: usize) -> bool {
    valid.as_ref().is_none_or(|b| b.get(i))
}

fn float_value(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The scalar kind of a value, `None` for anything else (null, arrays, objects, numbers
/// beyond i64 that are not floats).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

fn kind(v: &Value) -> Option<Kind> {
    match v {
        Value::Number(n) if n.is_i64() => Some(Kind::Int),
        Value::Number(n) if n.is_f64() => Some(Kind::Float),
        Value::Bool(_) => Some(Kind::Bool),
        Value::String(_) => Some(Kind::Str),
        _ => None,
    }
}

fn validity(n: usize, mut is_valid: impl FnMut(usize) -> bool) -> Option<Bitset> {
    let mut b = Bitset::zeros(n);
    let mut all = true;
    for i in 0..n {
        let v = is_valid(i);
        all &= v;
        b.set(i, v);
    }
    (!all).then_some(b)
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Values(v) => v.len(),
            Column::Int(c) => c.vals.len(),
            Column::Float(c) => c.vals.len(),
            Column::Bool(c) => c.vals.len(),
            Column::Str(c) => c.len(),
            Column::Json(c) => c.shape_of.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends inserted values (growing segments only).
    pub fn push(&mut self, vals: &[Value]) {
        match self {
            Column::Values(v) => v.extend_from_slice(vals),
            _ => unreachable!("appending to a sealed column"),
        }
    }

    /// The value of row `i` (null for a null row, or past the end).
    pub fn get(&self, i: usize) -> Cow<'_, Value> {
        if i >= self.len() {
            return Cow::Borrowed(&NULL);
        }
        match self {
            Column::Values(v) => Cow::Borrowed(&v[i]),
            _ if !self.is_valid(i) => Cow::Borrowed(&NULL),
            Column::Int(c) => Cow::Owned(Value::from(c.vals[i])),
            Column::Float(c) => Cow::Owned(float_value(c.vals[i])),
            Column::Bool(c) => Cow::Owned(Value::Bool(c.vals.get(i))),
            Column::Str(c) => Cow::Owned(Value::String(c.get(i).to_owned())),
            Column::Json(c) => Cow::Owned(c.get(i)),
        }
    }

    /// The value under `key` when row `i` is an object that has it.
    pub fn get_key(&self, i: usize, key: &str) -> Option<Cow<'_, Value>> {
        match self {
            Column::Values(v) => match v.get(i) {
                Some(Value::Object(m)) => m.get(key).map(Cow::Borrowed),
                _ => None,
            },
            Column::Json(c) if i < c.shape_of.len() => c.get_key(i, key),
            _ => None,
        }
    }

    /// False for a null row (and past the end).
    pub fn is_valid(&self, i: usize) -> bool {
        match self {
            Column::Values(v) => v.get(i).is_some_and(|x| !x.is_null()),
            Column::Int(c) => i < c.vals.len() && valid_at(&c.valid, i),
            Column::Float(c) => i < c.vals.len() && valid_at(&c.valid, i),
            Column::Bool(c) => i < c.vals.len() && valid_at(&c.valid, i),
            Column::Str(c) => i < c.len() && valid_at(&c.valid, i),
            Column::Json(c) => c.shape_of.get(i).is_some_and(|s| *s != SHAPE_NULL),
        }
    }

    /// Validity bitmap of a typed leaf column (`None`: all valid).
    pub fn validity(&self) -> Option<&Bitset> {
        match self {
            Column::Int(c) => c.valid.as_ref(),
            Column::Float(c) => c.valid.as_ref(),
            Column::Bool(c) => c.valid.as_ref(),
            Column::Str(c) => c.valid.as_ref(),
            _ => None,
        }
    }

    /// Seals inserted values into their typed form (no-op on a sealed column). What
    /// [`Column::get`] returns is unchanged.
    pub fn seal(&mut self) {
        if let Column::Values(v) = self {
            *self = Column::from_values(std::mem::take(v));
        }
    }

    /// The narrowest typed column that holds `values` exactly.
    pub fn from_values(values: Vec<Value>) -> Column {
        let n = values.len();
        let mut k: Option<Kind> = None;
        let mut mixed = false;
        for v in &values {
            if v.is_null() {
                continue;
            }
            match (kind(v), k) {
                (None, _) => mixed = true,
                (Some(x), None) => k = Some(x),
                (Some(x), Some(y)) if x != y => mixed = true,
                _ => {}
            }
            if mixed {
                break;
            }
        }
        let valid = || validity(n, |i| !values[i].is_null());
        match (mixed, k) {
            (true, _) => Column::Json(Box::new(JsonCol::build(values))),
            (false, None) | (false, Some(Kind::Int)) => Column::Int(IntCol {
                valid: valid(),
                vals: values.iter().map(|v| v.as_i64().unwrap_or(0)).collect(),
            }),
            (false, Some(Kind::Float)) => Column::Float(FloatCol {
                valid: valid(),
                vals: values.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
            }),
            (false, Some(Kind::Bool)) => {
                let mut b = Bitset::zeros(n);
                for (i, v) in values.iter().enumerate() {
                    b.set(i, v.as_bool() == Some(true));
                }
                Column::Bool(BoolCol {
                    vals: b,
                    valid: valid(),
                })
            }
            (false, Some(Kind::Str)) => match StrCol::build(&values) {
                Some(c) => Column::Str(StrCol {
                    data: c,
                    valid: valid(),
                }),
                None => Column::Json(Box::new(JsonCol::build(values))),
            },
        }
    }
}

impl StrCol {
    /// Dictionary-coded when at most a quarter of the rows are distinct; `None` when the
    /// text passes 4 GiB.
    fn build(values: &[Value]) -> Option<StrData> {
        let n = values.len();
        fn text(v: &Value) -> &str {
            v.as_str().unwrap_or("")
        }
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let mut dict = Strs::with_capacity(16);
        let mut codes = Vec::with_capacity(n);
        let limit = n / 4;
        for v in values {
            let key = text(v);
            let next = ids.len() as u32;
            let code = *ids.entry(key).or_insert(next);
            if code == next && (ids.len() > limit || !dict.push(key)) {
                let mut plain = Strs::with_capacity(n);
                for v in values {
                    if !plain.push(text(v)) {
                        return None;
                    }
                }
                return Some(StrData::Plain(plain));
            }
            codes.push(code);
        }
        Some(StrData::Dict { dict, codes })
    }
}

impl JsonCol {
    /// Shreds `values` (see the module docs).
    fn build(values: Vec<Value>) -> JsonCol {
        let n = values.len();
        // Keys that always hold one scalar kind, in first-seen order.
        let mut order: Vec<&str> = Vec::new();
        let mut kinds: HashMap<&str, Option<Kind>> = HashMap::new();
        for v in &values {
            if let Value::Object(m) = v {
                for (key, x) in m {
                    let kx = kind(x);
                    match kinds.get_mut(key.as_str()) {
                        None => {
                            order.push(key);
                            kinds.insert(key, kx);
                        }
                        Some(k) if *k != kx => *k = None,
                        Some(_) => {}
                    }
                }
            }
        }
        let mut keys: Vec<String> = order
            .iter()
            .filter(|k| kinds[**k].is_some())
            .take(MAX_SHRED_KEYS)
            .map(|k| k.to_string())
            .collect();
        // Shapes, interned; past MAX_SHAPES nothing is shredded.
        let mut shape_of = vec![SHAPE_NULL; n];
        let mut shapes: Vec<Vec<Option<u16>>> = Vec::new();
        if !keys.is_empty() {
            let pos: HashMap<&str, u16> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), i as u16))
                .collect();
            let mut ids: HashMap<Vec<Option<u16>>, u16> = HashMap::new();
            for (i, v) in values.iter().enumerate() {
                shape_of[i] = match v {
                    Value::Null => SHAPE_NULL,
                    Value::Object(m) => {
                        let slots: Vec<Option<u16>> =
                            m.keys().map(|k| pos.get(k.as_str()).copied()).collect();
                        match ids.get(&slots) {
                            Some(id) => *id,
                            None if shapes.len() < MAX_SHAPES => {
                                let id = SHAPE_FIRST + shapes.len() as u16;
                                shapes.push(slots.clone());
                                ids.insert(slots, id);
                                id
                            }
                            None => {
                                keys.clear();
                                shapes.clear();
                                break;
                            }
                        }
                    }
                    _ => SHAPE_OPAQUE,
                };
            }
        }
        // Shredded values as (row, value) per key, moved out of the rows: memory in
        // proportion to the values present, not rows × keys (64 dense columns of a
        // 100,000-row segment would be 460 MB of nulls). Each key is made dense and sealed
        // one at a time below.
        let mut sub: Vec<Vec<(u32, Value)>> = vec![Vec::new(); keys.len()];
        let pos: HashMap<String, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u64);
        let mut bytes = Vec::new();
        for (i, v) in values.into_iter().enumerate() {
            match v {
                Value::Null => shape_of[i] = SHAPE_NULL,
                Value::Object(m) if !keys.is_empty() => {
                    let mut rest = Map::new();
                    for (k, x) in m {
                        match pos.get(&k) {
                            Some(&c) => sub[c].push((i as u32, x)),
                            None => {
                                rest.insert(k, x);
                            }
                        }
                    }
                    if !rest.is_empty() {
                        bytes.extend(encode_value(&Value::Object(rest)));
                    }
                }
                other => {
                    shape_of[i] = SHAPE_OPAQUE;
                    bytes.extend(encode_value(&other));
                }
            }
            offsets.push(bytes.len() as u64);
        }
        let cols = sub
            .into_iter()
            .map(|present| {
                let mut dense = vec![Value::Null; n];
                for (i, x) in present {
                    dense[i as usize] = x;
                }
                Column::from_values(dense)
            })
            .collect();
        JsonCol {
            keys,
            cols,
            shapes,
            shape_of,
            rest: (!bytes.is_empty()).then_some(Blobs { offsets, bytes }),
        }
    }

    fn rest_value(&self, i: usize) -> Option<Value> {
        let b = self.rest.as_ref()?.get(i);
        if b.is_empty() {
            return None;
        }
        rmp_serde::from_slice(b).ok()
    }

    /// Index of a shredded key.
    pub fn key_index(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    fn get(&self, i: usize) -> Value {
        match self.shape_of[i] {
            SHAPE_NULL => Value::Null,
            SHAPE_OPAQUE => self.rest_value(i).unwrap_or(Value::Null),
            s => {
                let slots = &self.shapes[(s - SHAPE_FIRST) as usize];
                let mut rest = match self.rest_value(i) {
                    Some(Value::Object(m)) => m.into_iter(),
                    _ => Map::new().into_iter(),
                };
                let mut m = Map::with_capacity(slots.len());
                for slot in slots {
                    match slot {
                        Some(c) => {
                            let c = *c as usize;
                            m.insert(self.keys[c].clone(), self.cols[c].get(i).into_owned());
                        }
                        None => {
                            if let Some((k, v)) = rest.next() {
                                m.insert(k, v);
                            }
                        }
                    }
                }
                Value::Object(m)
            }
        }
    }

    fn get_key(&self, i: usize, key: &str) -> Option<Cow<'_, Value>> {
        match self.shape_of[i] {
            SHAPE_NULL => None,
            SHAPE_OPAQUE => match self.rest_value(i) {
                Some(Value::Object(mut m)) => m.remove(key).map(Cow::Owned),
                _ => None,
            },
            s => match self.key_index(key) {
                Some(c) => self.cols[c].is_valid(i).then(|| self.cols[c].get(i)),
                None => {
                    let slots = &self.shapes[(s - SHAPE_FIRST) as usize];
                    if slots.iter().all(|x| x.is_some()) {
                        return None;
                    }
                    match self.rest_value(i) {
                        Some(Value::Object(mut m)) => m.remove(key).map(Cow::Owned),
                        _ => None,
                    }
                }
            },
        }
    }
}

fn encode_value(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec(v).expect("a JSON value always encodes as MessagePack")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn round_trip(values: Vec<Value>) -> Column {
        let c = Column::from_values(values.clone());
        for (i, v) in values.iter().enumerate() {
            assert_eq!(&*c.get(i), v, "row {i} of {c:?}");
            if let Value::Object(m) = v {
                for (k, x) in m {
                    assert_eq!(c.get_key(i, k).as_deref(), Some(x));
                }
                assert_eq!(c.get_key(i, "no such key"), None);
            }
        }
        let mut w = Writer::default();
        c.encode(&mut w);
        let mut r = Reader::new(&w.buf, 1 << 30);
        let back = Column::decode(&mut r, values.len()).expect("decodes");
        assert_eq!(r.remaining(), 0);
        assert_eq!(back, c);
        c
    }

    #[test]
    fn typed_columns_round_trip_exactly() {
        assert!(matches!(
            round_trip(vec![json!(1), Value::Null, json!(-5), json!(i64::MAX)]),
            Column::Int(_)
        ));
        assert!(matches!(
            round_trip(vec![json!(1.5), json!(0.1), Value::Null]),
            Column::Float(_)
        ));
        assert!(matches!(
            round_trip(vec![json!(true), json!(false), Value::Null]),
            Column::Bool(_)
        ));
        let c = round_trip(
            (0..100)
                .map(|i| json!(["red", "green", "blé"][i % 3]))
                .collect(),
        );
        assert!(matches!(
            &c,
            Column::Str(StrCol {
                data: StrData::Dict { .. },
                ..
            })
        ));
        let c = round_trip((0..10).map(|i| json!(format!("s{i}"))).collect());
        assert!(matches!(
            &c,
            Column::Str(StrCol {
                data: StrData::Plain(_),
                ..
            })
        ));
        // Integers and floats mixed stay exact (JSON).
        assert!(matches!(
            round_trip(vec![json!(1), json!(1.0)]),
            Column::Json(_)
        ));
        round_trip(vec![]);
        round_trip(vec![Value::Null; 3]);
    }

    #[test]
    fn json_is_shredded_and_keeps_key_order() {
        let rows = vec![
            json!({"color": "red", "age": 31, "tags": [1, 2]}),
            json!({"age": 12, "color": "blue"}),
            Value::Null,
            json!([1, "x"]),
            json!({"color": "red", "nested": {"a": 1}, "age": 40}),
            json!({"mixed": 1}),
            json!({"mixed": "one"}),
            json!({}),
        ];
        let c = round_trip(rows);
        let Column::Json(j) = &c else { panic!("{c:?}") };
        assert_eq!(j.keys, vec!["color", "age"]);
        assert!(matches!(j.cols[0], Column::Str(_)));
        assert!(matches!(j.cols[1], Column::Int(_)));
        assert_eq!(c.get_key(3, "color"), None);
    }

    #[test]
    fn damaged_bytes_are_errors() {
        let c = Column::from_values(vec![
            json!({"a": 1, "b": "x", "c": [1]}),
            json!({"b": "y", "a": 2}),
            json!(7),
        ]);
        let mut w = Writer::default();
        c.encode(&mut w);
        for cut in 0..w.buf.len() {
            let mut r = Reader::new(&w.buf[..cut], 1 << 20);
            assert!(Column::decode(&mut r, 3).is_err(), "cut at {cut}");
        }
        for i in 0..w.buf.len() {
            for bit in [1u8, 0x80] {
                let mut b = w.buf.clone();
                b[i] ^= bit;
                // Never a panic; either an error or a column that reads back.
                if let Ok(c) = Column::decode(&mut Reader::new(&b, 1 << 20), 3) {
                    for r in 0..3 {
                        let _ = c.get(r);
                    }
                }
            }
        }
        // A tiny input cannot claim a huge column.
        let mut w = Writer::default();
        Column::from_values(vec![json!(0); 10]).encode(&mut w);
        assert!(Column::decode(&mut Reader::new(&w.buf, 1000), 1 << 40).is_err());
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(|x| json!(x)),
            any::<bool>().prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec(("[a-d]", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_values_round_trip(values in prop::collection::vec(value(), 0..40)) {
            round_trip(values);
        }

        #[test]
        fn packed_ints_round_trip(vals in prop::collection::vec(any::<i64>(), 0..70),
                                  small in prop::collection::vec(-3i64..3, 0..70)) {
            for v in [vals, small] {
                let mut w = Writer::default();
                w.ints(&v);
                let mut r = Reader::new(&w.buf, 1 << 20);
                prop_assert_eq!(r.ints(v.len()).unwrap(), v);
                prop_assert_eq!(r.remaining(), 0);
            }
        }
    }
}
