#!/usr/bin/env bash
# A real Prometheus (Debian's package) scraping a real gateway whose provider fails, then
# heals: CheckoutGatewayCircuitOpen and CheckoutGatewayUpstreamErrorRatioHigh must become
# firing in Prometheus's own alerts API within their `for` windows, and clear after the
# provider heals. The rules are k8s/components/monitoring/rules.yaml as shipped; only the
# scrape and evaluation intervals are short (1 s). Everything listens on 127.0.0.1.
#
#   bash tests/prometheus/run.sh      (needs target/debug/checkout-gateway, prometheus, python3, curl)
#
# Takes about 5 minutes: the circuit alert looks back 2 minutes and waits 1, the error ratio
# waits 2. Leaves the alerts API's answers in target/artifacts/prometheus-*.json and a
# picture of the key panels in target/artifacts/prometheus-run.svg.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p target/artifacts

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
provider_port="$(free_port)"; gateway_port="$(free_port)"; prometheus_port="$(free_port)"

touch "$work/down"
python3 tests/prometheus/provider.py "$provider_port" "$work/down" & pids+=($!)

GATEWAY_AUTH=none GATEWAY_LISTEN="127.0.0.1:$gateway_port" \
  DODO_PAYMENTS_API_KEY=test_key DODO_PAYMENTS_BASE_URL="http://127.0.0.1:$provider_port" \
  GATEWAY_BREAKER_COOLDOWN=5s GATEWAY_UPSTREAM_RETRIES=0 RUST_LOG=error \
  target/debug/checkout-gateway >"$work/gateway.log" 2>&1 & pids+=($!)

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/k8s/components/monitoring/rules.yaml
scrape_configs:
  - job_name: checkout-gateway
    static_configs:
      - targets: ["127.0.0.1:$gateway_port"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$gateway_port/readyz" >/dev/null 2>&1 \
    && curl -fsS "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

# Lookups of fresh ids, five a second (within the client's budget, 600/min), for the whole test (each a provider call when allowed).
(
  n=0
  while true; do
    n=$((n + 1))
    curl -s -o /dev/null -H 'content-type: application/json' \
      -d "{\"query\":\"{ checkoutSession(provider: DODO, id: \\\"cks_p$n\\\") { __typename } }\"}" \
      "http://127.0.0.1:$gateway_port/graphql" || true
    sleep 0.2
  done
) & pids+=($!)

# state ALERT: firing, pending or none, from Prometheus's alerts API.
state() {
  curl -fsS "http://127.0.0.1:$prometheus_port/api/v1/alerts" >"$work/alerts.json"
  python3 - "$1" "$work/alerts.json" <<'PY'
import json, sys
alerts = [a for a in json.load(open(sys.argv[2]))["data"]["alerts"] if a["labels"]["alertname"] == sys.argv[1]]
print(alerts[0]["state"] if alerts else "none")
PY
}
# wait_for ALERT STATE SECONDS
wait_for() {
  local started=$SECONDS
  while (( SECONDS - started < $3 )); do
    if [[ "$(state "$1")" == "$2" ]]; then
      echo "prometheus: $1 $2 after $((SECONDS - started)) s"
      cp "$work/alerts.json" "target/artifacts/prometheus-$1-$2.json"
      return 0
    fi
    sleep 2
  done
  echo "prometheus: $1 not $2 within $3 s (now $(state "$1"))" >&2
  tail -n 20 "$work/prometheus.log" "$work/gateway.log" >&2
  return 1
}

started=$SECONDS
# Firing needs: the first failures (a few seconds), then `for` (1 m circuit, 2 m error ratio)
# and an evaluation; 60 s of margin each.
wait_for CheckoutGatewayCircuitOpen firing 130
wait_for CheckoutGatewayUpstreamErrorRatioHigh firing $((190 - (SECONDS - started)))
rm "$work/down"
healed=$SECONDS
echo "prometheus: the provider heals"
# The error ratio falls as calls answer 404 (answers, not failures); the circuit closes at its
# next trial, and the alert clears once no open state remains in its 2-minute look-back.
wait_for CheckoutGatewayUpstreamErrorRatioHigh none 90
wait_for CheckoutGatewayCircuitOpen none $((200 - (SECONDS - healed)))
echo "prometheus: both alerts fired and cleared in $((SECONDS - started)) s"
# What the key panels showed, drawn from this Prometheus's data (docs/prometheus-run.svg is
# one such picture).
now="$(date +%s)"
python3 tests/prometheus/plot.py "http://127.0.0.1:$prometheus_port" "$((now - (SECONDS - started) - 10))" "$now" \
  target/artifacts/prometheus-run.svg
echo "prometheus: picture in target/artifacts/prometheus-run.svg"
