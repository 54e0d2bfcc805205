#!/usr/bin/env bash
# tandem-proxy side by side with nginx and HAProxy (Debian's packages), in
# front of the same backend, with the same load generator.
#
# Method (also in docs/benchmarks.md):
# - backend: one nginx worker answering `200 ok` from memory, on core 1;
# - each proxy: one worker, pinned to core 0, upstream keep-alive on;
# - load: wrk, one thread, $CONNS connections for $DURATION, on core 1;
# - first a direct run against the backend, the baseline for "latency added";
# - CPU per request from the proxy's utime+stime (/proc), memory as RSS after
#   the run (all of the proxy's processes).
# - ROUNDS runs every target that many times, interleaved (so a burst of
#   noise on the shared machine hits all of them alike); the table shows
#   each figure's median over the rounds.
# - BASELINE_BIN=<path> adds a second tandem-proxy build (say, the one
#   before a change) as the row "baseline", measured in the same rounds.
# - ACCESS_LOG=json (or common) adds the same tandem-proxy build with its
#   access log on, written to a file, as the row "logged", measured in the
#   same rounds; its writer thread shares the proxy's core.
# - TRACES=1 (the default) adds two more tandem-proxy processes exporting
#   spans over OTLP to a receiver on the load core (the telemetry crate's
#   otlp_sink example): "trace1" samples 1 % of requests, "trace100" all
#   of them; the row "tandem" is tracing off. TRACES=0 leaves them out.
# It prints a table and the ratios tandem/nginx, tandem/haproxy (and
# tandem/baseline, logged/tandem); with ROUNDS > 1 also the median of the
# ratios taken within each round (steadier under noise).
#
# Usage: scripts/bench/proxy.sh            (DURATION=10s CONNS=50 ROUNDS=1)
#        BENCH_PROFILE=debug DURATION=1s TRACES=0 scripts/bench/proxy.sh  (checks the script only)
#        DURATION=30s CONNS=100 ROUNDS=3 scripts/bench/proxy.sh
#        BASELINE_BIN=/tmp/tandem-proxy-before ROUNDS=3 scripts/bench/proxy.sh
#        ACCESS_LOG=json ROUNDS=3 scripts/bench/proxy.sh
# Not a test: numbers depend on the machine; nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-1}
BASELINE_BIN=${BASELINE_BIN:-}
BASELINE_PORT=${BASELINE_PORT:-18105}
BASELINE_ADMIN_PORT=${BASELINE_ADMIN_PORT:-18106}
ACCESS_LOG=${ACCESS_LOG:-}
LOGGED_PORT=${LOGGED_PORT:-18113}
LOGGED_ADMIN_PORT=${LOGGED_ADMIN_PORT:-18114}
TRACES=${TRACES:-1}
TRACE1_PORT=${TRACE1_PORT:-18107}
TRACE100_PORT=${TRACE100_PORT:-18109}
OTLP_PORT=${OTLP_PORT:-18111}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BACKEND_PORT=${BACKEND_PORT:-18100}
TANDEM_PORT=${TANDEM_PORT:-18101}
TANDEM_ADMIN_PORT=${TANDEM_ADMIN_PORT:-18102}
NGINX_PORT=${NGINX_PORT:-18103}
HAPROXY_PORT=${HAPROXY_PORT:-18104}

bench_need nginx haproxy wrk
NGINX=$(tool_path nginx)
HAPROXY=$(tool_path haproxy)
CORES=$(nproc)
if [ "$CORES" -lt 2 ]; then PROXY_CORE=0; LOAD_CORE=0; fi

if [ "$TRACES" = 1 ]; then
  # One build for both, so the proxy's dependencies are built once.
  bench_build tandem-proxy -p tandem-proxy -p tandem-telemetry --bins --example otlp_sink
else
  bench_build tandem-proxy -p tandem-proxy
fi
TANDEM=$BUILD/tandem-proxy

bench_work tandem-bench

# === the backend: nginx, one worker, on the load core ===
start_backend_nginx "$BACKEND_PORT" "$LOAD_CORE"
PIDS+=("$BACKEND_PID")

