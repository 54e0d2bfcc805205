#!/usr/bin/env bash
# Entrypoint of tandem/postgres: the environment contract of the official
# `postgres` image, on Debian's postgresql-15 package.
#
#   POSTGRES_PASSWORD   superuser password (required unless
#                       POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER       superuser name (default: postgres)
#   POSTGRES_DB         database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR   extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD   pg_hba method for remote hosts
#                       (default: scram-sha-256)
#   PGDATA              data directory (default: /var/lib/postgresql/data)
#   <VAR>_FILE          read POSTGRES_PASSWORD, _USER, _DB, _INITDB_ARGS
#                       from a file (Docker secrets)
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz, *.sql.xz run once,
#                       in name order, when the data directory is created.
#
# Arguments: `postgres [options]` (the default) or options alone (`-c
# fsync=off`); any other command runs as given.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +'%Y-%m-%d %H:%M:%S UTC')" "$*"; }
fail() { log "error: $*" >&2; exit 1; }

# file_env VAR [default]: VAR from the environment or from the file named by
# VAR_FILE (not both).
file_env() {
  local var=$1 def=${2:-} fvar="${1}_FILE" val
  if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
    fail "both $var and $fvar are set (they are exclusive)"
  fi
  val=$def
  if [ -n "${!var:-}" ]; then
    val=${!var}
  elif [ -n "${!fvar:-}" ]; then
    val=$(< "${!fvar}")
  fi
  export "$var"="$val"
  unset "$fvar"
}

if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

# Root: fix ownership of the data directories, then re-exec as postgres.
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
    mkdir -p "$POSTGRES_INITDB_WALDIR"
    chown postgres:postgres "$POSTGRES_INITDB_WALDIR"
    chmod 0700 "$POSTGRES_INITDB_WALDIR"
  fi
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ "$1" != postgres ]; then
  exec "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${POSTGRES_HOST_AUTH_METHOD:=}"

mkdir -p "$PGDATA"
chmod 0700 "$PGDATA" 2>/dev/null || true

psql_run() {
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

run_init_files() {
  local f
  for f in "$@"; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then
          log "running $f"; "$f"
        else
          log "sourcing $f"; # shellcheck disable=SC1090
          . "$f"
        fi ;;
      *.sql) log "running $f"; psql_run --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) log "running $f"; gunzip -c "$f" | psql_run --dbname "$POSTGRES_DB" ;;
      *.sql.xz) log "running $f"; xzcat "$f" | psql_run --dbname "$POSTGRES_DB" ;;
      *.sql.zst) log "running $f"; zstd -dc "$f" | psql_run --dbname "$POSTGRES_DB" ;;
      *) log "ignoring $f" ;;
    esac
  done
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    fail "the database is uninitialized and no superuser password is given.
  Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value, or
  POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password
  (not recommended)."
  fi
  log "initializing $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
  initdb_args=(--username="$POSTGRES_USER" --pgdata="$PGDATA")
  [ -n "${POSTGRES_INITDB_WALDIR:-}" ] && initdb_args+=(--waldir="$POSTGRES_INITDB_WALDIR")
  pwfile=
  if [ -n "$POSTGRES_PASSWORD" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb_args+=(--pwfile="$pwfile")
  fi
  # shellcheck disable=SC2086
  initdb "${initdb_args[@]}" $POSTGRES_INITDB_ARGS > /tmp/initdb.log 2>&1 || {
    cat /tmp/initdb.log >&2; fail "initdb failed"; }
  [ -n "$pwfile" ] && rm -f "$pwfile"

  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  [ -n "$POSTGRES_PASSWORD" ] || auth=${POSTGRES_HOST_AUTH_METHOD:-trust}
  printf '\n# added by docker-entrypoint.sh\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

  # A temporary server on the Unix socket only: nobody connects over TCP
  # (and healthchecks using TCP fail) until initialization is complete.
  log "starting a temporary server for initialization"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w -t 60 start > /tmp/pg-init.log 2>&1 || {
    cat /tmp/pg-init.log >&2; fail "the temporary server did not start"; }
  if [ "$POSTGRES_DB" != postgres ]; then
    psql_run --dbname postgres --set db="$POSTGRES_DB" -q <<'SQL'
SELECT 'CREATE DATABASE ' || quote_ident(:'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
  fi
  shopt -s nullglob
  files=(/docker-entrypoint-initdb.d/*)
  shopt -u nullglob
  run_init_files "${files[@]}"
  pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
  unset PGPASSWORD
  log "initialization complete; starting PostgreSQL"
else
  log "$PGDATA holds a database already; skipping initialization"
fi

exec "$@"
