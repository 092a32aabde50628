"""The TLS listener (`TlsSite`) on both event loops: every handshake that
should succeed does, however soon the client's first bytes arrive, and every
one that fails is counted by reason.

On uvloop a connection starts reading as soon as its protocol's
``connection_made`` returns; a listener that upgraded accepted plain TCP
connections with ``loop.start_tls`` a loop iteration later lost ClientHellos
that arrived in between (the client saw a handshake stall, then EOF)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.edge import (
    OpenConnections,
    TlsSite,
    bind,
    event_loop_name,
    forget_handshakes,
    observe_handshakes,
)
from gateway.pki import CertificateAuthority, spiffe_uri
from gateway.tls import client_context, server_context


@dataclass
class Listener:
    port: int
    client: ssl.SSLContext
    anonymous: ssl.SSLContext  # trusts the server, offers no certificate
    failures: list[str] = field(default_factory=list)
    connections: OpenConnections = field(default_factory=OpenConnections)


@pytest.fixture()
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    ca = CertificateAuthority.create("edge test CA")
    server = ca.issue_server(["localhost"], ["127.0.0.1"])
    client = ca.issue_client(spiffe_uri("shared-grid.test", "ores", "service", "api"))
    for name, data in {"ca.pem": ca.cert_pem(), "server.pem": server.cert_pem(),
                       "server.key": server.key_pem(), "client.pem": client.cert_pem(),
                       "client.key": client.key_pem()}.items():
        (tmp_path / name).write_bytes(data)
    ctx = server_context(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")

    async def echo(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{request.method} {len(body)}")

    runner = web.ServerRunner(web.Server(echo), handle_signals=False)
    await runner.setup()
    sock = bind("127.0.0.1", 0)
    found = Listener(sock.getsockname()[1],
                     client_context(tmp_path / "ca.pem", tmp_path / "client.pem",
                                    tmp_path / "client.key"),
                     ssl.create_default_context(cafile=str(tmp_path / "ca.pem")))
    observe_handshakes(ctx, found.failures.append)
    await TlsSite(runner, sock, ssl_context=ctx, handshake_timeout_s=5,
                  connections=found.connections).start()
    try:
        yield found
    finally:
        forget_handshakes(ctx)
        await runner.cleanup()


def _one_request(port: int, ctx: ssl.SSLContext, body: bytes) -> bytes:
    """A new connection whose ClientHello leaves at once, one request on it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


async def test_every_handshake_completes_however_soon_the_client_speaks(
        listener: Listener) -> None:
    # 40 connections one after another, each sending its ClientHello with
    # the TCP handshake's last packet: with the old listener on uvloop most
    # of them stalled until the handshake deadline.
    for i in range(40):
        answer = await asyncio.wait_for(asyncio.to_thread(
            _one_request, listener.port, listener.client, b"x" * i), 8)
        assert answer.startswith(b"HTTP/1.1 200"), (event_loop_name(), i, answer[:80])
        assert answer.endswith(b"POST %d" % i)
    assert listener.failures == []


async def test_failed_handshakes_are_counted_by_reason(listener: Listener) -> None:
    try:  # TLS 1.3: the client may finish first and see the alert, or only EOF
        answer = await asyncio.to_thread(_one_request, listener.port, listener.anonymous, b"")
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""  # no answer without a client certificate
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")  # no TLS at all
        await asyncio.to_thread(raw.recv, 100)
    for _ in range(100):  # the server's side ends a moment after the client's
        if len(listener.failures) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(listener.failures) == ["no-certificate", "not-tls"], event_loop_name()


async def _count_is(listener: Listener, want: int) -> int:
    for _ in range(250):  # the server's side ends a moment after the client's
        if listener.connections.count == want:
            break
        await asyncio.sleep(0.02)
    return listener.connections.count


async def test_open_connections_are_counted_from_accept_to_close(listener: Listener) -> None:
    assert listener.connections.count == 0
    raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", listener.port), 10)
    with raw:  # accepted, no ClientHello yet
        assert await _count_is(listener, 1) == 1, event_loop_name()
        tls = await asyncio.to_thread(listener.client.wrap_socket, raw,
                                      server_hostname="127.0.0.1")
        with tls:  # the handshake done: the same connection, counted once
            await asyncio.to_thread(tls.sendall, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert await asyncio.to_thread(tls.recv, 100)
            assert listener.connections.count == 1
    assert await _count_is(listener, 0) == 0, event_loop_name()
    # A failed handshake and plain HTTP end their connections too.
    for ctx in (listener.anonymous, None):
        await asyncio.to_thread(_refused, listener.port, ctx)
        assert await _count_is(listener, 0) == 0, event_loop_name()


def _refused(port: int, ctx: ssl.SSLContext | None) -> None:
    """A connection the listener ends: no client certificate, or no TLS."""
    request = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            if ctx is None:
                sock.sendall(request)
                sock.recv(100)
            else:
                with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                    tls.sendall(request)
                    tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            pass
