"""pymilvus throughput against one server: insert rows/s, then search QPS with 1 and N
client threads. Run it against Magpie and against Milvus Lite on the same data
(bench/pymilvus/run.sh does both, in one run, on this machine).

    python bench.py URI [--set DIR] [--rows 100000] [--dim 128] [--batch 10000]
                        [--threads 8] [--seconds 10] [--columns] [--index HNSW] [--ef 64]

URI: http://host:port (a server) or PATH.db (Milvus Lite, in-process).
--columns inserts through the ORM's column form (lists per field) instead of
MilvusClient's row dicts; both end as the same protobuf on the wire.
Prints one JSON line of results.
"""

import argparse
import json
import os
import threading
import time

import numpy as np
from pymilvus import Collection, DataType, MilvusClient, connections

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--rows", type=int, default=100_000)
ap.add_argument("--dim", type=int, default=128)
ap.add_argument("--batch", type=int, default=10_000)
ap.add_argument("--threads", type=int, default=8)
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--columns", action="store_true")
ap.add_argument("--index", default="HNSW")
ap.add_argument("--ef", type=int, default=64)
ap.add_argument("--set", help="a directory with base.fvecs, query.fvecs, groundtruth.ivecs, manifest.json (../shared/bench/*)")
a = ap.parse_args()


def fvecs(path, kind=np.float32):
    raw = np.fromfile(path, dtype=np.int32)
    d = raw[0]
    return raw.reshape(-1, d + 1)[:, 1:].view(kind).copy()


metric = "L2"
truth = None
if a.set:
    import os

    meta = json.load(open(os.path.join(a.set, "manifest.json")))
    metric = "IP" if meta["metric"] == "ip" else "L2"
    data = fvecs(os.path.join(a.set, "base.fvecs"))[: a.rows]
    queries = fvecs(os.path.join(a.set, "query.fvecs"))
    if len(data) == meta["n_base"]:
        truth = fvecs(os.path.join(a.set, "groundtruth.ivecs"), np.int32)[:, :10]
    a.rows, a.dim = data.shape
else:
    rng = np.random.default_rng(42)
    data = rng.standard_normal((a.rows, a.dim), dtype=np.float32)
    queries = rng.standard_normal((1000, a.dim), dtype=np.float32)
out = {
    "uri": "lite" if a.uri.endswith(".db") else "server",
    "set": os.path.basename(a.set.rstrip("/")) if a.set else "gaussian",
    "rows": a.rows,
    "dim": a.dim,
    "index": a.index,
}

client = MilvusClient(a.uri)
if client.has_collection("bench"):
    client.drop_collection("bench")
schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
schema.add_field("id", DataType.INT64, is_primary=True)
schema.add_field("vector", DataType.FLOAT_VECTOR, dim=a.dim)
ip = client.prepare_index_params()
params = {"M": 16, "efConstruction": 200} if a.index == "HNSW" else {}
ip.add_index(field_name="vector", index_type=a.index, metric_type=metric, params=params)
client.create_collection("bench", schema=schema, index_params=ip, consistency_level="Strong")

# ---------------------------------------------------------------- insert
t = time.perf_counter()
if a.columns:
    connections.connect(uri=a.uri)
    coll = Collection("bench")
    for s in range(0, a.rows, a.batch):
        e = min(s + a.batch, a.rows)
        coll.insert([list(range(s, e)), data[s:e]])
else:
    for s in range(0, a.rows, a.batch):
        e = min(s + a.batch, a.rows)
        client.insert("bench", [{"id": i, "vector": data[i]} for i in range(s, e)])
out["insert_s"] = round(time.perf_counter() - t, 2)
out["insert_rows_per_s"] = round(a.rows / out["insert_s"])

# ---------------------------------------------------------------- index and load
t = time.perf_counter()
client.flush("bench")
client.load_collection("bench")
deadline = time.time() + 1800
while time.time() < deadline:
    d = client.describe_index("bench", index_name="vector")
    if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= a.rows * 0.99:
        break
    if a.uri.endswith(".db"):
        break  # Milvus Lite builds on flush/load
    time.sleep(0.5)
out["index_s"] = round(time.perf_counter() - t, 2)

# Recall@10 of what each server returns, against exact L2 on the same data.
sample = queries[:100]
res = client.search("bench", data=sample.tolist(), limit=10, search_params={"params": {"ef": a.ef}})
if truth is None:
    if metric == "IP":
        truth = np.argsort(-(sample @ data.T), axis=1)[:, :10]
    else:
        d2 = (sample**2).sum(1)[:, None] + (data**2).sum(1)[None, :] - 2 * sample @ data.T
        truth = np.argsort(d2, axis=1)[:, :10]
out["recall@10"] = round(
    float(np.mean([len(set(h.id for h in r) & set(truth[i])) / 10 for i, r in enumerate(res)])), 3
)


# ---------------------------------------------------------------- search QPS
def run(threads):
    stop = time.perf_counter() + a.seconds
    counts = [0] * threads

    def worker(k):
        c = client if threads == 1 else MilvusClient(a.uri)
        i = k
        while time.perf_counter() < stop:
            c.search("bench", data=[queries[i % len(queries)].tolist()], limit=10, search_params={"params": {"ef": a.ef}})
            counts[k] += 1
            i += threads

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return round(sum(counts) / (time.perf_counter() - t0))


out["qps_1"] = run(1)
out[f"qps_{a.threads}"] = run(a.threads)
client.drop_collection("bench")
print(json.dumps(out))
