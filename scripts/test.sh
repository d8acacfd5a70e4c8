#!/usr/bin/env bash
# The whole test suite: unit, property, scenario, HTTP and real-Kafka integration tests.
# Starts a local Apache Kafka broker (scripts/kafka-local.sh) unless KAFKA_BOOTSTRAP_SERVERS is
# set, and stops it again afterwards. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=""
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! out="$(bash scripts/kafka-local.sh up)"; then
    echo "test: could not start the local Kafka broker (see above)." >&2
    echo "test: install Java 17+ and Maven, or point KAFKA_BOOTSTRAP_SERVERS at a broker" >&2
    echo "test: (e.g. 'docker compose up -d kafka' and KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092)." >&2
    exit 1
  fi
  export "${out##*$'\n'}"
  started=yes
  trap 'bash scripts/kafka-local.sh down >/dev/null 2>&1 || true' EXIT
fi
echo "test: using Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2
cargo test --all-targets "$@"
