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
source scripts/bench/control-bench.sh

ensure_postgres_server
run_control_bench watch_fanout 'tandem-control' "watch fan-out (seeding 11,000 objects takes ~20 s)" "$@"
