#!/usr/bin/env bash
# Start Redis and the two gateways of this folder on loopback; Ctrl-C stops all three.
#   examples/cluster/run.sh                  # Redis on 127.0.0.1:6379, gateways on :8081 and :8082
#   REDIS_PORT=6380 examples/cluster/run.sh  # another Redis port
# Needs redis-server (Debian: apt-get install redis-server) and gatewayd (the project's virtualenv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${REDIS_PORT:-6379}"
export REDIS_URL="redis://127.0.0.1:${port}/0"
data="$(mktemp -d)"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT INT TERM

redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$data" \
    --maxmemory 64mb --maxmemory-policy volatile-ttl >"$data/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

gatewayd --config "$here/gateway-a.yaml" & pids+=($!)
gatewayd --config "$here/gateway-b.yaml" & pids+=($!)
for gw in 8081 8082; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$gw/health?ready" >/dev/null && break; sleep 0.1; done
done
cat <<HELP

Redis on 127.0.0.1:$port; gateways on http://127.0.0.1:8081 and http://127.0.0.1:8082. Try:
  seq 80 | xargs -P 8 -I{} sh -c 'curl -s -o /dev/null -w "%{http_code}\\n" http://127.0.0.1:808\$(({} % 2 + 1))/hello' | sort | uniq -c
    (about 20 admitted, the burst, plus 10 a second: one budget for both gateways; the rest get 429)
  curl -s http://127.0.0.1:8081/health        # "cluster": {"redis": "up", "since": ...}
  curl -s 'http://127.0.0.1:8081/latency?scope=cluster&format=json'
  redis-cli -p $port shutdown nosave           # then /hello still answers (fail_open), POST /pay gets 503
Ctrl-C stops everything.
HELP
wait
