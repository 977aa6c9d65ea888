#!/usr/bin/env bash
# Vectors larger than the memory the server may use: runs `magpie serve` in a cgroup-v1
# memory group capped at MEM (page cache included, so the kernel must evict the mapped
# vector files to stay under it), loads DATASET through bulk import, builds IVF_PQ and
# runs `magpie bench --url` against it. Reports the cap, whether it was ever hit
# (memory.failcnt) or the OOM killer ran, and the server's peak anonymous and file-backed
# resident memory, sampled every 0.5 s.
#
#   MEM=4G bench/scale/disk.sh target/bench-data/synth-10m \
#       --index IVF_SQ8 --params '{"nlist":2048}' --refine 2 --sweep 4,8,16 --recall-targets 0.95
#
# Server settings through MAGPIE_* variables (e.g. MAGPIE_SEAL_ROWS, MAGPIE_SEAL_BYTES
# for the segment size). Needs root (cgroup v1 at /sys/fs/cgroup/memory) and a release
# build (cargo build --release -p magpie-cli). DATA_DIR (default: a new folder under
# target/) holds the segments; it is removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ds=${1:?usage: MEM=4G bench/scale/disk.sh DATASET [magpie bench args]}
shift
mem=${MEM:-4G}
bin=${MAGPIE_BIN:-target/release/magpie}
[ -x "$bin" ] || { echo "build first: cargo build --release -p magpie-cli" >&2; exit 1; }
cgroot=/sys/fs/cgroup/memory
[ -w "$cgroot" ] || { echo "needs a writable cgroup-v1 memory hierarchy at $cgroot" >&2; exit 1; }

data=${DATA_DIR:-$PWD/target/disk-bench-$$}
mkdir -p "$data/import"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cg=$cgroot/magpie-disk-$$
mkdir "$cg"
echo "$mem" >"$cg/memory.limit_in_bytes"
# No swap on these machines; make sure nothing is counted against it either way.
echo 0 >"$cg/memory.swappiness" 2>/dev/null || true

server=
sampler=
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rmdir "$cg" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$data"
}
trap cleanup EXIT

# Join the group first, then become the server: everything it allocates or maps is
# charged to the group.
sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$cg" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$data/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$data/server.log" >&2; exit 1; }

peak="$data/peak"
(
    a=0 f=0
    while kill -0 "$server" 2>/dev/null; do
        read -r ra rf < <(awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{print a, f}' "/proc/$server/status" 2>/dev/null || echo "0 0")
        [ "${ra:-0}" -gt "$a" ] && a=$ra
        [ "${rf:-0}" -gt "$f" ] && f=$rf
        echo "$a $f" >"$peak.tmp" && mv "$peak.tmp" "$peak"
        sleep 0.5
    done
) &
sampler=$!

echo "== server pid $server on :$port in $cg (memory.limit_in_bytes $mem)"
start=$(date +%s)
"$bin" bench --dataset "$ds" --url "http://127.0.0.1:$port" --import-dir "$data/import" --keep "$@"
echo "== wall $(( $(date +%s) - start )) s"
# The collection is still loaded: what it holds now is the steady state.
awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{printf "== server now (collection loaded, after the queries): RssAnon %d MiB, RssFile %d MiB\n", a/1024, f/1024}' "/proc/$server/status"
rm -rf "$data/import"
echo "== on disk: $(du -sb "$data" | cut -f1) bytes in $data (segments, indexes, WAL, manifests)"

read -r pa pf <"$peak"
echo "== server peak RssAnon $((pa / 1024)) MiB, peak RssFile $((pf / 1024)) MiB"
echo "== group: limit $(( $(cat "$cg/memory.limit_in_bytes") >> 20 )) MiB, max usage $(( $(cat "$cg/memory.max_usage_in_bytes") >> 20 )) MiB (page cache included), failcnt $(cat "$cg/memory.failcnt")"
grep -E '^(oom_kill_disable|under_oom|oom_kill) ' "$cg/memory.oom_control" | tr '\n' ' '; echo
kill -0 "$server" 2>/dev/null && echo "== server still running" || { echo "== server DIED" >&2; tail -20 "$data/server.log" >&2; exit 1; }

# PEER=1: then FAISS's IVF_SQ8 on the same data under the same cap, with the server
# stopped (bench/scale/disk_peer.py; PEER_PYTHON with numpy and faiss-cpu, PEER_ARGS).
if [ "${PEER:-0}" = 1 ]; then
    kill "$sampler" 2>/dev/null || true
    sampler=
    kill "$server" && wait "$server" 2>/dev/null || true
    server=
    cgp=$cgroot/magpie-disk-peer-$$
    mkdir "$cgp"
    echo "$mem" >"$cgp/memory.limit_in_bytes"
    echo 0 >"$cgp/memory.swappiness" 2>/dev/null || true
    # shellcheck disable=SC2086
    sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$cgp" \
        "${PEER_PYTHON:-python3}" bench/scale/disk_peer.py "$ds" ${PEER_ARGS:-} || echo "== peer FAILED (exit $?)"
    echo "== peer group: limit $(( $(cat "$cgp/memory.limit_in_bytes") >> 20 )) MiB, max usage $(( $(cat "$cgp/memory.max_usage_in_bytes") >> 20 )) MiB, failcnt $(cat "$cgp/memory.failcnt")"
    grep -E '^(under_oom|oom_kill) ' "$cgp/memory.oom_control" | tr '\n' ' '; echo
    rmdir "$cgp" 2>/dev/null || true
fi
