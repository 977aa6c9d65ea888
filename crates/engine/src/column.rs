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
        let mut sub: Vec<Vec<Value>> = vec![vec![Value::Null; n]; keys.len()];
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
                            Some(&c) => sub[c][i] = x,
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
        JsonCol {
            keys,
            cols: sub.into_iter().map(Column::from_values).collect(),
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

    /// True when row `i` is an object (not null, not an opaque value) — in a column with
    /// shredded keys, the rows whose keys are all found through the sub-columns and rest.
    pub fn is_object_row(&self, i: usize) -> bool {
        self.shape_of[i] >= SHAPE_FIRST
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

// ---------------------------------------------------------------------------------
// Scalar indexes

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

// ---------------------------------------------------------------------------------
// Encoding

/// Appends the encoded form of values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, x: u8) {
        self.buf.push(x);
    }
    pub fn u32(&mut self, x: u32) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u64(&mut self, x: u64) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn words(&mut self, w: &[u64]) {
        for x in w {
            self.u64(*x);
        }
    }
    fn validity(&mut self, v: &Option<Bitset>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.words(b.words());
            }
        }
    }

    /// Integers, frame-of-reference bit-packed: min (i64), width (u8), packed words.
    pub fn ints(&mut self, vals: &[i64]) {
        let min = vals.iter().copied().min().unwrap_or(0);
        let max_d = vals
            .iter()
            .map(|v| v.wrapping_sub(min) as u64)
            .max()
            .unwrap_or(0);
        let width = 64 - max_d.leading_zeros();
        self.u64(min as u64);
        self.u8(width as u8);
        if width == 0 {
            return;
        }
        let mut words = vec![0u64; (vals.len() * width as usize).div_ceil(64)];
        for (i, v) in vals.iter().enumerate() {
            let d = v.wrapping_sub(min) as u64;
            let bit = i * width as usize;
            let (w, off) = (bit / 64, bit % 64);
            words[w] |= d << off;
            if off + width as usize > 64 {
                words[w + 1] |= d >> (64 - off);
            }
        }
        self.words(&words);
    }

    fn strs(&mut self, s: &Strs) {
        let lens: Vec<i64> = s.offsets.windows(2).map(|w| (w[1] - w[0]) as i64).collect();
        self.u64(lens.len() as u64);
        self.ints(&lens);
        self.bytes(s.text.as_bytes());
    }

    /// A string column without validity (primary keys use it).
    pub fn str_data(&mut self, d: &StrData) {
        match d {
            StrData::Plain(s) => {
                self.u8(0);
                self.strs(s);
            }
            StrData::Dict { dict, codes } => {
                self.u8(1);
                self.strs(dict);
                self.ints(&codes.iter().map(|c| *c as i64).collect::<Vec<_>>());
            }
        }
    }
}

const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_STR: u8 = 4;
const TAG_JSON: u8 = 5;

