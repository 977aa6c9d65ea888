//! Files of a bulk import: where they may come from and how they are read.
//!
//! Paths come from requests, so they are resolved only inside the import source
//! ([`ImportSource`]), relative and without `..`:
//!
//! - a folder (`--import-root DIR`, default `<data dir>/import`): once symbolic links
//!   are resolved, still inside the folder, and a regular file;
//! - keys under a prefix of an object store (`--import-root s3://bucket/prefix`, or by
//!   default the `import/` prefix of the server's own `--storage s3://...`), as Milvus
//!   imports from its bucket. Each object is checked to exist when the job is created;
//!   when its group's turn comes it is downloaded in ranges into a folder under the data
//!   directory (after checking the disk has room), read as a local file, and deleted.
//!
//! A file group is one Parquet or JSON file, or the NumPy files of one set of rows, one
//! per field, each named after its field (`id.npy`, `vector.npy`, ...), as in Milvus.
//! Readers hand rows to the importer in batches (`crate::engine::Importer`), which
//! validates them as an insert would.

pub mod json;
pub mod npy;
pub mod parquet;

use crate::error::{invalid, EngineError, IoContext, Result};
use crate::schema::{CollectionSchema, DataType};
use crate::storage::{is_not_found, Storage};
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Bytes of NumPy data read into one batch at most (see `read_npy`).
const BATCH_BYTES: usize = 64 << 20;

/// Most file groups in one job, and files in one group.
pub const MAX_GROUPS: usize = 1024;
pub const MAX_GROUP_FILES: usize = 1024;

/// Where bulk-import files sit in a remote engine store (`<prefix>/import/...`).
pub const STORE_PREFIX: &str = "import";
/// The data directory's folder for downloaded import files (emptied at open).
pub const TMP_DIR: &str = "import-tmp";

/// Bytes fetched from an object store per request while downloading an import file.
const DOWNLOAD_CHUNK: u64 = 16 << 20;
/// Room left on the data directory's disk after an import file is downloaded.
const DOWNLOAD_RESERVE: u64 = 256 << 20;

/// Where a request's import paths are looked up; see the module docs.
#[derive(Debug, Clone)]
pub enum ImportSource {
    Dir(PathBuf),
    /// Keys under `prefix` (empty: the store's root) of a store that is only read.
    Store {
        store: Arc<dyn Storage>,
        prefix: String,
    },
}

/// Where one import file is: a path on this machine, or a key of the source's store.
#[derive(Debug, Clone)]
pub enum Loc {
    Local(PathBuf),
    Remote(String),
}

/// One file group of an import, resolved.
#[derive(Debug, Clone)]
pub enum ImportFile {
    Json {
        path: Loc,
        shown: String,
        bytes: u64,
    },
    Parquet {
        path: Loc,
        shown: String,
        bytes: u64,
    },
    /// (field name, location, bytes) per file.
    Npy {
        files: Vec<(String, Loc, u64)>,
        shown: String,
    },
}

impl ImportFile {
    /// The group as the request named it.
    pub fn name(&self) -> String {
        match self {
            ImportFile::Json { shown, .. }
            | ImportFile::Parquet { shown, .. }
            | ImportFile::Npy { shown, .. } => shown.clone(),
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            ImportFile::Json { bytes, .. } | ImportFile::Parquet { bytes, .. } => *bytes,
            ImportFile::Npy { files, .. } => files.iter().map(|f| f.2).sum(),
        }
    }

    /// Every file's location and size.
    fn locs_mut(&mut self) -> Vec<(&mut Loc, u64)> {
        match self {
            ImportFile::Json { path, bytes, .. } | ImportFile::Parquet { path, bytes, .. } => {
                vec![(path, *bytes)]
            }
            ImportFile::Npy { files, .. } => files.iter_mut().map(|f| (&mut f.1, f.2)).collect(),
        }
    }

