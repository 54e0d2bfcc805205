#!/usr/bin/env bash
# Benchmark (not a test): leader failover of a three-replica Tandem control
# plane side by side with a three-member etcd (issue 5's goal: no slower
# than etcd).
#
# The `failover` bench target (crates/control/benches/) runs both groups on
# loopback — three release tandem-control replicas on a throwaway Postgres,
# three etcd members (Debian's etcd-server, default timers: heartbeat
# 100 ms, election 1000 ms) with data dirs in a temp dir — and, alternating
# between them, kill -9s the leader 20 times each. It times, from the kill:
# a survivor reporting itself leader with an entry of its new term committed
# (the headline), and the first client write committed. It prints median,
# p99 and the ratio Tandem/etcd. Method and figures: docs/benchmarks.md.
#
#   scripts/bench/failover.sh
#   scripts/bench/failover.sh --runs 50
#   scripts/bench/failover.sh --help
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

ensure_postgres_server
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd-server and etcd-client (Debian packages)"
  apt_install etcd-server etcd-client
  # On a systemd host the package starts a system etcd; the benchmark runs
  # its own members on other ports and wants the cores to itself.
  as_root service etcd stop >/dev/null 2>&1 || true
fi
echo "etcd: $(etcd --version | head -1)"

step "building tandem-control and the benchmark (release; reuses target/)"
# Only what runs: the release tandem-control binary, and the bench target
# (bench profile = release settings, same target/release directory; it pulls
# in tandem-testkit's library).
cargo build --release -p tandem-control --bin tandem-control
# The bench executable is run directly (below), so an interrupt can stop it.
BENCH_BIN=$(cargo bench -p tandem-control --bench failover --no-run --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BENCH_BIN" ] || die "cargo did not report the failover bench executable"

# Everything the run creates (Postgres, raft state, etcd data, logs) lives here.
WORK=$(mktemp -d -t tandem-bench-failover-XXXXXX)
chmod 755 "$WORK" # the throwaway Postgres runs as `postgres` below it
PIDFILE=$WORK/pids
pg_ctl_run() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$(pg_bin)/pg_ctl" "$@"; else "$(pg_bin)/pg_ctl" "$@"; fi
}
BENCH_PID=
cleanup() {
  trap - INT TERM EXIT
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  # The benchmark stops its children itself; after an interrupt it cannot,
  # so kill the pids it recorded (only if they are still ours).
  if [ -f "$PIDFILE" ]; then
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE 'tandem-control|etcd'; then
        kill -9 "$pid" 2>/dev/null || true
      fi
    done <"$PIDFILE"
  fi
  for pid in "$WORK"/*/data/postmaster.pid; do
    if [ -f "$pid" ]; then
      pg_ctl_run -D "$(dirname "$pid")" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup INT TERM EXIT

step "leader failover: tandem vs etcd (about 3 minutes for 20 runs)"
# In the background so a signal runs the trap at once (bash defers traps
# while a foreground command runs); `cargo bench` would pass --bench too.
TMPDIR=$WORK "$BENCH_BIN" --bench --pid-file "$PIDFILE" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
