#!/usr/bin/env python3
"""Bulk import against REST inserts, on one of ../shared/bench's datasets.

Writes the dataset's base vectors as `id.npy` + `vector.npy`, as one JSON list of rows
and as a Parquet file (pyarrow, Snappy) into a fresh server's import folder, imports each into a new collection (HNSW
index) through `jobs/import/create`, polls `get_progress` until it is done, checks
`count(*)`, then inserts the same vectors over REST with `magpie import` (batches of
1,000, one client). Prints rows/s for each. Needs numpy and pyarrow (both in the
pymilvus test venv).

    python3 bench/import/run.py ../shared/bench/synth-clustered 19611 target/release/magpie
"""
import json, os, sys, time, urllib.request, subprocess, numpy as np, shutil, tempfile
ds = sys.argv[1]; port = int(sys.argv[2]); binary = sys.argv[3]
raw = np.fromfile(f"{ds}/base.fvecs", dtype=np.int32)
dim = raw[0]; base = raw.reshape(-1, dim + 1)[:, 1:].view(np.float32).copy()
n = base.shape[0]
data = tempfile.mkdtemp(prefix="magpie-imp-")
imp = os.path.join(data, "import"); os.makedirs(os.path.join(imp, "npy"))
np.save(os.path.join(imp, "npy/id.npy"), np.arange(n, dtype=np.int64))
np.save(os.path.join(imp, "npy/vector.npy"), base)
with open(os.path.join(imp, "rows.json"), "w") as f:
    json.dump([{"id": int(n + i), "vector": base[i].tolist()} for i in range(n)], f)
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), int(dim))}),
               os.path.join(imp, "rows.parquet"))
sizes = {k: os.path.getsize(os.path.join(imp, p)) for k, p in [("npy", "npy/vector.npy"), ("json", "rows.json"), ("parquet", "rows.parquet")]}
srv = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def call(ep, body):
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v2/vectordb/{ep}", json.dumps(body).encode(), {"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(r).read())
for _ in range(100):
    try: call("collections/list", {}); break
    except Exception: time.sleep(0.1)
try:
    for name, files in [("npy", [["npy/id.npy", "npy/vector.npy"]]), ("json", [["rows.json"]]), ("parquet", [["rows.parquet"]])]:
        coll = f"c_{name}"
        call("collections/create", {"collectionName": coll, "schema": {"autoId": False, "fields": [
            {"fieldName": "id", "dataType": "Int64", "isPrimary": True},
            {"fieldName": "vector", "dataType": "FloatVector", "elementTypeParams": {"dim": int(dim)}}]},
            "indexParams": [{"fieldName": "vector", "metricType": "L2", "params": {"index_type": "HNSW"}}]})
        t0 = time.time()
        job = call("jobs/import/create", {"collectionName": coll, "files": files})["data"]["jobId"]
        while True:
            p = call("jobs/import/get_progress", {"jobId": job})["data"]
            if p["state"] in ("Completed", "Failed"): break
            time.sleep(0.01)
        dt = time.time() - t0
        print(f"{name}: {p['state']} {p.get('reason','')} rows={p['importedRows']} in {dt:.2f}s = {p['importedRows']/dt:,.0f} rows/s (file {sizes[name]/1e6:.1f} MB)")
        c = call("entities/query", {"collectionName": coll, "filter": "", "outputFields": ["count(*)"]})
        print("  count", c["data"][0]["count(*)"])
    t0 = time.time()
    subprocess.run([binary, "import", "--url", f"http://127.0.0.1:{port}", "--collection", "c_rest", f"{ds}/base.fvecs"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.time() - t0
    print(f"REST inserts (magpie import, batches of 1000, one client): {n} rows in {dt:.2f}s = {n/dt:,.0f} rows/s")
finally:
    srv.terminate(); srv.wait(); shutil.rmtree(data)
