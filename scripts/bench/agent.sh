#!/usr/bin/env bash
# Benchmark (not a test): the probe cost of tandem-agent, as a share of one
# core, for TARGETS backends probed by HTTP every INTERVAL_MS (issue 4's
# goal: at most 2% for 1,000 targets at 1 s). KIND=tcp measures TCP
# connect checks instead.
#
# A throwaway Postgres and a tandem-control on loopback; one process serving
# TARGETS listeners (the `bench_backends` example of crates/agent, declared
# as one pool); a release tandem-agent following them. After a warm-up, the
# agent's CPU time (utime + stime from /proc/<pid>/stat, all threads) is
# read over WINDOW seconds of wall time, split into user and kernel time,
# with the connections the probes opened (HTTP probes keep theirs and open a
# fresh one every TANDEM_PROBE_FRESH_CONNECTION_EVERY probes, default 60).
#
#   scripts/bench/agent.sh
#   TARGETS=2000 WINDOW=60 scripts/bench/agent.sh
#   TANDEM_PROBE_FRESH_CONNECTION_EVERY=1 scripts/bench/agent.sh   # a new connection per probe
#   AGENT_BIN=/tmp/tandem-agent-before scripts/bench/agent.sh   # compare builds
#   TLS=1 scripts/bench/agent.sh   # TLS backends (ECDSA P-256, a CA of the run's own):
#                                  # HTTP checks inside TLS, TCP checks as handshakes
#
# With TLS=1 the backends serve HTTPS (rustls) and the pool verifies them
# against the run's CA with SNI localhost; the figures add the handshakes
# (tandem_agent_tls_handshakes_total, resumed or full). HAProxy checks them
# with `check-ssl verify required ca-file` and the same SNI.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

