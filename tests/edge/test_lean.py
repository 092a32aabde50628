"""The lean HTTP server of the data listener (gateway.edge._lean), over real
TLS on 127.0.0.1 (certificates from the project's own CA), on both event
loops (tests/edge/conftest.py).

Parity first: the same bytes sent to a DataServer on the lean server and to
one on aiohttp's must get the same answer bytes (Date aside) and the same
refusals (status, reason), whether they arrive at once or a byte per TLS
record. Then what only a protocol of its own has to get right: deadlines,
flow control, pipelining, bodies that fail mid-way, drain, and the few
places where it differs from aiohttp on purpose."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.config import EdgeLimits
from gateway.edge import Answer, ConnectionBook, DataServer, HttpRequest, TlsSite, bind
from gateway.edge._lean import SLICE, LeanConnection
from gateway.edge._lean_head import BODY_HIGH_WATER, MAX_PIPELINED
from gateway.pki import CertificateAuthority, spiffe_uri
from gateway.tls import client_context, server_context

TRUST_DOMAIN = "shared-grid.test"
LIMITS = EdgeLimits(header_timeout_s=1.0, keepalive_timeout_s=1.5, body_timeout_s=5.0)


class Echo:
    """A data handler that answers what it was given (a DataHandler)."""

    def __init__(self, book: ConnectionBook) -> None:
        self.book = book
        self.refused: list[tuple[int, str, str]] = []
        self.header_timeouts = 0
        self.gate: asyncio.Event | None = None  # set: handlers wait for it before reading
        self.delay_s = 0.0
        self.started = asyncio.Event()  # a request reached the handler
        self.failing: str | None = None  # set: handlers fail; refusals carry it as incident
        self.failure: type[Exception] = RuntimeError  # what they fail with

    async def handle(self, request: HttpRequest) -> Answer:
        self.started.set()
        if self.failing is not None:
            raise self.failure("a bug in the handler")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        body = b""
        if request.body_exists and request.method != "GET":
            while chunk := await request.content.readany():
                body += chunk
        transport = request.transport
        doc = {"method": request.method, "path": request.raw_path,
               "version": list(request.version), "lines": len(request.raw_headers),
               "type": request.content_type, "length": request.content_length,
               "body": len(body), "sha": zlib.crc32(body), "exists": request.body_exists,
               "headers": list(request.headers.items())[:4],
               "tenant": self.book.tenant_of(transport) if transport is not None else None}
        return Answer(body=json.dumps(doc).encode(), content_type="application/json",
                            headers={"Server": "gateway"})

    def refuse_unparsed(self, request: HttpRequest, status: int,
                        reason: str) -> Answer:
        self.refused.append((status, reason, request.method))
        headers = {"Server": "gateway"}
        if self.failing is not None:
            headers["X-Request-Id"] = self.failing
        return Answer(status=status, body=reason.encode(), content_type="text/plain",
                            headers=headers)

    def header_timed_out(self) -> None:
        self.header_timeouts += 1


@dataclass
class Listener:
    port: int
    handler: Echo
    server: DataServer
    runner: web.ServerRunner
    client: ssl.SSLContext
    book: ConnectionBook
    clients: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def connections(self) -> list[LeanConnection]:
        return list(self.server._lean)


Start = Callable[..., Awaitable[Listener]]


@pytest.fixture()
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    ca = CertificateAuthority.create("lean test CA")
    server_cert = ca.issue_server(["localhost"], ["127.0.0.1"])
    files = {"ca.pem": ca.cert_pem(), "server.pem": server_cert.cert_pem(),
             "server.key": server_cert.key_pem()}
    for tenant in ("ores", "fluvius"):
        client = ca.issue_client(spiffe_uri(TRUST_DOMAIN, tenant, "service", "api"))
        files[f"{tenant}.pem"], files[f"{tenant}.key"] = client.cert_pem(), client.key_pem()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ctx = server_context(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")
    clients = {tenant: client_context(tmp_path / "ca.pem", tmp_path / f"{tenant}.pem",
                                      tmp_path / f"{tenant}.key")
               for tenant in ("ores", "fluvius")}
    runners: list[web.ServerRunner] = []

    async def started(http_server: str = "lean", limits: EdgeLimits = LIMITS,
                      shutdown_timeout: float = 5.0) -> Listener:
        book = ConnectionBook(limits, TRUST_DOMAIN)
        handler = Echo(book)
        server = DataServer(handler, limits, book, http_server=http_server, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False,
                                  shutdown_timeout=shutdown_timeout)
        await runner.setup()
        sock = bind("127.0.0.1", 0)
        await TlsSite(runner, sock, ssl_context=ctx, handshake_timeout_s=5).start()
        runners.append(runner)
        return Listener(sock.getsockname()[1], handler, server, runner, clients["ores"], book,
                        clients)

    yield started
    for runner in runners:
        await runner.cleanup()


# -- a blocking TLS client, run in a thread ---------------------------------------
def _connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_to_end(tls: ssl.SSLSocket, timeout: float) -> tuple[bytes, bool]:
    """Everything answered, and whether the server closed (else: timed out)."""
    tls.settimeout(timeout)
    chunks = []
    try:
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except (ConnectionError, ssl.SSLError):
        pass
    return b"".join(chunks), True


def talk(port: int, ctx: ssl.SSLContext, payload: bytes, *, piece: int = 0,
         timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``payload`` (at once, or ``piece`` bytes per TLS record) and read
    until the server closes; the Date header is left out of what is read."""
    with _connect(port, ctx) as tls:
        if piece:
            for i in range(0, len(payload), piece):
                tls.sendall(payload[i:i + piece])
        else:
            tls.sendall(payload)
        out, closed = _read_to_end(tls, timeout)
    return re.sub(rb"Date: [^\r]*\r\n", b"", out), closed


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def answers(raw: bytes) -> list[dict[str, object]]:
    """The JSON documents of the Echo handler's answers, in order."""
    docs = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body, raw = rest[:length], rest[length:]
        docs.append(json.loads(body) if head.startswith(b"HTTP/1.1 200") else {"refused": body})
    return docs


