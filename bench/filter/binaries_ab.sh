#!/usr/bin/env bash
# Filtered search by selectivity with two magpie binaries, run alternately (in process,
# then over HTTP against a fresh server per run), so a change can be compared on a
# noisy machine: docs/BENCHMARKS.md, "With filtered recall curves".
#
#   bench/filter/binaries_ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [DATASET]
set -euo pipefail
old=$1
new=$2
rounds=${3:-2}
data=${4:-../shared/bench/minilm-real}
args=(bench --dataset "$data" --index HNSW --sweep 64 --recall-targets 0.95
      --filter-selectivity 1,10,50,90)
port=19777
for mode in inprocess http; do
    for _ in $(seq "$rounds"); do
        for tag in old new; do
            bin=$old
            [ "$tag" = new ] && bin=$new
            if [ "$mode" = inprocess ]; then
                "$bin" "${args[@]}" 2>&1 | grep '^| magpie' | sed "s/^/$tag /"
            else
                d=$(mktemp -d)
                "$bin" serve --listen 127.0.0.1:$port --data-dir "$d" --seal-rows 200000 \
                    --seal-bytes 1000000000 >"$d.log" 2>&1 &
                pid=$!
                for _ in $(seq 50); do
                    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
                    sleep 0.2
                done
                "$bin" "${args[@]}" --url "http://127.0.0.1:$port" 2>&1 \
                    | grep '^| magpie' | sed "s/^/$tag /"
                kill "$pid"
                wait "$pid" || true
                rm -rf "$d" "$d.log"
            fi
        done
    done
done
