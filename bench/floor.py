"""The *floor*: the least a Python proxy on the gateway's event loop can do
per request and per mutual-TLS connection, for the benchmark to measure
beside the gateway.

An ``asyncio.Protocol`` per client connection behind the gateway's own TLS
policy (``gateway.tls._policy.server_policy_context``: the same versions,
ciphers, key-exchange groups, client certificate required, CRL checked,
no tickets) with the same certificate, trust bundle and CRL. Per request it
finds the end of the head (``\\r\\n\\r\\n``; GET only, no body), strips the
``/hes`` prefix off the target, writes one prebuilt request line to a pooled
plain keep-alive connection to the upstream, reads the answer by its
Content-Length and writes it back with one prebuilt head. No parser, no
header, no identity, no check, no trace, no metric: whatever the gateway
spends above this is its own code, whatever this spends is CPython, uvloop
and OpenSSL (bench/README.md, "The floor").

It is not a server to use: it trusts the upstream's framing, serves no
request with a body, and answers only what it forwards.

Usage: python bench/floor.py --upstream-port P --cert C --key K --ca CA \
           --crl CRL [--port 0] [--port-file F] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.tls._policy import server_policy_context

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 16 * 1024


class _Upstream(asyncio.Protocol):
    """One pooled keep-alive connection to the upstream: one exchange at a time."""

    __slots__ = ("buf", "pool", "start", "transport", "waiter", "want")

    def __init__(self, pool: list[_Upstream]) -> None:
        self.pool = pool
        self.buf = b""
        self.want = -1
        self.start = 0
        self.transport: Any = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's are no asyncio.Transport

    def exchange(self, request: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf, self.want = b"", -1
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.want < 0:
            end = self.buf.find(_HEAD_END)
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15:stop if stop >= 0 else None])
            self.start = end + 4
            self.want = self.start + length
        if len(self.buf) >= self.want and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            body = self.buf[self.start:self.want]
            self.pool.append(self)
            waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed"))


class _Client(asyncio.Protocol):
    __slots__ = ("buf", "busy", "floor", "transport")

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.buf = b""
        self.busy = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's are no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_HEAD:
            assert self.transport is not None
            self.transport.close()
            return
        if not self.busy and _HEAD_END in self.buf:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while _HEAD_END in self.buf and not transport.is_closing():
            head, _, self.buf = self.buf.partition(_HEAD_END)
            line, _, fields = head.partition(b"\r\n")
            target = line.split(b" ", 2)[1]
            if target.startswith(b"/hes/"):
                target = target[4:]
            try:
                body = await self.floor.forward(target)
            except (OSError, ConnectionError):
                transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
                transport.close()
                return
            close = b"connection: close" in fields.lower()
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n%s\r\n" % (
                                len(body), b"Connection: close\r\n" if close else b"") + body)
            if close:
                transport.close()
                return
        self.busy = False


class Floor:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.pool: list[_Upstream] = []

    async def forward(self, target: bytes) -> bytes:
        if self.pool:
            conn = self.pool.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: _Upstream(self.pool), "127.0.0.1",
                                                   self.upstream_port)
        return await conn.exchange(b"GET %s HTTP/1.1\r\nHost: upstream\r\n\r\n" % target)


async def main(args: argparse.Namespace) -> None:
    ctx = server_policy_context(check_crl=True)
    ctx.load_verify_locations(cafile=args.ca)
    ctx.load_verify_locations(cafile=args.crl)
    ctx.load_cert_chain(args.cert, args.key)
    floor = Floor(args.upstream_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server = await asyncio.get_running_loop().create_server(
        lambda: _Client(floor), sock=sock, ssl=ctx, backlog=1024)
    if args.port_file:
        Path(args.port_file).write_text(str(sock.getsockname()[1]))
    print(f"floor on {args.host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--crl", required=True)
    ap.add_argument("--port-file")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    arguments = ap.parse_args()
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