# -- parity with aiohttp ---------------------------------------------------------------
H = b"Host: x\r\n"
CLOSE = b"Connection: close\r\n"
GZ = gzip.compress(b'{"a": 1}', mtime=0)
PARITY = {
    "get": b"GET /a?b=1 HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "http10": b"GET /a HTTP/1.0\r\n\r\n",
    "http10-keep-alive-then-close": b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                    b"GET /b HTTP/1.0\r\n\r\n",
    "head": b"HEAD /a HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "post-length": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Content-Type: Application/JSON; "
                   b"charset=utf-8\r\nContent-Length: 2\r\n\r\n{}",
    "post-chunked-ext-trailer": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Transfer-Encoding: "
                                b"chunked\r\n\r\n2\r\n{}\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    "post-empty": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Content-Length: 0\r\n\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\n" + H + b"\r\nPOST /2 HTTP/1.1\r\n" + H +
                 b"Content-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "unread-body-then-next": b"GET /1 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"
                             b"GET /2 HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "expect-100-continue": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Expect: 100-continue\r\n"
                           b"Content-Length: 2\r\n\r\n{}",
    "gzip-body": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Content-Encoding: gzip\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(GZ) + GZ,
    "unknown-coding-as-is": b"POST /a HTTP/1.1\r\n" + H + CLOSE + b"Content-Encoding: x\r\n"
                            b"Content-Length: 2\r\n\r\n{}",
    "brotli-refused": b"POST /a HTTP/1.1\r\n" + H + b"Content-Encoding: br\r\n"
                      b"Content-Length: 2\r\n\r\n{}",
    "absolute-form": b"GET http://h/a HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    "trailing-whitespace-and-utf8": b"GET /a HTTP/1.1\r\n" + H + CLOSE + b"X-A: " +
                                    "é".encode() + b" \t\r\nX-B: \xe9\r\n\r\n",
    "http09": b"GET /a\r\n\r\n",
    "leading-crlf": b"\r\n\r\nGET /a HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
    # Refusals: status, reason and the connection closed, nothing after read.
    "no-host": b"GET /a HTTP/1.1\r\n\r\n",
    "asterisk-not-options": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-without-host": b"GET http:///a HTTP/1.1\r\n" + H + b"\r\n",
    "relative-target": b"GET a HTTP/1.1\r\n" + H + b"\r\n",
    "unknown-method": b"FOO /a HTTP/1.1\r\n" + H + b"\r\n",
    "lower-case-method": b"get /a HTTP/1.1\r\n" + H + b"\r\n",
    "tls-on-the-http-layer": b"\x16\x03\x01\x00\x05hello",
    "duplicate-host": b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "duplicate-content-type": b"GET /a HTTP/1.1\r\n" + H + b"Content-Type: a/b\r\n"
                              b"content-type: a/b\r\n\r\n",
    "old-websocket-handshake": b"GET /a HTTP/1.1\r\n" + H + b"Sec-WebSocket-Key1: 1\r\n\r\n",
    "cl-te": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked"
             b"\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                   b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-obfuscated": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n",
    "duplicate-content-length": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n"
                                b"Content-Length: 2\r\n\r\n{}",
    "obs-fold": b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "bare-lf": b"GET /a HTTP/1.1\nHost: x\n\n",
    "nul-in-value": b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "http10-te-then-more": b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\n{}\r\n0\r\n\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
    "bytes-after-close": b"GET /1 HTTP/1.1\r\n" + H + CLOSE + b"\r\nGET /2 HTTP/1.1\r\n" + H +
                         b"\r\n",
    "valid-then-invalid": b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\nHost : x\r\n\r\n",
    "bad-chunk-size": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "zstd-refused": b"POST /a HTTP/1.1\r\n" + H + b"Content-Encoding: zstd\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # The limits of EdgeLimits, at and just over each.
    "target-at-limit": b"GET /" + b"a" * (LIMITS.max_url_bytes - 1) + b" HTTP/1.1\r\n" + H +
                       CLOSE + b"\r\n",
    "target-over-limit": b"GET /" + b"a" * LIMITS.max_url_bytes + b" HTTP/1.1\r\n" + H +
                         b"\r\n",
    "value-at-limit": b"GET /a HTTP/1.1\r\n" + H + b"X-Big: " +
                      b"a" * LIMITS.max_header_bytes + b"\r\n" + CLOSE + b"\r\n",
    "value-over-limit": b"GET /a HTTP/1.1\r\n" + H + b"X-Big: " +
                        b"a" * (LIMITS.max_header_bytes + 1) + b"\r\n\r\n",
    "first-line-over-limit": b"GET /a HTTP/1.1\r\nX-Big: " +
                             b"a" * (LIMITS.max_header_bytes - 4) + b"\r\n" + H + b"\r\n",
    "name-over-limit": b"GET /a HTTP/1.1\r\n" + H + b"X" * (LIMITS.max_header_bytes + 1) +
                       b": a\r\n\r\n",
    "lines-at-parser-limit": b"GET /a HTTP/1.1\r\n" + H + CLOSE +
                             b"".join(b"X-%d: a\r\n" % i for i in range(LIMITS.max_headers)) +
                             b"\r\n",
    "lines-over-parser-limit": b"GET /a HTTP/1.1\r\n" + H + CLOSE +
                               b"".join(b"X-%d: a\r\n" % i
                                        for i in range(LIMITS.max_headers + 1)) + b"\r\n",
    "trailers-over-parser-limit": b"POST /a HTTP/1.1\r\n" + H + CLOSE +
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n" +
                                  b"".join(b"T-%d: a\r\n" % i
                                           for i in range(LIMITS.max_headers + 1)) + b"\r\n",
}
# (Not the refusals: a client still sending to a connection closed on it
# gets a reset, which may come before the answer.)
BYTE_BY_BYTE = ("get", "post-chunked-ext-trailer", "pipelined", "unread-body-then-next",
                "gzip-body", "http10-keep-alive-then-close", "trailing-whitespace-and-utf8")


