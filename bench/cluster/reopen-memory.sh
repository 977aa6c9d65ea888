#!/usr/bin/env bash
# A query node's memory across reopens: 200,000 × 128 vectors (synth-clustered's base set
# imported twice) in a 2-shard collection on a local cluster with 1 data node and 1 query
# node, then 50 new rows a second so that the data node checkpoints and the query node
# reopens each shard on the newer checkpoint every ~2 s. Every 15 s it prints the query
# node's RSS, its live engines (`magpie_node_engines`), the reopens so far and the
# broker's consumers.
#   bench/cluster/reopen-memory.sh [DATASET_DIR] [SECONDS] [WORK_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli || exit 1
M=$PWD/target/release/magpie
DS=${1:-../shared/bench/synth-clustered}
DS=$(cd "$DS" && pwd)
SECS=${2:-240}
W=${3:-/tmp/magpie-reopen-memory}; rm -rf "$W"; mkdir -p "$W"
export MAGPIE_CHECKPOINT_SECS=2 MAGPIE_REPLICA_REFRESH_SECS=2 MAGPIE_LOG=warn,magpie_cluster=info MAGPIE_BIN=$M
export MAGPIE_CLUSTER_DIR=$W/cluster MAGPIE_PORT=29641 DATA_NODES=1 QUERY_NODES=1
U=http://127.0.0.1:29641
scripts/cluster.sh up > "$W/up.txt" 2>&1 || { cat "$W/up.txt"; exit 1; }
trap 'scripts/cluster.sh down > /dev/null' EXIT
curl -s -H 'Content-Type: application/json' -d '{"collectionName":"m","dimension":128,"metricType":"L2","shardsNum":2}' \
    "$U/v2/vectordb/collections/create" > /dev/null
for k in 0 1; do
    "$M" import --url "$U" --collection m --id-start $((k * 100000)) "$DS/base.fvecs" >> "$W/import.log" 2>&1 || exit 1
done
qurl=$(scripts/cluster.sh status | awk '$2 ~ /^query/ {print $4}')
qpid=$(scripts/cluster.sh status | awk '$2 ~ /^query/ {gsub(/[()]/, "", $3); print $3}')
qlog=$(ls "$W"/cluster/logs/query*.log)
nm=$(ps -eo args | grep "nats-server -js" | grep -- "-sd $W" | sed -E 's/.* -m ([0-9]+).*/\1/' | head -1)
consumers() {
    curl -s "http://127.0.0.1:$nm/jsz?streams=true" | python3 -c 'import json, sys
v = json.load(sys.stdin)
print(sum(s["state"]["consumer_count"] for a in v.get("account_details", []) for s in a.get("stream_detail", [])))'
}
id=1000000
for t in $(seq 0 "$SECS"); do
    python3 -c "import json, random; print(json.dumps({'collectionName': 'm', 'data': [{'id': $id + i, 'vector': [round(random.random(), 4) for _ in range(128)]} for i in range(50)]}))" > "$W/rows.json"
    curl -s -H 'Content-Type: application/json' -d @"$W/rows.json" "$U/v2/vectordb/entities/insert" > /dev/null
    id=$((id + 50))
    if [ $((t % 15)) -eq 0 ]; then
        eng=$(curl -s "$qurl/metrics" | awk '/^magpie_node_engines / {print $2}')
        echo "t $t rss_mib $(( $(ps -o rss= -p "$qpid") / 1024 )) engines $eng reopens $(grep -c 'replica reopened' "$qlog") consumers $(consumers)"
    fi
    sleep 1
done
