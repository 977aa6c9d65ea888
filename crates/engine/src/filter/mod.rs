//! Milvus boolean filter expressions.
//!
//! `parse` turns text into an [`Expr`]; [`Filter::compile`] resolves names against a
//! schema (schema fields first, then dynamic fields by bare name when the collection has
//! them); [`Filter::eval`] evaluates one row. The engine evaluates a filter per segment
//! into a [`magpie_index::Bitset`], which indexes consume: [`Filter::eval_columns`] reads
//! the typed columns of a sealed segment ([`crate::column`]) a field at a time
//! (comparisons, `in`, `like`, `is null` on a field or a shredded JSON key, and `and` /
//! `or` / `not` of those, as bitmap operations 64 rows at a time) and falls back to
//! row-by-row evaluation for the rest (arithmetic, functions, growing segments). Both
//! give the same answer on every row (tested against each other by proptest).
//!
//! Grammar (lowest precedence first):
//! ```text
//! or      := and (("or" | "||") and)*
//! and     := not (("and" | "&&") not)*
//! not     := ("not" | "!") not | cmp
//! cmp     := sum ( (cmpop sum)+            -- chained: 10 < a < 20
//!                | ["not"] "in" list | ["not"] "like" STRING
//!                | "is" ["not"] "null" )?
//! sum     := prod (("+" | "-") prod)*
//! prod    := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | postfix
//! postfix := primary ("[" (STRING | INT) "]")*
//! primary := NUMBER | STRING | true | false | null | "(" or ")" | list
//!          | IDENT "(" args ")" | IDENT
//! ```
//! Comparisons involving null or a missing value are false (so `not (x == 1)` is true for
//! a row without `x`); `is null` matches null and missing values.
//!
//! Bounds: an expression is at most [`MAX_FILTER_BYTES`] long and its tree at most
//! [`MAX_FILTER_DEPTH`] levels deep (parentheses, `not`, unary minus, `[ ]` paths and
//! nested lists count, and so does each operator of a chain like `a + b + c`). The parser
//! checks both while it builds the tree, so parsing, name resolution, evaluation and the
//! tree's drop, which all recurse, stay far from the end of a thread's stack whatever a
//! client sends. `and`/`or` chains and `in` lists are flat and may be long.

use crate::schema::{CollectionSchema, DataType, DYNAMIC_FIELD};
use crate::types::PrimaryKey;
use magpie_index::Bitset;
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

mod columns;
pub use columns::{ColumnRow, Columns};
mod like;
mod parse;
pub use like::MAX_LIKE_CHARS;
use like::{like_tokens, LikePattern};
use parse::num;
pub use parse::{parse, BinOp, Expr};

/// A parse or name-resolution error, with the byte position in the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub pos: usize,
    pub msg: String,
    pub expr: String,
}

/// Longest accepted filter expression, bytes.
pub const MAX_FILTER_BYTES: usize = 256 << 10;
/// Deepest accepted expression tree (see the module docs).
pub const MAX_FILTER_DEPTH: usize = 64;

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let near: String = self
            .expr
            .get(self.pos..)
            .unwrap_or("")
            .chars()
            .take(16)
            .collect();
        // A long expression is not echoed whole: the position and the text near it say
        // where the problem is. Messages that quote a token or a name are cut too (a
        // string literal can be as long as the expression; found by fuzzing).
        let msg: String = if self.msg.chars().count() > 160 {
            self.msg.chars().take(160).chain("…".chars()).collect()
        } else {
            self.msg.clone()
        };
        if self.expr.len() <= 200 {
            write!(
                f,
                "{msg} at position {} in `{}` (near `{near}`)",
                self.pos, self.expr
            )
        } else {
            write!(
                f,
                "{msg} at position {} of a {}-byte expression (near `{near}`)",
                self.pos,
                self.expr.len()
            )
        }
    }
}

impl std::error::Error for FilterError {}

/// A row as the filter sees it.
pub trait RowAccess {
    fn pk(&self) -> &PrimaryKey;
    /// Value of the i-th scalar field (schema order of non-pk, non-vector fields).
    fn scalar(&self, i: usize) -> Cow<'_, Value>;
    /// The dynamic-field object (or Null).
    fn dynamic(&self) -> Cow<'_, Value>;
    /// `key` of the dynamic-field object, when present.
    fn dynamic_key(&self, key: &str) -> Option<Cow<'_, Value>> {
        cow_key(self.dynamic(), key)
    }
    /// `key` of the i-th scalar field, when it is an object that has it.
    fn scalar_key(&self, i: usize, key: &str) -> Option<Cow<'_, Value>> {
        cow_key(self.scalar(i), key)
    }
}

