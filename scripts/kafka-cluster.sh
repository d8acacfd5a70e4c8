#!/usr/bin/env bash
# Run a real three-node Apache Kafka 4.x cluster (KRaft) on 127.0.0.1 for tests and development,
# from the same Maven Central jars as scripts/kafka-local.sh. Every node is both broker and
# controller (node ids 1, 2, 3; a quorum of three voters), and topics are replicated as in
# production: replication factor 3, min.insync.replicas 2, also for the consumer offsets and the
# transaction state. Otherwise the settings are kafka-local.sh's fast-feedback ones. For failover
# tests (kill the leader of a partition, or of the transaction coordinator's partition) and
# rolling restarts. Needs Java >= 17 and Maven (once, for the jars).
#
# Usage: scripts/kafka-cluster.sh COMMAND
#
#   up          fetch jars (first run only), format storage (new cluster only), start every node
#               that is not running, wait until all three serve, print
#               KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 (last line).
#               Idempotent: a running node is left alone, a stopped one starts with its data.
#   down        stop all three nodes and delete their data, so the next `up` makes a new cluster.
#   status      one line per node: running, starting, stopped (data kept) or absent; exit 0 if
#               all three are running, 3 if not.
#   kill9 N     SIGKILL node N (a crash: no shutdown, no flush), keeping its data.
#   stop N      stop node N cleanly (SIGTERM: controlled shutdown moves its leaderships away;
#               SIGKILL after KAFKA_CLUSTER_STOP_TIMEOUT), keeping its data.
#   start N     start node N with its data (after kill9 or stop) and wait until it serves again.
#   restart N   stop N, then start N.
#   roll        rolling restart, as for an upgrade: for N = 1, 2, 3 wait until no partition is
#               under-replicated, stop N, start N; then wait once more until every partition
#               has its full ISR.
#   leader TOPIC PARTITION
#               print the node id leading that partition (exit 1 if it has none), e.g.
#                 scripts/kafka-cluster.sh leader user-events 0
#               The transaction coordinator of transactional id T is the leader of
#               __transaction_state partition Utils.abs(T.hashCode()) % 4 (Java's String
#               hash; 4 is this cluster's transaction.state.log.num.partitions); that topic
#               exists once a transactional producer has started.
#   topics ARGS...   the topics CLI (TopicCommand) against the cluster, e.g.
#                      scripts/kafka-cluster.sh topics --describe --topic foo
#                      scripts/kafka-cluster.sh topics --create --topic foo --partitions 6
#                      scripts/kafka-cluster.sh topics --describe --under-replicated-partitions
#   groups ARGS...   the consumer-groups CLI (ConsumerGroupCommand)
#   quorum ARGS...   the metadata quorum CLI (MetadataQuorumCommand), e.g.
#                      scripts/kafka-cluster.sh quorum describe --status
#                      scripts/kafka-cluster.sh quorum describe --replication
#
# Node N listens on 127.0.0.1: clients (PLAINTEXT, also between brokers) on
# KAFKA_CLUSTER_PORT_BASE + 2(N-1), its controller on the port after that: by default
# 29092/29093, 29094/29095, 29096/29097. Its files are in $KAFKA_CLUSTER_STATE_DIR/nodeN:
# server.properties (written on every start), data/, kafka.pid, kafka.log (the current run;
# this cluster's earlier ones are kafka.log.1, kafka.log.2, ...; `down` keeps the logs until the
# next `up`). A restarted node rejoins within a few seconds: broker.session.timeout.ms is 3 s
# (default 9 s), after which the controller has expired its previous registration and elects
# other leaders for the partitions that a crashed node led.
#
# Environment:
#   KAFKA_CLUSTER_STATE_DIR   config, data, pids and logs (default: <repo>/.kafka-cluster)
#   KAFKA_JARS_DIR            the jars (default: <repo>/.kafka/jars, shared with kafka-local.sh)
#   KAFKA_CLUSTER_PORT_BASE   node 1's client port; the others follow (default 29092). A cluster
#                             keeps the ports it was made with until `down`.
#   KAFKA_CLUSTER_HEAP_OPTS   heap of each node (default "-Xms128m -Xmx512m")
#   KAFKA_CLUSTER_EXTRA_PROPERTIES
#                             server.properties lines appended last on every node
#                             (newline-separated)
#   KAFKA_CLUSTER_START_TIMEOUT  seconds to wait for nodes to come up (default 120)
#   KAFKA_CLUSTER_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_CLUSTER_ISR_TIMEOUT    seconds `roll` waits for full ISRs at each step (default 120)
#   JAVA_HOME, MAVEN_OPTS     honoured as usual
# KAFKA_BOOTSTRAP_SERVERS is ignored: the tools always talk to this cluster.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
KAFKA_LIB_NAME=kafka-cluster
# shellcheck source-path=SCRIPTDIR source=kafka-lib.sh
source "$SCRIPT_DIR/kafka-lib.sh"

