# Shared helpers for scripts/*.sh (sourced, not run).

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "cannot install $*: no apt-get on this machine; install them by hand"
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

ensure_rust_components() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "cargo fmt / clippy missing and no rustup to add them"
    rustup component add rustfmt clippy
  fi
}

# The PostgreSQL server binaries (initdb, pg_ctl) for throwaway test clusters.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
ensure_postgres_server() {
  if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    echo "installing the PostgreSQL server (Debian package postgresql)"
    apt_install postgresql
    # The package starts a system cluster; tests use their own.
    as_root service postgresql stop >/dev/null 2>&1 || true
  fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    die "running as root but there is no 'postgres' user to run test clusters as"
  fi
  command -v psql >/dev/null || [ -x "$(pg_bin)/psql" ] || apt_install postgresql-client
  echo "postgres: $(pg_bin)"
}

# Python 3.9+ for scripts/run-local.py (the native run's supervisor).
ensure_python3() {
  if ! command -v python3 >/dev/null; then
    echo "installing Python 3 (Debian package python3)"
    apt_install python3
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "python3 is $(python3 --version 2>&1); scripts/run-local.py needs 3.9 or later"
}

# The TLS tests' clients and certificate maker: curl (with HTTP/2) and the
# openssl command-line tool (test CAs, `openssl s_client`).
ensure_tls_tools() {
  command -v openssl >/dev/null || apt_install openssl
  command -v curl >/dev/null || apt_install curl
}

# test_ca DIR CN: a throwaway CA in DIR (ca.pem, ca.key; P-256, two days)
# named CN, for test_leaf.
test_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1/ca.key" \
    -out "$1/ca.pem" -days 2 -subj "/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
}

# test_leaf DIR NAME: DIR/NAME.pem, a server certificate for localhost
# signed by test_ca's CA in DIR, for the key DIR/NAME.key.
test_leaf() {
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$1/leaf.ext"
  openssl req -new -key "$1/$2.key" -subj /CN=localhost -out "$1/$2.csr"
  openssl x509 -req -in "$1/$2.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" -CAcreateserial -days 2 \
    -extfile "$1/leaf.ext" -out "$1/$2.pem" 2>/dev/null
}

# haproxy_cfg MODE PORT MAXCONN [DEFAULTS_LINE...]: the head of an HAProxy
# configuration for the benchmarks: one thread (like the one-worker proxies
# it is compared with), MODE (http or tcp) and the given lines in
# `defaults`, a frontend on 127.0.0.1:PORT, and the `backend be` line: the
# caller writes that backend's lines after it.
haproxy_cfg() {
  local line
  printf 'global\n  nbthread 1\n  maxconn %s\ndefaults\n  mode %s\n' "$3" "$1"
  for line in "${@:4}"; do printf '  %s\n' "$line"; done
  printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend be\nbackend be\n' "$2"
}

# Headless Chromium and its WebDriver, for the widget shop's browser test.
ensure_chromium() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing Chromium and chromedriver (Debian packages chromium, chromium-driver)"
    apt_install chromium chromium-driver
  fi
  echo "chromium: $(command -v chromium), chromedriver: $(command -v chromedriver)"
}

# Packet filters the partition tests cut traffic with (they run as root).
ensure_packet_filters() {
  command -v iptables >/dev/null || apt_install iptables
  command -v nft >/dev/null || apt_install nftables
  echo "iptables: $(command -v iptables), nft: $(command -v nft)"
}

# Debian's Prometheus (gives promtool too) for the alert rules' checks and
# tandem-e2e's alerts test; its package may not start a service here.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "installing Prometheus (Debian package prometheus)"
    apt_install --no-install-recommends prometheus
    as_root service prometheus stop >/dev/null 2>&1 || true
  fi
  echo "prometheus: $(command -v prometheus), promtool: $(command -v promtool)"
}

# Patroni, etcd and Postgres 15 for the data tier's tests (testkit's
# patroni module: three-member etcd, Patroni clusters on loopback hosts).
ensure_patroni() {
  local missing=()
  command -v patroni >/dev/null || missing+=(patroni)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)"
    apt_install "${missing[@]}"
    # On a systemd host the packages start system services; tests run their own.
    as_root service etcd stop >/dev/null 2>&1 || true
    as_root service patroni stop >/dev/null 2>&1 || true
  fi
  echo "patroni: $(patroni --version 2>&1 | head -1), etcd: $(etcd --version | head -1)"
}

# pg_ctl as the user that owns the cluster (initdb and the server refuse root).
pg_ctl_run() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$(pg_bin)/pg_ctl" "$@"; else "$(pg_bin)/pg_ctl" "$@"; fi
}

# start_postgres DIR PORT: a throwaway cluster in DIR/data on 127.0.0.1:PORT
# (trust auth, sockets in DIR, fsync off). Stop it with
# `pg_ctl_run -D DIR/data -m immediate -w stop`.
start_postgres() {
  local dir=$1 port=$2 run=()
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$(pg_bin)/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  pg_ctl_run -D "$dir/data" -l "$dir/pg.log" -w -t 30 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off" start >/dev/null
}

# free_port: a loopback port nothing listens on right now.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}

# HAProxy, the reference router the database failover benchmark compares
# Tandem's TCP routes with (scripts/bench/db-failover.sh); its package may
# start a system service, which the benchmark does not use.
ensure_haproxy() {
  if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
    echo "installing HAProxy (Debian package haproxy)"
    apt_install haproxy
    as_root service haproxy stop >/dev/null 2>&1 || true
  fi
  echo "haproxy: $( (command -v haproxy || echo /usr/sbin/haproxy) | head -1)"
}
