#!/usr/bin/env bash
# The one test command: installs what is missing, then format check, clippy
# with -D warnings, and every test (unit and end to end, against a throwaway
# Postgres and real processes on loopback ports).
#
# Property tests run a bounded number of cases (the HTTP codec's, and
# tandem-proxy's tests/properties.rs through a real proxy: 256 HTTP/1 and
# HTTP/2 request streams, 48 rounds of generated backend answers). Set
# PROPTEST_CASES to run each of them longer, e.g.
#   PROPTEST_CASES=10000 cargo nextest run -p tandem-proxy --test properties
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

started=$SECONDS
step "prerequisites"
ensure_rust_components
ensure_postgres_server
ensure_patroni
ensure_chromium
ensure_packet_filters
ensure_python3
ensure_tls_tools
ensure_prometheus

step "promtool: Prometheus config and alert rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/*.yml

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build binaries used by end-to-end tests"
cargo build --workspace --bins

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

step "compose check (the full topology in containers)"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  bash scripts/compose-check.sh
else
  echo "skipped: no Docker engine answers (docker info)"
fi

step "all checks passed in $((SECONDS - started)) s"
