#!/bin/sh
# pymilvus throughput, Magpie and Milvus Lite side by side in one run on this machine.
#   bench/pymilvus/run.sh [SET_DIR] [SECONDS]
# SET_DIR: a ../shared/bench set (default ../shared/bench/synth-clustered, 100k x 128 L2).
# Needs a release build (cargo build --release -p magpie-cli) and the pymilvus
# environment (tests/pymilvus/setup.sh target/pymilvus-venv). Prints one JSON line per
# configuration.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
set_dir="${1:-$root/../shared/bench/synth-clustered}"; secs="${2:-10}"
py=$(sh "$root/tests/pymilvus/setup.sh" "$root/target/pymilvus-venv")
bin="$root/target/release/magpie"
[ -x "$bin" ] || { echo "build first: cargo build --release -p magpie-cli" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/magpie" >"$work/out" 2>"$work/err" &
pid=$!
while ! grep -q "listening on" "$work/out" 2>/dev/null; do sleep 0.1; done
uri=$(sed -n 's/^listening on //p' "$work/out")
bench="$root/bench/pymilvus/bench.py"
run() { "$py" "$bench" --set "$set_dir" --seconds "$secs" "$@"; }
echo "magpie HNSW ef=64:   $(run "$uri" --index HNSW --ef 64)"
echo "magpie HNSW ef=16:   $(run "$uri" --index HNSW --ef 16)"
echo "magpie FLAT:         $(run "$uri" --index FLAT)"
echo "magpie HNSW columns: $(run "$uri" --index HNSW --columns)"
echo "milvus-lite:         $(run "$work/lite.db" --index FLAT)"
echo "milvus-lite columns: $(run "$work/lite2.db" --index FLAT --columns)"
