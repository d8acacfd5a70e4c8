#!/usr/bin/env bash
# Times `user-monitor evaluate` end to end on one core over 1,000,000 generated events, for 100 and
# for 10,000 users, RUNS times each (default 15), and prints each set sorted with its median: the
# machine this was measured on is a shared VM, so single runs mean little.
#
# BASELINE=/path/to/an/older/user-monitor makes it an A/B run: every run times the baseline and
# then this build, alternating, on the same file and core, and prints both.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-15}"
baseline="${BASELINE:-}"
cargo build --release --bin user-monitor --example gen_events
time_ms() {
  local start end
  start=$(date +%s%N)
  taskset -c 0 "$1" evaluate "$2" > /dev/null 2>&1
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}
report() {
  local label=$1; shift
  local sorted median fastest
  sorted=$(printf '%s\n' "$@" | sort -n)
  median=$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")
  fastest=$(echo "$sorted" | head -1)
  echo "$label: runs (ms, sorted): $(echo $sorted)"
  echo "$label: fastest ${fastest} ms = $(( 1000000000 / fastest )) events/s; median ${median} ms = $(( 1000000000 / median )) events/s"
}
for users in 100 10000; do
  file="target/events-1m-${users}u.jsonl"
  [ -s "$file" ] || ./target/release/examples/gen_events 1000000 "$users" > "$file"
  times=()
  before=()
  for _ in $(seq "$runs"); do
    [ -z "$baseline" ] || before+=("$(time_ms "$baseline" "$file")")
    times+=("$(time_ms ./target/release/user-monitor "$file")")
  done
  [ -z "$baseline" ] || report "$users users, baseline" "${before[@]}"
  report "$users users" "${times[@]}"
done
