#!/usr/bin/env bash
# The compose check: brings up docker-compose.yml (the full HA topology) with
# images built locally from the host's binaries, waits until every service is
# healthy, reaches the shop through both proxies and the status page on
# every control replica, then kills a shop
# container and a control replica under steady load and counts failed
# requests against the bounds below. Always ends with `down -v` and checks
# that nothing of the project is left (containers, networks, volumes), also
# on failure or Ctrl-C.
#
#   scripts/compose-check.sh
#
# Needs: a Docker engine, `docker compose` or `docker-compose`, python3, and
# the workspace binaries in target/$PROFILE (scripts/test.sh builds them).
# No registry: the base image is made with debootstrap once and cached.
#
# Bounds (the scenario):
#   - shop-2 SIGKILLed under load: a request is allowed to fail only if the
#     kill interrupted it mid-response, so at most one per load worker, and
#     only within 3 s of the kill; GETs whose connect fails are retried by the
#     proxy on another backend and must succeed.
#   - A control replica SIGKILLed under load (the raft leader when there is
#     one, else control-1): zero failed requests (the control plane is not
#     on the request path); with a three-member raft group, another replica
#     leads within 10 s; a config change written through the surviving
#     replicas reaches both proxies within 15 s.
#   - Any failure at any other moment fails the check, and so does a request
#     slower than 10 s.
#   - After shop-2 and the replica are started again, they become healthy and
#     shop-2 takes traffic again within 30 s.
#   - The shop database's primary host (db-N: its etcd member and its
#     Patroni members, the control database's too if it leads there)
#     SIGKILLed under the same load, with a shopper checking out all along
#     (one Idempotency-Key per order, retried on 503 or a lost answer):
#     zero failed GETs (browsing reads from the replicas), a new primary
#     within 60 s and orders confirmed after it, and every order confirmed
#     to the shopper is in the new primary's database, once (0 lost, 0
#     duplicated keys).
#
# Environment:
#   COMPOSE_CHECK_ALLOW_MISSING   binaries that may be absent from
#       target/$PROFILE, space- or comma-separated (e.g. "tandem-agent"). The
#       services running them are left out and reported as NOT VERIFIED.
#       Without it, a missing binary fails the check. widget-shop, when
#       allowed and missing, is replaced by tandem-fake-backend (testkit)
#       so the proxies still have three backends to fail over between.
#   COMPOSE_CHECK_ALLOW_SINGLE_RAFT=1   if tandem-control refuses a
#       multi-member TANDEM_PEERS (multi-replica raft not built yet), run the
#       three replicas as raft groups of one (TANDEM_PEERS empty; they still
#       share the declared config through control-db) and report the raft
#       group as NOT VERIFIED. Without it, that refusal fails the check; once
#       the binary accepts the peers, the variable has no effect.
#   COMPOSE_CHECK_LOAD_WORKERS (4 per proxy), COMPOSE_CHECK_RATE (25 requests
#       per second per worker), COMPOSE_CHECK_TIMEOUT (240 s to become healthy)
#   COMPOSE_CHECK_KEEP=1          leave the project running at the end (for
#       debugging; `docker compose -p <project> down -v` removes it)
#   COMPOSE=...                   the compose command (default: `docker
#       compose` if it answers, else `docker-compose`)
#   PROFILE (debug), CARGO_TARGET_DIR, and the image variables of
#   scripts/images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

started=$SECONDS
PROFILE=${PROFILE:-debug}
[ "$PROFILE" = dev ] && PROFILE=debug
BIN_DIR=${CARGO_TARGET_DIR:-target}/$PROFILE
PROJECT=${COMPOSE_CHECK_PROJECT:-tandem-check-$$}
WORKERS=${COMPOSE_CHECK_LOAD_WORKERS:-4}
RATE=${COMPOSE_CHECK_RATE:-25}
HEALTH_TIMEOUT=${COMPOSE_CHECK_TIMEOUT:-240}
export TANDEM_IMAGE=${TANDEM_IMAGE:-tandem:local}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-tandem/postgres:15}
export PATRONI_IMAGE=${PATRONI_IMAGE:-tandem/patroni:local}
export BASE_IMAGE=${BASE_IMAGE:-tandem/base:bookworm}
# Tokens for this throwaway project only.
export TANDEM_ADMIN_TOKEN=compose-check-admin-token-$$-0123456789
export TANDEM_NODE_TOKEN=compose-check-node-token-$$-0123456789
export TANDEM_BIND=127.0.0.1
# Observability stays off: its images cannot be pulled without a registry.
unset COMPOSE_PROFILES OTEL_EXPORTER_OTLP_ENDPOINT TANDEM_PEERS
phase_times=()
phase_start=$SECONDS
phase() { # phase NAME: closes the previous phase's timer, prints a step
  [ -n "${phase_name:-}" ] && phase_times+=("$phase_name $((SECONDS - phase_start)) s")
  phase_name=$1; phase_start=$SECONDS
  step "compose check [$((SECONDS - started)) s]: $1"
}
elapsed() { echo "$((SECONDS - started))s"; }

