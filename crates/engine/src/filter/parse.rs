//! The filter language's lexer and recursive-descent parser: text to an [`Expr`],
//! with the length and depth bounds checked while the tree is built (see the module
//! docs of `filter` for the grammar).

use super::{FilterError, MAX_FILTER_BYTES, MAX_FILTER_DEPTH};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Punct(&'static str),
    Eof,
}

const PUNCTS: [&str; 19] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "(", ")", "[", "]", ",", "+", "-", "*", "/", "%",
    "!",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let err = |pos: usize, msg: String| FilterError {
        pos,
        msg,
        expr: src.to_string(),
    };
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push((Tok::Ident(src[start..i].to_string()), start));
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) {
            let mut is_float = false;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                is_float |= b[i] == b'.';
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                is_float = true;
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &src[start..i];
            let tok = if is_float {
                Tok::Float(
                    text.parse()
                        .map_err(|_| err(start, format!("invalid number '{text}'")))?,
                )
            } else {
                match text.parse::<i64>() {
                    Ok(v) => Tok::Int(v),
                    Err(_) => Tok::Float(
                        text.parse()
                            .map_err(|_| err(start, format!("invalid number '{text}'")))?,
                    ),
                }
            };
            out.push((tok, start));
            continue;
        }
        if c == b'"' || c == b'\'' {
            let quote = c as char;
            i += 1;
            let mut s = String::new();
            let mut chars = src[i..].char_indices();
            while let Some((off, ch)) = chars.next() {
                if ch == quote {
                    i += off + 1;
                    out.push((Tok::Str(s), start));
                    continue 'outer;
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, 'r')) => s.push('\r'),
                        Some((_, '\\')) => s.push_str("\\\\"),
                        // Kept escaped so `like` can tell a literal % or _ from a wildcard.
                        Some((_, '%')) => s.push_str("\\%"),
                        Some((_, '_')) => s.push_str("\\_"),
                        Some((_, other)) => s.push(other),
                        None => break,
                    }
                    continue;
                }
                s.push(ch);
            }
            return Err(err(start, "unterminated string".into()));
        }
        for p in PUNCTS {
            if src[i..].starts_with(p) {
                out.push((Tok::Punct(p), start));
                i += p.len();
                continue 'outer;
            }
        }
        if c == b'=' {
            return Err(err(
                start,
                "'=' is not an operator; use '==' to compare".into(),
            ));
        }
        let ch = src[i..].chars().next().unwrap_or('?');
        return Err(err(start, format!("unexpected character '{ch}'")));
    }
    out.push((Tok::Eof, src.len()));
    Ok(out)
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Ident {
        name: String,
        pos: usize,
    },
    Index(Box<Expr>, Value),
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    In {
        e: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Like {
        e: Box<Expr>,
        pattern: String,
        negated: bool,
    },
    IsNull {
        e: Box<Expr>,
        negated: bool,
    },
    Call {
        name: String,
        args: Vec<Expr>,
        pos: usize,
    },
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    /// Current recursion depth of the descent (see [`Parser::enter`]).
    depth: usize,
}

/// Height of an expression tree. Called on every node the parser builds, whose children
/// were checked already, so the recursion is at most [`MAX_FILTER_DEPTH`] deep.
fn height(e: &Expr) -> usize {
    let max = |v: &[Expr]| v.iter().map(height).max().unwrap_or(0);
    1 + match e {
        Expr::Lit(_) | Expr::Ident { .. } => 0,
        Expr::Index(b, _)
        | Expr::Neg(b)
        | Expr::Not(b)
        | Expr::Like { e: b, .. }
        | Expr::IsNull { e: b, .. } => height(b),
        Expr::List(v) | Expr::And(v) | Expr::Or(v) | Expr::Call { args: v, .. } => max(v),
        Expr::Bin(_, a, b) => height(a).max(height(b)),
        Expr::In { e, list, .. } => height(e).max(max(list)),
    }
}

