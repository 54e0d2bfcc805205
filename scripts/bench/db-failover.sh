#!/usr/bin/env bash
# Benchmark (not a test): a database failover as a client sees it through
# Tandem's TCP route and through HAProxy (issue 20's goal: Tandem no slower
# than HAProxy, ≤ 1.0x).
#
# One Patroni cluster of three real Postgres 15 servers (Debian's patroni,
# a three-member etcd; ttl 10 s, loop_wait 1 s, retry_timeout 3 s) with
# two routers in front of it at once:
#   - Tandem: a tandem-control, one health agent and one tandem-proxy; a
#     TCP route to a `single_active` pool of the three members checked on
#     Patroni's `/primary`, every 1 s, timeout 800 ms, fall 2, rise 2,
#     `on_unhealthy close`;
#   - HAProxy as in Patroni's reference setup: `mode tcp`,
#     `option httpchk GET /primary`, `check port <REST port> inter 1s fall 2`
#     (rise 2, HAProxy's default), `on-marked-down shutdown-sessions`.
# Each run kills the primary's host (Patroni and Postgres, SIGKILL) and
# times, from the kill, the first INSERT that commits through each router
# (a new connection every 50 ms on each, both at once, which one starts
# first alternating). The killed host then rejoins as a replica and the
# next run waits for the cluster to be whole. Prints each run and the
# ratio Tandem / HAProxy. The work is the ignored test `db_failover` in
# crates/widget-shop/tests/datatier_bench.rs.
#
#   scripts/bench/db-failover.sh                   # 3 runs
#   DB_FAILOVER_RUNS=10 scripts/bench/db-failover.sh
#
# PROFILE (release by default) picks the build. The table is also appended
# to target/bench/db-failover.md. Method and figures: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

PROFILE=${PROFILE:-release}
ensure_postgres_server
ensure_patroni
ensure_haproxy
mkdir -p target/bench
export DATATIER_BENCH_REPORT=${DATATIER_BENCH_REPORT:-$PWD/target/bench/db-failover.md}
step "building the control plane, agent and proxy ($PROFILE profile)"
cargo build --profile "$PROFILE" --bins -p tandem-control -p tandem-agent -p tandem-proxy
step "measuring (about 40 s a run)"
cargo test --profile "$PROFILE" -p widget-shop --test datatier_bench -- \
  --ignored --exact db_failover --nocapture --test-threads=1
