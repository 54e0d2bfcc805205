#!/usr/bin/env bash
# Runs Tandem natively, no Docker: the whole topology as local processes on
# loopback ports, with throwaway Postgres clusters for the control plane and
# for the widget shop.
#
#   browser ─► proxy-1 :8080 ─┐            ┌─► shop-1 :3001 ─┐
#          └─► proxy-2 :8082 ─┴── HTTP ────┼─► shop-2 :3002 ─┼─► shop-db (Postgres :55433)
#                 │ watch (gRPC)           └─► shop-3 :3003 ─┘
#                 ▼                                 ▲ HTTP probes
#          control-1 :7400 ◄── reports ── agent-1, agent-2
#                 │
#          control-db (Postgres :55432)
#
# The shop's pool, backends and route are configured through the control
# API with tandemctl, as an operator would. Ctrl-C stops everything and
# removes the temporary state.
#
#   scripts/run-local.sh            # build (debug profile) and run
#   PROFILE=release scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PROFILE=${PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
CONTROL_PORT=${CONTROL_PORT:-7400}
CONTROL_ADMIN_PORT=${CONTROL_ADMIN_PORT:-7401}
PG_PORT=${PG_PORT:-55432}
SHOP_PG_PORT=${SHOP_PG_PORT:-55433}
SHOP_PORTS=(${SHOP_1_PORT:-3001} ${SHOP_2_PORT:-3002} ${SHOP_3_PORT:-3003})
PROXY_PORTS=(${PROXY_1_PORT:-8080} ${PROXY_2_PORT:-8082})
PROXY_ADMIN_PORTS=(${PROXY_1_ADMIN_PORT:-8081} ${PROXY_2_ADMIN_PORT:-8083})
AGENT_ADMIN_PORTS=(${AGENT_1_ADMIN_PORT:-7501} ${AGENT_2_ADMIN_PORT:-7502})
export TANDEM_ADMIN_TOKEN=${TANDEM_ADMIN_TOKEN:-local-admin-token-change-me}
export TANDEM_NODE_TOKEN=${TANDEM_NODE_TOKEN:-local-node-token-change-me}
export SHOP_ADMIN_TOKEN=${SHOP_ADMIN_TOKEN:-local-shop-admin-token-change-me}

ensure_postgres_server
step "building ($PROFILE profile)"
cargo build --workspace --bins --profile "$PROFILE"

WORK=$(mktemp -d -t tandem-local-XXXXXX)
# The Postgres servers run as `postgres` when we are root: let them in.
chmod 755 "$WORK"
PIDS=()
NAMES=()
cleanup() {
  trap - EXIT
  # Finish even when a second Ctrl-C comes or the terminal's reader (a
  # `| tee`) is gone: nothing may be left running.
  trap '' INT TERM PIPE
  set +e
  step "stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in control-db shop-db; do
    [ -d "$WORK/$db/data" ] && pg_ctl_run -D "$WORK/$db/data" -m fast -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
  echo "stopped; nothing left running"
}
trap cleanup EXIT
# Ctrl-C or a TERM: leave through the EXIT trap, which stops everything.
trap 'exit 130' INT
trap 'exit 143' TERM

psql_run() {
  local psql; psql=$(command -v psql || echo "$(pg_bin)/psql")
  "$psql" -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q "$@"
}
# start NAME COMMAND...: runs COMMAND in the background, its log lines
# prefixed with [NAME].
start() {
  local name=$1; shift
  "$@" 2> >(sed -u "s/^/[$name] /" >&2) &
  PIDS+=($!); NAMES+=("$name")
}
# wait_ok URL WHAT: waits up to 30 s for URL to answer 2xx.
wait_ok() {
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  die "$2 did not become ready ($1)"
}

