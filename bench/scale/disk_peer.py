#!/usr/bin/env python3
"""The nearest peer of Magpie's disk-resident IVF_SQ8 run (bench/scale/disk.sh): FAISS
IVF with 8-bit scalar codes (IndexIVFScalarQuantizer, QT_8bit) over the same dataset,
built from the base file in chunks (np.memmap) so that only the codes are ever resident.
FAISS keeps no full vectors beside such an index, so it has nothing to rescore with:
its recall is the codes' own. (Its refine, IndexRefineFlat, holds every full vector in
memory: 5.1 GB at 10M × 128, over the 4 GB cap.) Run it under the same cgroup cap as
the server (disk.sh does: PEER=1), in-process, queries one at a time per thread.

usage: disk_peer.py DATASET_DIR [--nlist 2048] [--nprobes 4,8,16] [--threads-build 2]
needs: numpy, faiss-cpu
"""
import argparse
import json
import os
import threading
import time

import faiss
import numpy as np


def vecs(path, dtype):
    raw = np.memmap(path, dtype=np.int32, mode="r")
    dim = int(raw[0])
    return raw.reshape(-1, dim + 1)[:, 1:].view(dtype), dim


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


ap = argparse.ArgumentParser()
ap.add_argument("dataset")
ap.add_argument("--nlist", type=int, default=2048)
ap.add_argument("--nprobes", default="4,8,16")
ap.add_argument("--threads-build", type=int, default=2)
ap.add_argument("--k", type=int, default=10)
a = ap.parse_args()

base, dim = vecs(os.path.join(a.dataset, "base.fvecs"), np.float32)
queries = np.ascontiguousarray(vecs(os.path.join(a.dataset, "query.fvecs"), np.float32)[0])
gt = np.ascontiguousarray(vecs(os.path.join(a.dataset, "groundtruth.ivecs"), np.int32)[0])[:, : a.k]
n = base.shape[0]
faiss.omp_set_num_threads(a.threads_build)
t0 = time.time()
quant = faiss.IndexFlatL2(dim)
idx = faiss.IndexIVFScalarQuantizer(quant, dim, a.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
rng = np.random.default_rng(7)
sample = np.sort(rng.choice(n, size=min(n, 40 * a.nlist), replace=False))
idx.train(np.ascontiguousarray(base[sample]))
for s in range(0, n, 200_000):
    idx.add(np.ascontiguousarray(base[s : s + 200_000]))
build_s = time.time() - t0
index_bytes = idx.sa_code_size() * n + 8 * n  # codes + int64 ids, as FAISS stores them
print(f"faiss {faiss.__version__} IVF_SQ8 nlist={a.nlist}: {n} rows x {dim}, built in {build_s:.1f} s "
      f"(2 threads); codes+ids {index_bytes / 1e6:.0f} MB; RssAnon {status_kb('RssAnon') // 1024} MiB", flush=True)

faiss.omp_set_num_threads(1)
print("| system | index | knob | recall@10 | QPS 1 thread | QPS 2 threads | p50 ms |")
print("|---|---|---|---|---|---|---|")
for nprobe in [int(x) for x in a.nprobes.split(",")]:
    idx.nprobe = nprobe
    lat = []
    hits = 0
    t = time.time()
    for qi in range(len(queries)):
        s = time.perf_counter()
        _, ids = idx.search(queries[qi : qi + 1], a.k)
        lat.append(time.perf_counter() - s)
        hits += len(set(ids[0].tolist()) & set(gt[qi].tolist()))
    qps1 = len(queries) / (time.time() - t)

    def worker(w):
        for qi in range(w, len(queries), 2):
            idx.search(queries[qi : qi + 1], a.k)

    t = time.time()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    qps2 = len(queries) / (time.time() - t)
    lat.sort()
    print(f"| faiss {faiss.__version__} (in-process) | IVF_SQ8 nlist={a.nlist} | nprobe={nprobe} | "
          f"{hits / (len(queries) * a.k):.4f} | {qps1:.0f} | {qps2:.0f} | {lat[len(lat) // 2] * 1e3:.3f} |", flush=True)
print(json.dumps({"peak_rss_anon_mib": status_kb("RssAnon") // 1024, "vm_hwm_mib": status_kb("VmHWM") // 1024}))
