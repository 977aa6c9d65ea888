//! Column-wise evaluation of a compiled filter over a segment's typed columns (and its
//! scalar indexes), 64 rows per bitmap word, with the row-by-row evaluation of the
//! parent module as the fallback. See the parent module's docs.

use super::{ev, truthy, val_cmp, BinOp, JsonPath, RowAccess, C};
use crate::column::{Column, PathIndex, SortedIndex, StrData};
use crate::types::PrimaryKey;
use magpie_index::Bitset;
use once_cell::sync::OnceCell;
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

/// The columns of a segment, as [`Filter::eval_columns`] reads them.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    pub pks: &'a [PrimaryKey],
    pub scalars: &'a [Column],
    /// The dynamic field (an empty column when the collection has none).
    pub dynamic: &'a Column,
    /// Per scalar field: whether it has a scalar index, and the segment's slot for it
    /// (built on first use). Empty: no scalar indexes.
    pub indexed: &'a [bool],
    pub sorted: &'a [OnceCell<Option<SortedIndex>>],
    /// JSON path indexes of this segment, with their paths (the ones a filter reads).
    pub paths: &'a [(JsonPath, std::sync::Arc<PathIndex>)],
    /// Use a scalar index whenever one applies, however many rows match (tests check
    /// the index path against the scan with it; normally only selective leaves use it).
    pub always_use_indexes: bool,
}

impl<'a> Columns<'a> {
    /// Columns without scalar indexes.
    pub fn new(pks: &'a [PrimaryKey], scalars: &'a [Column], dynamic: &'a Column) -> Self {
        Columns {
            pks,
            scalars,
            dynamic,
            indexed: &[],
            sorted: &[],
            paths: &[],
            always_use_indexes: false,
        }
    }

    /// The scalar index of field `i`, built now if this is its first use; `None` when the
    /// field has none or its column cannot have one (growing, JSON, boolean).
    fn index(&self, i: usize) -> Option<&'a SortedIndex> {
        if !self.indexed.get(i).copied().unwrap_or(false) {
            return None;
        }
        let col = self.scalars.get(i)?;
        if matches!(col, Column::Values(_)) {
            return None;
        }
        self.sorted
            .get(i)?
            .get_or_init(|| SortedIndex::build(col))
            .as_ref()
    }

    pub fn row(&self, i: usize) -> ColumnRow<'a> {
        ColumnRow { cols: *self, i }
    }
}

/// Row `i` of [`Columns`].
pub struct ColumnRow<'a> {
    cols: Columns<'a>,
    i: usize,
}

impl RowAccess for ColumnRow<'_> {
    fn pk(&self) -> &PrimaryKey {
        &self.cols.pks[self.i]
    }
    fn scalar(&self, i: usize) -> Cow<'_, Value> {
        self.cols.scalars[i].get(self.i)
    }
    fn dynamic(&self) -> Cow<'_, Value> {
        self.cols.dynamic.get(self.i)
    }
    fn dynamic_key(&self, key: &str) -> Option<Cow<'_, Value>> {
        self.cols.dynamic.get_key(self.i, key)
    }
    fn scalar_key(&self, i: usize, key: &str) -> Option<Cow<'_, Value>> {
        self.cols.scalars[i].get_key(self.i, key)
    }
}
/// Rows of `mask` where `c` is true.
pub(super) fn colev(c: &C, cols: &Columns<'_>, mask: &Bitset) -> Bitset {
    match c {
        C::And(v) => {
            let mut m = mask.clone();
            for x in v {
                if m.count_ones() == 0 {
                    break;
                }
                m = colev(x, cols, &m);
            }
            m
        }
        C::Or(v) => {
            let mut out = Bitset::zeros(mask.len());
            let mut rest = mask.clone();
            for x in v {
                if rest.count_ones() == 0 {
                    break;
                }
                let hit = colev(x, cols, &rest);
                out.or_with(&hit);
                rest.and_not_with(&hit);
            }
            out
        }
        C::Not(x) => {
            let hit = colev(x, cols, mask);
            let mut m = mask.clone();
            m.and_not_with(&hit);
            m
        }
        C::Lit(v) => {
            if truthy(v) {
                mask.clone()
            } else {
                Bitset::zeros(mask.len())
            }
        }
        _ => leaf(c, cols, mask).unwrap_or_else(|| {
            let mut out = Bitset::zeros(mask.len());
            for i in mask.iter_ones() {
                if truthy(&ev(c, &cols.row(i))) {
                    out.set(i, true);
                }
            }
            out
        }),
    }
}

