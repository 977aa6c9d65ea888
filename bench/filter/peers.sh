#!/usr/bin/env bash
# Filtered search side by side with the peers that filter in process, in one run:
# Magpie's HNSW (recall target 0.95, its plan chosen per filter) and, on the same files
# with the same filter (row i passes when i * 7919 % 100 < P), hnswlib with a filter
# function, faiss HNSW and IVF_FLAT with an IDSelectorBitmap, each swept over its knob.
#
#   bench/filter/peers.sh ../shared/bench/synth-clustered ../shared/bench/minilm-real
#
# Environment: PEERS_VENV (default target/peers-venv, made with numpy hnswlib faiss-cpu
# usearch when missing), OUT (default target/bench-filter), FILTER (default 1,10,50,90),
# EFS (default 16,32,64,128,256), NPROBES (default 1,2,4,8,16,32,64,128), QUERIES
# (default 300: hnswlib's filter is a Python call per candidate, slow at 1 %).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${PEERS_VENV:-$root/target/peers-venv}
out=${OUT:-$root/target/bench-filter}
filter=${FILTER:-1,10,50,90}
queries=${QUERIES:-300}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy hnswlib faiss-cpu usearch
fi
(cd "$root" && cargo build --release -p magpie-cli)
mkdir -p "$out"
for ds in "$@"; do
  name=$(basename "$ds")
  "$root/target/release/magpie" bench --dataset "$ds" --index HNSW --sweep 64 \
    --recall-targets 0.95 --filter-selectivity "$filter" --queries "$queries" \
    --json "$out/$name-magpie-HNSW.json" >/dev/null
  "$venv/bin/python" "$root/bench/peers/peers.py" "$ds" --only hnswlib,faiss-hnsw,faiss-ivf \
    --queries "$queries" --efs "${EFS:-16,32,64,128,256}" --nprobes "${NPROBES:-1,2,4,8,16,32,64,128}" \
    --filter-selectivity "$filter" --out "$out/$name-peers.json"
done
"$venv/bin/python" "$root/bench/peers/table.py" "$out"/*.json
