//! HTTP endpoints of the image app (`/v2/images/...` JSON, `/images/{collection}/{id}/...`
//! thumbnails and files) over [`magpie_app::images`].

use crate::api::Body;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_app::embedder::ModelEmbedder;
use magpie_app::images::{self, ImageQuery, IndexReport, Progress};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Largest thumbnail side, pixels.
pub const THUMB: u32 = 256;

/// An indexing job's state, as `/v2/images/status` reports it.
#[derive(Default, Clone, serde::Serialize)]
pub struct Job {
    pub running: bool,
    pub folder: String,
    pub progress: Progress,
    pub report: Option<IndexReport>,
    pub error: Option<String>,
}

/// What the image app needs besides the engine.
pub struct ImageService {
    pub embedder: Arc<ModelEmbedder>,
    pub data_dir: PathBuf,
    pub jobs: Mutex<HashMap<String, Job>>,
    pub cancel: Arc<AtomicBool>,
    /// Folders under which `/v2/images/index` may index (`image_roots`), as configured.
    pub allowed: Vec<PathBuf>,
    /// Uploaded query images by id (`/v2/images/uploads`).
    pub uploads: magpie_app::uploads::Uploads,
}

/// The default `image_roots`: the `--images` folder (if any) and the data directory's
/// own `images/` and `samples/` folders (where `--demo` puts its sample set).
pub fn default_image_roots(data_dir: &Path, images_folder: Option<&Path>) -> Vec<PathBuf> {
    images_folder
        .map(Path::to_path_buf)
        .into_iter()
        .chain([data_dir.join("images"), data_dir.join("samples")])
        .collect()
}

impl ImageService {
    /// `allowed` lists the folders a client may ask the server to index (and their
    /// subfolders); roots saved by earlier jobs (`images.json`) stay readable.
    pub fn new(embedder: Arc<ModelEmbedder>, data_dir: PathBuf, allowed: Vec<PathBuf>) -> Self {
        images::register_roots(&data_dir, &embedder);
        Self {
            embedder,
            data_dir,
            jobs: Mutex::new(HashMap::new()),
            cancel: Arc::new(AtomicBool::new(false)),
            allowed,
            uploads: Default::default(),
        }
    }

