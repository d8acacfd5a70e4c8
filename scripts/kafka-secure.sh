#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft) whose listener for clients and brokers is
# SASL_SSL: TLS with a throwaway CA made fresh on every `up`, and SASL with SCRAM-SHA-256 and
# PLAIN users. For the security tests (tests/kafka_security.rs) and for trying user-monitor's
# [kafka.properties] against a secured cluster. It is scripts/kafka-local.sh's broker (same jars,
# same start/stop/readiness) with the properties below appended to its server.properties.
#
# Usage: scripts/kafka-secure.sh up|down|status|properties
#
#   up          make a CA and a broker certificate (keytool) in $KAFKA_STATE_DIR/tls, format the
#               storage with the SCRAM users, start the broker, wait until it serves, and print
#               KAFKA_BOOTSTRAP_SERVERS=... and KAFKA_SSL_CA_LOCATION=... (the CA, PEM).
#               Always its own broker (KAFKA_BOOTSTRAP_SERVERS is ignored), always from empty
#               storage and new certificates; does nothing but print if it is already running.
#   down        stop the broker and delete its data and certificates.
#   status      say whether it is running (exit 0 if it is, 3 if not).
#   properties  print the [kafka.properties] table for user-monitor (config/<env>.toml) to
#               connect as $KAFKA_SASL_USERNAME with SCRAM-SHA-256.
#
# The broker:
#   SASL_SSL://127.0.0.1:$KAFKA_PORT    clients and inter-broker traffic (e.g. transaction
#                                       markers). TLS: server certificate for IP 127.0.0.1 and
#                                       DNS localhost, signed by the CA; no client certificates.
#                                       SASL mechanisms SCRAM-SHA-256 and PLAIN.
#   CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT   KRaft controller, PLAINTEXT, loopback only.
#   Users: "admin" (inter-broker, SCRAM-SHA-256; random password kept in the state dir) and
#   $KAFKA_SASL_USERNAME / $KAFKA_SASL_PASSWORD (SCRAM-SHA-256 and PLAIN). SCRAM credentials
#   are written by the storage format (KRaft keeps them in its metadata log); PLAIN users are in
#   the listener's JAAS configuration. No authorizer: an authenticated user may do anything.
#
# Environment (and those of scripts/kafka-local.sh, e.g. KAFKA_HEAP_OPTS):
#   KAFKA_STATE_DIR         data, config, certificates, pid and log (default <repo>/.kafka/secure)
#   KAFKA_JARS_DIR          the jars (default <repo>/.kafka/jars, shared with the plain broker)
#   KAFKA_PORT              SASL_SSL listener on 127.0.0.1 (default 9094)
#   KAFKA_CONTROLLER_PORT   controller listener on 127.0.0.1 (default 9095)
#   KAFKA_SASL_USERNAME     the client user (default app)
#   KAFKA_SASL_PASSWORD     its password (default app-secret)
#   KAFKA_EXTRA_PROPERTIES  server.properties lines appended after this script's
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/.kafka/secure}"
PORT="${KAFKA_PORT:-9094}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9095}"
SASL_USERNAME="${KAFKA_SASL_USERNAME:-app}"
SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-app-secret}"
HOST=127.0.0.1

log() { echo "kafka-secure: $*" >&2; }
die() { log "$*"; exit 1; }

# They go into JAAS and SCRAM option syntax unquoted: keep them plain.
for value in "$SASL_USERNAME" "$SASL_PASSWORD"; do
  [[ "$value" =~ ^[A-Za-z0-9._-]+$ ]] ||
    die "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD may only use A-Z a-z 0-9 . _ -"
done

# keytool comes with every Java runtime; next to java when it is not on the PATH.
KEYTOOL=keytool
if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/keytool" ]]; then
  KEYTOOL="$JAVA_HOME/bin/keytool"
elif ! command -v keytool >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
  KEYTOOL="$(dirname "$(readlink -f "$(command -v java)")")/keytool"
fi

abs_state_dir() {
  mkdir -p "$STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd)"
  TLS_DIR="$STATE_DIR/tls"
  CA_PEM="$TLS_DIR/ca.pem"
  KEYSTORE="$TLS_DIR/broker.p12"
}

# kafka-local.sh on this broker's state dir and ports.
local_script() {
  KAFKA_STATE_DIR="$STATE_DIR" \
    KAFKA_JARS_DIR="${KAFKA_JARS_DIR:-$REPO_ROOT/.kafka/jars}" \
    KAFKA_PORT="$PORT" KAFKA_CONTROLLER_PORT="$CONTROLLER_PORT" \
    bash "$SCRIPT_DIR/kafka-local.sh" "$@"
}

