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
#        ROUNDS=3 SHORT=2000 TRIPS=5000 TARGETS="haproxy tandem-copy" scripts/bench/tcp-instructions.sh
#        BASELINE_BIN=/tmp/tandem-proxy-before TARGETS="baseline-copy tandem-copy" scripts/bench/tcp-instructions.sh
# Not a test: nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."

SHORT=${SHORT:-1000}
TRIPS=${TRIPS:-2000}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-haproxy tandem-copy tandem-splice}
BASELINE_BIN=${BASELINE_BIN:-}
BASE_PORT=${BASE_PORT:-18400}

need=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need[@]}" >/dev/null; }
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

echo "building tandem-proxy and the benchmark backend (release)"
cargo build --release -q -p tandem-proxy --bin tandem-proxy --example tcp_bench
TANDEM=target/release/tandem-proxy
BENCH=target/release/examples/tcp_bench

WORK=$(mktemp -d -t tandem-tcp-ins-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

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
wait_port "$BACKEND_PORT"

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
      cat >"$DIR/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 1s
  timeout client 30m
  timeout server 30m
frontend fe
  bind 127.0.0.1:$PORT
  default_backend be
backend be
  server b1 127.0.0.1:$BACKEND_PORT
CFG
      "${vg[@]}" "$HAPROXY" -f "$DIR/haproxy.cfg" -db >"$DIR/log" 2>&1 &
      ;;
    tandem-copy | tandem-splice | baseline-copy | baseline-splice)
      mode=${target#*-}
      if [ "${target%%-*}" = baseline ]; then
        [ -n "$BASELINE_BIN" ] || { echo "$target needs BASELINE_BIN" >&2; exit 2; }
        bin=$BASELINE_BIN
      fi
      cat >"$DIR/snapshot.json" <<SNAP
{"revision": 1,
 "pools": {"bench": {"config": {"name": "bench", "policy": "round_robin",
     "health_check": {"kind": "tcp", "path": "/", "method": "GET", "host": "",
       "expected_status_min": 200, "expected_status_max": 399,
       "interval_ms": 2000, "timeout_ms": 1000, "rise": 2, "fall": 3},
     "connect_timeout_ms": 1000, "request_timeout_ms": 30000,
     "retry": {"attempts": 1, "per_try_timeout_ms": 5000, "budget_percent": 20},
     "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000, "max_ejected_percent": 50},
     "panic_threshold_percent": 50},
   "backends": [{"address": "127.0.0.1:$BACKEND_PORT", "weight": 1, "role": "primary", "admin_state": "enabled"}],
   "revision": 1}},
 "routes": [],
 "tcp_routes": [{"listen": "127.0.0.1:$PORT", "pool": "bench"}]}
SNAP
      env TANDEM_LISTEN=127.0.0.1:$((PORT + 1)) TANDEM_ADMIN_LISTEN=127.0.0.1:$((PORT + 100)) \
        TANDEM_STATE_DIR="$DIR" TANDEM_CONTROL= TANDEM_WORKERS=1 TANDEM_TCP_COPY="$mode" RUST_LOG=warn \
        "${vg[@]}" "$bin" >"$DIR/log" 2>&1 &
      ;;
    *) echo "unknown target $target (haproxy, tandem-copy, tandem-splice, baseline-copy, baseline-splice)" >&2; exit 2 ;;
  esac
  VG_PID=$!
  PIDS+=($VG_PID)
  wait_port "$PORT"
}

# Instructions the process executes while "$@" runs.
count() { # command...
  rm -f "$DIR"/callgrind.out.*
  callgrind_control -i on "$VG_PID" >/dev/null 2>&1
  "$@" >/dev/null
  callgrind_control -i off "$VG_PID" >/dev/null 2>&1
  callgrind_control -d "$VG_PID" >/dev/null 2>&1
  sleep 0.5
  cat "$DIR"/callgrind.out.* 2>/dev/null | awk '/^totals:/ { t += $2 } END { print t + 0 }'
}
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

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
printf "%-16s %16s %10s %16s %10s\n" target "instr/short conn" "vs first" "instr/round trip" "vs first"
first=${TARGETS%% *}
declare -A MED
for t in $TARGETS; do
  for k in short kept; do
    MED[$t.$k]=$(for r in $(seq 1 "$ROUNDS"); do echo "${INS[$t.$k.$r]}"; done | median)
  done
  printf "%-16s %16s %10s %16s %10s\n" "$t" "${MED[$t.short]}" \
    "$(awk -v a="${MED[$t.short]}" -v b="${MED[$first.short]}" 'BEGIN { printf "%.2fx", a / b }')" \
    "${MED[$t.kept]}" \
    "$(awk -v a="${MED[$t.kept]}" -v b="${MED[$first.kept]}" 'BEGIN { printf "%.2fx", a / b }')"
done
