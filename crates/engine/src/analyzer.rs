//! Text analyzers for BM25 (Milvus's `analyzer_params`): text → a list of terms.
//!
//! An analyzer is a tokenizer followed by filters, configured as Milvus does:
//!
//! | `analyzer_params` | tokenizer | filters |
//! |---|---|---|
//! | `{"type": "standard"}` (the default) | `standard` | `lowercase` |
//! | `{"type": "english"}` | `standard` | `lowercase`, `stemmer` (english), `stop` (`_english_`) |
//! | `{"type": "chinese"}` | `jieba` | `cnalphanumonly` |
//! | `{"tokenizer": T, "filter": [F, ...]}` | `standard`, `whitespace` or `jieba` | in order |
//!
//! - `standard` splits at the word boundaries of Unicode UAX #29 (the `unicode-segmentation`
//!   crate; Lucene's and tantivy's standard tokenizers follow the same rules) and keeps
//!   the words (runs of letters and digits); `whitespace` splits at white space;
//!   `jieba` segments Chinese text into words with the `jieba-rs` crate's dictionary
//!   (`{"type": "jieba", "mode": "search"|"exact", "hmm": true|false}`; Milvus's
//!   defaults: search mode, which also emits the shorter words inside long ones, and the
//!   HMM for words not in the dictionary).
//! - Filters: `lowercase`; `asciifolding` (NFKD, then combining marks dropped: "café" →
//!   "cafe"); `alphanumonly` (drops tokens with other than ASCII letters and digits);
//!   `{"type": "stop", "stop_words": ["_english_", "word", ...]}`; `{"type": "length",
//!   "max": N}` (drops tokens longer than N bytes); `{"type": "stemmer", "language":
//!   "english"}` (Snowball, the `rust-stemmers` crate) and the other Snowball languages;
//!   `cnalphanumonly` (keeps tokens of only Chinese characters, letters and digits: drops
//!   punctuation and spaces that jieba emits) and `cncharonly` (only Chinese characters).
//!
//! Unknown names or params are refused with the name. A configuration is checked when
//! the collection is created ([`Analyzer::from_params`]) and kept in the schema.
//! Tokens longer than [`MAX_TOKEN_BYTES`] are dropped, as tantivy does.

use rust_stemmers::{Algorithm, Stemmer};
use serde_json::Value;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// Tokens longer than this (in bytes) are dropped.
pub const MAX_TOKEN_BYTES: usize = 255;

/// Lucene's English stop words (`_english_`), as Milvus and tantivy use them.
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tokenizer {
    Standard,
    Whitespace,
    Jieba { search: bool, hmm: bool },
}

/// jieba's dictionary, loaded once (about 0.2 s) by the first analyzer that needs it.
fn jieba() -> &'static jieba_rs::Jieba {
    static J: std::sync::OnceLock<jieba_rs::Jieba> = std::sync::OnceLock::new();
    J.get_or_init(jieba_rs::Jieba::new)
}

/// A CJK Unified Ideograph (the main block and extensions A-F, compatibility ideographs).
fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2EBEF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

enum Filter {
    Lowercase,
    AsciiFolding,
    AlphanumOnly,
    CnAlphanumOnly,
    CnCharOnly,
    Stop(std::collections::HashSet<String>),
    Length(usize),
    Stemmer(Stemmer),
}

/// A configured analyzer (module docs).
pub struct Analyzer {
    tokenizer: Tokenizer,
    filters: Vec<Filter>,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Analyzer({:?}, {} filters)",
            self.tokenizer,
            self.filters.len()
        )
    }
}

fn language(name: &str) -> Option<Algorithm> {
    Some(match name.to_ascii_lowercase().as_str() {
        "arabic" => Algorithm::Arabic,
        "danish" => Algorithm::Danish,
        "dutch" => Algorithm::Dutch,
        "english" => Algorithm::English,
        "finnish" => Algorithm::Finnish,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "greek" => Algorithm::Greek,
        "hungarian" => Algorithm::Hungarian,
        "italian" => Algorithm::Italian,
        "norwegian" => Algorithm::Norwegian,
        "portuguese" => Algorithm::Portuguese,
        "romanian" => Algorithm::Romanian,
        "russian" => Algorithm::Russian,
        "spanish" => Algorithm::Spanish,
        "swedish" => Algorithm::Swedish,
        "tamil" => Algorithm::Tamil,
        "turkish" => Algorithm::Turkish,
        _ => return None,
    })
}

fn stop_filter(words: &[Value]) -> Result<Filter, String> {
    let mut set = std::collections::HashSet::new();
    for w in words {
        match w.as_str() {
            Some("_english_") => set.extend(ENGLISH_STOP_WORDS.iter().map(|s| s.to_string())),
            Some(s) => {
                set.insert(s.to_string());
            }
            None => return Err(format!("stop words must be strings, got {w}")),
        }
    }
    Ok(Filter::Stop(set))
}

