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
# - load, on core 1:
#   * keep-alive: wrk (OpenSSL), one thread, $CONNS connections for
#     $DURATION, many requests each (TLS 1.2: what wrk negotiates);
#   * handshakes: openssl s_time -new, $HS_CLIENTS processes at once, on
#     core 1: every request a new TCP connection and a full TLS 1.3
#     handshake (never resumed), HTTP/1.0 GET / read to the close. Not wrk:
#     with `Connection: close` wrk resumes the session on every reconnect
#     (SSL_clear keeps it; nginx logged 2535 of 2539 reused), so it
#     measured resumptions, not new handshakes. The client does as much
#     crypto as the server: on 2 cores handshakes/s may be the client's
#     limit, and CPU per handshake is the figure that compares;
# - CPU per request from the proxy's utime+stime (/proc, every process of
#   it), ROUNDS rounds with the targets interleaved; the table shows each
#   figure's median, and the median of the per-round ratios tandem/nginx.
#
# Usage: scripts/bench/tls.sh          (DURATION=10s CONNS=50 HS_CLIENTS=8 ROUNDS=3)
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
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
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

bench_work tandem-tls-bench
# The backend lives through every key type's proxies (stop_pids).
trap 'stop_pids; kill "${BACKEND_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# === certificates: one CA, a leaf for localhost per key type ===
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj "/CN=tandem bench CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >leaf.ext
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ecdsa.key 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
  for k in ecdsa rsa; do
    openssl req -new -key "$k.key" -subj /CN=localhost -out "$k.csr"
    openssl x509 -req -in "$k.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out "$k.pem" 2>/dev/null
  done
)

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

declare -A RPS CPU ERR
seconds() { # 10s, 500ms, 2m -> seconds
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; print (n < 1 ? 1 : int(n)) }'
}
# New handshakes: HS_CLIENTS `openssl s_time -new` at once for $1; prints
# the connections they completed, summed. Run it in a subshell (its
# `wait` must see only its own clients).
handshakes() { # duration port
  local secs i out=$WORK/s_time
  secs=$(seconds "$1")
  for i in $(seq 1 "$HS_CLIENTS"); do
    taskset -c "$LOAD_CORE" openssl s_time -connect "127.0.0.1:$2" -new -time "$secs" -www / \
      >"$out.$i" 2>&1 &
  done
  wait
  cat "$out".* | awk '/connections in .* real seconds/ { n += $1 } END { print n + 0 }'
  rm -f "$out".*
}
measure() { # key mode target round port pid
  local name=$1.$2.$3.$4 port=$5 pid=$6
  local before out requests after start end
  if [ "$2" = handshake ]; then
    (handshakes "$WARMUP" "$port" >/dev/null)
    before=$(cpu_ticks "$pid")
    start=$(date +%s.%N)
    requests=$(handshakes "$DURATION" "$port")
    end=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    RPS[$name]=$(awk -v n="$requests" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
    ERR[$name]=""
    [ "$requests" -gt 0 ] || ERR[$name]="no handshake completed"
  else
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$WARMUP" "https://localhost:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" "https://localhost:$port/")
    after=$(cpu_ticks "$pid")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    RPS[$name]=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
    ERR[$name]=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  fi
  CPU[$name]=$(awk -v a="$after" -v b="$before" -v n="$requests" -v t="$TICK" \
    'BEGIN { if (n > 0) printf "%.1f", (a - b) / t / n * 1e6; else print "-" }')
}

median() { awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "load: keep-alive wrk -t1 -c$CONNS -d$DURATION, handshakes $HS_CLIENTS x openssl s_time -new; $ROUNDS round(s); proxies on core $PROXY_CORE, backend and clients on core $LOAD_CORE"
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

printf "\n%-6s %-10s %-7s %10s %12s %s\n" key mode target req/s cpu_us/req errors
for k in $KEYS; do
  for mode in keepalive handshake; do
    for t in nginx tandem; do
      rps=$(for r in $(seq 1 "$ROUNDS"); do echo "${RPS[$k.$mode.$t.$r]}"; done | sort -g | median)
      cpu=$(for r in $(seq 1 "$ROUNDS"); do echo "${CPU[$k.$mode.$t.$r]}"; done | sort -g | median)
      err=$(for r in $(seq 1 "$ROUNDS"); do echo -n "${ERR[$k.$mode.$t.$r]}"; done)
      printf "%-6s %-10s %-7s %10s %12s %s\n" "$k" "$mode" "$t" "$rps" "$cpu" "$err"
    done
  done
done
echo
echo "tandem/nginx, median of per-round ratios (throughput; cpu per request):"
for k in $KEYS; do
  for mode in keepalive handshake; do
    tr=$(for r in $(seq 1 "$ROUNDS"); do ratio "${RPS[$k.$mode.tandem.$r]}" "${RPS[$k.$mode.nginx.$r]}"; echo; done | sort -g | median)
    cr=$(for r in $(seq 1 "$ROUNDS"); do ratio "${CPU[$k.$mode.tandem.$r]}" "${CPU[$k.$mode.nginx.$r]}"; echo; done | sort -g | median)
    printf "  %-6s %-10s throughput %sx, cpu/req %sx\n" "$k" "$mode" "$tr" "$cr"
  done
done
kill "$BACKEND_PID" 2>/dev/null || true
