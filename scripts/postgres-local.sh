#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests of the read model's PostgreSQL store, from the
# distribution's packages (no Docker).
#
# Usage: scripts/postgres-local.sh up|down
#
#   up    find PostgreSQL's binaries (PATH, then /usr/lib/postgresql/*/bin); when missing and
#         CI=true, install the Debian package `postgresql` with apt-get. Initialise a cluster in
#         PG_STATE_DIR, start it on 127.0.0.1:PG_PORT (trust authentication, loopback only) and
#         print USER_MONITOR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres as the
#         last line. Exits 3 (nothing started) when PostgreSQL is not installed and cannot be.
#   down  stop the cluster and delete PG_STATE_DIR.
#
# PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user (created by
# the package) through runuser.
#
# Environment:
#   PG_STATE_DIR   the cluster's directory (default /tmp/user-monitor-pg-$UID)
#   PG_PORT        the port (default: a free one)
set -euo pipefail

STATE_DIR="${PG_STATE_DIR:-/tmp/user-monitor-pg-$(id -u)}"
DATA="$STATE_DIR/data"

log() { echo "postgres-local: $*" >&2; }

find_bin() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$dir" && -x "$dir/pg_ctl" ]] && echo "$dir"
}

as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

up() {
  local bin
  bin="$(find_bin || true)"
  if [[ -z "$bin" && "${CI:-}" == "true" && "$(id -u)" == 0 ]]; then
    log "installing postgresql (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null || true
    bin="$(find_bin || true)"
  fi
  if [[ -z "$bin" ]]; then
    log "PostgreSQL is not installed (apt-get install postgresql): not started"
    exit 3
  fi
  local port="${PG_PORT:-}"
  if [[ -z "$port" ]]; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  fi
  mkdir -p "$STATE_DIR"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$STATE_DIR" postgres
    chown postgres "$STATE_DIR"
  fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust --no-sync >"$STATE_DIR/initdb.log" 2>&1 \
      || { cat "$STATE_DIR/initdb.log" >&2; exit 1; }
  fi
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$STATE_DIR/postgres.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $STATE_DIR -c fsync=off -c max_connections=200" \
    start >/dev/null || { tail -20 "$STATE_DIR/postgres.log" >&2; exit 1; }
  echo "$port" >"$STATE_DIR/port"
  log "PostgreSQL running on 127.0.0.1:$port (data $DATA)"
  echo "USER_MONITOR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
}

down() {
  local bin
  bin="$(find_bin || true)"
  if [[ -n "$bin" && -f "$DATA/postmaster.pid" ]]; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE_DIR"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
