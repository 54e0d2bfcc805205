#!/usr/bin/env bash
# Benchmark (not a test): what synchronous_mode_strict costs the widget
# shop's checkout in write latency (issue 20).
#
# Two Patroni clusters of three real Postgres 15 servers on one
# three-member etcd, on this machine at the same time: one with
# `synchronous_mode: true` + `synchronous_mode_strict: true`, one with
# asynchronous streaming replication; fsync on in both (the tests' clusters
# run without it). A widget-shop on each primary's address. Rounds of
# sequential checkouts (add one doodad, POST /api/checkout with an
# Idempotency-Key; the checkout's time only) alternate between the two
# sides, the side going first alternating too, after a warm-up round each.
# Prints p50 and p99 per side and the difference. The work is the ignored
# test `sync_cost` in crates/widget-shop/tests/datatier_bench.rs.
#
#   scripts/bench/sync-cost.sh                 # 6 rounds of 100 checkouts per side
#   SYNC_COST_ROUNDS=10 SYNC_COST_CHECKOUTS=200 scripts/bench/sync-cost.sh
#
# PROFILE (release by default) picks the build. The table is also appended
# to target/bench/sync-cost.md. Run it on a quiet machine: timings under
# load measure the load. Method and figures: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

PROFILE=${PROFILE:-release}
ensure_postgres_server
ensure_patroni
mkdir -p target/bench
export DATATIER_BENCH_REPORT=${DATATIER_BENCH_REPORT:-$PWD/target/bench/sync-cost.md}
step "building the shop ($PROFILE profile)"
cargo build --profile "$PROFILE" --bin widget-shop -p widget-shop
step "measuring (about a minute for the clusters, then the rounds)"
cargo test --profile "$PROFILE" -p widget-shop --test datatier_bench -- \
  --ignored --exact sync_cost --nocapture --test-threads=1