    /// Checks that a client may have `folder` indexed into `coll`: it must lie under an
    /// allowed image root (as written and after symlinks are resolved), or be the root
    /// `coll` already indexes. A folder outside gets the same 403 whether it exists or
    /// not.
    pub fn check_folder(&self, coll: &str, folder: &Path) -> Result<PathBuf, ApiError> {
        let refuse = || {
            ApiError::new(
                StatusCode::FORBIDDEN,
                1800,
                format!(
                    "{}: not under an image root this server allows indexing (image_roots: {}); start the server with --image-roots to allow it",
                    folder.display(),
                    if self.allowed.is_empty() {
                        "none".to_string()
                    } else {
                        self.allowed
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        };
        let lexical = magpie_app::embedder::lexical_absolute(folder).ok_or_else(refuse)?;
        let allowed: Vec<PathBuf> = self
            .allowed
            .iter()
            .filter_map(|r| magpie_app::embedder::lexical_absolute(r))
            .collect();
        let canon_allowed: Vec<PathBuf> = self
            .allowed
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .collect();
        let prev = images::root_of(&self.data_dir, coll).ok();
        let under = |p: &Path, roots: &[PathBuf]| roots.iter().any(|r| p.starts_with(r));
        let lexically_ok = under(&lexical, &allowed)
            || under(&lexical, &canon_allowed)
            || prev.as_deref() == Some(lexical.as_path());
        if !lexically_ok {
            return Err(refuse());
        }
        let c = lexical
            .canonicalize()
            .ok()
            .filter(|c| c.is_dir())
            .ok_or_else(|| {
                ApiError::bad_request(format!("{}: not a folder on the server", folder.display()))
            })?;
        if under(&c, &canon_allowed) || prev.as_deref() == Some(c.as_path()) {
            Ok(c)
        } else {
            Err(refuse())
        }
    }

    /// Starts indexing `folder` into `coll` on a blocking thread; one job per collection.
    pub fn start_index(
        self: &Arc<Self>,
        engine: Arc<magpie_engine::Engine>,
        coll: String,
        folder: PathBuf,
        model: Option<String>,
    ) -> Result<(), ApiError> {
        {
            let mut jobs = self.jobs.lock();
            let j = jobs.entry(coll.clone()).or_default();
            if j.running {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    65535,
                    format!("collection '{coll}' is already being indexed"),
                ));
            }
            *j = Job {
                running: true,
                folder: folder.display().to_string(),
                ..Default::default()
            };
        }
        let svc = self.clone();
        std::thread::Builder::new()
            .name(format!("index-{coll}"))
            .spawn(move || {
                let mut progress = |p: Progress| {
                    if let Some(j) = svc.jobs.lock().get_mut(&coll) {
                        j.progress = p;
                    }
                };
                let res = images::index_folder(
                    &engine,
                    &svc.embedder,
                    &svc.data_dir,
                    &coll,
                    &folder,
                    model.as_deref(),
                    &mut progress,
                    &svc.cancel,
                );
                let mut jobs = svc.jobs.lock();
                let j = jobs.entry(coll.clone()).or_default();
                j.running = false;
                match res {
                    Ok(r) => {
                        tracing::info!(collection = %coll, added = r.added, updated = r.updated, unchanged = r.unchanged, removed = r.removed, failed = r.failed.len(), "image indexing finished");
                        j.report = Some(r)
                    }
                    Err(e) => {
                        tracing::error!(collection = %coll, "image indexing failed: {e}");
                        j.error = Some(e.to_string())
                    }
                }
            })
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 65535, e.to_string()))?;
        Ok(())
    }
}

fn service(st: &AppState) -> Result<Arc<ImageService>, ApiError> {
    st.images.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            65535,
            "the image app is not enabled in this server",
        )
    })
}

pub(crate) async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 65535, e.to_string()))?
        .map_err(Into::into)
}

