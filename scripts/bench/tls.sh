#!/usr/bin/env bash
# HTTPS at the edge: tandem-proxy's TLS listener beside nginx (Debian's
# package), same certificate, same backend, same load generators.
#
# Method (also in docs/benchmarks.md):
# - backend: one nginx worker answering `200 ok` over plain HTTP, on core 1;
# - each TLS proxy: one worker, pinned to core 0, upstream keep-alive on,
#   TLS 1.3 and 1.2 offered, session tickets on (both defaults);
# - the certificate: a leaf for `localhost` signed by a throwaway CA, made
#   with openssl, once ECDSA P-256 and once RSA 2048 (the same files for
#   both proxies);
# - load, on the load core(s) (LOAD_CORE: core 1 on two cores, every core
#   but the proxies' on four or more), never on the proxies' core:
#   * keep-alive: wrk (OpenSSL), one thread, $CONNS connections for
#     $DURATION, many requests each (TLS 1.2: what wrk negotiates);
#   * handshakes: every request a new TCP connection and a full TLS 1.3
#     handshake (never resumed), then HTTP/1.0 GET / read to the close
#     (HS_GET=0: the handshake alone). The client (HS_CLIENT):
#     - `rustls` (default): crates/tls/examples/handshakes.rs, $HS_CLIENTS
#       threads; the proxy's client for `--backend-tls-insecure` backends
#       (rustls with ring), no session resumption, no ALPN: it does not
#       check the chain, only the handshake signature, so its share of a
#       handshake is an X25519 exchange, one signature check and the
#       records: far less than the server's, so that the server, not the
#       client, is the limit;
#     - `s_time`: $HS_CLIENTS `openssl s_time -new` processes. OpenSSL 3.0
#       spends more CPU per handshake than either proxy, so on two cores
#       it was the limit (both proxies stopped at 600-690 handshakes/s
#       using 0.3-0.5 of their core).
#     Not wrk: with `Connection: close` wrk resumes the session on every
#     reconnect (SSL_clear keeps it; nginx logged 2535 of 2539 reused), so
#     it measured resumptions, not new handshakes;
# - CPU per request from the proxy's utime+stime (/proc, every process of
#   it), and how busy the proxies' core and the load cores were
#   (/proc/stat) over the same interval; ROUNDS rounds with the targets
#   interleaved; the table shows each figure's median, and the median of
#   the per-round ratios tandem/nginx;
# - the headline for handshakes is handshakes per proxy CPU-second (1e6 /
#   CPU us per handshake), which does not depend on who ran out of CPU
#   first. Handshakes per second compare only when the proxy's core is the
#   one saturated: a row whose load cores were >= 90% busy while the proxy
#   used < 90% of its core is marked `client-bound`; one whose proxy core
#   was >= 90% busy while the proxy used < 80% of it, `proxy-core-shared`
#   (something else ran there: not a quiet machine, not a figure).
#
# Usage: scripts/bench/tls.sh          (DURATION=10s CONNS=50 HS_CLIENTS=8 ROUNDS=3
#                                       HS_CLIENT=rustls HS_GET=1)
#        DURATION=20s ROUNDS=5 scripts/bench/tls.sh
#        ROUNDS=1 DURATION=2s WARMUP=1s TANDEM_BIN=target/debug/tandem-proxy \
#          scripts/bench/tls.sh                  (checks the script only)
# Not a test: numbers depend on the machine; nothing here asserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-"ecdsa rsa"}
HS_CLIENTS=${HS_CLIENTS:-8}
HS_CLIENT=${HS_CLIENT:-rustls}
HS_GET=${HS_GET:-1}
PROXY_CORE=${PROXY_CORE:-0}
if [ -z "${LOAD_CORE:-}" ]; then
  if [ "$(nproc)" -ge 4 ]; then LOAD_CORE="1-$(($(nproc) - 1))"; else LOAD_CORE=1; fi