# === the proxies ===
nginx_proxy_conf "$WORK/nginx" "$NGINX_PORT"
taskset -c "$PROXY_CORE" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=($NGINX_PID)

{
  haproxy_cfg http "$HAPROXY_PORT" 4096 "option http-keep-alive" "option forwardfor" "http-reuse always" \
    "timeout connect 1s" "timeout client 30s" "timeout server 30s"
  echo "  server b1 127.0.0.1:$BACKEND_PORT"
} >"$WORK/haproxy.cfg"
taskset -c "$PROXY_CORE" "$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

mkdir -p "$WORK/tandem"
bench_snapshot "$BACKEND_PORT" >"$WORK/tandem/snapshot.json"
start_tandem() { # binary port admin_port state_dir log [VAR=value...]
  local bin=$1 port=$2 admin=$3 dir=$4 log=$5
  shift 5
  if [ "$dir" != "$WORK/tandem" ]; then
    mkdir -p "$dir"
    cp "$WORK/tandem/snapshot.json" "$dir/"
  fi
  tandem_env "$port" "$admin" "$dir"
  env "${TANDEM_ENV[@]}" "$@" \
    taskset -c "$PROXY_CORE" "$bin" >"$log" 2>&1 &
}
start_tandem "$TANDEM" "$TANDEM_PORT" "$TANDEM_ADMIN_PORT" "$WORK/tandem" "$WORK/tandem.log"
TANDEM_PID=$!
PIDS+=($TANDEM_PID)
TARGETS="direct nginx haproxy tandem"
PORTS="$NGINX_PORT $HAPROXY_PORT $TANDEM_PORT"
if [ -n "$BASELINE_BIN" ]; then
  start_tandem "$BASELINE_BIN" "$BASELINE_PORT" "$BASELINE_ADMIN_PORT" "$WORK/baseline" "$WORK/baseline.log"
  BASELINE_PID=$!
  PIDS+=($BASELINE_PID)
  TARGETS="$TARGETS baseline"
  PORTS="$PORTS $BASELINE_PORT"
fi
if [ "$TRACES" = 1 ]; then
  taskset -c "$LOAD_CORE" "$BUILD/examples/otlp_sink" "127.0.0.1:$OTLP_PORT" >"$WORK/otlp.log" 2>&1 &
  PIDS+=($!)
  wait_port "$OTLP_PORT"
  otlp=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$OTLP_PORT OTEL_SERVICE_NAME=bench)
  start_tandem "$TANDEM" "$TRACE1_PORT" $((TRACE1_PORT + 1)) "$WORK/trace1" "$WORK/trace1.log" \
    "${otlp[@]}" TANDEM_TRACE_SAMPLE=0.01
  TRACE1_PID=$!
  start_tandem "$TANDEM" "$TRACE100_PORT" $((TRACE100_PORT + 1)) "$WORK/trace100" "$WORK/trace100.log" \
    "${otlp[@]}" TANDEM_TRACE_SAMPLE=1
  TRACE100_PID=$!
  PIDS+=($TRACE1_PID $TRACE100_PID)
  TARGETS="$TARGETS trace1 trace100"
  PORTS="$PORTS $TRACE1_PORT $TRACE100_PORT"
fi

if [ -n "$ACCESS_LOG" ]; then
  start_tandem "$TANDEM" "$LOGGED_PORT" "$LOGGED_ADMIN_PORT" "$WORK/logged" "$WORK/logged.log" \
    TANDEM_ACCESS_LOG="$WORK/access.log" TANDEM_ACCESS_LOG_FORMAT="$ACCESS_LOG"
  LOGGED_PID=$!
  PIDS+=($LOGGED_PID)
  TARGETS="$TARGETS logged"
  PORTS="$PORTS $LOGGED_PORT"
fi

for p in $PORTS; do wait_port "$p"; done
for p in $BACKEND_PORT $PORTS; do
  body=$(curl -fsS "http://127.0.0.1:$p/" || true)
  [ "$body" = "ok" ] || { echo "port $p answers ${body:-nothing}" >&2; cat "$WORK/tandem.log" >&2; exit 1; }
