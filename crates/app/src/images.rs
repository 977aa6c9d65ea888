//! The image search app on top of the engine: index a folder tree into a collection
//! whose vectors come from ImageEmbedding functions, search it by text, by image or by
//! an existing id ("more like this"), and group near-duplicates.
//!
//! An image collection has two vector fields filled from the `file` field (the image's
//! canonical path): `image_vec`, Lite0's pooled feature (image ↔ image), and `text_vec`,
//! its ConSE vector in MiniLM's space (text → image). Both come from one forward pass.
//! Which folder a collection indexes is kept in `<data dir>/images.json`; files are only
//! read (embedded, thumbnailed, served) when they lie under such a root.
//!
//! Indexing is incremental and resumable: every batch is an acknowledged upsert (in the
//! WAL before it returns), rows carry size, mtime and a content hash, so a second run
//! skips unchanged files, re-embeds changed ones, and deletes rows of vanished files.
//!
//! **Captions.** An image may have a caption: a text file beside it with the same stem
//! (`fr.png` → `fr.txt`, UTF-8, its first [`CAPTION_MAX`] bytes). It is stored in
//! `caption`, indexed word for word by BM25 into `caption_terms`, and embedded by the
//! sentence encoder behind the collection's ConSE model into `caption_vec` (CLIP
//! collections have no caption vector), so a text search matches the caption's words
//! and meaning as well as what the image model sees (see [`search`]). Editing, adding or
//! removing a caption re-indexes its image. Collections made before captions existed
//! have none of these fields and search by the image model alone.

use crate::embedder::{ModelEmbedder, DEFAULT_IMAGE_TEXT_MODEL, LITE0};
use crate::error::{AppError, Result};
use crate::walk::{self, Known};
pub use crate::walk::{modified_since_epoch, IndexReport, Progress};
use magpie_embed::image::read_meta;
use magpie_engine::{
    CollectionSchema, Consistency, DataType, Engine, EngineError, FieldSchema, Hit, IndexMeta,
    Metric, PrimaryKey, QueryRequest, SearchRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const IMAGE_VEC: &str = "image_vec";
pub const TEXT_VEC: &str = "text_vec";
pub const CAPTION: &str = "caption";
pub const CAPTION_VEC: &str = "caption_vec";
pub const CAPTION_TERMS: &str = "caption_terms";
/// The longest caption read from a caption file, in bytes (the rest is left out).
pub const CAPTION_MAX: usize = 4096;
/// How much a caption's match counts against the image model's in a text search: a
/// caption as close to the query as the best caption of the candidates adds this times
/// its lead over the weakest candidate caption (see [`search`]).
pub const CAPTION_WEIGHT: f32 = 1.0;
/// How much the caption's words count: the caption with the best BM25 score among the
/// candidates adds this, the others their share of that score.
pub const CAPTION_WORDS_WEIGHT: f32 = 0.05;
/// Files with these extensions are indexed.
pub const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "gif"];
/// Scalar fields returned with every hit.
pub const OUTPUT_FIELDS: [&str; 9] = [
    "path", "name", "folder", "size", "width", "height", "date", "exif", "exif_n",
];
const BATCH: usize = 16;
/// Default cosine similarity at which two images count as near-duplicates.
pub const DEFAULT_DUP_THRESHOLD: f32 = 0.75;
const MAX_PATH: usize = 4096;
const ROOTS: &str = "images.json";

/// The text model that embeds captions for a collection whose text → image model is
/// `text_model`: the sentence encoder behind a ConSE model, so that a query's vector is
/// the same for both; for `conse-multilingual-use`, multilingual-e5-small, one of its two
/// encoders (the pair ranked the demo's captions worse than e5 alone: docs/BENCHMARKS.md,
/// "Captions"), whose query vector the ensemble's is made from. CLIP collections store
/// captions without a caption vector.
pub fn caption_model(text_model: &str) -> Option<&'static str> {
    match crate::embedder::conse_model(&text_model.to_ascii_lowercase()) {
        Some((crate::embedder::CONSE_MULTILINGUAL_USE, _)) => Some("multilingual-e5-small"),
        other => other.map(|(_, enc)| enc),
    }
}

