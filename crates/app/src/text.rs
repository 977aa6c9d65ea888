//! The text (RAG) app: documents split into passages, stored with a BM25 function (exact
//! terms) and, unless turned off, a MiniLM `TextEmbedding` function (meaning), and
//! searched by BM25, by embeddings, or by both fused with reciprocal rank fusion.
//!
//! **Sources.** A folder (walked for `.txt`, `.md`/`.markdown`, `.html`/`.htm` and
//! `.jsonl`) or one such file. A JSON-lines file holds one document per line,
//! `{"id", "title", "text"}` (BEIR's `_id` is accepted for `id`). A plain or Markdown
//! file is one document titled by its first `# ` heading (else its file name); an HTML
//! file is one document titled by its `<title>`, with tags, scripts and styles removed.
//!
//! **Passages.** A document's text is cut into windows of `passage_words` words that
//! overlap by `overlap` words (a word longer than [`MAX_WORD_CHARS`] characters counts
//! as several, so text without spaces is cut too). Each passage is stored with its
//! document's title on its first line, so the title's words count for every passage.
//!
//! **Rows.** Primary key `id` = `"{doc}#{n}"` (the key splits at its last `#`, so keys
//! are unique whatever the document keys hold); `doc` is the document's key (its path
//! relative to the source, `{path}#{id}` for a JSON-lines document in a folder, or the
//! id alone when the source is that file); `file` is the source file, with its `size`
//! and `mtime`; `hash` is the hash of the document's title, text and passage settings.
//!
//! **Incremental and resumable** (the loop of [`crate::walk`]): files whose size and
//! mtime are unchanged are skipped without being read; in changed files each document
//! is compared by hash, and only new or changed documents are split and embedded;
//! documents that vanished are deleted. A document's passages are written in one
//! acknowledged upsert (then its stale passages deleted), so an interrupted run leaves
//! whole documents and the next run finishes the rest. Which source a collection
//! indexes is kept in `<data dir>/text.json`.
//!
//! The loop works on a [`Store`]: the engine in process, or (in the CLI) a server's REST
//! API, so a running server can be fed from another machine.

use crate::error::{AppError, Result};
use crate::walk::{self, IndexReport, Progress};
use magpie_engine::{
    CollectionSchema, Consistency, DataType, Engine, FieldSchema, FunctionSchema, HybridRequest,
    IndexMeta, Metric, QueryRequest, SearchRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const TEXT: &str = "text";
pub const SPARSE: &str = "sparse";
pub const DENSE: &str = "dense";
/// The default embedding model of a text collection.
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";
/// Files with these extensions are read when a folder is indexed.
pub const EXTENSIONS: [&str; 6] = ["txt", "md", "markdown", "html", "htm", "jsonl"];
/// Largest plain, Markdown or HTML file read (bytes).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest JSON-lines file read (bytes).
pub const MAX_JSONL_BYTES: u64 = 4 << 30;
/// Longest line of a JSON-lines file (bytes).
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Longest document key, title (bytes) and word (characters).
pub const MAX_KEY_BYTES: usize = 2048;
pub const MAX_TITLE_BYTES: usize = 1024;
pub const MAX_WORD_CHARS: usize = 64;
/// Bounds of the passage settings.
pub const MAX_PASSAGE_WORDS: usize = 1000;
/// Passages per write (documents are never split across writes).
const BATCH_PASSAGES: usize = 64;
const ROOTS: &str = "text.json";
/// Fields returned with every hit.
pub const OUTPUT_FIELDS: [&str; 4] = ["doc", "title", "passage", TEXT];

/// How a collection is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextOptions {
    /// Embedding model of the `dense` field; `None` = BM25 only.
    pub model: Option<String>,
    /// Milvus analyzer params of the `text` field (`{"type": "english"}` by default).
    pub analyzer: Value,
    pub passage_words: usize,
    pub overlap: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            model: Some(DEFAULT_MODEL.into()),
            analyzer: json!({"type": "english"}),
            passage_words: 200,
            overlap: 40,
        }
    }
}