async def _both(start: Start, payload: bytes, piece: int = 0) -> dict[str, object]:
    seen: dict[str, object] = {}
    for kind in ("aiohttp", "lean"):
        listener = await start(kind)
        raw, closed = await asyncio.to_thread(talk, listener.port, listener.client, payload,
                                              piece=piece)
        seen[kind] = (raw, closed, listener.handler.refused)
    return seen


@pytest.mark.parametrize("case", sorted(PARITY))
async def test_the_same_answers_as_aiohttp(start: Start, case: str) -> None:
    seen = await _both(start, PARITY[case])
    assert seen["lean"] == seen["aiohttp"]
    raw, closed, _ = seen["lean"]  # type: ignore[misc]
    assert closed and raw.startswith(b"HTTP/"), raw[:200]


@pytest.mark.parametrize("case", BYTE_BY_BYTE)
async def test_the_same_answers_a_byte_per_record(start: Start, case: str) -> None:
    seen = await _both(start, PARITY[case], piece=1)
    assert seen["lean"] == seen["aiohttp"]


async def test_refusals_name_the_limit_broken(start: Start) -> None:
    listener = await start()
    expected = {"target-over-limit": (414, "request-line-too-long"),
                "value-over-limit": (431, "header-too-long"),
                "name-over-limit": (431, "header-too-long"),
                "lines-over-parser-limit": (431, "too-many-headers"),
                "trailers-over-parser-limit": (431, "too-many-headers"),
                "unknown-method": (501, "method-unknown"),
                "obs-fold": (400, "http-parse-error")}
    for case, (status, reason) in expected.items():
        listener.handler.refused.clear()
        raw, closed = await asyncio.to_thread(talk, listener.port, listener.client,
                                              PARITY[case])
        assert statuses(raw) == [status] and closed, case
        assert listener.handler.refused == [(status, reason, "UNKNOWN")], case