done

# === measuring ===
# All pids of a process tree (nginx master + worker).
tree_pids() { echo "$1"; pgrep -P "$1" || true; }
rss_kb() {
  local t=0
  for p in $(tree_pids "$1"); do
    [ -r "/proc/$p/status" ] || continue
    t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}
to_ms() { # wrk latency ("812.00us", "1.20ms", "2.00s") in ms
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n }'
}

declare -A RPS P50 P99 CPU RSS ERR
run() { # name round port [pid]; figures are kept per round as "name.round"
  local name=$1.$2 port=$3 pid=${4:-}
  # Warm up connections and caches.
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
  local before=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local out
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/")
  local requests
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  RPS[$name]=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
  P50[$name]=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  P99[$name]=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  ERR[$name]=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  if [ -n "$pid" ]; then
    local after
    after=$(cpu_ticks "$pid")
    CPU[$name]=$(awk -v a="$after" -v b="$before" -v n="$requests" -v t="$TICK" \
      'BEGIN { printf "%.2f", (a - b) / t / n * 1e6 }')
    RSS[$name]=$(( $(rss_kb "$pid") / 1024 ))
  else
    CPU[$name]="-"
    RSS[$name]="-"
  fi
}

echo "load: wrk -t1 -c$CONNS -d$DURATION, $ROUNDS round(s); proxies on core $PROXY_CORE, backend and wrk on core $LOAD_CORE"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS: $TARGETS"
  run direct "$r" "$BACKEND_PORT"
  run nginx "$r" "$NGINX_PORT" "$NGINX_PID"
  run haproxy "$r" "$HAPROXY_PORT" "$HAPROXY_PID"
  run tandem "$r" "$TANDEM_PORT" "$TANDEM_PID"
  [ -n "$BASELINE_BIN" ] && run baseline "$r" "$BASELINE_PORT" "$BASELINE_PID"
  if [ -n "$ACCESS_LOG" ]; then
    run logged "$r" "$LOGGED_PORT" "$LOGGED_PID"
    # The log's lines are the load's: do not let them fill the disk.
    : >"$WORK/access.log"
  fi
  if [ "$TRACES" = 1 ]; then
    run trace1 "$r" "$TRACE1_PORT" "$TRACE1_PID"
    run trace100 "$r" "$TRACE100_PORT" "$TRACE100_PID"
  fi
done

# The median of one figure over the rounds ("-" in any round: "-").
round_median() { # array-name target
  local -n arr=$1
  local r vals=()
  for r in $(seq 1 "$ROUNDS"); do vals+=("${arr[$2.$r]}"); done
  if [[ " ${vals[*]} " == *" - "* ]]; then echo -; else printf '%s\n' "${vals[@]}" | median %.3f; fi
}
for n in $TARGETS; do
  for m in RPS P50 P99 CPU RSS; do
    declare -n ref=$m
    ref[$n]=$(round_median "$m" "$n")
    unset -n ref
  done
  ERR[$n]=$(for r in $(seq 1 "$ROUNDS"); do echo -n "${ERR[$n.$r]}"; done)
done
if [ "$ROUNDS" -gt 1 ]; then
  echo
  echo "per round (req/s, cpu us/req):"
  for n in $TARGETS; do
    printf "  %-8s" "$n"
    for r in $(seq 1 "$ROUNDS"); do printf " %8s/%-6s" "${RPS[$n.$r]}" "${CPU[$n.$r]}"; done
    echo
  done
fi

added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
printf "\n%-8s %10s %9s %9s %12s %12s %13s %8s\n" \
  target req/s p50_ms p99_ms p50_added_ms p99_added_ms cpu_us_per_req rss_MiB