/// The schema of an image collection whose `text_vec` comes from `text_model` (`conse`,
/// or a CLIP model) with `text_dim` dimensions; with `caption_dim`, captions are
/// embedded by [`caption_model`] into `caption_vec`.
pub fn schema(text_model: &str, text_dim: usize, caption_dim: Option<usize>) -> CollectionSchema {
    let f = |name: &str, kind: &str, model: &str, input: &str, out: &str| {
        serde_json::from_value(json!({
            "name": name, "type": kind, "inputFieldNames": [input],
            "outputFieldNames": [out], "params": {"model": model}
        }))
        .expect("static function schema")
    };
    let mut functions = vec![
        f("lite0", "ImageEmbedding", LITE0, "file", IMAGE_VEC),
        f("text", "ImageEmbedding", text_model, "file", TEXT_VEC),
    ];
    // Captions are also searched word for word by BM25 (the standard analyzer: words
    // lowercased, no stemming, so "stars" matches "stars" and not "star").
    let mut caption = FieldSchema::new(CAPTION, DataType::VarChar).with_max_length(CAPTION_MAX);
    caption.enable_analyzer = true;
    caption.analyzer_params = Some(json!({"type": "standard"}));
    let mut caption_fields = vec![
        caption,
        FieldSchema::new(CAPTION_TERMS, DataType::SparseFloatVector),
    ];
    functions.push(
        serde_json::from_value(json!({
            "name": "caption_bm25", "type": "BM25", "inputFieldNames": [CAPTION],
            "outputFieldNames": [CAPTION_TERMS], "params": {}
        }))
        .expect("static function schema"),
    );
    if let (Some(dim), Some(model)) = (caption_dim, caption_model(text_model)) {
        functions.push(f("caption", "TextEmbedding", model, CAPTION, CAPTION_VEC));
        caption_fields.push(FieldSchema::new(CAPTION_VEC, DataType::FloatVector).with_dim(dim));
    }
    CollectionSchema {
        fields: vec![
            FieldSchema::new("id", DataType::Int64).primary(false),
            FieldSchema::new("file", DataType::VarChar).with_max_length(MAX_PATH),
            FieldSchema::new("path", DataType::VarChar).with_max_length(MAX_PATH),
            FieldSchema::new("name", DataType::VarChar).with_max_length(1024),
            FieldSchema::new("folder", DataType::VarChar).with_max_length(MAX_PATH),
            FieldSchema::new("size", DataType::Int64),
            FieldSchema::new("mtime", DataType::Int64),
            FieldSchema::new("hash", DataType::VarChar).with_max_length(64),
            FieldSchema::new("width", DataType::Int64),
            FieldSchema::new("height", DataType::Int64),
            FieldSchema::new("date", DataType::VarChar).with_max_length(32),
            FieldSchema::new("exif", DataType::JSON),
            FieldSchema::new("exif_n", DataType::Int64),
            FieldSchema::new(IMAGE_VEC, DataType::FloatVector).with_dim(1280),
            FieldSchema::new(TEXT_VEC, DataType::FloatVector).with_dim(text_dim),
        ]
        .into_iter()
        .chain(caption_fields)
        .collect(),
        enable_dynamic_field: false,
        description: "Magpie image collection".into(),
        functions,
    }
}

fn indexes(schema: &CollectionSchema) -> Vec<IndexMeta> {
    [
        (IMAGE_VEC, "AUTOINDEX", Metric::COSINE),
        (TEXT_VEC, "AUTOINDEX", Metric::COSINE),
        (CAPTION_VEC, "AUTOINDEX", Metric::COSINE),
        (CAPTION_TERMS, "SPARSE_INVERTED_INDEX", Metric::BM25),
    ]
    .iter()
    .filter(|(f, _, _)| schema.field(f).is_some())
    .map(|&(f, t, m)| IndexMeta {
        id: 0,
        index_name: f.to_string(),
        field_name: f.to_string(),
        index_type: t.into(),
        metric_type: m,
        params: Default::default(),
    })
    .collect()
}

/// Which folder each image collection indexes: `<data dir>/images.json`.
pub fn load_roots(data_dir: &Path) -> BTreeMap<String, PathBuf> {
    walk::load_roots(data_dir, ROOTS)
}

fn save_root(data_dir: &Path, coll: &str, root: &Path) -> Result<()> {
    walk::save_root(data_dir, ROOTS, coll, root)
}

/// Registers every saved root with the embedder (at server start).
pub fn register_roots(data_dir: &Path, emb: &ModelEmbedder) {
    for (coll, root) in load_roots(data_dir) {
        if let Err(e) = emb.add_root(&root) {
            tracing::warn!(collection = %coll, root = %root.display(), "image root unavailable: {e}");
        }
    }
}