random_secret() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }

# Fast-starting JVM flags for the short-lived keytool runs.
kt() {
  "$KEYTOOL" -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC -J-Xmx64m "$@"
}

# A CA, and the broker's key and certificate signed by it, in a PKCS12 keystore that also
# holds the CA; the CA alone as PEM for librdkafka's ssl.ca.location and the broker's own
# (inter-broker) truststore.
make_certificates() {
  local pass="$1" san="SAN=IP:$HOST,DNS:localhost"
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  local ca="$TLS_DIR/ca.p12" csr="$TLS_DIR/broker.csr" crt="$TLS_DIR/broker.crt"
  local out
  if ! out="$(
    set -e
    kt -genkeypair -alias ca -keyalg EC -groupname secp256r1 -validity 30 \
      -dname "CN=user-monitor test CA" -ext bc:c -ext ku:c=keyCertSign,cRLSign \
      -keystore "$ca" -storetype PKCS12 -storepass "$pass" -keypass "$pass" 2>&1
    kt -exportcert -rfc -alias ca -keystore "$ca" -storepass "$pass" -file "$CA_PEM" 2>&1
    kt -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 30 \
      -dname "CN=$HOST" -ext "$san" \
      -keystore "$KEYSTORE" -storetype PKCS12 -storepass "$pass" -keypass "$pass" 2>&1
    kt -certreq -alias broker -keystore "$KEYSTORE" -storepass "$pass" -file "$csr" 2>&1
    kt -gencert -rfc -alias ca -keystore "$ca" -storepass "$pass" -validity 30 \
      -ext "$san" -ext ku:c=digitalSignature,keyAgreement -ext eku=serverAuth,clientAuth \
      -infile "$csr" -outfile "$crt" 2>&1
    kt -importcert -noprompt -alias ca -file "$CA_PEM" \
      -keystore "$KEYSTORE" -storepass "$pass" 2>&1
    kt -importcert -noprompt -alias broker -file "$crt" \
      -keystore "$KEYSTORE" -storepass "$pass" 2>&1
  )"; then
    echo "$out" >&2
    die "keytool could not make the certificates in $TLS_DIR"
  fi
  rm -f "$ca" "$csr" "$crt"
}

security_properties() {
  local pass="$1" admin="$2"
  cat <<EOF
### SASL_SSL (scripts/kafka-secure.sh): these override the plain listener above.
listeners=SASL_SSL://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin" user_admin="$admin" user_$SASL_USERNAME="$SASL_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$KEYSTORE
ssl.keystore.password=$pass
ssl.key.password=$pass
ssl.truststore.type=PEM
ssl.truststore.location=$CA_PEM
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
EOF
}

cmd_up() {
  abs_state_dir
  if local_script status >/dev/null 2>&1; then
    log "already running"
    local_script start
    echo "KAFKA_SSL_CA_LOCATION=$CA_PEM"
    return 0
  fi
  # Fresh every time: no data, credentials or certificates of an earlier run.
  local_script down >/dev/null 2>&1 || true
  local pass admin
  pass="$(random_secret)"
  admin="$(random_secret)"
  make_certificates "$pass"
  local props
  props="$(security_properties "$pass" "$admin")"
  [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]] && props+=$'\n'"$KAFKA_EXTRA_PROPERTIES"
  local format_args
  format_args="--add-scram"$'\n'"SCRAM-SHA-256=[name=admin,password=$admin]"
  format_args+=$'\n'"--add-scram"$'\n'"SCRAM-SHA-256=[name=$SASL_USERNAME,password=$SASL_PASSWORD]"
  KAFKA_EXTRA_PROPERTIES="$props" KAFKA_FORMAT_ARGS="$format_args" local_script start
  log "SASL_SSL on $HOST:$PORT (SCRAM-SHA-256, PLAIN; user $SASL_USERNAME), CA $CA_PEM"
  echo "KAFKA_SSL_CA_LOCATION=$CA_PEM"
}

cmd_down() {
  abs_state_dir
  local_script down
  rm -rf "$TLS_DIR"
}

cmd_properties() {
  abs_state_dir
  cat <<EOF
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-256"
"sasl.username" = "$SASL_USERNAME"
"sasl.password" = "$SASL_PASSWORD"
"ssl.ca.location" = "$CA_PEM"
EOF
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) abs_state_dir; local_script status ;;
  properties) cmd_properties ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