STATE_DIR="${KAFKA_CLUSTER_STATE_DIR:-$REPO_ROOT/.kafka-cluster}"
JARS_DIR="${KAFKA_JARS_DIR:-$REPO_ROOT/.kafka/jars}"
DEFAULT_PORT_BASE=29092
HEAP_OPTS="${KAFKA_CLUSTER_HEAP_OPTS:--Xms128m -Xmx512m}"
START_TIMEOUT="${KAFKA_CLUSTER_START_TIMEOUT:-120}"
STOP_TIMEOUT="${KAFKA_CLUSTER_STOP_TIMEOUT:-30}"
ISR_TIMEOUT="${KAFKA_CLUSTER_ISR_TIMEOUT:-120}"
NODES=(1 2 3)

# The state directory, and the ports: those the cluster was made with, if there is one (then a
# different KAFKA_CLUSTER_PORT_BASE is an error, unless the argument is "any-port-base").
init_state() {
  mkdir -p "$STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd)"
  IDS_FILE="$STATE_DIR/cluster.ids"
  SERVER_LOG4J="$STATE_DIR/log4j2-server.xml"
  TOOLS_LOG4J="$STATE_DIR/log4j2-tools.xml"
  PORT_BASE="${KAFKA_CLUSTER_PORT_BASE:-$DEFAULT_PORT_BASE}"
  if cluster_exists; then
    [[ -f "$IDS_FILE" ]] || die "$STATE_DIR has node data but no cluster.ids; 'down' deletes it"
    # shellcheck source=/dev/null
    source "$IDS_FILE"
    if [[ -n "${KAFKA_CLUSTER_PORT_BASE:-}" && "$KAFKA_CLUSTER_PORT_BASE" != "$CLUSTER_PORT_BASE" &&
      "${1:-}" != any-port-base ]]; then
      die "the cluster in $STATE_DIR was made with KAFKA_CLUSTER_PORT_BASE=$CLUSTER_PORT_BASE; 'down' first to change it"
    fi
    PORT_BASE="$CLUSTER_PORT_BASE"
  fi
  if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || (( PORT_BASE < 1 || PORT_BASE + 5 > 65535 )); then
    die "KAFKA_CLUSTER_PORT_BASE must be a port number (up to 65530), got '$PORT_BASE'"
  fi
  BOOTSTRAP="$(for n in "${NODES[@]}"; do printf '%s:%s,' "$HOST" "$(client_port "$n")"; done)"
  BOOTSTRAP="${BOOTSTRAP%,}"
  QUORUM_BOOTSTRAP="$(for n in "${NODES[@]}"; do printf '%s:%s,' "$HOST" "$(controller_port "$n")"; done)"
  QUORUM_BOOTSTRAP="${QUORUM_BOOTSTRAP%,}"
}

# Serialise commands that start or stop nodes (e.g. parallel test jobs), when flock is available.
lock_state() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/.lock"
    flock 9
  fi
}

