//! `jobs/import/{create,list,get_progress,describe}` on a proxy: Milvus's bulk import in
//! cluster mode. Paths are keys under the `import/` prefix of the cluster's storage
//! (`--storage s3://bucket/prefix` → `s3://bucket/prefix/import/<path>`), as for a
//! standalone server on the same storage. The proxy checks every file when the job is
//! created (a missing key or a path that leaves the prefix is a 400 then), and then,
//! one file group at a time, downloads it, reads it in batches and writes the rows
//! through the shards' logs exactly as `entities/insert` does (validated, split by
//! primary-key hash, acknowledged once durable in the log).
//!
//! Unlike a standalone import, which writes sealed segments and is all-or-nothing, a
//! cluster job that fails midway (a bad row in the third batch) keeps the batches it
//! wrote before. Jobs live in the proxy's memory: another proxy does not list them,
//! and they are gone after a restart (the rows they wrote are not).

use super::{need, ApiResult, Proxy};
use magpie_engine::import::{self, ImportFile, ImportSource};
use magpie_engine::types::now_ms;
use magpie_engine::ImportProgress;
use magpie_server::error::ApiError;
use magpie_server::import_api::progress_json;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Rows per batch read from a file and written through the logs.
const BATCH_ROWS: usize = 8192;
/// Jobs a proxy remembers; the oldest finished one makes room for a new one.
const MAX_JOBS: usize = 1000;

/// The import jobs this proxy runs, and the source it reads files from.
#[derive(Default)]
pub(super) struct Imports {
    jobs: Mutex<Vec<Arc<Job>>>,
    source: Mutex<Option<ImportSource>>,
    /// Makes job ids created in the same millisecond differ.
    next: AtomicU64,
}

struct Job {
    id: String,
    collection: String,
    files: Vec<FileState>,
    /// State, failure reason, completion time (ms).
    state: Mutex<(&'static str, String, u64)>,
}

struct FileState {
    name: String,
    bytes: u64,
    imported: AtomicU64,
    total: AtomicU64,
    /// 0 pending, 1 importing, 2 done, 3 failed.
    state: AtomicU64,
}

impl Job {
    fn set(&self, state: &'static str, reason: String) {
        let done = matches!(state, "Completed" | "Failed");
        *self.state.lock() = (state, reason, if done { now_ms() } else { 0 });
    }

