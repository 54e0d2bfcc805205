#!/usr/bin/env bash
# Instructions per request of tandem-proxy, counted by valgrind's callgrind:
# a figure the machine's other load cannot move (unlike req/s and CPU time,
# which swing by 2x on the shared 2-core VMs, where `perf stat` has no
# hardware counters). It compares builds and options, not proxies: under
# callgrind a proxy runs ~50x slower, so latency and throughput here mean
# nothing.
#
# Each configuration runs as its own proxy under callgrind with its
# instrumentation off; after a warm-up, instrumentation is switched on for a fixed load
# (wrk -t1 -c$CONNS -d$DURATION), then off, and the instructions counted are
# divided by the requests the proxy served meanwhile (its own
# tandem_proxy_requests_total), after subtracting what the same process
# executes in as long a time without load (its timers and background
# threads: at the real rate of tens of thousands of requests a second
# those are spread much thinner than under callgrind's few hundred). Runs are repeated ROUNDS times, interleaved.
#
# Configurations (CONFIGS, space-separated; default "off trace1 trace100"):
#   off       tracing off (no exporter), access log off
#   trace1    OTLP exporter to a local receiver, TANDEM_TRACE_SAMPLE=0.01
#   trace100  the same, TANDEM_TRACE_SAMPLE=1
#   logged    access log (JSON) to a file
#   baseline  BASELINE_BIN, tracing off
#
# Usage: scripts/bench/instructions.sh
#        BENCH_PROFILE=debug DURATION=1s ROUNDS=1 CONFIGS=off scripts/bench/instructions.sh  (checks the script only)
#        ROUNDS=3 CONFIGS="off trace1 logged" scripts/bench/instructions.sh
#        BASELINE_BIN=/tmp/tandem-proxy-before CONFIGS="baseline off" scripts/bench/instructions.sh
# Not a test: nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh

DURATION=${DURATION:-5s}
CONNS=${CONNS:-10}
ROUNDS=${ROUNDS:-2}
CONFIGS=${CONFIGS:-off trace1 trace100}
BASELINE_BIN=${BASELINE_BIN:-}
BASE_PORT=${BASE_PORT:-18300}

bench_need nginx wrk valgrind

bench_build "tandem-proxy and the OTLP receiver" -p tandem-proxy -p tandem-telemetry --bins --example otlp_sink
TANDEM=$BUILD/tandem-proxy

bench_work tandem-ins

wait_http() { # url
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2
  return 1
}

BACKEND_PORT=$BASE_PORT
OTLP_PORT=$((BASE_PORT + 1))
start_backend_nginx "$BACKEND_PORT"
PIDS+=("$BACKEND_PID")
"$BUILD/examples/otlp_sink" "127.0.0.1:$OTLP_PORT" >"$WORK/otlp.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BACKEND_PORT/"


# Starts one configuration under callgrind; sets PORT, ADMIN, VG_PID.
start() { # config index
  local config=$1 i=$2 bin=$TANDEM extra=()
  PORT=$((BASE_PORT + 10 + 2 * i))
  ADMIN=$((PORT + 1))
  local dir=$WORK/$config
  mkdir -p "$dir"
  bench_snapshot "$BACKEND_PORT" >"$dir/snapshot.json"
  local otlp=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$OTLP_PORT OTEL_SERVICE_NAME=bench)
  case $config in
    off) ;;
    trace1) extra=("${otlp[@]}" TANDEM_TRACE_SAMPLE=0.01) ;;
    trace100) extra=("${otlp[@]}" TANDEM_TRACE_SAMPLE=1) ;;
    logged) extra=(TANDEM_ACCESS_LOG="$dir/access.log" TANDEM_ACCESS_LOG_FORMAT=json) ;;
    baseline)
      [ -n "$BASELINE_BIN" ] || { echo "baseline needs BASELINE_BIN" >&2; exit 2; }
      bin=$BASELINE_BIN ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
  esac
  tandem_env "$PORT" "$ADMIN" "$dir"
  env "${TANDEM_ENV[@]}" "${extra[@]}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
    "$bin" >"$dir/log" 2>&1 &
  VG_PID=$!
  PIDS+=($VG_PID)
  wait_http "http://127.0.0.1:$ADMIN/readyz"
}

served() { # admin port: requests the proxy answered so far
  curl -fsS "http://127.0.0.1:$1/metrics" |
    awk '/^tandem_proxy_requests_total/ { n += $2 } END { printf "%.0f", n }'
}

# Instructions the proxy executes while "$@" runs.
count() { # config command...
  local c=$1
  shift
  callgrind_count "$WORK/$c" "$@"
}

declare -A INS
echo "load: wrk -t1 -c$CONNS -d$DURATION per measurement; configurations: $CONFIGS; $ROUNDS round(s)"
for r in $(seq 1 "$ROUNDS"); do
  i=0
  for c in $CONFIGS; do
    start "$c" "$i"
    i=$((i + 1))
    # Warm-up: connections, the pool's upstream connections, lazy statics.
    wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/" >/dev/null
    # The same span of time without load: what the process spends by
    # itself (timers, the exporter's and the log writer's threads).
    idle=$(count "$c" sleep "${DURATION%s}")
    before=$(served "$ADMIN")
    ir=$(count "$c" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$PORT/")
    after=$(served "$ADMIN")
    n=$((after - before))
    INS[$c.$r]=$(awk -v ir="$ir" -v idle="$idle" -v n="$n" \
      'BEGIN { if (n > 0) printf "%.0f", (ir - idle) / n; else print "-" }')
    printf "  round %d %-9s %8d requests %14s instructions (%s idle) %8s per request\n" \
      "$r" "$c" "$n" "$ir" "$idle" "${INS[$c.$r]}"
    kill "$VG_PID" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
    rm -f "$WORK/$c"/callgrind.out*
  done
done

echo
first=${CONFIGS%% *}
printf "%-9s %14s %10s\n" config "instr/request" "vs $first"
for c in $CONFIGS; do
  med=$(for r in $(seq 1 "$ROUNDS"); do echo "${INS[$c.$r]}"; done | median %.0f)
  INS[$c]=$med
  printf "%-9s %14s %10s\n" "$c" "$med" "$(awk -v a="$med" -v b="${INS[$first]}" 'BEGIN { printf "%.3fx", a / b }')"
done