fi
BASE=${TLS_BENCH_PORT_BASE:-$((20000 + RANDOM % 20000))}
BACKEND_PORT=$BASE
NGINX_PORT=$((BASE + 1))
TANDEM_PORT=$((BASE + 2))
TANDEM_HTTP_PORT=$((BASE + 3))
TANDEM_ADMIN_PORT=$((BASE + 4))

bench_need nginx wrk openssl
NGINX=$(tool_path nginx)
if [ "$(nproc)" -lt 2 ]; then PROXY_CORE=0; LOAD_CORE=0; fi

# TANDEM_BIN: a tandem-proxy already built (a debug one proves the script
# works; figures come from the release build only).
if [ -n "${TANDEM_BIN:-}" ]; then
  TANDEM=$TANDEM_BIN
else
  bench_build tandem-proxy -p tandem-proxy
  TANDEM=$BUILD/tandem-proxy
fi
case $HS_CLIENT in
  rustls)
    # The handshake client, built like the proxy (debug with a debug
    # TANDEM_BIN: the script check; release for figures).
    if [ -n "${HS_BIN:-}" ]; then
      :
    elif [ -n "${TANDEM_BIN:-}" ] && [[ $TANDEM_BIN == *debug* ]]; then
      cargo build -q -p tandem-tls --example handshakes
      HS_BIN=target/debug/examples/handshakes
    else
      cargo build --release -q -p tandem-tls --example handshakes
      HS_BIN=target/release/examples/handshakes
    fi ;;
  s_time) ;;
  *) echo "HS_CLIENT must be rustls or s_time (got $HS_CLIENT)" >&2; exit 2 ;;
esac

bench_work tandem-tls-bench
# The backend lives through every key type's proxies (stop_pids).
trap 'stop_pids; kill "${BACKEND_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# === certificates: one CA, a leaf for localhost per key type ===
test_ca "$WORK" "tandem bench CA"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/ecdsa.key" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.key" 2>/dev/null
for k in ecdsa rsa; do test_leaf "$WORK" "$k"; done

# === the backend: nginx, one worker, plain HTTP, on the load core ===
start_backend_nginx "$BACKEND_PORT" "$LOAD_CORE"

start_proxies() { # key type: starts nginx and tandem with that certificate
  local k=$1
  nginx_proxy_conf "$WORK/nginx-$k" "$NGINX_PORT" "ssl http2" "    ssl_certificate $WORK/$k.pem;
    ssl_certificate_key $WORK/$k.key;
    ssl_protocols TLSv1.2 TLSv1.3;" "      proxy_set_header X-Forwarded-Proto https;"
  taskset -c "$PROXY_CORE" "$NGINX" -p "$WORK/nginx-$k" -c "$WORK/nginx-$k/nginx.conf" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")

  mkdir -p "$WORK/tandem-$k"
  bench_snapshot "$BACKEND_PORT" >"$WORK/tandem-$k/snapshot.json"
  python3 - "$WORK" "$k" <<'PY'
import json, sys
work, k = sys.argv[1], sys.argv[2]
path = f"{work}/tandem-{k}/snapshot.json"
snapshot = json.load(open(path))
snapshot["certificates"] = {"bench": {"name": "bench",
  "chain_pem": open(f"{work}/{k}.pem").read(),
  "key_pem": open(f"{work}/{k}.key").read()}}
json.dump(snapshot, open(path, "w"))
PY
  tandem_env "$TANDEM_HTTP_PORT" "$TANDEM_ADMIN_PORT" "$WORK/tandem-$k"
  env "${TANDEM_ENV[@]}" TANDEM_TLS_LISTEN="127.0.0.1:$TANDEM_PORT" \
    taskset -c "$PROXY_CORE" "$TANDEM" >"$WORK/tandem-$k.log" 2>&1 &
  TANDEM_PID=$!
  PIDS+=("$TANDEM_PID")
  wait_port "$NGINX_PORT"
  wait_port "$TANDEM_PORT"
  for p in $NGINX_PORT $TANDEM_PORT; do
    body=$(curl -fsS --cacert "$WORK/ca.pem" "https://localhost:$p/" || true)
    [ "$body" = "ok" ] || {
      echo "port $p answers ${body:-nothing}" >&2
      cat "$WORK/tandem-$k.log" >&2
      exit 1
    }
  done
}

