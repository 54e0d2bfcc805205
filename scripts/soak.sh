#!/usr/bin/env bash
# The soak: stage 3's topology (two proxies, three shop servers, the
# database on its own host) under mixed shopper traffic (catalogue, cart,
# checkout; GETs and POSTs), nothing broken, with idle gaps between some
# shoppers' requests swept across the keep-alive timeouts (the shoppers'
# pool timeout 2 s, the proxies' client idle timeout 3 s, their shop
# window 4 s). Prints failures per million by kind and by the hop they
# arose on (client↔proxy, proxy↔shop, shop↔database) and fails on any.
#
#   scripts/soak.sh                       # a million requests
#   SOAK_REQUESTS=100000 scripts/soak.sh  # fewer
#
# Knobs: SOAK_REQUESTS (1000000), SOAK_SECS (7200, a bound), SOAK_BUSY (16
# shoppers sending back to back), SOAK_IDLE (64 shoppers waiting a swept
# gap before each request), PROFILE (dev or release). The table is also
# written to target/soak.md. A one-minute version runs with the tests
# (soak_short_no_request_fails_in_a_steady_state).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PROFILE=${PROFILE:-dev}
export SOAK_REPORT=${SOAK_REPORT:-$PWD/target/soak.md}

ensure_postgres_server
step "building the shop, the proxy and the control plane ($PROFILE profile)"
cargo build --profile "$PROFILE" --bins -p widget-shop -p tandem-proxy -p tandem-control

step "soaking"
cargo test --profile "$PROFILE" -p widget-shop --test progression -- \
  --ignored --exact soak --nocapture --test-threads=1