/// The root of an image collection, or a 404-style error.
pub fn root_of(data_dir: &Path, coll: &str) -> Result<PathBuf> {
    load_roots(data_dir).remove(coll).ok_or_else(|| {
        AppError::NotAnAppCollection(format!("'{coll}' is not an image collection (index a folder into it with `magpie images index`)"))
    })
}

/// A stable id for a relative path (FNV-1a folded to 53 bits, so that JavaScript numbers
/// hold it exactly), so re-indexing a changed file replaces its row.
pub fn path_id(rel: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in rel.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h & ((1u64 << 53) - 1)) as i64
}

/// Seconds since the epoch → "YYYY-MM-DD HH:MM:SS" (UTC), by the civil-from-days
/// algorithm (Howard Hinnant's).
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn known_rows(engine: &Engine, coll: &str) -> Result<HashMap<String, Known>> {
    let rows = engine.query(
        coll,
        &QueryRequest {
            filter: Some("id >= 0".into()),
            output_fields: vec!["path".into(), "size".into(), "mtime".into(), "hash".into()],
            consistency: Some(Consistency::Strong),
            ..Default::default()
        },
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                r.get("path")?.as_str()?.to_string(),
                Known {
                    size: r.get("size")?.as_i64()?,
                    mtime: r.get("mtime")?.as_i64()?,
                    hash: r.get("hash")?.as_str()?.to_string(),
                },
            ))
        })
        .collect())
}

/// Creates the image collection if needed (checking the models are installed), with
/// `text_model` (default `conse-multilingual-use`) for text search.
pub fn ensure_collection(
    engine: &Engine,
    emb: &ModelEmbedder,
    coll: &str,
    text_model: Option<&str>,
) -> Result<()> {
    if engine.has_collection(coll) {
        let meta = engine.describe_collection(coll)?;
        if meta.schema.field(IMAGE_VEC).is_none() || meta.schema.field("file").is_none() {
            return Err(AppError::bad_request(format!(
                "collection '{coll}' exists and is not an image collection; pick another name"
            )));
        }
        if let Some(m) = text_model {
            let have = meta
                .schema
                .function_for_output(TEXT_VEC)
                .and_then(|f| f.model())
                .unwrap_or_default()
                .to_string();
            if !have.eq_ignore_ascii_case(m) {
                return Err(AppError::bad_request(format!(
                    "collection '{coll}' searches text with '{have}', not '{m}'; use another collection name for {m}"
                )));
            }
        }
        return Ok(());
    }
    let model = text_model.unwrap_or(DEFAULT_IMAGE_TEXT_MODEL);
    let dim = magpie_engine::Embedder::dim(emb, magpie_engine::FunctionKind::ImageEmbedding, model)
        .map_err(|m| AppError::bad_request(format!("text model for '{coll}': {m}")))?;
    let caption_dim = match caption_model(model) {
        Some(m) => Some(
            magpie_engine::Embedder::dim(emb, magpie_engine::FunctionKind::TextEmbedding, m)
                .map_err(|e| AppError::bad_request(format!("caption model for '{coll}': {e}")))?,
        ),
        None => None,
    };
    let schema = schema(model, dim, caption_dim);
    let indexes = indexes(&schema);
    engine.create_collection(coll, schema, indexes, Consistency::Strong, "")?;
    Ok(())
}