TARGETS=${TARGETS:-1000}
INTERVAL_MS=${INTERVAL_MS:-1000}
KIND=${KIND:-http}
TLS=${TLS:-0}
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-30}
GOAL_PERCENT=${GOAL_PERCENT:-2}
# After the agent, HAProxy (Debian's package) checks the same backends the
# way it would in front of them (`check inter <interval>`, HTTP or TCP), over
# the same window, for a baseline measured in the same run. 0 skips it.
COMPARE_HAPROXY=${COMPARE_HAPROXY:-1}
# The control plane only feeds the agent; its profile does not change the
# agent's figure. Release by default would cost minutes of build.
CONTROL_PROFILE=${CONTROL_PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
AGENT_BIN=${AGENT_BIN:-$TARGET_DIR/release/tandem-agent}
CONTROL_BIN="$TARGET_DIR/$([ "$CONTROL_PROFILE" = dev ] && echo debug || echo "$CONTROL_PROFILE")/tandem-control"
ADMIN_TOKEN=bench-admin-token-0123456789
NODE_TOKEN=bench-node-token-0123456789

ensure_postgres_server
command -v curl >/dev/null || apt_install curl
if [ "$COMPARE_HAPROXY" = 1 ]; then
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_install haproxy
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
fi
step "building tandem-agent (release) and the benchmark backends"
cargo build --release -p tandem-agent --bin tandem-agent --example bench_backends
cargo build --profile "$CONTROL_PROFILE" -p tandem-control --bin tandem-control

WORK=$(mktemp -d -t tandem-bench-agent-XXXXXX)
chmod 755 "$WORK" # the postgres user must reach its data directory
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  pg_ctl_run -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup INT TERM EXIT

wait_http() {
  for _ in $(seq 1 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$1 did not answer"
}
scrape() { curl -fsS "http://$AGENT_ADMIN/metrics" >"$WORK/metrics"; }
metric_sum() { # sum of the last scrape's samples whose name (and labels) start with $1
  awk -v m="$1" '$1 == m || index($1, m "{") == 1 || (index(m, "{") && index($1, m) == 1) { s += $2 } END { printf "%d\n", s }' "$WORK/metrics"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Times the agent went to sleep (voluntary context switches, all threads):
# each wake-up costs more than the probes it starts, so it is worth watching.
sleeps() { awk '/^voluntary_ctxt_switches/ { s += $2 } END { print s }' /proc/$1/task/*/status; }
sys_ticks() { awk '{ print $15 }' "/proc/$1/stat"; }
# CPU ticks of the probe engine's thread (tandem-probes); the rest of the
# agent is its runtime: watch, reports, admin port.
engine_ticks() {
  local t s=0
  for t in /proc/$1/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = tandem-probes ] && s=$((s + $(awk '{ print $14 + $15 }' "$t/stat")))
  done
  echo "$s"
}
now() { date +%s.%N; }

step "starting Postgres, tandem-control and $TARGETS backends"
PG_PORT=$(free_port)
start_postgres "$WORK/pg" "$PG_PORT"

CONTROL_PORT=$(free_port); CONTROL_ADMIN_PORT=$(free_port)
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
TANDEM_LISTEN="127.0.0.1:$CONTROL_PORT" TANDEM_ADMIN_LISTEN="127.0.0.1:$CONTROL_ADMIN_PORT" \
TANDEM_ADMIN_TOKEN=$ADMIN_TOKEN TANDEM_NODE_TOKEN=$NODE_TOKEN TANDEM_NODE_ID=1 TANDEM_INSECURE_PLAINTEXT=true \
TANDEM_STATE_DIR="$WORK/control-state" RUST_LOG=warn \
  "$CONTROL_BIN" >"$WORK/control.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$CONTROL_ADMIN_PORT/readyz"

TLS_ARGS=()
if [ "$TLS" = 1 ]; then
  test_ca "$WORK" "tandem agent bench CA"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/leaf.key" 2>/dev/null
  test_leaf "$WORK" leaf
  TLS_ARGS=(--tls-cert "$WORK/leaf.pem" --tls-key "$WORK/leaf.key" --tls-ca "$WORK/ca.pem")
fi
"$TARGET_DIR/release/examples/bench_backends" --listeners "$TARGETS" --interval-ms "$INTERVAL_MS" --kind "$KIND" \
  "${TLS_ARGS[@]}" --control "http://127.0.0.1:$CONTROL_PORT" --token "$ADMIN_TOKEN" >"$WORK/backends.log" 2>&1 &
BACKENDS_PID=$!
PIDS+=($BACKENDS_PID)
for _ in $(seq 1 600); do grep -q '^ready' "$WORK/backends.log" && break; sleep 0.2; done
grep -q '^ready' "$WORK/backends.log" || { cat "$WORK/backends.log"; die "the backends were not declared"; }

step "starting tandem-agent (release)"
AGENT_ADMIN="127.0.0.1:$(free_port)"
TANDEM_CONTROL="http://127.0.0.1:$CONTROL_PORT" TANDEM_TOKEN=$NODE_TOKEN TANDEM_NODE_ID=bench-agent \
TANDEM_ADMIN_LISTEN=$AGENT_ADMIN RUST_LOG=warn \
  "$AGENT_BIN" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=($AGENT_PID)
wait_http "http://$AGENT_ADMIN/readyz"
for _ in $(seq 1 150); do scrape; [ "$(metric_sum tandem_agent_targets)" -ge "$TARGETS" ] && break; sleep 0.2; done
[ "$(metric_sum tandem_agent_targets)" -ge "$TARGETS" ] || { cat "$WORK/agent.log"; die "the agent did not pick up $TARGETS targets"; }
echo "agent probing $(metric_sum tandem_agent_targets) targets; warming up for ${WARMUP}s"
sleep "$WARMUP"

step "measuring for ${WINDOW}s"
clk=$(getconf CLK_TCK)
scrape; p0=$(metric_sum tandem_agent_probes_total); ok0=$(metric_sum "tandem_agent_probes_total{kind=\"$KIND\",result=\"ok\"")
r0=$(metric_sum tandem_agent_reports_total); c0=$(metric_sum tandem_agent_probe_connections_total)
hf0=$(metric_sum 'tandem_agent_tls_handshakes_total{resumed="false"'); hr0=$(metric_sum 'tandem_agent_tls_handshakes_total{resumed="true"')
a0=$(cpu_ticks "$AGENT_PID"); s0=$(sys_ticks "$AGENT_PID"); e0=$(engine_ticks "$AGENT_PID"); w0=$(sleeps "$AGENT_PID"); b0=$(cpu_ticks "$BACKENDS_PID"); t0=$(now)
sleep "$WINDOW"
a1=$(cpu_ticks "$AGENT_PID"); s1=$(sys_ticks "$AGENT_PID"); e1=$(engine_ticks "$AGENT_PID"); w1=$(sleeps "$AGENT_PID"); b1=$(cpu_ticks "$BACKENDS_PID"); t1=$(now)
scrape; p1=$(metric_sum tandem_agent_probes_total); ok1=$(metric_sum "tandem_agent_probes_total{kind=\"$KIND\",result=\"ok\"")
r1=$(metric_sum tandem_agent_reports_total); c1=$(metric_sum tandem_agent_probe_connections_total)
hf1=$(metric_sum 'tandem_agent_tls_handshakes_total{resumed="false"'); hr1=$(metric_sum 'tandem_agent_tls_handshakes_total{resumed="true"')
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$AGENT_PID/status")

AGENT_SHARE=$(awk -v a=$((a1 - a0)) -v clk="$clk" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.4f", 100 * a / clk / (t1 - t0) }')
awk -v a=$((a1 - a0)) -v sys=$((s1 - s0)) -v engine=$((e1 - e0)) -v wakes=$((w1 - w0)) -v conns=$((c1 - c0)) -v every="${TANDEM_PROBE_FRESH_CONNECTION_EVERY:-default}" -v b=$((b1 - b0)) -v clk="$clk" -v t0="$t0" -v t1="$t1" \
    -v probes=$((p1 - p0)) -v ok=$((ok1 - ok0)) -v reports=$((r1 - r0)) -v targets="$TARGETS" -v kind="$KIND" \
    -v interval="$INTERVAL_MS" -v goal="$GOAL_PERCENT" -v rss="$rss" -v cores="$(nproc)" \
    -v tls="$TLS" -v full=$((hf1 - hf0)) -v resumed=$((hr1 - hr0)) 'BEGIN {
  wall = t1 - t0
  share = 100 * a / clk / wall
  printf "\n%d %s%s targets every %d ms, %.1f s window, %s cores\n", targets, toupper(kind), (tls == 1 ? " over TLS" : ""), interval, wall, cores
  if (tls == 1) printf "  TLS handshakes:  %d full, %d resumed (%.1f/s)\n", full, resumed, (full + resumed) / wall
  printf "  probes:          %d (%.0f/s, %d ok), %d reports (%.1f/s)\n", probes, probes / wall, ok, reports, reports / wall
  printf "  connections:     %d opened (%.0f/s; fresh connection every: %s; 0 from a build without the metric)\n", conns, conns / wall, every
  printf "  agent CPU:       %.2f%% of one core (%.1f us per probe), RSS %.1f MiB\n", share, (probes ? 1e6 * a / clk / probes : 0), rss / 1024
  printf "    user / kernel: %.2f%% / %.2f%%\n", 100 * (a - sys) / clk / wall, 100 * sys / clk / wall
  printf "    probe engine / the rest: %.2f%% / %.2f%% (0 / all from a build without the engine thread)\n", 100 * engine / clk / wall, 100 * (a - engine) / clk / wall
  printf "    wake-ups:      %.0f/s (voluntary context switches)\n", wakes / wall
  printf "  backends CPU:    %.2f%% of one core (for reference)\n", 100 * b / clk / wall
  printf "  goal:            <= %s%% of one core -> %.2fx the goal (%s)\n", goal, share / goal, (share <= goal ? "met" : "not met")
}'

[ "$COMPARE_HAPROXY" = 1 ] || exit 0
step "the same checks by HAProxy, for comparison"
kill -TERM "$AGENT_PID" 2>/dev/null || true
wait "$AGENT_PID" 2>/dev/null || true
{
  # The frontend is a listener HAProxy insists on; nothing connects to it.
  haproxy_cfg "$([ "$KIND" = http ] && echo http || echo tcp)" "$(free_port)" 4000 \
    "timeout connect 1s" "timeout client 30s" "timeout server 30s" "timeout check 1s"
  [ "$KIND" = http ] && echo "  option httpchk GET /healthz" && echo "  http-check expect status 200"
  if [ "$TLS" = 1 ]; then
    echo "  default-server check inter ${INTERVAL_MS}ms fall 2 rise 2 check-ssl verify required ca-file $WORK/ca.pem check-sni localhost verifyhost localhost"
  else
    echo "  default-server check inter ${INTERVAL_MS}ms fall 2 rise 2"
  fi
  awk '$1 == "backend" { printf "  server s%d %s\n", NR, $2 }' "$WORK/backends.log"
} >"$WORK/haproxy.cfg"
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)
sleep "$(awk -v i="$INTERVAL_MS" -v w="$WARMUP" 'BEGIN { print w + 2 * i / 1000 }')"
kill -0 "$HAPROXY_PID" 2>/dev/null || { cat "$WORK/haproxy.log"; die "HAProxy did not start"; }
h0=$(cpu_ticks "$HAPROXY_PID"); hs0=$(sys_ticks "$HAPROXY_PID"); t0=$(now)
sleep "$WINDOW"
h1=$(cpu_ticks "$HAPROXY_PID"); hs1=$(sys_ticks "$HAPROXY_PID"); t1=$(now)
awk -v h=$((h1 - h0)) -v sys=$((hs1 - hs0)) -v clk="$clk" -v t0="$t0" -v t1="$t1" \
    -v targets="$TARGETS" -v interval="$INTERVAL_MS" 'BEGIN {
  wall = t1 - t0
  share = 100 * h / clk / wall
  printf "\n  HAProxy CPU:     %.2f%% of one core (%.1f us per check, at %d checks/s expected)\n", share, 1e6 * h / clk / (targets * 1000 / interval * wall), targets * 1000 / interval
  printf "    user / kernel: %.2f%% / %.2f%%\n", 100 * (h - sys) / clk / wall, 100 * sys / clk / wall
}'
awk -v a="$AGENT_SHARE" -v h=$((h1 - h0)) -v clk="$clk" -v t0="$t0" -v t1="$t1" 'BEGIN {
  share = 100 * h / clk / (t1 - t0)
  if (share > 0) printf "  tandem-agent / HAProxy CPU: %.2fx\n", a / share
}'