    /// The group with every remote file downloaded into `tmp` (created here; the caller
    /// removes it). Checks first that the disk holding `tmp` has room for the group.
    pub fn localize(&self, source: &ImportSource, tmp: &Path) -> Result<ImportFile> {
        let mut out = self.clone();
        let ImportSource::Store { store, .. } = source else {
            return Ok(out);
        };
        let need: u64 = self.bytes();
        std::fs::create_dir_all(tmp).at(tmp)?;
        if let Some(free) = crate::fsutil::free_bytes(tmp) {
            if free < need.saturating_add(DOWNLOAD_RESERVE) {
                return Err(invalid(format!(
                    "{need} bytes to download, but {} has only {free} bytes free (and keeps {DOWNLOAD_RESERVE} in reserve)",
                    tmp.display()
                )));
            }
        }
        for (i, (loc, bytes)) in out.locs_mut().into_iter().enumerate() {
            let Loc::Remote(key) = loc else { continue };
            // The file keeps its name (readers report it; NumPy names carry fields).
            let name = key.rsplit('/').next().unwrap_or("file");
            let dir = tmp.join(i.to_string());
            std::fs::create_dir_all(&dir).at(&dir)?;
            let path = dir.join(name);
            download(&**store, key, bytes, &path)?;
            *loc = Loc::Local(path);
        }
        Ok(out)
    }
}

/// Copies `key` (`bytes` long when the job was created) from `store` into a new file
/// at `to`, in ranges of [`DOWNLOAD_CHUNK`] so memory stays bounded whatever its size.
fn download(store: &dyn Storage, key: &str, bytes: u64, to: &Path) -> Result<()> {
    use std::io::Write;
    let changed = || {
        invalid(format!(
            "{} changed since the import was created (it was {bytes} bytes)",
            store.locate(key).display()
        ))
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(to).at(to)?);
    let mut at = 0;
    while at < bytes {
        let chunk = store.get_range(key, at..(at + DOWNLOAD_CHUNK).min(bytes))?;
        if chunk.is_empty() {
            return Err(changed());
        }
        f.write_all(&chunk).at(to)?;
        at += chunk.len() as u64;
    }
    f.flush().at(to)?;
    if store.size(key)? != bytes {
        return Err(changed());
    }
    Ok(())
}

/// Looks a request's path up in a source: where the file is and its size.
type Finder<'a> = dyn Fn(&str) -> Result<(Loc, u64)> + 'a;

/// Resolves and checks every path of `groups` in `source`.
pub fn resolve(source: &ImportSource, groups: &[Vec<String>]) -> Result<Vec<ImportFile>> {
    if groups.is_empty() {
        return Err(invalid(
            "no files given: 'files' holds file groups, e.g. [[\"rows.json\"]] or [[\"id.npy\", \"vector.npy\"]]",
        ));
    }
    if groups.len() > MAX_GROUPS {
        return Err(invalid(format!(
            "{} file groups; at most {MAX_GROUPS} per import",
            groups.len()
        )));
    }
    let find: Box<Finder<'_>> = match source {
        ImportSource::Dir(root) => {
            let croot = root.canonicalize().map_err(|e| {
                invalid(format!(
                    "the import folder {} is not available ({e}); put the files there or start the server with --import-root",
                    root.display()
                ))
            })?;
            Box::new(move |p| resolve_path(&croot, p).map(|(path, n)| (Loc::Local(path), n)))
        }
        ImportSource::Store { store, prefix } => {
            Box::new(move |p| resolve_key(&**store, prefix, p).map(|(k, n)| (Loc::Remote(k), n)))
        }
    };
    groups.iter().map(|g| resolve_group(&*find, g)).collect()
}