/// Indexes the image files under `root` into `coll` (see the module docs). Stops between
/// batches when `cancel` is set; what was written stays written.
#[allow(clippy::too_many_arguments)]
pub fn index_folder(
    engine: &Engine,
    emb: &ModelEmbedder,
    data_dir: &Path,
    coll: &str,
    root: &Path,
    text_model: Option<&str>,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<IndexReport> {
    let root = root
        .canonicalize()
        .ok()
        .filter(|c| c.is_dir())
        .ok_or_else(|| AppError::bad_request(format!("{}: not a folder", root.display())))?;
    if let Ok(prev) = root_of(data_dir, coll) {
        if prev != root {
            return Err(AppError::bad_request(format!(
                "collection '{coll}' indexes {}, not {}; use another collection name",
                prev.display(),
                root.display()
            )));
        }
    }
    ensure_collection(engine, emb, coll, text_model)?;
    // Only now, with the folder and the collection checked, does the root become
    // readable (a failed job leaves nothing behind that widens what can be read).
    save_root(data_dir, coll, &root)?;
    emb.add_root(&root).map_err(|e| {
        AppError::bad_request(format!("{}: cannot index this folder: {e}", root.display()))
    })?;
    let mut rep = IndexReport::default();
    let known = known_rows(engine, coll)?;
    let has_caption = engine
        .describe_collection(coll)?
        .schema
        .field(CAPTION)
        .is_some();
    let files = walk::walk_files(&root, &EXTENSIONS, &mut rep);
    rep.found = files.len();
    let captions = |p: &Path| has_caption.then(|| caption_file(&root, p)).flatten();
    let (todo, seen) = walk::diff(&root, files, &known, &mut rep, &captions);
    let total = todo.len();
    progress(Progress { done: 0, total });
    let mut done = 0;
    for chunk in todo.chunks(BATCH) {
        if cancel.load(Ordering::Relaxed) {
            rep.cancelled = true;
            break;
        }
        let mut rows = Vec::new();
        let mut rels = Vec::new();
        for walk::Todo {
            path: p,
            rel,
            size,
            mtime,
            file_mtime,
            hash,
            sidecar,
        } in chunk
        {
            let m = match read_meta(p) {
                Ok(m) => m,
                Err(e) => {
                    rep.failed.push((rel.clone(), e.to_string()));
                    continue;
                }
            };
            let mut exif = Map::new();
            if let Some(t) = &m.taken {
                exif.insert("taken".into(), json!(t));
            }
            if let Some((lat, lon)) = m.gps {
                exif.insert("lat".into(), json!(lat));
                exif.insert("lon".into(), json!(lon));
            }
            if let Some(c) = &m.camera {
                exif.insert("camera".into(), json!(c));
            }
            let (folder, name) = match rel.rsplit_once('/') {
                Some((f, n)) => (f.to_string(), n.to_string()),
                None => (String::new(), rel.clone()),
            };
            let caption = match sidecar.as_deref().map(read_caption).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(e) => {
                    rep.failed.push((rel.clone(), e.to_string()));
                    continue;
                }
            };
            let mut row = json!({
                "id": path_id(rel),
                "file": p.to_string_lossy(),
                "path": rel,
                "name": name,
                "folder": folder,
                "size": size,
                "mtime": mtime,
                "hash": hash,
                "width": m.width,
                "height": m.height,
                "date": m.taken.clone().unwrap_or_else(|| format_time(*file_mtime)),
                "exif_n": m.exif_richness(),
                "exif": Value::Object(exif),
            });
            if has_caption {
                row[CAPTION] = json!(caption);
            }
            rows.push(row);
            rels.push(rel.clone());
        }
        // A row whose image fails to embed is dropped and the rest retried.
        while !rows.is_empty() {
            match engine.upsert(coll, None, &rows) {
                Ok(_) => {
                    for r in &rels {
                        if known.contains_key(r) {
                            rep.updated += 1;
                        } else {
                            rep.added += 1;
                        }
                    }
                    break;
                }
                Err(EngineError::Row { row, msg, .. }) if row < rows.len() => {
                    rep.failed.push((rels.remove(row), msg));
                    rows.remove(row);
                }
                Err(e) => return Err(e.into()),
            }
        }
        done += chunk.len();
        tracing::debug!(collection = coll, done, total, "batch written");
        progress(Progress { done, total });
    }
    if !rep.cancelled {
        let gone: Vec<Value> = known
            .keys()
            .filter(|k| !seen.contains(*k))
            .map(|k| json!(path_id(k)))
            .collect();
        if !gone.is_empty() {
            rep.removed = engine.delete(coll, None, Some(&gone), None)?;
        }
        engine.flush(coll)?;
    }
    Ok(rep)
}

/// The caption file of `image`: the `.txt` file with its stem beside it, when that is a
/// regular file under `root` (symlinks resolved), so a caption never reads a file from
/// outside the indexed folder.
pub fn caption_file(root: &Path, image: &Path) -> Option<PathBuf> {
    let c = image.with_extension("txt").canonicalize().ok()?;
    (c.starts_with(root) && c.is_file()).then_some(c)
}

/// A caption file's text: its first [`CAPTION_MAX`] bytes (cut at a character
/// boundary), as UTF-8 with invalid bytes replaced, whitespace trimmed.
pub fn read_caption(path: &Path) -> std::result::Result<String, AppError> {
    use std::io::Read;
    let io = |source| AppError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut b = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(CAPTION_MAX as u64)
        .read_to_end(&mut b)
        .map_err(io)?;
    let mut s = String::from_utf8_lossy(&b).into_owned();
    // A replacement character takes three bytes: cut again to the limit.
    while s.len() > CAPTION_MAX {
        s.pop();
    }
    Ok(s.trim().to_string())
}

