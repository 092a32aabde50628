"""Calls to the shared systems: a pool of keep-alive HTTP/1.1 connections
per upstream (gateway/upstream/_http.py speaks the protocol), timeouts,
response size cap, circuit breaker, health probes. The client's errors are
translated once, here, into :class:`UpstreamFailed`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from gateway.config import Upstream
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.tls import upstream_context
from gateway.upstream._connection import Connection
from gateway.upstream._http import (
    IDEMPOTENT,
    ClientError,
    MalformedResponse,
    NoResponse,
    ResponseBroken,
    ResponseReader,
    ResponseTooLarge,
    serialize_request,
)

log = logging.getLogger("gateway.upstream")

__all__ = ["IDEMPOTENT", "Breaker", "ConnectionPool", "UpstreamPool", "UpstreamResponse",
           "media_type"]

IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection is closed after this long
PROBE_TIMEOUT_S = 2.0


# What a failed call becomes, in one table (the client's errors and the
# event loop's timeout, translated once, here): the status and reason the
# caller sees, and the label of gateway_upstream_errors_total. Most specific
# first. RETRY: nothing came back, so an idempotent request may go again.
RETRY = 0
TRANSLATION: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (ResponseTooLarge, 502, "upstream-response-too-large", "too-large"),
    (TimeoutError, 504, "upstream-timeout", "timeout"),
    (NoResponse, RETRY, "upstream-unreachable", "connection"),
    # A body cut off mid-way: never a clean answer.
    (ResponseBroken, 502, "upstream-reset", "connection"),
    # SECURITY: an answer that could be read two ways is no answer.
    (MalformedResponse, 502, "upstream-malformed-response", "connection"),
    (ClientError, 502, "upstream-unreachable", "connection"),
)


def translate(exc: BaseException) -> tuple[int, str, str]:
    """(status, reason, metric label) of a failed call; RETRY as the status
    when nothing came back. Anything the table does not know is a bug."""
    for kind, status, reason, label in TRANSLATION:
        if isinstance(exc, kind):
            return status, reason, label
    raise TypeError(f"no translation for {type(exc).__name__}") from exc


class Breaker:
    """Closed -> (``failures`` consecutive failures) -> open for ``open_s``:
    calls fail fast -> half-open: one probe; success closes, failure reopens."""

    def __init__(self, failures: int = 5, open_s: float = 5.0) -> None:
        self.threshold = failures
        self.open_s = open_s
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.open_s:
            self.state = "half-open"  # let exactly one probe through
            return True
        return False

    def success(self) -> bool:
        """Count a success; True when this one closed an open circuit."""
        was_open = self.state != "closed"
        self.state, self.failures = "closed", 0
        return was_open

    def failure(self, now: float) -> bool:
        """Count a failure; True when this one opened the circuit."""
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.threshold:
            opened = self.state != "open"
            self.state, self.opened_at = "open", now
            return opened
        return False


class UpstreamResponse(NamedTuple):  # built per request: a tuple is cheaper
    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class UpstreamTransport(Protocol):
    """What the data plane needs of the upstream layer: the configured shared
    systems and one call to one of them. :class:`UpstreamPool` is the real
    one; a test double answers from a function (httpx's ``MockTransport``
    idea), so the pipeline can be tested without a shared system."""

    @property
    def upstreams(self) -> Mapping[str, Upstream]:
        """The configured shared systems by name (pool sizes, timeouts)."""

    async def call(self, upstream: str, method: str, target: str, headers: Mapping[str, str],
                   body: bytes | None) -> UpstreamResponse:
        """One call; a failure raises :class:`UpstreamFailed` (status, reason)."""


def media_type(content_type: str | None) -> str:
    """``type/subtype`` in lower case, as aiohttp's ``content_type`` gave it."""
    if content_type is None:
        return "application/octet-stream"  # RFC 9110 §8.3: the recipient may assume it
    value = content_type.split(";", 1)[0].strip().lower()
    return value if value.count("/") == 1 else "application/octet-stream"


