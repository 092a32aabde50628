"""The reference *naive* aiohttp reverse proxy the benchmark compares against.

What anyone would write in an afternoon: ``aiohttp.web`` with mutual TLS on
its listener (client certificate required, same CA and server certificate as
the gateway), one catch-all handler and one shared ``aiohttp.ClientSession``
(keep-alive pool of 64) to the upstream. ``/hes/...`` is forwarded to
``/...`` like the gateway does; no identity, no decision, no response check,
no audit, no metrics. On the event loop the benchmark runs the gateway on
(``--loop``, default uvloop like ``gateway serve``).

Usage: python bench/naive_proxy.py --port 0 --upstream http://127.0.0.1:PORT \
           --cert server.pem --key server.key --ca ca.pem [--port-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    path = request.raw_path
    if path.startswith("/hes/"):
        path = path[4:]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = await request.read() if request.body_exists else None
    async with session.request(request.method, path, headers=headers, data=body,
                               allow_redirects=False) as resp:
        payload = await resp.read()
        out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=resp.status, body=payload, headers=out)


def server_tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main(args: argparse.Namespace) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30)
        async with aiohttp.ClientSession(base_url=args.upstream, connector=connector,
                                         auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=server_tls(args.cert, args.key, args.ca),
                       backlog=4096).start()
    port = sock.getsockname()[1]
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    print(f"naive proxy on {args.host}:{port} -> {args.upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--port-file")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args))


if __name__ == "__main__":
    cli()