step "starting throwaway Postgres clusters: control-db on :$PG_PORT, shop-db on :$SHOP_PG_PORT"
start_postgres "$WORK/control-db" "$PG_PORT"
start_postgres "$WORK/shop-db" "$SHOP_PG_PORT"
psql_run -p "$SHOP_PG_PORT" -d postgres -c "CREATE DATABASE shop"

CONTROL_PORTS=("$CONTROL_PORT" $((CONTROL_PORT + 10)) $((CONTROL_PORT + 20)))
CONTROL_ADMIN_PORTS=("$CONTROL_ADMIN_PORT" $((CONTROL_ADMIN_PORT + 10)) $((CONTROL_ADMIN_PORT + 20)))
PEERS="1=127.0.0.1:${CONTROL_PORTS[0]},2=127.0.0.1:${CONTROL_PORTS[1]},3=127.0.0.1:${CONTROL_PORTS[2]}"
CONTROL_ENDPOINTS="http://127.0.0.1:${CONTROL_PORTS[0]},http://127.0.0.1:${CONTROL_PORTS[1]},http://127.0.0.1:${CONTROL_PORTS[2]}"
step "starting three tandem-control replicas (one raft group) on :${CONTROL_PORTS[*]}"
for i in 1 2 3; do
  start "control-$i" env DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
    TANDEM_LISTEN="127.0.0.1:${CONTROL_PORTS[$((i - 1))]}" \
    TANDEM_ADMIN_LISTEN="127.0.0.1:${CONTROL_ADMIN_PORTS[$((i - 1))]}" \
    TANDEM_NODE_ID=$i TANDEM_PEERS="$PEERS" TANDEM_STATE_DIR="$WORK/control-$i" "$BIN/tandem-control"
done
for port in "${CONTROL_ADMIN_PORTS[@]}"; do wait_ok "http://127.0.0.1:$port/readyz" "the control replica on :$port"; done

step "starting three widget-shop instances on :${SHOP_PORTS[*]}"
for i in 1 2 3; do
  start "shop-$i" env DATABASE_URL="postgres://postgres@127.0.0.1:$SHOP_PG_PORT/shop" \
    SHOP_LISTEN="127.0.0.1:${SHOP_PORTS[$((i - 1))]}" SHOP_INSTANCE="shop-$i" "$BIN/widget-shop"
done
for port in "${SHOP_PORTS[@]}"; do wait_ok "http://127.0.0.1:$port/readyz" "the shop on :$port"; done

step "configuring the shop's pool and route through the control API (tandemctl)"
ctl() {
  echo "  tandemctl $*"
  TANDEM_ENDPOINT="$CONTROL_ENDPOINTS" TANDEM_TOKEN="$TANDEM_ADMIN_TOKEN" \
    "$BIN/tandemctl" "$@" >/dev/null || die "tandemctl $* failed"
}
# Probe /healthz every second (two failures out, two successes back in);
# a failed connect is retried once elsewhere; three consecutive failures
# eject a backend locally for 5 s.
ctl pool create shop --policy round_robin \
  --health-path /healthz --health-interval 1s --health-timeout 500ms \
  --health-rise 2 --health-fall 2 \
  --connect-timeout 1s --per-try-timeout 5s --retries 1 \
  --outlier-failures 3 --outlier-ejection 5s
for port in "${SHOP_PORTS[@]}"; do ctl backend add shop "127.0.0.1:$port"; done
ctl route add --host '*' --prefix / --pool shop

step "starting two proxies on :${PROXY_PORTS[*]}"
for i in 1 2; do
  start "proxy-$i" env TANDEM_LISTEN="127.0.0.1:${PROXY_PORTS[$((i - 1))]}" \
    TANDEM_ADMIN_LISTEN="127.0.0.1:${PROXY_ADMIN_PORTS[$((i - 1))]}" \
    TANDEM_CONTROL="$CONTROL_ENDPOINTS" TANDEM_TOKEN="$TANDEM_NODE_TOKEN" \
    TANDEM_NODE_ID="proxy-$i" TANDEM_STATE_DIR="$WORK/proxy-$i" TANDEM_WORKERS=1 "$BIN/tandem-proxy"