fn kw(t: &Tok, k: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(k))
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn peek2(&self) -> &Tok {
        &self.toks[(self.i + 1).min(self.toks.len() - 1)].0
    }
    fn pos(&self) -> usize {
        self.toks[self.i].1
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.i].0.clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    /// Enters one level of recursive descent, refusing to go past [`MAX_FILTER_DEPTH`].
    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return self.too_deep();
        }
        Ok(())
    }
    fn leave(&mut self) {
        self.depth -= 1;
    }
    fn too_deep<T>(&self) -> Result<T, FilterError> {
        self.err(format!(
            "the filter nests deeper than {MAX_FILTER_DEPTH} levels; flatten it (use 'in [...]', and/or chains)"
        ))
    }
    /// A node the parser built, checked against [`MAX_FILTER_DEPTH`].
    fn node(&self, e: Expr) -> Result<Expr, FilterError> {
        if height(&e) > MAX_FILTER_DEPTH {
            return self.too_deep();
        }
        Ok(e)
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            pos: self.pos(),
            msg: msg.into(),
            expr: self.src.to_string(),
        })
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Tok::Punct(q) if *q == p) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, p: &str) -> Result<(), FilterError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            self.err(format!("expected '{p}'"))
        }
    }
    fn eat_kw(&mut self, k: &str) -> bool {
        if kw(self.peek(), k) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut v = vec![self.and()?];
        while self.eat_kw("or") || self.eat_punct("||") {
            v.push(self.and()?);
        }
        if v.len() == 1 {
            return Ok(v.pop().unwrap());
        }
        self.node(Expr::Or(v))
    }
    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut v = vec![self.not()?];
        while self.eat_kw("and") || self.eat_punct("&&") {
            v.push(self.not()?);
        }
        if v.len() == 1 {
            return Ok(v.pop().unwrap());
        }
        self.node(Expr::And(v))
    }
    fn not(&mut self) -> Result<Expr, FilterError> {
        if self.eat_kw("not") || self.eat_punct("!") {
            self.enter()?;
            let inner = self.not()?;
            self.leave();
            return self.node(Expr::Not(Box::new(inner)));
        }
        self.cmp()
    }
    fn cmp_op(&self) -> Option<BinOp> {
        match self.peek() {
            Tok::Punct("==") => Some(BinOp::Eq),
            Tok::Punct("!=") => Some(BinOp::Ne),
            Tok::Punct("<") => Some(BinOp::Lt),
            Tok::Punct("<=") => Some(BinOp::Le),
            Tok::Punct(">") => Some(BinOp::Gt),
            Tok::Punct(">=") => Some(BinOp::Ge),
            _ => None,
        }
    }
    fn cmp(&mut self) -> Result<Expr, FilterError> {
        let left = self.sum()?;
        if self.cmp_op().is_some() {
            let mut parts = Vec::new();
            let mut prev = left;
            while let Some(op) = self.cmp_op() {
                self.bump();
                let right = self.sum()?;
                parts.push(self.node(Expr::Bin(op, Box::new(prev), Box::new(right.clone())))?);
                prev = right;
            }
            return if parts.len() == 1 {
                Ok(parts.pop().unwrap())
            } else {
                self.node(Expr::And(parts))
            };
        }
        let negated =
            kw(self.peek(), "not") && (kw(self.peek2(), "in") || kw(self.peek2(), "like"));
        if negated {
            self.bump();
        }
        if self.eat_kw("in") {
            let pos = self.pos();
            let list = match self.primary()? {
                Expr::List(l) => l,
                _ => {
                    return Err(FilterError {
                        pos,
                        msg: "expected a list like [1, 2] after 'in'".into(),
                        expr: self.src.to_string(),
                    })
                }
            };
            return self.node(Expr::In {
                e: Box::new(left),
                list,
                negated,
            });
        }
        if self.eat_kw("like") {
            return match self.bump() {
                Tok::Str(pattern) => self.node(Expr::Like {
                    e: Box::new(left),
                    pattern,
                    negated,
                }),
                _ => {
                    self.i -= 1;
                    self.err("expected a string pattern after 'like'")
                }
            };
        }
        if self.eat_kw("is") {
            let negated = self.eat_kw("not");
            if !self.eat_kw("null") {
                return self.err("expected 'null' after 'is'");
            }
            return self.node(Expr::IsNull {
                e: Box::new(left),
                negated,
            });
        }
        Ok(left)
    }
    fn sum(&mut self) -> Result<Expr, FilterError> {
        let mut l = self.prod()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("+") => BinOp::Add,
                Tok::Punct("-") => BinOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.prod()?;
            l = self.node(Expr::Bin(op, Box::new(l), Box::new(r)))?;
        }
    }
    fn prod(&mut self) -> Result<Expr, FilterError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("*") => BinOp::Mul,
                Tok::Punct("/") => BinOp::Div,
                Tok::Punct("%") => BinOp::Mod,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = self.node(Expr::Bin(op, Box::new(l), Box::new(r)))?;
        }
    }
    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.eat_punct("-") {
            self.enter()?;
            let inner = self.unary()?;
            self.leave();
            return match inner {
                Expr::Lit(Value::Number(n)) if n.is_i64() => {
                    let i = n.as_i64().unwrap();
                    Ok(Expr::Lit(
                        i.checked_neg()
                            .map_or_else(|| num(-(i as f64)), Value::from),
                    ))
                }
                Expr::Lit(Value::Number(n)) => Ok(Expr::Lit(num(-n.as_f64().unwrap_or(0.0)))),
                e => self.node(Expr::Neg(Box::new(e))),
            };
        }
        let mut e = self.primary()?;
        while self.eat_punct("[") {
            let key = match self.bump() {
                Tok::Str(s) => Value::String(s),
                Tok::Int(i) => Value::from(i),
                _ => {
                    self.i -= 1;
                    return self.err("expected a string key or an integer index inside [ ]");
                }
            };
            self.expect_punct("]")?;
            e = self.node(Expr::Index(Box::new(e), key))?;
        }
        Ok(e)
    }
    fn primary(&mut self) -> Result<Expr, FilterError> {
        let pos = self.pos();
        match self.bump() {
            Tok::Int(i) => Ok(Expr::Lit(Value::from(i))),
            Tok::Float(f) => Ok(Expr::Lit(num(f))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(unescape_like(&s)))),
            Tok::Punct("(") => {
                self.enter()?;
                let e = self.or()?;
                self.leave();
                self.expect_punct(")")?;
                Ok(e)
            }
            Tok::Punct("[") => {
                self.enter()?;
                let mut items = Vec::new();
                if !self.eat_punct("]") {
                    loop {
                        items.push(self.or()?);
                        if self.eat_punct("]") {
                            break;
                        }
                        self.expect_punct(",")?;
                    }
                }
                self.leave();
                self.node(Expr::List(items))
            }
            Tok::Ident(name) => {
                if name.eq_ignore_ascii_case("true") {
                    return Ok(Expr::Lit(Value::Bool(true)));
                }
                if name.eq_ignore_ascii_case("false") {
                    return Ok(Expr::Lit(Value::Bool(false)));
                }
                if name.eq_ignore_ascii_case("null") {
                    return Ok(Expr::Lit(Value::Null));
                }
                for k in ["and", "or", "not", "in", "like", "is"] {
                    if name.eq_ignore_ascii_case(k) {
                        self.i -= 1;
                        return self.err(format!("unexpected keyword '{name}'"));
                    }
                }
                if self.eat_punct("(") {
                    self.enter()?;
                    let mut args = Vec::new();
                    if !self.eat_punct(")") {
                        loop {
                            args.push(self.or()?);
                            if self.eat_punct(")") {
                                break;
                            }
                            self.expect_punct(",")?;
                        }
                    }
                    self.leave();
                    return self.node(Expr::Call {
                        name: name.to_ascii_lowercase(),
                        args,
                        pos,
                    });
                }
                Ok(Expr::Ident { name, pos })
            }
            Tok::Eof => {
                self.i = self.toks.len() - 1;
                self.err("unexpected end of expression")
            }
            t => {
                self.i -= 1;
                self.err(format!("unexpected {}", describe(&t)))
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Eof => "end of expression".into(),
    }
}

/// String literals outside `like` lose the escapes kept for like patterns.
fn unescape_like(s: &str) -> String {
    s.replace("\\%", "%")
        .replace("\\_", "_")
        .replace("\\\\", "\\")
}

pub(super) fn num(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Parses a filter expression.
pub fn parse(src: &str) -> Result<Expr, FilterError> {
    if src.len() > MAX_FILTER_BYTES {
        return Err(FilterError {
            pos: 0,
            msg: format!(
                "the filter is {} bytes long; the limit is {MAX_FILTER_BYTES}",
                src.len()
            ),
            expr: String::new(),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        i: 0,
        depth: 0,
    };
    if matches!(p.peek(), Tok::Eof) {
        return p.err("empty expression");
    }
    let e = p.or()?;
    if !matches!(p.peek(), Tok::Eof) {
        let t = p.peek().clone();
        return p.err(format!(
            "unexpected {} after a complete expression",
            describe(&t)
        ));
    }
    Ok(e)
}