/// The fields returned with every hit of a collection with `schema`:
/// [`OUTPUT_FIELDS`], and the caption where the collection has one.
fn output_fields(schema: &CollectionSchema) -> Vec<String> {
    let mut f: Vec<String> = OUTPUT_FIELDS.iter().map(|s| s.to_string()).collect();
    if schema.field(CAPTION).is_some() {
        f.push(CAPTION.into());
    }
    f
}

/// What to search by.
#[derive(Debug, Clone)]
pub enum ImageQuery {
    /// Words, embedded into ConSE's space (`text_vec`).
    Text(String),
    /// An encoded image, compared by Lite0 features (`image_vec`).
    Image(Vec<u8>),
    /// The stored image with this id ("more like this").
    Like(i64),
}

/// One search result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageHit {
    pub id: i64,
    /// Cosine similarity (greater = closer); for a text search of a collection with
    /// captions, the image cosine plus the captions' bonus (see [`search`]).
    pub score: f32,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

fn hit(h: Hit) -> ImageHit {
    ImageHit {
        id: match h.id {
            PrimaryKey::Int(i) => i,
            PrimaryKey::Str(_) => -1,
        },
        score: h.distance,
        fields: h.fields,
    }
}

/// How hard an image search looks (the index's knob): a number of candidates (HNSW's
/// `ef`, IVF's `nprobe`) or a recall target that the index turns into one. Neither: the
/// index's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Effort {
    pub num_candidates: Option<usize>,
    pub recall: Option<f32>,
}

impl Effort {
    /// The engine's knobs, or a bad request naming the field.
    pub fn knobs(self) -> Result<magpie_engine::SearchKnobs> {
        if let Some(n) = self.num_candidates {
            if !(1..=32768).contains(&n) {
                return Err(AppError::bad_request(format!(
                    "numCandidates must be in 1..=32768, got {n}"
                )));
            }
        }
        if let Some(r) = self.recall {
            if !(r > 0.0 && r <= 1.0) {
                return Err(AppError::bad_request(format!(
                    "recall must be a target in (0, 1], e.g. 0.95, got {r}"
                )));
            }
        }
        if self.num_candidates.is_some() && self.recall.is_some() {
            return Err(AppError::bad_request(
                "give numCandidates or recall, not both",
            ));
        }
        Ok(magpie_engine::SearchKnobs {
            ef: self.num_candidates,
            nprobe: self.num_candidates,
            recall: self.recall,
            ..Default::default()
        })
    }
}

/// Searches an image collection. `filter` is a boolean expression over the scalar fields
/// (e.g. `folder == "europe" and date >= "2020"`); `effort` sets the index's knob.
///
/// A text search of a collection with captions runs three searches, each to a depth of
/// `max(4·limit, 50)` candidates: `text_vec` (what the image model sees), `caption_vec`
/// (the caption's meaning, by the sentence encoder behind ConSE) and `caption_terms`
/// (the caption's words, BM25). The union is ranked by the image score (a row missing
/// from that list gets its weakest score), plus [`CAPTION_WEIGHT`] times the caption's
/// lead over the weakest caption candidate, plus [`CAPTION_WORDS_WEIGHT`] times its share
/// of the best BM25 score. The first two are cosines to the same query vector, so a
/// query that matches no caption in particular spreads the caption scores little and
/// leaves the image model's order nearly as it was; a query none of whose words occur in
/// a caption gets no BM25 term. The hit's score is that sum. The weights were chosen on
/// the captioned flags (docs/BENCHMARKS.md, "Captions").
pub fn search(
    engine: &Engine,
    coll: &str,
    q: &ImageQuery,
    filter: Option<&str>,
    limit: usize,
    effort: Effort,
) -> Result<Vec<ImageHit>> {
    let schema = engine.describe_collection(coll)?.schema;
    let fields = output_fields(&schema);
    let captions = schema.field(CAPTION_TERMS).is_some();
    let caption_vec = schema.field(CAPTION_VEC).is_some();
    let limit = limit.clamp(1, 1000);
    let mut r = SearchRequest {
        limit,
        filter: filter.map(String::from),
        output_fields: fields,
        knobs: effort.knobs()?,
        ..Default::default()
    };
    match q {
        ImageQuery::Text(t) => {
            if t.trim().is_empty() {
                return Err(AppError::bad_request("the text query is empty"));
            }
            r.anns_field = Some(TEXT_VEC.into());
            r.texts = vec![t.clone()];
            if captions {
                return search_with_captions(engine, coll, r, caption_vec);
            }
        }
        ImageQuery::Image(b) => {
            r.anns_field = Some(IMAGE_VEC.into());
            r.images = vec![b.clone()];
        }
        ImageQuery::Like(id) => {
            r.anns_field = Some(IMAGE_VEC.into());
            r.ids = Some(vec![json!(id)]);
            // The image itself is not "like" itself.
            r.limit += 1;
        }
    }
    let mut hits: Vec<ImageHit> = first(engine.search(coll, &r)?)
        .into_iter()
        .map(hit)
        .collect();
    if let ImageQuery::Like(id) = q {
        hits.retain(|h| h.id != *id);
        hits.truncate(limit);
    }
    Ok(hits)
}

