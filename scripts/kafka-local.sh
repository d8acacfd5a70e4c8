#!/usr/bin/env bash
# Run a real single-node Apache Kafka 4.x broker (KRaft, combined
# broker+controller) for development and tests, using jars from Maven Central.
# No Docker and no Kafka tarball needed, only Java >= 17 and Maven.
#
# Usage: scripts/kafka-local.sh up|down|status|start|kill9|topics ARGS...|groups ARGS...
#
#   up       fetch jars (first run only), format storage, start the broker in the
#            background, wait until it answers, print KAFKA_BOOTSTRAP_SERVERS=...
#            Does nothing if KAFKA_BOOTSTRAP_SERVERS is already set, or if the
#            broker is already running.
#   down     stop the broker (SIGTERM, then SIGKILL after a timeout) and delete its
#            data, so the next `up` starts from an empty cluster.
#   status   say whether the broker is running (exit 0 if it is, 3 if not).
#   start    like `up`, but always this KAFKA_STATE_DIR's broker, even when
#            KAFKA_BOOTSTRAP_SERVERS is set, and keeping its data: starts a second,
#            private broker (own KAFKA_STATE_DIR and ports), or restarts one after
#            kill9. Restart it with the ports it was first started with.
#   kill9    SIGKILL the broker (a crash: no shutdown, no flush) and keep its data,
#            so that `start` brings the same cluster back.
#   topics   run the topics CLI (TopicCommand) against the broker, e.g.
#              scripts/kafka-local.sh topics --list
#              scripts/kafka-local.sh topics --describe --topic foo
#   groups   run the consumer-groups CLI (ConsumerGroupCommand), e.g.
#              scripts/kafka-local.sh groups --describe --all-groups
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  use this broker instead of starting one (up is a no-op;
#                            topics/groups talk to it)
#   KAFKA_STATE_DIR          jars, config, data, pid and log (default: <repo>/.kafka)
#   KAFKA_JARS_DIR           where the jars are kept (default: $KAFKA_STATE_DIR/jars), e.g.
#                            <repo>/.kafka/jars to share them with a second broker
#   KAFKA_PORT               client listener port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT    KRaft controller port on 127.0.0.1 (default 9093)
#   KAFKA_HEAP_OPTS          broker heap (default "-Xms256m -Xmx1g")
#   KAFKA_EXTRA_PROPERTIES   server.properties lines appended last (newline-separated), e.g.
#                            "broker.session.timeout.ms=2000" so that a broker restarted
#                            after kill9 does not wait 9 s for its old registration to expire
#   KAFKA_FORMAT_ARGS        extra arguments of the storage format (first start only), one
#                            per line, e.g. "--add-scram" and "SCRAM-SHA-256=[name=u,password=p]"
#                            (scripts/kafka-secure.sh uses it for its SCRAM users)
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to come up (default 60)
#   KAFKA_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL (default 30)
#   JAVA_HOME, MAVEN_OPTS    honoured as usual
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/.kafka}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
HOST=127.0.0.1
LOCAL_BOOTSTRAP="$HOST:$PORT"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"

# Main classes (Kafka 4.x).
MAIN_BROKER=kafka.Kafka
MAIN_STORAGE=kafka.tools.StorageTool
MAIN_TOPICS=org.apache.kafka.tools.TopicCommand
MAIN_GROUPS=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand

# Marker that KafkaRaftServer logs once the broker is unfenced and serving.
READY_MARKER="Kafka Server started"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"

JAVA=java
[[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]] && JAVA="$JAVA_HOME/bin/java"

log() { echo "kafka-local: $*" >&2; }
die() { log "$*"; exit 1; }

abs_state_dir() {
  mkdir -p "$STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd)"
  JARS_DIR="${KAFKA_JARS_DIR:-$STATE_DIR/jars}"
  DATA_DIR="$STATE_DIR/data"
  PID_FILE="$STATE_DIR/kafka.pid"
  LOG_FILE="$STATE_DIR/kafka.log"
  SERVER_PROPS="$STATE_DIR/server.properties"
  SERVER_LOG4J="$STATE_DIR/log4j2-server.xml"
  TOOLS_LOG4J="$STATE_DIR/log4j2-tools.xml"
}

install_hint() {
  cat >&2 <<'EOF'
kafka-local: to run a local broker install Java >= 17 and Maven, e.g.
    sudo apt-get install openjdk-17-jre-headless maven
  or run a broker some other way (e.g. `docker compose up kafka`) and
    export KAFKA_BOOTSTRAP_SERVERS=localhost:9092
EOF
}