fn tokenizer(t: &Value) -> Result<Tokenizer, String> {
    let (name, params) = match t {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            o.get("type")
                .and_then(|x| x.as_str())
                .ok_or_else(|| format!("a tokenizer object needs a \"type\", got {t}"))?,
            Some(o),
        ),
        _ => return Err(format!("a tokenizer is a name or an object, got {t}")),
    };
    let allowed: &[&str] = if name == "jieba" {
        &["mode", "hmm"]
    } else {
        &[]
    };
    if let Some(k) = params.and_then(|o| {
        o.keys()
            .find(|k| *k != "type" && !allowed.contains(&k.as_str()))
    }) {
        return Err(format!("tokenizer '{name}' has no parameter '{k}'"));
    }
    Ok(match name {
        "standard" => Tokenizer::Standard,
        "whitespace" => Tokenizer::Whitespace,
        "jieba" => {
            let search = match params.and_then(|o| o.get("mode")) {
                None => true,
                Some(m) => match m.as_str() {
                    Some("search") => true,
                    Some("exact") => false,
                    _ => return Err(format!("jieba's mode is \"search\" or \"exact\", got {m}")),
                },
            };
            let hmm = match params.and_then(|o| o.get("hmm")) {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(h) => return Err(format!("jieba's hmm is true or false, got {h}")),
            };
            Tokenizer::Jieba { search, hmm }
        }
        _ => {
            return Err(format!(
                "unknown tokenizer {t} (known: standard, whitespace, jieba)"
            ))
        }
    })
}

fn filter(v: &Value) -> Result<Filter, String> {
    let (name, params) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            o.get("type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| format!("a filter object needs a \"type\", got {v}"))?,
            Some(o),
        ),
        _ => return Err(format!("a filter is a name or an object, got {v}")),
    };
    let known = |keys: &[&str]| -> Result<(), String> {
        if let Some(o) = params {
            if let Some(k) = o
                .keys()
                .find(|k| *k != "type" && !keys.contains(&k.as_str()))
            {
                return Err(format!("filter '{name}' has no parameter '{k}'"));
            }
        }
        Ok(())
    };
    Ok(match name {
        "lowercase" => {
            known(&[])?;
            Filter::Lowercase
        }
        "asciifolding" => {
            known(&[])?;
            Filter::AsciiFolding
        }
        "alphanumonly" => {
            known(&[])?;
            Filter::AlphanumOnly
        }
        "cnalphanumonly" => {
            known(&[])?;
            Filter::CnAlphanumOnly
        }
        "cncharonly" => {
            known(&[])?;
            Filter::CnCharOnly
        }
        "stop" => {
            known(&["stop_words"])?;
            match params.and_then(|o| o.get("stop_words")) {
                Some(Value::Array(a)) => stop_filter(a)?,
                None => stop_filter(&[Value::from("_english_")])?,
                Some(x) => return Err(format!("stop_words must be a list of strings, got {x}")),
            }
        }
        "length" => {
            known(&["max"])?;
            let max = params
                .and_then(|o| o.get("max"))
                .and_then(|m| m.as_u64())
                .filter(|m| (1..=MAX_TOKEN_BYTES as u64).contains(m))
                .ok_or_else(|| {
                    format!("the length filter needs \"max\" in 1..={MAX_TOKEN_BYTES}")
                })?;
            Filter::Length(max as usize)
        }
        "stemmer" => {
            known(&["language"])?;
            let lang = params
                .and_then(|o| o.get("language"))
                .and_then(|l| l.as_str())
                .ok_or("the stemmer filter needs a \"language\", e.g. \"english\"")?;
            Filter::Stemmer(Stemmer::create(
                language(lang).ok_or_else(|| format!("no stemmer for language '{lang}'"))?,
            ))
        }
        other => {
            return Err(format!(
                "unknown filter '{other}' (known: lowercase, asciifolding, alphanumonly, cnalphanumonly, cncharonly, stop, length, stemmer)"
            ))
        }
    })
}