fn first(mut v: Vec<Vec<Hit>>) -> Vec<Hit> {
    if v.is_empty() {
        Vec::new()
    } else {
        v.swap_remove(0)
    }
}

/// A text search through the image model and the captions together (see [`search`]);
/// by the caption's meaning too when the collection has `caption_vec`.
fn search_with_captions(
    engine: &Engine,
    coll: &str,
    r: SearchRequest,
    caption_vec: bool,
) -> Result<Vec<ImageHit>> {
    let limit = r.limit;
    let depth = (limit * 4).clamp(50, 4000);
    let image = SearchRequest {
        limit: depth,
        ..r.clone()
    };
    let dense = SearchRequest {
        limit: depth,
        anns_field: Some(CAPTION_VEC.into()),
        filter: Some(match &r.filter {
            Some(f) => format!("({f}) and {CAPTION} != \"\""),
            None => format!("{CAPTION} != \"\""),
        }),
        ..r.clone()
    };
    let words = SearchRequest {
        limit: depth,
        anns_field: Some(CAPTION_TERMS.into()),
        knobs: Default::default(),
        ..r
    };
    let image = first(engine.search(coll, &image)?);
    let dense = if caption_vec {
        first(engine.search(coll, &dense)?)
    } else {
        Vec::new()
    };
    let words = first(engine.search(coll, &words)?);
    let floor = |hs: &[Hit]| hs.iter().map(|h| h.distance).fold(f32::INFINITY, f32::min);
    let (image_floor, dense_floor) = (floor(&image), floor(&dense));
    // (No image candidates means no rows pass the filter, so no caption ones either.)
    let image_floor = if image_floor.is_finite() {
        image_floor
    } else {
        0.0
    };
    let words_top = words.iter().map(|h| h.distance).fold(0.0f32, f32::max);
    // id → (image score, caption bonus, the hit)
    let mut rows: HashMap<i64, (f32, f32, ImageHit)> = HashMap::new();
    let mut add = |h: Hit, image: Option<f32>, bonus: f32| {
        let h = hit(h);
        let e = rows
            .entry(h.id)
            .or_insert((image.unwrap_or(image_floor), 0.0, h));
        if let Some(s) = image {
            e.0 = s;
        }
        e.1 += bonus;
    };
    for h in image {
        let s = h.distance;
        add(h, Some(s), 0.0);
    }
    for h in dense {
        let lead = h.distance - dense_floor;
        add(h, None, CAPTION_WEIGHT * lead);
    }
    for h in words {
        let share = if words_top > 0.0 {
            h.distance / words_top
        } else {
            0.0
        };
        add(h, None, CAPTION_WORDS_WEIGHT * share);
    }
    let mut hits: Vec<ImageHit> = rows
        .into_values()
        .map(|(s, bonus, mut h)| {
            h.score = s + bonus;
            h
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(limit);
    Ok(hits)
}

/// One image's stored facts (path, name, folder, size, width, height, date, EXIF), for
/// the page per image. A collection without the image schema, or an id without a row,
/// is a not-found naming it.
pub fn get(engine: &Engine, coll: &str, id: i64) -> Result<ImageHit> {
    let meta = engine.describe_collection(coll)?;
    if meta.schema.field(IMAGE_VEC).is_none() {
        return Err(AppError::NotAnAppCollection(format!(
            "'{coll}' is not an image collection"
        )));
    }
    let mut rows = engine.query(
        coll,
        &QueryRequest {
            ids: Some(vec![json!(id)]),
            output_fields: output_fields(&meta.schema),
            ..Default::default()
        },
    )?;
    let Some(mut f) = rows.pop() else {
        return Err(AppError::NotFound(format!(
            "no image with id {id} in '{coll}'"
        )));
    };
    f.remove("id");
    Ok(ImageHit {
        id,
        score: 1.0,
        fields: f,
    })
}

/// A group of near-duplicates, best copy first (largest file, then most EXIF, then path).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DupGroup {
    /// The lowest similarity of a member to the best copy: groups come most certain
    /// first.
    #[serde(default)]
    pub score: f32,
    pub members: Vec<ImageHit>,
}

/// Groups images whose Lite0 cosine similarity is at least `threshold`. Images are
/// taken best copy first (largest file, then most EXIF, then path); each one not yet in
/// a group leads a new group of those of its 16 nearest neighbours at or above the
/// threshold that are not in one either. Every member is thus within the threshold of
/// its group's best copy: a chain of similar images (A like B, B like C) does not merge
/// A and C, as connected components would. A group holds at most 16 images (the leader's
/// neighbours); further copies of the same image form a group of their own.
pub fn dupes(engine: &Engine, coll: &str, threshold: f32) -> Result<Vec<DupGroup>> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(AppError::bad_request(format!(
            "threshold must be between 0 and 1, got {threshold}"
        )));
    }
    let rows = engine.query(
        coll,
        &QueryRequest {
            filter: Some("id >= 0".into()),
            output_fields: output_fields(&engine.describe_collection(coll)?.schema),
            consistency: Some(Consistency::Strong),
            ..Default::default()
        },
    )?;
    let ids: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get("id").and_then(|v| v.as_i64()))
        .collect();
    let at: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // Each image's neighbours at or above the threshold.
    let mut near: Vec<Vec<usize>> = vec![Vec::new(); ids.len()];
    for chunk in ids.chunks(64) {
        let r = SearchRequest {
            anns_field: Some(IMAGE_VEC.into()),
            ids: Some(chunk.iter().map(|i| json!(i)).collect()),
            limit: 16,
            ..Default::default()
        };
        for (q, hs) in chunk.iter().zip(engine.search(coll, &r)?) {
            let Some(&a) = at.get(q) else { continue };
            for h in hs {
                if h.distance < threshold {
                    continue;
                }
                if let PrimaryKey::Int(o) = h.id {
                    if let Some(&b) = at.get(&o).filter(|&&b| b != a) {
                        near[a].push(b);
                    }
                }
            }
        }
    }
    let num = |r: &Map<String, Value>, k: &str| r.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let path = |r: &Map<String, Value>| {
        r.get("path")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let better = |a: usize, b: usize| {
        let (ra, rb) = (&rows[a], &rows[b]);
        num(rb, "size")
            .cmp(&num(ra, "size"))
            .then(num(rb, "exif_n").cmp(&num(ra, "exif_n")))
            .then_with(|| path(ra).cmp(&path(rb)))
    };
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| better(a, b));
    let mut taken = vec![false; ids.len()];
    let mut out: Vec<DupGroup> = Vec::new();
    for &lead in &order {
        if taken[lead] {
            continue;
        }
        taken[lead] = true;
        let mut g = vec![lead];
        for &b in &near[lead] {
            if !taken[b] {
                taken[b] = true;
                g.push(b);
            }
        }
        if g.len() < 2 {
            continue;
        }
        g[1..].sort_by(|&a, &b| better(a, b));
        out.push(DupGroup {
            score: 1.0,
            members: g
                .into_iter()
                .map(|i| {
                    let mut f = rows[i].clone();
                    f.remove("id");
                    ImageHit {
                        id: ids[i],
                        score: 1.0,
                        fields: f,
                    }
                })
                .collect(),
        });
    }
    // Score each member against the group's best copy exactly: one query fetches the
    // vectors of every member of every group.
    let member_ids: Vec<Value> = out
        .iter()
        .flat_map(|g| g.members.iter().map(|m| json!(m.id)))
        .collect();
    let mut vecs: HashMap<i64, Vec<f32>> = HashMap::new();
    if !member_ids.is_empty() {
        for r in engine.query(
            coll,
            &QueryRequest {
                ids: Some(member_ids),
                output_fields: vec![IMAGE_VEC.into()],
                consistency: Some(Consistency::Strong),
                ..Default::default()
            },
        )? {
            if let (Some(id), Some(Value::Array(v))) =
                (r.get("id").and_then(|v| v.as_i64()), r.get(IMAGE_VEC))
            {
                let v: Vec<f32> = v
                    .iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect();
                vecs.insert(id, v);
            }
        }
    }
    for g in &mut out {
        let Some(best) = vecs.get(&g.members[0].id) else {
            continue;
        };
        for m in g.members.iter_mut().skip(1) {
            if let Some(v) = vecs.get(&m.id).filter(|v| v.len() == best.len()) {
                m.score = magpie_linalg::cosine(best, v);
            }
        }
        g.score = g.members[1..].iter().map(|m| m.score).fold(1.0, f32::min);
    }
    out.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| {
            let p = |g: &DupGroup| {
                g.members[0]
                    .fields
                    .get("path")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            p(a).cmp(&p(b))
        })
    });
    Ok(out)
}

