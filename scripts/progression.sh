#!/usr/bin/env bash
# The widget shop's progression from one server to a highly available
# setup, measured. Builds the binaries, then runs four stages as real
# processes on loopback (each process group standing for a host), each under
# steady simulated shoppers, breaks each one on purpose, and prints:
#
#   stage | requests | failed | availability | orders placed / recorded | ...
#
#   scripts/progression.sh                      # all four stages (about three minutes)
#   PROGRESSION_STAGES=3 scripts/progression.sh # just one
#
# Knobs: PROGRESSION_PHASE_SECS (8), PROGRESSION_SHOPPERS (6),
# PROGRESSION_PACE_MS (50, each shopper's time between requests),
# PROFILE (dev or release). The tables are also written to
# target/progression.md. See docs/progression.md for what each stage shows.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PROFILE=${PROFILE:-dev}
export PROGRESSION_REPORT=${PROGRESSION_REPORT:-$PWD/target/progression.md}

ensure_postgres_server
ensure_patroni
step "building the shop, the proxy and the control plane ($PROFILE profile)"
cargo build --profile "$PROFILE" --bins -p widget-shop -p tandem-proxy -p tandem-control -p tandem-agent

step "running the progression"
cargo test --profile "$PROFILE" -p widget-shop --test progression -- \
  --ignored --exact progression --nocapture --test-threads=1
