"""The static upstream every configuration of the benchmark talks to.

It stands in for the HES on plain HTTP/1.1 (keep-alive) and answers

* ``GET /meters/{serial}``  the precomputed JSON body of that meter (~1 KB),
* ``GET /healthz``          ``{"status": "ok"}`` (the gateway's health probe),
* anything else             404 JSON.

The bodies come from a JSON file ``{serial: record}`` written by ``run.py``
from the Stack's dataset: the HES simulator's own meter record (so the
gateway's response check passes for the owning tenant) plus a device block
that brings it to about 1 KB. The upstream does not verify the gateway's
assertion: it must cost less than anything it is compared with.

Two implementations (``--impl``):

* ``raw`` (default): an ``asyncio.Protocol`` on uvloop that writes prebuilt
  response bytes; ~10-20 µs per request, so it hardly competes with the load
  generator on the core they share;
* ``aiohttp``: ``aiohttp.web`` with one handler, for comparison.

Usage: python bench/upstream.py --port 0 --bodies FILE [--port-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from pathlib import Path

_NOT_FOUND = b'{"error": "not-found"}'


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode() + body


class _Raw(asyncio.Protocol):
    """Keep-alive HTTP/1.1, no pipelining needed (clients wait for answers),
    request bodies skipped by Content-Length."""

    __slots__ = ("buf", "routes", "transport")

    def __init__(self, routes: dict[bytes, bytes]) -> None:
        self.routes = routes
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            skip = 0
            lower = head.lower()
            cl = lower.find(b"\r\ncontent-length:")
            if cl >= 0:
                eol = head.find(b"\r\n", cl + 2)
                skip = int(head[cl + 17:eol if eol >= 0 else None])
            if len(buf) < end + 4 + skip:
                break
            line_end = head.find(b"\r\n")
            first = head[:line_end if line_end >= 0 else None].split(b" ")
            path = first[1].split(b"?", 1)[0] if len(first) > 1 else b""
            out.append(self.routes.get(path) or self.routes[b"404"])
            buf = buf[end + 4 + skip:]
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])


def _routes(bodies: dict[str, object]) -> dict[bytes, bytes]:
    routes = {f"/meters/{serial}".encode(): _response("200 OK", json.dumps(rec).encode())
              for serial, rec in bodies.items()}
    routes[b"/healthz"] = _response("200 OK", b'{"status": "ok"}')
    routes[b"404"] = _response("404 Not Found", _NOT_FOUND)
    return routes


async def _serve_raw(sock: socket.socket, bodies: dict[str, object]) -> asyncio.AbstractServer:
    routes = _routes(bodies)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Raw(routes), sock=sock, backlog=4096)


async def _serve_aiohttp(sock: socket.socket, bodies: dict[str, object]) -> object:
    from aiohttp import web

    encoded = {s: json.dumps(rec).encode() for s, rec in bodies.items()}

    async def meter(request: web.Request) -> web.Response:
        body = encoded.get(request.match_info["serial"])
        if body is None:
            return web.Response(status=404, body=_NOT_FOUND, content_type="application/json")
        return web.Response(body=body, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/meters/{serial}", meter)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=4096).start()
    return runner


async def main(args: argparse.Namespace) -> None:
    bodies = json.loads(Path(args.bodies).read_text())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    if args.impl == "raw":
        await _serve_raw(sock, bodies)
    else:
        await _serve_aiohttp(sock, bodies)
    port = sock.getsockname()[1]
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    print(f"upstream ({args.impl}) on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bodies", required=True, help="JSON file {serial: record}")
    p.add_argument("--impl", choices=("raw", "aiohttp"), default="raw")
    p.add_argument("--port-file")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args()
    with asyncio.Runner(loop_factory=None if args.no_uvloop else _uvloop()) as runner:
        runner.run(main(args))


def _uvloop() -> object:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    cli()
