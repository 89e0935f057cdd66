#!/usr/bin/env bash
# Instructions per request on the hot paths, counted by valgrind's callgrind on the release
# binary (instructions, not seconds: repeatable on a shared machine). Writes
# target/profile/callgrind-<path>.out for callgrind_annotate, and prints a summary.
#
#   bash bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "bench/profile.sh: needs $tool (apt-get install valgrind wrk)" >&2; exit 2; }
done
cargo build --release --locked --bin checkout-gateway
out=target/profile
mkdir -p "$out"
export BENCH_DIR="$PWD/bench"
port=18095

profile() { # name path lua-script extra-env...
  local name=$1 path=$2 script=$3
  shift 3
  env "$@" GATEWAY_LISTEN="127.0.0.1:$port" RUST_LOG=warn GATEWAY_SHUTDOWN_DELAY=0s \
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$name.out" \
    target/release/checkout-gateway --demo >"$out/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/livez" >/dev/null && break; sleep 0.2; done
  # Warm up (fills the caches), then count only the steady state.
  wrk -t1 -c2 -d3s -s "bench/$script" "http://127.0.0.1:$port$path" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c2 -d15s -s "bench/$script" "http://127.0.0.1:$port$path" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  local total
  total=$(grep -hE '^(summary|totals):' "$out/callgrind-$name.out".1 | head -1 | awk '{print $2}')
  printf '%-40s %8d requests  %8.1f k instructions per request\n' "$name" "$requests" "$(python3 -c "print($total / $requests / 1000)")"
}

profile livez /livez livez.lua
profile cached-replayed /graphql cached.lua
profile cached-assembled /graphql cached.lua GATEWAY_RESPONSE_CACHE_BYTES=0
echo "Top functions: callgrind_annotate --inclusive=yes $out/callgrind-cached-assembled.out.1 | head -60"
