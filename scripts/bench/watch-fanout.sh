#!/usr/bin/env bash
# Benchmark (not a test): Watch fan-out of tandem-control (issue 2's goal:
# p99 under 100 ms from a committed change to the last of 100 watchers,
# with 1,000 pools and 10,000 backends).
#
# A throwaway Postgres and one release tandem-control on loopback. The
# `watch_fanout` bench target (crates/control/benches/) seeds the
# configuration through the gRPC API with several clients, opens the watch
# streams, then writes changes (UpdateBackend) spaced 20 ms apart and in a
# burst, and times each from the write RPC returning to the last watcher
# receiving it. Baseline in the same run: a plain LISTEN client receiving the
# same commit's NOTIFY. Method and figures: docs/benchmarks.md.
#
#   scripts/bench/watch-fanout.sh
#   scripts/bench/watch-fanout.sh --watchers 200 --changes 500 --interval-ms 10
#   scripts/bench/watch-fanout.sh --help
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

ensure_postgres_server
step "building tandem-control and the benchmark (release; reuses target/)"
# Only what runs: the release tandem-control binary, and the bench target
# (bench profile = release settings, same target/release directory; it pulls
# in tandem-testkit's library).
cargo build --release -p tandem-control --bin tandem-control
# The bench executable is run directly (below), so an interrupt can stop it.
BENCH_BIN=$(cargo bench -p tandem-control --bench watch_fanout --no-run --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BENCH_BIN" ] || die "cargo did not report the watch_fanout bench executable"

# Everything the run creates (Postgres, replica state, logs) lives here.
WORK=$(mktemp -d -t tandem-bench-fanout-XXXXXX)
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
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'tandem-control'; then
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

step "watch fan-out (seeding 11,000 objects takes ~20 s)"
# In the background so a signal runs the trap at once (bash defers traps
# while a foreground command runs); `cargo bench` would pass --bench too.
TMPDIR=$WORK "$BENCH_BIN" --bench --pid-file "$PIDFILE" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