impl TextOptions {
    pub fn check(&self) -> Result<()> {
        if self.passage_words == 0 || self.passage_words > MAX_PASSAGE_WORDS {
            return Err(AppError::bad_request(format!(
                "passage size must be 1..={MAX_PASSAGE_WORDS} words, got {}",
                self.passage_words
            )));
        }
        if self.overlap >= self.passage_words {
            return Err(AppError::bad_request(format!(
                "the overlap ({}) must be smaller than the passage size ({})",
                self.overlap, self.passage_words
            )));
        }
        magpie_engine::analyzer::Analyzer::from_params(Some(&self.analyzer))
            .map_err(|e| AppError::bad_request(format!("analyzer: {e}")))?;
        if let Some(m) = &self.model {
            let spec =
                magpie_embed::models::spec(m).map_err(|e| AppError::bad_request(e.to_string()))?;
            if spec.kind != "text" {
                return Err(AppError::bad_request(format!(
                    "model '{m}' does not embed text passages (it is a {} model); use {DEFAULT_MODEL}",
                    spec.kind
                )));
            }
        }
        Ok(())
    }
}

/// One document of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub key: String,
    pub title: String,
    pub text: String,
}

/// The schema and indexes of a text collection.
pub fn schema(o: &TextOptions) -> Result<(CollectionSchema, Vec<IndexMeta>)> {
    let mut text = FieldSchema::new(TEXT, DataType::VarChar).with_max_length(65535);
    text.enable_analyzer = true;
    text.enable_match = true;
    text.analyzer_params = Some(o.analyzer.clone());
    let mut fields = vec![
        FieldSchema::new("id", DataType::VarChar)
            .primary(false)
            .with_max_length(MAX_KEY_BYTES + 16),
        FieldSchema::new("doc", DataType::VarChar).with_max_length(MAX_KEY_BYTES),
        FieldSchema::new("title", DataType::VarChar).with_max_length(MAX_TITLE_BYTES),
        FieldSchema::new("passage", DataType::Int64),
        FieldSchema::new("file", DataType::VarChar).with_max_length(4096),
        FieldSchema::new("size", DataType::Int64),
        FieldSchema::new("mtime", DataType::Int64),
        FieldSchema::new("hash", DataType::VarChar).with_max_length(64),
        text,
        FieldSchema::new(SPARSE, DataType::SparseFloatVector),
    ];
    let f = |v: Value| -> FunctionSchema { serde_json::from_value(v).expect("static function") };
    let mut functions = vec![f(json!({"name": "bm25", "type": "BM25",
        "inputFieldNames": [TEXT], "outputFieldNames": [SPARSE], "params": {}}))];
    let index = |field: &str, t: &str, m: Metric| IndexMeta {
        id: 0,
        index_name: field.into(),
        field_name: field.into(),
        index_type: t.into(),
        metric_type: m,
        params: Default::default(),
    };
    let mut indexes = vec![index(SPARSE, "SPARSE_INVERTED_INDEX", Metric::BM25)];
    if let Some(m) = &o.model {
        let dim = magpie_embed::models::spec(m)
            .map_err(|e| AppError::bad_request(e.to_string()))?
            .dim;
        fields.push(FieldSchema::new(DENSE, DataType::FloatVector).with_dim(dim));
        functions.push(f(json!({"name": "embed", "type": "TextEmbedding",
            "inputFieldNames": [TEXT], "outputFieldNames": [DENSE], "params": {"model": m}})));
        indexes.push(index(DENSE, "AUTOINDEX", Metric::COSINE));
    }
    Ok((
        CollectionSchema {
            fields,
            enable_dynamic_field: false,
            description: "Magpie text collection".into(),
            functions,
        },
        indexes,
    ))
}