/// The typed column an expression reads, when it is a field or a shredded JSON key.
fn column_of<'a>(c: &C, cols: &Columns<'a>) -> Option<&'a Column> {
    let keyed = |col: &'a Column, k: &str| match col {
        Column::Json(j) => j.key_index(k).map(|i| &j.cols[i]),
        _ => None,
    };
    let col = match c {
        C::Scalar(i) => cols.scalars.get(*i)?,
        C::Dyn(k) => keyed(cols.dynamic, k)?,
        C::Index(b, Value::String(k)) => match &**b {
            C::Scalar(i) => keyed(cols.scalars.get(*i)?, k)?,
            C::DynAll => keyed(cols.dynamic, k)?,
            _ => return None,
        },
        _ => return None,
    };
    match col {
        Column::Int(_) | Column::Float(_) | Column::Bool(_) | Column::Str(_)
            if col.len() == mask_len(cols) =>
        {
            Some(col)
        }
        _ => None,
    }
}

fn mask_len(cols: &Columns<'_>) -> usize {
    cols.pks.len()
}

fn flip(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        o => o,
    }
}

fn is_cmp(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
    )
}

#[inline]
fn holds(op: BinOp, o: Ordering) -> bool {
    match op {
        BinOp::Eq => o == Ordering::Equal,
        BinOp::Ne => o != Ordering::Equal,
        BinOp::Lt => o == Ordering::Less,
        BinOp::Le => o != Ordering::Greater,
        BinOp::Gt => o == Ordering::Greater,
        _ => o != Ordering::Less,
    }
}

/// Rows at `ranges` of a scalar index, within `mask`.
fn index_rows(ix: &SortedIndex, ranges: &[std::ops::Range<usize>], mask: &Bitset) -> Bitset {
    let mut out = Bitset::zeros(mask.len());
    for r in ranges {
        for &row in ix.rows(r.clone()) {
            if mask.get(row as usize) {
                out.set(row as usize, true);
            }
        }
    }
    out
}

/// A scalar index answers a leaf only when few rows match: setting a bit per matching
/// row costs a few ns, while a column scan costs under 1 ns per row (measured:
/// docs/BENCHMARKS.md), so past 1 row in 8 the scan wins.
fn selective(ranges: &[std::ops::Range<usize>], n: usize) -> bool {
    ranges.iter().map(|r| r.len()).sum::<usize>() * 8 <= n
}

/// The operand of a leaf a typed column can answer: a comparison with a literal,
/// `in`, `like` or `is null`.
pub(super) fn operand(c: &C) -> Option<&C> {
    match c {
        C::Bin(op, a, b) if is_cmp(*op) => match (&**a, &**b) {
            (x, C::Lit(_)) | (C::Lit(_), x) => Some(x),
            _ => None,
        },
        C::In(a, ..) | C::Like(a, ..) | C::IsNull(a, ..) => Some(a),
        _ => None,
    }
}

