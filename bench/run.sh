#!/usr/bin/env bash
# The benchmark in one command (see bench/README.md):
#
#   bash bench/run.sh            # or: make bench
#   bash bench/run.sh --quick    # a smoke run: 1 round, 4 s runs, 2,000 meters
#   bash bench/run.sh --full-day --hold-5000   # 1,000,000 meters pushed, 5,000 idle conns
#   bash bench/run.sh --whatif   # also: the gateway with each runtime patch of bench/whatif.py
#
# It installs what it needs (the project's venv via make, nginx from Debian's
# packages, uvloop and py-spy into .venv), then runs bench/run.py, which
# prints the side-by-side table and writes var/bench/latest.md and a JSON file.
# Everything listens on 127.0.0.1 only; every load loop is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    make .venv/.installed
fi

if ! command -v nginx >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "bench: installing nginx (Debian package nginx-light)" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq nginx-light >/dev/null \
        || $SUDO apt-get install -y -qq nginx >/dev/null
fi

if ! .venv/bin/python -c "import uvloop" 2>/dev/null; then
    echo "bench: installing uvloop into .venv (load generator and upstream)" >&2
    .venv/bin/python -m pip install --quiet uvloop
fi
if [ ! -x .venv/bin/py-spy ]; then
    echo "bench: installing py-spy into .venv (profile of the gateway under load)" >&2
    .venv/bin/python -m pip install --quiet py-spy
fi

exec .venv/bin/python bench/run.py "$@"
