//! The [`Embedder`] the server gives the engine: built-in models from the model store,
//! loaded on first use and kept. Model names are matched case-insensitively, with or
//! without the `sentence-transformers/` prefix.
//!
//! Image models: `efficientnet-lite0` (pooled 1280-d features, image ↔ image), `conse`
//! (384-d, in MiniLM's space, so English text can search images), `conse-multilingual`
//! (384-d, in multilingual-e5-small's space, so text in ~100 languages can) and
//! `conse-multilingual-use` (896-d, in the space of e5 and the multilingual Universal
//! Sentence Encoder together, which finds translated names better; the default). All
//! come from one Lite0 forward pass, which is cached per image so that a collection
//! with two of them runs the network once per image. Stored image references are paths, read
//! only when they lie under an allowed image root (symlinks resolved first), or `data:`
//! URIs.

use base64::Engine as _;
use magpie_embed::clip::Clip;
use magpie_embed::effnet::Lite0Output;
use magpie_embed::image::{decode_bytes, DecodeLimits};
use magpie_embed::models::{self, ModelStore};
use magpie_embed::text::TextEncoder;
use magpie_embed::vision::{default_threads, par_map, Conse, ImageEncoder};
use magpie_engine::{Embedder, FunctionKind, ImageInput};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Forward passes kept for reuse by a second function on the same image.
const CACHE_ENTRIES: usize = 512;
/// Query vectors kept, by sentence encoder and text: a text search of an image
/// collection with captions embeds its query for two functions on one encoder, and the
/// UI runs the query on screen again whenever a filter or knob changes.
const QUERY_CACHE_ENTRIES: usize = 256;
/// Queries longer than this are not kept (so the cache holds at most 256 × 1 KiB of
/// text).
const QUERY_CACHE_MAX_TEXT: usize = 1024;

pub const LITE0: &str = "efficientnet-lite0";
pub const CONSE: &str = "conse";
pub const CONSE_MULTILINGUAL: &str = "conse-multilingual";
pub const CONSE_MULTILINGUAL_USE: &str = "conse-multilingual-use";
/// The text model of a new image collection when none is named: ConSE on
/// multilingual-e5-small and the multilingual Universal Sentence Encoder, so that
/// queries in other languages than English work.
pub const DEFAULT_IMAGE_TEXT_MODEL: &str = CONSE_MULTILINGUAL_USE;
const MINILM: &str = "all-minilm-l6-v2";
const E5: &str = "multilingual-e5-small";
const E5_USE: &str = "multilingual-e5-use";

/// If `name` is a ConSE model: its name and the sentence encoder behind it.
pub(crate) fn conse_model(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        CONSE => Some((CONSE, MINILM)),
        CONSE_MULTILINGUAL => Some((CONSE_MULTILINGUAL, E5)),
        CONSE_MULTILINGUAL_USE => Some((CONSE_MULTILINGUAL_USE, E5_USE)),
        _ => None,
    }
}

/// Recent forward passes by image key, with their insertion order for eviction.
type OutputCache = (HashMap<String, Arc<Lite0Output>>, VecDeque<String>);
/// Recent query vectors by (encoder, text), with their insertion order.
type QueryCache = (
    HashMap<(String, String), Arc<Vec<f32>>>,
    VecDeque<(String, String)>,
);

pub struct ModelEmbedder {
    store: ModelStore,
    text: Mutex<HashMap<String, Arc<TextEncoder>>>,
    lite0: Mutex<Option<Arc<ImageEncoder>>>,
    conse: Mutex<HashMap<&'static str, Arc<Conse>>>,
    clip: Mutex<HashMap<String, Arc<Clip>>>,
    cache: Mutex<OutputCache>,
    queries: Mutex<QueryCache>,
    roots: RwLock<Vec<PathBuf>>,
    limits: DecodeLimits,
    threads: usize,
}

