#!/usr/bin/env bash
# The benchmark, one command: builds the release binary, installs what it needs (wrk, taskset),
# runs bench/bench.py and writes its table to BENCHMARKS.md.
#
#   bash bench/run.sh
#
# Knobs (environment): BENCH_RUNS (5), BENCH_SECONDS (5 per wrk run), BENCH_CONNECTIONS (32),
# BENCH_UPSTREAM_LATENCY_MS (20), BENCH_FILL_SESSIONS (100000), BENCH_GATEWAY_CPU (0),
# BENCH_LOAD_CPU (1), BENCH_SUBSCRIBERS (1000), BENCH_WEBHOOK_ROUNDS (20), BENCH_WS_SUBSCRIBERS
# (10000, section l's WebSocket subscribers), BENCH_WS_ROUNDS (10), HIVE_ROUTER_BIN (section l's
# router rows; default the binary scripts/hive-router.sh builds, left out when absent),
# BENCH_ONLY (sections, e.g. `abc,k`; all of abc, de, f, g, h, i, j, k, l by default).
# Takes about 15 minutes on 2 cores after the build (section l about 7 of them).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs what is missing (as root, with apt), or says what to install.
apt_updated=0
need() { # command debian-package [why]
  command -v "$1" >/dev/null && return
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    [[ $apt_updated -eq 1 ]] || { apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "bench/run.sh: please install $1 (Debian: apt-get install $2)${3:+; $3}" >&2
    exit 2
  fi
}
need wrk wrk
need taskset util-linux
command -v python3 >/dev/null || { echo "bench/run.sh: python3 is required" >&2; exit 2; }
need openssl openssl "(j) makes its issuer's key and token with it"
need redis-server redis-server "(i) runs replicas that share a Redis"
if [[ ",${BENCH_ONLY:-k}," == *,k,* ]]; then  # (k): Hive Gateway + Mesh (bench/mesh)
  need node nodejs "(k) runs Hive Gateway + GraphQL Mesh"
  need npm npm "(k) installs Hive Gateway + GraphQL Mesh"
  (cd bench/mesh && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo build --release --locked --bin checkout-gateway
if [[ ",${BENCH_ONLY:-l}," == *,l,* ]]; then  # (l): the WebSocket load client, a crate of its own
  # wsload, and wsfloor (the bare server on the gateway's stack under the one-session row).
  (cd bench/wsload && cargo build --release --locked)
  # The floor under its latency row: bare send() to as many loopback sockets (bench/sendfloor.c).
  need gcc gcc "(l) builds bench/sendfloor.c"
  mkdir -p bench/target && gcc -O2 -Wall -o bench/target/sendfloor bench/sendfloor.c
  # Where scripts/hive-router.sh puts it; bench.py reads this variable alone.
  hive_router="${HIVE_ROUTER_BIN:-${CHECKOUT_GATEWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/checkout-gateway}/hive-router-0.2.5/bin/hive_router}"
  export HIVE_ROUTER_BIN="$hive_router"
  if [[ -x "$hive_router" ]]; then  # its supergraph is composed as tests/federation does
    need node nodejs "(l) composes Hive Router's supergraph"
    need npm npm "(l) composes Hive Router's supergraph"
    (cd tests/federation && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
# 1,000 (h) and 10,000 (l) concurrent connections need more than the usual 1,024 descriptors on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

table="$(python3 bench/bench.py)"
# The notes below the marker (what the profiles showed) are kept; the table is replaced.
notes=""
if [[ -f BENCHMARKS.md ]] && grep -q '^<!-- notes -->$' BENCHMARKS.md; then
  notes="$(sed -n '/^<!-- notes -->$/,$p' BENCHMARKS.md)"
fi
{
  echo "# Benchmarks"
  echo
  echo "Made by \`bash bench/run.sh\` (see the script for its knobs); the gateway runs \`--demo\`, so its"
  echo "built-in sandbox providers are the upstream. Timings on shared 2-core machines are noisy:"
  echo "compare figures from one run, and prefer the ratios."
  echo
  echo "$table"
  if [[ -n "$notes" ]]; then
    echo
    echo "$notes"
  fi
} > BENCHMARKS.md
echo "$table"
