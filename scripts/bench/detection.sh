#!/usr/bin/env bash
# Benchmark (not a test): time to detect a failing backend — its /healthz
# starts answering 503 while it still serves traffic — until the load
# balancer stops routing to it, Tandem beside HAProxy, same backends, same
# run (issue 4's benchmark: interval 1 s, fall 2).
#
# Method (also in docs/benchmarks.md, "Detection time beside HAProxy"):
# - three tandem-fake-backend processes (X-Served-By: b1, b2, b3);
# - HAProxy (Debian's package): roundrobin, `option httpchk GET /healthz`,
#   `check inter 1s fall 2 rise 2` on each server;
# - Tandem: a throwaway Postgres, one tandem-control, one tandem-agent, one
#   tandem-proxy; the pool is created with tandemctl: round_robin,
#   --health-path /healthz --health-interval 1s --health-fall 2
#   --health-rise 2 (timeout 500 ms; HAProxy's check timeout is its
#   `timeout check 500ms`);
# - one backend is failed again only SPACING_MS (31 s) after its previous
#   failure, so Tandem's flap damping (4 transitions in 30 s -> held down
#   30 s) never triggers: this measures detection, not damping;
# - per run: a random 0-1 s pause (so the flip lands at a random phase of
#   both probe schedules), then t0 = `POST /_admin/health/fail` on one
#   backend (b1, b2, b3 in turn); a poller per load balancer (two threads,
#   one keep-alive connection each) sends a burst of 6 requests every 20 ms
#   and reads X-Served-By. t_detect = the start of the first burst after
#   the last one that still reached the failed backend, once it has been
#   absent for HOLD_MS (1 s). Then `/_admin/health/ok`, and the time until
#   each load balancer serves it again (rise) is recorded the same way.
# It prints per load balancer median, p90 and max, and Tandem/HAProxy.
#
#   scripts/bench/detection.sh               # 10 runs
#   RUNS=30 scripts/bench/detection.sh
#   PROFILE=release scripts/bench/detection.sh   # use target/release binaries
# Nothing is built: it uses the binaries already in target/$PROFILE
# (debug by default; tandemctl always from target/debug if not in release).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

RUNS=${RUNS:-10}
HOLD_MS=${HOLD_MS:-1000}
POLL_MS=${POLL_MS:-20}
BURST=${BURST:-6}
SPACING_MS=${SPACING_MS:-31000} # min time between two failures of the same backend
PROFILE=${PROFILE:-debug}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/$PROFILE
CTL=$BIN/tandemctl
[ -x "$CTL" ] || CTL=$TARGET_DIR/debug/tandemctl
for b in tandem-control tandem-agent tandem-proxy tandem-fake-backend; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: cargo build --bins (profile $PROFILE) first"
done
[ -x "$CTL" ] || die "tandemctl missing: cargo build -p tandem-ctl"
ADMIN_TOKEN=bench-admin-token-0123456789
NODE_TOKEN=bench-node-token-0123456789

ensure_postgres_server
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { echo "installing haproxy"; apt_install haproxy; }
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
echo "haproxy: $("$HAPROXY" -v | head -1)"
echo "tandem binaries: $BIN"

