#!/usr/bin/env bash
# The request path: the same searches in-process and over HTTP, side by side in one run.
#   bench/http/request_path.sh [WORK_DIR]
# For each dataset (synth-clustered ef=24 and minilm-real ef=48: the smallest ef reaching
# recall@10 >= 0.95, plus the 0.95 recall target), HNSW_SQ:
#   1. `magpie bench --reopen` in-process (the engine reopened after the build, so that it
#      reads the index and vectors from their files as the server does): QPS with 1 and 2
#      threads and with CLIENTS threads;
#   2. two `magpie serve` (one segment per collection, as in-process), one running short
#      searches on its async workers (the default) and one sending every search to the
#      blocking pool (`--search-inline-us 0`), each loaded once with
#      `magpie bench --url --keep`, then RUNS runs each with `--reuse`: QPS with 1 and 2
#      clients and CLIENTS clients, the round trip of GET /healthz on the same connection
#      (the floor), and from the server's /metrics per search: its CPU µs, the µs spent
#      in the engine, and the share run on an async worker;
#   3. a summary: medians of the HTTP runs and their ratio to in-process.
# Everything runs on this machine. By default the clients share the cores with the
# server; on a machine with cores to spare, SERVER_CPUS and CLIENT_CPUS (taskset lists,
# e.g. SERVER_CPUS=0,1 CLIENT_CPUS=2-15) pin the servers and the in-process bench to the
# first set and the HTTP clients to the second.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-8}
PORT=${PORT:-29631}
if [ -z "${MAGPIE_BIN:-}" ]; then
    cargo build --release -q -p magpie-cli
    MAGPIE_BIN=$PWD/target/release/magpie
fi
M=$MAGPIE_BIN
SRV=() CLI=()
if [ -n "${SERVER_CPUS:-}" ]; then SRV=(taskset -c "$SERVER_CPUS"); fi
if [ -n "${CLIENT_CPUS:-}" ]; then CLI=(taskset -c "$CLIENT_CPUS"); fi
W=${1:-/tmp/magpie-request-path}; rm -rf "$W"; mkdir -p "$W"
# Two servers, identical but for where searches run: on the async workers when short
# (the default, `--search-inline-us 1000`) or always on the blocking pool (0).
declare -A URL
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null || true' EXIT
for mode in workers:1000 pool:0; do
    name=${mode%%:*} us=${mode##*:}
    MAGPIE_LOG=warn "${SRV[@]}" "$M" serve --listen 127.0.0.1:$PORT --data-dir "$W/data-$name" \
        --seal-rows 200000 --seal-bytes 1000000000 --search-inline-us "$us" > "$W/server-$name.out" 2>&1 &
    pids+=($!)
    URL[$name]=http://127.0.0.1:$PORT
    for _ in $(seq 1 100); do curl -sf "${URL[$name]}/healthz" >/dev/null && break; sleep 0.2; done
    PORT=$((PORT + 1))
done
for spec in synth-clustered:24 minilm-real:48; do
    ds=${spec%%:*} ef=${spec##*:}
    common=(--dataset "$SHARED/bench/$ds" --index HNSW_SQ --sweep "$ef" --recall-targets 0.95 --clients "$CLIENTS")
    echo "== $ds: in-process" >&2
    "${SRV[@]}" "$M" bench "${common[@]}" --reopen --json "$W/$ds-inproc.json" > "$W/$ds-inproc.out" 2>&1
    for name in workers pool; do
        echo "== $ds: over HTTP ($name), load and build" >&2
        "${CLI[@]}" "$M" bench "${common[@]}" --url "${URL[$name]}" --keep > "$W/$ds-$name-0.out" 2>&1
    done
    # Alternating, so that a slower minute of this shared machine hits both alike.
    for r in $(seq 1 "$RUNS"); do
        for name in workers pool; do
            echo "== $ds: over HTTP ($name), run $r" >&2
            "${CLI[@]}" "$M" bench "${common[@]}" --url "${URL[$name]}" --reuse --json "$W/$ds-$name-$r.json" > "$W/$ds-$name-$r.out" 2>&1
        done
    done
    for name in workers pool; do
        curl -sf -X POST -H 'Content-Type: application/json' "${URL[$name]}/v2/vectordb/collections/drop" \
            -d '{"collectionName":"magpie_bench"}' > /dev/null
    done
done
python3 - "$W" "$RUNS" <<'PY'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
def load(p):
    return json.load(open(p))
print("| dataset | knob | recall@10 | where searches run | QPS 1 client / 2 / N | ÷ in-process (1 client ÷ 1t ; N ÷ 2t) | 1 client, per search: server CPU µs / in engine µs | N clients: server CPU µs |")
print("|---|---|---|---|---|---|---|---|")
for ds in ("synth-clustered", "minilm-real"):
    inproc = load(f"{w}/{ds}-inproc.json")
    for i, row in enumerate(inproc):
        knob = ",".join(f"{k}={v}" for k, v in (row["knob"] or {}).items())
        if row.get("recall_target"):
            knob = f"recall≥{row['recall_target']:.2f} → {knob}"
        print(f"| {ds} | {knob} | {row['recall']:.4f} | in-process (engine reopened) "
              f"| {row['qps_1t']:,.0f} / {row['qps_2t']:,.0f} / {row['qps_clients']:,.0f} | 1 | ({1e6 / row['qps_1t']:.0f} µs wall) | |")
        for name in ("workers", "pool"):
            hs = [load(f"{w}/{ds}-{name}-{r}.json")[i] for r in range(1, runs + 1)]
            def med(*path):
                vals = []
                for h in hs:
                    v = h
                    for p in path:
                        v = v.get(p) if isinstance(v, dict) else None
                    if v is not None:
                        vals.append(v)
                return statistics.median(vals) if vals else float("nan")
            q1, q2, qn = med("qps_1t"), med("qps_2t"), med("qps_clients")
            print(f"| | | | HTTP, {name} (healthz round trip {med('http_floor_us'):.0f} µs) | {q1:,.0f} / {q2:,.0f} / {qn:,.0f} "
                  f"| {q1 / row['qps_1t']:.2f} ; {qn / row['qps_2t']:.2f} "
                  f"| {med('server_1t', 'cpu_us'):.0f} / {med('server_1t', 'engine_us'):.0f} "
                  f"| {med('server_clients', 'cpu_us'):.0f} |")
print(f"\n(HTTP: medians of {runs} runs per server, alternating; N = {hs[0].get('clients')} clients; every run's JSON is in {w}.)")
PY
