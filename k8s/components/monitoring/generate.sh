#!/usr/bin/env bash
# Writes prometheusrule.yaml: prometheusrule.header.yaml, then rules.yaml indented under
# `spec:` (blank lines left blank). One source for the plain rules file and the
# PrometheusRule; tests/api/monitoring.rs fails when the committed file is not this output.
set -euo pipefail
cd "$(dirname "$0")"
{ cat prometheusrule.header.yaml; sed 's/^\(.\)/  \1/' rules.yaml; } >prometheusrule.yaml