# -- where the lean server differs from aiohttp, on purpose ------------------------------
@pytest.mark.parametrize("first", [
    b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAAA\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
])
async def test_an_upgrade_is_answered_and_the_connection_closed(start: Start,
                                                                first: bytes) -> None:
    """llhttp hands over what follows an upgrade request as another
    protocol; the gateway speaks none: the request is answered as any
    other, with Connection: close, and nothing after it is read."""
    listener = await start()
    raw, closed = await asyncio.to_thread(talk, listener.port, listener.client,
                                          first + b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [200] and closed
    assert b"Connection: close\r\n" in raw


async def test_an_upgrade_with_a_body_is_refused(start: Start) -> None:
    """llhttp does not read the body of an upgrade request: its bytes would
    be parsed as the next request (a smuggling vector)."""
    listener = await start()
    raw, closed = await asyncio.to_thread(talk, listener.port, listener.client, (
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 36\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert statuses(raw) == [400] and closed and b"smuggled" not in raw
    assert listener.handler.refused == [(400, "http-parse-error", "UNKNOWN")]


@pytest.mark.parametrize(("coding", "body"), [
    ("gzip", gzip.compress(b'{"a": 1}', mtime=0)[:-4]),  # truncated
    ("gzip", gzip.compress(b'{"a": 1}', mtime=0) + b"tail"),  # bytes after the stream
    ("gzip", b"not gzip at all"),
    ("deflate", b"\x78\x9c not deflate"),
])
async def test_a_body_that_does_not_decode_is_400_not_500(start: Start, coding: str,
                                                          body: bytes) -> None:
    listener = await start()
    raw, closed = await asyncio.to_thread(talk, listener.port, listener.client, (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        % (coding.encode(), len(body)) + body))
    assert statuses(raw) == [400] and closed
    assert listener.handler.refused == [(400, "http-parse-error", "POST")]


@pytest.mark.parametrize("compress", [
    zlib.compress,  # RFC 9110's deflate: zlib-wrapped
    lambda data: zlib.compress(data)[2:-4],  # raw deflate, taken as aiohttp does
])
async def test_deflate_bodies_are_decoded(start: Start, compress: Callable[[bytes], bytes],
                                          ) -> None:
    listener = await start()
    data = json.dumps({"pad": "x" * 300_000}).encode()  # several steps of decoding
    body = compress(data)
    raw, _ = await asyncio.to_thread(talk, listener.port, listener.client, (
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: deflate\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body))
    [doc] = answers(raw)
    assert (doc["body"], doc["sha"]) == (len(data), zlib.crc32(data))


async def test_a_framing_error_mid_body_fails_the_handlers_read_at_once(start: Start) -> None:
    """The body's framing breaks after its handler started reading it: the
    read fails and the request is refused at once (aiohttp's handler waited
    for the body timeout)."""
    listener = await start()

    def scenario() -> tuple[bytes, float]:
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"2\r\n{}\r\n")
            time.sleep(0.3)  # the handler is reading
            started = time.monotonic()
            tls.sendall(b"zz\r\n")
            out, _ = _read_to_end(tls, 5)
            return out, time.monotonic() - started

    raw, took = await asyncio.to_thread(scenario)
    assert statuses(raw) == [400] and took < 1
    assert listener.handler.refused == [(400, "http-parse-error", "POST")]


# -- deadlines ----------------------------------------------------------------------------
async def test_a_slow_header_is_cut_at_the_header_deadline(start: Start) -> None:
    listener = await start()

    def slowloris() -> tuple[bytes, float]:
        with _connect(listener.port, listener.client) as tls:
            started = time.monotonic()
            tls.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(20):
                    time.sleep(0.1)
                    tls.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
            out, closed = _read_to_end(tls, 5)
            assert closed
            return out, time.monotonic() - started

    raw, took = await asyncio.to_thread(slowloris)
    assert raw == b"" and LIMITS.header_timeout_s <= took < LIMITS.header_timeout_s + 1
    assert listener.handler.header_timeouts == 1


async def test_the_deadline_runs_again_for_each_next_request(start: Start) -> None:
    """Headers in time on a keep-alive connection, then a next request whose
    headers never end: cut at its own deadline."""
    listener = await start()

    def scenario() -> tuple[bytes, bool]:
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.8)  # within the keep-alive timeout (1.5 s)
            tls.sendall(b"GET /2 HTTP/1.1\r\nHost: x\r\n")
            return _read_to_end(tls, 5)

    raw, closed = await asyncio.to_thread(scenario)
    assert statuses(raw) == [200] and closed
    assert listener.handler.header_timeouts == 1


async def test_an_idle_keep_alive_connection_is_closed(start: Start) -> None:
    listener = await start()

    def idle() -> tuple[bytes, float]:
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            out, closed = _read_to_end(tls, 5)
            assert closed
            return out, time.monotonic() - started

    raw, took = await asyncio.to_thread(idle)
    assert statuses(raw) == [200]
    assert LIMITS.keepalive_timeout_s - 0.1 <= took < LIMITS.keepalive_timeout_s + 1
    assert listener.handler.header_timeouts == 0  # closed as idle, not as a slowloris


async def test_a_silent_connection_is_cut_at_the_header_deadline(start: Start) -> None:
    listener = await start()
    started = time.monotonic()

    def silent() -> tuple[bytes, bool]:
        with _connect(listener.port, listener.client) as tls:
            return _read_to_end(tls, 5)

    assert await asyncio.to_thread(silent) == (b"", True)
    assert time.monotonic() - started < LIMITS.header_timeout_s + 1
    assert listener.handler.header_timeouts == 1


# -- memory: what the parser would keep growing, and unread bodies -------------------------
@pytest.mark.parametrize("prefix", [
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-Endless: ",  # a header value that never ends
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-Endless",  # a header name
    b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: ",  # a trailer
])
async def test_a_line_that_never_ends_is_refused_before_it_grows(start: Start,
                                                                 prefix: bytes) -> None:
    """httptools keeps the header line it reads whole until it ends: past
    two header sizes without the parser getting anywhere, it is refused."""
    listener = await start(limits=EdgeLimits(header_timeout_s=30))

    def endless() -> tuple[bytes, int]:
        sent = 0
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(prefix)
            while sent < 4 * 1024 * 1024 and not listener.handler.refused:
                tls.sendall(b"a" * 4096)
                sent += 4096
                time.sleep(0.001)
            out, _ = _read_to_end(tls, 5)
        return out, sent

    raw, sent = await asyncio.to_thread(endless)
    # Refused after about two header sizes (plus what was in flight).
    assert statuses(raw) == [431] and sent < 256 * 1024, sent
    assert [r[:2] for r in listener.handler.refused] == [(431, "header-too-long")]


async def test_an_unread_body_pauses_reading(start: Start) -> None:
    """The handler does not read yet: the connection stops reading once
    BODY_HIGH_WATER bytes wait; the body arrives whole once it reads."""
    listener = await start()
    listener.handler.gate = asyncio.Event()
    body = bytes(range(256)) * 16 * 1024  # 4 MiB
    most = 0

    async def watch() -> None:
        nonlocal most
        while not listener.handler.gate.is_set():  # type: ignore[union-attr]
            for connection in listener.connections():
                most = max(most, connection.buffered)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    client = asyncio.create_task(asyncio.to_thread(talk, listener.port, listener.client, (
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(body) + body)))
    await asyncio.sleep(1.0)
    listener.handler.gate.set()
    await watcher
    raw, _ = await client
    [doc] = answers(raw)
    assert (doc["body"], doc["sha"]) == (len(body), zlib.crc32(body))
    # Over the mark by what the loop's TLS layer delivers in one read at most.
    assert BODY_HIGH_WATER <= most < BODY_HIGH_WATER + 1024 * 1024


async def test_many_pipelined_requests_are_answered_in_order(start: Start) -> None:
    """Thousands of tiny requests in a few reads: parsed as the waiting ones
    are answered (never much more than MAX_PIPELINED parsed ahead, one
    SLICE over at most), answered one by one, in order."""
    listener = await start()
    deepest = 0
    handle = listener.handler.handle

    async def watched(request: HttpRequest) -> Answer:
        nonlocal deepest
        deepest = max([deepest, *(len(c._queue) for c in listener.connections())])
        await asyncio.sleep(0)
        return await handle(request)

    listener.server.plane.handle = watched  # type: ignore[method-assign]
    count = 3000
    payload = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count - 1))
    payload += b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (count - 1)
    raw, closed = await asyncio.to_thread(talk, listener.port, listener.client, payload,
                                          timeout=20)
    assert closed
    assert [doc["path"] for doc in answers(raw)] == [f"/{i}" for i in range(count)]
    assert MAX_PIPELINED // 2 < deepest <= MAX_PIPELINED + SLICE // len(b"GET /1 HTTP/1.1\r\n")


