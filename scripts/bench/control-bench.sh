# Runs one of tandem-control's `cargo bench` targets (sourced by
# watch-fanout.sh and failover.sh, after scripts/lib.sh).
#
# run_control_bench BENCH OWN_PROCESSES TITLE [ARGS...]
#   BENCH          the bench target in crates/control/benches/
#   OWN_PROCESSES  a grep -E pattern for the processes the bench starts (its
#                  recorded pids are killed on interrupt only if they match)
#   TITLE          the progress line to show
#   ARGS           passed to the bench
run_control_bench() {
  local bench=$1 own=$2 title=$3
  shift 3
  step "building tandem-control and the benchmark (release; reuses target/)"
  # Only what runs: the release tandem-control binary, and the bench target
  # (bench profile = release settings, same target/release directory).
  cargo build --release -p tandem-control --bin tandem-control
  # The bench executable is run directly (below), so an interrupt can stop it.
  # (Pick the bench's own artifact: cargo also reports the tandem-control
  # binary, in no fixed order.)
  BENCH_BIN=$(cargo bench -p tandem-control --bench "$bench" --no-run --message-format=json-render-diagnostics |
    grep -F "\"kind\":[\"bench\"]" | grep -F "\"name\":\"$bench\"" |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -x "$BENCH_BIN" ] || die "cargo did not report the $bench bench executable"

  # Everything the run creates (Postgres, replica state, logs) lives here.
  WORK=$(mktemp -d -t "tandem-bench-$bench-XXXXXX")
  chmod 755 "$WORK" # the throwaway Postgres runs as `postgres` below it
  PIDFILE=$WORK/pids
  BENCH_PID=
  OWN_PROCESSES=$own
  trap control_bench_cleanup INT TERM EXIT

  step "$title"
  # In the background so a signal runs the trap at once (bash defers traps
  # while a foreground command runs); `cargo bench` would pass --bench too.
  TMPDIR=$WORK "$BENCH_BIN" --bench --pid-file "$PIDFILE" "$@" &
  BENCH_PID=$!
  wait "$BENCH_PID"
}

control_bench_cleanup() {
  trap - INT TERM EXIT
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  # The benchmark stops its children itself; after an interrupt it cannot,
  # so kill the pids it recorded (only if they are still ours).
  if [ -f "$PIDFILE" ]; then
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE "$OWN_PROCESSES"; then
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
