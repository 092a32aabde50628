"""Client-side probes with a real client certificate (the project's venv).

    python conformance/probe.py available --endpoints FILE --seconds N
        A partner's requests keep working (200, answered within 5 s) for N
        seconds, e.g. while slowhttptest runs against the data plane.
    python conformance/probe.py slow-headers --endpoints FILE
        Slowloris *after* a valid mTLS handshake (what slowhttptest cannot do
        without a client certificate): a request whose headers trickle in, one
        line a second, must be cut off at the gateway's header-read deadline.

Exit 0 on success, 1 with a reason otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from gateway.tls._policy import client_context

ANSWER_WITHIN_S = 5.0  # a request slower than this counts as the service being down
GRACE_S = 3.0  # scheduling slack on top of the configured header deadline
GIVE_UP_S = 45.0  # a connection still open by then was not cut off at all


def _context(ep: dict[str, Any]) -> ssl.SSLContext:
    return client_context(Path(ep["ca"]), Path(ep["data_cert"]), Path(ep["data_key"]))


def available(ep: dict[str, Any], seconds: float) -> int:
    ctx = _context(ep)
    end = time.monotonic() + seconds
    count, slowest, failures = 0, 0.0, []
    while time.monotonic() < end:
        started = time.monotonic()
        conn = http.client.HTTPSConnection(ep["host"], ep["data_port"], context=ctx,
                                           timeout=ANSWER_WITHIN_S)
        try:
            conn.request("GET", "/hes/meters")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(f"status {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        took = time.monotonic() - started
        slowest = max(slowest, took)
        if took > ANSWER_WITHIN_S:
            failures.append(f"answer took {took:.1f} s")
        count += 1
        time.sleep(0.5)
    print(f"availability: {count} mTLS requests, {len(failures)} failed, "
          f"slowest {slowest:.2f} s")
    for failure in failures[:5]:
        print(f"  {failure}")
    return 1 if failures or count == 0 else 0


def slow_headers(ep: dict[str, Any]) -> int:
    limit = ep.get("header_timeout_s")
    if limit is None:
        print("slow headers: the gateway has no header-read deadline (the edge limits)")
        return 1
    ctx = _context(ep)
    raw = socket.create_connection((ep["host"], ep["data_port"]), timeout=GIVE_UP_S)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        started = time.monotonic()  # the deadline runs from the connection's start
        tls.sendall(b"GET /hes/meters HTTP/1.1\r\nHost: localhost\r\n")
        tls.settimeout(1.0)
        answer, closed_after = b"", None
        for i in range(int(GIVE_UP_S)):
            try:
                tls.sendall(f"X-Slow-{i}: {'a' * 16}\r\n".encode())  # never the blank line
                chunk = tls.recv(4096)
                answer += chunk
                if not chunk:
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue  # still open; send the next header line
            except (OSError, ssl.SSLError):  # reset or aborted: cut off
                closed_after = time.monotonic() - started
                break
    if closed_after is None:
        print(f"slow headers: still open after {GIVE_UP_S:.0f} s (deadline {limit} s)")
        return 1
    print(f"slow headers: cut off after {closed_after:.1f} s (deadline {limit} s)"
          + (f", answered {answer[:12]!r}" if answer else ", no HTTP answer"))
    if closed_after > limit + GRACE_S:
        print(f"  later than the deadline + {GRACE_S:.0f} s")
        return 1
    if answer and not answer.startswith(b"HTTP/1.1 408"):
        print("  answered something other than 408")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["available", "slow-headers"])
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    ep = json.loads(Path(args.endpoints).read_text())
    if args.probe == "available":
        return available(ep, args.seconds)
    return slow_headers(ep)


if __name__ == "__main__":
    sys.exit(main())
