#!/usr/bin/env bash
# Fan-out overhead of cluster mode against the standalone server, same binary, same
# dataset, one run: `magpie bench --url` (HNSW, ef sweep, 1000 queries, 1 and 2 client
# threads) against
#   1. a standalone server;
#   2. a local cluster (scripts/cluster.sh) with 1 data node, 1 query node, 1 shard: the
#      cost of the proxy hop alone;
#   3. the same with 3 query nodes and 3 shards: every search fans out to 3 nodes and
#      is merged.
# and the resident memory of every process after the run.
#   bench/cluster/fanout.sh [DATASET_DIR] [WORK_DIR]
# Needs etcd, nats-server and weed (see scripts/cluster.sh). Results under WORK_DIR:
# *.bench (the bench output), rss.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
DS=${1:-../shared/bench/synth-clustered}
DS=$(cd "$DS" && pwd)
W=${2:-/tmp/magpie-cluster-bench}; rm -rf "$W"; mkdir -p "$W"
SWEEP=${SWEEP:-32,64}
rss() { # label pid...
    local label=$1; shift
    for p in "$@"; do
        echo "$label $(ps -o comm= -p "$p" 2>/dev/null) pid $p rss_mib $(( $(ps -o rss= -p "$p" 2>/dev/null || echo 0) / 1024 ))" >> "$W/rss.txt"
    done
}
bench() { # name url extra...
    local name=$1 url=$2; shift 2
    "$M" bench --dataset "$DS" --index HNSW --url "$url" --sweep "$SWEEP" --queries 1000 \
        --json "$W/$name.json" "$@" > "$W/$name.bench" 2>&1
}

# 1. standalone
MAGPIE_LOG=warn "$M" serve --listen 127.0.0.1:29621 --data-dir "$W/standalone" > "$W/standalone.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -s http://127.0.0.1:29621/healthz >/dev/null && break; sleep 0.2; done
bench standalone http://127.0.0.1:29621
rss standalone "$pid"
kill -TERM "$pid"; wait "$pid" || true

# 2 and 3: clusters
export MAGPIE_CHECKPOINT_SECS=${MAGPIE_CHECKPOINT_SECS:-30} MAGPIE_REPLICA_REFRESH_SECS=2 MAGPIE_LOG=warn MAGPIE_BIN=$M
cluster() { # name shards query_nodes
    local name=$1 shards=$2 q=$3
    MAGPIE_CLUSTER_DIR="$W/$name" MAGPIE_PORT=29622 DATA_NODES=1 QUERY_NODES=$q scripts/cluster.sh up > "$W/$name.up" 2>&1
    bench "$name" http://127.0.0.1:29622 --shards "$shards"
    while read -r p n; do rss "$name:$n" "$p"; done < "$W/$name/pids"
    MAGPIE_CLUSTER_DIR="$W/$name" scripts/cluster.sh down > /dev/null
}
cluster cluster-1shard 1 1
cluster cluster-3shards 3 3
grep -h -A30 "recall" "$W"/*.bench | head -60
cat "$W/rss.txt"
