#!/usr/bin/env bash
# Runs Tandem natively, no Docker: the whole topology as local processes on
# loopback ports, with throwaway databases for the control plane and for the
# widget shop. Zones as in docker-compose.yml.
#
#   browser ─► proxy-1 :8080 (zone-a) ─┐          ┌─► shop-1 :3001 ─┐  writes ─► TCP route :15533 (single_active, /primary) ─┐
#          └─► proxy-2 :8082 (zone-b) ─┴─ HTTP ───┼─► shop-2 :3002 ─┼─ reads ──► TCP route :15534 (/replica) ─────────────────┤
#                 │ watch (gRPC)                   └─► shop-3 :3003 ─┘        shop-db-1..3 (Patroni, 127.0.1.1-3:15433, sync strict)
#                 ▼                                        ▲ HTTP probes, Patroni REST checks
#   control-1 :7400 ◄─raft─► control-2 :7410 ◄─raft─► control-3 :7420 ◄── reports ── agent-1 (zone-a), agent-2 (zone-b)
#         └───────────────────────┴─────────────────────────┘
#           control-db-1..3 (Patroni, 127.0.2.1-3:15432; DATABASE_URL names all three)
#           etcd-1..3 (:12379 :12389 :12399), both clusters' store, failsafe_mode
#
# The data tier (TANDEM_LOCAL_DATA_TIER=patroni, the default) is two Patroni
# clusters of three on one etcd; scripts/run-local.sh installs Debian's
# patroni and etcd-server when missing. The TCP routes are served by the
# proxies; on one machine only one proxy can hold a route's address, and the
# other binds it (within 2 s) if that one dies. TANDEM_LOCAL_DATA_TIER=single
# runs one plain Postgres per database instead (control-db :15432, shop-db
# :15433), which starts faster.
#
# The status page (live, read-only) is on every control replica's admin
# port: http://127.0.0.1:7401/ui/ (also :7411, :7421).
#
# The shop's pool, backends and route are configured through the control
# API with tandemctl, as an operator would. Any component may die or be
# killed: the others keep running and the first terminal says so. Ctrl-C
# stops everything and removes the temporary state.
#
#   scripts/run-local.sh                 # build (debug profile) and run
#   scripts/run-local.sh up --no-build   # run what target/ holds
#   PROFILE=release scripts/run-local.sh
#
# From another terminal (components: etcd-1..3 control-db-1..3 shop-db-1..3
# control-1..3 shop-1..3 proxy-1..2 agent-1..2; with the single tier,
# control-db and shop-db):
#
#   scripts/run-local.sh ps              # each component's state, pid, ports, readiness
#   scripts/run-local.sh kill shop-2     # SIGKILL (a crash); several names at once work too
#   scripts/run-local.sh start shop-2    # start it again and wait until it is ready
#   scripts/run-local.sh stop shop-2     # graceful stop (SIGTERM; Postgres: fast shutdown)
#   scripts/run-local.sh restart shop-2
#   scripts/run-local.sh kill $(scripts/run-local.sh primary shop-db)   # a database failover
#   scripts/run-local.sh logs shop-2 -f
#   scripts/run-local.sh down            # what Ctrl-C does in the first terminal
#
# Ports: every port is its default plus TANDEM_LOCAL_PORT_OFFSET (default
# 0), e.g. TANDEM_LOCAL_PORT_OFFSET=1000 puts the shop on :9080 and the
# control API on :8400; give the same offset to the commands above. The
# supervisor is scripts/run-local.py (Python 3.9+).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_python3
cmd=${1:-up}
case "$cmd" in
  up) shift $(($# > 0 ? 1 : 0)) ;;
  *) exec python3 scripts/run-local.py "$@" ;;
esac
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) die "unknown option $arg (usage: scripts/run-local.sh [up [--no-build]])" ;;
  esac
done

PROFILE=${PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export TANDEM_LOCAL_BIN=${TANDEM_LOCAL_BIN:-$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")}

ensure_postgres_server
if [ "${TANDEM_LOCAL_DATA_TIER:-patroni}" = patroni ]; then
  ensure_patroni
fi
if [ "$build" = 1 ]; then
  step "building ($PROFILE profile)"
  cargo build --workspace --bins --profile "$PROFILE"
fi
# The supervisor takes over this process: Ctrl-C reaches it alone.
exec python3 scripts/run-local.py up
