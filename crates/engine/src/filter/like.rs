//! `like` patterns: `%` and `_` wildcards with `\` escapes, matched by runs of literal
//! text (checked against a textbook dynamic program by proptest).

#[derive(Debug, Clone, PartialEq)]
pub(super) enum LikeTok {
    Char(char),
    Any,
    One,
}

/// Longest LIKE pattern, in characters.
pub const MAX_LIKE_CHARS: usize = 4096;

pub(super) fn like_tokens(p: &str) -> Vec<LikeTok> {
    let mut out = Vec::new();
    let mut it = p.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some('\\') => out.push(LikeTok::Char('\\')),
                Some(n) => out.push(LikeTok::Char(n)),
                None => out.push(LikeTok::Char('\\')),
            },
            '%' => out.push(LikeTok::Any),
            '_' => out.push(LikeTok::One),
            c => out.push(LikeTok::Char(c)),
        }
    }
    out
}

/// A compiled LIKE pattern: the runs between `%` signs, each matched in turn.
///
/// The first run is anchored at the start, the last at the end, and each middle run is
/// taken at its leftmost place after the previous one (leftmost is always safe for `%`).
/// Without `_` the runs are plain substrings, found with the standard library's
/// two-way search: linear in the string whatever the pattern (the backtracking matcher
/// this replaces was O(string × pattern) per row). A run with `_` is compared character
/// by character, O(string × run), bounded by [`MAX_LIKE_CHARS`].
#[derive(Debug, Clone)]
pub(super) struct LikePattern {
    /// Runs between `%`s; `None` is `_`.
    runs: Vec<Vec<Option<char>>>,
    /// The same runs as text, when the pattern has no `_`.
    plain: Option<Vec<String>>,
}

impl LikePattern {
    /// `abc` for the pattern `abc%` (a prefix match), else `None`.
    pub(super) fn prefix(&self) -> Option<&str> {
        match self.plain.as_deref() {
            Some([p, rest]) if rest.is_empty() => Some(p),
            _ => None,
        }
    }

    pub(super) fn new(toks: &[LikeTok]) -> Self {
        let mut runs = vec![Vec::new()];
        for t in toks {
            match t {
                LikeTok::Any => runs.push(Vec::new()),
                LikeTok::One => runs.last_mut().expect("one run").push(None),
                LikeTok::Char(c) => runs.last_mut().expect("one run").push(Some(*c)),
            }
        }
        let plain = runs
            .iter()
            .map(|r| r.iter().copied().collect::<Option<String>>())
            .collect();
        LikePattern { runs, plain }
    }

    pub(super) fn matches(&self, s: &str) -> bool {
        if self.runs.len() == 1 {
            // No '%': the whole string, exactly.
            let r = &self.runs[0];
            return match &self.plain {
                Some(p) => p[0] == s,
                None => s.chars().count() == r.len() && run_at(r, &mut s.chars()),
            };
        }
        match &self.plain {
            Some(p) => like_plain(p, s),
            None => {
                let chars: Vec<char> = s.chars().collect();
                self.like_chars(&chars)
            }
        }
    }

    fn like_chars(&self, s: &[char]) -> bool {
        let (first, rest) = self.runs.split_first().expect("two runs or more");
        let (last, middle) = rest.split_last().expect("two runs or more");
        if first.len() + last.len() > s.len() {
            return false;
        }
        let at = |r: &[Option<char>], i: usize| {
            r.iter()
                .zip(&s[i..])
                .all(|(p, c)| p.is_none_or(|p| p == *c))
        };
        if !at(first, 0) || !at(last, s.len() - last.len()) {
            return false;
        }
        let end = s.len() - last.len();
        let mut pos = first.len();
        for r in middle {
            if r.is_empty() {
                continue;
            }
            match (pos..=end.saturating_sub(r.len())).find(|&i| i + r.len() <= end && at(r, i)) {
                Some(i) => pos = i + r.len(),
                None => return false,
            }
        }
        pos <= end
    }
}

/// A run with `_` at the start of `it`.
fn run_at(r: &[Option<char>], it: &mut std::str::Chars<'_>) -> bool {
    r.iter()
        .all(|p| it.next().is_some_and(|c| p.is_none_or(|p| p == c)))
}

/// `%`-separated plain runs: prefix, suffix, then each middle run leftmost in between.
fn like_plain(runs: &[String], s: &str) -> bool {
    let (first, rest) = runs.split_first().expect("two runs or more");
    let (last, middle) = rest.split_last().expect("two runs or more");
    if first.len() + last.len() > s.len()
        || !s.starts_with(first.as_str())
        || !s.ends_with(last.as_str())
    {
        return false;
    }
    let mut hay = &s[first.len()..s.len() - last.len()];
    for r in middle {
        match hay.find(r.as_str()) {
            Some(i) => hay = &hay[i + r.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod like_props {
    use super::*;
    use crate::filter::Filter;
    use crate::schema::{CollectionSchema, DataType, FieldSchema};
    use proptest::prelude::*;

    /// The textbook dynamic program over (pattern, string) prefixes: slow and obviously
    /// right, the reference for the run-based matcher.
    fn reference(p: &[LikeTok], s: &[char]) -> bool {
        let mut m = vec![vec![false; s.len() + 1]; p.len() + 1];
        m[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=s.len() {
                m[i][j] = match &p[i - 1] {
                    LikeTok::Any => m[i - 1][j] || (j > 0 && m[i][j - 1]),
                    LikeTok::One => j > 0 && m[i - 1][j - 1],
                    LikeTok::Char(c) => j > 0 && m[i - 1][j - 1] && s[j - 1] == *c,
                };
            }
        }
        m[p.len()][s.len()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn like_matches_the_reference(p in "[ab%_é]{0,8}", s in "[abé]{0,10}") {
            let toks = like_tokens(&p);
            let want = reference(&toks, &s.chars().collect::<Vec<_>>());
            prop_assert_eq!(LikePattern::new(&toks).matches(&s), want, "{:?} like {:?}", s, p);
        }
    }

    #[test]
    fn long_patterns_are_refused_and_adversarial_ones_stay_linear() {
        let schema = CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("v", DataType::FloatVector).with_dim(2),
                FieldSchema::new("name", DataType::VarChar).with_max_length(65535),
            ],
            enable_dynamic_field: false,
            description: String::new(),
            functions: Vec::new(),
        };
        let long = format!("name like '{}'", "a".repeat(MAX_LIKE_CHARS + 1));
        let e = Filter::compile(&long, &schema).unwrap_err().to_string();
        assert!(e.contains("at most 4096 characters"), "{e}");
        // The shape that made the old matcher quadratic: many '%a' runs against a long
        // run of 'a's ending in a mismatch. The plain-run matcher does one pass per run.
        let p = LikePattern::new(&like_tokens(&format!("{}b", "%a".repeat(2000))));
        let s = "a".repeat(65_535);
        assert!(!p.matches(&s));
        assert!(p.matches(&format!("{s}b")));
    }
}
