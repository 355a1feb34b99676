# Shared by the benchmark scripts (sourced, not run): the spillway binary,
# a work directory and the processes removed on exit, free ports, waits, and
# the benchmarks' pipeline.

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

# Waits (≤ 20 s) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 200); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for port $1" >&2
  return 1
}

# Waits (≤ 20 s) until URL answers 2xx.
wait_http() {
  for _ in $(seq 1 200); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# The benchmarks' pipeline: webhook shop/orders on WEBHOOK_PORT → sensor
# orders → a log trigger `record` (no downstream to measure), on the bus
# the EventBus `spec:` lines BUS_SPEC describe (indented by 2), with at most
# MAX_IN_FLIGHT (default 16, spillway's default) trigger runs at once.
log_pipeline() { # BUS_NAME BUS_SPEC WEBHOOK_PORT [MAX_IN_FLIGHT]
  cat <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: $1
spec:
$2
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "$3"
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
      flowControl:
        maxInFlight: ${4:-16}
YAML
}
