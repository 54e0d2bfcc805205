#!/usr/bin/env bash
# Instructions per short connection and per round trip of TCP routes, for
# tandem-proxy (TANDEM_TCP_COPY=copy and =splice) and HAProxy `mode tcp`,
# counted by valgrind's callgrind: figures the machine's other load cannot
# move (timings swing by 2x on the shared 2-core VMs, and `perf stat` has
# no hardware counters there). Under callgrind a proxy runs ~50x slower:
# rates and latencies here mean nothing, only the counts do.
#
# Each target runs as its own process under callgrind with instrumentation
# off (tandem-proxy with one worker, HAProxy with nbthread 1, both in front
# of crates/proxy/examples/tcp_bench's backend). After a warm-up,
# instrumentation is switched on (callgrind_control -i on) around a fixed
# load from one client, then off, and the dump's `totals:` is divided by
# the load's size:
# - short: SHORT connections one after another, each connect, 1+64 bytes
#   up, 64 bytes down, close (the backend closes after answering);
# - kept:  one connection, TRIPS round trips of 64 bytes each way.
# What the process executes by itself in as long a time without load (its
# timers; measured the same way around a sleep) is subtracted first.
# ROUNDS repeats everything (new processes), interleaved; the median is
# printed.
#
# Usage: scripts/bench/tcp-instructions.sh
#        BENCH_PROFILE=debug SHORT=20 TRIPS=20 scripts/bench/tcp-instructions.sh  (checks the script only)
#        ROUNDS=3 SHORT=2000 TRIPS=5000 TARGETS="haproxy tandem-copy" scripts/bench/tcp-instructions.sh
#        BASELINE_BIN=/tmp/tandem-proxy-before TARGETS="baseline-copy tandem-copy" scripts/bench/tcp-instructions.sh
# Not a test: nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh

SHORT=${SHORT:-1000}
TRIPS=${TRIPS:-2000}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-haproxy tandem-copy tandem-splice}
BASELINE_BIN=${BASELINE_BIN:-}
BASE_PORT=${BASE_PORT:-18400}

bench_need haproxy valgrind python3
HAPROXY=$(tool_path haproxy)

bench_build "tandem-proxy and the benchmark backend" -p tandem-proxy --bin tandem-proxy --example tcp_bench
TANDEM=$BUILD/tandem-proxy
BENCH=$BUILD/examples/tcp_bench

bench_work tandem-tcp-ins
# Under callgrind a process starts slowly: up to 60 s.
wait_port_vg() { wait_port "$1" 600 0.1; }

# The fixed load (one client, one thing at a time; the client's own cost
# is not counted: only the proxy runs under callgrind).
cat >"$WORK/load.py" <<'PY'
import socket, sys
port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
addr = ("127.0.0.1", port)
def read_exact(s, k):
    got = b""
    while len(got) < k:
        b = s.recv(k - len(got))
        if not b:
            raise SystemExit("the connection ended early")
        got += b
    return got
if kind == "short":
    msg = b"C" + b"\x01" * 64
    for _ in range(n):
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(msg)
        read_exact(s, 64)
        s.close()
else:
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"P")
    msg = b"\x03" * 64
    for _ in range(n):
        s.sendall(msg)
        read_exact(s, 64)
    s.close()
PY
load() { python3 "$WORK/load.py" "$@"; }

BACKEND_PORT=$BASE_PORT
"$BENCH" serve "127.0.0.1:$BACKEND_PORT" &
PIDS+=($!)
wait_port_vg "$BACKEND_PORT"

# Starts one target under callgrind; sets PORT, VG_PID, DIR.
start() { # target index
  local target=$1 i=$2 bin=$TANDEM mode
  PORT=$((BASE_PORT + 10 + 2 * i))
  DIR=$WORK/$target
  rm -rf "$DIR"
  mkdir -p "$DIR"
  local vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$DIR/callgrind.out")
  case $target in
    haproxy)
      haproxy_tcp_cfg "$PORT" "$BACKEND_PORT" >"$DIR/haproxy.cfg"
      "${vg[@]}" "$HAPROXY" -f "$DIR/haproxy.cfg" -db >"$DIR/log" 2>&1 &
      ;;
    tandem-copy | tandem-splice | baseline-copy | baseline-splice)
      mode=${target#*-}
      if [ "${target%%-*}" = baseline ]; then
        [ -n "$BASELINE_BIN" ] || { echo "$target needs BASELINE_BIN" >&2; exit 2; }
        bin=$BASELINE_BIN
      fi
      bench_snapshot "$BACKEND_PORT" "127.0.0.1:$PORT" >"$DIR/snapshot.json"
      tandem_env $((PORT + 1)) $((PORT + 100)) "$DIR"
      env "${TANDEM_ENV[@]}" TANDEM_TCP_COPY="$mode" \
        "${vg[@]}" "$bin" >"$DIR/log" 2>&1 &
      ;;
    *) echo "unknown target $target (haproxy, tandem-copy, tandem-splice, baseline-copy, baseline-splice)" >&2; exit 2 ;;
  esac
  VG_PID=$!
  PIDS+=($VG_PID)
  wait_port_vg "$PORT"
}

# Instructions the process executes while "$@" runs.
count() { callgrind_count "$DIR" "$@"; }
# Instructions per unit of a load, less the idle process's for as long.
per() { # n command...
  local n=$1 t0 t1 busy idle
  shift
  t0=$(date +%s.%N)
  busy=$(count "$@")
  t1=$(date +%s.%N)
  [ -n "${KEEP_DUMPS:-}" ] && cp "$(ls "$DIR"/callgrind.out.* | head -1)" "$KEEP_DUMPS/$TARGET.$KIND.$R.out" 2>/dev/null || true
  idle=$(count sleep "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')")
  awk -v b="$busy" -v i="$idle" -v n="$n" 'BEGIN { printf "%.0f", (b - i) / n }'
}

declare -A INS
echo "load: $SHORT short connections, $TRIPS round trips on a kept connection; targets: $TARGETS; $ROUNDS round(s)"
for r in $(seq 1 "$ROUNDS"); do
  i=0
  for t in $TARGETS; do
    start "$t" "$i"
    i=$((i + 1))
    # Warm-up: lazy statics, the allocator's pools, the first connections.
    load "$PORT" short 50
    load "$PORT" kept 50
    TARGET=$t R=$r KIND=short
    INS[$t.short.$r]=$(per "$SHORT" load "$PORT" short "$SHORT")
    KIND=kept
    INS[$t.kept.$r]=$(per "$TRIPS" load "$PORT" kept "$TRIPS")
    printf "  round %d %-16s %10s per short connection %10s per round trip\n" \
      "$r" "$t" "${INS[$t.short.$r]}" "${INS[$t.kept.$r]}"
    kill "$VG_PID" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
  done
done

echo
printf "%-16s %16s %10s %16s %10s\n" target "instr/short conn" "vs first" "instr/round trip" "vs first"
first=${TARGETS%% *}
declare -A MED
for t in $TARGETS; do
  for k in short kept; do
    MED[$t.$k]=$(for r in $(seq 1 "$ROUNDS"); do echo "${INS[$t.$k.$r]}"; done | median %.0f)
  done
  printf "%-16s %16s %10s %16s %10s\n" "$t" "${MED[$t.short]}" \
    "$(awk -v a="${MED[$t.short]}" -v b="${MED[$first.short]}" 'BEGIN { printf "%.2fx", a / b }')" \
    "${MED[$t.kept]}" \
    "$(awk -v a="${MED[$t.kept]}" -v b="${MED[$first.kept]}" 'BEGIN { printf "%.2fx", a / b }')"
done