fn ok(data: Value) -> Response {
    Json(json!({"code": 0, "data": data})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollReq {
    collection_name: String,
}

/// Image collections with their folders, sizes and indexing jobs.
pub async fn list(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let engine = st.engine.clone();
    blocking(move || {
        let jobs = svc.jobs.lock().clone();
        let mut out = Vec::new();
        for (name, root) in images::load_roots(&svc.data_dir) {
            if !engine.has_collection(&name) {
                continue;
            }
            let count = magpie_app::walk::count_rows(&engine, &name);
            out.push(json!({"name": name, "folder": root, "count": count, "job": jobs.get(&name)}));
        }
        Ok::<_, ApiError>(ok(Value::from(out)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IndexReq {
    collection_name: String,
    folder: PathBuf,
    /// Text model of a new collection (see `magpie images index --model`).
    model: Option<String>,
}

pub async fn index(
    State(st): State<Arc<AppState>>,
    Body(r): Body<IndexReq>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let folder = svc.check_folder(&r.collection_name, &r.folder)?;
    svc.start_index(st.engine.clone(), r.collection_name, folder, r.model)?;
    Ok(ok(json!({"started": true})))
}

pub async fn status(
    State(st): State<Arc<AppState>>,
    Body(r): Body<CollReq>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let job = svc.jobs.lock().get(&r.collection_name).cloned();
    Ok(ok(serde_json::to_value(job).unwrap()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchReq {
    collection_name: String,
    text: Option<String>,
    /// Base64 (or a data: URI) of an uploaded image.
    image: Option<String>,
    like: Option<i64>,
    /// An uploaded image's id from `/v2/images/uploads`.
    upload: Option<String>,
    filter: Option<String>,
    /// Only images in this folder (relative to the root) or below it.
    folder: Option<String>,
    /// Dates as "YYYY-MM-DD" (inclusive bounds on the EXIF or file date).
    date_from: Option<String>,
    date_to: Option<String>,
    limit: Option<usize>,
    /// How many candidates the index examines (HNSW's ef, IVF's nprobe).
    num_candidates: Option<usize>,
    /// A recall target in (0, 1] the index turns into its knob.
    recall: Option<f32>,
}

/// A double-quoted filter string literal.
fn lit(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A `like` pattern matching every path below folder `f`: its own `%` and `_` are
/// escaped so they match only themselves.
fn below(f: &str) -> String {
    let esc = lit(f).replace('%', "\\%").replace('_', "\\_");
    format!("{}/%\"", &esc[..esc.len() - 1])
}

/// An image sent as base64 (or a `data:` URI).
fn base64_image(b: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let b64 = b.split_once(',').map_or(b, |(_, d)| d);
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::bad_request(format!("'image' is not valid base64: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetReq {
    collection_name: String,
    id: i64,
}

/// `POST /v2/images/get`: one image's stored facts (the page per image).
pub async fn get_image(
    State(st): State<Arc<AppState>>,
    Body(r): Body<GetReq>,
) -> Result<Response, ApiError> {
    service(&st)?;
    let engine = st.engine.clone();
    let hit = blocking(move || images::get(&engine, &r.collection_name, r.id)).await?;
    Ok(ok(serde_json::to_value(hit).unwrap()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadReq {
    /// Base64 (or a data: URI) of the image.
    image: String,
}

/// `POST /v2/images/uploads`: keeps an uploaded query image for a while and returns its
/// id, which `/v2/images/search` takes as `upload` (see [`magpie_app::uploads`]).
pub async fn upload(
    State(st): State<Arc<AppState>>,
    Body(r): Body<UploadReq>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let id = svc.uploads.put(base64_image(&r.image)?)?;
    Ok(ok(
        json!({"id": id, "expiresInSeconds": svc.uploads.ttl().as_secs()}),
    ))
}

pub async fn search(
    State(st): State<Arc<AppState>>,
    Body(r): Body<SearchReq>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let q = match (&r.text, &r.image, r.like, &r.upload) {
        (Some(t), None, None, None) => ImageQuery::Text(t.clone()),
        (None, Some(b), None, None) => ImageQuery::Image(base64_image(b)?),
        (None, None, Some(id), None) => ImageQuery::Like(id),
        (None, None, None, Some(u)) => ImageQuery::Image(svc.uploads.get(u)?.to_vec()),
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one of 'text', 'image' (base64), 'like' (an image id) or 'upload' (an id from /v2/images/uploads)",
            ))
        }
    };
    let mut parts = Vec::new();
    if let Some(f) = r.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        // Checked alone first, so an error's position is in the user's own text (not
        // in the combined filter with the parentheses and clauses added below).
        let schema = st.engine.describe_collection(&r.collection_name)?.schema;
        magpie_engine::filter::Filter::compile(f, &schema)
            .map_err(magpie_engine::EngineError::from)?;
        parts.push(format!("({f})"));
    }
    if let Some(f) = r.folder.as_deref().filter(|f| !f.is_empty()) {
        let f = f.trim_matches('/');
        parts.push(format!(
            "(folder == {} or folder like {})",
            lit(f),
            below(f)
        ));
    }
    if let Some(d) = r.date_from.as_deref().filter(|d| !d.is_empty()) {
        parts.push(format!("date >= {}", lit(d)));
    }
    if let Some(d) = r.date_to.as_deref().filter(|d| !d.is_empty()) {
        parts.push(format!("date <= {}", lit(&format!("{d} 99"))));
    }
    let filter = (!parts.is_empty()).then(|| parts.join(" and "));
    let engine = st.engine.clone();
    let limit = r.limit.unwrap_or(24);
    let effort = images::Effort {
        num_candidates: r.num_candidates,
        recall: r.recall,
    };
    let coll = r.collection_name;
    let hits =
        blocking(move || images::search(&engine, &coll, &q, filter.as_deref(), limit, effort))
            .await?;
    Ok(ok(serde_json::to_value(hits).unwrap()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DupesReq {
    collection_name: String,
    threshold: Option<f32>,
}

pub async fn dupes(
    State(st): State<Arc<AppState>>,
    Body(r): Body<DupesReq>,
) -> Result<Response, ApiError> {
    service(&st)?;
    let engine = st.engine.clone();
    let t = r.threshold.unwrap_or(images::DEFAULT_DUP_THRESHOLD);
    let groups = blocking(move || images::dupes(&engine, &r.collection_name, t)).await?;
    Ok(ok(serde_json::to_value(groups).unwrap()))
}

/// The original file of an indexed image (see [`images::file_of`] for what may be
/// served; the URL carries an id, never a path).
pub async fn file(
    State(st): State<Arc<AppState>>,
    UrlPath((coll, id)): UrlPath<(String, i64)>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let engine = st.engine.clone();
    let (ct, bytes) = blocking(move || {
        let f = images::file_of(&engine, &svc.data_dir, &coll, id)?;
        if f.size > magpie_embed::image::DecodeLimits::default().max_file_bytes {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no image with id {id} in '{coll}'"),
            ));
        }
        let b = std::fs::read(&f.path).map_err(|e| {
            tracing::warn!("{}: {e}", f.path.display());
            ApiError::new(
                StatusCode::NOT_FOUND,
                404,
                format!("no image with id {id} in '{coll}'"),
            )
        })?;
        Ok((f.content_type, b))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response())
}

/// A JPEG thumbnail (longest side [`THUMB`]) of an indexed image. Thumbnails are cached
/// in `<data dir>/thumbs/`, keyed by the file's path, size and mtime, so an image is
/// decoded once, not on every request; a changed file gets a new thumbnail.
pub async fn thumb(
    State(st): State<Arc<AppState>>,
    UrlPath((coll, id)): UrlPath<(String, i64)>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    let engine = st.engine.clone();
    let bytes = blocking(move || {
        let f = images::file_of(&engine, &svc.data_dir, &coll, id).map_err(ApiError::from)?;
        let key = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(f.path.as_os_str().as_encoded_bytes());
            h.update(f.size.to_le_bytes());
            h.update(f.mtime_ns.to_le_bytes());
            format!("{:x}", h.finalize())
        };
        let dir = svc.data_dir.join("thumbs").join(&key[..2]);
        let cached = dir.join(format!("{}.jpg", &key[2..32]));
        if let Ok(b) = std::fs::read(&cached) {
            return Ok::<_, ApiError>(b);
        }
        let d = magpie_embed::image::decode_file(&f.path, &Default::default())
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 1100, e.to_string()))?;
        let img = image::DynamicImage::ImageRgb8(d.rgb).thumbnail(THUMB, THUMB);
        let mut out = std::io::Cursor::new(Vec::new());
        img.to_rgb8()
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 65535, e.to_string()))?;
        let out = out.into_inner();
        // A cache write that fails (disk full) only costs a decode next time.
        let tmp = dir.join(format!("{}.{}.partial", &key[2..32], std::process::id()));
        let stored = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&tmp, &out))
            .and_then(|_| std::fs::rename(&tmp, &cached));
        if let Err(e) = stored {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("thumbnail cache {}: {e}", cached.display());
        }
        Ok(out)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_patterns_escape_wildcards_and_quotes() {
        assert_eq!(lit(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(below("2023_trip%"), r#""2023\_trip\%/%""#);
        assert_eq!(below("plain"), r#""plain/%""#);
    }
}
