"""A null receiver for the push benchmark: the tenants' push endpoints.

Accepts ``POST /receivers/{tenant}/readings`` over mutual TLS (client
certificate required: the gateway's own), counts parts, records and bytes,
answers 200 and forgets the payload (the Stack's demo receivers keep every
record in memory, which a synthetic day would not fit); a part delivered again
under the same ``Idempotency-Key`` is counted once (and as a duplicate).
``GET /_count`` returns the counters as JSON. ``POST /_hold`` with ``{"hold": true}`` makes
it keep each delivery unanswered (at most ``HOLD_MAX_S``) until
``{"hold": false}``: the benchmark measures intake without the gateway's
delivery loops competing for its CPU, then delivery on its own.

Usage: python bench/sink.py --cert server.pem --key server.key --ca ca.pem [--port-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import socket
import ssl
from pathlib import Path

from aiohttp import web

COUNTS = web.AppKey("counts", dict)
RELEASE = web.AppKey("release", asyncio.Event)
SEEN = web.AppKey("seen", set)
# The gateway's delivery timeout is 30 s including the wait for one of its 4
# connections per receiver host, and every tenant's receiver is this one host:
# a part queued behind a held one waits up to HOLD_MAX_S, then is held itself.
HOLD_MAX_S = 10.0
_READINGS = re.compile(rb'"format":"meter-days/v1","readings":([0-9]+),')


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    release = request.app[RELEASE]
    if not release.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), HOLD_MAX_S)
    counts = request.app[COUNTS]
    key = request.headers.get("Idempotency-Key", "")
    seen = request.app[SEEN]
    if key and key in seen:  # a re-delivery (at least once): count the part once
        counts["duplicates"] += 1
        return web.json_response({"status": "ok", "duplicate": True})
    seen.add(key)
    counts["parts"] += 1
    counts["bytes"] += len(body)
    # Counting records costs a parse; a substring count is exact for these parts
    # (every record has exactly one "timestamp" key) and ~50x cheaper. A part of
    # meter-days (meter-days/v1) states its readings in its envelope.
    readings = _READINGS.search(body, 0, 512)
    if readings is not None:
        counts["records"] += int(readings.group(1))
        counts["meter_days"] += body.count(b'"start"')
    else:
        counts["records"] += body.count(b'"timestamp"')
    tenant = request.match_info["tenant"]
    counts["by_tenant"][tenant] = counts["by_tenant"].get(tenant, 0) + 1
    return web.json_response({"status": "ok"})


async def count(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


async def hold(request: web.Request) -> web.Response:
    doc = await request.json()
    release = request.app[RELEASE]
    if doc.get("hold"):
        release.clear()
    else:
        release.set()
    return web.json_response({"hold": not release.is_set()})


async def main(args: argparse.Namespace) -> None:
    app = web.Application(client_max_size=1024 * 1024 * 1024)
    app[COUNTS] = {"parts": 0, "records": 0, "meter_days": 0, "bytes": 0, "duplicates": 0,
                   "by_tenant": {}}
    app[SEEN] = set()
    app.router.add_post("/receivers/{tenant}/readings", receive)
    app.router.add_get("/_count", count)
    app.router.add_post("/_hold", hold)
    app[RELEASE] = asyncio.Event()
    app[RELEASE].set()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(cafile=args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    sock.setblocking(False)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    if args.port_file:
        Path(args.port_file).write_text(str(sock.getsockname()[1]))
    print(json.dumps({"sink": sock.getsockname()[1]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--port-file")
    asyncio.run(main(p.parse_args()))