impl ModelEmbedder {
    pub fn new(store: ModelStore) -> Self {
        Self {
            store,
            text: Mutex::new(HashMap::new()),
            lite0: Mutex::new(None),
            conse: Mutex::new(HashMap::new()),
            clip: Mutex::new(HashMap::new()),
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            queries: Mutex::new((HashMap::new(), VecDeque::new())),
            roots: RwLock::new(Vec::new()),
            limits: DecodeLimits::default(),
            threads: default_threads(),
        }
    }

    /// Worker threads for image inference (one image per thread; 0 = every core).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        self
    }

    /// Allows image paths under `root` (canonicalised; must be a directory).
    pub fn add_root(&self, root: &Path) -> std::io::Result<PathBuf> {
        let c = root.canonicalize()?;
        if !c.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut r = self.roots.write();
        if !r.contains(&c) {
            r.push(c.clone());
        }
        Ok(c)
    }

    /// `path` canonicalised, if it lies under an allowed root; else an error naming it.
    /// A path that is not under a root even as written is refused before the file system
    /// is asked anything, so the answer never tells whether a file outside exists.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let roots = self.roots.read();
        if roots.is_empty() {
            return Err(format!(
                "{path}: image paths are not readable: no image roots are configured (index a folder with `magpie images index`)"
            ));
        }
        let outside = || format!("{path}: outside the image roots");
        let lexical = lexical_absolute(Path::new(path)).ok_or_else(outside)?;
        if !roots.iter().any(|r| lexical.starts_with(r)) {
            return Err(outside());
        }
        let c = lexical.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        if roots.iter().any(|r| c.starts_with(r)) {
            Ok(c)
        } else {
            // A symlink inside a root that leads out of every root.
            Err(outside())
        }
    }

    fn canonical(model: &str) -> String {
        let m = model.trim().to_ascii_lowercase();
        let m = m.strip_prefix("sentence-transformers/").unwrap_or(&m);
        let m = m.strip_prefix("openai/").unwrap_or(m);
        match m {
            "lite0" | "efficientnet_lite0" => LITE0.to_string(),
            _ => m.to_string(),
        }
    }

    fn text_model(&self, name: &str) -> Result<Arc<TextEncoder>, String> {
        if let Some(e) = self.text.lock().get(name) {
            return Ok(e.clone());
        }
        let dir = self.store.require(name).map_err(|e| e.to_string())?;
        let enc = match models::ensemble(name) {
            // An ensemble shares its parts with their own entries.
            Some(parts) => {
                let parts = parts
                    .iter()
                    .map(|&(p, w)| Ok((self.text_model(p)?, w)))
                    .collect::<Result<Vec<_>, String>>()?;
                TextEncoder::ensemble(name, parts)
            }
            None => TextEncoder::load(name, &dir),
        };
        let enc = Arc::new(enc.map_err(|e| e.to_string())?);
        self.text.lock().insert(name.to_string(), enc.clone());
        Ok(enc)
    }

    fn clip(&self, name: &str) -> Result<Arc<Clip>, String> {
        let mut g = self.clip.lock();
        if let Some(c) = g.get(name) {
            return Ok(c.clone());
        }
        let dir = self.store.require(name).map_err(|e| e.to_string())?;
        let c = Arc::new(Clip::load(name, &dir).map_err(|e| e.to_string())?);
        g.insert(name.to_string(), c.clone());
        Ok(c)
    }

    fn lite0(&self) -> Result<Arc<ImageEncoder>, String> {
        let mut g = self.lite0.lock();
        if let Some(e) = &*g {
            return Ok(e.clone());
        }
        let dir = self.store.require(LITE0).map_err(|e| e.to_string())?;
        let e = Arc::new(ImageEncoder::load(&dir).map_err(|e| e.to_string())?);
        *g = Some(e.clone());
        Ok(e)
    }

    /// The ConSE model `name` (`conse`, `conse-multilingual`, `conse-multilingual-use`),
    /// its class prompts embedded once and cached on disk.
    fn conse(&self, name: &str) -> Result<Arc<Conse>, String> {
        let (name, text_name) =
            conse_model(name).ok_or_else(|| format!("model '{name}' is not ConSE"))?;
        let mut g = self.conse.lock();
        if let Some(c) = g.get(name) {
            return Ok(c.clone());
        }
        self.store.require(name).map_err(|e| e.to_string())?;
        let text = self.text_model(text_name)?;
        // The file name changes with the prompt recipe, so an old cache is never read.
        let file = match name {
            CONSE => "conse-prompts-minilm.f32".to_string(),
            _ => format!("conse-prompts-{text_name}-v1.f32"),
        };
        let cache = self.store.dir.join(".cache").join(file);
        let c = Arc::new(Conse::build(&text, Some(&cache)).map_err(|e| e.to_string())?);
        g.insert(name, c.clone());
        Ok(c)
    }

    /// Loads (or waits for) every model of `names`; used to warm up before serving.
    pub fn preload(&self, names: &[&str]) -> Result<(), String> {
        for n in names {
            match Self::canonical(n).as_str() {
                LITE0 => drop(self.lite0()?),
                c if conse_model(c).is_some() => {
                    self.lite0()?;
                    self.conse(c)?;
                }
                clip if clip.starts_with("clip-") => drop(self.clip(clip)?),
                other => drop(self.text_model(other)?),
            }
        }
        Ok(())
    }

    /// Where an image reference's bytes come from, the key its forward pass is cached
    /// under, and a name for errors. Files are not read here: a cached pass needs only
    /// their metadata.
    fn source<'a>(&self, im: &ImageInput<'a>) -> Result<Source<'a>, String> {
        match im {
            ImageInput::Bytes(b) => Ok(Source {
                key: digest(b),
                name: "uploaded image".into(),
                data: Data::Mem(Cow::Borrowed(b)),
            }),
            ImageInput::Stored(s) if s.starts_with("data:") => {
                let (_, b64) = s
                    .split_once(',')
                    .ok_or("a data: URI without a ',' before its data")?;
                let b = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("data: URI: bad base64: {e}"))?;
                Ok(Source {
                    key: digest(&b),
                    name: "data: URI".into(),
                    data: Data::Mem(Cow::Owned(b)),
                })
            }
            ImageInput::Stored(s) => {
                let p = self.resolve(s)?;
                let meta = std::fs::metadata(&p).map_err(|e| format!("{s}: {e}"))?;
                if meta.len() > self.limits.max_file_bytes {
                    return Err(format!(
                        "{s}: {} bytes is over the {}-byte limit",
                        meta.len(),
                        self.limits.max_file_bytes
                    ));
                }
                let mtime = crate::images::modified_since_epoch(&meta).as_nanos();
                Ok(Source {
                    key: format!("{}\u{0}{}\u{0}{mtime}", p.display(), meta.len()),
                    name: s.to_string(),
                    data: Data::File(p),
                })
            }
        }
    }

    /// Decodes a source (reading its file, if it is one).
    fn decode(&self, src: Source<'_>) -> Result<magpie_embed::image::Decoded, String> {
        let bytes = match src.data {
            Data::Mem(b) => b,
            Data::File(p) => {
                Cow::Owned(std::fs::read(&p).map_err(|e| format!("{}: {e}", src.name))?)
            }
        };
        decode_bytes(&bytes, &src.name, &self.limits).map_err(|e| e.to_string())
    }

    /// Text vectors of `texts` by `model`: documents, or search queries when `query`.
    fn embed_text_role(
        &self,
        model: &str,
        texts: &[&str],
        query: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let name = Self::canonical(model);
        let mut enc_name = name.clone();
        let enc = match name.as_str() {
            // ConSE queries are sentence vectors in its text model's space.
            n if conse_model(n).is_some() => {
                self.store.require(n).map_err(|e| e.to_string())?;
                let (_, text_name) = conse_model(n).expect("a ConSE model");
                enc_name = text_name.to_string();
                self.text_model(text_name)?
            }
            n if n.starts_with("clip-") => {
                let c = self.clip(n)?;
                return c.embed_texts(texts).map_err(|e| e.to_string());
            }
            LITE0 => {
                return Err(format!(
                    "model '{LITE0}' embeds images only and cannot embed text: search this field by image or by id (more like this), or search a '{CONSE}', '{CONSE_MULTILINGUAL}' or '{CONSE_MULTILINGUAL_USE}' field by text"
                ))
            }
            _ => {
                let spec = models::spec(&name).map_err(|e| e.to_string())?;
                if spec.kind != "text" {
                    return Err(format!("model '{name}' cannot embed text"));
                }
                self.text_model(&name)?
            }
        };
        // An ensemble's query is joined from its parts' queries, each through the cache:
        // a text search of an image collection embeds the query by e5 for the captions
        // too, and this way e5 runs once.
        let ensemble = if query {
            models::ensemble(&enc_name)
        } else {
            None
        };
        let cacheable = query && texts.len() == 1 && texts[0].len() <= QUERY_CACHE_MAX_TEXT;
        let key = cacheable.then(|| (enc_name, texts[0].to_string()));
        if let Some(k) = &key {
            if let Some(v) = self.queries.lock().0.get(k) {
                return Ok(vec![v.as_ref().clone()]);
            }
        }
        // Each distinct text once (image captions are mostly empty or repeated).
        let mut at: HashMap<&str, usize> = HashMap::new();
        let mut unique: Vec<&str> = Vec::new();
        let slot: Vec<usize> = texts
            .iter()
            .map(|t| {
                *at.entry(t).or_insert_with(|| {
                    unique.push(t);
                    unique.len() - 1
                })
            })
            .collect();
        let mut vecs = Vec::with_capacity(unique.len());
        // Batches of 32 keep per-batch padding short.
        for chunk in unique.chunks(32) {
            if let Some(parts) = ensemble {
                let weights: Vec<f32> = parts.iter().map(|p| p.1).collect();
                let per_part = parts
                    .iter()
                    .map(|(p, _)| self.embed_text_role(p, chunk, true))
                    .collect::<Result<Vec<_>, String>>()?;
                for i in 0..chunk.len() {
                    let vs: Vec<&[f32]> = per_part.iter().map(|p| p[i].as_slice()).collect();
                    vecs.push(magpie_embed::text::join_parts(&vs, &weights));
                }
                continue;
            }
            let v = if query {
                enc.embed_queries(chunk)
            } else {
                enc.embed(chunk)
            };
            vecs.extend(v.map_err(|e| e.to_string())?);
        }
        if vecs.len() != unique.len() {
            return Err(format!(
                "model '{name}' returned {} vectors for {} texts",
                vecs.len(),
                unique.len()
            ));
        }
        if let (Some(k), Some(v)) = (key, vecs.first()) {
            let mut g = self.queries.lock();
            let (map, order) = &mut *g;
            if map.insert(k.clone(), Arc::new(v.clone())).is_none() {
                order.push_back(k);
            }
            while order.len() > QUERY_CACHE_ENTRIES {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(slot.into_iter().map(|i| vecs[i].clone()).collect())
    }

    /// Lite0 outputs of `images` (cached), decoded and run on the worker threads.
    pub fn lite0_outputs(
        &self,
        images: &[ImageInput<'_>],
    ) -> Result<Vec<Result<Arc<Lite0Output>, String>>, String> {
        let enc = self.lite0()?;
        Ok(par_map(images, self.threads, |im| {
            let src = self.source(im)?;
            let key = src.key.clone();
            if let Some(o) = self.cache.lock().0.get(&key) {
                return Ok(o.clone());
            }
            let d = self.decode(src)?;
            let out = Arc::new(enc.run(&d.rgb));
            let mut c = self.cache.lock();
            if c.0.insert(key.clone(), out.clone()).is_none() {
                c.1.push_back(key);
                while c.1.len() > CACHE_ENTRIES {
                    if let Some(old) = c.1.pop_front() {
                        c.0.remove(&old);
                    }
                }
            }
            Ok(out)
        }))
    }
}

/// `p` made absolute (against the working directory) with `.` and `..` removed as text,
/// without touching the file system; `None` when `..` climbs above the file-system root.
pub fn lexical_absolute(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// An image reference resolved by [`ModelEmbedder::source`].
struct Source<'a> {
    key: String,
    name: String,
    data: Data<'a>,
}

enum Data<'a> {
    Mem(Cow<'a, [u8]>),
    File(PathBuf),
}

fn digest(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

impl Embedder for ModelEmbedder {
    fn dim(&self, kind: FunctionKind, model: &str) -> Result<usize, String> {
        let name = Self::canonical(model);
        let spec = models::spec(&name).map_err(|e| e.to_string())?;
        match (kind, spec.kind) {
            (FunctionKind::TextEmbedding, "text") => Ok(self.text_model(&name)?.dim()),
            (FunctionKind::TextEmbedding, _) => Err(format!(
                "model '{name}' is an image model; use it in an ImageEmbedding function"
            )),
            (FunctionKind::ImageEmbedding, "text") => Err(format!(
                "model '{name}' is a text model; ImageEmbedding functions take {LITE0}, {CONSE}, {CONSE_MULTILINGUAL}, {CONSE_MULTILINGUAL_USE} or a CLIP model"
            )),
            (FunctionKind::ImageEmbedding, _) if name.starts_with("clip-") => {
                Ok(self.clip(&name)?.dim())
            }
            (FunctionKind::ImageEmbedding, _) => {
                self.store.require(&name).map_err(|e| e.to_string())?;
                Ok(spec.dim)
            }
            (FunctionKind::BM25, _) => Err("BM25 functions have no model".into()),
        }
    }

    fn embed_texts(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.embed_text_role(model, texts, false)
    }

    fn embed_queries(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.embed_text_role(model, texts, true)
    }

    fn embed_images(
        &self,
        model: &str,
        images: &[ImageInput<'_>],
    ) -> Result<Vec<Result<Vec<f32>, String>>, String> {
        let name = Self::canonical(model);
        let spec = models::spec(&name).map_err(|e| e.to_string())?;
        match name.as_str() {
            LITE0 => Ok(self
                .lite0_outputs(images)?
                .into_iter()
                .map(|r| {
                    r.map(|o| {
                        let mut f = o.feature.clone();
                        magpie_linalg::normalize(&mut f);
                        f
                    })
                })
                .collect()),
            n if conse_model(n).is_some() => {
                let conse = self.conse(n)?;
                Ok(self
                    .lite0_outputs(images)?
                    .into_iter()
                    .map(|r| r.map(|o| conse.image_vector(&o.logits)))
                    .collect())
            }
            n if n.starts_with("clip-") => {
                let c = self.clip(n)?;
                // candle parallelises inside each image; images go one at a time.
                Ok(images
                    .iter()
                    .map(|im| {
                        let d = self.decode(self.source(im)?)?;
                        c.embed_images(&[&d.rgb])
                            .map(|mut v| v.remove(0))
                            .map_err(|e| e.to_string())
                    })
                    .collect())
            }
            _ => Err(format!(
                "model '{}' ({}) cannot embed images; ImageEmbedding functions take {LITE0}, {CONSE}, {CONSE_MULTILINGUAL}, {CONSE_MULTILINGUAL_USE} or a CLIP model",
                spec.name, spec.kind
            )),
        }
    }
}
