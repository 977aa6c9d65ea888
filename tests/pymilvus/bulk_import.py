"""pymilvus's bulk-import helpers (pymilvus.bulk_writer.bulk_import: bulk_import,
get_import_progress, list_import_jobs), unchanged, against a Magpie server.

    python bulk_import.py URI IMPORT_DIR

Writes a NumPy file group, a JSON file and a Parquet file (pyarrow) into IMPORT_DIR (the server's import folder),
imports both through pymilvus's REST helpers, waits for the jobs, and prints a JSON
summary (job states, rows, counts) for the Rust test to check. The helpers' module is
loaded from its file: the bulk_writer package's __init__ also wants optional extras
(minio, azure, ml_dtypes) that only its file writers use.
"""
import importlib.util, json, os, sys, time

import numpy as np
import pymilvus
from pymilvus import MilvusClient, DataType

uri, root = sys.argv[1], sys.argv[2]
path = os.path.join(os.path.dirname(pymilvus.__file__), "bulk_writer", "bulk_import.py")
spec = importlib.util.spec_from_file_location("pymilvus_bulk_import", path)
bi = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bi)

c = MilvusClient(uri=uri)
schema = MilvusClient.create_schema(auto_id=False)
schema.add_field("id", DataType.INT64, is_primary=True)
schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
schema.add_field("tag", DataType.VARCHAR, max_length=16)
idx = c.prepare_index_params()
idx.add_index(field_name="vector", index_type="HNSW", metric_type="L2")
c.create_collection("bulk", schema=schema, index_params=idx)

rng = np.random.default_rng(7)
os.makedirs(os.path.join(root, "g1"), exist_ok=True)
n = 3000
vecs = rng.random((n, 8), dtype=np.float32)
np.save(os.path.join(root, "g1", "id.npy"), np.arange(n, dtype=np.int64))
np.save(os.path.join(root, "g1", "vector.npy"), vecs)
np.save(os.path.join(root, "g1", "tag.npy"), np.array([f"t{i % 3}" for i in range(n)]))
with open(os.path.join(root, "more.json"), "w") as f:
    json.dump({"rows": [{"id": n + i, "vector": [0.5] * 8, "tag": "json"} for i in range(200)]}, f)

# Parquet as pymilvus's BulkWriter writes it (pyarrow: vectors as list<float>).
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"id": pa.array(range(5000, 5150), pa.int64()),
                         "vector": pa.array([[0.75] * 8] * 150, pa.list_(pa.float32())),
                         "tag": pa.array(["pq"] * 150)}),
               os.path.join(root, "p.parquet"))
resp = bi.bulk_import(url=uri, collection_name="bulk",
                      files=[["g1/id.npy", "g1/vector.npy", "g1/tag.npy"], ["more.json"], ["p.parquet"]])
job = resp.json()["data"]["jobId"]
deadline = time.time() + 60
while True:
    p = bi.get_import_progress(url=uri, job_id=job).json()["data"]
    if p["state"] in ("Completed", "Failed") or time.time() > deadline:
        break
    time.sleep(0.05)
jobs = bi.list_import_jobs(url=uri, collection_name="bulk").json()["data"]["records"]

# The ORM's gRPC calls: utility.do_bulk_insert / get_bulk_insert_state /
# list_bulk_insert_tasks (Milvus's Import, GetImportState, ListImportTasks RPCs).
from pymilvus import connections, utility, BulkInsertState
connections.connect(uri=uri)
with open(os.path.join(root, "grpc.json"), "w") as f:
    json.dump([{"id": 10_000 + i, "vector": [0.25] * 8, "tag": "grpc"} for i in range(100)], f)
task = utility.do_bulk_insert(collection_name="bulk", files=["grpc.json"])
deadline = time.time() + 60
while True:
    st = utility.get_bulk_insert_state(task_id=task)
    if st.state in (BulkInsertState.ImportCompleted, BulkInsertState.ImportFailed) or time.time() > deadline:
        break
    time.sleep(0.05)
grpc_tasks = utility.list_bulk_insert_tasks(collection_name="bulk")
try:
    utility.do_bulk_insert(collection_name="bulk", files=["../outside.json"])
    refused = ""
except Exception as e:  # pymilvus raises the server's reason
    refused = str(e)
c.load_collection("bulk")
count = c.query("bulk", filter="", output_fields=["count(*)"])[0]["count(*)"]
tags = c.query("bulk", filter='tag == "json"', output_fields=["count(*)"])[0]["count(*)"]
pq_rows = c.query("bulk", filter='tag == "pq"', output_fields=["count(*)"])[0]["count(*)"]
hit = c.search("bulk", data=[vecs[1234].tolist()], limit=1, consistency_level="Strong")[0][0]["id"]
print(json.dumps({"state": p["state"], "reason": p.get("reason", ""), "importedRows": p["importedRows"],
                  "files": len(p["details"]), "listed": [j["jobId"] for j in jobs] == [job],
                  "count": count, "json_rows": tags, "parquet_rows": pq_rows, "nearest_of_1234": hit,
                  "grpc_state": st.state_name, "grpc_rows": st.row_count,
                  "grpc_reason": st.failed_reason, "grpc_tasks": len(grpc_tasks),
                  "grpc_refused": refused}))
