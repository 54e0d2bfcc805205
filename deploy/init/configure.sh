#!/bin/sh
# The compose topology's one-shot `init` service: configures the widget
# shop's pool, backends and route through tandemctl, then exits 0.
# Idempotent: what exists already (tandemctl exit code 5, conflict) is left
# as it is, so `docker compose up` may run it again.
#
# Environment:
#   TANDEM_ENDPOINT, TANDEM_TOKEN   control replicas and the admin token
#   SHOP_POOL (shop)                pool name
#   SHOP_BACKENDS                   space-separated host:port list
#   SHOP_HOST (*)                   the route's host: * (any), exact or *.wildcard
#   SHOP_POLICY (round_robin)       load-balancing policy
#   SHOP_DB_MEMBERS                 the shop database's Patroni members
#                                   (host:port list): TCP routes :6432, :6433
#   SHOP_DB_REST_PORT (8008)        their Patroni REST port
#   SHOP_CERT_FILE, SHOP_KEY_FILE   the shop's certificate for HTTPS (PEM),
#                                   declared as `shop` unless one is already
set -eu

: "${TANDEM_ENDPOINT:?set TANDEM_ENDPOINT}"
: "${TANDEM_TOKEN:?set TANDEM_TOKEN}"
POOL=${SHOP_POOL:-shop}
BACKENDS=${SHOP_BACKENDS:-shop-1:3000 shop-2:3000 shop-3:3000}
HOST=${SHOP_HOST:-*}
POLICY=${SHOP_POLICY:-round_robin}
export TANDEM_ENDPOINT TANDEM_TOKEN

# ensure ARGS...: runs `tandemctl ARGS`; 0 = done, 5 = already there; 6
# (control plane unavailable) is retried for up to a minute; anything else
# fails the service.
ensure() {
  tries=0
  while :; do
    if out=$(tandemctl "$@" 2>&1); then
      echo "ok:      tandemctl $*"
      return 0
    else
      rc=$?
    fi
    case $rc in
      5) echo "exists:  tandemctl $* ($out)"; return 0 ;;
      6) tries=$((tries + 1))
         if [ "$tries" -ge 30 ]; then
           echo "error: the control plane stayed unavailable: $out" >&2
           exit 1
         fi
         echo "waiting: control plane unavailable ($out)"
         sleep 2 ;;
      *) echo "failed:  tandemctl $* -> exit $rc: $out" >&2; exit "$rc" ;;
    esac
  done
}

echo "configuring pool '$POOL' ($POLICY) with backends: $BACKENDS"
# Health: probe /healthz every second; two failures take a backend out, two
# successes bring it back. Outlier detection: three consecutive connect
# failures or 5xx eject a backend locally for 5 s (growing on repeats).
ensure pool create "$POOL" --policy "$POLICY" \
  --health-path /healthz --health-interval 1s --health-timeout 500ms \
  --health-rise 2 --health-fall 2 \
  --connect-timeout 1s --per-try-timeout 5s --retries 1 \
  --outlier-failures 3 --outlier-ejection 5s
for b in $BACKENDS; do
  ensure backend add "$POOL" "$b"
done
ensure route add --host "$HOST" --prefix / --pool "$POOL"
if [ -n "${SHOP_CERT_FILE:-}" ] && [ -n "${SHOP_KEY_FILE:-}" ]; then
  # An operator's own `shop` certificate is left alone.
  if tandemctl cert list -o json 2>/dev/null | grep -q '"name": *"shop"'; then
    echo "exists:  certificate shop"
  else
    ensure cert add shop --cert-file "$SHOP_CERT_FILE" --key-file "$SHOP_KEY_FILE"
  fi
fi

if [ -n "${SHOP_DB_MEMBERS:-}" ]; then
  # The shop database's two addresses on every proxy, as HAProxy gives
  # them in Patroni's reference setup: writes (:6432) to a single_active
  # pool of the members checked on Patroni's /primary (connections to a
  # demoted primary closed), reads (:6433) to a pool checked on /replica.
  rest=${SHOP_DB_REST_PORT:-8008}
  echo "configuring the shop database's TCP routes to: $SHOP_DB_MEMBERS (Patroni REST :$rest)"
  ensure pool create shop-db-primary --policy single_active --health-path /primary --health-port "$rest" \
    --health-interval 1s --health-timeout 800ms --health-rise 1 --health-fall 2 \
    --connect-timeout 1s --on-unhealthy close
  ensure pool create shop-db-replica --policy least_connections --health-path /replica --health-port "$rest" \
    --health-interval 1s --health-timeout 800ms --health-rise 1 --health-fall 2 \
    --connect-timeout 1s --on-unhealthy keep
  for m in $SHOP_DB_MEMBERS; do
    ensure backend add shop-db-primary "$m"
    ensure backend add shop-db-replica "$m"
  done
  ensure route add --tcp --listen 0.0.0.0:6432 --pool shop-db-primary
  ensure route add --tcp --listen 0.0.0.0:6433 --pool shop-db-replica
fi

echo
tandemctl pool get "$POOL" || true
tandemctl route list || true
tandemctl cert list || true
echo "init: done"
