#!/usr/bin/env python3
"""Run the peers (hnswlib, faiss HNSW, faiss IVF_FLAT, usearch) on a Magpie benchmark
dataset (manifest.json, base.fvecs, query.fvecs, groundtruth.ivecs) with the parameters
`magpie bench` uses, and print JSON rows with the same keys as `magpie bench --json`.

Usage: peers.py DATASET_DIR [--threads-build 2] [--queries N] [--out FILE]
                [--filter-selectivity 1,10,50,90]

Queries run one at a time on one thread (and, for QPS 2 threads, one at a time on each
of two threads), exactly as `magpie bench` runs ours.

With --filter-selectivity, each peer that filters in process also sweeps its knob under
the filter `magpie bench --filter-selectivity` uses (row i passes when i * 7919 % 100 < P),
against an exact filtered ground truth computed here: hnswlib with its `filter` function
(a Python callable, called per candidate: what a Python user of hnswlib gets), faiss HNSW
and IVF with an `IDSelectorBitmap` in their search parameters (checked in C++). usearch's
Python API has no filter and is not run filtered.
"""
import argparse
import json
import os
import resource
import sys
import threading
import time

import numpy as np


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    dim = int(raw[0])
    return raw.reshape(-1, dim + 1)[:, 1:].copy().view(dtype), dim


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def filtered_truth(base, queries, metric, mask, k):
    """Exact top-k row ids of every query among the rows where `mask` is true."""
    ids = np.nonzero(mask)[0]
    sub = base[ids]
    if metric == "l2":
        norms = (sub * sub).sum(1)
    elif metric == "cosine":
        inv = 1.0 / np.maximum(np.linalg.norm(sub, axis=1), 1e-30)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 100):
        q = queries[s : s + 100]
        dots = q @ sub.T
        if metric == "l2":
            cost = norms[None, :] - 2 * dots
        elif metric == "cosine":
            cost = -dots * inv[None, :]
        else:
            cost = -dots
        top = np.argpartition(cost, k, axis=1)[:, :k]
        order = np.take_along_axis(cost, top, 1).argsort(1)
        out[s : s + 100] = ids[np.take_along_axis(top, order, 1)]
    return out


