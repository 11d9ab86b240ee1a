#!/bin/sh
# The part of the postgres image's docker-entrypoint.sh that Tator's pods rely on, for the
# end-to-end bed (image table: tator_postgis, postgres): on an empty PGDATA, initdb with
# POSTGRES_USER / POSTGRES_PASSWORD, password authentication from anywhere, listening on every
# address, and the database POSTGRES_DB; then exec the command (postgres and its -c settings).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  # The image's postgresql.conf.sample listens on every address.
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != "postgres" ]; then
    postgres --single -D "$PGDATA" -c listen_addresses='' postgres >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB" OWNER "${POSTGRES_USER:-postgres}";
SQL
  fi
  echo "postgres-entrypoint: initialized $PGDATA"
fi
exec "$@"
