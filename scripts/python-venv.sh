# Sourced by the scripts that install Python tools (.ci/deploy-check.sh, tests/fuzz/run.sh).
#
#   ensure_venv DIR PIP-ARGS...
#
# Creates the virtualenv DIR and pip-installs PIP-ARGS into it, once: a finished install leaves
# DIR/.installed, and the callers put a hash of what they install into DIR's name, so a
# changed pin makes a new venv. Debian's python3 ships venv/ensurepip separately: when
# `python3 -m venv` fails and we are root with apt-get, python3-venv is installed and the
# venv made again. Logs through the caller's `log` function.
ensure_venv() {
  local venv="$1"
  shift
  [[ -f "$venv/.installed" ]] && return 0
  log "installing $* into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv"; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "python3 -m venv failed; installing Debian's python3-venv and retrying"
      rm -rf "$venv"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    else
      log "ERROR: python3 -m venv failed; install the venv module (Debian: python3-venv)."
      exit 2
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@"
  touch "$venv/.installed"
}
