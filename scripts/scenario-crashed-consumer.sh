#!/usr/bin/env bash
# Scenario 2 of seed 004, "The Consumer That Crashed", against the real
# PostgreSQL (docs/BENCHMARKS.md, "Scenario: crashed consumer").
#
#   scripts/scenario-crashed-consumer.sh [flow|herd] [N]
#
# 1. The consumer is down: spillway runs the EventBus + webhook of
#    examples/scenarios/crashed-consumer.yaml without its Sensor, and
#    `spillway storm` fills the bus until it holds exactly N orders
#    (max_msgs is N; the storm sends 3% more, the rest is refused; a
#    storm that fell short is followed by another).
# 2. Idle probe: pgbench inserts one row at a time, 100/s for 15 s, into a
#    probe table: PostgreSQL's insert latency with nothing else running.
# 3. The consumer comes back: spillway restarts on the same data dir with
#    the Sensor (flow: crashed-consumer.yaml, herd: crashed-consumer-herd.yaml,
#    no flow control). The same probe runs during the whole drain. The
#    drain ends when the bus holds no message.
#    With CRASH_AFTER=S the consumer is killed (-9) S seconds into the
#    drain and restarted: the redelivered events must not be written twice.
# 4. Report: drain time, rows, distinct event ids (duplicates), failures,
#    probe latency p50/p99 idle vs during the drain, the trigger's own
#    latency histogram, peak connections.
#
# Needs: a release build (CARGO_TARGET_DIR or target/), psql and pgbench,
# PostgreSQL at PG_URL (default postgres://postgres@127.0.0.1:5432/test).
# Creates and drops the tables crashed_orders, crashed_orders_ledger and
# crashed_probe. Uses the ports of the example (webhook 12000) and the
# admin port ADMIN (default 127.0.0.1:9470).
set -euo pipefail