impl Column {
    /// Writes a sealed column (a growing one is sealed on a copy first).
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Column::Values(v) => Column::from_values(v.clone()).encode(w),
            Column::Int(c) => {
                w.u8(TAG_INT);
                w.validity(&c.valid);
                w.ints(&c.vals);
            }
            Column::Float(c) => {
                w.u8(TAG_FLOAT);
                w.validity(&c.valid);
                if c.vals.iter().all(|x| (*x as f32) as f64 == *x) {
                    w.u8(1);
                    for x in &c.vals {
                        w.buf.extend_from_slice(&(*x as f32).to_le_bytes());
                    }
                } else {
                    w.u8(0);
                    for x in &c.vals {
                        w.buf.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
            Column::Bool(c) => {
                w.u8(TAG_BOOL);
                w.validity(&c.valid);
                w.words(c.vals.words());
            }
            Column::Str(c) => {
                w.u8(TAG_STR);
                w.validity(&c.valid);
                w.str_data(&c.data);
            }
            Column::Json(c) => {
                w.u8(TAG_JSON);
                w.u32(c.keys.len() as u32);
                for (k, col) in c.keys.iter().zip(&c.cols) {
                    w.bytes(k.as_bytes());
                    col.encode(w);
                }
                w.u32(c.shapes.len() as u32);
                for s in &c.shapes {
                    w.u32(s.len() as u32);
                    for slot in s {
                        w.u32(slot.map_or(0, |k| k as u32 + 1));
                    }
                }
                w.ints(&c.shape_of.iter().map(|s| *s as i64).collect::<Vec<_>>());
                match &c.rest {
                    None => w.u8(0),
                    Some(r) => {
                        w.u8(1);
                        let lens: Vec<i64> =
                            r.offsets.windows(2).map(|x| (x[1] - x[0]) as i64).collect();
                        w.ints(&lens);
                        w.bytes(&r.bytes);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Decoding

/// Reads encoded values, checking every length against the input and charging every
/// allocation to a budget. Errors are messages; the caller names the file.
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    budget: usize,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    /// A reader that may allocate up to `budget` bytes in all.
    pub fn new(b: &'a [u8], budget: usize) -> Reader<'a> {
        Reader { b, pos: 0, budget }
    }

    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn charge(&mut self, bytes: usize) -> R<()> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            "decoded size exceeds what the file can hold (damaged lengths)".to_string()
        })?;
        Ok(())
    }

    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {n} bytes wanted at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A count that must not exceed `max`.
    pub fn count(&mut self, max: usize, what: &str) -> R<usize> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(format!("{what} count {n} exceeds {max}"));
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.count(self.remaining(), "byte")?;
        self.take(n)
    }
    fn words(&mut self, n_bits: usize) -> R<Bitset> {
        let nw = n_bits.div_ceil(64);
        if nw > self.remaining() / 8 {
            return Err("truncated bitmap".into());
        }
        self.charge(nw * 8)?;
        let mut w = Vec::with_capacity(nw);
        for _ in 0..nw {
            w.push(self.u64()?);
        }
        Bitset::from_words(w, n_bits).ok_or_else(|| "bitmap has bits past its length".into())
    }
    fn validity(&mut self, n: usize) -> R<Option<Bitset>> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.words(n).map(Some),
            t => Err(format!("unknown validity tag {t}")),
        }
    }

    /// `n` bit-packed integers (see [`Writer::ints`]).
    pub fn ints(&mut self, n: usize) -> R<Vec<i64>> {
        let min = self.u64()? as i64;
        let width = self.u8()? as usize;
        if width > 64 {
            return Err(format!("bit width {width} exceeds 64"));
        }
        self.charge(n.saturating_mul(8))?;
        if width == 0 {
            return Ok(vec![min; n]);
        }
        let nw = n
            .checked_mul(width)
            .map(|b| b.div_ceil(64))
            .filter(|nw| *nw <= self.remaining() / 8)
            .ok_or("truncated packed integers")?;
        let raw = self.take(nw * 8)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let bit = i * width;
            let (w, off) = (bit / 64, bit % 64);
            let mut d = words[w] >> off;
            if off + width > 64 {
                d |= words[w + 1] << (64 - off);
            }
            out.push(min.wrapping_add((d & mask) as i64));
        }
        Ok(out)
    }

    fn strs(&mut self) -> R<Strs> {
        let n = self.count(self.budget / 8, "string")?;
        let lens = self.ints(n)?;
        let text = self.bytes()?;
        self.charge(text.len() + 4 * (n + 1))?;
        let text = std::str::from_utf8(text).map_err(|e| format!("strings: {e}"))?;
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let mut end: u64 = 0;
        for l in lens {
            if l < 0 {
                return Err(format!("negative string length {l}"));
            }
            end += l as u64;
            if end > text.len() as u64 || !text.is_char_boundary(end as usize) {
                return Err("string lengths do not fit the text".into());
            }
            offsets.push(end as u32);
        }
        if end != text.len() as u64 {
            return Err("string lengths do not add up to the text".into());
        }
        Ok(Strs {
            offsets,
            text: text.to_string(),
        })
    }