async def test_answers_wait_for_a_client_that_reads_late(start: Start) -> None:
    """Large answers to pipelined requests, the client reading nothing for a
    while: the next request is not handled before the last answer drained
    (a client that does not read cannot make answers pile up), and then
    every answer comes, in order."""
    listener = await start()
    big = "y" * 3_000_000
    handled: list[str] = []

    async def large(request: HttpRequest) -> Answer:
        handled.append(request.raw_path)
        return Answer(body=json.dumps({"path": request.raw_path, "pad": big}).encode(),
                            content_type="application/json")

    listener.server.plane.handle = large  # type: ignore[method-assign]
    count = 8
    during: list[int] = []

    def late() -> bytes:
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                                 for i in range(count - 1)) +
                        b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (count - 1))
            time.sleep(1.0)
            during.append(len(handled))
            return _read_to_end(tls, 10)[0]

    raw = await asyncio.to_thread(late)
    assert during[0] <= 3  # the socket buffers take an answer or two, not all eight
    assert [doc["path"] for doc in answers(raw)] == [f"/{i}" for i in range(count)]


# -- the connection: who it is, caps, a caller gone, drain ----------------------------------
async def test_the_connection_is_its_callers(start: Start) -> None:
    """request.transport is the TLS connection: its certificate names the
    tenant (the connection book reads it once, on the connection)."""
    listener = await start()
    for tenant in ("ores", "fluvius"):
        raw, _ = await asyncio.to_thread(talk, listener.port, listener.clients[tenant],
                                         PARITY["get"])
        assert answers(raw)[0]["tenant"] == tenant