/// The body of a REST `collections/create` request for [`schema`] (for a [`Store`]
/// behind a server).
pub fn create_body(coll: &str, o: &TextOptions) -> Result<Value> {
    let (s, idx) = schema(o)?;
    let fields: Vec<Value> = s
        .fields
        .iter()
        .map(|f| {
            let mut p = Map::new();
            if let Some(n) = f.max_length {
                p.insert("max_length".into(), json!(n));
            }
            if let Some(d) = f.dim {
                p.insert("dim".into(), json!(d));
            }
            if f.enable_analyzer {
                p.insert("enable_analyzer".into(), json!(true));
                p.insert("enable_match".into(), json!(f.enable_match));
                p.insert("analyzer_params".into(), json!(f.analyzer_params));
            }
            json!({"fieldName": f.name, "dataType": f.data_type, "isPrimary": f.is_primary,
                "elementTypeParams": p})
        })
        .collect();
    let indexes: Vec<Value> = idx
        .iter()
        .map(|i| {
            json!({"fieldName": i.field_name, "indexName": i.index_name,
            "indexType": i.index_type, "metricType": i.metric_type.as_str()})
        })
        .collect();
    Ok(
        json!({"collectionName": coll, "schema": {"fields": fields, "functions": s.functions,
        "description": s.description}, "indexParams": indexes, "consistencyLevel": "Strong"}),
    )
}

/// Whether a collection with these fields is a text collection.
pub fn is_text_collection(fields: &[String]) -> bool {
    ["doc", "passage", "hash", TEXT, SPARSE]
        .iter()
        .all(|f| fields.iter().any(|x| x == f))
}

/// Where the text app's rows live: the engine, or a server's REST API.
pub trait Store {
    /// The collection's field names, or `None` when it does not exist.
    fn fields(&self, coll: &str) -> Result<Option<Vec<String>>>;
    fn create(&self, coll: &str, o: &TextOptions) -> Result<()>;
    /// Every row's `fields` (all rows; the collection read at Strong consistency).
    fn rows(&self, coll: &str, fields: &[&str]) -> Result<Vec<Map<String, Value>>>;
    fn upsert(&self, coll: &str, rows: &[Value]) -> Result<()>;
    fn delete(&self, coll: &str, ids: &[Value]) -> Result<usize>;
    fn flush(&self, coll: &str) -> Result<()>;
}