done
for i in 0 1; do
  wait_ok "http://127.0.0.1:${PROXY_ADMIN_PORTS[$i]}/readyz" "proxy-$((i + 1))"
  wait_ok "http://127.0.0.1:${PROXY_PORTS[$i]}/healthz" "the shop through proxy-$((i + 1))"
done

AGENTS="not built (tandem-agent is not in this tree yet)"
if [ -x "$BIN/tandem-agent" ]; then
  step "starting two health agents"
  for i in 1 2; do
    start "agent-$i" env TANDEM_CONTROL="$CONTROL_ENDPOINTS" TANDEM_TOKEN="$TANDEM_NODE_TOKEN" \
      TANDEM_NODE_ID="agent-$i" TANDEM_ZONE="zone-$i" \
      TANDEM_ADMIN_LISTEN="127.0.0.1:${AGENT_ADMIN_PORTS[$((i - 1))]}" "$BIN/tandem-agent"
  done
  for i in 0 1; do wait_ok "http://127.0.0.1:${AGENT_ADMIN_PORTS[$i]}/healthz" "agent-$((i + 1))"; done
  AGENTS="agent-1 http://127.0.0.1:${AGENT_ADMIN_PORTS[0]}/metrics, agent-2 http://127.0.0.1:${AGENT_ADMIN_PORTS[1]}/metrics"
fi

cat <<MSG

Tandem is running (Ctrl-C stops everything):
  the shop            http://127.0.0.1:${PROXY_PORTS[0]}/   (through proxy-1; proxy-2: http://127.0.0.1:${PROXY_PORTS[1]}/)
  shop servers        http://127.0.0.1:${SHOP_PORTS[0]}/  :${SHOP_PORTS[1]}  :${SHOP_PORTS[2]}   (direct; /healthz /readyz /metrics)
  proxy admin         http://127.0.0.1:${PROXY_ADMIN_PORTS[0]}/config  http://127.0.0.1:${PROXY_ADMIN_PORTS[1]}/config   (/metrics /readyz)
  control API (gRPC)  $CONTROL_ENDPOINTS   (three replicas, one raft group)
  control admin       http://127.0.0.1:${CONTROL_ADMIN_PORTS[0]}/metrics  :${CONTROL_ADMIN_PORTS[1]}  :${CONTROL_ADMIN_PORTS[2]}   (/healthz /readyz)
  health agents       $AGENTS
  databases           control-db postgres://postgres@127.0.0.1:$PG_PORT/postgres
                      shop-db    postgres://postgres@127.0.0.1:$SHOP_PG_PORT/shop

Reload the shop and watch the "served by" badge move between shop-1, -2 and -3.

Break a shop server on purpose, then heal it:
  curl -X PUT -H "authorization: Bearer $SHOP_ADMIN_TOKEN" -H 'content-type: application/json' \\
       -d '{"mode":"error"}' http://127.0.0.1:${SHOP_PORTS[1]}/admin/fault     # or "slow" (+ "delay_ms"), "hang"
  curl -X DELETE -H "authorization: Bearer $SHOP_ADMIN_TOKEN" http://127.0.0.1:${SHOP_PORTS[1]}/admin/fault

Operate Tandem:
  export TANDEM_ENDPOINT=$CONTROL_ENDPOINTS TANDEM_TOKEN=$TANDEM_ADMIN_TOKEN
  $BIN/tandemctl pool get shop
  $BIN/tandemctl backend drain shop 127.0.0.1:${SHOP_PORTS[0]}
  $BIN/tandemctl status            # proxies, agents and backend health
  $BIN/tandemctl cluster status    # the raft group: leader, term, each member's lag
MSG
set +e
wait -n "${PIDS[@]}"
for i in "${!PIDS[@]}"; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || warn "${NAMES[$i]} exited"
done
die "a service exited unexpectedly"
