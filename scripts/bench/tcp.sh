#!/usr/bin/env bash
# TCP routes beside HAProxy `mode tcp` (Debian's haproxy), in front of the
# same backend, with the same load generator.
#
# Method (also in docs/benchmarks.md):
# - backend and load: crates/proxy/examples/tcp_bench.rs (release), each on
#   one thread, both on core $LOAD_CORE;
# - proxies: one worker each (TANDEM_WORKERS=1, HAProxy nbthread 1), pinned
#   to core $PROXY_CORE; tandem-proxy twice, with TANDEM_TCP_COPY=copy and
#   =splice, HAProxy with its defaults (it splices only when told to);
# - figures: a bulk stream from the backend over one connection (MB/s);
#   short connections, 64 bytes each way, from $CONCURRENCY loops
#   (connections/s); 64-byte request/response over $PINGPONG kept
#   connections (round trip p50/p99, and the latency added over going
#   direct);
# - CPU: the proxy's utime+stime (/proc) per GB of the bulk run and per
#   short connection: steadier than the rates on a shared machine;
# - ROUNDS runs every target that many times, interleaved (a burst of noise
#   on the shared machine hits all of them alike); each figure is the
#   median over the rounds.
# It prints a table and the ratios tandem/haproxy (above 1 is better for
# throughput, below 1 better for latency).
#
# Usage: scripts/bench/tcp.sh                 (SECONDS_EACH=5 ROUNDS=3)
#        BENCH_PROFILE=debug SECONDS_EACH=1 ROUNDS=1 scripts/bench/tcp.sh  (checks the script only)
#        SECONDS_EACH=10 ROUNDS=5 CONCURRENCY=32 scripts/bench/tcp.sh
# Not a test: numbers depend on the machine; nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh

SECS=${SECONDS_EACH:-5}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-16}
PINGPONG=${PINGPONG:-1}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BACKEND_PORT=${BACKEND_PORT:-18200}
COPY_PORT=${COPY_PORT:-18201}
SPLICE_PORT=${SPLICE_PORT:-18202}
HAPROXY_PORT=${HAPROXY_PORT:-18203}

bench_need haproxy
HAPROXY=$(tool_path haproxy)
[ "$(nproc)" -lt 2 ] && { PROXY_CORE=0; LOAD_CORE=0; }

bench_build "tandem-proxy and the benchmark tool" -p tandem-proxy --bin tandem-proxy --example tcp_bench
TANDEM=$BUILD/tandem-proxy
BENCH=$BUILD/examples/tcp_bench

bench_work tandem-tcp-bench

taskset -c "$LOAD_CORE" "$BENCH" serve "127.0.0.1:$BACKEND_PORT" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

haproxy_tcp_cfg "$HAPROXY_PORT" "$BACKEND_PORT" >"$WORK/haproxy.cfg"
taskset -c "$PROXY_CORE" "$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
declare -A PID
PID[haproxy]=$!

start_tandem() { # mode port admin_port
  local dir=$WORK/tandem-$1
  mkdir -p "$dir"
  bench_snapshot "$BACKEND_PORT" "127.0.0.1:$2" >"$dir/snapshot.json"
  tandem_env $(($2 + 100)) "$3" "$dir"
  env "${TANDEM_ENV[@]}" TANDEM_TCP_COPY="$1" \
    taskset -c "$PROXY_CORE" "$TANDEM" >"$WORK/tandem-$1.log" 2>&1 &
  PIDS+=($!)
  PID[tandem-$1]=$!
}
start_tandem copy "$COPY_PORT" 18211
start_tandem splice "$SPLICE_PORT" 18212
for p in $HAPROXY_PORT $COPY_PORT $SPLICE_PORT; do wait_port "$p"; done