impl Store for Engine {
    fn fields(&self, coll: &str) -> Result<Option<Vec<String>>> {
        if !self.has_collection(coll) {
            return Ok(None);
        }
        let m = self.describe_collection(coll)?;
        Ok(Some(
            m.schema.fields.iter().map(|f| f.name.clone()).collect(),
        ))
    }
    fn create(&self, coll: &str, o: &TextOptions) -> Result<()> {
        let (s, idx) = schema(o)?;
        self.create_collection(coll, s, idx, Consistency::Strong, "")?;
        Ok(())
    }
    fn rows(&self, coll: &str, fields: &[&str]) -> Result<Vec<Map<String, Value>>> {
        Ok(self.query(
            coll,
            &QueryRequest {
                filter: Some("passage >= 0".into()),
                output_fields: fields.iter().map(|s| s.to_string()).collect(),
                consistency: Some(Consistency::Strong),
                ..Default::default()
            },
        )?)
    }
    fn upsert(&self, coll: &str, rows: &[Value]) -> Result<()> {
        Engine::upsert(self, coll, None, rows)?;
        Ok(())
    }
    fn delete(&self, coll: &str, ids: &[Value]) -> Result<usize> {
        Ok(Engine::delete(self, coll, None, Some(ids), None)?)
    }
    fn flush(&self, coll: &str) -> Result<()> {
        Ok(Engine::flush(self, coll)?)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The text of an HTML page without tags, comments, scripts and styles (block tags
/// become line breaks), with the common entities decoded; and its `<title>`.
pub fn html_text(html: &str) -> (String, Option<String>) {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() / 2);
    let mut title = None;
    let mut i = 0;
    let b = html.as_bytes();
    while i < b.len() {
        if b[i] != b'<' {
            let next = html[i..].find('<').map_or(html.len(), |n| i + n);
            out.push_str(&decode_entities(&html[i..next]));
            i = next;
            continue;
        }
        if lower[i..].starts_with("<!--") {
            i = lower[i..].find("-->").map_or(b.len(), |n| i + n + 3);
            continue;
        }
        let end = lower[i..].find('>').map_or(b.len(), |n| i + n + 1);
        let tag: String = lower[i + 1..end.saturating_sub(1).max(i + 1)]
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        i = end;
        match tag.as_str() {
            "script" | "style" | "title" => {
                let close = format!("</{tag}");
                let stop = lower[i..].find(&close).map_or(b.len(), |n| i + n);
                if tag == "title" && title.is_none() {
                    let t = decode_entities(&html[i..stop]);
                    title = Some(t.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                i = lower[stop..].find('>').map_or(b.len(), |n| stop + n + 1);
            }
            "p" | "div" | "br" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
            | "section" | "article" | "pre" | "blockquote" | "table" | "ul" | "ol" => {
                out.push('\n')
            }
            _ => out.push(' '),
        }
    }
    (out, title.filter(|t| !t.is_empty()))
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The documents of one file. `key` is the file's key (its relative path); JSON-lines
/// documents are keyed `{key}#{id}`, or by their id alone when `bare_ids`.
pub fn read_docs(path: &Path, key: &str, bare_ids: bool) -> std::result::Result<Vec<Doc>, String> {
    let ext = path
        .extension()
        .and_then(|x| x.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let cap = if ext == "jsonl" {
        MAX_JSONL_BYTES
    } else {
        MAX_FILE_BYTES
    };
    if len > cap {
        return Err(format!(
            "{len} bytes is over the limit of {cap} for a .{ext} file"
        ));
    }
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if ext == "jsonl" {
        return read_jsonl(path, key, bare_ids);
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&bytes);
    let (text, title) = match ext.as_str() {
        "html" | "htm" => html_text(&raw),
        "md" | "markdown" => {
            // The first `# ` heading is the title (and leaves the body: every passage
            // starts with the title already).
            let mut title = None;
            let mut body = String::with_capacity(raw.len());
            for l in raw.lines() {
                match l.strip_prefix("# ") {
                    Some(t) if title.is_none() => title = Some(t.trim().to_string()),
                    _ => {
                        body.push_str(l);
                        body.push('\n');
                    }
                }
            }
            (body, title)
        }
        _ => (raw.into_owned(), None),
    };
    let title = title.unwrap_or(stem);
    Ok(vec![Doc {
        key: clip(key, MAX_KEY_BYTES).to_string(),
        title: clip(&title, MAX_TITLE_BYTES).to_string(),
        text,
    }])
}

fn read_jsonl(path: &Path, key: &str, bare_ids: bool) -> std::result::Result<Vec<Doc>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(f);
    let mut docs = Vec::new();
    let mut ids = HashSet::new();
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let n = std::io::Read::take(&mut r, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("line {line_no}: {e}"))?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(format!(
                "line {line_no} is longer than {MAX_LINE_BYTES} bytes"
            ));
        }
        if buf.iter().all(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("line {line_no}: {e}"))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let id = match v.get("id").or_else(|| v.get("_id")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("line {line_no}: no \"id\" (a string or a number)")),
        };
        let Some(text) = s("text") else {
            return Err(format!("line {line_no}: no \"text\" string"));
        };
        if !ids.insert(id.clone()) {
            return Err(format!("line {line_no}: the id \"{id}\" is repeated"));
        }
        let key = if bare_ids { id } else { format!("{key}#{id}") };
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "line {line_no}: the document key is longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        docs.push(Doc {
            key,
            title: clip(s("title").unwrap_or(""), MAX_TITLE_BYTES).to_string(),
            text: text.to_string(),
        });
    }
    Ok(docs)
}

/// `text` cut into passages of `words` words overlapping by `overlap` (see the module
/// docs); empty text gives no passage.
pub fn split_passages(text: &str, words: usize, overlap: usize) -> Vec<String> {
    let mut toks: Vec<&str> = Vec::new();
    for w in text.split_whitespace() {
        if w.chars().count() <= MAX_WORD_CHARS {
            toks.push(w);
            continue;
        }
        let mut rest = w;
        while !rest.is_empty() {
            let cut = rest
                .char_indices()
                .nth(MAX_WORD_CHARS)
                .map_or(rest.len(), |(i, _)| i);
            toks.push(&rest[..cut]);
            rest = &rest[cut..];
        }
    }
    let words = words.max(1);
    let step = words.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < toks.len() {
        let end = (start + words).min(toks.len());
        out.push(toks[start..end].join(" "));
        if end == toks.len() {
            break;
        }
        start += step;
    }
    out
}

