#!/usr/bin/env python3
"""Insert throughput through one REST endpoint (a standalone server or a cluster proxy),
three ways, in one run:

  insert  - client-given primary keys: a cluster proxy looks the batch's keys up on
            their shards and holds the collection's insert lock until the batch is
            logged (standalone's duplicate-key refusal);
  upsert  - the same rows as upserts: no lookup, no lock;
  autoid  - a collection with autoId: no keys to look up.

Request bodies are serialised before the clock starts, so the client's JSON encoding
is not measured. Every request must succeed.

    bench/cluster/insert.py URL [--rows 50000] [--batch 1000] [--clients 4] [--shards 2]
                               [--index AUTOINDEX|FLAT]
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse

p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("--rows", type=int, default=50000)
p.add_argument("--batch", type=int, default=1000)
p.add_argument("--clients", type=int, default=4)
p.add_argument("--shards", type=int, default=2)
p.add_argument("--dim", type=int, default=128)
p.add_argument("--index", default="AUTOINDEX", help="FLAT: no index builds beside the inserts")
a = p.parse_args()
u = urllib.parse.urlparse(a.url)


def post(conn, path, body):
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    v = json.loads(data)
    if r.status != 200 or v.get("code") != 0:
        raise SystemExit(f"{path}: {r.status} {data[:300]!r}")
    return v


def conn():
    return http.client.HTTPConnection(u.hostname, u.port, timeout=300)


c = conn()
rng = random.Random(7)
vecs = [[rng.random() for _ in range(a.dim)] for _ in range(4096)]
results = []
for mode in ["insert", "upsert", "autoid"]:
    name = f"ins_{mode}"
    if post(c, "/v2/vectordb/collections/has", json.dumps({"collectionName": name}))["data"]["has"]:
        post(c, "/v2/vectordb/collections/drop", json.dumps({"collectionName": name}))
    post(
        c,
        "/v2/vectordb/collections/create",
        json.dumps(
            {
                "collectionName": name,
                "shardsNum": a.shards,
                "schema": {
                    "autoId": mode == "autoid",
                    "fields": [
                        {"fieldName": "id", "dataType": "Int64", "isPrimary": True},
                        {"fieldName": "v", "dataType": "FloatVector", "elementTypeParams": {"dim": a.dim}},
                    ],
                },
                "indexParams": [{"fieldName": "v", "metricType": "L2", "indexType": a.index}],
            }
        ),
    )
    ep = "/v2/vectordb/entities/upsert" if mode == "upsert" else "/v2/vectordb/entities/insert"
    bodies = []
    for b in range(0, a.rows, a.batch):
        rows = []
        for i in range(b, min(b + a.batch, a.rows)):
            r = {"v": vecs[i % len(vecs)]}
            if mode != "autoid":
                r["id"] = i
            rows.append(r)
        bodies.append(json.dumps({"collectionName": name, "data": rows}).encode())
    work = list(enumerate(bodies))
    lock = threading.Lock()
    errors = []

    def client():
        k = conn()
        try:
            while True:
                with lock:
                    if not work:
                        return
                    _, body = work.pop()
                post(k, ep, body)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{mode}: {errors[0]}")
    results.append((mode, a.rows / dt, dt))
    print(f"{a.index:9s} {mode:7s} {a.rows} rows in {dt:6.2f} s: {a.rows / dt:8.0f} rows/s", flush=True)