# CPU time (cpu_ticks: HAProxy, tandem-proxy, all threads) is the figure
# that noise from other processes moves least.
declare -A MB CPS P50 P99 CPU_GB CPU_CONN
measure() { # name round port
  local key=$1.$2 port=$3 out before after
  before=$(cpu_ticks "${PID[$1]:-}")
  out=$(taskset -c "$LOAD_CORE" "$BENCH" bulk "127.0.0.1:$port" "$SECS")
  after=$(cpu_ticks "${PID[$1]:-}")
  MB[$key]=$(echo "$out" | awk '{print $2}')
  # CPU ms per GB moved (the bulk run lasts SECS plus a 0.5 s warm-up).
  CPU_GB[$key]=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v mb="${MB[$key]}" -v s="$SECS" \
    'BEGIN { gb = mb * (s + 0.5) / 1000; printf "%.0f", (gb > 0) ? (a - b) / t * 1000 / gb : 0 }')
  before=$(cpu_ticks "${PID[$1]:-}")
  out=$(taskset -c "$LOAD_CORE" "$BENCH" connect "127.0.0.1:$port" "$SECS" "$CONCURRENCY")
  after=$(cpu_ticks "${PID[$1]:-}")
  CPS[$key]=$(echo "$out" | awk '{print $2}')
  CPU_CONN[$key]=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v c="${CPS[$key]}" -v s="$SECS" \
    'BEGIN { n = c * s; printf "%.1f", (n > 0) ? (a - b) / t * 1e6 / n : 0 }')
  [ "$(echo "$out" | awk '{print $4}')" = "0" ] || echo "  $1: $(echo "$out" | awk '{print $4}') failed connections" >&2
  out=$(taskset -c "$LOAD_CORE" "$BENCH" pingpong "127.0.0.1:$port" "$SECS" "$PINGPONG")
  P50[$key]=$(echo "$out" | awk '{print $2}')
  P99[$key]=$(echo "$out" | awk '{print $4}')
}

TARGETS="direct haproxy tandem-copy tandem-splice"
echo "each run ${SECS}s; $ROUNDS round(s); proxies on core $PROXY_CORE, backend and load on core $LOAD_CORE"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS"
  measure direct "$r" "$BACKEND_PORT"
  measure haproxy "$r" "$HAPROXY_PORT"
  measure tandem-copy "$r" "$COPY_PORT"
  measure tandem-splice "$r" "$SPLICE_PORT"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

med() { # array name
  local -n arr=$1
  local vals=""
  for r in $(seq 1 "$ROUNDS"); do vals="$vals ${arr[$2.$r]}"; done
  echo "$vals" | median %.6g
}
printf '\n%-14s %10s %10s %10s %12s %10s %10s %10s %10s\n' target "bulk MB/s" "CPU ms/GB" "conns/s" "CPU µs/conn" "p50 µs" "p99 µs" "+p50 µs" "+p99 µs"
declare -A M
for t in $TARGETS; do
  M[$t.mb]=$(med MB "$t"); M[$t.cps]=$(med CPS "$t"); M[$t.p50]=$(med P50 "$t"); M[$t.p99]=$(med P99 "$t")
  M[$t.cgb]=$(med CPU_GB "$t"); M[$t.cconn]=$(med CPU_CONN "$t")
done
for t in $TARGETS; do
  add50=$(awk -v a="${M[$t.p50]}" -v b="${M[direct.p50]}" 'BEGIN {printf "%.1f", a - b}')
  add99=$(awk -v a="${M[$t.p99]}" -v b="${M[direct.p99]}" 'BEGIN {printf "%.1f", a - b}')
  printf '%-14s %10s %10s %10s %12s %10s %10s %10s %10s\n' "$t" "${M[$t.mb]}" "${M[$t.cgb]}" "${M[$t.cps]}" "${M[$t.cconn]}" "${M[$t.p50]}" "${M[$t.p99]}" "$add50" "$add99"
done
echo
for t in tandem-copy tandem-splice; do
  awk -v n="$t" -v mb="${M[$t.mb]}" -v hmb="${M[haproxy.mb]}" -v c="${M[$t.cps]}" -v hc="${M[haproxy.cps]}" \
      -v p50="${M[$t.p50]}" -v hp50="${M[haproxy.p50]}" -v p99="${M[$t.p99]}" -v hp99="${M[haproxy.p99]}" \
      -v d50="${M[direct.p50]}" -v d99="${M[direct.p99]}" 'BEGIN {
    printf "%s / haproxy: bulk %.2fx, connections/s %.2fx, p50 %.2fx (added %.2fx), p99 %.2fx (added %.2fx)\n",
      n, mb / hmb, c / hc, p50 / hp50, (p50 - d50) / (hp50 - d50), p99 / hp99, (p99 - d99) / (hp99 - d99) }'
  awk -v n="$t" -v g="${M[$t.cgb]}" -v hg="${M[haproxy.cgb]}" -v c="${M[$t.cconn]}" -v hc="${M[haproxy.cconn]}" 'BEGIN {
    printf "%s / haproxy CPU: per GB %.2fx, per connection %.2fx (below 1 is better)\n", n, g / hg, c / hc }'
done
echo "(throughput: above 1 is better; latency: below 1 is better)"