    /// A string column of `n` rows without validity (see [`Writer::str_data`]).
    pub fn str_data(&mut self, n: usize) -> R<StrData> {
        match self.u8()? {
            0 => {
                let s = self.strs()?;
                if s.len() != n {
                    return Err(format!("{} strings for {n} rows", s.len()));
                }
                Ok(StrData::Plain(s))
            }
            1 => {
                let dict = self.strs()?;
                let codes = self.ints(n)?;
                let codes = codes
                    .into_iter()
                    .map(|c| {
                        u32::try_from(c)
                            .ok()
                            .filter(|c| (*c as usize) < dict.len())
                            .ok_or_else(|| format!("dictionary code {c} out of range"))
                    })
                    .collect::<R<Vec<u32>>>()?;
                Ok(StrData::Dict { dict, codes })
            }
            t => Err(format!("unknown string encoding {t}")),
        }
    }
}

impl Column {
    /// Reads a column of `n` rows written by [`Column::encode`], checking it whole.
    pub fn decode(r: &mut Reader<'_>, n: usize) -> R<Column> {
        Column::decode_at(r, n, 0)
    }

    fn decode_at(r: &mut Reader<'_>, n: usize, depth: usize) -> R<Column> {
        Ok(match r.u8()? {
            TAG_INT => {
                let valid = r.validity(n)?;
                Column::Int(IntCol {
                    vals: r.ints(n)?,
                    valid,
                })
            }
            TAG_FLOAT => {
                let valid = r.validity(n)?;
                let width = match r.u8()? {
                    0 => 8,
                    1 => 4,
                    t => return Err(format!("unknown float encoding {t}")),
                };
                let raw = r.take(n.checked_mul(width).ok_or("float column too long")?)?;
                r.charge(n * 8)?;
                let vals: Vec<f64> = if width == 4 {
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
                        .collect()
                } else {
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                        .collect()
                };
                if vals.iter().any(|x| !x.is_finite()) {
                    return Err("a float value is not finite".into());
                }
                Column::Float(FloatCol { vals, valid })
            }
            TAG_BOOL => {
                let valid = r.validity(n)?;
                Column::Bool(BoolCol {
                    vals: r.words(n)?,
                    valid,
                })
            }
            TAG_STR => {
                let valid = r.validity(n)?;
                Column::Str(StrCol {
                    data: r.str_data(n)?,
                    valid,
                })
            }
            TAG_JSON if depth < 2 => Column::Json(Box::new(JsonCol::decode(r, n, depth)?)),
            t => return Err(format!("unknown column tag {t}")),
        })
    }
}