# --- prerequisites ----------------------------------------------------------
phase "prerequisites"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"
if [ -n "${COMPOSE:-}" ]; then
  read -r -a COMPOSE_CMD <<< "$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  die "neither \`docker compose\` nor \`docker-compose\` is installed"
fi
echo "compose: ${COMPOSE_CMD[*]} ($("${COMPOSE_CMD[@]}" version --short 2>/dev/null || "${COMPOSE_CMD[@]}" version | head -1))"
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl

# Which binaries exist decides which services run.
allowed_missing=" $(echo "${COMPOSE_CHECK_ALLOW_MISSING:-}" | tr ',' ' ') "
declare -A service_bin=(
  [control-1]=tandem-control [control-2]=tandem-control [control-3]=tandem-control
  [init]=tandemctl [proxy-1]=tandem-proxy [proxy-2]=tandem-proxy
  [agent-1]=tandem-agent [agent-2]=tandem-agent
  [shop-1]=widget-shop [shop-2]=widget-shop [shop-3]=widget-shop
)
all_services=(db-1 db-2 db-3 control-1 control-2 control-3 init proxy-1 proxy-2 agent-1 agent-2 shop-1 shop-2 shop-3)
services=() left_out=() missing_bins=() fake_shop=0 extra_bins=()
for b in tandem-control tandemctl tandem-proxy tandem-agent widget-shop; do
  [ -x "$BIN_DIR/$b" ] && continue
  case "$allowed_missing" in
    *" $b "*) missing_bins+=("$b") ;;
    *) die "$BIN_DIR/$b is not built. Build it (cargo build --workspace --bins), or allow its absence explicitly with COMPOSE_CHECK_ALLOW_MISSING=$b" ;;
  esac
done
for b in tandem-control tandemctl tandem-proxy; do
  case " ${missing_bins[*]:-} " in *" $b "*) die "$b is essential to the topology; it cannot be left out" ;; esac
done
case " ${missing_bins[*]:-} " in
  *" widget-shop "*)
    [ -x "$BIN_DIR/tandem-fake-backend" ] || die "widget-shop is missing and so is its stand-in $BIN_DIR/tandem-fake-backend"
    fake_shop=1; extra_bins+=(tandem-fake-backend) ;;
esac
is_missing() { case " ${missing_bins[*]:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for s in "${all_services[@]}"; do
  b=${service_bin[$s]:-}
  # A missing widget-shop is stood in for; any other missing binary leaves
  # its services out.
  if [ -n "$b" ] && is_missing "$b" && [ "$b" != widget-shop ]; then
    left_out+=("$s")
  else
    services+=("$s")
  fi
done
if [ ${#missing_bins[@]} -gt 0 ]; then
  warn "NOT BUILT, allowed by COMPOSE_CHECK_ALLOW_MISSING: ${missing_bins[*]}"
  [ ${#left_out[@]} -eq 0 ] || warn "left out of this check (NOT VERIFIED): ${left_out[*]}"
  [ "$fake_shop" = 0 ] || warn "shop-1..3 run tandem-fake-backend instead of widget-shop (the shop itself is NOT VERIFIED)"
fi
# Multi-replica raft: does this tandem-control accept three peers? (It
# either starts, and is stopped after 3 s, or refuses at once.)
raft_note=
probe_dir=$(mktemp -d -t tandem-peers-probe.XXXXXX)
peers_probe=$(timeout 3 env DATABASE_URL=postgres://probe@127.0.0.1:1/probe \
  TANDEM_ADMIN_TOKEN=probe-token-0123456789 TANDEM_RAFT_ID=1 TANDEM_STATE_DIR="$probe_dir" \
  TANDEM_LISTEN=127.0.0.1:0 TANDEM_ADMIN_LISTEN=127.0.0.1:0 TANDEM_INSECURE_PLAINTEXT=true \
  TANDEM_PEERS=1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3 \
  "$BIN_DIR/tandem-control" 2>&1 | grep -i -m1 'raft.*not available' || true)
rm -rf "$probe_dir"
if [ -n "$peers_probe" ]; then
  [ "${COMPOSE_CHECK_ALLOW_SINGLE_RAFT:-0}" = 1 ] ||
    die "tandem-control refuses the three-member raft group ($peers_probe). Allow single-member groups explicitly with COMPOSE_CHECK_ALLOW_SINGLE_RAFT=1"
  export TANDEM_PEERS=
  raft_note="control-1..3 ran as raft groups of one (tandem-control: $peers_probe; allowed by COMPOSE_CHECK_ALLOW_SINGLE_RAFT): the raft group is NOT VERIFIED"
  warn "$raft_note"
fi
long_running=()
for s in "${services[@]}"; do [ "$s" = init ] || long_running+=("$s"); done

# Published ports: empty, so Docker picks free ones when it binds them (no
# race with other programs, no collision with a `docker compose up` or
# scripts/run-local.sh on the same machine); read back with host_port.
export CONTROL_1_PORT='' CONTROL_1_ADMIN_PORT='' CONTROL_2_PORT='' CONTROL_2_ADMIN_PORT='' \
  CONTROL_3_PORT='' CONTROL_3_ADMIN_PORT='' PROXY_1_PORT='' PROXY_1_ADMIN_PORT='' \
  PROXY_2_PORT='' PROXY_2_ADMIN_PORT=''

WORK=$(mktemp -d -t tandem-compose-check.XXXXXX)
COMPOSE_FILES=(-f docker-compose.yml)
if [ "$fake_shop" = 1 ]; then
  cat > "$WORK/fake-shop.yml" <<'EOF'
# Generated by scripts/compose-check.sh: widget-shop is not built yet, so
# the shop instances run testkit's fake backend (it says who it is).
x-fake: &fake
  command: ["tandem-fake-backend"]
  healthcheck:
    test: ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:3000/healthz"]
services:
  shop-1: {<<: *fake, environment: {FAKE_BACKEND_LISTEN: "0.0.0.0:3000", FAKE_BACKEND_NAME: shop-1}}
  shop-2: {<<: *fake, environment: {FAKE_BACKEND_LISTEN: "0.0.0.0:3000", FAKE_BACKEND_NAME: shop-2}}
  shop-3: {<<: *fake, environment: {FAKE_BACKEND_LISTEN: "0.0.0.0:3000", FAKE_BACKEND_NAME: shop-3}}
EOF
  COMPOSE_FILES+=(-f "$WORK/fake-shop.yml")
fi
# An empty env file: a developer's .env (ports, COMPOSE_PROFILES, images)
# must not leak into the check; everything it needs is exported above.
: > "$WORK/empty.env"
compose() { "${COMPOSE_CMD[@]}" --env-file "$WORK/empty.env" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
ids_of() { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1"; }
host_port() { # host_port SERVICE CONTAINER_PORT: where Docker published it (it may
  # change when a container restarts, so ask each time)
  docker port "$(ids_of "$1" | head -1)" "$2/tcp" 2>/dev/null | sed -n '1s/.*://p' || true
}
container_state() { # service -> "status health exit-code restarts"
  local id; id=$(ids_of "$1" | head -1)
  [ -n "$id" ] || { echo "absent - - -"; return; }
  docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}} {{.RestartCount}}' "$id"
}

LOAD_PID=
passed=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e # best effort from here on: nothing may stop the clean-up
  if [ -n "$LOAD_PID" ]; then kill "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; fi
  if [ -n "${SHOPPER_PID:-}" ]; then kill "$SHOPPER_PID" 2>/dev/null; wait "$SHOPPER_PID" 2>/dev/null; fi
  if [ "$passed" != 1 ] && [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]; then
    step "compose check FAILED: state and recent logs"
    compose ps || true
    for s in "${services[@]}"; do
      echo "----- $s (last 40 lines) -----"
      compose logs --no-color --tail=40 "$s" 2>&1 | tail -40 || true
    done
  fi
  if [ "${COMPOSE_CHECK_KEEP:-0}" = 1 ]; then
    warn "COMPOSE_CHECK_KEEP=1: project $PROJECT left running; remove it with: ${COMPOSE_CMD[*]} -p $PROJECT ${COMPOSE_FILES[*]} down -v"
    exit "$rc"
  fi
  phase "down -v"
  compose down -v --remove-orphans -t 10 2>&1 | sed 's/^/  /' || true
  local left
  left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  if [ -n "$left" ]; then
    warn "left behind by project $PROJECT: $left"
    rc=1
  else
    echo "nothing of project $PROJECT is left (containers, networks, volumes)"
  fi
  rm -rf "$WORK"
  phase "end"
  echo "phases: ${phase_times[*]/%/,}"
  if [ "$rc" = 0 ]; then
    step "compose check passed in $((SECONDS - started)) s"
  else
    step "compose check FAILED after $((SECONDS - started)) s"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images -----------------------------------------------------------------
phase "images (base cached; tandem from $BIN_DIR)"
TANDEM_EXTRA_BINARIES="${extra_bins[*]:-}" PROFILE="$PROFILE" bash scripts/images.sh base tandem patroni

# --- up -----------------------------------------------------------------------
phase "up: ${services[*]}"
compose config -q
compose up -d --no-build "${services[@]}" 2>&1 | sed 's/^/  /'

phase "waiting for health"
deadline=$((SECONDS + HEALTH_TIMEOUT))
while :; do
  healthy=() waiting=() init_state=
  for s in "${services[@]}"; do
    read -r status health code restarts < <(container_state "$s")
    if [ "$s" = init ]; then
      init_state="$status/$code"
      if [ "$status" = exited ] && [ "$code" != 0 ]; then die "init exited with code $code"; fi
      continue
    fi
    [ "$restarts" = 0 ] || [ "$restarts" = - ] || die "$s restarted ($restarts times): it crashed"
    case "$status" in running|created|restarting) ;; *) die "$s is $status (exit code $code)" ;; esac
    if [ "$health" = healthy ]; then healthy+=("$s"); else waiting+=("$s:$health"); fi
  done
  printf '  [%s] healthy %d/%d  init %s  %s\n' "$(elapsed)" "${#healthy[@]}" "${#long_running[@]}" \
    "$init_state" "${waiting[*]:+waiting: ${waiting[*]}}"
  if [ ${#waiting[@]} -eq 0 ] && { [ "$init_state" = exited/0 ] || ! [[ " ${services[*]} " == *" init "* ]]; }; then
    break
  fi
  [ $SECONDS -lt $deadline ] || die "not healthy within ${HEALTH_TIMEOUT} s"
  sleep 2
done
compose ps 2>&1 | sed 's/^/  /'
echo "  init said:"; compose logs --no-color init 2>&1 | grep -E 'ok:|exists:|failed|done' | sed 's/^/    /'

PROXY_1_PORT=$(host_port proxy-1 8080) PROXY_2_PORT=$(host_port proxy-2 8080)
PROXY_1_ADMIN_PORT=$(host_port proxy-1 8081) PROXY_2_ADMIN_PORT=$(host_port proxy-2 8081)
echo "  proxies on 127.0.0.1:$PROXY_1_PORT and :$PROXY_2_PORT (admin :$PROXY_1_ADMIN_PORT, :$PROXY_2_ADMIN_PORT)"

# --- reach the shop through both proxies ---------------------------------------
phase "the shop through both proxies"
for port in "$PROXY_1_PORT" "$PROXY_2_PORT"; do
  declare -A seen=()
  for _ in $(seq 1 30); do
    hdr=$(curl -sS -o /dev/null -D - --max-time 10 "http://127.0.0.1:$port/" | tr -d '\r') ||
      die "GET http://127.0.0.1:$port/ failed"
    code=$(printf '%s\n' "$hdr" | awk 'NR==1 { print $2 }')
    [ "$code" = 200 ] || die "GET http://127.0.0.1:$port/ answered $code"
    by=$(printf '%s\n' "$hdr" | awk -F': ' 'tolower($1) == "x-served-by" { print $2 }')
    seen[${by:-?}]=$(( ${seen[${by:-?}]:-0} + 1 ))
  done
  dist=$(for k in "${!seen[@]}"; do printf '%s=%s ' "$k" "${seen[$k]}"; done)
  echo "  http://127.0.0.1:$port/  30 × 200, served by: $dist"
  [ ${#seen[@]} -ge 2 ] || die "proxy on :$port sent every request to one backend ($dist)"
  unset seen
done

# --- the status page on every replica ------------------------------------------
phase "the status page on every control replica"
status_page() { curl -fsS --max-time 5 "http://127.0.0.1:$(host_port "control-$1" 7401)/ui/" 2>/dev/null; }
for i in 1 2 3; do
  page=$(status_page "$i") || die "control-$i: GET /ui/ failed"
  wants=('data-pool="shop"' 'data-backend="shop/shop-2:3000"' 'id="read-only"')
  [ -n "$raft_note" ] || wants+=('data-member="3"')
  for want in "${wants[@]}"; do
    grep -qF "$want" <<<"$page" || die "control-$i's status page lacks $want"
  done
  # The live stream answers with every section at once.
  stream=$(curl -sN --max-time 2 "http://127.0.0.1:$(host_port "control-$i" 7401)/ui/events" 2>/dev/null || true)
  grep -q '^event: pools' <<<"$stream" || die "control-$i: /ui/events sent no pools event within 2 s"
  echo "  control-$i: http://127.0.0.1:$(host_port "control-$i" 7401)/ui/ answers, and its event stream"
done

# --- chaos under load -----------------------------------------------------------
phase "chaos under load (${WORKERS} workers × ${RATE} req/s per proxy)"
cat > "$WORK/load.py" <<'PY'
# Steady GET load through both proxies; one line of progress every 2 s;
# every request recorded as (time, proxy, status or -1, served_by, error).
import http.client, json, os, sys, threading, time
ports = [int(p) for p in sys.argv[1].split(",")]
workers, rate, out, stop_file, live = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
records, lock = [], threading.Lock()
def worker(pi, port):
    conn, period, nxt = None, 1.0 / rate, time.time()
    while not os.path.exists(stop_file):
        nxt += period
        t0 = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"User-Agent": "tandem-compose-check"})
            r = conn.getresponse(); r.read()
            rec = (t0, pi, r.status, r.getheader("X-Served-By") or "", "", time.time() - t0)
            if r.getheader("Connection", "").lower() == "close": conn.close(); conn = None
        except Exception as e:
            rec = (t0, pi, -1, "", type(e).__name__ + ": " + str(e)[:120], time.time() - t0)
            try: conn.close()
            except Exception: pass
            conn = None
        with lock: records.append(rec)
        d = nxt - time.time()
        if d > 0: time.sleep(d)
        else: nxt = time.time()
threads = [threading.Thread(target=worker, args=(pi, p), daemon=True) for pi, p in enumerate(ports) for _ in range(workers)]
for t in threads: t.start()
start, last_i = time.time(), 0
while not os.path.exists(stop_file):
    time.sleep(2)
    with lock: new = records[last_i:]; last_i += len(new); n = len(records)
    by = {}
    for r in new:
        k = r[3] if r[2] != -1 else "error"
        if r[2] >= 500: k = "http %d" % r[2]
        by[k] = by.get(k, 0) + 1
    with lock: failed = sum(1 for r in records if r[2] != 200 or r[5] > 10)
    print("  [load %4.0fs] %6d requests, %d failed; last 2s: %s" % (time.time() - start, n, failed,
          " ".join("%s=%d" % kv for kv in sorted(by.items()))), flush=True)
    with open(live + ".tmp", "w") as f:
        last_seen = {}
        for r in records:
            if r[2] == 200 and r[3]: last_seen[r[3]] = r[0]
        json.dump({"last_seen": last_seen}, f)
    os.replace(live + ".tmp", live)
for t in threads: t.join(timeout=15)
with lock, open(out, "w") as f: json.dump(records, f)
PY
now() { date +%s.%N; }
event() { echo "$(now) $*" >> "$WORK/events"; echo "  [$(elapsed)] $*"; }
last_seen() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["last_seen"].get(sys.argv[2], 0))' "$WORK/live.json" "$1" 2>/dev/null || echo 0; }
wait_healthy() { # wait_healthy SERVICE TIMEOUT
  local end=$((SECONDS + $2)) st
  while :; do
    read -r st < <(container_state "$1" | awk '{ print $2 }')
    [ "$st" = healthy ] && return 0
    [ $SECONDS -lt $end ] || die "$1 not healthy again within $2 s"
    sleep 1
  done
}
raft_gauge() { # raft_gauge REPLICA NAME: tandem_raft_NAME from control-REPLICA's /metrics
  curl -fsS --max-time 2 "http://127.0.0.1:$(host_port "control-$1" 7401)/metrics" 2>/dev/null |
    awk -v n="tandem_raft_$2" '$1 == n { print $2 + 0; exit }' || true
}
revision_of_proxy() { curl -fsS --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null | sed -n 's/.*revision \([0-9]*\).*/\1/p'; }
: > "$WORK/events"
python3 "$WORK/load.py" "$PROXY_1_PORT,$PROXY_2_PORT" "$WORKERS" "$RATE" "$WORK/records.json" "$WORK/stop" "$WORK/live.json" &
LOAD_PID=$!
sleep 6
event "kill -9 shop-2"
compose kill -s SIGKILL shop-2 >/dev/null 2>&1
# The agents need fall=2 probes at 1 s, then raft commits the verdict: the
# page of a follower should show it within a few seconds. Poll (a page
# that is slow to answer on a busy machine is not the failure looked for)
# and give up 10 s after the kill, saying whether the page answered.
killed_at=$SECONDS page_seen=no
until page=$(status_page 1) && page_seen=yes &&
  grep -qF 'data-backend="shop/shop-2:3000" data-health="unhealthy"' <<<"$page"; do
  [ $((SECONDS - killed_at)) -lt 10 ] ||
    die "control-1's status page does not show shop-2 unhealthy 10 s after the kill (the page answered: $page_seen)"
  sleep 1
done
# The rest of the chaos keeps its pace: the next step 6 s after the kill.
[ $((SECONDS - killed_at)) -ge 6 ] || sleep $((6 - (SECONDS - killed_at)))
event "the status page shows shop-2 unhealthy"
# The replica to kill: the raft leader if exactly one replica leads (a
# three-member group), else control-1.
leaders=()
for i in 1 2 3; do [ "$(raft_gauge $i is_leader)" = 1 ] && leaders+=("$i"); done
victim=1; leader_note="control-1"
if [ ${#leaders[@]} -eq 1 ] && [ -z "$raft_note" ]; then
  victim=${leaders[0]}; leader_note="control-$victim, the raft leader (term $(raft_gauge "$victim" term))"
fi
survivors=(); for i in 1 2 3; do [ "$i" = "$victim" ] || survivors+=("$i"); done
surviving_endpoints=$(for i in "${survivors[@]}"; do printf 'https://127.0.0.1:%s,' "$(host_port "control-$i" 7400)"; done)
# mTLS: tandemctl presents the admin certificate the dev-tls service made.
certs=$(mktemp -d)
for f in ca.pem admin.pem admin-key.pem; do
  compose run --rm --no-deps --entrypoint cat dev-tls "/tls/components/$f" > "$certs/$f" 2>/dev/null ||
    die "cannot copy $f out of the dev-tls volume"
done
export TANDEM_TLS_CA_FILE=$certs/ca.pem TANDEM_TLS_CERT_FILE=$certs/admin.pem TANDEM_TLS_KEY_FILE=$certs/admin-key.pem
surviving_endpoints=${surviving_endpoints%,}
event "kill -9 $leader_note"
compose kill -s SIGKILL "control-$victim" >/dev/null 2>&1
if [ -z "$raft_note" ]; then
  t_kill=$SECONDS
  someone_leads() { local i; for i in "${survivors[@]}"; do [ "$(raft_gauge "$i" is_leader)" = 1 ] && return 0; done; return 1; }
  until someone_leads; do
    [ $((SECONDS - t_kill)) -lt 10 ] || die "no surviving replica leads 10 s after control-$victim was killed"
    sleep 0.2
  done
  event "a new raft leader within $((SECONDS - t_kill)) s"
fi
sleep 1
# A config change written through the surviving replicas must reach both
# proxies: they were (maybe) watching the killed one and must move on by
# themselves.
event "config change through control-${survivors[0]}/control-${survivors[1]}"
ctl_out=$(TANDEM_ENDPOINT="$surviving_endpoints" \
  TANDEM_TOKEN=$TANDEM_ADMIN_TOKEN "$BIN_DIR/tandemctl" route add --host compose-check.invalid --prefix / --pool shop 2>&1) ||
  die "tandemctl route add through the surviving replicas failed: $ctl_out"
want=$(TANDEM_ENDPOINT="$surviving_endpoints" \
  TANDEM_TOKEN=$TANDEM_ADMIN_TOKEN "$BIN_DIR/tandemctl" -o json snapshot | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])') ||
  die "could not read the revision through the surviving replicas"
t_change=$SECONDS
for port in "$PROXY_1_ADMIN_PORT" "$PROXY_2_ADMIN_PORT"; do
  until [ "$(revision_of_proxy "$port")" -ge "$want" ] 2>/dev/null; do
    [ $((SECONDS - t_change)) -lt 15 ] || die "proxy (admin :$port) still at revision $(revision_of_proxy "$port"), not $want, 15 s after the change"
    sleep 0.5
  done
done
event "both proxies run revision $want ($((SECONDS - t_change)) s after the change)"
sleep 2
event "start shop-2 and control-$victim again"
t_restart=$(now)
compose start shop-2 "control-$victim" >/dev/null 2>&1
wait_healthy shop-2 60; event "shop-2 healthy"
wait_healthy "control-$victim" 60; event "control-$victim healthy"
until python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$(last_seen shop-2)" "$t_restart"; do
  python3 -c 'import sys,time; sys.exit(0 if time.time() - float(sys.argv[1]) < 30 else 1)' "$t_restart" ||
    die "shop-2 took no traffic within 30 s of its restart"
  sleep 1
done
event "shop-2 takes traffic again"
sleep 3

# The shop database's primary host dies under the load, a shopper checking
# out all along through proxy-1.
db_exec() { docker exec "$(ids_of "$1" | head -1)" "${@:2}"; }
shop_db_primary() {
  local h
  for h in db-1 db-2 db-3; do
    db_exec "$h" curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8009/primary 2>/dev/null && { echo "$h"; return 0; }
  done
  return 1
}
if [ "$fake_shop" = 0 ]; then
  cat > "$WORK/shopper.py" <<'PY'
# One shopper: add a doodad, check out with a key of its own; on a 503 or a
# lost answer, retry the same key until it is confirmed (at most 60 s).
# Every confirmed order: (key, code, time), written at the end.
import http.client, json, os, sys, time
port, out, stop_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
confirmed, paused, n = [], 0, 0
def call(method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers=dict({"content-type": "application/json"}, **(headers or {})))
        r = c.getresponse(); data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()
while not os.path.exists(stop_file):
    n += 1
    key, cart, deadline = "compose-check-%d-%d" % (os.getpid(), n), None, time.time() + 60
    while time.time() < deadline:
        try:
            h = {"cookie": cart} if cart else {}
            st, hd, _ = call("POST", "/api/cart/items", {"widget": "doodad", "quantity": 1}, h)
            if "set-cookie" in hd: cart = hd["set-cookie"].split(";")[0]
            if st == 200:
                break
            paused += 1
        except Exception:
            paused += 1
        time.sleep(0.3)
    while time.time() < deadline:
        try:
            st, hd, data = call("POST", "/api/checkout", {"name": "Compose Check", "email": "check@example.com"},
                                {"cookie": cart, "idempotency-key": key})
            if st in (200, 201):
                confirmed.append((key, json.loads(data)["code"], time.time()))
                break
            paused += 1
        except Exception:
            paused += 1
        time.sleep(0.3)
    else:
        print("  [shopper] order %s: not confirmed within 60 s" % key, flush=True)
json.dump({"confirmed": confirmed, "paused_answers": paused}, open(out, "w"))
PY
  python3 "$WORK/shopper.py" "$PROXY_1_PORT" "$WORK/orders.json" "$WORK/stop-shopper" &
  SHOPPER_PID=$!
  sleep 3
  primary=$(shop_db_primary) || die "no shop-db member answers /primary"
  event "kill -9 $primary, the shop database's primary host"
  compose kill -s SIGKILL "$primary" >/dev/null 2>&1
  t_kill=$SECONDS
  until new=$(shop_db_primary) && [ "$new" != "$primary" ]; do
    [ $((SECONDS - t_kill)) -lt 60 ] || die "no new shop-db primary 60 s after $primary was killed"
    sleep 0.5
  done
  event "Patroni promoted $new ($((SECONDS - t_kill)) s after the kill)"
  sleep 8
  touch "$WORK/stop-shopper"
  wait "$SHOPPER_PID" || die "the shopper failed"
  SHOPPER_PID=
  event "start $primary again"
  compose start "$primary" >/dev/null 2>&1
  wait_healthy "$primary" 120; event "$primary healthy (a replica again)"
  db_exec "$new" psql -h /var/run/postgresql -p 5433 -U postgres -d shop -Atc \
    "SELECT idempotency_key || ' ' || code FROM orders WHERE idempotency_key LIKE 'compose-check-%'" > "$WORK/recorded" ||
    die "could not read the orders on $new"
  if ! python3 - "$WORK/orders.json" "$WORK/recorded" "$WORK/events" "$WORK/orders-verdict" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
events = [(float(l.split(" ", 1)[0]), l.split(" ", 1)[1].strip()) for l in open(sys.argv[3]) if l.strip()]
promoted = next(t for t, e in events if e.startswith("Patroni promoted"))
recorded = {}
for k, c in rows: recorded.setdefault(k, []).append(c)
confirmed = o["confirmed"]
lost = [(k, c) for k, c, _ in confirmed if c not in recorded.get(k, [])]
dup = [k for k, cs in recorded.items() if len(cs) > 1]
after = [t for _, _, t in confirmed if t > promoted]
times = sorted(t for _, _, t in confirmed)
# The pause as the shopper saw it: the longest stretch between two
# confirmed orders (the kill falls in it).
pause = max((b - a for a, b in zip(times, times[1:])), default=None)
print("  orders confirmed: %d (%d after the promotion was seen), recorded: %d, lost: %d, duplicated: %d; "
      "longest stretch without a confirmed order: %s; paused answers (503 or no answer) retried: %d" %
      (len(confirmed), len(after), sum(len(v) for v in recorded.values()), len(lost), len(dup),
       "%.1f s" % pause if pause is not None else "-", o["paused_answers"]))
open(sys.argv[4], "w").write("%d orders confirmed, %d lost, %d duplicated, longest stretch without one %s\n" %
    (len(confirmed), len(lost), len(dup), "%.1f s" % pause if pause is not None else "-"))
sys.exit(0 if confirmed and after and not lost and not dup else 1)
PY
  then
    die "orders across the shop database's failover: $(cat "$WORK/orders-verdict" 2>/dev/null)"
  fi
  event "orders: $(cat "$WORK/orders-verdict")"
fi
touch "$WORK/stop"
wait "$LOAD_PID" || die "the load generator failed"
LOAD_PID=

# --- verdict ------------------------------------------------------------------
phase "verdict"
python3 - "$WORK/records.json" "$WORK/events" "$WORKERS" "$WORK/verdict" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))
events = [(float(l.split(" ", 1)[0]), l.split(" ", 1)[1].strip()) for l in open(sys.argv[2]) if l.strip()]
workers, verdict_file = int(sys.argv[3]), sys.argv[4]
t0 = min(r[0] for r in records)
kill_shop = next(t for t, e in events if e.startswith("kill -9 shop-2"))
kill_ctl = next(t for t, e in events if e.startswith("kill -9 control-"))
restart = next(t for t, e in events if e.startswith("start shop-2"))
failed = [r for r in records if r[2] != 200 or r[5] > 10]
in_shop_window = [r for r in failed if kill_shop - 0.5 <= r[0] <= kill_shop + 3]
elsewhere = [r for r in failed if r not in in_shop_window]
def phase_of(t):
    return "before kills" if t < kill_shop else "shop-2 down" if t < kill_ctl else "a replica down too" if t < restart else "after restarts"
print("  %-20s %9s %7s  served by" % ("phase", "requests", "failed"))
for ph in ["before kills", "shop-2 down", "a replica down too", "after restarts"]:
    rs = [r for r in records if phase_of(r[0]) == ph]
    by = {}
    for r in rs:
        if r[2] == 200: by[r[3]] = by.get(r[3], 0) + 1
    print("  %-20s %9d %7d  %s" % (ph, len(rs), sum(1 for r in rs if r in failed), " ".join("%s=%d" % kv for kv in sorted(by.items()))))
lat = sorted(r[5] for r in records)
print("  latency: p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (lat[len(lat)//2]*1e3, lat[int(len(lat)*0.99)]*1e3, lat[-1]*1e3))
for r in failed[:20]:
    print("  failed at +%.2fs (proxy-%d): %s %s" % (r[0] - t0, r[1] + 1, r[2] if r[2] != -1 else "", r[4]))
ok = True
bound = workers * 2
print("  shop-2 kill: %d failed within 3 s of the kill (bound: %d, one per load worker)" % (len(in_shop_window), bound))
if len(in_shop_window) > bound: ok = False
print("  any other moment (the control replica kill included): %d failed (bound: 0)" % len(elsewhere))
if elsewhere: ok = False
with open(verdict_file, "w") as f:
    f.write("%d requests, %d failed (%d within 3 s of the shop-2 kill, bound %d; %d elsewhere, bound 0)\n" %
            (len(records), len(failed), len(in_shop_window), bound, len(elsewhere)))
sys.exit(0 if ok else 1)
PY
verdict=$(cat "$WORK/verdict")

phase "summary"
echo "  verified live: ${services[*]}"
[ ${#left_out[@]} -eq 0 ] || echo "  NOT VERIFIED (not built; COMPOSE_CHECK_ALLOW_MISSING): ${left_out[*]}"
[ "$fake_shop" = 0 ] || echo "  NOT VERIFIED: widget-shop (shop-1..3 ran tandem-fake-backend)"
[ -z "$raft_note" ] || echo "  $raft_note"
echo "  load: $verdict"
[ ! -f "$WORK/orders-verdict" ] || echo "  the shop database's failover: $(cat "$WORK/orders-verdict")"
passed=1