    fn progress(&self) -> ImportProgress {
        let (state, reason, complete_ms) = self.state.lock().clone();
        let files: Vec<_> = self
            .files
            .iter()
            .map(|f| {
                let s = match f.state.load(Relaxed) {
                    3 => "Failed",
                    2 => "Completed",
                    1 => "Importing",
                    _ => "Pending",
                };
                let imported = f.imported.load(Relaxed);
                (
                    f.name.clone(),
                    f.bytes,
                    s,
                    imported,
                    f.total.load(Relaxed).max(imported),
                )
            })
            .collect();
        let imported_rows: u64 = files.iter().map(|f| f.3).sum();
        let total_rows: u64 = files.iter().map(|f| f.4).sum();
        let done = files.iter().filter(|f| f.2 == "Completed").count() as u64;
        let progress = match state {
            "Completed" => 100,
            _ if files.is_empty() => 0,
            _ => (done * 100 / files.len() as u64).min(99),
        };
        ImportProgress {
            id: self.id.clone(),
            collection: self.collection.clone(),
            state,
            reason,
            progress,
            imported_rows,
            total_rows,
            bytes: self.files.iter().map(|f| f.bytes).sum(),
            complete_ms,
            files,
        }
    }
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// `rows` with the vector columns of a NumPy group put into each row.
fn with_vectors(
    mut rows: Vec<Value>,
    vectors: Vec<(String, Vec<f32>)>,
) -> Result<Vec<Value>, String> {
    let n = rows.len();
    for (field, v) in vectors {
        if n == 0 || v.len() % n != 0 {
            return Err(format!("vector column '{field}' does not fit {n} rows"));
        }
        let dim = v.len() / n;
        for (row, x) in rows.iter_mut().zip(v.chunks(dim)) {
            if let Some(o) = row.as_object_mut() {
                o.insert(field.clone(), json!(x));
            }
        }
    }
    Ok(rows)
}

impl Proxy {
    /// The cluster storage's `import/` prefix, opened on first use (read only).
    async fn import_source(&self) -> Result<ImportSource, ApiError> {
        if let Some(s) = self.imports.source.lock().clone() {
            return Ok(s);
        }
        let url = format!(
            "{}/{}",
            self.storage.trim_end_matches('/'),
            import::STORE_PREFIX
        );
        let u = url.clone();
        let store = tokio::task::spawn_blocking(move || {
            magpie_objstore::ObjectStorage::open_s3_source(&u, &[])
        })
        .await
        .map_err(bad)?
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                65535,
                format!("the import source {url} cannot be opened: {e}"),
            )
        })?;
        let s = ImportSource::Store {
            store: Arc::new(store),
            prefix: String::new(),
        };
        *self.imports.source.lock() = Some(s.clone());
        Ok(s)
    }

    pub(super) async fn import_create(self: &Arc<Self>, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        // Brings the catalog mirror (schema, partitions) up to date with the collection.
        self.collection(&name).await?;
        let partition = self.write_partition(&name, &body)?;
        let files: Vec<Vec<String>> = match body.get("files") {
            Some(f) => serde_json::from_value(f.clone())
                .map_err(|_| bad("'files' must be a list of file groups, each a list of paths"))?,
            None => return Err(bad("missing 'files': give a list of file groups")),
        };
        let source = self.import_source().await?;
        let src = source.clone();
        let groups = tokio::task::spawn_blocking(move || import::resolve(&src, &files))
            .await
            .map_err(bad)??;
        let id = (now_ms() * 1000 + self.imports.next.fetch_add(1, Relaxed) % 1000).to_string();
        let job = Arc::new(Job {
            id: id.clone(),
            collection: name.clone(),
            files: groups
                .iter()
                .map(|g| FileState {
                    name: g.name(),
                    bytes: g.bytes(),
                    imported: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                    state: AtomicU64::new(0),
                })
                .collect(),
            state: Mutex::new(("Pending", String::new(), 0)),
        });
        {
            let mut jobs = self.imports.jobs.lock();
            if jobs.len() >= MAX_JOBS {
                match jobs
                    .iter()
                    .position(|j| matches!(j.state.lock().0, "Completed" | "Failed"))
                {
                    Some(i) => {
                        jobs.remove(i);
                    }
                    None => {
                        return Err(bad(format!(
                            "{MAX_JOBS} import jobs are pending or running; wait for some to finish"
                        )))
                    }
                }
            }
            jobs.push(job.clone());
        }
        let p = self.clone();
        tokio::spawn(async move {
            job.set("Importing", String::new());
            match p.run_import(&job, &name, partition, groups, source).await {
                Ok(()) => job.set("Completed", String::new()),
                Err(e) => {
                    tracing::warn!(job = %job.id, "import failed: {e}");
                    job.set("Failed", e);
                }
            }
        });
        Ok(json!({"code": 0, "data": {"jobId": id}}))
    }

    async fn run_import(
        &self,
        job: &Job,
        name: &str,
        partition: Option<String>,
        groups: Vec<ImportFile>,
        source: ImportSource,
    ) -> Result<(), String> {
        let schema = self
            .mirror
            .describe_collection(name)
            .map_err(|e| e.to_string())?
            .schema;
        for (n, (g, st)) in groups.into_iter().zip(&job.files).enumerate() {
            st.state.store(1, Relaxed);
            let fail = |e: String| {
                st.state.store(3, Relaxed);
                format!("{}: {e}", st.name)
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<import::Batch>(2);
            let tmp = self
                ._dir
                .0
                .join("import-tmp")
                .join(format!("{}-{n}", job.id));
            let (src, schema) = (source.clone(), schema.clone());
            let total = Arc::new(AtomicU64::new(0));
            let t = total.clone();
            // Downloaded and read on a blocking thread, two batches ahead at most.
            let reader = tokio::task::spawn_blocking(move || {
                let r = g.localize(&src, &tmp).and_then(|local| {
                    import::read(&local, schema, BATCH_ROWS, &t, &mut |b| {
                        tx.blocking_send(b).map_err(|_| {
                            magpie_engine::EngineError::InvalidArgument("stopped".into())
                        })
                    })
                });
                let _ = std::fs::remove_dir_all(&tmp);
                r
            });
            let mut written = Ok(());
            while let Some((rows, vectors)) = rx.recv().await {
                st.total.store(total.load(Relaxed), Relaxed);
                let rows = match with_vectors(rows, vectors) {
                    Ok(r) => r,
                    Err(e) => {
                        written = Err(e);
                        break;
                    }
                };
                let k = rows.len() as u64;
                let mut body = json!({"collectionName": name, "data": rows});
                if let Some(p) = &partition {
                    body["partitionName"] = json!(p);
                }
                if let Err(e) = self.write(body, false).await {
                    written = Err(e.message);
                    break;
                }
                st.imported.fetch_add(k, Relaxed);
            }
            // A reader blocked on a full channel now gets an error and stops.
            drop(rx);
            let read = reader
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            written.and(read).map_err(fail)?;
            st.total.store(st.imported.load(Relaxed), Relaxed);
            st.state.store(2, Relaxed);
        }
        Ok(())
    }

    pub(super) fn import_list(&self, body: &Value) -> ApiResult {
        let coll = body
            .get("collectionName")
            .and_then(|v| v.as_str())
            .filter(|c| !c.is_empty());
        let records: Vec<Value> = self
            .imports
            .jobs
            .lock()
            .iter()
            .filter(|j| coll.is_none_or(|c| j.collection == c))
            .map(|j| {
                let p = j.progress();
                json!({"jobId": p.id, "collectionName": p.collection, "state": p.state,
                       "progress": p.progress, "reason": p.reason})
            })
            .collect();
        Ok(json!({"code": 0, "data": {"records": records}}))
    }

    pub(super) fn import_progress(&self, body: &Value) -> ApiResult {
        let id = body
            .get("jobId")
            .and_then(|v| v.as_str())
            .filter(|j| !j.is_empty())
            .ok_or_else(|| bad("missing 'jobId'"))?;
        let job = self
            .imports
            .jobs
            .lock()
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| bad(format!("import job '{id}' does not exist on this proxy")))?;
        Ok(json!({"code": 0, "data": progress_json(&job.progress())}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_columns_go_into_their_rows() {
        let rows = vec![json!({"id": 1}), json!({"id": 2})];
        let got = with_vectors(rows, vec![("v".into(), vec![1.0, 2.0, 3.0, 4.0])]).unwrap();
        assert_eq!(
            got,
            [
                json!({"id": 1, "v": [1.0, 2.0]}),
                json!({"id": 2, "v": [3.0, 4.0]})
            ]
        );
        let err = with_vectors(vec![json!({}); 3], vec![("v".into(), vec![1.0; 4])]).unwrap_err();
        assert!(err.contains("does not fit 3 rows"), "{err}");
    }
}