client_port() { echo $((PORT_BASE + 2 * ($1 - 1))); }
controller_port() { echo $((PORT_BASE + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$STATE_DIR/node$1"; }
node_props() { echo "$STATE_DIR/node$1/server.properties"; }
node_data() { echo "$STATE_DIR/node$1/data"; }
node_pid_file() { echo "$STATE_DIR/node$1/kafka.pid"; }
node_log() { echo "$STATE_DIR/node$1/kafka.log"; }

node_formatted() { [[ -f "$(node_data "$1")/meta.properties" ]]; }

cluster_exists() {
  local n
  for n in "${NODES[@]}"; do node_formatted "$n" && return 0; done
  return 1
}

# Prints node N's pid if it is running, else fails.
node_pid() { kafka_pid "$(node_pid_file "$1")" "$(node_props "$1")"; }

node_ready() { kafka_ready "$(node_log "$1")" "$(client_port "$1")"; }

check_node() {
  [[ "${1:-}" =~ ^[1-3]$ ]] || die "expected a node number 1, 2 or 3, got '${1:-}'"
}

write_node_properties() {
  local n="$1" client controller
  client="$(client_port "$n")"
  controller="$(controller_port "$n")"
  mkdir -p "$(node_dir "$n")"
  {
    cat <<EOF
# Generated by scripts/kafka-cluster.sh on every start; edit the script, not this file.

### KRaft: node $n of three, each both broker and controller.
process.roles=broker,controller
node.id=$n
# Dynamic quorum of the three controllers, bootstrapped by 'StorageTool format
# --initial-controllers' (4.x style) instead of a static controller.quorum.voters.
controller.quorum.bootstrap.servers=$QUORUM_BOOTSTRAP
listeners=PLAINTEXT://$HOST:$client,CONTROLLER://$HOST:$controller
advertised.listeners=PLAINTEXT://$HOST:$client,CONTROLLER://$HOST:$controller
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$(node_data "$n")
# Default 9000 / 2000 ms: a node restarted after kill9 cannot register again before the
# controller has expired its previous registration; and a crashed node's partitions get
# new leaders once it has. 3 s rather than 2 s: the machine may be busy.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500

### Replication as in production (these are the broker defaults, bar min.insync.replicas and
# default.replication.factor, which default to 1): every write acknowledged by all (acks=all)
# is on at least two nodes.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false

EOF
    test_server_properties
    if [[ -n "${KAFKA_CLUSTER_EXTRA_PROPERTIES:-}" ]]; then
      printf '\n### From KAFKA_CLUSTER_EXTRA_PROPERTIES.\n%s\n' "$KAFKA_CLUSTER_EXTRA_PROPERTIES"
    fi
  } >"$(node_props "$n")"
}

# The ids of a new cluster: its cluster id, and the directory id of each controller's metadata
# log (the voters of the initial quorum are node@host:port:directory), with the port base.
new_cluster_ids() {
  {
    echo "CLUSTER_ID=$(random_kafka_id)"
    echo "CLUSTER_PORT_BASE=$PORT_BASE"
    local n
    for n in "${NODES[@]}"; do echo "DIRECTORY_ID_$n=$(random_kafka_id)"; done
  } >"$IDS_FILE"
  # shellcheck source=/dev/null
  source "$IDS_FILE"
}

format_node() {
  local n="$1" voters="" v dir
  for v in "${NODES[@]}"; do
    dir="DIRECTORY_ID_$v"
    voters+="$v@$HOST:$(controller_port "$v"):${!dir},"
  done
  format_storage "$(node_props "$n")" "$(node_data "$n")" "$TOOLS_LOG4J" "$JARS_DIR" \
    -t "$CLUSTER_ID" --initial-controllers "${voters%,}"
}

# Formats the nodes given that are not formatted yet, in parallel.
format_nodes() {
  local n pids=() failed=0
  for n in "$@"; do
    node_formatted "$n" && continue
    format_node "$n" &
    pids+=("$!")
  done
  for n in ${pids[@]+"${pids[@]}"}; do wait "$n" || failed=1; done
  (( failed == 0 )) || die "formatting the storage failed (see above)"
}

# Starts node N's JVM (configured, formatted), keeping the log of its previous run.
launch_node() {
  local n="$1" log run=1
  log="$(node_log "$n")"
  if [[ -s "$log" ]]; then
    while [[ -e "$log.$run" ]]; do run=$((run + 1)); done
    mv "$log" "$log.$run"
  fi
  : >"$log"
  launch_kafka "$(node_pid_file "$n")" "$log" "$(node_props "$n")" "$SERVER_LOG4J" "$JARS_DIR" \
    "$HEAP_OPTS" >/dev/null
}

# Waits until every node given runs and serves; fails as soon as one exits.
wait_nodes_ready() {
  local deadline=$((SECONDS + START_TIMEOUT)) n pid pending
  while :; do
    pending=()
    for n in "$@"; do
      if ! pid="$(node_pid "$n")"; then
        rm -f "$(node_pid_file "$n")"
        fail_start "node $n exited during startup" "$(node_log "$n")"
      fi
      node_ready "$n" || pending+=("$n")
    done
    (( ${#pending[@]} == 0 )) && return 0
    if (( SECONDS >= deadline )); then
      for n in "${pending[@]:1}"; do
        log "node $n is not ready either; last lines of $(node_log "$n"):"
        tail -n 10 "$(node_log "$n")" >&2
      done
      fail_start "node ${pending[0]} did not become ready within ${START_TIMEOUT}s (still running; 'down' stops the cluster)" "$(node_log "${pending[0]}")"
    fi
    sleep 0.3
  done
}

# Prepares and starts the nodes given that are not running, and waits until all of them serve.
start_nodes() {
  local n p stopped=()
  for n in "$@"; do node_pid "$n" >/dev/null || stopped+=("$n"); done
  if (( ${#stopped[@]} )); then
    check_java
    for n in "${stopped[@]}"; do
      for p in "$(client_port "$n")" "$(controller_port "$n")"; do
        if port_open "$p"; then
          die "port $HOST:$p (node $n) is already in use by another process; stop it, or set KAFKA_CLUSTER_PORT_BASE"
        fi
      done
    done
    fetch_jars "$JARS_DIR"
    write_log4j_configs "$SERVER_LOG4J" "$TOOLS_LOG4J"
    if ! cluster_exists; then
      log "new cluster in $STATE_DIR"
      new_cluster_ids
      # The logs of the previous cluster (kept by `down`) go.
      for n in "${NODES[@]}"; do rm -f "$(node_log "$n")" "$(node_log "$n")".[0-9]*; done
    fi
    for n in "${stopped[@]}"; do write_node_properties "$n"; done
    format_nodes "${stopped[@]}"
    for n in "${stopped[@]}"; do launch_node "$n"; done
  fi
  wait_nodes_ready "$@"
}

# Stops the nodes given that are running, in parallel (SIGTERM, then SIGKILL after TIMEOUT).
stop_nodes() {
  local timeout="$1"; shift
  local n pid pids=()
  for n in "$@"; do
    if pid="$(node_pid "$n")"; then
      stop_kafka "$pid" "$timeout" "node $n" &
      pids+=("$!")
      log "stopping node $n (pid $pid)"
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" || true; done
  for n in "$@"; do node_pid "$n" >/dev/null || rm -f "$(node_pid_file "$n")"; done
}

print_ready() {
  log "Kafka $KAFKA_VERSION cluster of 3 nodes running (logs $STATE_DIR/node{1,2,3}/kafka.log)"
  echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
}

cmd_up() {
  init_state
  lock_state
  start_nodes "${NODES[@]}"
  print_ready
}

cmd_down() {
  init_state any-port-base
  lock_state
  stop_nodes "$STOP_TIMEOUT" "${NODES[@]}"
  local n
  for n in "${NODES[@]}"; do
    rm -rf "$(node_data "$n")" "$(node_pid_file "$n")"
  done
  rm -f "$IDS_FILE"
  log "stopped; data removed"
}

cmd_status() {
  init_state
  local n pid all=0
  for n in "${NODES[@]}"; do
    if pid="$(node_pid "$n")"; then
      if node_ready "$n"; then
        echo "node $n: running (pid $pid) on $HOST:$(client_port "$n")"
      else
        echo "node $n: starting (pid $pid), not answering yet on $HOST:$(client_port "$n")"
        all=3
      fi
    elif node_formatted "$n"; then
      echo "node $n: stopped (data kept; 'start $n' brings it back)"
      all=3
    else
      echo "node $n: absent"
      all=3
    fi
  done
  (( all == 0 )) && echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
  return "$all"
}

cmd_kill9() {
  check_node "${1:-}"
  init_state
  lock_state
  local pid
  if ! pid="$(node_pid "$1")"; then
    log "node $1 is not running"
    return 3
  fi
  kill9_kafka "$pid"
  rm -f "$(node_pid_file "$1")"
  log "killed node $1 (pid $pid) with SIGKILL; data kept ('start $1' brings it back)"
}

cmd_stop() {
  check_node "${1:-}"
  init_state
  lock_state
  if ! node_pid "$1" >/dev/null; then
    log "node $1 is not running"
    return 0
  fi
  local t0=$SECONDS
  stop_nodes "$STOP_TIMEOUT" "$1"
  log "stopped node $1 in $((SECONDS - t0))s; data kept ('start $1' brings it back)"
}

cmd_start() {
  check_node "${1:-}"
  init_state
  lock_state
  cluster_exists || die "there is no cluster in $STATE_DIR yet; 'up' makes one"
  local t0=$SECONDS pid
  if node_pid "$1" >/dev/null && node_ready "$1"; then
    log "node $1 is already running"
    return 0
  fi
  start_nodes "$1"
  pid="$(node_pid "$1")"
  log "node $1 running again (pid $pid, ready in $((SECONDS - t0))s, log $(node_log "$1"))"
}

# The admin tools, against every node (a client moves on from one that is down).
cluster_tool() {
  local main="$1"; shift
  check_java
  fetch_jars "$JARS_DIR"
  [[ -f "$TOOLS_LOG4J" ]] || write_log4j_configs "$SERVER_LOG4J" "$TOOLS_LOG4J"
  kafka_java_tool "$TOOLS_LOG4J" "$JARS_DIR" "$main" --bootstrap-server "$BOOTSTRAP" "$@"
}

# Waits until no partition of any topic (internal ones too) has fewer in-sync replicas than
# replicas.
wait_full_isr() {
  local deadline=$((SECONDS + ISR_TIMEOUT)) out
  while :; do
    if out="$(cluster_tool "$MAIN_TOPICS" --describe --under-replicated-partitions 2>/dev/null)" &&
      [[ -z "$out" ]]; then
      return 0
    fi
    if (( SECONDS >= deadline )); then
      [[ -n "$out" ]] && echo "$out" >&2
      die "partitions still under-replicated after ${ISR_TIMEOUT}s (above)"
    fi
    sleep 1
  done
}

cmd_roll() {
  init_state
  lock_state
  local n t0=$SECONDS t
  for n in "${NODES[@]}"; do
    node_pid "$n" >/dev/null || die "node $n is not running; 'up' first"
  done
  local isr stop
  for n in "${NODES[@]}"; do
    t=$SECONDS
    wait_full_isr
    isr=$((SECONDS - t))
    stop_nodes "$STOP_TIMEOUT" "$n"
    stop=$((SECONDS - t - isr))
    start_nodes "$n"
    log "roll: node $n: full ISRs after ${isr}s, stopped in ${stop}s, serving again after $((SECONDS - t - isr - stop))s"
  done
  t=$SECONDS
  wait_full_isr
  log "roll: full ISRs again after $((SECONDS - t))s; the roll took $((SECONDS - t0))s"
}

cmd_leader() {
  local topic="${1:-}" partition="${2:-}"
  [[ -n "$topic" && "$partition" =~ ^[0-9]+$ ]] || die "usage: leader TOPIC PARTITION"
  init_state
  local out leader
  out="$(cluster_tool "$MAIN_TOPICS" --describe --topic "$topic")"
  # Partition lines: "\tTopic: t\tTopicId: ...\tPartition: 0\tLeader: 2\tReplicas: ...".
  if ! leader="$(awk -F'\t' -v t="$topic" -v p="$partition" '
      {
        topic = ""; part = ""; lead = ""
        for (i = 1; i <= NF; i++) {
          f = $i; sub(/^ +/, "", f)
          if (f ~ /^Topic: /) topic = substr(f, 8)
          else if (f ~ /^Partition: /) part = substr(f, 12)
          else if (f ~ /^Leader: /) lead = substr(f, 9)
        }
        if (topic == t && part != "" && part == p) { print lead; found = 1; exit }
      }
      END { if (!found) exit 1 }' <<<"$out")"; then
    die "$topic has no partition $partition"
  fi
  [[ "$leader" =~ ^[0-9]+$ && "$leader" != -1 ]] || die "$topic partition $partition has no leader ($leader)"
  echo "$leader"
}

run_tool() {
  local main="$1"; shift
  init_state
  cluster_tool "$main" "$@"
}

usage() { kafka_usage "${BASH_SOURCE[0]}"; }

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill9) cmd_kill9 "${2:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  restart) cmd_stop "${2:-}"; cmd_start "${2:-}" ;;
  roll) cmd_roll ;;
  leader) shift; cmd_leader "$@" ;;
  topics) shift; run_tool "$MAIN_TOPICS" "$@" ;;
  groups) shift; run_tool "$MAIN_GROUPS" "$@" ;;
  quorum) shift; run_tool "$MAIN_QUORUM" "$@" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
