#!/usr/bin/env bash
# Runs Tandem natively, no Docker: a throwaway Postgres and the services as
# local processes on loopback ports. Ctrl-C stops everything and removes the
# temporary state.
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
export TANDEM_ADMIN_TOKEN=${TANDEM_ADMIN_TOKEN:-local-admin-token-change-me}
export TANDEM_NODE_TOKEN=${TANDEM_NODE_TOKEN:-local-node-token-change-me}

ensure_postgres_server
step "building ($PROFILE profile)"
cargo build --workspace --bins --profile "$PROFILE"

WORK=$(mktemp -d -t tandem-local-XXXXXX)
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  step "stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  pg_ctl_run -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
  echo "stopped; nothing left running"
}
trap cleanup INT TERM EXIT

pg_ctl_run() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$(pg_bin)/pg_ctl" "$@"; else "$(pg_bin)/pg_ctl" "$@"; fi
}
start_postgres() {
  mkdir -p "$WORK/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$WORK/pg"
  local run=(); [ "$(id -u)" -eq 0 ] && run=(runuser -u postgres --)
  "${run[@]}" "$(pg_bin)/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  pg_ctl_run -D "$WORK/pg/data" -l "$WORK/pg/pg.log" -w -t 30 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pg" start >/dev/null
}

step "starting a throwaway Postgres on 127.0.0.1:$PG_PORT"
start_postgres

step "starting tandem-control on 127.0.0.1:$CONTROL_PORT"
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
TANDEM_LISTEN="127.0.0.1:$CONTROL_PORT" TANDEM_ADMIN_LISTEN="127.0.0.1:$CONTROL_ADMIN_PORT" \
TANDEM_NODE_ID=1 "$BIN/tandem-control" 2> >(sed 's/^/[control-1] /' >&2) &
PIDS+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$CONTROL_ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$CONTROL_ADMIN_PORT/readyz" >/dev/null || die "the control plane did not become ready"

cat <<MSG

Tandem is running (Ctrl-C stops everything):
  control API (gRPC)  http://127.0.0.1:$CONTROL_PORT
  control admin       http://127.0.0.1:$CONTROL_ADMIN_PORT/metrics  /healthz  /readyz

Try it:
  export TANDEM_ENDPOINT=http://127.0.0.1:$CONTROL_PORT TANDEM_TOKEN=$TANDEM_ADMIN_TOKEN
  $BIN/tandemctl pool create shop --policy least_connections --health-path /healthz
  $BIN/tandemctl backend add shop 127.0.0.1:3001
  $BIN/tandemctl pool list
MSG
wait -n "${PIDS[@]}" || true
die "a service exited unexpectedly"