/// The hash that decides whether a stored document is current.
fn doc_hash(d: &Doc, o: &TextOptions) -> String {
    let mut b = Vec::with_capacity(d.title.len() + d.text.len() + 16);
    b.extend_from_slice(d.title.as_bytes());
    b.push(0);
    b.extend_from_slice(d.text.as_bytes());
    b.extend_from_slice(format!("\0{}/{}", o.passage_words, o.overlap).as_bytes());
    walk::hash_bytes(&b)
}

/// The rows of one document.
fn doc_rows(d: &Doc, file: &str, size: i64, mtime: i64, hash: &str, o: &TextOptions) -> Vec<Value> {
    split_passages(&d.text, o.passage_words, o.overlap)
        .into_iter()
        .enumerate()
        .map(|(n, p)| {
            let text = if d.title.is_empty() {
                p
            } else {
                format!("{}\n{p}", d.title)
            };
            json!({"id": format!("{}#{n}", d.key), "doc": d.key, "title": d.title,
                "passage": n, "file": file, "size": size, "mtime": mtime, "hash": hash,
                TEXT: clip(&text, 65535)})
        })
        .collect()
}

/// What the collection holds for one document.
struct KnownDoc {
    file: String,
    size: i64,
    mtime: i64,
    /// `None` when its passages disagree (an interrupted rewrite).
    hash: Option<String>,
    ids: Vec<Value>,
}

fn known_docs<S: Store + ?Sized>(store: &S, coll: &str) -> Result<HashMap<String, KnownDoc>> {
    let mut out: HashMap<String, KnownDoc> = HashMap::new();
    for r in store.rows(coll, &["id", "doc", "file", "size", "mtime", "hash"])? {
        let g = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let n = |k: &str| r.get(k).and_then(|v| v.as_i64()).unwrap_or(-1);
        let e = out.entry(g("doc")).or_insert_with(|| KnownDoc {
            file: g("file"),
            size: n("size"),
            mtime: n("mtime"),
            hash: Some(g("hash")),
            ids: Vec::new(),
        });
        if e.hash.as_deref() != Some(g("hash").as_str())
            || e.size != n("size")
            || e.mtime != n("mtime")
        {
            e.hash = None;
        }
        e.ids.push(json!(g("id")));
    }
    Ok(out)
}

/// The source a text collection indexes.
pub fn source_of(data_dir: &Path, coll: &str) -> Option<PathBuf> {
    walk::load_roots(data_dir, ROOTS).remove(coll)
}

/// Records the source of `coll` (with `data_dir`; `None` when the store keeps no
/// record, as for a server's REST API), refusing a second source.
fn bind_source(data_dir: Option<&Path>, coll: &str, src: &Path) -> Result<()> {
    let Some(dir) = data_dir else { return Ok(()) };
    if let Some(prev) = source_of(dir, coll) {
        if prev != src {
            return Err(AppError::bad_request(format!(
                "collection '{coll}' indexes {}, not {}; use another collection name",
                prev.display(),
                src.display()
            )));
        }
        return Ok(());
    }
    walk::save_root(dir, ROOTS, coll, src)
}