async def test_a_connection_has_tcp_keep_alive(start: Start) -> None:
    """A peer that vanishes without a FIN is found by TCP keep-alive probes:
    set on the listening socket, every accepted connection has it."""
    listener = await start()
    ctx = listener.clients["ores"]
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port, ssl=ctx)
    try:
        for _ in range(100):
            if listener.connections():
                break
            await asyncio.sleep(0.01)
        [connection] = listener.connections()
        assert connection.transport is not None
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        writer.close()


async def test_connections_over_the_tenants_cap_are_closed_before_any_byte(
        start: Start) -> None:
    listener = await start(limits=EdgeLimits(max_connections_per_tenant=1))

    def scenario() -> tuple[bytes, tuple[bytes, bool], bytes]:
        with _connect(listener.port, listener.client) as held:
            held.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
            held.settimeout(5)
            first = held.recv(65536)
            second = talk(listener.port, listener.client, PARITY["get"])
            other = talk(listener.port, listener.clients["fluvius"], PARITY["get"])[0]
        return first, second, other

    first, second, other = await asyncio.to_thread(scenario)
    assert statuses(first) == [200]
    assert second == (b"", True)  # closed before any HTTP byte
    assert statuses(other) == [200]  # another tenant is fine
    for _ in range(100):
        if listener.book.total == 0 and not listener.connections():
            break
        await asyncio.sleep(0.02)
    assert listener.book.total == 0 and not listener.connections()