/// Leaf `c` answered by scalar index `ix` over `col` (selective ones only, unless
/// `always`; `None` otherwise).
fn indexed_leaf(
    c: &C,
    col: &Column,
    ix: &SortedIndex,
    always: bool,
    mask: &Bitset,
) -> Option<Bitset> {
    let op_str = |op: BinOp| match op {
        BinOp::Eq => Some("=="),
        BinOp::Lt => Some("<"),
        BinOp::Le => Some("<="),
        BinOp::Gt => Some(">"),
        BinOp::Ge => Some(">="),
        _ => None,
    };
    let ranges = match c {
        C::Bin(op, a, b) => {
            let (op, lit) = match (&**a, &**b) {
                (_, C::Lit(l)) => (*op, l),
                (C::Lit(l), _) => (flip(*op), l),
                _ => return None,
            };
            vec![ix.range(col, op_str(op)?, lit)?]
        }
        C::In(_, list, false) => list
            .iter()
            .map(|l| ix.range(col, "==", l))
            .collect::<Option<Vec<_>>>()?,
        C::Like(_, pat, false) => vec![ix.prefix_range(col, pat.prefix()?)?],
        _ => return None,
    };
    (always || selective(&ranges, mask.len())).then(|| index_rows(ix, &ranges, mask))
}

/// Leaf `c` (whose operand reads `col`) on the typed column `col`, through its scalar
/// index `ix` where that pays.
fn on_column(
    c: &C,
    col: &Column,
    ix: Option<&SortedIndex>,
    always: bool,
    mask: &Bitset,
) -> Option<Bitset> {
    if let Some(b) = ix.and_then(|ix| indexed_leaf(c, col, ix, always, mask)) {
        return Some(b);
    }
    match c {
        C::Bin(op, a, b) => {
            let (op, lit) = match (&**a, &**b) {
                (_, C::Lit(l)) => (*op, l),
                (C::Lit(l), _) => (flip(*op), l),
                _ => return None,
            };
            Some(compare(col, op, lit, mask))
        }
        C::In(_, list, neg) => Some(in_list(col, list, *neg, mask)),
        C::Like(_, pat, neg) => Some(match col {
            Column::Str(s) => str_scan(s, mask, |x| pat.matches(x) != *neg),
            _ => Bitset::zeros(mask.len()),
        }),
        C::IsNull(_, neg) => {
            let mut m = mask.clone();
            if let Some(v) = col.validity() {
                if *neg {
                    m.and_with(v);
                } else {
                    m.and_not_with(v);
                }
            } else if !*neg {
                m = Bitset::zeros(mask.len());
            }
            Some(m)
        }
        _ => None,
    }
}

/// Leaf `c` on operand `x` through a JSON path index of `x`, when there is one: the
/// typed rows on the index's column, the rows of another type one by one, and the rows
/// where the path is absent all at once (the leaf has one answer on a null operand).
fn path_leaf(c: &C, x: &C, cols: &Columns<'_>, mask: &Bitset) -> Option<Bitset> {
    let p = JsonPath::of(x)?;
    let (_, ix) = cols.paths.iter().find(|(q, _)| *q == p)?;
    if ix.col.len() != mask.len() {
        return None;
    }
    let typed = ix.typed();
    let mut on = mask.clone();
    on.and_with(&typed);
    let mut out = on_column(c, &ix.col, ix.sorted.as_ref(), cols.always_use_indexes, &on)?;
    let mut other = mask.clone();
    other.and_with(&ix.other);
    for i in other.iter_ones() {
        if truthy(&ev(c, &cols.row(i))) {
            out.set(i, true);
        }
    }
    let mut absent = mask.clone();
    absent.and_not_with(&typed);
    absent.and_not_with(&ix.other);
    if let Some(i) = absent.iter_ones().next() {
        // The leaf with a null literal for its operand reads no row.
        if truthy(&ev(&with_null_operand(c), &cols.row(i))) {
            out.or_with(&absent);
        }
    }
    Some(out)
}