/// Indexes the documents of `src` (a folder or one file) into `coll` (see the module
/// docs), creating the collection with `o` if needed. Stops between batches when
/// `cancel` is set; what was written stays written.
#[allow(clippy::too_many_arguments)]
pub fn index<S: Store + ?Sized>(
    store: &S,
    data_dir: Option<&Path>,
    coll: &str,
    src: &Path,
    o: &TextOptions,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<IndexReport> {
    o.check()?;
    let src = src
        .canonicalize()
        .map_err(|e| AppError::bad_request(format!("{}: {e}", src.display())))?;
    let single = src.is_file();
    if single {
        let ok = src
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()));
        if !ok {
            return Err(AppError::bad_request(format!(
                "{}: not a document (expected a folder or a file ending in {})",
                src.display(),
                EXTENSIONS.map(|e| format!(".{e}")).join(", ")
            )));
        }
    } else if !src.is_dir() {
        return Err(AppError::bad_request(format!(
            "{}: not a file or folder",
            src.display()
        )));
    }
    match store.fields(coll)? {
        Some(f) if !is_text_collection(&f) => {
            return Err(AppError::bad_request(format!(
                "collection '{coll}' exists and is not a text collection; pick another name"
            )))
        }
        Some(_) => {}
        None => store.create(coll, o)?,
    }
    bind_source(data_dir, coll, &src)?;
    let mut rep = IndexReport::default();
    let known = known_docs(store, coll)?;
    let (root, files) = if single {
        let parent = src.parent().unwrap_or(Path::new("/")).to_path_buf();
        (parent, vec![src.clone()])
    } else {
        let files = walk::walk_files(&src, &EXTENSIONS, &mut rep);
        (src.clone(), files)
    };
    // Files whose every stored document has the file's current size and mtime are
    // unchanged and not read.
    let mut by_file: HashMap<&str, Vec<&KnownDoc>> = HashMap::new();
    for k in known.values() {
        by_file.entry(k.file.as_str()).or_default().push(k);
    }
    let mut seen_docs: HashSet<String> = HashSet::new();
    let mut todo: Vec<(Doc, String, i64, i64, String)> = Vec::new();
    for p in files {
        let rel = walk::rel_path(&root, &p);
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                rep.failed.push((rel, e.to_string()));
                continue;
            }
        };
        let (size, mtime) = (
            meta.len() as i64,
            walk::modified_since_epoch(&meta).as_secs() as i64,
        );
        // A JSON-lines file is always read (an interrupted run may have written part of
        // it); its documents are compared by hash.
        let is_jsonl = p
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("jsonl"));
        if let (false, Some(ks)) = (is_jsonl, by_file.get(rel.as_str())) {
            if ks
                .iter()
                .all(|k| k.size == size && k.mtime == mtime && k.hash.is_some())
            {
                rep.found += ks.len();
                rep.unchanged += ks.len();
                for k in known.iter().filter(|(_, k)| k.file == rel) {
                    seen_docs.insert(k.0.clone());
                }
                continue;
            }
        }
        let docs = match read_docs(&p, &rel, single) {
            Ok(d) => d,
            Err(e) => {
                rep.failed.push((rel.clone(), e));
                // Keep what is stored for a file that cannot be read now.
                for k in known.iter().filter(|(_, k)| k.file == rel) {
                    seen_docs.insert(k.0.clone());
                }
                continue;
            }
        };
        for d in docs {
            rep.found += 1;
            if !seen_docs.insert(d.key.clone()) {
                rep.failed.push((
                    d.key.clone(),
                    "a document with this key was already read".into(),
                ));
                continue;
            }
            let h = doc_hash(&d, o);
            match known.get(&d.key) {
                // Same content: unchanged, even if the file was touched.
                Some(k) if k.hash.as_deref() == Some(h.as_str()) => rep.unchanged += 1,
                _ => todo.push((d, rel.clone(), size, mtime, h)),
            }
        }
    }
    let total = todo.len();
    progress(Progress { done: 0, total });
    let mut i = 0;
    while i < todo.len() {
        if cancel.load(Ordering::Relaxed) {
            rep.cancelled = true;
            break;
        }
        // Whole documents, about BATCH_PASSAGES passages.
        let mut rows = Vec::new();
        let mut stale = Vec::new();
        let start = i;
        while i < todo.len() && (rows.is_empty() || rows.len() < BATCH_PASSAGES) {
            let (d, file, size, mtime, h) = &todo[i];
            let new = doc_rows(d, file, *size, *mtime, h, o);
            if let Some(k) = known.get(&d.key) {
                let keep: HashSet<&str> = new.iter().filter_map(|r| r["id"].as_str()).collect();
                stale.extend(
                    k.ids
                        .iter()
                        .filter(|id| !keep.contains(id.as_str().unwrap_or("")))
                        .cloned(),
                );
            }
            rows.extend(new);
            i += 1;
        }
        if !rows.is_empty() {
            store.upsert(coll, &rows)?;
        }
        if !stale.is_empty() {
            store.delete(coll, &stale)?;
        }
        for (d, ..) in &todo[start..i] {
            if known.contains_key(&d.key) {
                rep.updated += 1;
            } else {
                rep.added += 1;
            }
        }
        progress(Progress { done: i, total });
    }
    if !rep.cancelled {
        let gone: Vec<Value> = known
            .iter()
            .filter(|(k, _)| !seen_docs.contains(*k))
            .flat_map(|(_, k)| k.ids.iter().cloned())
            .collect();
        rep.removed = known.keys().filter(|k| !seen_docs.contains(*k)).count();
        if !gone.is_empty() {
            store.delete(coll, &gone)?;
        }
        store.flush(coll)?;
    }
    Ok(rep)
}