MODE=${1:-flow}
N=${2:-500000}
cd "$(dirname "$0")/.."
BIN=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
ADMIN=${ADMIN:-127.0.0.1:9470}
FILL_RATE=${FILL_RATE:-5000}
case "$MODE" in
flow) CONFIG=examples/scenarios/crashed-consumer.yaml ;;
herd) CONFIG=examples/scenarios/crashed-consumer-herd.yaml ;;
*) echo "usage: $0 [flow|herd] [N]" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || { echo "no release build at $BIN (cargo build --release)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/spillway-crashed-XXXXXX)
SPILLWAY_PID=
PROBE_PID=
cleanup() {
    [ -n "$PROBE_PID" ] && kill "$PROBE_PID" 2>/dev/null || true
    [ -n "$SPILLWAY_PID" ] && kill "$SPILLWAY_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    psql "$PG_URL" -q -c "DROP TABLE IF EXISTS crashed_orders, crashed_orders_ledger, crashed_probe" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

sql() { psql "$PG_URL" -Atq -v ON_ERROR_STOP=1 -c "$1"; }
status_field() { # status_field PYTHON-EXPR over the status document `s`
    curl -sf "http://$ADMIN/api/v1/status" | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
wait_ready() {
    for _ in $(seq 1 200); do
        curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "spillway not ready; log:" >&2; cat "$WORK"/*.log >&2; exit 1
}
stop_spillway() {
    kill -TERM "$SPILLWAY_PID"
    wait "$SPILLWAY_PID" || true
    SPILLWAY_PID=
}
# p50 and p99 (ms) of pgbench per-transaction logs: time minus schedule lag.
percentiles() {
    cat "$@" | awk '{ print ($3 - $7) / 1000 }' | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "no samples"; exit }
              printf "p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d samples)\n",
                     v[int(NR * 0.50) + 1], v[int(NR * 0.99) + 1], v[NR], NR }'
}
probe() { # probe PREFIX SECONDS: one client, 100 inserts/s
    pgbench -n -f "$WORK/probe.sql" -R 100 -T "$2" -l --log-prefix="$WORK/$1" "$PG_URL" >/dev/null 2>&1
}

sed "s/max_msgs: 500000/max_msgs: $N/" "$CONFIG" >"$WORK/full.yaml"
# The same documents without the Sensor: the consumer is down.
awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } !/kind: Sensor/' "$WORK/full.yaml" >"$WORK/fill.yaml"
echo 'INSERT INTO crashed_probe DEFAULT VALUES;' >"$WORK/probe.sql"

sql "SET client_min_messages = warning; DROP TABLE IF EXISTS crashed_orders, crashed_orders_ledger, crashed_probe"
sql "CREATE TABLE crashed_orders (event_id text NOT NULL, order_id text, doc jsonb, written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
sql "CREATE TABLE crashed_probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"

echo "== $MODE: filling the bus with $N orders (consumer down)"
"$BIN" run -f "$WORK/fill.yaml" --data-dir "$WORK/data" --admin "$ADMIN" >"$WORK/fill.log" 2>&1 &
SPILLWAY_PID=$!
wait_ready
fill_started=$(date +%s.%N)
held=0
# Storms until the bus is full: the open loop drops arrivals when the
# webhook falls behind, so one storm may leave the bus short. Order ids
# (storm-<n>) repeat across storms; event ids never do.
while [ "$held" -lt "$N" ]; do
    SEND_SECS=$(( ((N - held) * 103 / 100 + FILL_RATE - 1) / FILL_RATE ))
    "$BIN" storm --url http://127.0.0.1:12000/orders --rate "$FILL_RATE" --duration "${SEND_SECS}s" \
        --payload-bytes 128 --timeout 30s --out "$WORK/storm" >>"$WORK/storm.out" 2>&1
    held=$(status_field 's["bus"]["messages"]')
done
fill_secs=$(echo "$(date +%s.%N) - $fill_started" | bc)
echo "bus holds $held orders after ${fill_secs}s of storm"
stop_spillway
[ "$held" = "$N" ] || { echo "the bus holds $held, not $N: raise FILL_RATE or the fill time" >&2; exit 1; }

echo "== idle probe (15 s)"
probe idle 15
idle=$(percentiles "$WORK"/idle.*)

echo "== consumer back: draining"
(while [ ! -f "$WORK/drained" ]; do probe drain 5; done) &
PROBE_PID=$!
peak_connections=0
started=$(date +%s.%N)
"$BIN" run -f "$WORK/full.yaml" --data-dir "$WORK/data" --admin "$ADMIN" >"$WORK/drain.log" 2>&1 &
SPILLWAY_PID=$!
wait_ready
crashed=no
while true; do
    # CRASH_AFTER=S: kill -9 the consumer S seconds into the drain and start
    # it again; the events it had written but not acked come back.
    if [ -n "${CRASH_AFTER:-}" ] && [ "$crashed" = no ] &&
        [ "$(echo "$(date +%s.%N) - $started > $CRASH_AFTER" | bc)" = 1 ]; then
        kill -9 "$SPILLWAY_PID"
        wait "$SPILLWAY_PID" 2>/dev/null || true
        crashed="yes, after ${CRASH_AFTER}s with $(sql "SELECT count(*) FROM crashed_orders") rows written"
        "$BIN" run -f "$WORK/full.yaml" --data-dir "$WORK/data" --admin "$ADMIN" >"$WORK/drain2.log" 2>&1 &
        SPILLWAY_PID=$!
        wait_ready
    fi
    left=$(status_field 's["bus"]["messages"]')
    conns=$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'spillway'")
    [ "$conns" -gt "$peak_connections" ] && peak_connections=$conns
    [ "$left" = "0" ] && break
    sleep 1
done
drain_secs=$(echo "$(date +%s.%N) - $started" | bc)
touch "$WORK/drained"
wait "$PROBE_PID" || true
PROBE_PID=
curl -sf "http://$ADMIN/metrics" >"$WORK/metrics.txt"
stop_spillway
during=$(percentiles "$WORK"/drain.*)

rows=$(sql "SELECT count(*) FROM crashed_orders")
distinct=$(sql "SELECT count(DISTINCT event_id) FROM crashed_orders")
ledger=$(sql "SELECT count(*) FROM crashed_orders_ledger")
rate=$(sql "SELECT round(count(*) / greatest(extract(epoch FROM max(written_at) - min(written_at)), 0.001)) FROM crashed_orders")
peak_second=$(sql "SELECT max(c) FROM (SELECT count(*) AS c FROM crashed_orders GROUP BY date_trunc('second', written_at)) per_second")
outcomes=$(grep '^spillway_trigger_invocations_total' "$WORK/metrics.txt" | sed 's/.*outcome="\([a-z_]*\)"} /\1=/' | tr '\n' ' ')
trigger_latency=$(python3 - "$WORK/metrics.txt" <<'EOF'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'spillway_trigger_duration_seconds_bucket\{([^}]*)\} (\S+)', line)
    le = m and re.search(r'le="([^"]+)"', m.group(1))
    if le:
        buckets.append((float(le.group(1)), float(m.group(2))))
total = buckets[-1][1] if buckets else 0
def q(p):
    for le, n in buckets:
        if n >= p * total:
            return "<= %g ms" % (le * 1000)
print("p50 %s, p99 %s (%d invocations; histogram bucket bounds)" % (q(0.5), q(0.99), total))
EOF
)
cat <<EOF

== $MODE, N=$N
drain time:            ${drain_secs}s (start of the consumer → bus empty)
rows written:          $rows (distinct event ids: $distinct, duplicates: $((rows - distinct)); ledger rows: $ledger)
write rate:            $rate rows/s average, $peak_second in the busiest second
trigger outcomes:      $outcomes(of the last process)
kill -9 mid-drain:     $crashed
peak connections:      $peak_connections (spillway's, sampled each second)
probe insert latency:  idle:   $idle
                       drain:  $during
trigger invocation:    $trigger_latency
fill:                  ${fill_secs}s to accept $N orders at up to ${FILL_RATE}/s
EOF
