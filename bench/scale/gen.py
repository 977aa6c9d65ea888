#!/usr/bin/env python3
"""A clustered synthetic dataset of any size, in ../shared/bench's layout
(base.fvecs, query.fvecs, groundtruth.ivecs with k=100, manifest.json), for the scale
curve (`magpie bench` at 100k, 1M, ...). Ground truth is exact (squared L2, float32,
numpy), computed once; keep the output outside the repository (it is large):

    python3 bench/scale/gen.py --n 1000000 --out target/bench-data/synth-1m
    target/release/magpie bench --dataset target/bench-data/synth-1m --index HNSW_SQ ...

Data: a mixture of Gaussian clusters with power-law spectra and Zipf cluster sizes,
queries fresh draws from the same mixture (the recipe of ../shared/bench/synth-clustered,
not its bytes). Needs numpy.
"""
import argparse, json, os, time
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, required=True)
p.add_argument("--dim", type=int, default=128)
p.add_argument("--queries", type=int, default=1000)
p.add_argument("--clusters", type=int, default=1000)
p.add_argument("--seed", type=int, default=20261201)
p.add_argument("--out", required=True)
a = p.parse_args()
t0 = time.time()
rng = np.random.default_rng(a.seed)
d, c = a.dim, a.clusters
spectrum = (np.arange(1, d + 1) ** -0.3).astype(np.float32)
centres = (rng.standard_normal((c, d)) * spectrum).astype(np.float32)
sizes = 1.0 / np.arange(1, c + 1) ** 0.6
sizes /= sizes.sum()
scales = np.exp(rng.normal(0, 0.3, c)).astype(np.float32) * 0.65
# One random rotation shared by all clusters (cheap at 1M rows), a per-cluster spectrum.
q, _ = np.linalg.qr(rng.standard_normal((d, d)))
rot = q.astype(np.float32)


def draw(n):
    lab = rng.choice(c, size=n, p=sizes)
    x = rng.standard_normal((n, d)).astype(np.float32) * spectrum
    return (x @ rot) * scales[lab, None] + centres[lab]


os.makedirs(a.out, exist_ok=True)


def write_vecs(path, arr, dtype):
    n, k = arr.shape
    out = np.empty((n, k + 1), dtype=np.int32)
    out[:, 0] = k
    out[:, 1:] = arr.astype(dtype).view(np.int32)
    out.tofile(path)


base = np.empty((a.n, d), dtype=np.float32)
for s in range(0, a.n, 200_000):
    e = min(a.n, s + 200_000)
    base[s:e] = draw(e - s)
queries = draw(a.queries).astype(np.float32)
write_vecs(os.path.join(a.out, "base.fvecs"), base, np.float32)
write_vecs(os.path.join(a.out, "query.fvecs"), queries, np.float32)
gen_s = time.time() - t0
# Exact top-100 by squared L2, in chunks of the base.
k = 100
best_d = np.full((a.queries, k), np.inf, dtype=np.float32)
best_i = np.zeros((a.queries, k), dtype=np.int64)
qn = (queries ** 2).sum(1)[:, None]
for s in range(0, a.n, 100_000):
    e = min(a.n, s + 100_000)
    b = base[s:e]
    dist = qn - 2 * queries @ b.T + (b ** 2).sum(1)[None, :]
    cand_d = np.concatenate([best_d, dist], axis=1)
    cand_i = np.concatenate([best_i, np.arange(s, e)[None, :].repeat(a.queries, 0)], axis=1)
    part = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
    best_d = np.take_along_axis(cand_d, part, 1)
    best_i = np.take_along_axis(cand_i, part, 1)
order = np.argsort(best_d, axis=1)
best_i = np.take_along_axis(best_i, order, 1).astype(np.int32)
write_vecs(os.path.join(a.out, "groundtruth.ivecs"), best_i, np.int32)
json.dump({"name": os.path.basename(a.out.rstrip("/")), "dim": d, "metric": "l2",
           "n_base": a.n, "n_query": a.queries, "gt_k": k, "dtype": "float32",
           "source": "synthetic (bench/scale/gen.py)", "seed": a.seed,
           "generation_s": round(gen_s, 1), "ground_truth_s": round(time.time() - t0 - gen_s, 1)},
          open(os.path.join(a.out, "manifest.json"), "w"), indent=1)
print(f"{a.out}: {a.n} x {d}, generated in {gen_s:.1f}s, ground truth in {time.time() - t0 - gen_s:.1f}s")
