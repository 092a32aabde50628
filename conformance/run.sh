#!/usr/bin/env bash
# Conformance checks of the gateway's edge, against the
# real demo stack on kernel-chosen loopback ports:
#
#   1. sslyze, with a client certificate, on the data and the admin plane:
#      Mozilla "intermediate" (TLS 1.2+, AEAD suites, X25519/P-256/P-384 only,
#      no compression, renegotiation, Heartbleed, ROBOT ...). Tolerated: only
#      the public-trust-store validation a private CA cannot pass.
#   2. openssl s_client WITHOUT a client certificate (TLS 1.2 and 1.3, both
#      planes) gets no HTTP byte; the same command with one does (control).
#   3. slowhttptest (slowloris) against the data plane: it has no client
#      certificate, so every connection must be closed quickly and none held;
#      meanwhile a partner with a certificate is served, and a slowloris that
#      does hold a certificate is cut off at the header-read deadline.
#
# Installs what it needs: sslyze into var/conformance-venv (it pins an older
# cryptography than the project's), slowhttptest and openssl from Debian.
# Exit 0 when every check passes; a short summary either way.
#
#   bash conformance/run.sh          (from anywhere; ~20 s, plus installs the first time)
set -euo pipefail

cd "$(dirname "$0")/.."
SSLYZE_VERSION=6.3.1          # the newest; needs cryptography<47, hence its own venv
PYTHON=${PYTHON:-python3}
PY=.venv/bin/python           # the project's venv (the stack, the probes)
CVENV=var/conformance-venv    # sslyze's venv (var/ is git-ignored)
OUT=var/conformance
SLOW_SECONDS=30               # slowhttptest's own limit (-l); the run ends sooner if all closed
started=$SECONDS

log() { printf '\n== %s\n' "$*"; }
results=()
pass() { results+=("PASS  $1"); }
fail() { results+=("FAIL  $1"); }

# -- what the checks need --------------------------------------------------
log "installing what the checks need"
[[ -x $PY ]] || make -s .venv/.installed
mkdir -p var
installed() { "$CVENV/bin/python" -c 'import importlib.metadata as m; print(m.version("sslyze"))'; }
if [[ $(installed 2>/dev/null) != "$SSLYZE_VERSION" ]]; then
    rm -rf "$CVENV"
    "$PYTHON" -m venv "$CVENV"
    "$CVENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "sslyze==$SSLYZE_VERSION" >var/conformance-pip.log 2>&1 \
        || { cat var/conformance-pip.log; echo "conformance: cannot install sslyze"; exit 1; }
fi
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v slowhttptest >/dev/null || missing+=(slowhttptest)
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "sslyze $(installed)," \
     "$(openssl version | cut -d' ' -f1-2), $(slowhttptest -h 2>&1 | grep -om1 'version [0-9.]*' || true)"

# -- the stack ---------------------------------------------------------------
log "starting the demo stack on ephemeral ports"
rm -rf "$OUT"
mkdir -p "$OUT"
EP=$OUT/endpoints.json
"$PY" conformance/stack.py --certs "$OUT/certs" --work "$OUT/work" --endpoints "$EP" \
    >"$OUT/stack.log" 2>&1 &
stack_pid=$!
children=("$stack_pid")  # ended on any exit, by their ids
cleanup() {
    kill "${children[@]}" 2>/dev/null || true
    wait "${children[@]}" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 240); do
    [[ -f $EP ]] && break
    kill -0 "$stack_pid" 2>/dev/null || { cat "$OUT/stack.log"; echo "conformance: stack died"; exit 1; }
    sleep 0.5
done
[[ -f $EP ]] || { cat "$OUT/stack.log"; echo "conformance: stack did not start in 120 s"; exit 1; }
ep() { "$PY" -c "import json,sys; print(json.load(open('$EP'))[sys.argv[1]])" "$1"; }
HOST=$(ep host); DATA=$(ep data_port); ADMIN=$(ep admin_port); CA=$(ep ca)
echo "data plane $HOST:$DATA, admin plane $HOST:$ADMIN"

# -- 1. sslyze: Mozilla intermediate on both planes ----------------------------
log "1. sslyze, Mozilla intermediate, with a client certificate"
if "$CVENV/bin/python" -W ignore conformance/tls_scan.py --endpoints "$EP"; then
    pass "sslyze: data and admin plane comply with Mozilla intermediate"
else
    fail "sslyze: Mozilla intermediate (see above)"
fi

