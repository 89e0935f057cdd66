#!/usr/bin/env bash
# GraphQL fuzzing: schemathesis (GraphQL mode, through pytest) against the `--demo` gateway.
#
#   bash tests/fuzz/run.sh [pytest arguments]
#
# Needs python3 (3.11, with venv/pip) and the built binary: target/debug/checkout-gateway
# (`cargo build --locked --bin checkout-gateway`), or CHECKOUT_GATEWAY_BIN=/path/to/it.
# Installs tests/fuzz/requirements.txt (all pinned) into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/checkout-gateway, reused while the pins are unchanged (FUZZ_VENV
# overrides the path). The gateway listens on 127.0.0.1 only. Tuning: FUZZ_MAX_EXAMPLES
# (per root field), FUZZ_MIN_OPERATIONS (the floor, 1000), FUZZ_SEED (replay a run's inputs),
# FUZZ_TRACE=<file> (every operation and answer as JSON lines).
# Exits with pytest's status; the last line is pytest's summary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
cd "$repo_root"

log() { printf '%s\n' "fuzz: $*" >&2; }

if ! command -v python3 >/dev/null 2>&1; then
  log "ERROR: python3 not found on PATH; it is needed to run schemathesis."
  exit 2
fi

# ---- tools ---------------------------------------------------------------------------------
requirements="$here/requirements.txt"
reqs_id="$( { cat "$requirements"; python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'; } | sha256sum | cut -c1-12)"
venv="${FUZZ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/checkout-gateway/fuzz-venv-${reqs_id}}"
# shellcheck source=../../scripts/python-venv.sh
source "$repo_root/scripts/python-venv.sh"
ensure_venv "$venv" -r "$requirements"

# No bytecode, pytest cache or Hypothesis files (database: off; its unicode cache goes to the venv)
# left in the work tree.
export PYTHONDONTWRITEBYTECODE=1
export HYPOTHESIS_STORAGE_DIRECTORY="${HYPOTHESIS_STORAGE_DIRECTORY:-$venv/hypothesis}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$here" "$here" "$@"
