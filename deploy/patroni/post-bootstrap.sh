#!/bin/sh
# Patroni's post_bootstrap for the compose data tier: after initdb on the
# first primary, the application's role and database.
#   post-bootstrap.sh USER PASSWORD_VARIABLE DATABASE CONNECTION_URL
# (Patroni appends the connection URL.) The password is read from the
# environment variable named, never from the command line.
set -eu
user=$1 var=$2 db=$3 url=$4
password=$(printenv "$var") || { echo "post-bootstrap: $var is not set" >&2; exit 1; }
psql -v ON_ERROR_STOP=1 -q -d "$url" -v user="$user" -v password="$password" -v db="$db" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