/// `c` with its operand replaced by the literal null.
fn with_null_operand(c: &C) -> C {
    let null = || Box::new(C::Lit(Value::Null));
    match c {
        C::Bin(op, a, b) => match (&**a, &**b) {
            (_, C::Lit(_)) => C::Bin(*op, null(), b.clone()),
            _ => C::Bin(*op, a.clone(), null()),
        },
        C::In(_, l, n) => C::In(null(), l.clone(), *n),
        C::Like(_, p, n) => C::Like(null(), p.clone(), *n),
        C::IsNull(_, n) => C::IsNull(null(), *n),
        other => other.clone(),
    }
}

/// Leaves evaluated on a typed column; `None` when `c` is not one.
fn leaf(c: &C, cols: &Columns<'_>, mask: &Bitset) -> Option<Bitset> {
    let x = operand(c)?;
    if !cols.paths.is_empty() {
        if let Some(b) = path_leaf(c, x, cols, mask) {
            return Some(b);
        }
    }
    let ix = match x {
        C::Scalar(i) => cols.index(*i),
        _ => None,
    };
    on_column(c, column_of(x, cols)?, ix, cols.always_use_indexes, mask)
}

/// Rows of `mask` (and of `valid`) where `pred` holds for the row's value, 64 at a time:
/// all 64 values of a dense word are tested without branches, a sparse word bit by bit.
fn scan<T>(vals: &[T], mask: &Bitset, valid: Option<&Bitset>, pred: impl Fn(&T) -> bool) -> Bitset {
    let mut out = Vec::with_capacity(mask.words().len());
    for (w, &m) in mask.words().iter().enumerate() {
        let m = m & valid.map_or(u64::MAX, |v| v.words()[w]);
        let base = w * 64;
        let mut bits = 0u64;
        if m.count_ones() > 16 {
            let end = (base + 64).min(vals.len());
            for (j, x) in vals[base..end].iter().enumerate() {
                bits |= (pred(x) as u64) << j;
            }
        } else {
            let mut mm = m;
            while mm != 0 {
                let t = mm.trailing_zeros() as usize;
                bits |= (pred(&vals[base + t]) as u64) << t;
                mm &= mm - 1;
            }
        }
        out.push(bits & m);
    }
    Bitset::from_words(out, mask.len()).expect("same shape as the mask")
}

/// [`scan`] over a string column; a dictionary column tests each distinct string once.
fn str_scan(s: &crate::column::StrCol, mask: &Bitset, pred: impl Fn(&str) -> bool) -> Bitset {
    match &s.data {
        StrData::Dict { dict, codes } => {
            let hit: Vec<bool> = (0..dict.len()).map(|i| pred(dict.get(i))).collect();
            scan(codes, mask, s.valid.as_ref(), |c| hit[*c as usize])
        }
        StrData::Plain(p) => {
            let mut out = Bitset::zeros(mask.len());
            for i in mask.iter_ones() {
                if s.valid.as_ref().is_none_or(|v| v.get(i)) && pred(p.get(i)) {
                    out.set(i, true);
                }
            }
            out
        }
    }
}

fn valid_rows(col: &Column, mask: &Bitset) -> Bitset {
    let mut m = mask.clone();
    if let Some(v) = col.validity() {
        m.and_with(v);
    }
    m
}