# -- 2. no client certificate, no HTTP ----------------------------------------
log "2. openssl s_client without a client certificate"
# Sends a request right after the handshake and prints all it gets back.
s_client() {  # PORT TLSFLAG PATH [extra s_client args]
    local port=$1 version=$2 path=$3
    shift 3
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" \
        | timeout 15 openssl s_client -connect "$HOST:$port" -servername localhost \
            -CAfile "$CA" "$version" -ign_eof "$@" 2>&1 || true
}
for plane in data admin; do
    if [[ $plane == data ]]; then
        port=$DATA path=/hes/meters cert=$(ep data_cert) key=$(ep data_key)
    else
        port=$ADMIN path=/ cert=$(ep admin_cert) key=$(ep admin_key)
    fi
    for version in -tls1_2 -tls1_3; do
        out=$(s_client "$port" "$version" "$path")
        control=$(s_client "$port" "$version" "$path" -cert "$cert" -key "$key")
        answer=$(grep -m1 -o 'HTTP/1\.1 [0-9]*' <<<"$control" || true)
        if grep -q 'HTTP/' <<<"$out"; then
            fail "s_client $plane $version without certificate got HTTP: $(grep -m1 HTTP/ <<<"$out")"
        elif [[ -z $answer ]]; then
            # Without this control, "no HTTP" could mean the probe itself is broken.
            fail "s_client $plane $version with a certificate got no HTTP either (probe broken?)"
            tail -5 <<<"$control"
        else
            reason=$(grep -m1 -oE 'alert [a-z ]+|errno=[0-9]+|handshake failure' <<<"$out" || true)
            echo "$plane $version: no certificate -> no HTTP (${reason:-closed});" \
                 "with certificate -> $answer"
            pass "s_client $plane $version: no certificate, no HTTP (with one: $answer)"
        fi
    done
done

# -- 3. slowloris ---------------------------------------------------------------
log "3. slowhttptest (slow headers) against the data plane"
"$PY" conformance/probe.py available --endpoints "$EP" --seconds 15 >"$OUT/available.log" 2>&1 &
available_pid=$!
children+=("$available_pid")
"$PY" conformance/probe.py slow-headers --endpoints "$EP" >"$OUT/slow-headers.log" 2>&1 &
slow_pid=$!
children+=("$slow_pid")
slow_rc=0
(cd "$OUT" && timeout 60 slowhttptest -H -c 200 -r 50 -i 10 -p 3 -l "$SLOW_SECONDS" -g \
    -o slowhttp -u "https://$HOST:$DATA/hes/meters" >slowhttp.out 2>&1) || slow_rc=$?
sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' "$OUT/slowhttp.out" >"$OUT/slowhttp.txt"
ended=$(grep -m1 -o 'Test ended on [0-9]*[a-z]* second' "$OUT/slowhttp.txt" || true)
status=$(grep -m1 'Exit status:' "$OUT/slowhttp.txt" | sed 's/.*Exit status: *//' || true)
# CSV: Seconds,Closed,Pending,Connected,Service Available (one row a second)
last=$(tail -n 1 "$OUT/slowhttp.csv" 2>/dev/null || true)
peak=$(awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$OUT/slowhttp.csv" 2>/dev/null \
       || echo "?")
echo "slowhttptest: ${ended:-no end line}; exit status: ${status:-none};" \
     "last row (s,closed,pending,connected,probe): ${last:-none}; peak connected: $peak"
# Its own "service available" probe has no client certificate either, so it is
# meaningless here. What counts is its exit status: it stops early with "No
# open connections left" once the server has closed every connection it opened
# (the CSV's last row is sampled up to a second earlier, so it can still show
# one in flight). With connections held it runs into its time limit instead.
ended_s=$(grep -o '[0-9]*' <<<"$ended" || echo "$SLOW_SECONDS")
if ((slow_rc != 0)); then
    fail "slowhttptest exited $slow_rc"
    tail -20 "$OUT/slowhttp.txt"
elif [[ $status != "No open connections left" ]]; then
    fail "slowhttptest kept connections open ($status)"
elif ((ended_s >= SLOW_SECONDS)); then
    fail "slowhttptest ran into its time limit (${ended:-no end line})"
else
    pass "slowhttptest: every slow connection closed, none held (${ended:-?})"
fi
if wait "$available_pid"; then
    pass "a partner with a certificate was served throughout ($(cat "$OUT/available.log"))"
else
    fail "a partner with a certificate was not served: $(cat "$OUT/available.log")"
fi
if wait "$slow_pid"; then
    pass "mTLS slowloris cut off at the header-read deadline ($(head -1 "$OUT/slow-headers.log"))"
else
    fail "mTLS slowloris: $(cat "$OUT/slow-headers.log")"
fi
cat "$OUT/available.log" "$OUT/slow-headers.log"

# -- summary -------------------------------------------------------------------
log "summary ($((SECONDS - started)) s)"
printf '%s\n' "${results[@]}"
failed=$(printf '%s\n' "${results[@]}" | grep -c '^FAIL' || true)
echo "$(( ${#results[@]} - failed )) passed, $failed failed"
((failed == 0))