# === measuring ===
# cpu_ticks and TICK: scripts/bench/lib.sh.
cores_of() { # "1-3,5" -> "1 2 3 5"
  local part out=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then out+=($(seq "${part%-*}" "${part#*-}")); else out+=("$part"); fi
  done
  echo "${out[@]}"
}
LOAD_CORES=$(cores_of "$LOAD_CORE")
core_times() { # cores -> "busy total" jiffies, summed over them
  local c pattern=""
  for c in $1; do pattern+="^cpu$c |"; done
  grep -E "${pattern%|}" /proc/stat |
    awk '{ for (i = 2; i <= NF; i++) t += $i; b += $2 + $3 + $4 + $7 + $8 + $9 } END { print b, t }'
}
busy_pct() { # "busy total" before, after -> percent busy (of all those cores)
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    if (y[2] > x[2]) printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "-" }'
}

declare -A RPS CPU ERR PCORE LCORE PROXY
seconds() { # 10s, 500ms, 2m -> seconds
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; print (n < 1 ? 1 : int(n)) }'
}
# New handshakes for $1, by HS_CLIENT; prints the connections completed.
# Run it in a subshell (s_time's `wait` must see only its own clients).
handshakes() { # duration port
  local secs i out=$WORK/s_time www=()
  secs=$(seconds "$1")
  if [ "$HS_CLIENT" = rustls ]; then
    local get=()
    [ "$HS_GET" = 1 ] || get=(--no-get)
    taskset -c "$LOAD_CORE" "$HS_BIN" "127.0.0.1:$2" "$secs" "$HS_CLIENTS" "${get[@]}" 2>"$out.err" |
      awk '/handshakes in/ { print $1 }'
    if grep -q "first error" "$out.err"; then head -c 300 "$out.err" >&2; fi
    rm -f "$out.err"
    return
  fi
  [ "$HS_GET" = 1 ] && www=(-www /)
  for i in $(seq 1 "$HS_CLIENTS"); do
    taskset -c "$LOAD_CORE" openssl s_time -connect "127.0.0.1:$2" -new -time "$secs" "${www[@]}" \
      >"$out.$i" 2>&1 &
  done
  wait
  cat "$out".* | awk '/connections in .* real seconds/ { n += $1 } END { print n + 0 }'
  rm -f "$out".*
}
measure() { # key mode target round port pid
  local name=$1.$2.$3.$4 port=$5 pid=$6
  local before out requests after start end pc0 pc1 lc0 lc1
  if [ "$2" = handshake ]; then
    (handshakes "$WARMUP" "$port" >/dev/null)
    before=$(cpu_ticks "$pid")
    pc0=$(core_times "$PROXY_CORE") lc0=$(core_times "$LOAD_CORES")
    start=$(date +%s.%N)
    requests=$(handshakes "$DURATION" "$port")
    end=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    pc1=$(core_times "$PROXY_CORE") lc1=$(core_times "$LOAD_CORES")
    RPS[$name]=$(awk -v n="$requests" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
    ERR[$name]=""
    [ "$requests" -gt 0 ] || ERR[$name]="no handshake completed"
  else
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$WARMUP" "https://localhost:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    pc0=$(core_times "$PROXY_CORE") lc0=$(core_times "$LOAD_CORES")
    start=$(date +%s.%N)
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" "https://localhost:$port/")
    end=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    pc1=$(core_times "$PROXY_CORE") lc1=$(core_times "$LOAD_CORES")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    RPS[$name]=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
    ERR[$name]=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  fi
  CPU[$name]=$(awk -v a="$after" -v b="$before" -v n="$requests" -v t="$TICK" \
    'BEGIN { if (n > 0) printf "%.1f", (a - b) / t / n * 1e6; else print "-" }')
  # The proxy's CPU over the interval in % of one core, and how busy its
  # core and the load cores were.
  PROXY[$name]=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v s="$start" -v e="$end" \
    'BEGIN { printf "%.0f", 100 * (a - b) / t / (e - s) }')
  PCORE[$name]=$(busy_pct "$pc0" "$pc1")
  LCORE[$name]=$(busy_pct "$lc0" "$lc1")
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "load: keep-alive wrk -t1 -c$CONNS -d$DURATION, handshakes $HS_CLIENTS x $HS_CLIENT (HS_GET=$HS_GET); $ROUNDS round(s); proxies on core $PROXY_CORE, backend and clients on core(s) $LOAD_CORE"
for k in $KEYS; do
  start_proxies "$k"
  for r in $(seq 1 "$ROUNDS"); do
    echo "$k: round $r/$ROUNDS"
    for mode in keepalive handshake; do
      measure "$k" "$mode" nginx "$r" "$NGINX_PORT" "$NGINX_PID"
      measure "$k" "$mode" tandem "$r" "$TANDEM_PORT" "$TANDEM_PID"
    done
  done
  stop_pids
  sleep 0.3
done

per_cpu_s() { awk -v c="$1" 'BEGIN { if (c > 0) printf "%.0f", 1e6 / c; else print "-" }'; }
printf "\n%-6s %-10s %-7s %10s %12s %12s %7s %7s %7s %s\n" key mode target req/s cpu_us/req per_cpu_s proxy% pcore% load% notes
for k in $KEYS; do
  for mode in keepalive handshake; do
    for t in nginx tandem; do
      col() {
        local -n a=$1
        for r in $(seq 1 "$ROUNDS"); do echo "${a[$k.$mode.$t.$r]}"; done | median %.2f
      }
      rps=$(col RPS) cpu=$(col CPU) proxy=$(col PROXY) pcore=$(col PCORE) load=$(col LCORE)
      err=$(for r in $(seq 1 "$ROUNDS"); do echo -n "${ERR[$k.$mode.$t.$r]}"; done)
      # The proxy's core busy with others: the machine is not quiet. The
      # load cores saturated while the proxy had room: the client's limit.
      note=$(awk -v l="$load" -v p="$proxy" -v c="$pcore" 'BEGIN {
        if (c + 0 >= 90 && p + 0 < 80) print "proxy-core-shared "
        else if (l + 0 >= 90 && p + 0 < 90) print "client-bound " }')
      printf "%-6s %-10s %-7s %10s %12s %12s %7s %7s %7s %s\n" "$k" "$mode" "$t" "$rps" "$cpu" \
        "$(per_cpu_s "$cpu")" "$proxy" "$pcore" "$load" "$note$err"
    done
  done
done
echo
echo "per_cpu_s: requests (handshakes) per second of the proxy's CPU; proxy%: the proxy's CPU in % of"
echo "one core; pcore%/load%: how busy the proxies' core ($PROXY_CORE) and the load cores ($LOAD_CORE) were."
echo "handshake client: $HS_CLIENT x$HS_CLIENTS, $([ "$HS_GET" = 1 ] && echo 'handshake + GET /' || echo 'handshake only')"
echo
echo "tandem/nginx, median of per-round ratios (throughput; per proxy CPU-second, the headline for handshakes):"
for k in $KEYS; do
  for mode in keepalive handshake; do
    tr=$(for r in $(seq 1 "$ROUNDS"); do ratio "${RPS[$k.$mode.tandem.$r]}" "${RPS[$k.$mode.nginx.$r]}"; echo; done | median %.2f)
    cr=$(for r in $(seq 1 "$ROUNDS"); do ratio "${CPU[$k.$mode.nginx.$r]}" "${CPU[$k.$mode.tandem.$r]}"; echo; done | median %.2f)
    printf "  %-6s %-10s throughput %sx, per CPU-second %sx\n" "$k" "$mode" "$tr" "$cr"
  done
done
kill "$BACKEND_PID" 2>/dev/null || true