/// How to search a text collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Dense,
    /// Both, fused by reciprocal rank fusion (k = 60).
    #[default]
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "bm25" => Ok(Mode::Bm25),
            "dense" => Ok(Mode::Dense),
            "hybrid" => Ok(Mode::Hybrid),
            _ => Err(AppError::bad_request(format!(
                "unknown search mode '{s}' (bm25, dense or hybrid)"
            ))),
        }
    }
}

/// One passage found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextHit {
    pub id: String,
    pub doc: String,
    pub title: String,
    pub passage: i64,
    pub text: String,
    pub score: f32,
    /// Byte ranges of `text` whose words match a query term (after analysis).
    pub highlights: Vec<[usize; 2]>,
}

/// Searches a text collection by `mode`. `filter` is a boolean expression over the
/// scalar fields (e.g. `doc like "guide/%"` or `TEXT_MATCH(text, 'kernel')`).
pub fn search(
    engine: &Engine,
    coll: &str,
    query: &str,
    mode: Mode,
    filter: Option<&str>,
    limit: usize,
) -> Result<Vec<TextHit>> {
    if query.trim().is_empty() {
        return Err(AppError::bad_request("the query is empty"));
    }
    let meta = engine.describe_collection(coll)?;
    let names: Vec<String> = meta.schema.fields.iter().map(|f| f.name.clone()).collect();
    if !is_text_collection(&names) {
        return Err(AppError::NotAnAppCollection(format!(
            "'{coll}' is not a text collection (index documents into it with `magpie text index`)"
        )));
    }
    let dense = names.iter().any(|n| n == DENSE);
    if mode != Mode::Bm25 && !dense {
        return Err(AppError::bad_request(format!(
            "'{coll}' has no embeddings (it was indexed with --model none): search it with mode bm25"
        )));
    }
    let limit = limit.clamp(1, 1000);
    let sub = |field: &str| SearchRequest {
        anns_field: Some(field.into()),
        texts: vec![query.to_string()],
        filter: filter.map(String::from),
        limit,
        output_fields: OUTPUT_FIELDS.iter().map(|s| s.to_string()).collect(),
        consistency: Some(Consistency::Strong),
        ..Default::default()
    };
    let hits = match mode {
        Mode::Bm25 => engine.search(coll, &sub(SPARSE))?,
        Mode::Dense => engine.search(coll, &sub(DENSE))?,
        Mode::Hybrid => engine.hybrid_search(
            coll,
            &HybridRequest {
                searches: vec![sub(SPARSE), sub(DENSE)],
                rerank: magpie_engine::engine::Rerank::Rrf { k: 60.0 },
                limit,
                offset: 0,
                output_fields: OUTPUT_FIELDS.iter().map(|s| s.to_string()).collect(),
                partitions: vec![],
                consistency: Some(Consistency::Strong),
                function_score: None,
            },
        )?,
    };
    let analyzer = meta
        .schema
        .field(TEXT)
        .map(|f| f.analyzer())
        .transpose()
        .map_err(AppError::bad_request)?;
    let terms: HashSet<String> = analyzer
        .as_ref()
        .map(|a| a.analyze(query).into_iter().collect())
        .unwrap_or_default();
    Ok(hits
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let s = |k: &str| {
                h.fields
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let text = s(TEXT);
            let highlights = analyzer
                .as_ref()
                .map(|a| {
                    a.analyze_spans(&text)
                        .into_iter()
                        .filter(|(_, t)| terms.contains(t))
                        .map(|(r, _)| [r.start, r.end])
                        .collect()
                })
                .unwrap_or_default();
            TextHit {
                id: h.id.to_string(),
                doc: s("doc"),
                title: s("title"),
                passage: h
                    .fields
                    .get("passage")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0),
                text,
                score: h.distance,
                highlights,
            }
        })
        .collect())
}

