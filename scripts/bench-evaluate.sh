#!/usr/bin/env bash
# Times `user-monitor evaluate` end to end on one core over 1,000,000 generated events, for 100 and
# for 10,000 users, RUNS times each (default 15), and prints each set sorted with its median: the
# machine this was measured on is a shared VM, so single runs mean little.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-15}"
cargo build --release --bin user-monitor --example gen_events
for users in 100 10000; do
  file="target/events-1m-${users}u.jsonl"
  [ -s "$file" ] || ./target/release/examples/gen_events 1000000 "$users" > "$file"
  times=()
  for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    taskset -c 0 ./target/release/user-monitor evaluate "$file" > /dev/null 2>&1
    end=$(date +%s%N)
    times+=("$(( (end - start) / 1000000 ))")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  median=$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")
  fastest=$(echo "$sorted" | head -1)
  echo "$users users: runs (ms, sorted): $(echo $sorted)"
  echo "$users users: fastest ${fastest} ms = $(( 1000000000 / fastest )) events/s; median ${median} ms = $(( 1000000000 / median )) events/s"
done
