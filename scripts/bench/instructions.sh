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
#        ROUNDS=3 CONFIGS="off trace1 logged" scripts/bench/instructions.sh
#        BASELINE_BIN=/tmp/tandem-proxy-before CONFIGS="baseline off" scripts/bench/instructions.sh
# Not a test: nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
CONNS=${CONNS:-10}
ROUNDS=${ROUNDS:-2}
CONFIGS=${CONFIGS:-off trace1 trace100}
BASELINE_BIN=${BASELINE_BIN:-}
BASE_PORT=${BASE_PORT:-18300}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need[@]}" >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building tandem-proxy and the OTLP receiver (release)"
cargo build --release -q -p tandem-proxy -p tandem-telemetry --bins --example otlp_sink
TANDEM=target/release/tandem-proxy

WORK=$(mktemp -d -t tandem-ins-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

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
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
  }
}
EOF
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)
target/release/examples/otlp_sink "127.0.0.1:$OTLP_PORT" >"$WORK/otlp.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BACKEND_PORT/"

snapshot() {
  cat <<EOF
{"revision": 1,
 "pools": {"bench": {
   "config": {"name": "bench", "policy": "round_robin",
     "health_check": {"kind": "http", "path": "/", "method": "GET", "host": "",
       "expected_status_min": 200, "expected_status_max": 399,
       "interval_ms": 2000, "timeout_ms": 1000, "rise": 2, "fall": 3},
     "connect_timeout_ms": 1000, "request_timeout_ms": 30000,
     "retry": {"attempts": 1, "per_try_timeout_ms": 5000, "budget_percent": 20},
     "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000, "max_ejected_percent": 50},
     "panic_threshold_percent": 50},
   "backends": [{"address": "127.0.0.1:$BACKEND_PORT", "weight": 1, "role": "primary", "admin_state": "enabled"}],
   "revision": 1}},
 "routes": [{"host": "*", "path_prefix": "/", "pool": "bench"}]}
EOF
}

# Starts one configuration under callgrind; sets PORT, ADMIN, VG_PID.
start() { # config index
  local config=$1 i=$2 bin=$TANDEM extra=()
  PORT=$((BASE_PORT + 10 + 2 * i))
  ADMIN=$((PORT + 1))
  local dir=$WORK/$config
  mkdir -p "$dir"
  snapshot >"$dir/snapshot.json"
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
  env TANDEM_LISTEN=127.0.0.1:$PORT TANDEM_ADMIN_LISTEN=127.0.0.1:$ADMIN \
    TANDEM_STATE_DIR="$dir" TANDEM_CONTROL= TANDEM_WORKERS=1 RUST_LOG=warn "${extra[@]}" \
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
  rm -f "$WORK/$c"/callgrind.out.*
  callgrind_control -i on "$VG_PID" >/dev/null 2>&1
  "$@" >/dev/null
  callgrind_control -i off "$VG_PID" >/dev/null 2>&1
  callgrind_control -d "$VG_PID" >/dev/null 2>&1
  sleep 0.5
  cat "$WORK/$c"/callgrind.out.* 2>/dev/null | awk '/^totals:/ { t += $2 } END { print t + 0 }'
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
  med=$(for r in $(seq 1 "$ROUNDS"); do echo "${INS[$c.$r]}"; done | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  INS[$c]=$med
  printf "%-9s %14s %10s\n" "$c" "$med" "$(awk -v a="$med" -v b="${INS[$first]}" 'BEGIN { printf "%.3fx", a / b }')"
done