def timed_queries(search, queries, gt, k):
    for q in queries[:50]:
        search(q)
    lat = []
    hits = 0
    t0 = time.perf_counter()
    for i, q in enumerate(queries):
        t1 = time.perf_counter()
        ids = search(q)
        lat.append(time.perf_counter() - t1)
        hits += len(set(int(x) for x in ids[:k]) & set(int(x) for x in gt[i, :k]))
    qps1 = len(queries) / (time.perf_counter() - t0)

    def worker(w):
        for q in queries[w::2]:
            search(q)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    qps2 = len(queries) / (time.perf_counter() - t0)
    lat.sort()
    p = lambda x: lat[int((len(lat) - 1) * x)] * 1e3
    return hits / (len(queries) * k), qps1, qps2, p(0.5), p(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--threads-build", type=int, default=2)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--efs", default="16,24,32,48,64,96,128")
    ap.add_argument("--nprobes", default="1,2,4,8,16,32,64")
    ap.add_argument("--only", default="hnswlib,faiss-hnsw,faiss-ivf,usearch")
    ap.add_argument("--out", default=None)
    ap.add_argument("--filter-selectivity", default="",
                    help="percentages of rows passing, as magpie bench --filter-selectivity")
    a = ap.parse_args()

    man = json.load(open(os.path.join(a.dataset, "manifest.json")))
    metric = man["metric"]
    base, dim = read_vecs(os.path.join(a.dataset, "base.fvecs"), np.float32)
    queries, _ = read_vecs(os.path.join(a.dataset, "query.fvecs"), np.float32)
    gt, _ = read_vecs(os.path.join(a.dataset, "groundtruth.ivecs"), np.int32)
    if a.queries:
        queries = queries[: a.queries]
    n, k = len(base), a.k
    efs = [int(x) for x in a.efs.split(",")]
    nprobes = [int(x) for x in a.nprobes.split(",")]
    only = set(a.only.split(","))
    rows = []
    common = dict(dataset=man["name"], n=n, dim=dim, metric=metric.upper(), k=k,
                  queries=len(queries), build_threads=a.threads_build,
                  raw_vector_bytes=int(base.nbytes))

    def emit(system, index, params, knob, build_s, index_bytes, res, pct=None):
        r = dict(common, system=system, index=index, params=params, knob=knob,
                 recall_target=None, build_s=build_s, build_vectors_per_s=n / build_s,
                 index_bytes=index_bytes, rss_bytes=rss_bytes(),
                 recall=res[0], qps_1t=res[1], qps_2t=res[2], p50_ms=res[3], p99_ms=res[4])
        if pct is not None:
            r.update(filter_pass_pct=pct, filter_field="int")
        rows.append(r)
        f = f" filter {pct} %" if pct is not None else ""
        print(f"  {system} {index}{f} {knob} recall={res[0]:.4f} qps1={res[1]:.0f} qps2={res[2]:.0f}",
              file=sys.stderr)

    # The filtered sweep: magpie bench's `sel` (row i: i * 7919 % 100), its truth exact.
    pcts = [int(x) for x in a.filter_selectivity.split(",") if x.strip()]
    if any(not 1 <= p <= 100 for p in pcts):
        sys.exit("--filter-selectivity takes percentages from 1 to 100")
    sel = (np.arange(n, dtype=np.int64) * 7919) % 100
    filters = []
    for p in pcts:
        mask = sel < p
        print(f"  exact ground truth for sel < {p}...", file=sys.stderr)
        t = filtered_truth(base, queries, metric, mask, k)
        bitmap = np.packbits(mask, bitorder="little")
        filters.append((p, mask, t, bitmap))

    if "hnswlib" in only:
        import hnswlib
        name = "hnswlib " + hnswlib.__version__ if hasattr(hnswlib, "__version__") else "hnswlib"
        space = "l2" if metric == "l2" else "ip"
        idx = hnswlib.Index(space=space, dim=dim)
        idx.init_index(max_elements=n, M=16, ef_construction=200, random_seed=1)
        idx.set_num_threads(a.threads_build)
        t0 = time.perf_counter()
        idx.add_items(base, np.arange(n))
        build = time.perf_counter() - t0
        idx.set_num_threads(1)
        # Graph memory: level-0 (size_data_per_element minus the vector) plus upper links.
        path = "/tmp/peers-hnswlib.bin"
        idx.save_index(path)
        ib = os.path.getsize(path) - base.nbytes
        os.remove(path)
        for ef in efs:
            idx.set_ef(max(ef, k))
            res = timed_queries(lambda q: idx.knn_query(q, k=k)[0][0], queries, gt, k)
            emit(name, "HNSW", {"M": 16, "efConstruction": 200}, {"ef": ef}, build, ib, res)
        for p, mask, t, _ in filters:
            allowed = mask.tolist()
            for ef in efs:
                idx.set_ef(max(ef, k))
                res = timed_queries(
                    lambda q: idx.knn_query(q, k=k, filter=lambda i: allowed[i])[0][0],
                    queries, t, k)
                emit(name, "HNSW", {"M": 16, "efConstruction": 200}, {"ef": ef}, build, ib,
                     res, p)

    if "faiss-hnsw" in only or "faiss-ivf" in only:
        import faiss
        faiss.omp_set_num_threads(a.threads_build)
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if "faiss-hnsw" in only:
            idx = faiss.IndexHNSWFlat(dim, 16, fm)
            idx.hnsw.efConstruction = 200
            t0 = time.perf_counter()
            idx.add(base)
            build = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            ib = faiss.serialize_index(idx).nbytes - base.nbytes
            for ef in efs:
                idx.hnsw.efSearch = max(ef, k)
                res = timed_queries(lambda q: idx.search(q.reshape(1, -1), k)[1][0], queries, gt, k)
                emit("faiss " + faiss.__version__, "HNSW", {"M": 16, "efConstruction": 200},
                     {"ef": ef}, build, ib, res)
            for p, _, t, bitmap in filters:
                selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
                for ef in efs:
                    sp = faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef, k))
                    res = timed_queries(
                        lambda q: idx.search(q.reshape(1, -1), k, params=sp)[1][0], queries, t, k)
                    emit("faiss " + faiss.__version__, "HNSW", {"M": 16, "efConstruction": 200},
                         {"ef": ef}, build, ib, res, p)
            faiss.omp_set_num_threads(a.threads_build)
        if "faiss-ivf" in only:
            quant = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
            idx = faiss.IndexIVFFlat(quant, dim, 1024, fm)
            t0 = time.perf_counter()
            idx.train(base)
            idx.add(base)
            build = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            ib = faiss.serialize_index(idx).nbytes
            for nprobe in nprobes:
                idx.nprobe = nprobe
                res = timed_queries(lambda q: idx.search(q.reshape(1, -1), k)[1][0], queries, gt, k)
                emit("faiss " + faiss.__version__, "IVF_FLAT", {"nlist": 1024}, {"nprobe": nprobe},
                     build, ib, res)
            for p, _, t, bitmap in filters:
                selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
                for nprobe in nprobes:
                    sp = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
                    res = timed_queries(
                        lambda q: idx.search(q.reshape(1, -1), k, params=sp)[1][0], queries, t, k)
                    emit("faiss " + faiss.__version__, "IVF_FLAT", {"nlist": 1024},
                         {"nprobe": nprobe}, build, ib, res, p)

    if "usearch" in only:
        import usearch
        from usearch.index import Index
        idx = Index(ndim=dim, metric="l2sq" if metric == "l2" else "ip", dtype="f32",
                    connectivity=16, expansion_add=200)
        t0 = time.perf_counter()
        idx.add(np.arange(n), base, threads=a.threads_build)
        build = time.perf_counter() - t0
        ib = idx.memory_usage - base.nbytes
        for ef in efs:
            idx.expansion_search = max(ef, k)
            res = timed_queries(lambda q: idx.search(q, k, threads=1).keys, queries, gt, k)
            emit("usearch " + usearch.__version__, "HNSW", {"M": 16, "efConstruction": 200},
                 {"ef": ef}, build, ib, res)

    out = json.dumps(rows, indent=1)
    if a.out:
        open(a.out, "w").write(out + "\n")
    else:
        print(out)


if __name__ == "__main__":
    main()
