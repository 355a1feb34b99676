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
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

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
log_pipeline default "  jetstream:
    settings: |
      max_msgs: 10000000
      max_bytes: 4GiB" "$WEBHOOK" >"$WORK/pipeline.yaml"
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