impl Analyzer {
    /// The analyzer `analyzer_params` describes (`None`: the standard analyzer).
    pub fn from_params(p: Option<&Value>) -> Result<Analyzer, String> {
        let Some(p) = p.filter(|p| !p.is_null()) else {
            return Ok(Analyzer {
                tokenizer: Tokenizer::Standard,
                filters: vec![Filter::Lowercase],
            });
        };
        let o = p
            .as_object()
            .ok_or_else(|| format!("analyzer_params must be an object, got {p}"))?;
        if let Some(k) = o
            .keys()
            .find(|k| !["type", "tokenizer", "filter", "stop_words"].contains(&k.as_str()))
        {
            return Err(format!("analyzer_params has no key '{k}'"));
        }
        if let Some(t) = o.get("type") {
            let t = t.as_str().ok_or("analyzer type must be a string")?;
            if o.contains_key("tokenizer") || o.contains_key("filter") {
                return Err(
                    "analyzer_params takes either \"type\" or \"tokenizer\"/\"filter\", not both"
                        .into(),
                );
            }
            let extra = o.get("stop_words").map(|w| match w {
                Value::Array(a) => stop_filter(a),
                _ => Err(format!("stop_words must be a list of strings, got {w}")),
            });
            let mut tokenizer = Tokenizer::Standard;
            let mut filters = vec![Filter::Lowercase];
            match t {
                "standard" => {}
                "english" => {
                    filters.push(Filter::Stemmer(Stemmer::create(Algorithm::English)));
                    filters.push(stop_filter(&[Value::from("_english_")])?);
                }
                "chinese" => {
                    tokenizer = Tokenizer::Jieba {
                        search: true,
                        hmm: true,
                    };
                    filters = vec![Filter::CnAlphanumOnly];
                }
                other => {
                    return Err(format!(
                        "unknown analyzer type '{other}' (known: standard, english, chinese)"
                    ))
                }
            }
            if let Some(f) = extra {
                // Stop words apply to the lowercased words, before stemming.
                filters.insert(filters.len().min(1), f?);
            }
            return Ok(Analyzer { tokenizer, filters });
        }
        if o.contains_key("stop_words") {
            return Err(
                "stop_words goes with an analyzer \"type\"; with a tokenizer, add a stop filter"
                    .into(),
            );
        }
        let tokenizer = match o.get("tokenizer") {
            None => Tokenizer::Standard,
            Some(t) => tokenizer(t)?,
        };
        let filters = match o.get("filter") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(filter).collect::<Result<_, _>>()?,
            Some(x) => return Err(format!("\"filter\" must be a list, got {x}")),
        };
        Ok(Analyzer { tokenizer, filters })
    }

    /// The terms of `text`, in order (repeats kept).
    pub fn analyze(&self, text: &str) -> Vec<String> {
        self.analyze_spans(text)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// The terms of `text` with the byte range of the word each came from (for
    /// highlighting matches in the original text).
    pub fn analyze_spans(&self, text: &str) -> Vec<(std::ops::Range<usize>, String)> {
        let raw: Vec<(usize, &str)> = match self.tokenizer {
            Tokenizer::Standard => text.unicode_word_indices().collect(),
            Tokenizer::Whitespace => text
                .split_whitespace()
                .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
                .collect(),
            Tokenizer::Jieba { search, hmm } => {
                let words = if search {
                    jieba().cut_for_search(text, hmm)
                } else {
                    jieba().cut(text, hmm)
                };
                // jieba's words are slices of `text`.
                words
                    .into_iter()
                    .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        'tokens: for (at, t) in raw {
            let mut tok = t.to_string();
            for f in &self.filters {
                match f {
                    Filter::Lowercase => tok = tok.to_lowercase(),
                    Filter::AsciiFolding => {
                        if !tok.is_ascii() {
                            tok = tok.nfkd().filter(|c| !is_combining_mark(*c)).collect();
                        }
                    }
                    Filter::AlphanumOnly => {
                        if !tok.chars().all(|c| c.is_ascii_alphanumeric()) {
                            continue 'tokens;
                        }
                    }
                    Filter::CnAlphanumOnly => {
                        if !tok.chars().all(|c| c.is_ascii_alphanumeric() || is_han(c)) {
                            continue 'tokens;
                        }
                    }
                    Filter::CnCharOnly => {
                        if !tok.chars().all(is_han) {
                            continue 'tokens;
                        }
                    }
                    Filter::Stop(set) => {
                        if set.contains(&tok) {
                            continue 'tokens;
                        }
                    }
                    Filter::Length(max) => {
                        if tok.len() > *max {
                            continue 'tokens;
                        }
                    }
                    Filter::Stemmer(s) => tok = s.stem(&tok).into_owned(),
                }
            }
            if !tok.is_empty() && tok.len() <= MAX_TOKEN_BYTES {
                out.push((at..at + t.len(), tok));
            }
        }
        out
    }
}

/// The dimension of a term in BM25 sparse vectors: 32-bit FNV-1a of its UTF-8 bytes,
/// kept below `u32::MAX` (the one index sparse vectors cannot use). Stable across
/// versions and machines: stored vectors depend on it.
pub fn term_id(term: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in term.as_bytes() {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.min(u32::MAX - 1)
}

/// Term frequencies of `terms` as `(term id, count)`, by ascending id. Distinct terms
/// that share an id (a hash collision) are counted together.
pub fn term_frequencies(terms: &[String]) -> Vec<(u32, f32)> {
    let mut m: std::collections::BTreeMap<u32, f32> = Default::default();
    for t in terms {
        *m.entry(term_id(t)).or_default() += 1.0;
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p: Value, text: &str) -> Vec<String> {
        Analyzer::from_params(Some(&p)).unwrap().analyze(text)
    }

    #[test]
    fn standard_and_english() {
        let text = "The Quick brown foxes, jumping over 2 lazy dogs! e-mail: a@b.com";
        assert_eq!(
            Analyzer::from_params(None).unwrap().analyze(text),
            [
                "the", "quick", "brown", "foxes", "jumping", "over", "2", "lazy", "dogs", "e",
                "mail", "a", "b.com"
            ]
        );
        assert_eq!(
            run(json!({"type": "english"}), text),
            ["quick", "brown", "fox", "jump", "over", "2", "lazi", "dog", "e", "mail", "b.com"]
        );
        assert_eq!(
            run(
                json!({"type": "standard", "stop_words": ["quick", "the"]}),
                text
            )[..3],
            ["brown", "foxes", "jumping"]
        );
    }

    #[test]
    fn tokenizer_and_filters() {
        let p = json!({"tokenizer": "whitespace", "filter": ["lowercase", "asciifolding",
            {"type": "length", "max": 5}, {"type": "stop", "stop_words": ["cafe"]}, "alphanumonly",
            {"type": "stemmer", "language": "french"}]});
        assert_eq!(run(p, "Café Crème très-bien Économies x1"), ["crem", "x1"]);
        assert_eq!(
            run(json!({"filter": ["asciifolding"]}), "naïve Zoë"),
            ["naive", "Zoe"]
        );
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        for (p, want) in [
            (
                json!({"type": "klingon"}),
                "unknown analyzer type 'klingon'",
            ),
            (
                json!({"tokenizer": {"type": "jieba", "mode": "fast"}}),
                "\"search\" or \"exact\"",
            ),
            (
                json!({"tokenizer": {"type": "jieba", "dict": ["x"]}}),
                "no parameter 'dict'",
            ),
            (
                json!({"tokenizer": {"type": "standard", "mode": "x"}}),
                "no parameter 'mode'",
            ),
            (json!({"tokenizer": "icu"}), "unknown tokenizer"),
            (
                json!({"filter": ["uppercase"]}),
                "unknown filter 'uppercase'",
            ),
            (
                json!({"filter": [{"type": "stemmer", "language": "klingon"}]}),
                "no stemmer for language 'klingon'",
            ),
            (json!({"filter": [{"type": "length"}]}), "\"max\""),
            (
                json!({"filter": [{"type": "length", "max": 3, "min": 1}]}),
                "no parameter 'min'",
            ),
            (json!({"type": "english", "filter": []}), "not both"),
            (json!({"typ": "english"}), "no key 'typ'"),
            (json!("english"), "must be an object"),
        ] {
            let e = Analyzer::from_params(Some(&p)).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn chinese_is_segmented_into_words() {
        let p = json!({"type": "chinese"});
        // Exact mode: dictionary words; punctuation and spaces dropped by cnalphanumonly.
        let exact =
            json!({"tokenizer": {"type": "jieba", "mode": "exact"}, "filter": ["cnalphanumonly"]});
        assert_eq!(
            run(exact, "我来到北京清华大学。"),
            ["我", "来到", "北京", "清华大学"]
        );
        // Search mode also emits the words inside long ones.
        let t = run(p.clone(), "我来到北京清华大学");
        for w in ["清华", "华大", "大学", "清华大学", "北京"] {
            assert!(t.contains(&w.to_string()), "{w}: {t:?}");
        }
        // Mixed text keeps Latin words and digits; offsets point at the words.
        let a = Analyzer::from_params(Some(&p)).unwrap();
        let text = "Milvus 2.5 支持全文检索！";
        for (r, t) in a.analyze_spans(text) {
            assert_eq!(&text[r], t);
        }
        let t = a.analyze(text);
        assert!(
            t.contains(&"Milvus".to_string()) && t.contains(&"全文".to_string()),
            "{t:?}"
        );
        assert!(
            !t.iter().any(|w| w == "！" || w == " " || w == "."),
            "{t:?}"
        );
        let only = json!({"tokenizer": "jieba", "filter": ["cncharonly"]});
        assert_eq!(run(only, "Milvus 支持"), ["支持"]);
    }

    #[test]
    fn term_ids_are_stable() {
        // FNV-1a 32 of "hello" and "" (published test vectors).
        assert_eq!(term_id("hello"), 0x4f9f_2cab);
        assert_eq!(term_id(""), 0x811c_9dc5);
        let tf = term_frequencies(&["a".into(), "b".into(), "a".into()]);
        assert_eq!(tf.iter().map(|x| x.1).sum::<f32>(), 3.0);
        assert!(tf.contains(&(term_id("a"), 2.0)));
    }
}
