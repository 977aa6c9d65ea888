"""pymilvus (gRPC) against REST on one server, the same work each way: inserts of client-
given keys in batches from one client, then one-query searches from one client, on a
fresh collection per protocol (FLAT index, so no index build runs beside the work).

    python bench/cluster/clients.py URL [--rows N] [--batch B] [--queries Q] [--dim D] [--shards S]

Prints one line per protocol: insert rows/s and search queries/s (median of 3 passes).
bench/cluster/clients.sh runs it against standalone and against a local cluster.
"""

import argparse
import json
import random
import statistics
import time
import urllib.request

from pymilvus import DataType, MilvusClient

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--rows", type=int, default=20000)
ap.add_argument("--batch", type=int, default=1000)
ap.add_argument("--queries", type=int, default=500)
ap.add_argument("--dim", type=int, default=128)
ap.add_argument("--shards", type=int, default=2)
a = ap.parse_args()

rng = random.Random(11)
vecs = [[rng.uniform(-1, 1) for _ in range(a.dim)] for _ in range(a.rows)]
queries = [vecs[rng.randrange(a.rows)] for _ in range(a.queries)]


def rest(path, body):
    req = urllib.request.Request(
        f"{a.url}/v2/vectordb/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        v = json.loads(r.read())
    assert v.get("code") == 0, v
    return v


client = MilvusClient(a.url)


def setup(name):
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=a.dim)
    ip = client.prepare_index_params()
    ip.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=ip, shards_num=a.shards, consistency_level="Strong")


def run(proto):
    name = f"bench_{proto}"
    setup(name)
    t0 = time.perf_counter()
    for s in range(0, a.rows, a.batch):
        rows = [{"id": i, "v": vecs[i]} for i in range(s, min(s + a.batch, a.rows))]
        if proto == "grpc":
            client.insert(name, rows)
        else:
            rest("entities/insert", {"collectionName": name, "data": rows})
    ins = a.rows / (time.perf_counter() - t0)
    qps = []
    for _ in range(3):
        t0 = time.perf_counter()
        for q in queries:
            if proto == "grpc":
                r = client.search(name, data=[q], limit=10, consistency_level="Eventually")
                assert len(r[0]) == 10
            else:
                r = rest(
                    "entities/search",
                    {"collectionName": name, "data": [q], "limit": 10, "consistencyLevel": "Eventually"},
                )
                assert len(r["data"]) == 10
        qps.append(a.queries / (time.perf_counter() - t0))
    client.drop_collection(name)
    print(f"{proto}: insert {ins:.0f} rows/s, search {statistics.median(qps):.0f} q/s "
          f"({a.rows} x {a.dim}, batches of {a.batch}, {a.shards} shards, {a.queries} queries x 3)")


for proto in ("rest", "grpc", "rest", "grpc"):
    run(proto)