WORK=$(mktemp -d -t tandem-bench-detection-XXXXXX)
chmod 755 "$WORK" # the postgres user must reach its data directory
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  [ -d "$WORK/pg/data" ] && pg_ctl_run -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() {
  for _ in $(seq 1 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  die "$1 did not answer ($2)"
}
# start NAME COMMAND...: in the background, output in $WORK/NAME.log
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

step "starting three fake backends"
BACKEND_PORTS=()
for i in 1 2 3; do
  p=$(free_port); BACKEND_PORTS+=("$p")
  start "b$i" "$BIN/tandem-fake-backend" --listen "127.0.0.1:$p" --name "b$i"
done
for p in "${BACKEND_PORTS[@]}"; do wait_http "http://127.0.0.1:$p/healthz" "backend :$p"; done

step "starting HAProxy (inter 1s fall 2 rise 2)"
HAPROXY_PORT=$(free_port)
{
  haproxy_cfg http "$HAPROXY_PORT" 4096 "option http-keep-alive" \
    "timeout connect 1s" "timeout client 30s" "timeout server 30s" "timeout check 500ms"
  cat <<EOF
  balance roundrobin
  option httpchk GET /healthz
  server b1 127.0.0.1:${BACKEND_PORTS[0]} check inter 1s fall 2 rise 2
  server b2 127.0.0.1:${BACKEND_PORTS[1]} check inter 1s fall 2 rise 2
  server b3 127.0.0.1:${BACKEND_PORTS[2]} check inter 1s fall 2 rise 2
EOF
} >"$WORK/haproxy.cfg"
start haproxy "$HAPROXY" -f "$WORK/haproxy.cfg" -db

step "starting Postgres, tandem-control, tandem-agent, tandem-proxy"
PG_PORT=$(free_port)
start_postgres "$WORK/pg" "$PG_PORT"

CONTROL_PORT=$(free_port); CONTROL_ADMIN_PORT=$(free_port)
CONTROL=http://127.0.0.1:$CONTROL_PORT
start control env DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
  TANDEM_LISTEN="127.0.0.1:$CONTROL_PORT" TANDEM_ADMIN_LISTEN="127.0.0.1:$CONTROL_ADMIN_PORT" \
  TANDEM_ADMIN_TOKEN=$ADMIN_TOKEN TANDEM_NODE_TOKEN=$NODE_TOKEN TANDEM_RAFT_ID=1 TANDEM_INSECURE_PLAINTEXT=true \
  TANDEM_STATE_DIR="$WORK/control-state" RUST_LOG=warn "$BIN/tandem-control"
wait_http "http://127.0.0.1:$CONTROL_ADMIN_PORT/readyz" "tandem-control"

ctl() { TANDEM_ENDPOINT=$CONTROL TANDEM_TOKEN=$ADMIN_TOKEN "$CTL" "$@" >/dev/null || die "tandemctl $* failed"; }
ctl pool create bench --policy round_robin \
  --health-path /healthz --health-interval 1s --health-timeout 500ms \
  --health-fall 2 --health-rise 2
for p in "${BACKEND_PORTS[@]}"; do ctl backend add bench "127.0.0.1:$p"; done
ctl route add --host '*' --prefix / --pool bench

AGENT_ADMIN_PORT=$(free_port)
start agent env TANDEM_CONTROL=$CONTROL TANDEM_TOKEN=$NODE_TOKEN TANDEM_NODE_ID=bench-agent \
  TANDEM_ZONE=zone-a TANDEM_ADMIN_LISTEN="127.0.0.1:$AGENT_ADMIN_PORT" RUST_LOG=warn "$BIN/tandem-agent"
TANDEM_PORT=$(free_port); TANDEM_ADMIN_PORT=$(free_port)
start proxy env TANDEM_LISTEN="127.0.0.1:$TANDEM_PORT" TANDEM_ADMIN_LISTEN="127.0.0.1:$TANDEM_ADMIN_PORT" \
  TANDEM_CONTROL=$CONTROL TANDEM_TOKEN=$NODE_TOKEN TANDEM_NODE_ID=bench-proxy \
  TANDEM_STATE_DIR="$WORK/proxy-state" TANDEM_WORKERS=1 RUST_LOG=warn "$BIN/tandem-proxy"
wait_http "http://127.0.0.1:$AGENT_ADMIN_PORT/healthz" "tandem-agent"
wait_http "http://127.0.0.1:$TANDEM_ADMIN_PORT/readyz" "tandem-proxy"

step "measuring: $RUNS runs (about $((RUNS * 11 + 20)) s), poll every ${POLL_MS} ms (bursts of $BURST), absent for ${HOLD_MS} ms = gone"
python3 - "$RUNS" "$HOLD_MS" "$POLL_MS" "$BURST" "$SPACING_MS" "$TANDEM_PORT" "$HAPROXY_PORT" "${BACKEND_PORTS[@]}" <<'PY'
import http.client, math, random, statistics, sys, threading, time

runs, hold_ms, poll_ms, burst, spacing_ms = map(int, sys.argv[1:6])
tandem_port, haproxy_port = int(sys.argv[6]), int(sys.argv[7])
backends = [int(p) for p in sys.argv[8:11]]
names = ["b1", "b2", "b3"]
lbs = {"tandem": tandem_port, "haproxy": haproxy_port}
hold, poll = hold_ms / 1000, poll_ms / 1000
spacing = spacing_ms / 1000
TIMEOUT = 20.0

class Client:
    def __init__(self, port):
        self.port, self.conn = port, None
    def get(self):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                self.conn.request("GET", "/")
                r = self.conn.getresponse(); r.read()
                return r.getheader("x-served-by") if r.status == 200 else None
            except Exception:
                if self.conn: self.conn.close()
                self.conn = None
        return None
    def burst(self):
        return {self.get() for _ in range(burst)}

clients = {lb: Client(p) for lb, p in lbs.items()}

def admin(i, what):
    c = http.client.HTTPConnection("127.0.0.1", backends[i], timeout=2)
    c.request("POST", f"/_admin/health/{what}"); c.getresponse().read(); c.close()

def watch(lb, name, present, t0, out):
    """Poll until `name`'s presence has equalled `present` for `hold`;
    out[lb] = seconds from t0 to the first burst of that stable stretch."""
    cl, since = clients[lb], None
    while True:
        ts = time.monotonic()
        if ts - t0 > TIMEOUT:
            out[lb] = None; return
        if (name in cl.burst()) == present:
            if since is None: since = ts
            if ts - since >= hold:
                out[lb] = since - t0; return
        else:
            since = None
        time.sleep(max(0, poll - (time.monotonic() - ts)))

def both(name, present, t0):
    out = {}
    ts = [threading.Thread(target=watch, args=(lb, name, present, t0, out)) for lb in lbs]
    for t in ts: t.start()
    for t in ts: t.join()
    return out

# Ready: every backend reachable through both load balancers.
deadline = time.monotonic() + 60
while True:
    seen = {lb: set().union(*(clients[lb].burst() for _ in range(3))) for lb in lbs}
    if all(set(names) <= s for s in seen.values()): break
    if time.monotonic() > deadline:
        sys.exit(f"not all backends reachable: {seen}")
    time.sleep(0.2)

down = {lb: [] for lb in lbs}; up = {lb: [] for lb in lbs}
last_fail = {}
for r in range(runs):
    i = r % 3; name = names[i]
    # Tandem's flap damping (crates/core/src/health.rs) holds a backend down
    # for 30 s when a return would be its 4th transition within 30 s; HAProxy
    # has none. Space the flips of one backend by SPACING so the benchmark
    # measures detection, not damping (a held-down backend plus a second
    # failure would also trip the pool's 50 % panic threshold).
    wait = last_fail.get(i, -1e9) + spacing - time.monotonic()
    if wait > 0: time.sleep(wait)
    time.sleep(random.uniform(0, 1))  # random phase against both probe schedules
    last_fail[i] = time.monotonic()
    t0 = time.monotonic(); admin(i, "fail")
    d = both(name, False, t0)
    t1 = time.monotonic(); admin(i, "ok")
    u = both(name, True, t1)
    for lb in lbs:
        down[lb].append(d[lb]); up[lb].append(u[lb])
    fmt = lambda v: "timeout" if v is None else f"{v * 1000:6.0f}"
    print(f"  run {r + 1:2}/{runs} ({name}): detect ms tandem {fmt(d['tandem'])}  haproxy {fmt(d['haproxy'])}"
          f"   | back ms tandem {fmt(u['tandem'])}  haproxy {fmt(u['haproxy'])}", flush=True)

def stats(xs):
    ok = sorted(x * 1000 for x in xs if x is not None)
    if not ok: return None
    p90 = ok[max(0, math.ceil(0.9 * len(ok)) - 1)]  # nearest rank
    return {"n": len(ok), "min": ok[0], "median": statistics.median(ok), "p90": p90, "max": ok[-1],
            "timeouts": len(xs) - len(ok)}

print()
for title, data in (("detect (fail -> no longer routed)", down), ("return (ok -> routed again)", up)):
    print(title)
    print(f"  {'':8} {'n':>3} {'min':>7} {'median':>7} {'p90':>7} {'max':>7}  (ms)")
    s = {lb: stats(data[lb]) for lb in lbs}
    for lb in lbs:
        v = s[lb]
        if v is None: print(f"  {lb:8} all timed out"); continue
        print(f"  {lb:8} {v['n']:>3} {v['min']:7.0f} {v['median']:7.0f} {v['p90']:7.0f} {v['max']:7.0f}"
              + (f"  ({v['timeouts']} timeouts)" if v['timeouts'] else ""))
    if s["tandem"] and s["haproxy"]:
        print("  tandem/haproxy: median %.2fx, p90 %.2fx, max %.2fx" % tuple(
            s["tandem"][k] / s["haproxy"][k] for k in ("median", "p90", "max")))
    print()
PY
