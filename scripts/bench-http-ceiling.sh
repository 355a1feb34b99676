#!/usr/bin/env bash
# The HTTP ceiling of this machine vs spillway's webhook ingest (issue 11's
# BENCHMARKS entry): the same `spillway storm` closed loop against
#   1. a bare axum server answering 200 at once (`spillway downstream
#      --latency 0s`: axum + hyper, no bus), and
#   2. a spillway webhook whose 200 means "on the embedded durable bus"
#      (segment log, `fdatasync` before the answer; a log trigger drains it).
#
#   scripts/bench-http-ceiling.sh [SECONDS] [CONCURRENCY]
#
# Uses target/release/spillway (built if missing; SPILLWAY_BIN overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN=${1:-10}
CONCURRENCY=${2:-64}
BIN=${SPILLWAY_BIN:-target/release/spillway}
[ -x "$BIN" ] || cargo build --release --quiet
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  for _ in $(seq 1 200); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for port $1" >&2
  return 1
}

storm() { # URL NAME
  "$BIN" storm --url "$1" --mode closed --concurrency "$CONCURRENCY" \
    --duration "${SECONDS_TO_RUN}s" --out "$WORK/$2" >"$WORK/$2.log" 2>&1
  python3 - "$WORK/$2/report.json" "$2" "$SECONDS_TO_RUN" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
totals = report["totals"]
latency = totals["latency"]
rate = totals["accepted"] / float(sys.argv[3])
print(f"| {sys.argv[2]} | {totals['accepted']} | {rate:,.0f} | "
      f"{latency['p50_us'] / 1000:.2f} ms | {latency['p99_us'] / 1000:.2f} ms |")
EOF
}

BARE=$(free_port)
"$BIN" downstream --listen "127.0.0.1:$BARE" --latency 0s >"$WORK/bare.log" 2>&1 &
PIDS+=($!)
WEBHOOK=$(free_port)
ADMIN=$(free_port)
cat >"$WORK/pipeline.yaml" <<EOF
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      max_msgs: 10000000
      max_bytes: 4GiB
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "$WEBHOOK"
      endpoint: /orders
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: record
        log: {}
EOF
RUST_LOG=warn "$BIN" run -f "$WORK/pipeline.yaml" --admin "127.0.0.1:$ADMIN" \
  --data-dir "$WORK/data" >"$WORK/spillway.log" 2>&1 &
PIDS+=($!)
wait_port "$BARE"
wait_port "$WEBHOOK"

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run: ${SECONDS_TO_RUN}s closed loop, $CONCURRENCY connections, 256 B JSON bodies"
echo
echo "| target | accepted | per second | p50 | p99 |"
echo "|---|---:|---:|---:|---:|"
storm "http://127.0.0.1:$BARE/sink" "bare axum, 200 at once"
storm "http://127.0.0.1:$WEBHOOK/orders" "spillway webhook → durable bus"
