#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster on 127.0.0.1 for imasnap's tests.
#
#   scripts/postgres.sh start DIR PORT   # fresh cluster in DIR; prints the URL to use
#   scripts/postgres.sh stop DIR         # stops it (DIR stays; remove it yourself)
#   scripts/postgres.sh restart DIR      # stop + start the same cluster (outage tests)
#
# Runs as the unprivileged `postgres` user (initdb refuses root), trust authentication
# for the superuser `imasnap`, Unix socket in DIR, no systemd. The URL printed is
# postgres://imasnap@127.0.0.1:PORT/postgres (export it as IMASNAP_POSTGRES_URL).
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR | restart DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
bin=""
for v in 17 16 15 14 13; do
  if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then bin="/usr/lib/postgresql/$v/bin"; break; fi
done
[ -n "$bin" ] || { echo "postgres.sh: PostgreSQL not installed (scripts/install-deps.sh)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

case $cmd in
start)
  [ $# -eq 3 ] || usage
  port=$3
  if [ -f "$dir/data/postmaster.pid" ]; then "$0" stop "$dir" || true; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bin/initdb -D '$dir/data' -A trust -U imasnap" >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  echo "$port" >"$dir/port.tmp" && as_pg "cp '$dir/port.tmp' '$dir/data/imasnap-port'" && rm -f "$dir/port.tmp"
  "$0" _up "$dir"
  echo "postgres://imasnap@127.0.0.1:$port/postgres"
  ;;
_up)
  port=$(cat "$dir/data/imasnap-port")
  # fsync off: a throwaway test cluster (crash safety is PostgreSQL's, not under test).
  as_pg "$bin/pg_ctl -D '$dir/data' -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off' -l '$dir/log' -w start" >/dev/null ||
    { tail -20 "$dir/log" >&2; exit 1; }
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_pg "$bin/pg_ctl -D '$dir/data' -m fast -w stop" >/dev/null
  ;;
restart)
  "$0" stop "$dir"
  "$0" _up "$dir"
  ;;
*) usage ;;
esac
