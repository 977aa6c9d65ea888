#!/usr/bin/env bash
# Insert throughput through REST, standalone against a local cluster (scripts/cluster.sh:
# 1 data node, 1 query node, collections of 2 shards), same binary, one run each:
# bench/cluster/insert.py's three ways (client-given keys, which a cluster proxy looks
# up and serialises per collection; upserts; auto ids), with a FLAT index (no index
# builds beside the inserts) and with AUTOINDEX (HNSW on sealed segments and interim
# graphs on growing ones, built while the inserts run), twice per target.
#   bench/cluster/insert.sh [WORK_DIR]
# Needs etcd, nats-server and weed (see scripts/cluster.sh). Output: WORK_DIR/*.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
W=${1:-/tmp/magpie-insert-bench}; rm -rf "$W"; mkdir -p "$W"
ARGS=${ARGS:---rows 50000 --batch 1000 --clients 4 --shards 2}

MAGPIE_LOG=warn "$M" serve --listen 127.0.0.1:29631 --data-dir "$W/standalone" > "$W/standalone.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -s http://127.0.0.1:29631/healthz >/dev/null && break; sleep 0.2; done
for run in 1 2; do for ix in FLAT AUTOINDEX; do
    python3 bench/cluster/insert.py http://127.0.0.1:29631 $ARGS --index $ix | sed "s/^/standalone run $run: /" | tee -a "$W/standalone.txt"
done; done
kill -TERM "$pid"; wait "$pid" || true

export MAGPIE_LOG=warn MAGPIE_BIN=$M
MAGPIE_CLUSTER_DIR="$W/cluster" MAGPIE_PORT=29632 DATA_NODES=1 QUERY_NODES=1 scripts/cluster.sh up > "$W/cluster.up" 2>&1
for run in 1 2; do for ix in FLAT AUTOINDEX; do
    python3 bench/cluster/insert.py http://127.0.0.1:29632 $ARGS --index $ix | sed "s/^/cluster run $run: /" | tee -a "$W/cluster.txt"
done; done
MAGPIE_CLUSTER_DIR="$W/cluster" scripts/cluster.sh down > /dev/null
