#!/usr/bin/env bash
# Checks everything under deploy/ for the ops team:
#   promtool check config / check rules / test rules, the dashboard's JSON,
#   and that every metric the rules, the rule tests and the dashboard use is
#   one the gateway exposes (gateway/metrics.py) or the README's contract.
# Installs promtool (Debian package `prometheus`) when it is not on PATH.
# Usage, from anywhere:  bash deploy/check.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

step() { printf '== %s\n' "$*"; }

install_promtool() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "promtool is missing and this is not root: install the Debian package 'prometheus'" >&2
    return 1
  fi
  step "installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  local log rc=0 created_policy=0
  log="$(mktemp)"
  # policy-rc.d (exit 101) keeps the package from starting a Prometheus server.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  { apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1 || rc=$?
  if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    echo "installing the prometheus package failed (exit $rc)" >&2
  fi
  rm -f "$log"
  return "$rc"
}

if ! command -v promtool >/dev/null 2>&1; then
  install_promtool
  hash -r
  command -v promtool >/dev/null 2>&1 || { echo "promtool still not on PATH" >&2; exit 1; }
fi
step "$(promtool --version 2>&1 | head -n 1)"

# promtool prints lint findings and still exits 0 for some of them: treat any
# line mentioning a warning as a failure so the count stays at zero.
run_promtool() {
  local out rc=0
  out="$(promtool "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  if [ "$rc" -ne 0 ]; then
    echo "promtool $* failed (exit $rc)" >&2
    return "$rc"
  fi
  if grep -qiE 'warn' <<<"$out"; then
    echo "promtool $* reported warnings" >&2
    return 1
  fi
}

step "promtool check config"
run_promtool check config --lint=all --lint-fatal deploy/prometheus/prometheus.yml

step "promtool check rules"
run_promtool check rules --lint=all --lint-fatal deploy/prometheus/rules/*.yml

step "promtool test rules"
run_promtool test rules deploy/prometheus/tests/*.yml

step "dashboard JSON"
for f in deploy/grafana/*.json; do
  "$PYTHON" -m json.tool "$f" >/dev/null
  echo "  $f: valid JSON"
done

step "metric names against gateway/metrics.py and the contract"
"$PYTHON" deploy/check_metrics.py

step "all deploy checks passed"
