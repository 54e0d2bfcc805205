#!/bin/bash
# One database host of the compose data tier (docker-compose.yml's db-1..3):
# an etcd member (client 2379, peer 2380) and a Patroni member of each
# cluster: control-db (Postgres 5432, REST 8008) and shop-db (Postgres
# 5433, REST 8009, synchronous_mode_strict). Both clusters share the etcd
# under different scopes, with failsafe_mode. If any of the three processes
# exits, the host exits (and compose's restart policy applies).
#
# Environment: DB_HOST (this host's name, db-1..3; required), DB_HOSTS
# (db-1 db-2 db-3), PATRONI_SUPERUSER_PASSWORD, PATRONI_REPLICATION_PASSWORD,
# CONTROL_DB_PASSWORD, SHOP_DB_PASSWORD (the applications' roles, made once
# by post-bootstrap.sh), PATRONI_TTL (10), PATRONI_LOOP_WAIT (1),
# PATRONI_RETRY_TIMEOUT (3).
set -euo pipefail
: "${DB_HOST:?set DB_HOST to the name of this host: db-1, db-2 or db-3}"
read -r -a hosts <<< "${DB_HOSTS:-db-1 db-2 db-3}"
: "${PATRONI_SUPERUSER_PASSWORD:?}" "${PATRONI_REPLICATION_PASSWORD:?}" "${CONTROL_DB_PASSWORD:?}" "${SHOP_DB_PASSWORD:?}"
data=/var/lib/db-host
cluster=
for h in "${hosts[@]}"; do cluster+="$h=http://$h:2380,"; done
cluster=${cluster%,}
etcd_hosts=
for h in "${hosts[@]}"; do etcd_hosts+="\"$h:2379\","; done
etcd_hosts="[${etcd_hosts%,}]"

etcd --name "$DB_HOST" --data-dir "$data/etcd" \
  --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$DB_HOST:2379" \
  --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://$DB_HOST:2380" \
  --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token tandem-compose \
  --log-level warn &

# patroni_config SCOPE PG_PORT REST_PORT STRICT APP_USER APP_PASSWORD_VAR APP_DB
patroni_config() {
  local sync=
  [ "$4" = true ] && sync='"synchronous_mode": true, "synchronous_mode_strict": true,'
  cat > "$data/$1.yml" <<YAML
{
  "scope": "$1", "name": "$DB_HOST", "namespace": "/tandem/",
  "log": {"level": "WARNING"},
  "restapi": {"listen": "0.0.0.0:$3", "connect_address": "$DB_HOST:$3"},
  "etcd3": {"hosts": $etcd_hosts},
  "bootstrap": {
    "dcs": {
      "ttl": ${PATRONI_TTL:-10}, "loop_wait": ${PATRONI_LOOP_WAIT:-1}, "retry_timeout": ${PATRONI_RETRY_TIMEOUT:-3},
      "maximum_lag_on_failover": 1048576, "failsafe_mode": true, $sync
      "postgresql": {"use_pg_rewind": true,
                     "parameters": {"wal_log_hints": "on", "max_connections": 200, "wal_keep_size": "128MB"}}
    },
    "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
    "post_bootstrap": "/usr/local/bin/post-bootstrap.sh $5 $6 $7"
  },
  "postgresql": {
    "listen": "0.0.0.0:$2", "connect_address": "$DB_HOST:$2",
    "data_dir": "$data/$1", "bin_dir": "/usr/lib/postgresql/15/bin", "pgpass": "$data/$1.pgpass",
    "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 trust",
               "host replication replicator all scram-sha-256", "host all all all scram-sha-256"],
    "authentication": {
      "superuser": {"username": "postgres", "password": "$PATRONI_SUPERUSER_PASSWORD"},
      "replication": {"username": "replicator", "password": "$PATRONI_REPLICATION_PASSWORD"},
      "rewind": {"username": "postgres", "password": "$PATRONI_SUPERUSER_PASSWORD"}
    },
    "parameters": {"unix_socket_directories": "/var/run/postgresql", "password_encryption": "scram-sha-256"}
  }
}
YAML
  chmod 600 "$data/$1.yml"
}
patroni_config control-db 5432 8008 false tandem CONTROL_DB_PASSWORD tandem
patroni_config shop-db 5433 8009 true shop SHOP_DB_PASSWORD shop
patroni "$data/control-db.yml" &
patroni "$data/shop-db.yml" &
# The host lives as long as all three do.
wait -n
echo "db-host $DB_HOST: a process exited; the host stops" >&2
exit 1