check_java() {
  if ! command -v "$JAVA" >/dev/null 2>&1; then
    log "java not found"; install_hint; exit 1
  fi
  local line major
  line="$("$JAVA" -version 2>&1 | head -n1)"
  major="$(sed -E -n 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p' <<<"$line")"
  if [[ "$major" == 1\ * ]]; then major="${major#1 }"; else major="${major%% *}"; fi
  if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < 17 )); then
    log "Kafka $KAFKA_VERSION needs Java >= 17, found: $line"; install_hint; exit 1
  fi
}

check_mvn() {
  if ! command -v mvn >/dev/null 2>&1; then
    log "mvn not found (needed once, to fetch the Kafka jars)"; install_hint; exit 1
  fi
}

# Copy the jars listed in scripts/kafka/pom.xml into $JARS_DIR, unless they are
# already there for the current pom (checksum stamp), so cached starts skip Maven.
fetch_jars() {
  local sum stamp="$JARS_DIR/.pom.sha256"
  sum="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
    return 0
  fi
  check_mvn
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)..."
  local tmp="$STATE_DIR/jars.tmp" out="$STATE_DIR/mvn.log"
  rm -rf "$tmp"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    die "maven failed to fetch the Kafka jars (full output: $out)"
  fi
  echo "$sum" >"$tmp/.pom.sha256"
  rm -rf "$JARS_DIR"
  mv "$tmp" "$JARS_DIR"
  rm -f "$out"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Prints the pid of our broker if it is alive, else fails.
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: it must be our kafka.Kafka with our config.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$SERVER_PROPS" || return 1
  fi
  echo "$pid"
}

broker_ready() {
  grep -qF "$READY_MARKER" "$LOG_FILE" 2>/dev/null && port_open "$PORT"
}

write_log4j_configs() {
  # Broker: everything at INFO to stdout, which is redirected to kafka.log.
  cat >"$SERVER_LOG4J" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <!-- per-request logging is very noisy and only useful at DEBUG/TRACE -->
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
  # CLI tools: warnings and errors only, to stderr (like tools-log4j2.yaml).
  cat >"$TOOLS_LOG4J" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stderr"/></Root>
  </Loggers>
</Configuration>
EOF
}

write_server_properties() {
  cat >"$SERVER_PROPS" <<EOF
# Generated by scripts/kafka-local.sh on every start; edit the script, not this file.

### KRaft: a single node that is both broker and controller.
process.roles=broker,controller
node.id=1
# Dynamic quorum bootstrapped by 'StorageTool format --standalone' (4.x style,
# same as the official quickstart) instead of a static controller.quorum.voters.
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR

### Single node: internal topics cannot have more than one replica (defaults are 3/2).
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
# Fewer partitions for the internal topics (default 50) so they are created and
# loaded quickly the first time a test uses a consumer group / transaction.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4

### Topics: tests create what they need, explicitly.
# Default for topics created without --partitions (default is already 1; pinned).
num.partitions=1
# Default is true; a typo'd topic name should fail instead of silently creating a topic.
auto.create.topics.enable=false

### Faster feedback in tests.
# Default 3000 ms: the first consumer-group (classic protocol) rebalance would
# wait 3 s for more members to join.
group.initial.rebalance.delay.ms=0
# Defaults 6000 (classic) / 45000 (KIP-848 consumer protocol): allow clients to
# use short session timeouts so dead consumers are detected quickly.
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
# KIP-848 consumers cannot choose their own session timeout / heartbeat; the
# broker defaults (45 s / 5 s) make failover and reassignment slow in tests.
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
# Default 10000 ms: abort timed-out transactions (e.g. from a killed producer)
# sooner, so read_committed consumers are not blocked for long.
transaction.abort.timed.out.transaction.cleanup.interval.ms=5000
# Kafka 4.0's default is 5 ms: every offset commit (and every transaction's offsets) waits that
# long in the group coordinator before it is written. 4.1+ default to -1 (adaptive: no wait when
# idle), which 4.0 does not accept; 0 gives the same latency here.
group.coordinator.append.linger.ms=0
# Default 15000 ms: the log cleaner re-checks for compactable logs every second,
# so compaction happens soon (topics still need small segment.ms /
# min.cleanable.dirty.ratio for their active segment to be rolled and cleaned).
log.cleaner.backoff.ms=1000

### Small (2-core) dev machine: fewer threads than the defaults (3 network, 8 I/O).
num.network.threads=2
num.io.threads=4
EOF
  if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
    printf '\n### From KAFKA_EXTRA_PROPERTIES.\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$SERVER_PROPS"
  fi
}

# Kafka cluster ids are 16 random bytes, base64url without padding (22 chars);
# like Uuid.randomUuid(), avoid a leading '-' so it never looks like a CLI flag.
random_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && { echo "$id"; return; }
  done
}

