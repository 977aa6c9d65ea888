//! Raw-index sweep on a `.fvecs` dataset directory (the layout of `../shared/bench/*`),
//! without the engine: `cargo run --release -p magpie-index --example sweep -- DIR KIND
//! [threads]`, KIND one of `hnsw`, `hnsw_sq`, `ivf_flat`, `ivf_sq8`, `ivf_pq`, `filter`
//! (filtered walks against exact scans), `curve_hnsw`, `curve_hnsw_sq` (the build-time
//! recall curve beside the dataset's queries' recall at each `ef`, truth computed here).
//! `ROWS=N` keeps the first N rows of the base (curve modes only); `KNOBS=a,b,…` sets the
//! knobs swept; `INDEX_CACHE=FILE` (HNSW kinds) loads the graph from FILE if it exists,
//! else builds it and writes it there (an engine's `index_*.bin` of the same rows loads
//! too). The user-facing
//! benchmark is `magpie bench`; this is the developer's microscope.

use magpie_index::*;
use std::time::Instant;

fn read_fvecs(p: &std::path::Path) -> (usize, Vec<f32>) {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let dim = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    for rec in b.chunks_exact(4 + dim * 4) {
        out.extend(
            rec[4..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        );
    }
    (dim, out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let kind = args.get(2).map_or("hnsw", |s| s.as_str());
    let threads: usize = args.get(3).map_or(2, |s| s.parse().unwrap());
    let man = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let metric = if man.contains("\"metric\": \"ip\"") {
        Metric::IP
    } else {
        Metric::L2
    };
    let (dim, mut base) = read_fvecs(&dir.join("base.fvecs"));
    if let Some(n) = std::env::var("ROWS")
        .ok()
        .map(|r| r.parse::<usize>().unwrap())
    {
        // The other modes score against groundtruth.ivecs, which is for the whole base.
        assert!(
            kind.starts_with("curve_"),
            "ROWS works only with the curve_* modes (they compute their own truth)"
        );
        base.truncate(n * dim);
    }
    let (_, qs) = read_fvecs(&dir.join("query.fvecs"));
    let (gk, gt) = read_fvecs(&dir.join("groundtruth.ivecs"));
    let gt: Vec<u32> = gt.iter().map(|f| f.to_bits()).collect();
    let v = VectorSlice::new(&base, dim);
    let inv: Vec<f32> = (0..v.len())
        .map(|i| 1.0 / magpie_linalg::norm(&v.row(i)))
        .collect();
    let t = Instant::now();
    if kind == "filter" {
        return filter_sweep(v, &inv, metric, &qs, threads);
    }
    if let Some(k) = kind.strip_prefix("curve_") {
        return curve_check(v, &inv, metric, &qs, threads, k == "hnsw_sq");
    }
    let idx: Box<dyn VectorIndexRead + Sync> = match kind {
        "hnsw" | "hnsw_sq" => {
            let cache = std::env::var("INDEX_CACHE").ok();
            match cache.as_ref().and_then(|c| std::fs::read(c).ok()) {
                Some(b) => Box::new(HnswIndex::from_bytes(&b).unwrap()),
                None => {
                    let ix = HnswIndex::build_with(
                        v,
                        &inv,
                        metric,
                        &HnswParams {
                            threads,
                            sq8: kind == "hnsw_sq",
                            ..Default::default()
                        },
                        &Cancel::new(),
                    )
                    .unwrap();
                    if let Some(c) = &cache {
                        let mut f = std::io::BufWriter::new(std::fs::File::create(c).unwrap());
                        ix.write_to(&mut f).unwrap();
                    }
                    Box::new(ix)
                }
            }
        }
        "ivf_flat" | "ivf_sq8" | "ivf_pq" => Box::new(
            IvfIndex::build_with(
                v,
                &inv,
                metric,
                &IvfParams {
                    nlist: 1024,
                    threads,
                    codec: match kind {
                        "ivf_flat" => CodecKind::Flat,
                        "ivf_sq8" => CodecKind::Sq8,
                        _ => CodecKind::Pq { m: dim / 4 },
                    },
                    ..Default::default()
                },
                &Cancel::new(),
            )
            .unwrap(),
        ),
        other => panic!("unknown kind {other}"),
    };
    eprintln!(
        "build {:.2}s, index bytes {}, raw {}",
        t.elapsed().as_secs_f64(),
        idx.memory_bytes(),
        base.len() * 4
    );
    let nq = qs.len() / dim;
    let knobs: Vec<usize> = if let Ok(k) = std::env::var("KNOBS") {
        k.split(',').map(|x| x.parse().unwrap()).collect()
    } else if kind.starts_with("hnsw") {
        vec![16, 24, 32, 48, 64, 96, 128]
    } else {
        vec![2, 4, 8, 16, 32, 64, 128]
    };
    let refine = std::env::var("REFINE").ok().map(|r| r.parse().unwrap());
    for knob in knobs {
        let p = SearchParams {
            ef: Some(knob),
            nprobe: Some(knob),
            refine,
            ..SearchParams::top_k(10)
        };
        let t = Instant::now();
        let mut hit = 0;
        for qi in 0..nq {
            let q = &qs[qi * dim..(qi + 1) * dim];
            let r = idx.search(v, &inv, q, &p).unwrap();
            let truth = &gt[qi * gk..qi * gk + 10];
            hit += r.iter().filter(|s| truth.contains(&s.offset)).count();
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "{kind} knob={knob:4} recall@10={:.4} qps={:.0}",
            hit as f64 / (nq * 10) as f64,
            nq as f64 / el
        );
    }
}

/// Filtered search: graph walk (forced) vs exact scan of the passing rows, per
/// selectivity, at the ef that reaches recall 0.95 unfiltered.
fn filter_sweep(v: VectorSlice<'_>, inv: &[f32], metric: Metric, qs: &[f32], threads: usize) {
    let mut idx = HnswIndex::build_with(
        v,
        inv,
        metric,
        &HnswParams {
            threads,
            ..Default::default()
        },
        &Cancel::new(),
    )
    .unwrap();
    idx.set_exact_below(0);
    let flat = FlatIndex::new(metric);
    let dim = v.dim;
    let nq = 300.min(qs.len() / dim);
    for frac in [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8] {
        let mut allow = Bitset::zeros(v.len());
        let mut x = 12345u64;
        for i in 0..v.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (x % 10_000) as f64 / 10_000.0 < frac {
                allow.set(i, true);
            }
        }
        let mut truth = Vec::new();
        let t = Instant::now();
        for qi in 0..nq {
            let q = &qs[qi * dim..(qi + 1) * dim];
            let p = SearchParams {
                allow: Some(&allow),
                ..SearchParams::top_k(10)
            };
            truth.push(flat.search(v, inv, q, &p).unwrap());
        }
        let exact_qps = nq as f64 / t.elapsed().as_secs_f64();
        for ef in [32usize, 64, 128, 256] {
            let t = Instant::now();
            let mut hit = 0;
            for qi in 0..nq {
                let q = &qs[qi * dim..(qi + 1) * dim];
                let p = SearchParams {
                    allow: Some(&allow),
                    ef: Some(ef),
                    ..SearchParams::top_k(10)
                };
                let r = idx.search(v, inv, q, &p).unwrap();
                let want: Vec<u32> = truth[qi].iter().map(|s| s.offset).collect();
                hit += r.iter().filter(|s| want.contains(&s.offset)).count();
            }
            let qps = nq as f64 / t.elapsed().as_secs_f64();
            println!(
                "frac={frac:5} passing={:6} exact_qps={exact_qps:7.0} ef={ef:3} graph_qps={qps:7.0} recall={:.4}",
                allow.count_ones(),
                hit as f64 / (nq * 10) as f64
            );
        }
    }
}

/// The build-time recall curve (rows of the index as queries) beside the recall of the
/// dataset's fresh queries at the same `ef`, the truth computed here by exact scan (so
/// `ROWS` may cut the base).
fn curve_check(
    v: VectorSlice<'_>,
    inv: &[f32],
    metric: Metric,
    qs: &[f32],
    threads: usize,
    sq8: bool,
) {
    let t = Instant::now();
    let idx = HnswIndex::build_with(
        v,
        inv,
        metric,
        &HnswParams {
            threads,
            sq8,
            ..Default::default()
        },
        &Cancel::new(),
    )
    .unwrap();
    eprintln!("{} rows, build {:.1}s", v.len(), t.elapsed().as_secs_f64());
    let dim = v.dim;
    let nq = qs.len() / dim;
    let flat = FlatIndex::new(metric);
    let truth: Vec<Vec<u32>> = (0..nq)
        .map(|qi| {
            flat.search(
                v,
                inv,
                &qs[qi * dim..(qi + 1) * dim],
                &SearchParams::top_k(10),
            )
            .unwrap()
            .iter()
            .map(|s| s.offset)
            .collect()
        })
        .collect();
    for &(ef, curve) in &idx.curve().points {
        let p = SearchParams {
            ef: Some(ef as usize),
            ..SearchParams::top_k(10)
        };
        let mut hit = 0;
        let mut worst = 0usize;
        for qi in 0..nq {
            let r = idx
                .search(v, inv, &qs[qi * dim..(qi + 1) * dim], &p)
                .unwrap();
            let h = r.iter().filter(|s| truth[qi].contains(&s.offset)).count();
            hit += h;
            worst += usize::from(h < 8);
        }
        println!(
            "ef={ef:4} curve={curve:.4} fresh={:.4} fresh_queries_below_0.8={worst}",
            hit as f64 / (nq * 10) as f64
        );
    }
    // The hardest fresh queries, at growing ef: where the misses rank, and their distance
    // against the truth's.
    for ef in [256usize, 1024, 4096] {
        let p = SearchParams {
            ef: Some(ef),
            ..SearchParams::top_k(10)
        };
        let mut hard = 0;
        for qi in 0..nq {
            let q = &qs[qi * dim..(qi + 1) * dim];
            let r = idx.search(v, inv, q, &p).unwrap();
            let h = r.iter().filter(|s| truth[qi].contains(&s.offset)).count();
            if h < 8 {
                hard += 1;
                if hard <= 4 {
                    let miss: Vec<usize> = (0..10)
                        .filter(|&i| !r.iter().any(|s| s.offset == truth[qi][i]))
                        .collect();
                    let d0 = magpie_linalg::l2_sq(q, &v.row(truth[qi][0] as usize));
                    let d9 = magpie_linalg::l2_sq(q, &v.row(truth[qi][9] as usize));
                    println!(
                        "  ef={ef} q{qi}: {h}/10, missed ranks {miss:?}, truth d0={d0:.3} d9={d9:.3}, got d0={:.3}",
                        r[0].score
                    );
                }
            }
        }
        println!("ef={ef}: {hard} queries below 0.8");
    }
}
