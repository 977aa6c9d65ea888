#!/usr/bin/env bash
# Capacity split of cluster mode: 1,000,000 × 128 vectors (synth-clustered's base set
# imported ten times under different ids) into a 12-shard collection on a local cluster
# with 1 data node and 3 query nodes; then a 4th query node joins. Records each node's
# shards, rows and segments (from its /metrics) and RSS, before and after.
#   bench/cluster/capacity.sh [DATASET_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
DS=${1:-../shared/bench/synth-clustered}
DS=$(cd "$DS" && pwd)
W=${2:-/tmp/magpie-cluster-capacity}; rm -rf "$W"; mkdir -p "$W"
export MAGPIE_CHECKPOINT_SECS=10 MAGPIE_REPLICA_REFRESH_SECS=2 MAGPIE_LOG=warn MAGPIE_BIN=$M
export MAGPIE_CLUSTER_DIR=$W/cluster MAGPIE_PORT=29631 DATA_NODES=1 QUERY_NODES=3
U=http://127.0.0.1:29631
post() { curl -s -H 'Content-Type: application/json' -d "$2" "$U/v2/vectordb/$1"; }
scripts/cluster.sh up > "$W/up.txt" 2>&1
trap 'scripts/cluster.sh down > /dev/null' EXIT
post collections/create '{"collectionName":"cap","dimension":128,"metricType":"L2","shardsNum":12}' > /dev/null
t0=$(date +%s)
for k in $(seq 0 9); do
    "$M" import --url "$U" --collection cap --id-start $((k * 100000)) "$DS/base.fvecs" >> "$W/import.log" 2>&1
done
t1=$(date +%s)
post collections/flush '{"collectionName":"cap"}' > /dev/null
Q=$(python3 -c 'import struct; f=open("'"$DS"'/query.fvecs","rb"); d=struct.unpack("<i", f.read(4))[0]; v=struct.unpack("<%df"%d, f.read(4*d)); print("[" + ",".join("%g"%x for x in v) + "]")')
search() { post entities/search "{\"collectionName\":\"cap\",\"data\":[$Q],\"limit\":10,\"consistencyLevel\":\"Strong\"}"; }
for _ in $(seq 1 3600); do
    search | grep -q '"exactSegments":0' && break
    sleep 1
done
t2=$(date +%s)
echo "import_s $((t1 - t0)) flush_to_all_indexed_s $((t2 - t1))" > "$W/times.txt"
post entities/query '{"collectionName":"cap","filter":"","outputFields":["count(*)"],"consistencyLevel":"Strong"}' > "$W/count.json"
snapshot() { # label
    scripts/cluster.sh status | while read -r state name pid url; do
        case $name in query*|data*) ;; *) continue ;; esac
        pid=${pid//[()]/}
        m=$(curl -s "$url/metrics")
        shards=$(echo "$m" | grep -c '^magpie_node_shard_rows{')
        rows=$(echo "$m" | awk '/^magpie_node_shard_rows\{/ {s += $2} END {print s+0}')
        segs=$(echo "$m" | awk '/^magpie_node_shard_segments\{/ {s += $2} END {print s+0}')
        echo "$1 $name shards $shards rows $rows segments $segs rss_mib $(( $(ps -o rss= -p "$pid") / 1024 ))"
    done >> "$W/snapshots.txt"
}
snapshot before
search > "$W/search-before.json"
scripts/cluster.sh add query query4 >> "$W/up.txt"
for _ in $(seq 1 600); do
    n=$(curl -s "$(scripts/cluster.sh status | awk '$2 == "query4" {print $4}')/metrics" | grep -c '^magpie_node_shard_rows{' || true)
    [ "$n" -ge 3 ] && break
    sleep 1
done
sleep 5
snapshot after
search > "$W/search-after.json"
cat "$W/times.txt" "$W/count.json"; echo
cat "$W/snapshots.txt"
cmp <(python3 -c 'import json,sys; print([h["id"] for h in json.load(open(sys.argv[1]))["data"]])' "$W/search-before.json") \
    <(python3 -c 'import json,sys; print([h["id"] for h in json.load(open(sys.argv[1]))["data"]])' "$W/search-after.json") \
    && echo "same top-10 before and after the 4th node"