/// Text collections with their sources (a data directory's record).
pub fn sources(data_dir: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    walk::load_roots(data_dir, ROOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_overlap_and_cover_the_text() {
        let text = (0..24)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let p = split_passages(&text, 10, 3);
        assert_eq!(p.len(), 3);
        assert!(p[0].starts_with("w0 ") && p[0].ends_with(" w9"));
        assert!(p[1].starts_with("w7 ") && p[1].ends_with(" w16"));
        assert!(p[2].starts_with("w14 ") && p[2].ends_with(" w23"));
        assert!(split_passages("  \n ", 10, 3).is_empty());
        assert_eq!(split_passages("one two", 10, 3), vec!["one two"]);
        // A run of text without spaces is cut into words of MAX_WORD_CHARS characters.
        let cjk = "字".repeat(MAX_WORD_CHARS * 3);
        let p = split_passages(&cjk, 2, 0);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].chars().count(), MAX_WORD_CHARS * 2 + 1);
    }

    #[test]
    fn html_loses_tags_scripts_and_keeps_its_title() {
        let (t, title) = html_text(
            "<html><head><title> A &amp; B </title><style>p{x:1}</style></head>\
             <body><!-- hidden --><p>Hello&nbsp;<b>world</b> &#233;t&#xE9;</p><script>var x='<p>';</script>end</body></html>",
        );
        assert_eq!(title.as_deref(), Some("A & B"));
        let words: Vec<&str> = t.split_whitespace().collect();
        assert_eq!(words, ["Hello", "world", "été", "end"]);
        // Unterminated constructs end the text instead of looping.
        let (t, _) = html_text("a <b unterminated");
        assert_eq!(t.trim(), "a");
        let (t, _) = html_text("x <script>never closed");
        assert_eq!(t.trim(), "x");
        assert_eq!(
            decode_entities("&bogus; & &#99999999;"),
            "&bogus; & &#99999999;"
        );
    }

    #[test]
    fn jsonl_documents_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"x y\"}\n\n{\"id\": 2, \"text\": \"z\"}\n").unwrap();
        let d = read_docs(&p, "c.jsonl", false).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].key.as_str(), d[0].title.as_str()),
            ("c.jsonl#d1", "T")
        );
        assert_eq!(read_docs(&p, "c.jsonl", true).unwrap()[1].key, "2");
        for (body, why) in [
            ("{\"text\": \"x\"}", "no \"id\""),
            ("{\"id\": \"a\"}", "no \"text\""),
            (
                "{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": \"a\", \"text\": \"y\"}",
                "repeated",
            ),
            ("not json", "line 1"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = read_docs(&p, "c.jsonl", true).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
        let md = dir.path().join("guide.md");
        std::fs::write(&md, "intro\n# The Guide\nbody").unwrap();
        let d = read_docs(&md, "guide.md", false).unwrap();
        assert_eq!(d[0].title, "The Guide");
        assert_eq!(d[0].text, "intro\nbody\n");
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "plain").unwrap();
        assert_eq!(
            read_docs(&txt, "notes.txt", false).unwrap()[0].title,
            "notes.txt"
        );
    }

    #[test]
    fn options_are_checked() {
        let bad = |o: TextOptions, why: &str| {
            let e = o.check().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        bad(
            TextOptions {
                passage_words: 0,
                ..Default::default()
            },
            "passage size",
        );
        bad(
            TextOptions {
                overlap: 200,
                ..Default::default()
            },
            "overlap",
        );
        bad(
            TextOptions {
                analyzer: json!({"type": "klingon"}),
                ..Default::default()
            },
            "analyzer",
        );
        bad(
            TextOptions {
                model: Some("efficientnet-lite0".into()),
                ..Default::default()
            },
            "does not embed text",
        );
        bad(
            TextOptions {
                model: Some("nosuch".into()),
                ..Default::default()
            },
            "nosuch",
        );
        TextOptions::default().check().unwrap();
        let (s, _) = schema(&TextOptions::default()).unwrap();
        s.check().unwrap();
        let (s, idx) = schema(&TextOptions {
            model: None,
            ..Default::default()
        })
        .unwrap();
        s.check().unwrap();
        assert_eq!(idx.len(), 1);
    }
}
