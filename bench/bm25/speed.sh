#!/usr/bin/env bash
# BM25 speed on one thread, Magpie beside bm25s and tantivy (PyPI packages) in one run,
# on a corpus of dictionary senses from Debian's dict-gcide and dict-wn (over 500k
# passages; bench/bm25/dict_corpus.py) with 1,000 short keyword queries, k = 10.
#   bench/bm25/speed.sh [PASSES]
set -euo pipefail
cd "$(dirname "$0")/../.."
PASSES=${1:-3}
BIN=target/release/magpie
[ -x "$BIN" ] || { echo "build magpie first: cargo build --release -p magpie-cli" >&2; exit 1; }
VENV=target/bm25-venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "bm25s==0.2.14" PyStemmer numpy
fi
"$VENV/bin/python" -c "import tantivy" 2>/dev/null || "$VENV/bin/pip" install -q "tantivy==0.27.0"
OUT=target/bm25-speed
if [ ! -s "$OUT/corpus.jsonl" ]; then
    mkdir -p "$OUT/deb"
    (cd "$OUT/deb" && apt-get download dict-gcide dict-wn && for f in *.deb; do dpkg-deb -x "$f" x; done)
    python3 bench/bm25/dict_corpus.py "$OUT/deb/x/usr/share/dictd" "$OUT"
fi
echo "== $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
m=$("$BIN" text bench "$OUT/corpus.jsonl" --queries "$OUT/queries.txt" --k 10 --passes "$PASSES" --json)
p=$("$VENV/bin/python" bench/bm25/speed.py "$OUT/corpus.jsonl" "$OUT/queries.txt" 10 "$PASSES")
python3 - "$m" "$p" <<'PY'
import json, sys
m, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{m['documents']} passages, {m['queries']} queries, k = {m['k']}, one thread")
print(f"{'engine':<12} {'index s':>9} {'QPS':>9} {'p50 ms':>9} {'p99 ms':>9}")
rows = (("magpie", m), ("bm25s", p["bm25s"]), ("bm25s batch", p["bm25s_batch"]), ("tantivy", p["tantivy"]))
for name, r in rows:
    lat = f"{r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}" if "p50_ms" in r else f"{'-':>9} {'-':>9}"
    print(f"{name:<12} {r['index_seconds']:>9.1f} {r['qps']:>9.0f} {lat}")
best = max(p["bm25s"]["qps"], p["bm25s_batch"]["qps"])
print(f"magpie / best bm25s = {m['qps'] / best:.2f}x, magpie / tantivy = {m['qps'] / p['tantivy']['qps']:.2f}x")
PY