for n in $TARGETS; do
  if [ "$n" = direct ]; then a50="-"; a99="-"; else
    a50=$(added "${P50[$n]}" "${P50[direct]}"); a99=$(added "${P99[$n]}" "${P99[direct]}"); fi
  printf "%-8s %10s %9s %9s %12s %12s %13s %8s  %s\n" "$n" "${RPS[$n]}" "${P50[$n]}" "${P99[$n]}" \
    "$a50" "$a99" "${CPU[$n]}" "${RSS[$n]}" "${ERR[$n]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "tandem/nginx:   throughput $(ratio "${RPS[tandem]}" "${RPS[nginx]}")x," \
  "p99 $(ratio "${P99[tandem]}" "${P99[nginx]}")x, cpu/req $(ratio "${CPU[tandem]}" "${CPU[nginx]}")x"
echo "tandem/haproxy: throughput $(ratio "${RPS[tandem]}" "${RPS[haproxy]}")x," \
  "p99 $(ratio "${P99[tandem]}" "${P99[haproxy]}")x, cpu/req $(ratio "${CPU[tandem]}" "${CPU[haproxy]}")x"
if [ -n "$BASELINE_BIN" ]; then
  echo "tandem/baseline: throughput $(ratio "${RPS[tandem]}" "${RPS[baseline]}")x," \
    "p99 $(ratio "${P99[tandem]}" "${P99[baseline]}")x, cpu/req $(ratio "${CPU[tandem]}" "${CPU[baseline]}")x"
fi
if [ -n "$ACCESS_LOG" ]; then
  echo "logged/tandem: throughput $(ratio "${RPS[logged]}" "${RPS[tandem]}")x," \
    "p99 $(ratio "${P99[logged]}" "${P99[tandem]}")x, cpu/req $(ratio "${CPU[logged]}" "${CPU[tandem]}")x"
  metrics=$(curl -fsS "http://127.0.0.1:$LOGGED_ADMIN_PORT/metrics" || true)
  echo "access log ($ACCESS_LOG): lines written $(echo "$metrics" | awk '/^tandem_proxy_access_log_lines_total/ {print $2}')," \
    "dropped $(echo "$metrics" | awk '/^tandem_proxy_access_log_dropped_total/ {print $2}')"
fi
if [ "$TRACES" = 1 ]; then
  echo "tracing, against tandem with tracing off (same run):"
  echo "  1 %:   throughput $(ratio "${RPS[trace1]}" "${RPS[tandem]}")x," \
    "p99 $(ratio "${P99[trace1]}" "${P99[tandem]}")x, cpu/req $(ratio "${CPU[trace1]}" "${CPU[tandem]}")x"
  echo "  100 %: throughput $(ratio "${RPS[trace100]}" "${RPS[tandem]}")x," \
    "p99 $(ratio "${P99[trace100]}" "${P99[tandem]}")x, cpu/req $(ratio "${CPU[trace100]}" "${CPU[tandem]}")x"
  echo "  spans received by the OTLP receiver: $(tail -1 "$WORK/otlp.log" 2>/dev/null || echo none)"
fi
if [ "$ROUNDS" -gt 1 ]; then
  # Each round runs every target back to back, so a ratio taken within a
  # round compares them under the same noise; the median of those ratios
  # is steadier on a shared machine than the ratio of medians above.
  round_ratio() { # array-name a b: the median over rounds of a/b
    local -n arr=$1
    local r vals=()
    for r in $(seq 1 "$ROUNDS"); do vals+=("$(ratio "${arr[$2.$r]}" "${arr[$3.$r]}")"); done
    printf '%s\n' "${vals[@]}" | median %.2f
  }
  echo
  echo "median of per-round ratios:"
  others="nginx haproxy"
  [ -n "$BASELINE_BIN" ] && others="$others baseline"
  for o in $others; do
    echo "  tandem/$o: throughput $(round_ratio RPS tandem "$o")x, cpu/req $(round_ratio CPU tandem "$o")x"
  done
  if [ -n "$ACCESS_LOG" ]; then
    echo "  logged/tandem: throughput $(round_ratio RPS logged tandem)x, cpu/req $(round_ratio CPU logged tandem)x"
  fi
  if [ "$TRACES" = 1 ]; then
    for t in trace1 trace100; do
      echo "  $t/tandem: throughput $(round_ratio RPS "$t" tandem)x, cpu/req $(round_ratio CPU "$t" tandem)x"
    done
  fi
fi