class ConnectionPool:
    """Keep-alive connections to one upstream: at most ``size`` in use; idle
    ones are reused newest first (LIFO: the one least likely to have been
    closed by the server) and closed after ``idle_timeout_s``; callers beyond
    ``size`` wait in line, each within its own deadline."""

    def __init__(self, url: str, *, size: int, connect_timeout_s: float,
                 ssl_context: ssl.SSLContext | None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if (parts.scheme == "https") != (ssl_context is not None):
            raise ValueError("an https:// upstream needs a TLS context, http:// none")
        self.host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        # Targets are origin-form ("/tickets"); a URL with a path prefixes it.
        self.base_path = parts.path.rstrip("/")
        self.size = size
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = ssl_context
        self.idle_timeout_s = idle_timeout_s
        self._idle: list[Connection] = []  # oldest first
        self._conns: set[Connection] = set()  # every open connection, idle or busy
        self._busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes | None, *, timeout_s: float, max_body: int,
                      took: Callable[[float], None] | None = None) -> ResponseReader:
        """One request; ``timeout_s`` bounds all of it (queue, connect, answer).
        ``took`` gets the seconds from taking a pool slot (connecting, if it
        must, and sending) to the answer read, for an answered request. The
        answer is the reader that read it whole (its ``status``,
        ``content_type`` as sent, ``headers``, ``body``): no copy of it made."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        data = serialize_request(method, self.base_path + target, self.host_header, headers,
                                 body)
        if self._busy < self.size and not self._waiters:
            self._busy += 1  # a free slot, and nobody before us in line
        else:
            await self._wait_for_slot(loop, deadline)
        try:
            # The latency sample's clock: uvloop's loop.time() counts whole
            # milliseconds (a sample could read 1 ms short); deadlines keep it.
            sent = time.perf_counter()
            # The exchange, inline (a coroutine of its own would be one more
            # frame to make and to resume per request).
            fresh = False
            while True:
                conn = None if fresh else self._pop_idle()
                if conn is None:
                    fresh = True
                    conn = await self._connect(loop, deadline)
                reader = ResponseReader(head_request=method == "HEAD", max_body=max_body)
                try:
                    await conn.send(loop, data, reader, deadline)
                except NoResponse:
                    conn.abort()
                    if fresh or method not in IDEMPOTENT:
                        raise
                    # The server closed this idle connection as the request went
                    # out: the stale keep-alive race. Once more, on a new connection.
                    fresh = True
                    continue
                except BaseException:
                    conn.abort()  # SECURITY: an answer not read to its end is never reused
                    raise
                break
            if took is not None:
                took(time.perf_counter() - sent)
            if reader.keep_alive and not self._closed:
                conn.idle_since = loop.time()
                self._idle.append(conn)
                if self._sweeper is None:
                    self._sweeper = loop.call_at(conn.idle_since + self.idle_timeout_s,
                                                 self._sweep)
            else:
                conn.close()  # the server said close, or the framing needs it
        finally:
            self._free_slot()
        return reader

    def _pop_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        if self._closed:
            raise NoResponse("connection pool closed")
        ctx = self.ssl_context
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout_s)):
                # SNI and certificate check against the URL's host name.
                _, conn = await loop.create_connection(
                    lambda: Connection(self._conns), self.host, self.port, ssl=ctx,
                    server_hostname=self.host if ctx is not None else None)
        except TimeoutError:
            raise  # a subclass of OSError, but a timeout all the same (504)
        except OSError as exc:  # refused, unreachable, TLS handshake or certificate
            raise NoResponse(f"connect failed: {type(exc).__name__}") from exc
        if self._closed:
            conn.abort()
            raise NoResponse("connection pool closed")
        return conn

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """In line for a slot (every one busy, or others waiting before us)
        until ``_free_slot`` hands one over, or the deadline."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free_slot()  # handed over just as this caller gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the next in line
                return
        self._busy -= 1

    def _sweep(self) -> None:
        self._sweeper = None
        assert self._loop is not None
        cutoff = self._loop.time() - self.idle_timeout_s
        keep = []
        for conn in self._idle:
            if conn.idle_since <= cutoff:
                conn.close()
            elif not conn.closed:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._sweeper = self._loop.call_at(keep[0].idle_since + self.idle_timeout_s,
                                               self._sweep)

    def close_idle(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def close(self) -> None:
        """Close every connection, also those with a request in flight."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(NoResponse("connection pool closed"))
        self._waiters.clear()
        self._idle.clear()
        for conn in list(self._conns):
            conn.abort()
        await asyncio.sleep(0)  # the transports finish closing in the next loop pass


class UpstreamPool:
    def __init__(self, upstreams: Mapping[str, Upstream], metrics: GatewayMetrics, *,
                 client_identity: Callable[[str], tuple[bytes, bytes] | None] = lambda n: None,
                 ) -> None:
        self.upstreams = dict(upstreams)
        self.metrics = metrics
        self._pools: dict[str, ConnectionPool] = {}
        self.up: dict[str, bool] = {name: False for name in upstreams}
        self.breakers = {name: Breaker(up.breaker_failures, up.breaker_open_s)
                         for name, up in upstreams.items()}
        # The client certificate (PEM chain, key) an mTLS upstream takes as the
        # gateway's credential, read when a connection pool is (re)built.
        self.client_identity = client_identity
        self._health_task: asyncio.Task[None] | None = None
        # gateway_upstream_duration_seconds, per upstream: the labelled child
        # found once (data-plane calls only; health probes and admin calls not).
        self._took = {name: metrics.upstream_duration.labels(name).observe
                      for name in upstreams}

    def _pool(self, name: str) -> ConnectionPool:
        up = self.upstreams[name]
        ssl_ctx = None
        if up.url.startswith("https://"):
            ssl_ctx = upstream_context(up.ca, self.client_identity(name))
        return ConnectionPool(up.url, size=up.pool_size, connect_timeout_s=up.connect_timeout_s,
                              ssl_context=ssl_ctx)

    async def renew_session(self, name: str, grace_s: float) -> None:
        """New connections with a new client identity; requests in flight on
        the old ones finish within ``grace_s``."""
        old = self._pools[name]
        self._pools[name] = self._pool(name)
        old.close_idle()  # no new request goes to the old pool
        await asyncio.sleep(grace_s)
        await old.close()

    async def start(self, health_interval_s: float) -> None:
        for name in self.upstreams:
            self._pools[name] = self._pool(name)
        await self.probe_all()
        self._health_task = asyncio.create_task(self._health_loop(health_interval_s))

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for pool in self._pools.values():
            await pool.close()

    async def call(self, upstream: str, method: str, target: str, headers: Mapping[str, str],
                   body: bytes | None) -> UpstreamResponse:
        """One call, through the upstream's circuit breaker. A connection that
        fails before any answer is retried once, for idempotent methods only."""
        breaker = self.breakers[upstream]
        if not breaker.allow(time.monotonic()):
            self.metrics.upstream_errors.labels(upstream, "circuit-open").inc()
            raise UpstreamFailed(503, "upstream-circuit-open")  # fail fast, no pile-up
        attempts = 2 if method in IDEMPOTENT else 1
        up = self.upstreams[upstream]
        for attempt in range(1, attempts + 1):
            # One attempt (inline: a coroutine of its own would be one more
            # frame to create and to resume per request).
            try:
                resp = await self._pools[upstream].request(
                    method, target, headers, body, timeout_s=up.timeout_s,
                    max_body=up.max_response_bytes, took=self._took[upstream])
            except (ClientError, TimeoutError) as exc:
                status, reason, label = translate(exc)
                self.metrics.upstream_errors.labels(upstream, label).inc()
                if status == RETRY:
                    if attempt < attempts:
                        self.metrics.upstream_errors.labels(upstream, "retried").inc()
                        continue
                    self._failed(upstream, breaker)
                    raise UpstreamFailed(502, "upstream-unreachable") from exc
                if status >= 502:
                    self._failed(upstream, breaker)
                raise UpstreamFailed(status, reason) from exc
            if resp.status >= 500:
                self._failed(upstream, breaker)
            elif breaker.success():
                self.metrics.child(self.metrics.upstream_circuit_open, upstream).set(0)
            return UpstreamResponse(resp.status, media_type(resp.content_type),
                                    tuple(resp.headers), resp.body)
        raise AssertionError("unreachable")

    def _failed(self, upstream: str, breaker: Breaker) -> None:
        if breaker.failure(time.monotonic()):
            log.warning("circuit to upstream %s opened", upstream)
            self.metrics.child(self.metrics.upstream_circuit_open, upstream).set(1)

    async def admin_call(self, upstream: str, path: str, body: dict[str, object],
                         authorization: str) -> dict[str, object]:
        """A call to the shared system's own admin API (credential rotation)."""
        up = self.upstreams[upstream]
        try:
            resp = await self._pools[upstream].request(
                "POST", path, {"Content-Type": "application/json",
                               "Authorization": authorization},
                json.dumps(body).encode(), timeout_s=up.timeout_s,
                max_body=up.max_response_bytes)
            doc = json.loads(resp.body) if resp.body.strip() else None
        except (ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamFailed(502, "upstream-admin-unreachable") from exc
        if resp.status >= 300 or not isinstance(doc, dict):
            raise UpstreamFailed(502, f"upstream-admin-{resp.status}")
        return doc

    async def probe(self, name: str) -> bool:
        up = self.upstreams[name]
        try:
            resp = await self._pools[name].request(
                "GET", "/healthz", {}, None, timeout_s=PROBE_TIMEOUT_S,
                max_body=up.max_response_bytes)
            ok = resp.status == 200
        except (ClientError, TimeoutError):
            ok = False
        if ok != self.up.get(name):
            log.info("upstream %s is %s", name, "up" if ok else "down")
        self.up[name] = ok
        self.metrics.upstream_up.labels(name).set(1 if ok else 0)
        return ok

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(name) for name in self._pools))

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.probe_all()