/// `col op lit` with [`binop`]'s rules: numbers compare as numbers (integers exactly),
/// strings with strings, booleans with booleans; null and other types never compare
/// (`!=` holds for non-null values of another type).
fn compare(col: &Column, op: BinOp, lit: &Value, mask: &Bitset) -> Bitset {
    let none = || Bitset::zeros(mask.len());
    if lit.is_null() {
        return none();
    }
    let incomparable = || {
        if op == BinOp::Ne {
            valid_rows(col, mask)
        } else {
            none()
        }
    };
    macro_rules! ord {
        ($vals:expr, $valid:expr, $l:expr) => {{
            let l = $l;
            let v = $valid;
            match op {
                BinOp::Eq => scan($vals, mask, v, |x| *x == l),
                BinOp::Ne => scan($vals, mask, v, |x| *x != l),
                BinOp::Lt => scan($vals, mask, v, |x| *x < l),
                BinOp::Le => scan($vals, mask, v, |x| *x <= l),
                BinOp::Gt => scan($vals, mask, v, |x| *x > l),
                _ => scan($vals, mask, v, |x| *x >= l),
            }
        }};
    }
    match (col, lit) {
        (Column::Int(c), Value::Number(n)) => match n.as_i64() {
            Some(l) => ord!(&c.vals, c.valid.as_ref(), l),
            None => {
                let l = n.as_f64().unwrap_or(f64::NAN);
                scan(&c.vals, mask, c.valid.as_ref(), |x| {
                    (*x as f64).partial_cmp(&l).is_some_and(|o| holds(op, o))
                })
            }
        },
        (Column::Float(c), Value::Number(n)) => {
            let l = n.as_f64().unwrap_or(f64::NAN);
            scan(&c.vals, mask, c.valid.as_ref(), |x| {
                x.partial_cmp(&l).is_some_and(|o| holds(op, o))
            })
        }
        (Column::Bool(c), Value::Bool(l)) => {
            let mut out = Bitset::zeros(mask.len());
            for i in mask.iter_ones() {
                if c.valid.as_ref().is_none_or(|v| v.get(i)) && holds(op, c.vals.get(i).cmp(l)) {
                    out.set(i, true);
                }
            }
            out
        }
        (Column::Str(c), Value::String(l)) => str_scan(c, mask, |x| holds(op, x.cmp(l.as_str()))),
        _ => incomparable(),
    }
}

/// `col in list` / `not in`: null rows never pass; otherwise a hit (equal by [`val_cmp`])
/// differs from `neg`.
fn in_list(col: &Column, list: &[Value], neg: bool, mask: &Bitset) -> Bitset {
    match col {
        Column::Int(c) => {
            let mut ints: Vec<i64> = list.iter().filter_map(|v| v.as_i64()).collect();
            // Integers equal to a float of the list (`x in [2.0]` holds for 2).
            ints.extend(
                list.iter()
                    .filter(|v| v.as_i64().is_none())
                    .filter_map(|v| v.as_f64())
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64),
            );
            ints.sort_unstable();
            ints.dedup();
            // Floats past 2^53 compare with the integer rounded to f64, as `val_cmp` does.
            let big: Vec<f64> = list
                .iter()
                .filter(|v| v.as_i64().is_none())
                .filter_map(|v| v.as_f64())
                .filter(|f| f.abs() >= 9.0e15)
                .collect();
            if !big.is_empty() {
                return scan(&c.vals, mask, c.valid.as_ref(), |x| {
                    (ints.contains(x) || big.contains(&(*x as f64))) != neg
                });
            }
            if ints.len() <= 16 {
                scan(&c.vals, mask, c.valid.as_ref(), |x| ints.contains(x) != neg)
            } else {
                let set: HashSet<i64> = ints.into_iter().collect();
                scan(&c.vals, mask, c.valid.as_ref(), |x| set.contains(x) != neg)
            }
        }
        Column::Float(c) => {
            let fl: Vec<f64> = list.iter().filter_map(|v| v.as_f64()).collect();
            scan(&c.vals, mask, c.valid.as_ref(), |x| {
                fl.iter().any(|f| x == f) != neg
            })
        }
        Column::Str(c) => {
            let set: HashSet<&str> = list.iter().filter_map(|v| v.as_str()).collect();
            str_scan(c, mask, |x| set.contains(x) != neg)
        }
        Column::Bool(c) => {
            let mut out = Bitset::zeros(mask.len());
            for i in mask.iter_ones() {
                if c.valid.as_ref().is_none_or(|v| v.get(i)) {
                    let x = Value::Bool(c.vals.get(i));
                    let hit = list.iter().any(|l| val_cmp(&x, l) == Some(Ordering::Equal));
                    out.set(i, hit != neg);
                }
            }
            out
        }
        _ => Bitset::zeros(mask.len()),
    }
}
