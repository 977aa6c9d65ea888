#!/usr/bin/env bash
# Many queries per search request against one per request, over REST, on a collection
# scanned exactly (FLAT, the default) or indexed (INDEX=HNSW, …), for two server binaries
# side by side in one run.
#   MAGPIE_A=/path/old MAGPIE_B=/path/new bench/http/batch_queries.sh DATASET_DIR [NQ]
# DATASET_DIR holds base.fvecs / query.fvecs (bench/scale/gen.py or ../shared/bench/*).
# For each binary: `magpie serve` (default segments: 100k rows), loaded once with B's
# `magpie bench --index $INDEX --url --keep` (which waits for the indexes); then,
# alternating A B A B … REPS times, the first NQ queries sent as NQ requests of one query
# and as one request of NQ queries (curl, one keep-alive connection each). Prints the median wall time of each and the
# queries per second. Answers are checked equal (same ids per query both ways).
# CLIENTS=N (default 1) runs N such clients at once for each (N × NQ queries), to see
# what a server loaded by several clients does. The batch is sent BATCHES times (default
# 10) on one connection and timed per request, so curl's start is not what is measured.
# EF=N sends searchParams.params.ef (indexed collections).
set -euo pipefail
cd "$(dirname "$0")/../.."
DS=${1:?dataset dir}; NQ=${2:-64}; REPS=${REPS:-5}; PORT=${PORT:-29711}; CLIENTS=${CLIENTS:-1}
INDEX=${INDEX:-FLAT}; BATCHES=${BATCHES:-10}; EF=${EF:-}
W=${W:-/tmp/magpie-batch-queries}; rm -rf "$W"; mkdir -p "$W"
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null || true' EXIT
declare -A URL
for side in A B; do
    bin_var=MAGPIE_$side; bin=${!bin_var:?set MAGPIE_A and MAGPIE_B}
    MAGPIE_LOG=warn "$bin" serve --listen 127.0.0.1:$PORT --data-dir "$W/data-$side" > "$W/server-$side.out" 2>&1 &
    pids+=($!)
    URL[$side]=http://127.0.0.1:$PORT
    for _ in $(seq 1 100); do curl -sf "${URL[$side]}/healthz" >/dev/null && break; sleep 0.2; done
    # Loaded by B's client, whatever the servers (the load is not what is measured).
    "$MAGPIE_B" bench --dataset "$DS" --index "$INDEX" --queries 100 --url "${URL[$side]}" --keep > "$W/load-$side.out" 2>&1
    PORT=$((PORT + 1))
done
python3 - "$DS" "$NQ" "$W" "$EF" <<'PY'
import json, struct, sys
ds, nq, w, ef = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
qs = []
with open(f"{ds}/query.fvecs", "rb") as f:
    while len(qs) < nq:
        d = struct.unpack("<i", f.read(4))[0]
        qs.append(list(struct.unpack(f"<{d}f", f.read(4 * d))))
def body(v):
    b = {"collectionName": "magpie_bench", "data": v, "limit": 10, "consistencyLevel": "Eventually"}
    if ef:
        b["searchParams"] = {"params": {"ef": int(ef)}}
    return b
json.dump(body(qs), open(f"{w}/batch.json", "w"))
for i, q in enumerate(qs):
    json.dump(body([q]), open(f"{w}/one-{i}.json", "w"))
PY
one_client() { # URL C -> NQ single-query requests on one keep-alive connection
    local args=()
    for i in $(seq 0 $((NQ - 1))); do
        [ "$i" -gt 0 ] && args+=(--next)
        args+=(-s -H 'Content-Type: application/json' -d @"$W/one-$i.json" -o "$W/one-$i.out.$2" "$1/v2/vectordb/entities/search")
    done
    curl "${args[@]}"
}
batch_client() { # URL C -> BATCHES requests of NQ queries on one keep-alive connection
    local args=()
    for i in $(seq 1 "$BATCHES"); do
        [ "$i" -gt 1 ] && args+=(--next)
        args+=(-s -o "$W/batch.out.$2" -H 'Content-Type: application/json' -d @"$W/batch.json" "$1/v2/vectordb/entities/search")
    done
    curl "${args[@]}"
}
clients() { # FN URL [N] -> wall seconds of CLIENTS clients at once, per request of N (1)
    local t0 t1 n=${3:-1}
    t0=$(date +%s.%N)
    for c in $(seq 1 "$CLIENTS"); do "$1" "$2" "$c" & done
    wait
    t1=$(date +%s.%N)
    python3 -c "print(f'{($t1 - $t0) / $n:.4f}')"
}
one() { clients one_client "$1"; }
batch() { clients batch_client "$1" "$BATCHES"; }
for r in $(seq 1 "$REPS"); do
    for side in A B; do
        echo "$side one $(one "${URL[$side]}")" >> "$W/times"
        echo "$side batch $(batch "${URL[$side]}")" >> "$W/times"
    done
done
python3 - "$W" "$NQ" "$CLIENTS" "$BATCHES" <<'PY'
import json, statistics, sys
w, nq, clients, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = {}
for line in open(f"{w}/times"):
    side, kind, s = line.split()
    t.setdefault((side, kind), []).append(float(s))
# The last run's answers: the batch's hits per query equal the single searches'.
singles = [[h["id"] for h in json.load(open(f"{w}/one-{i}.out.1"))["data"]] for i in range(nq)]
b = json.load(open(f"{w}/batch.out.1"))
ids, per = [h["id"] for h in b["data"]], []
for n in b["topks"]:
    per.append(ids[:n]); ids = ids[n:]
assert per == singles, "batched answers differ from single searches"
print(f"{clients} client(s) at once")
print(f"| binary | {nq} requests of 1 query: s (median of {len(t[('A','one')])}) | 1 request of {nq} queries: s (each of {batches} on one connection) | queries/s, one by one | queries/s, batched |")
print("|---|---|---|---|---|")
for side in ("A", "B"):
    o, b = statistics.median(t[(side, "one")]), statistics.median(t[(side, "batch")])
    print(f"| {side} | {o:.3f} | {b:.4f} | {clients * nq / o:,.0f} | {clients * nq / b:,.0f} |")
PY