fn cow_key<'a>(v: Cow<'a, Value>, key: &str) -> Option<Cow<'a, Value>> {
    match v {
        Cow::Borrowed(Value::Object(m)) => m.get(key).map(Cow::Borrowed),
        Cow::Owned(Value::Object(mut m)) => m.remove(key).map(Cow::Owned),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum C {
    Lit(Value),
    Pk,
    Scalar(usize),
    Dyn(String),
    DynAll,
    Index(Box<C>, Value),
    Neg(Box<C>),
    Not(Box<C>),
    And(Vec<C>),
    Or(Vec<C>),
    Bin(BinOp, Box<C>, Box<C>),
    In(Box<C>, Vec<Value>, bool),
    Like(Box<C>, LikePattern, bool),
    IsNull(Box<C>, bool),
    Contains(Box<C>, Box<C>),
    ContainsAny(Box<C>, Vec<Value>, bool),
    Length(Box<C>),
    /// `TEXT_MATCH(field, 'words')`: the field's analyzed text holds one of the terms.
    TextMatch(
        usize,
        std::sync::Arc<crate::analyzer::Analyzer>,
        Vec<String>,
    ),
    /// `PHRASE_MATCH(field, 'words', slop)`: the terms in order, with at most `slop`
    /// other terms between them in all.
    PhraseMatch(
        usize,
        std::sync::Arc<crate::analyzer::Analyzer>,
        Vec<String>,
        usize,
    ),
}

/// A compiled filter, bound to one schema.
#[derive(Debug, Clone)]
pub struct Filter {
    root: C,
    pub text: String,
}

impl Filter {
    /// Parses and resolves `src` against `schema`.
    pub fn compile(src: &str, schema: &CollectionSchema) -> Result<Filter, FilterError> {
        let e = parse(src)?;
        let root = compile(&e, schema, src)?;
        Ok(Filter {
            root,
            text: src.to_string(),
        })
    }

    /// Evaluates the filter on one row.
    pub fn eval(&self, row: &dyn RowAccess) -> bool {
        truthy(&ev(&self.root, row))
    }

    /// Narrows `mask` (one bit per row of `cols`) to the rows that pass, reading typed
    /// columns a field at a time where it can (see the module docs). Same answer as
    /// [`Filter::eval`] on every row.
    pub fn eval_columns(&self, cols: &Columns<'_>, mask: &mut Bitset) {
        *mask = columns::colev(&self.root, cols, mask);
    }

    /// The JSON paths the filter's comparisons, `in`, `like` and `is null` read (those a
    /// JSON path index can answer), without repeats.
    pub fn paths(&self) -> Vec<JsonPath> {
        fn walk(c: &C, out: &mut Vec<JsonPath>) {
            match c {
                C::And(v) | C::Or(v) => v.iter().for_each(|x| walk(x, out)),
                C::Not(x) => walk(x, out),
                _ => {
                    if let Some(p) = columns::operand(c).and_then(JsonPath::of) {
                        if !out.contains(&p) {
                            out.push(p);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// Where a JSON path starts: a JSON field (its position among the scalar fields) or the
/// dynamic field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathBase {
    Field(usize),
    Dynamic,
}

/// A path into a JSON field or the dynamic field, written as filters write it:
/// `meta["a"]["b"]`, `meta["list"][0]`, a dynamic key `color` (the same path as
/// `$meta["color"]`). Two paths are equal when they lead to the same place.
#[derive(Clone, Debug)]
pub struct JsonPath {
    pub base: PathBase,
    pub keys: Vec<Value>,
    /// The path as an expression, which reads it exactly as filters do.
    expr: C,
}

impl PartialEq for JsonPath {
    fn eq(&self, o: &Self) -> bool {
        self.base == o.base && self.keys == o.keys
    }
}

impl JsonPath {
    /// Parses a path (Milvus's `json_path`) against `schema`.
    pub fn parse(src: &str, schema: &CollectionSchema) -> Result<JsonPath, FilterError> {
        let e = parse(src)?;
        let c = compile(&e, schema, src)?;
        JsonPath::of(&c).ok_or_else(|| FilterError {
            pos: 0,
            msg: "a JSON path is a JSON field or dynamic key followed by [\"key\"] or [index] steps, e.g. meta[\"color\"]".into(),
            expr: src.to_string(),
        })
    }

    fn of(c: &C) -> Option<JsonPath> {
        let (base, keys) = match c {
            C::DynAll => (PathBase::Dynamic, Vec::new()),
            C::Dyn(k) => (PathBase::Dynamic, vec![Value::String(k.clone())]),
            C::Scalar(i) => (PathBase::Field(*i), Vec::new()),
            C::Index(b, k) => {
                let mut p = JsonPath::of(b)?;
                p.keys.push(k.clone());
                (p.base, p.keys)
            }
            _ => return None,
        };
        Some(JsonPath {
            base,
            keys,
            expr: c.clone(),
        })
    }

    /// The value at the path in row `i` of `cols`, read as a filter reads it (`None`
    /// when the path leads nowhere or to null).
    pub fn value(&self, cols: &Columns<'_>, i: usize) -> Option<Cow<'static, Value>> {
        let row = cols.row(i);
        match ev(&self.expr, &row) {
            v if v.is_null() => None,
            v => Some(Cow::Owned(v.into_owned())),
        }
    }

    /// The path as a filter writes it, with `field` the JSON field's name.
    pub fn display(&self, field: &str) -> String {
        let mut s = match (&self.base, self.keys.first()) {
            (PathBase::Dynamic, Some(Value::String(k))) => k.clone(),
            (PathBase::Dynamic, _) => DYNAMIC_FIELD.to_string(),
            _ => field.to_string(),
        };
        let skip = usize::from(matches!(
            (&self.base, self.keys.first()),
            (PathBase::Dynamic, Some(Value::String(_)))
        ));
        for k in &self.keys[skip..] {
            s.push('[');
            s.push_str(&k.to_string());
            s.push(']');
        }
        s
    }
}

/// Source position of an expression, where it carries one (names and calls).
fn pos_of(e: &Expr) -> usize {
    match e {
        Expr::Ident { pos, .. } | Expr::Call { pos, .. } => *pos,
        Expr::Index(b, _) | Expr::Neg(b) | Expr::Not(b) => pos_of(b),
        Expr::Bin(_, a, _) => pos_of(a),
        _ => 0,
    }
}

fn compile(e: &Expr, s: &CollectionSchema, src: &str) -> Result<C, FilterError> {
    let err = |pos: usize, msg: String| FilterError {
        pos,
        msg,
        expr: src.to_string(),
    };
    let lits = |list: &[Expr]| -> Result<Vec<Value>, FilterError> {
        list.iter()
            .map(|x| match compile(x, s, src)? {
                C::Lit(v) => Ok(v),
                _ => Err(err(pos_of(x), "list elements must be literals".into())),
            })
            .collect()
    };
    Ok(match e {
        Expr::Lit(v) => C::Lit(v.clone()),
        Expr::Ident { name, pos } => {
            if let Some(f) = s.field(name) {
                if f.is_primary {
                    C::Pk
                } else if f.is_vector() || f.is_sparse() {
                    return Err(err(
                        *pos,
                        format!("vector field '{name}' cannot be used in a filter"),
                    ));
                } else {
                    C::Scalar(s.scalar_index(name).expect("scalar field"))
                }
            } else if name == DYNAMIC_FIELD && s.enable_dynamic_field {
                C::DynAll
            } else if s.enable_dynamic_field {
                C::Dyn(name.clone())
            } else {
                return Err(err(*pos, format!("unknown field '{name}'")));
            }
        }
        Expr::Index(b, k) => {
            let inner = compile(b, s, src)?;
            if let C::Scalar(i) = &inner {
                let f = s.scalar_fields().nth(*i).expect("scalar");
                if !matches!(f.data_type, DataType::JSON | DataType::Array) {
                    return Err(err(pos_of(b), format!("field '{}' is {:?}; only JSON and Array fields can be indexed with [ ]", f.name, f.data_type)));
                }
            }
            C::Index(Box::new(inner), k.clone())
        }
        Expr::List(items) => C::Lit(Value::Array(lits(items)?)),
        Expr::Neg(b) => C::Neg(Box::new(compile(b, s, src)?)),
        Expr::Not(b) => C::Not(Box::new(compile(b, s, src)?)),
        Expr::And(v) => C::And(
            v.iter()
                .map(|x| compile(x, s, src))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Or(v) => C::Or(
            v.iter()
                .map(|x| compile(x, s, src))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Bin(op, a, b) => C::Bin(
            *op,
            Box::new(compile(a, s, src)?),
            Box::new(compile(b, s, src)?),
        ),
        Expr::In { e, list, negated } => {
            C::In(Box::new(compile(e, s, src)?), lits(list)?, *negated)
        }
        Expr::Like {
            e,
            pattern,
            negated,
        } => {
            if pattern.chars().count() > MAX_LIKE_CHARS {
                return Err(err(
                    0,
                    format!("a LIKE pattern may have at most {MAX_LIKE_CHARS} characters"),
                ));
            }
            C::Like(
                Box::new(compile(e, s, src)?),
                LikePattern::new(&like_tokens(pattern)),
                *negated,
            )
        }
        Expr::IsNull { e, negated } => C::IsNull(Box::new(compile(e, s, src)?), *negated),
        Expr::Call { name, args, pos } => {
            let arity = |n: usize| {
                if args.len() == n {
                    Ok(())
                } else {
                    Err(err(
                        *pos,
                        format!("{name}() takes {n} argument(s), got {}", args.len()),
                    ))
                }
            };
            match name.as_str() {
                "array_contains" | "json_contains" => {
                    arity(2)?;
                    C::Contains(
                        Box::new(compile(&args[0], s, src)?),
                        Box::new(compile(&args[1], s, src)?),
                    )
                }
                "array_contains_any" | "json_contains_any" | "array_contains_all"
                | "json_contains_all" => {
                    arity(2)?;
                    let list = match compile(&args[1], s, src)? {
                        C::Lit(Value::Array(a)) => a,
                        _ => {
                            return Err(err(
                                *pos,
                                format!("the second argument of {name}() must be a list"),
                            ))
                        }
                    };
                    C::ContainsAny(
                        Box::new(compile(&args[0], s, src)?),
                        list,
                        name.ends_with("_all"),
                    )
                }
                "array_length" => {
                    arity(1)?;
                    C::Length(Box::new(compile(&args[0], s, src)?))
                }
                "text_match" | "phrase_match" => {
                    let phrase = name == "phrase_match";
                    if !(args.len() == 2 || (phrase && args.len() == 3)) {
                        return Err(err(
                            *pos,
                            format!(
                                "{name}() takes (field, 'text'{}), got {} argument(s)",
                                if phrase { "[, slop]" } else { "" },
                                args.len()
                            ),
                        ));
                    }
                    let field = match &args[0] {
                        Expr::Ident { name: f, .. } => s.field(f),
                        _ => None,
                    }
                    .filter(|f| f.data_type == DataType::VarChar && !f.is_primary)
                    .ok_or_else(|| {
                        err(
                            *pos,
                            format!("the first argument of {name}() must be a VarChar field"),
                        )
                    })?;
                    if !field.enable_match {
                        return Err(err(
                            *pos,
                            format!(
                                "{name}() needs enable_match on field '{}' (set it when creating the collection)",
                                field.name
                            ),
                        ));
                    }
                    let text = match &args[1] {
                        Expr::Lit(Value::String(t)) => t.as_str(),
                        _ => {
                            return Err(err(
                                *pos,
                                format!("the second argument of {name}() must be a string"),
                            ))
                        }
                    };
                    let analyzer = field.analyzer().map_err(|m| err(*pos, m))?;
                    let terms = analyzer.analyze(text);
                    let i = s.scalar_index(&field.name).expect("scalar field");
                    let analyzer = std::sync::Arc::new(analyzer);
                    if phrase {
                        let slop = match args.get(2) {
                            None => 0,
                            Some(Expr::Lit(v)) => {
                                v.as_u64().filter(|x| *x <= 1 << 20).ok_or_else(|| {
                                    err(
                                        *pos,
                                        "the slop of phrase_match() must be a non-negative integer"
                                            .into(),
                                    )
                                })? as usize
                            }
                            Some(_) => {
                                return Err(err(
                                    *pos,
                                    "the slop of phrase_match() must be a number".into(),
                                ))
                            }
                        };
                        C::PhraseMatch(i, analyzer, terms, slop)
                    } else {
                        C::TextMatch(i, analyzer, terms)
                    }
                }
                _ => return Err(err(*pos, format!("unknown function '{name}'"))),
            }
        }
    })
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

fn ev<'a>(c: &'a C, row: &'a dyn RowAccess) -> Cow<'a, Value> {
    match c {
        C::Lit(v) => Cow::Borrowed(v),
        C::Pk => Cow::Owned(row.pk().to_json()),
        C::Scalar(i) => row.scalar(*i),
        C::DynAll => row.dynamic(),
        C::Dyn(k) => row.dynamic_key(k).unwrap_or(Cow::Owned(Value::Null)),
        C::Index(b, Value::String(k)) if matches!(**b, C::Scalar(_) | C::DynAll) => {
            let got = match &**b {
                C::Scalar(i) => row.scalar_key(*i, k),
                _ => row.dynamic_key(k),
            };
            got.unwrap_or(Cow::Owned(Value::Null))
        }
        C::Index(b, k) => {
            let base = ev(b, row);
            let got = match (&*base, k) {
                (Value::Object(m), Value::String(s)) => m.get(s).cloned(),
                (Value::Array(a), Value::Number(n)) => {
                    n.as_u64().and_then(|i| a.get(i as usize)).cloned()
                }
                _ => None,
            };
            Cow::Owned(got.unwrap_or(Value::Null))
        }
        C::Neg(b) => Cow::Owned(match &*ev(b, row) {
            Value::Number(n) if n.is_i64() => Value::from(n.as_i64().unwrap().wrapping_neg()),
            Value::Number(n) => num(-n.as_f64().unwrap_or(0.0)),
            _ => Value::Null,
        }),
        C::Not(b) => Cow::Owned(Value::Bool(!truthy(&ev(b, row)))),
        C::And(v) => Cow::Owned(Value::Bool(v.iter().all(|x| truthy(&ev(x, row))))),
        C::Or(v) => Cow::Owned(Value::Bool(v.iter().any(|x| truthy(&ev(x, row))))),
        C::Bin(op, a, b) => {
            let (x, y) = (ev(a, row), ev(b, row));
            Cow::Owned(binop(*op, &x, &y))
        }
        C::In(e, list, neg) => {
            let v = ev(e, row);
            if v.is_null() {
                return Cow::Owned(Value::Bool(false));
            }
            let hit = list.iter().any(|x| val_cmp(&v, x) == Some(Ordering::Equal));
            Cow::Owned(Value::Bool(hit != *neg))
        }
        C::Like(e, pat, neg) => {
            let v = ev(e, row);
            Cow::Owned(Value::Bool(match v.as_str() {
                Some(s) => pat.matches(s) != *neg,
                None => false,
            }))
        }
        C::IsNull(e, neg) => Cow::Owned(Value::Bool(ev(e, row).is_null() != *neg)),
        C::Contains(a, x) => {
            let arr = ev(a, row);
            let x = ev(x, row);
            Cow::Owned(Value::Bool(match &*arr {
                Value::Array(items) => items
                    .iter()
                    .any(|i| val_cmp(i, &x) == Some(Ordering::Equal)),
                _ => false,
            }))
        }
        C::ContainsAny(a, list, all) => {
            let arr = ev(a, row);
            Cow::Owned(Value::Bool(match &*arr {
                Value::Array(items) => {
                    let has =
                        |x: &Value| items.iter().any(|i| val_cmp(i, x) == Some(Ordering::Equal));
                    if *all {
                        list.iter().all(has)
                    } else {
                        list.iter().any(has)
                    }
                }
                _ => false,
            }))
        }
        C::Length(a) => Cow::Owned(match &*ev(a, row) {
            Value::Array(items) => Value::from(items.len() as i64),
            _ => Value::Null,
        }),
        C::TextMatch(i, analyzer, terms) => Cow::Owned(Value::Bool(match &*row.scalar(*i) {
            Value::String(t) => {
                !terms.is_empty() && analyzer.analyze(t).iter().any(|x| terms.contains(x))
            }
            _ => false,
        })),
        C::PhraseMatch(i, analyzer, terms, slop) => {
            Cow::Owned(Value::Bool(match &*row.scalar(*i) {
                Value::String(t) => phrase_in(&analyzer.analyze(t), terms, *slop),
                _ => false,
            }))
        }
    }
}

/// Whether `phrase` occurs in `tokens` in order with at most `slop` other tokens between
/// its terms in all. From each place the first term occurs, every next term is taken at
/// its first position after the previous one (which gives the shortest span from that
/// start), found by binary search in that term's positions: O(n + starts · terms · log n)
/// per row, whatever the text repeats.
fn phrase_in(tokens: &[String], phrase: &[String], slop: usize) -> bool {
    if phrase.is_empty() {
        return false;
    }
    let mut positions: std::collections::HashMap<&str, Vec<usize>> =
        phrase.iter().map(|t| (t.as_str(), Vec::new())).collect();
    for (i, t) in tokens.iter().enumerate() {
        if let Some(v) = positions.get_mut(t.as_str()) {
            v.push(i);
        }
    }
    for &start in &positions[phrase[0].as_str()] {
        let mut at = start;
        for p in &phrase[1..] {
            let ps = &positions[p.as_str()];
            match ps.get(ps.partition_point(|&x| x <= at)) {
                Some(&next) => at = next,
                // Later starts cannot do better: the term never comes after this point.
                None => return false,
            }
        }
        if at - start + 1 - phrase.len() <= slop {
            return true;
        }
    }
    false
}

/// Compares two values: numbers with numbers, strings with strings, booleans with
/// booleans, arrays element-wise for equality. `None` when incomparable (or null).
fn val_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            if x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| val_cmp(p, q) == Some(Ordering::Equal))
            {
                Some(Ordering::Equal)
            } else {
                None
            }
        }
        (Value::Object(_), Value::Object(_)) if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

fn binop(op: BinOp, x: &Value, y: &Value) -> Value {
    use BinOp::*;
    match op {
        Eq | Ne | Lt | Le | Gt | Ge => {
            let o = val_cmp(x, y);
            let r = match (op, o) {
                // Non-null values of different types are unequal; any comparison
                // with null (or a missing value) is false.
                (Ne, None) => !x.is_null() && !y.is_null(),
                (_, None) => false,
                (Eq, Some(o)) => o == Ordering::Equal,
                (Ne, Some(o)) => o != Ordering::Equal,
                (Lt, Some(o)) => o == Ordering::Less,
                (Le, Some(o)) => o != Ordering::Greater,
                (Gt, Some(o)) => o == Ordering::Greater,
                (Ge, Some(o)) => o != Ordering::Less,
                _ => false,
            };
            Value::Bool(r)
        }
        Add | Sub | Mul | Div | Mod => {
            let (Value::Number(a), Value::Number(b)) = (x, y) else {
                return Value::Null;
            };
            if let (Some(i), Some(j)) = (a.as_i64(), b.as_i64()) {
                return match op {
                    Add => i.checked_add(j).map(Value::from),
                    Sub => i.checked_sub(j).map(Value::from),
                    Mul => i.checked_mul(j).map(Value::from),
                    Div => (j != 0).then(|| num(i as f64 / j as f64)),
                    Mod => i.checked_rem(j).map(Value::from),
                    _ => None,
                }
                .unwrap_or(Value::Null);
            }
            let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) else {
                return Value::Null;
            };
            let r = match op {
                Add => a + b,
                Sub => a - b,
                Mul => a * b,
                Div => a / b,
                _ => a % b,
            };
            num(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FieldSchema;
    use proptest::prelude::*;
    use serde_json::json;

    struct R {
        pk: PrimaryKey,
        s: Vec<Value>,
        d: Value,
    }
    impl RowAccess for R {
        fn pk(&self) -> &PrimaryKey {
            &self.pk
        }
        fn scalar(&self, i: usize) -> Cow<'_, Value> {
            Cow::Borrowed(&self.s[i])
        }
        fn dynamic(&self) -> Cow<'_, Value> {
            Cow::Borrowed(&self.d)
        }
    }

    fn schema() -> CollectionSchema {
        CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("v", DataType::FloatVector).with_dim(2),
                FieldSchema::new("age", DataType::Int32),
                FieldSchema::new("name", DataType::VarChar)
                    .with_max_length(64)
                    .nullable(),
                FieldSchema::new("meta", DataType::JSON),
                FieldSchema::new("tags", DataType::Array).array_of(DataType::Int64, 8),
            ],
            enable_dynamic_field: true,
            description: String::new(),
            functions: Vec::new(),
        }
    }

    fn row() -> R {
        R {
            pk: PrimaryKey::Int(7),
            s: vec![
                json!(15),
                json!("Alice 50%"),
                json!({"color": "red", "n": [1, 2]}),
                json!([1, 2, 3]),
            ],
            d: json!({"city": "Oslo", "rank": 2.5}),
        }
    }

    fn t(src: &str) -> bool {
        Filter::compile(src, &schema())
            .unwrap_or_else(|e| panic!("{e}"))
            .eval(&row())
    }

    #[test]
    fn text_and_phrase_match() {
        let mut s = schema();
        let mut body = FieldSchema::new("body", DataType::VarChar).with_max_length(200);
        body.enable_match = true;
        body.analyzer_params = Some(json!({"type": "english"}));
        s.fields.push(body);
        s.fields
            .push(FieldSchema::new("plain", DataType::VarChar).with_max_length(20));
        let mut r = row();
        r.s.push(json!("The quick brown foxes jumped over the lazy dogs"));
        r.s.push(json!("x"));
        let m = |src: &str| {
            Filter::compile(src, &s)
                .unwrap_or_else(|e| panic!("{src}: {e}"))
                .eval(&r)
        };
        for yes in [
            "TEXT_MATCH(body, 'fox')",
            "text_match(body, 'cat dog')",
            "TEXT_MATCH(body, 'Jumping')",
            "PHRASE_MATCH(body, 'brown fox')",
            "PHRASE_MATCH(body, 'quick fox', 1)",
            "PHRASE_MATCH(body, 'quick jumped', 2)",
            "not TEXT_MATCH(body, 'cat') and age == 15",
        ] {
            assert!(m(yes), "{yes}");
        }
        for no in [
            "TEXT_MATCH(body, 'cat')",
            "TEXT_MATCH(body, 'the')",
            "PHRASE_MATCH(body, 'quick fox')",
            "PHRASE_MATCH(body, 'quick jumped', 1)",
            "PHRASE_MATCH(body, 'fox brown', 5)",
        ] {
            assert!(!m(no), "{no}");
        }
        for (bad, want) in [
            (
                "TEXT_MATCH(plain, 'x')",
                "needs enable_match on field 'plain'",
            ),
            ("TEXT_MATCH(age, 'x')", "must be a VarChar field"),
            ("TEXT_MATCH(body, 3)", "must be a string"),
            ("TEXT_MATCH(body)", "takes (field, 'text')"),
            ("PHRASE_MATCH(body, 'a b', -1)", "slop"),
        ] {
            let e = Filter::compile(bad, &s).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn operators() {
        let yes = [
            "age == 15",
            "age != 16",
            "10 < age < 20",
            "age >= 15 && age <= 15",
            "id in [1, 7]",
            "id not in [1, 2]",
            "name like \"Ali%\"",
            "name like '%50\\%'",
            "name like '%ce%'",
            "name like 'A_ice%'",
            "meta[\"color\"] == 'red'",
            "meta['n'][1] == 2",
            "city == 'Oslo'",
            "rank > 2",
            "array_contains(tags, 2)",
            "array_contains_any(tags, [9, 3])",
            "array_contains_all(tags, [1, 3])",
            "array_length(tags) == 3",
            "missing is null",
            "name is not null",
            "age * 2 + 1 == 31",
            "age % 4 == 3",
            "age / 2 == 7.5",
            "-age < 0",
            "not (age > 20)",
            "!(age > 20) and (age > 1 or age < 0)",
            "NOT age in [1]",
            "$meta['city'] == 'Oslo'",
            "json_contains(meta['n'], 1)",
            "age == 15.0",
            "(age - 5) * 2 == 20",
            "TRUE",
            "name == 'Alice 50%'",
        ];
        for q in yes {
            assert!(t(q), "{q} should match");
        }
        let no = [
            "age > 15",
            "20 < age < 30",
            "id in []",
            "name like 'li%'",
            "missing == 1",
            "missing > 0",
            "array_contains(tags, 9)",
            "array_contains_all(tags, [1, 9])",
            "name is null",
            "city != 'Oslo'",
            "meta['nope'] == 1",
            "age == 'fifteen'",
        ];
        for q in no {
            assert!(!t(q), "{q} should not match");
        }
    }

    #[test]
    fn errors_point_at_position() {
        let s = schema();
        let cases = [
            ("age >", 5, "end of expression"),
            ("age = 1", 4, "'=='"),
            ("age == 'x", 7, "unterminated"),
            ("age == 1 age", 9, "after a complete"),
            ("(age == 1", 9, "')'"),
            ("nosuch(age)", 0, "unknown function"),
            ("v == 1", 0, "vector field"),
            ("age in 5", 7, "list"),
            ("age # 3", 4, "unexpected character"),
            ("", 0, "empty"),
            ("age in [1, name]", 11, "literals"),
            ("age == 1 and name['x'] == 1", 13, "only JSON and Array"),
        ];
        for (src, pos, frag) in cases {
            let e = Filter::compile(src, &s).unwrap_err();
            assert_eq!(e.pos, pos, "{src}: {e}");
            assert!(e.to_string().contains(frag), "{src}: {e}");
        }
        let mut strict = schema();
        strict.enable_dynamic_field = false;
        assert!(Filter::compile("city == 'x'", &strict)
            .unwrap_err()
            .msg
            .contains("unknown field"));
    }

    /// Every shape that once recursed without bound: each is refused with an error that
    /// names the limit (before, each overflowed the stack and aborted the process), and
    /// the same shape at the limit still parses, compiles and evaluates.
    #[test]
    fn deep_expressions_are_refused_not_fatal() {
        let n = 5000;
        let deep = [
            format!("{}age > 1{}", "(".repeat(n), ")".repeat(n)),
            format!("{}age > 1", "not ".repeat(n)),
            format!("{}age > 1", "!".repeat(n)),
            format!("{}1 < age", "-".repeat(n)),
            format!("age > {}", vec!["1"; n].join(" + ")),
            format!("age < {}", vec!["2"; n].join(" * ")),
            format!("meta{} == 1", "[0]".repeat(n)),
            format!("age in {}1{}", "[".repeat(n), "]".repeat(n)),
            format!(
                "array_length({}tags{}) > 0",
                "array_length(".repeat(n),
                ")".repeat(n)
            ),
        ];
        for src in &deep {
            let e = Filter::compile(src, &schema()).unwrap_err();
            assert!(e.msg.contains("deeper than 64 levels"), "{e}");
            // A long expression is not echoed back whole.
            assert!(e.to_string().len() < 400, "{}", e.to_string().len());
        }
        // At the limit: 62 parentheses around a comparison and a 60-term sum.
        let ok = format!("{}age > 1{}", "(".repeat(62), ")".repeat(62));
        assert!(t(&ok));
        let sum = format!("age > {}", vec!["0"; 60].join(" + "));
        assert!(t(&sum));
        // Long flat chains are not nesting.
        let ors = vec!["age == 1"; 20_000].join(" or ");
        assert!(!t(&ors));
        let list = format!(
            "age in [{}]",
            (0..20_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(t(&list));
    }

    #[test]
    fn overlong_filters_are_refused() {
        let src = format!("age > 1 or {}", vec!["age == 2"; 40_000].join(" or "));
        let e = parse(&src).unwrap_err();
        assert!(e.msg.contains("limit is 262144"), "{e}");
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn int_comparisons_agree_with_rust(a in -1000i64..1000, b in -1000i64..1000) {
            let r = R { pk: PrimaryKey::Int(0), s: vec![json!(a), Value::Null, Value::Null, json!([])], d: Value::Null };
            let s = schema();
            for (op, want) in [("<", a < b), ("<=", a <= b), (">", a > b), (">=", a >= b), ("==", a == b), ("!=", a != b)] {
                let f = Filter::compile(&format!("age {op} {b}"), &s).unwrap();
                prop_assert_eq!(f.eval(&r), want);
            }
        }

        #[test]
        fn like_prefix_matches_starts_with(s in "[a-c]{0,6}", p in "[a-c]{0,3}") {
            let toks = like_tokens(&format!("{p}%"));
            prop_assert_eq!(LikePattern::new(&toks).matches(&s), s.starts_with(&p));
            let toks = like_tokens(&format!("%{p}%"));
            prop_assert_eq!(LikePattern::new(&toks).matches(&s), s.contains(&p));
        }
    }
}