/// An image file that may be served: its canonical path and its content type.
pub struct ServedFile {
    pub path: PathBuf,
    pub content_type: &'static str,
    pub size: u64,
    pub mtime_ns: u128,
}

/// The stored file of image `id` of image collection `coll`, if it may be served: the
/// collection must be an image collection (registered root, image schema), and the row's
/// `file` must resolve (symlinks followed) to a regular file under *that collection's*
/// root, with an image extension and image content (JPEG, PNG, WebP or GIF by its first
/// bytes). Every refusal is the same 404, so a reply never tells whether some path
/// exists; the reason goes to the server log.
pub fn file_of(engine: &Engine, data_dir: &Path, coll: &str, id: i64) -> Result<ServedFile> {
    let not_found = || AppError::NotFound(format!("no image with id {id} in '{coll}'"));
    let refuse = |why: String| {
        tracing::warn!(collection = coll, id, "image file refused: {why}");
        not_found()
    };
    let root = root_of(data_dir, coll)
        .map_err(|_| refuse("not an image collection".into()))?
        .canonicalize()
        .map_err(|e| refuse(format!("root unavailable: {e}")))?;
    let meta = engine.describe_collection(coll).map_err(|_| not_found())?;
    let is_image_coll = meta
        .schema
        .field("file")
        .is_some_and(|f| f.data_type == DataType::VarChar)
        && meta.schema.field(IMAGE_VEC).is_some();
    if !is_image_coll {
        return Err(refuse("no image schema".into()));
    }
    let rows = engine.query(
        coll,
        &QueryRequest {
            ids: Some(vec![json!(id)]),
            output_fields: vec!["file".into()],
            ..Default::default()
        },
    )?;
    let file = rows
        .first()
        .and_then(|r| r.get("file"))
        .and_then(|v| v.as_str())
        .ok_or_else(not_found)?;
    let path = Path::new(file)
        .canonicalize()
        .map_err(|e| refuse(format!("{file}: {e}")))?;
    if !path.starts_with(&root) {
        return Err(refuse(format!(
            "{} is outside the collection's root {}",
            path.display(),
            root.display()
        )));
    }
    let ext_ok = path
        .extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()));
    if !ext_ok {
        return Err(refuse(format!(
            "{}: not an image extension",
            path.display()
        )));
    }
    let md = std::fs::metadata(&path).map_err(|e| refuse(format!("{file}: {e}")))?;
    if !md.is_file() {
        return Err(refuse(format!("{}: not a regular file", path.display())));
    }
    let mut head = [0u8; 32];
    let n = {
        use std::io::Read;
        std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| refuse(format!("{file}: {e}")))?
    };
    let content_type = match image::guess_format(&head[..n]) {
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Gif) => "image/gif",
        _ => return Err(refuse(format!("{}: not image content", path.display()))),
    };
    let mtime_ns = modified_since_epoch(&md).as_nanos();
    Ok(ServedFile {
        path,
        content_type,
        size: md.len(),
        mtime_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn path_ids_are_stable_and_positive() {
        assert_eq!(path_id("a/b.jpg"), path_id("a/b.jpg"));
        assert_ne!(path_id("a/b.jpg"), path_id("a/c.jpg"));
        assert!(path_id("x") >= 0);
        assert!(path_id("some/long/path/IMG_0001.JPG") < 1 << 53);
    }

    #[test]
    fn schema_is_valid() {
        schema(crate::embedder::CONSE, 384, None).check().unwrap();
        let s = schema(crate::embedder::CONSE_MULTILINGUAL, 384, Some(384));
        s.check().unwrap();
        assert!(s.field(CAPTION_VEC).is_some());
        assert_eq!(indexes(&s).len(), 4);
    }
}
