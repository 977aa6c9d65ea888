#!/usr/bin/env bash
# BM25 quality, Magpie against the bm25s package, on every test set in ../shared/data/ir,
# in one run: `magpie eval --load` (english analyzer, k1 1.2, b 0.75) beside
# bench/bm25/compare.py (bm25s, Lucene's BM25, English stop words and Snowball stemmer),
# once with bm25s's own tokenizer and once on Magpie's terms (`magpie analyze`).
#   bench/bm25/run.sh [IR_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
IR=${1:-../shared/data/ir}
BIN=target/release/magpie
[ -x "$BIN" ] || BIN=target/debug/magpie
[ -x "$BIN" ] || { echo "build magpie first: cargo build --release -p magpie-cli" >&2; exit 1; }
VENV=target/bm25-venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "bm25s==0.2.14" PyStemmer numpy
fi
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
printf "%-28s %10s %10s %8s %16s %8s\n" "set" "magpie" "bm25s" "diff" "bm25s,magpie-tok" "diff"
for d in "$IR"/*/; do
    name=$(basename "$d")
    m=$("$BIN" eval --url "http://127.0.0.1:$PORT" --dataset "$d" --collection "bm25_${name//[^a-zA-Z0-9]/_}" --load --json)
    b=$("$VENV/bin/python" bench/bm25/compare.py "$d")
    t=$("$VENV/bin/python" bench/bm25/compare.py "$d" --magpie-tokens "$BIN")
    python3 - "$name" "$m" "$b" "$t" <<'PY'
import json, sys
name, m, b, t = sys.argv[1], *map(json.loads, sys.argv[2:5])
x, y, z = m["modes"]["bm25"]["nDCG@10"], b["bm25s"]["nDCG@10"], t["bm25s"]["nDCG@10"]
print(f"{name:<28} {x:>10.4f} {y:>10.4f} {x - y:>+8.4f} {z:>16.4f} {x - z:>+8.4f}")
PY
done
