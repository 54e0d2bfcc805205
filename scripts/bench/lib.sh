# Shared set-up for scripts/bench/*.sh (sourced, not run, from the
# repository's root): prerequisites, builds, the work directory and the
# processes to stop at exit, the nginx backend, tandem-proxy's snapshot and
# environment, HAProxy in TCP mode, CPU time and callgrind counts, medians.
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# BENCH_PROFILE=debug checks a script quickly with the debug builds;
# figures come from release builds only.
BENCH_PROFILE=${BENCH_PROFILE:-release}
case $BENCH_PROFILE in
  release | debug) ;;
  *) die "BENCH_PROFILE is '$BENCH_PROFILE': release or debug" ;;
esac
BUILD=target/$BENCH_PROFILE

# bench_build WHAT CARGO_ARGS...: builds with cargo in BENCH_PROFILE.
bench_build() {
  echo "building $1 ($BENCH_PROFILE)"
  shift
  if [ "$BENCH_PROFILE" = release ]; then cargo build --release -q "$@"; else cargo build -q "$@"; fi
}

# bench_need TOOL...: installs the Debian packages (named as the tools) of
# those missing; nginx and HAProxy may be in /usr/sbin, outside PATH.
bench_need() {
  local need=() t sudo=sudo
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || need+=("$t")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]}"
  [ "$(id -u)" -eq 0 ] && sudo=""
  $sudo apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y "${need[@]}" >/dev/null; }
}
# tool_path TOOL: where it is (PATH or /usr/sbin).
tool_path() { command -v "$1" || echo "/usr/sbin/$1"; }

# bench_work NAME: WORK, a new temporary directory; at exit the processes
# in PIDS are stopped and WORK is removed.
PIDS=()
bench_work() {
  WORK=$(mktemp -d -t "$1-XXXXXX")
  trap 'stop_pids; rm -rf "$WORK"' EXIT
}
# stop_pids: TERM to every process in PIDS, then KILL; PIDS is emptied.
stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
}

# wait_port PORT [TRIES [PAUSE]]: until something listens on 127.0.0.1:PORT
# (by default 100 tries 0.05 s apart).
wait_port() {
  for _ in $(seq 1 "${2:-100}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep "${3:-0.05}"
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# nginx_conf DIR HTTP_BODY: writes DIR/nginx.conf, nginx with one worker in
# the foreground, its files in DIR, no access log, HTTP_BODY (lines) in
# its `http { }`.
nginx_conf() {
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$2
}
EOF
}

# nginx_proxy_conf DIR PORT [LISTEN_FLAGS [SERVER_LINES [LOCATION_LINES]]]:
# nginx as the reverse proxy compared with tandem-proxy: keep-alive to the
# backend on BACKEND_PORT, listening on 127.0.0.1:PORT (with "ssl http2",
# say), the extra lines in its `server { }` and `location / { }`.
nginx_proxy_conf() {
  nginx_conf "$1" "  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$2${3:+ $3};${4:+
$4}
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;${5:+
$5}
    }
  }"
}

# start_backend_nginx PORT [CORE]: the backend every HTTP benchmark uses,
# nginx with one worker answering `200 ok` from memory on 127.0.0.1:PORT,
# pinned to CORE when one is given; files in $WORK/backend. Sets
# BACKEND_PID (not added to PIDS) and waits until it listens.
start_backend_nginx() {
  local port=$1 core=${2:-} pin=()
  [ -n "$core" ] && pin=(taskset -c "$core")
  nginx_conf "$WORK/backend" "  server {
    listen 127.0.0.1:$port reuseport;
    location / { return 200 \"ok\\n\"; }
  }"
  "${pin[@]}" "$(tool_path nginx)" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  BACKEND_PID=$!
  wait_port "$port"
}

# bench_snapshot BACKEND_PORT [TCP_LISTEN]: a tandem-proxy snapshot.json
# with one pool "bench" of one backend on 127.0.0.1:BACKEND_PORT, routed
# for every HTTP request; with TCP_LISTEN (ip:port) instead a TCP route
# there (and a TCP health check).
bench_snapshot() {
  local kind=http routes='[{"host": "*", "path_prefix": "/", "pool": "bench"}]' tcp=""
  if [ -n "${2:-}" ]; then
    kind=tcp routes='[]'
    tcp=",
 \"tcp_routes\": [{\"listen\": \"$2\", \"pool\": \"bench\"}]"
  fi
  cat <<EOF
{"revision": 1,
 "pools": {"bench": {
   "config": {"name": "bench", "policy": "round_robin",
     "health_check": {"kind": "$kind", "path": "/", "method": "GET", "host": "",
       "expected_status_min": 200, "expected_status_max": 399,
       "interval_ms": 2000, "timeout_ms": 1000, "rise": 2, "fall": 3},
     "connect_timeout_ms": 1000, "request_timeout_ms": 30000,
     "retry": {"attempts": 1, "per_try_timeout_ms": 5000, "budget_percent": 20},
     "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000, "max_ejected_percent": 50},
     "panic_threshold_percent": 50},
   "backends": [{"address": "127.0.0.1:$1", "weight": 1, "role": "primary", "admin_state": "enabled"}],
   "revision": 1}},
 "routes": $routes$tcp}
EOF
}

# tandem_env PORT ADMIN_PORT STATE_DIR: sets TANDEM_ENV, the environment of
# a benchmarked tandem-proxy (`env "${TANDEM_ENV[@]}" ...`): HTTP on PORT,
# admin on ADMIN_PORT, no control plane, one worker, warnings only.
tandem_env() {
  TANDEM_ENV=(TANDEM_LISTEN="127.0.0.1:$1" TANDEM_ADMIN_LISTEN="127.0.0.1:$2"
    TANDEM_STATE_DIR="$3" TANDEM_CONTROL= TANDEM_WORKERS=1 RUST_LOG=warn)
}

# haproxy_tcp_cfg PORT BACKEND_PORT: HAProxy `mode tcp`, one thread, from
# 127.0.0.1:PORT to the backend.
haproxy_tcp_cfg() {
  haproxy_cfg tcp "$1" 8000 "timeout connect 1s" "timeout client 30m" "timeout server 30m"
  echo "  server b1 127.0.0.1:$2"
}

# median [FORMAT]: the median of the numbers on stdin (one a line, or
# several apart); of an even count, the mean of the middle two, printed
# with FORMAT (%.0f by default).
median() {
  tr -s ' \t' '\n' | awk 'NF' | sort -g | awk -v f="${1:-%.0f}" '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf f "\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# cpu_ticks PID: utime + stime of a process and its children (nginx's
# master and worker), in clock ticks; 0 for no PID.
cpu_ticks() {
  local t=0 p
  [ -n "${1:-}" ] || { echo 0; return; }
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
TICK=$(getconf CLK_TCK)

# callgrind_count DIR COMMAND...: the instructions the process VG_PID
# (under callgrind, --callgrind-out-file=DIR/callgrind.out) executes while
# COMMAND runs.
callgrind_count() {
  local dir=$1
  shift
  rm -f "$dir"/callgrind.out.*
  callgrind_control -i on "$VG_PID" >/dev/null 2>&1
  "$@" >/dev/null
  callgrind_control -i off "$VG_PID" >/dev/null 2>&1
  callgrind_control -d "$VG_PID" >/dev/null 2>&1
  sleep 0.5
  cat "$dir"/callgrind.out.* 2>/dev/null | awk '/^totals:/ { t += $2 } END { print t + 0 }'
}
