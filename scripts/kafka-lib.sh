# shellcheck shell=bash disable=SC2034  # its variables are for the scripts that source it
# What scripts/kafka-local.sh (one broker) and scripts/kafka-cluster.sh (three) share: the Java
# and Maven checks, fetching the jars of scripts/kafka/pom.xml, the log4j2 configurations, the
# test-friendly server.properties settings, starting a broker JVM in the background with a pid
# file, its readiness, stopping it, and running the admin tools. Sourced, not run; the sourcing
# script sets KAFKA_LIB_NAME (the prefix of its messages) first. Functions take what they work
# on as arguments and keep no state of their own.

KAFKA_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_POM="$KAFKA_LIB_DIR/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n1)"
HOST=127.0.0.1

# Main classes (Kafka 4.x).
MAIN_BROKER=kafka.Kafka
MAIN_STORAGE=kafka.tools.StorageTool
MAIN_TOPICS=org.apache.kafka.tools.TopicCommand
MAIN_GROUPS=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
MAIN_QUORUM=org.apache.kafka.tools.MetadataQuorumCommand

# Marker that KafkaRaftServer logs once the broker is unfenced and serving.
READY_MARKER="Kafka Server started"

JAVA=java
[[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]] && JAVA="$JAVA_HOME/bin/java"

log() { echo "${KAFKA_LIB_NAME:-kafka}: $*" >&2; }
die() { log "$*"; exit 1; }