async def test_a_caller_gone_mid_body_is_refused_as_client_gone(start: Start) -> None:
    listener = await start()

    def hang_up() -> None:
        with _connect(listener.port, listener.client) as tls:
            tls.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":")
            time.sleep(0.2)

    await asyncio.to_thread(hang_up)
    for _ in range(100):
        if listener.handler.refused:
            break
        await asyncio.sleep(0.02)
    assert listener.handler.refused == [(400, "client-gone", "POST")]
    assert listener.book.total == 0


async def test_drain_lets_the_request_in_flight_finish(start: Start) -> None:
    """Stopping: no new connection, idle ones closed at once, the request in
    flight answered (within the shutdown timeout)."""
    listener = await start()
    listener.handler.delay_s = 1.0
    idle = await asyncio.to_thread(_connect, listener.port, listener.client)
    try:
        busy = asyncio.create_task(asyncio.to_thread(talk, listener.port, listener.client,
                                                     PARITY["get"]))
        await asyncio.wait_for(listener.handler.started.wait(), 5)
        started = time.monotonic()
        await listener.runner.cleanup()
        raw, closed = await busy
        assert statuses(raw) == [200] and closed
        assert 0.5 < time.monotonic() - started < 3
        assert await asyncio.to_thread(_read_to_end, idle, 2) == (b"", True)
        with pytest.raises(OSError):
            await asyncio.to_thread(talk, listener.port, listener.client, PARITY["get"])
    finally:
        idle.close()


async def test_drain_ends_a_request_that_outlasts_the_timeout(start: Start) -> None:
    listener = await start(shutdown_timeout=0.5)
    listener.handler.delay_s = 30
    busy = asyncio.create_task(asyncio.to_thread(talk, listener.port, listener.client,
                                                 PARITY["get"]))
    await asyncio.wait_for(listener.handler.started.wait(), 5)
    started = time.monotonic()
    await listener.runner.cleanup()
    assert time.monotonic() - started < 3
    raw, closed = await busy
    assert raw == b"" and closed


async def test_the_http_server_is_chosen_by_name(start: Start) -> None:
    listener = await start("aiohttp")
    assert statuses((await asyncio.to_thread(talk, listener.port, listener.client,
                                             PARITY["get"]))[0]) == [200]
    assert not listener.connections()  # aiohttp's handlers, not lean connections
    with pytest.raises(ValueError, match="http_server"):
        DataServer(listener.handler, LIMITS, listener.book, http_server="h2")


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
@pytest.mark.parametrize("failure,status", [(RuntimeError, 500), (TimeoutError, 504)])
async def test_a_failing_handler_is_logged_with_the_refusals_incident(
        start: Start, http_server: str, failure: type[Exception], status: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """The log record of an internal error names the incident id of the 500
    the caller got (gateway.logs: records that concern a request); a handler
    that timed out is a 504, as aiohttp answers it."""
    listener = await start(http_server)
    listener.handler.failing = "0123abcd-incident"
    listener.handler.failure = failure
    raw, _ = await asyncio.to_thread(talk, listener.port, listener.client,
                                     b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [status] and b"X-Request-Id: 0123abcd-incident" in raw
    assert listener.handler.refused == [(status, "internal-error", "GET")]
    (record,) = [r for r in caplog.records if r.getMessage() == "error handling request"]
    assert record.incident == "0123abcd-incident"  # type: ignore[attr-defined]
    if http_server == "lean" or failure is RuntimeError:  # aiohttp's 504 hands over no exception
        assert record.exc_info is not None and "a bug in the handler" in str(record.exc_info[1])



@pytest.mark.parametrize("wrong", ["web-response", "text-body"])
async def test_an_answer_the_lean_server_cannot_write_is_a_500(
        start: Start, wrong: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that answers with anything but an Answer of bytes (aiohttp's
    own response, say, or a text body) gets a 500 written for it, logged,
    and refused through refuse_unparsed; nothing of what it answered is sent."""
    listener = await start()

    async def handle(request: HttpRequest) -> Answer:
        if wrong == "web-response":
            return web.Response(body=b"secret")  # type: ignore[return-value]
        answer = Answer(200)
        answer.body = "secret"  # type: ignore[assignment]
        return answer

    listener.server.plane.handle = handle  # type: ignore[method-assign]
    raw, _ = await asyncio.to_thread(talk, listener.port, listener.client,
                                     b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [500] and b"secret" not in raw
    assert listener.handler.refused == [(500, "internal-error", "GET")]
    assert any("not an Answer with bytes" in r.getMessage() for r in caplog.records)
