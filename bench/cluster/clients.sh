#!/usr/bin/env bash
# pymilvus (gRPC) against REST, standalone and through a local cluster's proxy
# (scripts/cluster.sh: 1 data node, 1 query node; collections of 2 shards), same binary:
# bench/cluster/clients.py, each protocol twice, interleaved.
#   bench/cluster/clients.sh [WORK_DIR]
# Needs etcd, nats-server and weed (see scripts/cluster.sh), and pymilvus
# (target/pymilvus-venv, made by tests/pymilvus/setup.sh). Output: WORK_DIR/*.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
PY=$(sh tests/pymilvus/setup.sh "$PWD/target/pymilvus-venv")
W=${1:-/tmp/magpie-clients-bench}; rm -rf "$W"; mkdir -p "$W"

MAGPIE_LOG=warn "$M" serve --listen 127.0.0.1:29641 --data-dir "$W/standalone" > "$W/standalone.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -s http://127.0.0.1:29641/healthz >/dev/null && break; sleep 0.2; done
"$PY" bench/cluster/clients.py http://127.0.0.1:29641 | sed "s/^/standalone: /" | tee "$W/standalone.txt"
kill -TERM "$pid"; wait "$pid" || true

export MAGPIE_LOG=warn MAGPIE_BIN=$M
MAGPIE_CLUSTER_DIR="$W/cluster" MAGPIE_PORT=29642 DATA_NODES=1 QUERY_NODES=1 scripts/cluster.sh up > "$W/cluster.up" 2>&1
"$PY" bench/cluster/clients.py http://127.0.0.1:29642 | sed "s/^/cluster: /" | tee "$W/cluster.txt"
MAGPIE_CLUSTER_DIR="$W/cluster" scripts/cluster.sh down > /dev/null