# KAFKA_LIB_ALTERNATIVE (set by the sourcing script, optional): lines saying what else to do.
install_hint() {
  cat >&2 <<EOF
${KAFKA_LIB_NAME:-kafka}: to run a local broker install Java >= 17 and Maven, e.g.
    sudo apt-get install openjdk-17-jre-headless maven
EOF
  [[ -z "${KAFKA_LIB_ALTERNATIVE:-}" ]] || echo "$KAFKA_LIB_ALTERNATIVE" >&2
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

# fetch_jars JARS_DIR
# Copies the jars listed in scripts/kafka/pom.xml into JARS_DIR, unless they are already there
# for the current pom (checksum stamp), so cached starts skip Maven. Several scripts may share
# one JARS_DIR: one fetch at a time (when flock is available), the others then find the stamp.
fetch_jars() {
  local jars="${1%/}" sum
  local stamp="$jars/.pom.sha256"
  sum="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]] && return 0
  mkdir -p "$(dirname "$jars")"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$jars.lock"
    flock 8
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
      exec 8>&-
      return 0
    fi
  fi
  check_mvn
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)..."
  local tmp="$jars.tmp.$$" out="$jars.mvn.$$.log"
  rm -rf "$tmp"
  if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    die "maven failed to fetch the Kafka jars (full output: $out)"
  fi
  echo "$sum" >"$tmp/.pom.sha256"
  rm -rf "$jars"
  mv "$tmp" "$jars"
  rm -f "$out"
  exec 8>&-
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A process that exited but was not reaped yet (state Z) is dead too.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# kafka_pid PID_FILE SERVER_PROPS
# Prints the pid in PID_FILE if it is alive and the broker of SERVER_PROPS, else fails.
kafka_pid() {
  local pid_file="$1" props="$2" pid
  [[ -f "$pid_file" ]] || return 1
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: it must be our kafka.Kafka with our config.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$props" || return 1
  fi
  echo "$pid"
}

# kafka_ready LOG_FILE PORT: the broker logged that it started and its client port answers.
kafka_ready() {
  grep -qF "$READY_MARKER" "$1" 2>/dev/null && port_open "$2"
}

# write_log4j_configs SERVER_LOG4J TOOLS_LOG4J
write_log4j_configs() {
  # Broker: everything at INFO to stdout, which is redirected to kafka.log.
  cat >"$1" <<'EOF'
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
  cat >"$2" <<'EOF'
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

# The server.properties settings of every test broker, after the script's own KRaft, listener
# and replication settings.
test_server_properties() {
  cat <<'EOF'
### Internal topics: fewer partitions than the default 50, so they are created and loaded
# quickly the first time a test uses a consumer group / transaction.
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
}

# Kafka ids (cluster ids, directory ids) are 16 random bytes, base64url without padding
# (22 chars); like Uuid.randomUuid(), avoid a leading '-' so one never looks like a CLI flag.
random_kafka_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && { echo "$id"; return; }
  done
}

# kafka_java_tool TOOLS_LOG4J JARS_DIR MAIN ARGS...: a short-lived Kafka tool JVM.
kafka_java_tool() {
  local log4j="$1" jars="$2"; shift 2
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$log4j" -cp "$jars/*" "$@"
}

# format_storage SERVER_PROPS DATA_DIR TOOLS_LOG4J JARS_DIR FORMAT_ARGS...
# Formats DATA_DIR, the log.dirs of SERVER_PROPS, unless it already is (its data is then kept,
# e.g. after a crash).
format_storage() {
  local props="$1" data="$2" log4j="$3" jars="$4"; shift 4
  [[ -f "$data/meta.properties" ]] && return 0
  local out
  if ! out="$(kafka_java_tool "$log4j" "$jars" "$MAIN_STORAGE" format -c "$props" "$@" 2>&1)"; then
    echo "$out" >&2
    die "formatting storage in $data failed"
  fi
}

# fail_start MESSAGE LOG_FILE: say why the broker did not start, with the end of its log.
fail_start() {
  log "$1"
  if [[ -s "$2" ]]; then
    log "last lines of $2:"
    tail -n 40 "$2" >&2
  fi
  exit 1
}

# launch_kafka PID_FILE LOG_FILE SERVER_PROPS SERVER_LOG4J JARS_DIR HEAP_OPTS
# Starts the broker JVM in the background and prints its pid. setsid: own session, so Ctrl-C /
# the caller's process group exiting does not kill the broker. The inner shell writes its own
# pid and execs java, so the pid file holds the JVM's pid. The broker inherits neither the
# state lock (fd 9) nor the jars lock (fd 8). The log is appended to.
launch_kafka() {
  local pid_file="$1" log_file="$2" props="$3" log4j="$4" jars="$5" heap="$6"
  rm -f "$pid_file"
  # shellcheck disable=SC2086,SC2016  # heap is intentionally word-split; $$ is the inner shell's
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
    "$JAVA" $heap \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$log4j" \
    -cp "$jars/*" "$MAIN_BROKER" "$props" \
    </dev/null >>"$log_file" 2>&1 8>&- 9>&- &
  local _ pid
  for _ in $(seq 50); do [[ -s "$pid_file" ]] && break; sleep 0.1; done
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  [[ -n "$pid" ]] || fail_start "could not start java" "$log_file"
  echo "$pid"
}

# wait_kafka_ready PID PID_FILE LOG_FILE PORT TIMEOUT NAME [STOP_COMMAND]
# Waits until the broker started by launch_kafka serves; fails if it exits or takes too long.
wait_kafka_ready() {
  local pid="$1" pid_file="$2" log_file="$3" port="$4" timeout="$5" name="$6" stop="${7:-down}"
  local deadline=$((SECONDS + timeout))
  until kafka_ready "$log_file" "$port"; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; fail_start "$name exited during startup" "$log_file"; }
    (( SECONDS < deadline )) || fail_start "$name did not become ready within ${timeout}s (pid $pid still running; '$stop' stops it)" "$log_file"
    sleep 0.3
  done
}

# stop_kafka PID TIMEOUT NAME: SIGTERM, then SIGKILL if it has not exited after TIMEOUT seconds.
stop_kafka() {
  local pid="$1" timeout="$2" name="$3"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while alive "$pid" && (( SECONDS < deadline )); do sleep 0.2; done
  if alive "$pid"; then
    log "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
}

# kill9_kafka PID: SIGKILL (a crash: no shutdown, no flush), and wait until it is gone.
kill9_kafka() {
  kill -KILL "$1" 2>/dev/null || true
  while alive "$1"; do sleep 0.05; done
}

# kafka_usage SCRIPT: the script's header comment.
kafka_usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$1" >&2
}
