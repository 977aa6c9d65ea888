#!/usr/bin/env bash
# One command, one table: Magpie's indexes and the peers (hnswlib, faiss, usearch from
# PyPI, in a virtual environment) on the same dataset files with the same parameters
# (HNSW M=16 efConstruction=200, IVF nlist=1024, build with 2 threads, queries one at a
# time).
#
#   bench/peers/run.sh ../shared/bench/synth-clustered ../shared/bench/minilm-real
#
# Environment: PEERS_VENV (default target/peers-venv), OUT (default target/bench),
# FILTER (e.g. 1,10,50,90: also the filtered sweep, Magpie's HNSW and the peers that
# filter in process, at those percentages of rows passing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${PEERS_VENV:-$root/target/peers-venv}
out=${OUT:-$root/target/bench}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy hnswlib faiss-cpu usearch
fi
(cd "$root" && cargo build --release -p magpie-cli)
mkdir -p "$out"
for ds in "$@"; do
  name=$(basename "$ds")
  for ix in HNSW_SQ HNSW IVF_FLAT IVF_SQ8 IVF_PQ FLAT; do
    "$root/target/release/magpie" bench --dataset "$ds" --index "$ix" \
      --json "$out/$name-magpie-$ix.json" >/dev/null
  done
  if [ -n "${FILTER:-}" ]; then
    "$root/target/release/magpie" bench --dataset "$ds" --index HNSW --recall-targets 0.95 \
      --filter-selectivity "$FILTER" --json "$out/$name-magpie-HNSW-filtered.json" >/dev/null
  fi
  "$venv/bin/python" "$here/peers.py" "$ds" --out "$out/$name-peers.json" \
    ${FILTER:+--filter-selectivity "$FILTER"}
done
"$venv/bin/python" "$here/table.py" "$out"/*.json
