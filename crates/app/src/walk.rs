//! The indexing loop the apps share: walk a folder tree for files of some kinds, compare
//! them with what a collection already holds (size and mtime first, then a content
//! hash), and report counts and progress. Each app turns the files to (re-)index into
//! rows and writes them in batches; every batch is an acknowledged upsert, so an
//! interrupted run resumes where it stopped (written files are then unchanged).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Counters of one indexing run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct IndexReport {
    /// Files (image app) or documents (text app) found.
    pub found: usize,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// (relative path or document, reason) of what could not be indexed.
    pub failed: Vec<(String, String)>,
    /// Problems of the walk itself (symlink loops, unreadable folders).
    pub warnings: Vec<String>,
    pub cancelled: bool,
}

/// Progress of a run: items handled so far out of those to (re-)index.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// What a collection holds for one file.
pub struct Known {
    pub size: i64,
    pub mtime: i64,
    pub hash: String,
}

/// A file that is new or changed.
pub struct Todo {
    pub path: PathBuf,
    pub rel: String,
    pub size: i64,
    /// The later of the file's and its sidecar's modification times (what the next run
    /// compares).
    pub mtime: i64,
    /// The file's own modification time.
    pub file_mtime: i64,
    /// The file's content hash, with its sidecar's after a `+` when it has one.
    pub hash: String,
    /// The file's sidecar (for the image app, its caption), when it has one.
    pub sidecar: Option<PathBuf>,
}

/// Files under `root` (symlinks followed, sorted by name) whose extension, lowercased,
/// is in `exts`. Loops and unreadable entries become warnings in `rep`, not errors.
pub fn walk_files(root: &Path, exts: &[&str], rep: &mut IndexReport) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        match entry {
            Ok(e) if e.file_type().is_file() => {
                let ok = e
                    .path()
                    .extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| exts.contains(&x.to_ascii_lowercase().as_str()));
                if ok {
                    files.push(e.into_path());
                }
            }
            Ok(_) => {}
            Err(e) => rep.warnings.push(e.to_string()),
        }
    }
    files
}

/// Splits `files` into those to index (new, or changed: size or mtime differ and the
/// content hash too) and counts the unchanged ones; returns them with the set of
/// relative paths seen (what is known and not seen was deleted). `sidecar` names a
/// file's companion file, if it has one (a caption): a change to it, its appearance or
/// its removal changes the file too.
pub fn diff(
    root: &Path,
    files: Vec<PathBuf>,
    known: &HashMap<String, Known>,
    rep: &mut IndexReport,
    sidecar: &dyn Fn(&Path) -> Option<PathBuf>,
) -> (Vec<Todo>, HashSet<String>) {
    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    for path in files {
        let rel = rel_path(root, &path);
        seen.insert(rel.clone());
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                rep.failed.push((rel, e.to_string()));
                continue;
            }
        };
        let size = meta.len() as i64;
        let file_mtime = modified_since_epoch(&meta).as_secs() as i64;
        let side = sidecar(&path).and_then(|p| {
            let m = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
            Some((p, modified_since_epoch(&m).as_secs() as i64))
        });
        let mtime = side.as_ref().map_or(file_mtime, |s| s.1.max(file_mtime));
        let k = known.get(&rel);
        // A sidecar that appeared or vanished changes the file whatever the times say
        // (it may be as old as the file).
        let same_sidecar = |k: &Known| k.hash.contains('+') == side.is_some();
        if k.is_some_and(|k| k.size == size && k.mtime == mtime && same_sidecar(k)) {
            rep.unchanged += 1;
            continue;
        }
        let hash = match file_hash(&path).and_then(|h| match &side {
            Some((p, _)) => Ok(format!("{h}+{}", file_hash(p)?)),
            None => Ok(h),
        }) {
            Ok(h) => h,
            Err(e) => {
                rep.failed.push((rel, e.to_string()));
                continue;
            }
        };
        if k.is_some_and(|k| k.hash == hash) {
            rep.unchanged += 1;
            continue;
        }
        todo.push(Todo {
            path,
            rel,
            size,
            mtime,
            file_mtime,
            hash,
            sidecar: side.map(|s| s.0),
        });
    }
    (todo, seen)
}

/// `p` relative to `root`, with `/` separators.
pub fn rel_path(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The first 16 hex digits of the SHA-256 of a file.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let b = std::fs::read(path)?;
    Ok(hash_bytes(&b))
}

/// The first 16 hex digits of the SHA-256 of `b`.
pub fn hash_bytes(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))[..16].to_string()
}

/// A file's modification time since the Unix epoch (zero where the platform or the file
/// system does not record one).
pub fn modified_since_epoch(meta: &std::fs::Metadata) -> std::time::Duration {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
}

/// Which source (folder or file) each app collection indexes, in `<data dir>/FILE`.
pub fn load_roots(data_dir: &Path, file: &str) -> std::collections::BTreeMap<String, PathBuf> {
    std::fs::read(data_dir.join(file))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records that `coll` indexes `root` (written to a temporary file, then renamed).
pub fn save_root(data_dir: &Path, file: &str, coll: &str, root: &Path) -> crate::Result<()> {
    let mut roots = load_roots(data_dir, file);
    roots.insert(coll.to_string(), root.to_path_buf());
    let path = data_dir.join(file);
    let tmp = data_dir.join(format!("{file}.partial"));
    let io = |source: std::io::Error| crate::AppError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, serde_json::to_vec_pretty(&roots).unwrap()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// A collection's row count (`count(*)`); `None` when it cannot be read (dropped since,
/// or being loaded).
pub fn count_rows(engine: &magpie_engine::Engine, coll: &str) -> Option<u64> {
    engine
        .query(
            coll,
            &magpie_engine::QueryRequest {
                output_fields: vec!["count(*)".into()],
                ..Default::default()
            },
        )
        .ok()?
        .first()?
        .get("count(*)")?
        .as_u64()
}