impl JsonCol {
    fn decode(r: &mut Reader<'_>, n: usize, depth: usize) -> R<JsonCol> {
        let nk = r.u32()? as usize;
        if nk > MAX_SHRED_KEYS {
            return Err(format!("{nk} shredded keys exceed {MAX_SHRED_KEYS}"));
        }
        let mut keys = Vec::with_capacity(nk);
        let mut cols = Vec::with_capacity(nk);
        for _ in 0..nk {
            let k = std::str::from_utf8(r.bytes()?).map_err(|e| format!("key: {e}"))?;
            if keys.iter().any(|x: &String| x == k) {
                return Err(format!("key {k:?} shredded twice"));
            }
            keys.push(k.to_string());
            let c = Column::decode_at(r, n, depth + 1)?;
            if c.len() != n {
                return Err(format!("sub-column {k:?} has {} rows, not {n}", c.len()));
            }
            cols.push(c);
        }
        let ns = r.u32()? as usize;
        if ns > MAX_SHAPES || (nk == 0 && ns > 0) {
            return Err(format!("{ns} shapes for {nk} keys"));
        }
        let mut shapes = Vec::with_capacity(ns);
        for _ in 0..ns {
            let len = r.u32()? as usize;
            if len > r.remaining() / 4 {
                return Err("truncated shape".into());
            }
            r.charge(len * 4)?;
            let mut s = Vec::with_capacity(len);
            let mut seen = vec![false; nk];
            for _ in 0..len {
                let x = r.u32()? as usize;
                s.push(if x == 0 {
                    None
                } else if x <= nk && !seen[x - 1] {
                    seen[x - 1] = true;
                    Some((x - 1) as u16)
                } else {
                    return Err(format!("shape slot {x} is not a key of the column"));
                });
            }
            shapes.push(s);
        }
        let shape_of = r
            .ints(n)?
            .into_iter()
            .map(|s| {
                u16::try_from(s)
                    .ok()
                    .filter(|s| (*s as usize) < SHAPE_FIRST as usize + ns)
                    .ok_or_else(|| format!("shape {s} out of range"))
            })
            .collect::<R<Vec<u16>>>()?;
        let rest = match r.u8()? {
            0 => None,
            1 => {
                let lens = r.ints(n)?;
                let bytes = r.bytes()?;
                r.charge(bytes.len() + 8 * (n + 1))?;
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0u64);
                let mut end = 0u64;
                for l in lens {
                    end = u64::try_from(l)
                        .ok()
                        .and_then(|l| end.checked_add(l))
                        .filter(|e| *e <= bytes.len() as u64)
                        .ok_or("rest lengths do not fit the bytes")?;
                    offsets.push(end);
                }
                if end != bytes.len() as u64 {
                    return Err("rest lengths do not add up".into());
                }
                Some(Blobs {
                    offsets,
                    bytes: bytes.to_vec(),
                })
            }
            t => return Err(format!("unknown rest tag {t}")),
        };
        let c = JsonCol {
            keys,
            cols,
            shapes,
            shape_of,
            rest,
        };
        c.check()?;
        Ok(c)
    }

    /// Checks the invariants of the module docs row by row.
    fn check(&self) -> R<()> {
        for (i, &s) in self.shape_of.iter().enumerate() {
            let rest = match self.rest.as_ref().map(|r| r.get(i)) {
                None | Some([]) => None,
                Some(b) => Some(
                    rmp_serde::from_slice::<Value>(b).map_err(|e| format!("row {i}: rest: {e}"))?,
                ),
            };
            match s {
                SHAPE_NULL => {
                    if rest.is_some() {
                        return Err(format!("row {i}: a null row with data"));
                    }
                }
                SHAPE_OPAQUE => match rest {
                    None | Some(Value::Null) => {
                        return Err(format!("row {i}: an opaque row without a value"))
                    }
                    Some(Value::Object(_)) if !self.keys.is_empty() => {
                        return Err(format!("row {i}: an object outside the shapes"))
                    }
                    _ => {}
                },
                s => {
                    let slots = &self.shapes[(s - SHAPE_FIRST) as usize];
                    for (c, col) in self.cols.iter().enumerate() {
                        let listed = slots.contains(&Some(c as u16));
                        if col.is_valid(i) != listed {
                            return Err(format!(
                                "row {i}: key {:?} present {listed} but valid {}",
                                self.keys[c],
                                col.is_valid(i)
                            ));
                        }
                    }
                    let n_rest = slots.iter().filter(|x| x.is_none()).count();
                    let ok = match &rest {
                        None => n_rest == 0,
                        Some(Value::Object(m)) => {
                            m.len() == n_rest && m.keys().all(|k| self.key_index(k).is_none())
                        }
                        Some(_) => false,
                    };
                    if !ok {
                        return Err(format!("row {i}: rest does not fit its shape"));
                    }
                }
            }
        }
        Ok(())
    }
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
