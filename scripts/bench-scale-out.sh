#!/usr/bin/env bash
# Webhook → JetStream → trigger throughput with 1 and 2 spillway instances
# sharing one durable consumer (issue 9's benchmark).
#
#   scripts/bench-scale-out.sh [SECONDS] [CONCURRENCY]
#
# Starts its own nats-server -js (temp store, free port), then for N in 1 2:
# N `spillway run` processes with the same pipeline (webhook on its own port
# per instance, a log trigger so no downstream is measured), drives them with
# `spillway storm --mode closed` (CONCURRENCY workers split between the
# instances' webhooks, 256-byte events, Retry-After honoured) for SECONDS,
# waits for the consumer to drain, and prints: events accepted, events
# triggered (sum over instances, from /metrics), the split between
# instances, and the end-to-end rate = triggered / (time from the first
# request until the last trigger). Uses target/release/spillway (built if
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN=${1:-20}
CONCURRENCY=${2:-64}
NATS=${NATS_SERVER:-/usr/sbin/nats-server}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Sum of one metric series over the given admin ports.
metric_sum() {
  local series=$1; shift
  local total=0 value
  for admin in "$@"; do
    value=$(curl -fs "http://127.0.0.1:$admin/metrics" | awk -v s="$series" '$1 == s { print $2 }')
    total=$(python3 -c "print(int(float('${value:-0}') + $total))")
  done
  echo "$total"
}


NATS_PORT=$(free_port)
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  (echo >/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break
  sleep 0.1
done

SERIES='spillway_trigger_invocations_total{sensor="orders",trigger="record",outcome="success"}'
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run: ${SECONDS_TO_RUN}s closed loop, $CONCURRENCY workers, 256 B events, log trigger (RUST_LOG=warn)"
echo
echo "| instances | accepted | triggered | per instance | end-to-end events/s |"
echo "|---:|---:|---:|---|---:|"
for INSTANCES in 1 2; do
  STREAM="bench-$INSTANCES-$$"
  ADMINS=()
  PORTS=()
  INSTANCE_PIDS=()
  for i in $(seq 1 "$INSTANCES"); do
    WEBHOOK=$(free_port)
    ADMIN=$(free_port)
    log_pipeline "$STREAM" "  jetstream:
    url: nats://127.0.0.1:$NATS_PORT
    settings: |
      max_msgs: 1000000
      max_bytes: 1GiB" "$WEBHOOK" 64 >"$WORK/p-$INSTANCES-$i.yaml"
    RUST_LOG=warn "$BIN" run -f "$WORK/p-$INSTANCES-$i.yaml" --admin "127.0.0.1:$ADMIN" \
      --data-dir "$WORK/data-$INSTANCES-$i" >"$WORK/spillway-$INSTANCES-$i.log" 2>&1 &
    INSTANCE_PIDS+=($!)
    PIDS+=($!)
    ADMINS+=("$ADMIN")
    PORTS+=("$WEBHOOK")
  done
  for admin in "${ADMINS[@]}"; do wait_http "http://127.0.0.1:$admin/readyz"; done
  START=$(date +%s.%N)
  STORMS=()
  PER=$((CONCURRENCY / INSTANCES))
  for port in "${PORTS[@]}"; do
    "$BIN" storm --url "http://127.0.0.1:$port/orders" --mode closed --concurrency "$PER" \
      --duration "${SECONDS_TO_RUN}s" --honor-retry-after --out "$WORK/storm-$INSTANCES-$port" \
      >"$WORK/storm-$INSTANCES-$port.log" 2>&1 &
    STORMS+=($!)
  done
  for pid in "${STORMS[@]}"; do wait "$pid" || true; done
  ACCEPTED=0
  for port in "${PORTS[@]}"; do
    n=$(python3 -c "import json; print(json.load(open('$WORK/storm-$INSTANCES-$port/report.json'))['totals']['accepted'])")
    ACCEPTED=$((ACCEPTED + n))
  done
  # Drained when the triggered total stops short of nothing: wait for it
  # to reach the accepted count (at-least-once: it may pass it).
  END=$START
  for _ in $(seq 1 600); do
    TRIGGERED=$(metric_sum "$SERIES" "${ADMINS[@]}")
    END=$(date +%s.%N)
    [ "$TRIGGERED" -ge "$ACCEPTED" ] && break
    sleep 0.2
  done
  SPLIT=""
  for admin in "${ADMINS[@]}"; do SPLIT="$SPLIT $(metric_sum "$SERIES" "$admin")"; done
  RATE=$(python3 -c "print(round($TRIGGERED / ($END - $START)))")
  echo "| $INSTANCES | $ACCEPTED | $TRIGGERED |$SPLIT | $RATE |"
  for pid in "${INSTANCE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${INSTANCE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
done