fn resolve_group(find: &Finder<'_>, group: &[String]) -> Result<ImportFile> {
    if group.is_empty() || group.len() > MAX_GROUP_FILES {
        return Err(invalid(format!(
            "a file group holds 1 to {MAX_GROUP_FILES} files, got {}",
            group.len()
        )));
    }
    let shown = group.join(", ");
    let mut resolved = Vec::with_capacity(group.len());
    for p in group {
        resolved.push((p, find(p)?));
    }
    let ext = |p: &str| {
        Path::new(p)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let kind = ext(group[0].as_str());
    match kind.as_str() {
        "json" | "parquet" => {
            if group.len() != 1 {
                return Err(invalid(format!(
                    "a {kind} file group holds one file, got {} ({shown})",
                    group.len()
                )));
            }
            let (_, (path, bytes)) = resolved.remove(0);
            Ok(if kind == "json" {
                ImportFile::Json { path, shown, bytes }
            } else {
                ImportFile::Parquet { path, shown, bytes }
            })
        }
        "npy" => {
            let mut files: Vec<(String, Loc, u64)> = Vec::new();
            for (p, (path, bytes)) in resolved {
                if ext(p) != "npy" {
                    return Err(invalid(format!(
                        "'{p}': a NumPy file group holds only .npy files, one per field"
                    )));
                }
                let field = Path::new(p)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if files.iter().any(|f| f.0 == field) {
                    return Err(invalid(format!(
                        "two files for field '{field}' in one group ({shown})"
                    )));
                }
                files.push((field, path, bytes));
            }
            Ok(ImportFile::Npy { files, shown })
        }
        e => Err(invalid(format!(
            "'{}': unsupported file type '.{e}'; import Parquet (.parquet), JSON (.json) or NumPy (.npy) files",
            group[0]
        ))),
    }
}

/// A request's path as its plain parts: relative, no `..`, no NUL, at most 4096 bytes.
fn checked_parts(p: &str) -> Result<Vec<&str>> {
    let bad = |why: &str| invalid(format!("import file '{p}': {why}"));
    if p.is_empty() || p.len() > 4096 || p.contains('\0') {
        return Err(bad("not a usable path"));
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| bad("not UTF-8"))?),
            Component::CurDir => {}
            _ => {
                return Err(bad(
                    "paths are relative to the import folder and may not contain '..' or start with '/'",
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err(bad("not a usable path"));
    }
    Ok(parts)
}

/// A request's path as a key under `prefix` of `store`, which must hold it. Returns the
/// key and the object's size.
pub fn resolve_key(store: &dyn Storage, prefix: &str, p: &str) -> Result<(String, u64)> {
    let parts = checked_parts(p)?;
    if parts.iter().any(|s| s.contains('\\')) {
        return Err(invalid(format!(
            "import file '{p}': object keys are '/'-separated and may not contain '\\'"
        )));
    }
    let rel = parts.join("/");
    let key = if prefix.is_empty() {
        rel
    } else {
        format!("{}/{rel}", prefix.trim_end_matches('/'))
    };
    match store.size(&key) {
        Ok(n) => Ok((key, n)),
        Err(e) if is_not_found(&e) => Err(invalid(format!(
            "import file '{p}': not found at {}",
            store.locate(&key).display()
        ))),
        Err(e) => Err(e),
    }
}

/// A request's path inside the (canonical) root: relative, plain components only, a
/// regular file after symbolic links are resolved. Returns the path and its size.
pub fn resolve_path(root: &Path, p: &str) -> Result<(PathBuf, u64)> {
    let bad = |why: &str| invalid(format!("import file '{p}': {why}"));
    let rel: PathBuf = checked_parts(p)?.iter().collect();
    let full = root.join(rel);
    let real = full
        .canonicalize()
        .map_err(|e| bad(&format!("not found in the import folder ({e})")))?;
    if !real.starts_with(root) {
        return Err(bad("leads outside the import folder"));
    }
    let md = std::fs::metadata(&real).map_err(|e| bad(&e.to_string()))?;
    if !md.is_file() {
        return Err(bad("not a regular file"));
    }
    Ok((real, md.len()))
}

/// A batch as a reader hands it over: rows (as for an insert) and vector columns.
pub type Batch = (Vec<Value>, Vec<(String, Vec<f32>)>);
/// Where a reader hands its batches.
pub type RowSink<'a> = dyn FnMut(Batch) -> Result<()> + 'a;

/// Reads one file group in batches of `batch` rows into `sink`; `total` learns the
/// group's row count as soon as it is known.
pub fn read(
    f: &ImportFile,
    schema: CollectionSchema,
    batch: usize,
    total: &AtomicU64,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    match f {
        ImportFile::Json { path, .. } => {
            let path = path.local()?;
            let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
            // SAFETY: read-only mapping read once; a concurrent change of the file
            // yields bad values (validated like any input) or a parse error, never
            // out-of-bounds access (the slice is the mapping's length).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))?;
            json::stream(&map, batch, &mut |rows: Vec<Value>| {
                sink((rows, Vec::new()))
            })
        }
        ImportFile::Parquet { path, .. } => {
            parquet::read(path.local()?, &schema, batch, total, sink)
        }
        ImportFile::Npy { files, .. } => read_npy(files, &schema, batch, total, sink),
    }
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

enum Col {
    Vector(String, usize, npy::Npy),
    Scalar(String, DataType, npy::Npy),
}

impl Loc {
    /// The local path; a remote file must have been downloaded first
    /// ([`ImportFile::localize`]).
    fn local(&self) -> Result<&Path> {
        match self {
            Loc::Local(p) => Ok(p),
            Loc::Remote(k) => Err(invalid(format!(
                "internal error: '{k}' was not downloaded before reading"
            ))),
        }
    }
}

fn read_npy(
    files: &[(String, Loc, u64)],
    schema: &CollectionSchema,
    batch: usize,
    total: &AtomicU64,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    let mut cols = Vec::new();
    let mut rows: Option<usize> = None;
    for (field, path, _) in files {
        let path = path.local()?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let bad = |msg: String| invalid(format!("{name}: {msg}"));
        let f = schema.field(field).ok_or_else(|| {
            bad(format!(
                "no field '{field}' in the collection (each .npy file is named after its field)"
            ))
        })?;
        if f.is_primary && f.auto_id {
            return Err(bad(format!(
                "primary key '{field}' is generated (autoID); leave its file out"
            )));
        }
        if schema.function_for_output(field).is_some() {
            return Err(bad(format!(
                "'{field}' is computed by a function from its input field; leave its file out"
            )));
        }
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let a = npy::Npy::open(&file).map_err(bad)?;
        match rows {
            None => rows = Some(a.rows()),
            Some(n) if n != a.rows() => {
                return Err(bad(format!(
                    "{} rows; the group's other files hold {n}",
                    a.rows()
                )))
            }
            Some(_) => {}
        }
        let col = if f.is_vector() {
            if !matches!(
                f.data_type,
                DataType::FloatVector | DataType::Float16Vector | DataType::BFloat16Vector
            ) {
                return Err(bad(format!(
                    "{:?} fields cannot be imported from NumPy yet (float vector fields can); use JSON",
                    f.data_type
                )));
            }
            let dim = f.vec_len();
            if !a.dtype.is_float() || a.shape.len() != 2 || a.per_row != dim {
                return Err(bad(format!(
                    "vector field '{field}' of dim {dim} needs a 2-D float array of shape (rows, {dim}); got {} of shape {:?}",
                    npy::describe(a.dtype),
                    a.shape
                )));
            }
            Col::Vector(field.clone(), dim, a)
        } else {
            if f.is_sparse() || matches!(f.data_type, DataType::Array) {
                return Err(bad(format!(
                    "{:?} fields cannot be imported from NumPy yet; use JSON",
                    f.data_type
                )));
            }
            if a.shape.len() != 1 {
                return Err(bad(format!(
                    "scalar field '{field}' needs a 1-D array, got shape {:?}",
                    a.shape
                )));
            }
            Col::Scalar(field.clone(), f.data_type, a)
        };
        cols.push(col);
    }
    for f in &schema.fields {
        let given = files.iter().any(|(n, _, _)| n == &f.name);
        let optional = (f.is_primary && f.auto_id)
            || f.nullable
            || f.default_value.is_some()
            || schema.function_for_output(&f.name).is_some();
        if !given && !optional {
            return Err(invalid(format!(
                "no file for field '{0}' ({0}.npy) in the group",
                f.name
            )));
        }
    }
    let n = rows.unwrap_or(0);
    total.store(n as u64, Relaxed);
    // Wide rows (long strings, large vectors) make smaller batches: one batch holds at
    // most about BATCH_BYTES of the files' data.
    let row_bytes: usize = cols
        .iter()
        .map(|c| match c {
            Col::Vector(_, _, a) | Col::Scalar(_, _, a) => a.per_row * a.dtype.size(),
        })
        .sum();
    let batch = batch.min(BATCH_BYTES / row_bytes.max(1)).max(1);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let mut objs: Vec<Map<String, Value>> = (start..end).map(|_| Map::new()).collect();
        let mut vectors = Vec::new();
        for c in &cols {
            match c {
                Col::Vector(name, dim, a) => {
                    let mut v = Vec::with_capacity((end - start) * dim);
                    for i in start..end {
                        a.floats_into(i, &mut v);
                    }
                    vectors.push((name.clone(), v));
                }
                Col::Scalar(name, t, a) => {
                    for (o, i) in objs.iter_mut().zip(start..end) {
                        let mut v = a.value(i);
                        if *t == DataType::JSON {
                            if let Value::String(s) = &v {
                                v = serde_json::from_str(s).map_err(|e| EngineError::Row {
                                    row: i,
                                    field: name.clone(),
                                    msg: format!("not JSON text: {e}"),
                                })?;
                            }
                        }
                        o.insert(name.clone(), v);
                    }
                }
            }
        }
        let objs: Vec<Value> = objs.into_iter().map(Value::Object).collect();
        sink((objs, vectors))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("import");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.json"), "[]").unwrap();
        std::fs::write(d.path().join("secret.json"), "[]").unwrap();
        let croot = root.canonicalize().unwrap();
        assert!(resolve_path(&croot, "sub/a.json").is_ok());
        assert!(resolve_path(&croot, "./sub/a.json").is_ok());
        for (p, why) in [
            ("../secret.json", "may not contain '..'"),
            ("sub/../../secret.json", "may not contain '..'"),
            ("/etc/passwd", "may not contain '..'"),
            ("nope.json", "not found"),
            ("sub", "not a regular file"),
            ("", "not a usable path"),
        ] {
            let e = resolve_path(&croot, p).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("secret.json"), root.join("link.json"))
                .unwrap();
            let e = resolve_path(&croot, "link.json").unwrap_err().to_string();
            assert!(e.contains("outside the import folder"), "{e}");
        }
        let g = |files: &[&str]| vec![files.iter().map(|s| s.to_string()).collect()];
        let src = ImportSource::Dir(root.clone());
        let e = resolve(&src, &g(&["x.parquet"])).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        std::fs::write(root.join("x.parquet"), "PAR1").unwrap();
        std::fs::write(root.join("y.parquet"), "PAR1").unwrap();
        let two = vec![vec!["x.parquet".to_string(), "y.parquet".to_string()]];
        let e = resolve(&src, &two).unwrap_err().to_string();
        assert!(e.contains("a parquet file group holds one file"), "{e}");
        std::fs::write(root.join("x.csv"), "id").unwrap();
        let e = resolve(&src, &g(&["x.csv"])).unwrap_err().to_string();
        assert!(e.contains("unsupported file type '.csv'"), "{e}");
        let e = resolve(&ImportSource::Dir(d.path().join("none")), &g(&["a.json"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--import-root"), "{e}");
        assert!(resolve(&src, &[])
            .unwrap_err()
            .to_string()
            .contains("no files"));
    }

    #[test]
    fn downloads_are_whole_and_notice_a_changed_object() {
        use crate::storage::MemoryStorage;
        let d = tempfile::tempdir().unwrap();
        let store = MemoryStorage::new();
        let data: Vec<u8> = (0..(DOWNLOAD_CHUNK as usize * 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        store.put("in/big.npy", &data).unwrap();
        let to = d.path().join("big.npy");
        download(&store, "in/big.npy", data.len() as u64, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), data, "three ranges, in order");
        // Shorter or longer than when the job was created.
        for was in [data.len() as u64 + 10, 5] {
            let e = download(&store, "in/big.npy", was, &d.path().join("x"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("changed since the import was created"), "{e}");
        }
        // Keys: plain parts joined under the prefix; the object must exist.
        store.put("p/a/b.json", b"[]").unwrap();
        assert_eq!(
            resolve_key(&store, "p", "./a/b.json").unwrap(),
            ("p/a/b.json".to_string(), 2)
        );
        let e = resolve_key(&store, "p", "a/c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found at memory:/p/a/c.json"), "{e}");
        for bad in ["../p/a/b.json", "/p/a/b.json", "", ".", "a\\b.json"] {
            assert!(resolve_key(&store, "p", bad).is_err(), "{bad:?}");
        }
    }
}