format_storage() {
  [[ -f "$DATA_DIR/meta.properties" ]] && return 0   # reuse data after a crash
  local out extra=()
  # KAFKA_FORMAT_ARGS: one argument per line (e.g. --add-scram, then its value).
  [[ -n "${KAFKA_FORMAT_ARGS:-}" ]] && mapfile -t extra <<<"$KAFKA_FORMAT_ARGS"
  if ! out="$("$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$JARS_DIR/*" \
        "$MAIN_STORAGE" format --standalone -t "$(random_cluster_id)" \
        -c "$SERVER_PROPS" ${extra[@]+"${extra[@]}"} 2>&1)"; then
    echo "$out" >&2
    die "formatting storage in $DATA_DIR failed"
  fi
}

fail_start() {
  log "$1"
  if [[ -s "$LOG_FILE" ]]; then
    log "last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2
  fi
  exit 1
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  until broker_ready; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; fail_start "broker exited during startup"; }
    (( SECONDS < deadline )) || fail_start "broker did not become ready within ${START_TIMEOUT}s (pid $pid still running; 'down' stops it)"
    sleep 0.3
  done
}

print_ready() {
  log "Kafka $KAFKA_VERSION running (pid $1, log $LOG_FILE)"
  echo "KAFKA_BOOTSTRAP_SERVERS=$LOCAL_BOOTSTRAP"
}

cmd_up() {
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    log "KAFKA_BOOTSTRAP_SERVERS is set; using that broker, not starting a local one"
    echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
    return 0
  fi
  start_local
}

# Starts (or restarts, keeping its data) the broker of $STATE_DIR.
start_local() {
  abs_state_dir

  # Serialise concurrent `up`s (e.g. parallel test jobs) when flock is available.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/.lock"
    flock 9
  fi

  local pid
  if pid="$(broker_pid)"; then
    if ! broker_ready; then wait_ready "$pid"; fi
    log "already running"
    print_ready "$pid"
    return 0
  fi
  rm -f "$PID_FILE"

  check_java
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $HOST:$p is already in use by another process; stop it, or set KAFKA_PORT / KAFKA_CONTROLLER_PORT (or KAFKA_BOOTSTRAP_SERVERS to use that broker)"
    fi
  done

  fetch_jars
  write_log4j_configs
  write_server_properties
  format_storage

  : >"$LOG_FILE"
  # setsid: own session, so Ctrl-C / the caller's process group exiting does not
  # kill the broker. The inner shell writes its own pid and execs java, so the
  # pid file holds the JVM's pid. 9>&- keeps the broker from inheriting the lock.
  # shellcheck disable=SC2086  # HEAP_OPTS is intentionally word-split
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" $HEAP_OPTS \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SERVER_LOG4J" \
    -cp "$JARS_DIR/*" "$MAIN_BROKER" "$SERVER_PROPS" \
    </dev/null >>"$LOG_FILE" 2>&1 9>&- &

  local i
  for i in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] || fail_start "could not start java"
  wait_ready "$pid"
  print_ready "$pid"
}

cmd_down() {
  abs_state_dir
  local pid
  if pid="$(broker_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "broker (pid $pid) did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    log "stopped (pid $pid); data removed"
  else
    log "not running; data removed"
  fi
  rm -f "$PID_FILE"
  rm -rf "$DATA_DIR"
}

# A process that exited but was not reaped yet (state Z) is dead too.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

cmd_kill9() {
  abs_state_dir
  local pid
  if ! pid="$(broker_pid)"; then
    log "not running"
    return 3
  fi
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.05; done
  rm -f "$PID_FILE"
  log "killed (pid $pid) with SIGKILL; data kept ('start' brings it back)"
}

cmd_status() {
  abs_state_dir
  local pid
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set (external broker)"
  fi
  if pid="$(broker_pid)"; then
    if broker_ready; then
      echo "local Kafka $KAFKA_VERSION running (pid $pid) on $LOCAL_BOOTSTRAP"
    else
      echo "local Kafka $KAFKA_VERSION starting (pid $pid), not answering yet on $LOCAL_BOOTSTRAP"
    fi
    return 0
  fi
  echo "local Kafka not running"
  return 3
}

run_tool() {
  local main="$1"; shift
  abs_state_dir
  check_java
  fetch_jars
  [[ -f "$TOOLS_LOG4J" ]] || write_log4j_configs
  exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$JARS_DIR/*" \
    "$main" --bootstrap-server "${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_BOOTSTRAP}" "$@"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  start) start_local ;;
  kill9) cmd_kill9 ;;
  topics) shift; run_tool "$MAIN_TOPICS" "$@" ;;
  groups) shift; run_tool "$MAIN_GROUPS" "$@" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
