#!/usr/bin/env bash
# The whole test suite: unit, property, scenario, HTTP, real-Kafka and real-database integration
# tests. Starts a local Apache Kafka broker (scripts/kafka-local.sh) unless KAFKA_BOOTSTRAP_SERVERS
# is set, and a private PostgreSQL cluster (scripts/postgres-local.sh, installing the Debian
# package under CI=true when missing) unless USER_MONITOR_TEST_POSTGRES_URL is set; stops both
# afterwards. Without PostgreSQL its tests say SKIPPED and pass. Installs Chromium under CI=true
# for the console's browser tests (SKIPPED without it). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cleanup=()
stop_all() {
  for step in "${cleanup[@]}"; do eval "$step" >/dev/null 2>&1 || true; done
}
trap stop_all EXIT

if [[ -z "${USER_MONITOR_TEST_POSTGRES_URL:-}" ]]; then
  export PG_STATE_DIR="${PG_STATE_DIR:-$(mktemp -d /tmp/user-monitor-pg.XXXXXX)}"
  cleanup+=("bash scripts/postgres-local.sh down")
  if out="$(bash scripts/postgres-local.sh up)"; then
    export "${out##*$'\n'}"
    echo "test: using PostgreSQL at $USER_MONITOR_TEST_POSTGRES_URL" >&2
  else
    echo "test: PostgreSQL unavailable: its tests will say SKIPPED" >&2
  fi
fi

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! out="$(bash scripts/kafka-local.sh up)"; then
    echo "test: could not start the local Kafka broker (see above)." >&2
    echo "test: install Java 17+ and Maven, or point KAFKA_BOOTSTRAP_SERVERS at a broker" >&2
    echo "test: (e.g. 'docker compose up -d kafka' and KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092)." >&2
    exit 1
  fi
  export "${out##*$'\n'}"
  cleanup+=("bash scripts/kafka-local.sh down")
fi
echo "test: using Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2

# The console's browser tests drive headless Chromium (Debian's package); without it they say
# SKIPPED. Under CI=true it is installed when missing.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
  && [[ -z "${USER_MONITOR_TEST_CHROMIUM:-}" ]]; then
  if [[ "${CI:-}" == "true" && "$(id -u)" == 0 ]]; then
    echo "test: installing chromium for the console's browser tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "test: could not install chromium: the browser tests will say SKIPPED" >&2
  else
    echo "test: no chromium (apt-get install chromium): the console's browser tests will say SKIPPED" >&2
  fi
fi
cargo test --all-targets --features fault-injection "$@"
