//! Files of a bulk import: where they may come from and how they are read.
//!
//! Paths come from requests, so they are resolved only inside the import root
//! (`--import-root`, default `<data dir>/import`): relative, without `..`, and, once
//! symbolic links are resolved, still inside the root; each must be a regular file. A
//! file group is one Parquet or JSON file, or the NumPy files of one set of rows, one
//! per field, each named after its field (`id.npy`, `vector.npy`, ...), as in Milvus.
//! Readers hand rows to the importer in batches (`crate::engine::Importer`), which
//! validates them as an insert would.

pub mod json;
pub mod npy;
pub mod parquet;

use crate::error::{invalid, EngineError, Result};
use crate::schema::{CollectionSchema, DataType};
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes of NumPy data read into one batch at most (see `read_npy`).
const BATCH_BYTES: usize = 64 << 20;

/// Most file groups in one job, and files in one group.
pub const MAX_GROUPS: usize = 1024;
pub const MAX_GROUP_FILES: usize = 1024;

/// One file group of an import, resolved.
#[derive(Debug, Clone)]
pub enum ImportFile {
    Json {
        path: PathBuf,
        shown: String,
        bytes: u64,
    },
    Parquet {
        path: PathBuf,
        shown: String,
        bytes: u64,
    },
    /// (field name, path, bytes) per file.
    Npy {
        files: Vec<(String, PathBuf, u64)>,
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
}

/// Resolves and checks every path of `groups` inside `root`.
pub fn resolve(root: &Path, groups: &[Vec<String>]) -> Result<Vec<ImportFile>> {
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
    let croot = root.canonicalize().map_err(|e| {
        invalid(format!(
            "the import folder {} is not available ({e}); put the files there or start the server with --import-root",
            root.display()
        ))
    })?;
    groups.iter().map(|g| resolve_group(&croot, g)).collect()
}

fn resolve_group(root: &Path, group: &[String]) -> Result<ImportFile> {
    if group.is_empty() || group.len() > MAX_GROUP_FILES {
        return Err(invalid(format!(
            "a file group holds 1 to {MAX_GROUP_FILES} files, got {}",
            group.len()
        )));
    }
    let shown = group.join(", ");
    let mut resolved = Vec::with_capacity(group.len());
    for p in group {
        resolved.push((p, resolve_path(root, p)?));
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
            let mut files: Vec<(String, PathBuf, u64)> = Vec::new();
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

/// A request's path inside the (canonical) root: relative, plain components only, a
/// regular file after symbolic links are resolved. Returns the path and its size.
pub fn resolve_path(root: &Path, p: &str) -> Result<(PathBuf, u64)> {
    let bad = |why: &str| invalid(format!("import file '{p}': {why}"));
    if p.is_empty() || p.len() > 4096 || p.contains('\0') {
        return Err(bad("not a usable path"));
    }
    let rel = Path::new(p);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(
            "paths are relative to the import folder and may not contain '..' or start with '/'",
        ));
    }
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
            let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
            // SAFETY: read-only mapping read once; a concurrent change of the file
            // yields bad values (validated like any input) or a parse error, never
            // out-of-bounds access (the slice is the mapping's length).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))?;
            json::stream(&map, batch, &mut |rows: Vec<Value>| {
                sink((rows, Vec::new()))
            })
        }
        ImportFile::Parquet { path, .. } => parquet::read(path, &schema, batch, total, sink),
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

fn read_npy(
    files: &[(String, PathBuf, u64)],
    schema: &CollectionSchema,
    batch: usize,
    total: &AtomicU64,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    let mut cols = Vec::new();
    let mut rows: Option<usize> = None;
    for (field, path, _) in files {
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
        let e = resolve(&root, &g(&["x.parquet"])).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        std::fs::write(root.join("x.parquet"), "PAR1").unwrap();
        std::fs::write(root.join("y.parquet"), "PAR1").unwrap();
        let two = vec![vec!["x.parquet".to_string(), "y.parquet".to_string()]];
        let e = resolve(&root, &two).unwrap_err().to_string();
        assert!(e.contains("a parquet file group holds one file"), "{e}");
        std::fs::write(root.join("x.csv"), "id").unwrap();
        let e = resolve(&root, &g(&["x.csv"])).unwrap_err().to_string();
        assert!(e.contains("unsupported file type '.csv'"), "{e}");
        let e = resolve(&d.path().join("none"), &g(&["a.json"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--import-root"), "{e}");
        assert!(resolve(&root, &[])
            .unwrap_err()
            .to_string()
            .contains("no files"));
    }
}
